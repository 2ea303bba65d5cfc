"""The `lossmap` command end to end, and its answers to bad input."""

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import batchnorm_checkpoint, run_cli
from torch import nn

import lossmap as lm


@pytest.mark.slow
def test_demo_end_to_end(demo_run: tuple[Path, str], tmp_path: Path, capsys) -> None:
    out, stdout = demo_run  # `lossmap demo --steps 11`, run once for the session
    for name in (
        "surface.h5",
        "surface.csv",
        "line.h5",
        "line.csv",
        "spectrum.h5",
        "eigenvalues.csv",
        "sharpness.csv",
        "path.h5",
        "run.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("*.png")) and list(out.glob("*.pdf"))
    s = lm.load(out / "surface.h5")
    assert s.shape == (11, 11) and set(s.datasets) == {"train", "test"}
    with open(out / "surface.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 * 11
    np.testing.assert_array_equal(np.array([float(r["loss"]) for r in rows]), s["loss"].ravel())
    np.testing.assert_array_equal(
        np.array([float(r["test/accuracy"]) for r in rows]), s["test/accuracy"].ravel()
    )
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "demo" and run["versions"]["torch"] == torch.__version__
    assert run["results"]["surface"]["meta"]["directions"][0]["seed"] == 0
    assert "at θ0" in stdout and "engine:" in stdout and "top eigenvalues" in stdout
    assert len(run["curvature"]["summary"]["top"]) == 5
    lam = next(r["value"] for r in run["sharpness"] if r["metric"] == "lambda_max")
    assert lam == pytest.approx(run["curvature"]["summary"]["top"][0], rel=1e-5)
    path = lm.load(out / "path.h5")  # θ0 at t = 0: the plane's value there
    # (float32 cross-entropy near 0 cancels digits: strategies agree to ~1e-7 absolute)
    assert path["loss"][np.argmin(np.abs(path.alpha))] == pytest.approx(s["loss"][5, 5], abs=1e-6)
    # `lossmap plot` re-draws from the saved file.
    code, _, err = run_cli(
        ["plot", str(out / "surface.h5"), "--out", str(tmp_path / "figs")], capsys
    )
    assert code == 0, err
    assert list((tmp_path / "figs").glob("*.png"))


def test_plane_line_interpolate_on_user_model(tmp_path: Path, factories: str, capsys) -> None:
    spec = f"{factories}:good"
    code, _, err = run_cli(
        ["plane", "--model", spec, "--steps", "5", "--out", str(tmp_path / "p")], capsys
    )
    assert code == 0, err
    s = lm.load(tmp_path / "p" / "surface.h5")
    assert s.shape == (5, 5)
    code, _, err = run_cli(
        [
            "line",
            "--model",
            "userfactories:good",
            "--span",
            "-2",
            "2",
            "--steps",
            "7",
            "--out",
            str(tmp_path / "l"),
        ],
        capsys,
    )
    assert code == 0, err
    c = lm.load(tmp_path / "l" / "line.h5")
    assert c.alpha[0] == -2.0 and c.alpha[-1] == 2.0
    # Two checkpoints of the same architecture, one nested the way training scripts save it.
    import userfactories  # type: ignore[import-not-found]

    net = userfactories.good()[0]
    torch.save(net.state_dict(), tmp_path / "a.pt")
    torch.save(
        {"model": {k: v * 1.5 for k, v in net.state_dict().items()}, "epoch": 3}, tmp_path / "b.pt"
    )
    code, _, err = run_cli(
        [
            "interpolate",
            str(tmp_path / "a.pt"),
            str(tmp_path / "b.pt"),
            "--model",
            spec,
            "--steps",
            "9",
            "--out",
            str(tmp_path / "i"),
        ],
        capsys,
    )
    assert code == 0, err
    path = lm.load(tmp_path / "i" / "path.h5")
    x, y = userfactories._data()
    net_b = userfactories.good()[0]
    net_b.load_state_dict({k: v * 1.5 for k, v in net.state_dict().items()})
    with torch.no_grad():
        expected_a = float(nn.functional.cross_entropy(net(x), y))
        expected_b = float(nn.functional.cross_entropy(net_b(x), y))
    assert path["loss"][np.argmin(np.abs(path.alpha))] == pytest.approx(expected_a, rel=1e-5)
    assert path["loss"][np.argmin(np.abs(path.alpha - 1))] == pytest.approx(expected_b, rel=1e-5)


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "no_such_pkg.mod:f"], ["cannot import 'no_such_pkg.mod'", "PYTHONPATH"]),
        (["--model", "lossmap.examples:nope"], ["has no attribute 'nope'"]),
        (["--model", "justaname"], ["package.module:factory"]),
        (["--model", "userfactories:wrong_type"], ["returned int", "Landscape or a tuple"]),
        (["--model", "userfactories:raises"], ["raised RuntimeError: dataset server unreachable"]),
        (["--model", "userfactories:empty"], ["empty"]),
        (["--model", "userfactories:frozen"], ["no trainable parameters"]),
        (
            ["--model", "userfactories:good", "--steps", "1"],
            ["--steps", "greater than or equal to 2"],
        ),
        (["--model", "userfactories:good", "--span", "1", "1"], ["empty or inverted"]),
        (["--model", "userfactories:good", "--normalization", "filters"], ["filters"]),
        (["--model", "userfactories:good", "--ignore", "biases"], ["unknown ignore rule 'biases'"]),
        (["--model", "userfactories:good", "--example", "digits"], ["exactly one of --model"]),
    ],
)
def test_bad_input_one_line(args, needles, tmp_path: Path, factories: str, capsys) -> None:
    code, _, err = run_cli(["line", *args, "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, *needles)


def test_bad_checkpoints(tmp_path: Path, factories: str, capsys) -> None:
    import userfactories  # type: ignore[import-not-found]

    base = ["line", "--model", "userfactories:good", "--out", str(tmp_path / "o"), "--checkpoint"]
    code, _, err = run_cli([*base, str(tmp_path / "missing.pt")], capsys)
    _one_line_error(code, err, "no file", "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage" * 10)
    code, _, err = run_cli([*base, str(tmp_path / "corrupt.pt")], capsys)
    _one_line_error(code, err, "not a readable PyTorch file", "corrupt")
    torch.save(userfactories.good()[0].state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli([*base, str(tmp_path / "truncated.pt")], capsys)
    _one_line_error(code, err, "truncated or corrupt")
    torch.save(userfactories.other_arch()[0].state_dict(), tmp_path / "other.pt")
    code, _, err = run_cli([*base, str(tmp_path / "other.pt")], capsys)
    _one_line_error(code, err, "does not fit the model", "0.weight: (5, 4) vs expected (6, 4)")
    sd = userfactories.good()[0].state_dict()
    sd["0.bias"][0] = float("inf")
    torch.save(sd, tmp_path / "inf.pt")
    code, _, err = run_cli([*base, str(tmp_path / "inf.pt")], capsys)
    _one_line_error(code, err, "non-finite", "0.bias")
    torch.save({"model": userfactories.good()[0]}, tmp_path / "pickled.pt")  # a whole module
    code, _, err = run_cli([*base, str(tmp_path / "pickled.pt")], capsys)
    _one_line_error(
        code, err, "pickled Python objects", "torch.nn.modules.container.Sequential", "state_dict"
    )
    assert not (tmp_path / "o" / "line.h5").exists()


def test_cuda_without_gpu_and_unwritable_out(tmp_path: Path, factories: str, capsys) -> None:
    if not torch.cuda.is_available():
        code, _, err = run_cli(
            ["line", "--model", "userfactories:good", "--device", "cuda"], capsys
        )
        _one_line_error(code, err, "--device cpu")
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(
        ["line", "--model", "userfactories:good", "--out", str(tmp_path / "file" / "sub")], capsys
    )
    _one_line_error(code, err, "--out", "writable")


def test_hessian_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "h"
    code, stdout, err = run_cli(
        ["hessian", "--example", "linear", "--k", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    land = lm.examples.linear_regression()
    x, _ = lm.examples.linear_regression_data()
    a = np.hstack([x.numpy(), np.ones((200, 1))])
    exact = np.linalg.eigvalsh(2 * a.T @ a / 200)
    with open(out / "eigenvalues.csv") as f:
        rows = list(csv.DictReader(f))
    top = [float(r["eigenvalue"]) for r in rows if r["which"] == "largest"]
    np.testing.assert_allclose(top, exact[::-1], rtol=1e-8)
    sd = lm.load(out / "spectrum.h5")
    assert sd.meta["trace"] == pytest.approx(exact.sum(), rel=1e-10)  # 2 parameters: exact
    assert (out / "spectrum.png").exists() and json.loads((out / "run.json").read_text())[
        "command"
    ] == "hessian"
    assert "top eigenvalues" in stdout
    assert land.num_parameters == 2
    code, _, err = run_cli(
        ["hessian", "--example", "linear", "--k", "3", "--out", str(out)], capsys
    )
    _one_line_error(code, err, "--k 3", "2 parameters")


def test_nested_and_prefixed_checkpoints(tmp_path: Path, factories: str, capsys) -> None:
    """Training checkpoints: {"model": sd}, Lightning's {"state_dict": {"model.<k>": ...}},
    DataParallel's "module." prefix, and an explicit --checkpoint-key; all give θ0."""
    import userfactories  # type: ignore[import-not-found]

    net = userfactories.good()[0]
    sd = {k: v * 2.0 for k, v in net.state_dict().items()}
    expected = float(torch.cat([v.reshape(-1) for v in sd.values()]).norm())
    variants = {
        "training": ({"model": sd, "optimizer": {"lr": torch.tensor(0.1)}, "epoch": 3}, []),
        "lightning": ({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, []),
        "dataparallel": ({f"module.{k}": v for k, v in sd.items()}, []),
        "keyed": ({"ema": {"weights": sd}, "raw": sd}, ["--checkpoint-key", "ema.weights"]),
    }
    for name, (obj, extra) in variants.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        out = tmp_path / name
        code, _, err = run_cli(
            [
                "line",
                "--model",
                "userfactories:good",
                "--steps",
                "3",
                "--checkpoint",
                str(tmp_path / f"{name}.pt"),
                *extra,
                "--out",
                str(out),
            ],
            capsys,
        )
        assert code == 0, (name, err)
        assert lm.load(out / "line.h5").meta["theta0_norm"] == pytest.approx(expected, rel=1e-6)
    code, _, err = run_cli(
        [
            "line",
            "--model",
            "userfactories:good",
            "--checkpoint",
            str(tmp_path / "keyed.pt"),
            "--checkpoint-key",
            "ema.nope",
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    _one_line_error(code, err, "'nope' is not in", "weights")


def test_connect_command(tmp_path: Path, factories: str, capsys) -> None:
    import userfactories  # type: ignore[import-not-found]

    net_a = userfactories.good()[0]
    torch.manual_seed(7)
    net_b = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    torch.save(net_a.state_dict(), tmp_path / "a.pt")
    torch.save(net_b.state_dict(), tmp_path / "b.pt")
    out = tmp_path / "c"
    args = ["connect", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    code, stdout, err = run_cli(
        [
            *args,
            "--model",
            "userfactories:good",
            "--curve",
            "polychain",
            "--epochs",
            "3",
            "--steps",
            "21",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    path = lm.load(out / "path.h5")
    x, y = userfactories._data()
    with torch.no_grad():
        la = float(nn.functional.cross_entropy(net_a(x), y))
        lb = float(nn.functional.cross_entropy(net_b(x), y))
    t = path.alpha
    assert t[0] == -0.5 and t[-1] == 1.5  # the issue's -0.5 ... 1.5 of the segment
    l0, l1 = path["loss"][np.argmin(np.abs(t))], path["loss"][np.argmin(np.abs(t - 1))]
    assert l0 == pytest.approx(la, rel=1e-5) and l1 == pytest.approx(lb, rel=1e-5)
    inside = (t >= 0) & (t <= 1)  # the barrier is measured between the two minima
    chord = (1 - t[inside]) * l0 + t[inside] * l1
    run = json.loads((out / "run.json").read_text())
    assert run["barrier_line"]["train/loss"]["height"] == pytest.approx(
        float(np.max(path["loss"][inside] - chord)), abs=1e-12
    )
    curve = lm.load(out / "curve.h5")
    assert curve["loss"][0] == pytest.approx(la, rel=1e-5)  # the curve keeps its endpoints
    assert "barrier along the straight" in stdout and "polychain curve" in stdout
    code, _, err = run_cli([*args[:2], "--model", "userfactories:good"], capsys)
    _one_line_error(code, err, "two checkpoints")


def test_trajectory_command(tmp_path: Path, factories: str, capsys) -> None:
    import userfactories  # type: ignore[import-not-found]

    net, _, (x, y) = userfactories.good()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    paths, losses = [], []
    for i in range(5):
        torch.save(net.state_dict(), tmp_path / f"ep{i}.pt")
        paths.append(str(tmp_path / f"ep{i}.pt"))
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(net(x), y)))
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    out = tmp_path / "t"
    code, stdout, err = run_cli(
        ["trajectory", *paths, "--model", "userfactories:good", "--steps", "9", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    s = lm.load(out / "surface.h5")
    traj = s.meta["trajectory"]
    assert np.allclose(traj["coords"][-1], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(traj["values"]["train/loss"], losses, rtol=1e-5)
    assert sum(traj["explained_variance_ratio"]) <= 1 + 1e-9
    assert (out / "trajectory.png").exists() and "PC1" in stdout
    # The same command again resumes the whole plane from the run's journal.
    code, _, err = run_cli(
        ["trajectory", *paths, "--model", "userfactories:good", "--steps", "9", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    again = lm.load(out / "surface.h5")
    assert again.meta["engine"]["resumed_points"] == 81
    assert again["loss"].tobytes() == s["loss"].tobytes()
    code, _, err = run_cli(
        ["trajectory", paths[0], "--model", "userfactories:good", "--out", str(out)], capsys
    )
    _one_line_error(code, err, "at least 2 checkpoints")


QUADRATIC = textwrap.dedent(
    """
    import numpy as np
    import lossmap as lm

    H = np.diag([4.0, 2.0, 1.0, 0.5, 0.25])
    C = np.array([1.0, -2.0, 0.5, 3.0, -1.0])

    def bowl():
        return lm.examples.quadratic(H, center=C, offset=0.5)
    """
)


def test_sharpness_command_on_a_quadratic(tmp_path: Path, capsys, monkeypatch) -> None:
    """Every number of `lossmap sharpness` against its closed form on a known bowl."""
    (tmp_path / "bowl.py").write_text(QUADRATIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import bowl  # type: ignore[import-not-found]

    out = tmp_path / "s"
    eps, sigma, asig = 0.01, 0.1, 0.1
    code, stdout, err = run_cli(
        [
            "sharpness",
            "--model",
            "bowl:bowl",
            "--eps",
            str(eps),
            "--sigma",
            str(sigma),
            "--adaptive-sigma",
            str(asig),
            "--samples",
            "400",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    with open(out / "sharpness.csv") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    h, c = np.diag(bowl.H), bowl.C
    assert float(rows["lambda_max"]["value"]) == pytest.approx(4.0, rel=1e-8)
    box = 0.5 * np.sum(h * (eps * (np.abs(c) + 1)) ** 2)  # the exact box maximum
    assert float(rows["epsilon"]["value"]) == pytest.approx(100 * box / 1.5, rel=1e-6)
    for name, truth in (
        ("average", 0.5 * sigma**2 * h.sum()),
        ("average_adaptive", 0.5 * asig**2 * np.sum(h * c**2)),
    ):
        v, se = float(rows[name]["value"]), float(rows[name]["stderr"])
        assert abs(v - truth) < 4 * se, (name, v, truth, se)
    assert "epsilon" in stdout and (out / "sharpness_directions.png").exists()
    code, _, err = run_cli(["sharpness", "--model", "bowl:bowl", "--eps", "0"], capsys)
    _one_line_error(code, err, "--eps must be a positive number")
    code, _, err = run_cli(["sharpness", "--model", "bowl:bowl", "--samples", "-3"], capsys)
    _one_line_error(code, err, "--samples must be at least 2")


def test_connect_on_batchnorm(tmp_path: Path, factories: str, capsys) -> None:
    """A curve between two BatchNorm models: fitted in train mode, every point evaluated
    with recomputed statistics; the straight path with --reset-bn agrees at t = 0, 1."""
    for i in (0, 1):
        batchnorm_checkpoint(tmp_path / f"bn{i}.pt", seed=i, scale=0.3)
    out = tmp_path / "c"
    code, _stdout, err = run_cli(
        [
            "connect",
            str(tmp_path / "bn0.pt"),
            str(tmp_path / "bn1.pt"),
            "--model",
            "userfactories:batchnorm",
            "--reset-bn",
            "--epochs",
            "2",
            "--steps",
            "9",
            "--batch-size",
            "16",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    path, curve = lm.load(out / "path.h5"), lm.load(out / "curve.h5")
    t = path.alpha
    for i, ti in ((0, 0.0), (-1, 1.0)):
        assert curve["loss"][i] == pytest.approx(
            path["loss"][np.argmin(np.abs(t - ti))], rel=1e-5, abs=1e-7
        )
    assert path.meta["reset_bn"] is True and "recomputed" in curve.meta["batchnorm"]


def test_interpolate_on_batchnorm_warns_of_foreign_statistics(
    tmp_path: Path, factories: str, capsys
) -> None:
    """The straight path of `interpolate` keeps a's BatchNorm statistics: it says so in
    one line (issue #17: it printed nothing), and b's value on it is indeed not b's own."""
    nets = [batchnorm_checkpoint(tmp_path / f"bn{i}.pt", seed=i, scale=0.3) for i in (0, 1)]
    out = tmp_path / "i"
    args = [
        str(tmp_path / "bn0.pt"),
        str(tmp_path / "bn1.pt"),
        "--model",
        "userfactories:batchnorm",
    ]
    code, _stdout, err = run_cli(
        ["interpolate", *args, "--steps", "5", "--span", "0,1", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "a's running statistics" in err and err.count("BatchNorm") == 1
    import userfactories  # type: ignore[import-not-found]

    x, y = userfactories._data()
    with torch.no_grad():
        own_b = float(userfactories.batchnorm()[1](nets[1](x), y))
    assert abs(lm.load(out / "path.h5")["loss"][-1] - own_b) > 1e-4


def test_trajectory_of_batchnorm_checkpoints(tmp_path: Path, factories: str, capsys) -> None:
    """Checkpoints of a BatchNorm model (parameters and running statistics) map a
    trajectory; the loss at the final point is that checkpoint's own, with its own
    statistics (issue #17: the command passed only parameters and was refused)."""
    import userfactories  # type: ignore[import-not-found]

    x, y = userfactories._data()
    nets = [
        batchnorm_checkpoint(tmp_path / f"ep{i}.pt", seed=i, scale=0.2 * (i + 1)) for i in range(3)
    ]
    out = tmp_path / "t"
    code, _stdout, err = run_cli(
        [
            "trajectory",
            *(str(tmp_path / f"ep{i}.pt") for i in range(3)),
            "--model",
            "userfactories:batchnorm",
            "--steps",
            "5",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    surf = lm.load(out / "surface.h5")
    with torch.no_grad():
        own = float(nn.functional.cross_entropy(nets[-1](x), y))
    # The plane is centred on the last checkpoint, evaluated with its own statistics.
    at = surf.meta["trajectory"]["values"]
    (key,) = [k for k in at if k.endswith("/loss")]
    assert at[key][-1] == pytest.approx(own, rel=1e-5)


def test_model_file_imports_its_neighbours(tmp_path: Path, capsys) -> None:
    """`--model path/to/file.py:factory` can import the modules beside that file, as
    `python path/to/file.py` can (issue #17: it needed PYTHONPATH)."""
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "tinynet.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Linear(4, 3)\n"
    )
    (pkg / "entry.py").write_text(
        "import torch\nfrom torch import nn\nimport tinynet\n\n"
        "def f():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x, y = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)\n"
        "    return tinynet.make(), nn.CrossEntropyLoss(), (x, y)\n"
    )
    out = tmp_path / "run"
    code, _stdout, err = run_cli(
        ["line", "--model", f"{pkg / 'entry.py'}:f", "--steps", "5", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert (out / "line.h5").exists()
