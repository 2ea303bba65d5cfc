# Two commands: `make demo` and `make test`. Each creates/refreshes .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch: on this kind of machine pip takes torch==2.13.0 from a local
# wheel; elsewhere the PyTorch CPU index serves it. Never a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-loaded lint bench clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" || \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)" --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/lossmap demo --out runs/demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The suite on two pytest-xdist workers, one per core (each computes on one thread, see
# tests/conftest.py), a test module to a worker (its module-scoped fixtures built once).
PYTEST_XDIST ?= -n 2 --dist loadfile
test: setup lint browser
	$(BIN)/python -m pytest -q $(PYTEST_XDIST)

# Headless Chromium for the report's browser test (tests/test_report.py): Debian's
# chromium and chromium-driver, installed as root where apt-get exists (as CI runs).
# Never fails the build: without a browser that test is skipped, saying why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
	  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 || \
	    echo "browser: apt-get could not install chromium; the browser test will be skipped"; \
	else echo "browser: no chromium, and not root with apt-get; the browser test will be skipped"; fi

# The suite three times in a row under two busy loops, one pinned to each core (load ~4
# on 2 cores): every test must hold at any load. Not run by CI; prints each run's time.
LOAD_RUNS ?= 3
test-loaded: setup lint
	@set -e; \
	busy='while True: pass'; pids=""; \
	for c in 0 1; do \
	  if command -v taskset >/dev/null; then taskset -c $$c $(PY) -c "$$busy" & \
	  else $(PY) -c "$$busy" & fi; pids="$$pids $$!"; \
	done; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq $(LOAD_RUNS)); do \
	  t0=$$(date +%s); \
	  $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_XDIST) || { echo "test-loaded: run $$i FAILED"; exit 1; }; \
	  echo "test-loaded: run $$i of $(LOAD_RUNS) green in $$(( $$(date +%s) - t0 )) s (load: $$(cut -d' ' -f1 /proc/loadavg))"; \
	done

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]" || echo "bench extra unavailable: peers skipped"
	$(BIN)/python -m pip install -q einops opt-einsum einconv linear_operator tqdm && \
	  $(BIN)/python -m pip install -q --no-deps curvlinops-for-pytorch==3.0.1 || echo "curvlinops unavailable: skipped"
	$(BIN)/python benchmarks/surface.py
	$(BIN)/python benchmarks/curvature.py
	$(BIN)/python benchmarks/keskar.py
	$(BIN)/python benchmarks/connect.py
	$(BIN)/python benchmarks/edge_of_stability.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
