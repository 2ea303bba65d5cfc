"""The crash-safe journal and resuming the engine from it."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_of
from torch import nn

import lossmap as lm
from lossmap.store import Journal, JournalMismatch, hash_tensors


def test_blobs_roundtrip_exactly(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", {"a": 1})
    for key, value in {
        "f64": np.random.default_rng(0).standard_normal((3, 4)),
        "f32": np.arange(5, dtype=np.float32) / 3,
        "i64": np.array([1, -2, 3]),
        "nan": np.array([np.nan, np.inf, -0.0]),
    }.items():
        j.put(key, value)
        got = j.get(key)
        assert got is not None and got.dtype == value.dtype
        assert got.tobytes() == value.tobytes()  # bit for bit, NaN and -0.0 included
    assert j.get("missing") is None
    j.close()


def test_fingerprint_mismatch_names_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal(path, {"steps": 41, "seed": 0, "checkpoint": "abc"}).close()
    Journal(path, {"steps": 41, "seed": 0, "checkpoint": "abc"}).close()  # same: fine
    with pytest.raises(JournalMismatch) as e:
        Journal(path, {"steps": 51, "seed": 0, "checkpoint": "abd"})
    msg = str(e.value)
    assert "steps: 41 -> 51" in msg and "checkpoint: abc -> abd" in msg and "--restart" in msg
    assert "seed" not in msg and "\n" not in msg
    j = Journal(path, {"steps": 51}, restart=True)  # discards the old one
    assert j.fingerprint == {"steps": 51}
    j.close()


def test_rows_are_all_or_nothing(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", {})
    j.add_rows("plane", np.array([0, 1]), np.ones((2, 3)))
    with pytest.raises(ValueError):  # lengths differ: fails in the middle of the insert
        j.add_rows("plane", np.array([2, 3, 4]), np.ones((2, 3)))
    idx, _ = j.rows("plane", 3)
    assert idx.tolist() == [0, 1]  # nothing of the failed chunk landed
    # A second connection (another process) sees the committed rows only.
    other = sqlite3.connect(tmp_path / "j.sqlite")
    assert other.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 2
    other.close()
    j.close()


def test_hash_tensors_sees_values_dtypes_and_names() -> None:
    a = {"w": torch.zeros(3)}
    assert hash_tensors(a) == hash_tensors({"w": torch.zeros(3)})
    assert hash_tensors(a) != hash_tensors({"w": torch.tensor([0.0, 0.0, 1e-30])})
    assert hash_tensors(a) != hash_tensors({"w": torch.zeros(3, dtype=torch.float64)})
    assert hash_tensors(a) != hash_tensors({"v": torch.zeros(3)})


class Stop(Exception):
    pass


@pytest.mark.parametrize("strategy", ["auto", "loop", "affine-vmap"])
def test_plane_resumes_bit_identical(tmp_path: Path, mlp_data, strategy: str) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(
        model, nn.CrossEntropyLoss(), data={"train": (x, y), "test": (x[:30], y[:30])}
    )
    d1, d2 = lm.directions.random(land, 2, seed=3)
    kw = {"span": 1.0, "steps": (13, 11), "strategy": strategy, "chunk_size": 16}
    full = lm.plane(land, d1, d2, **kw)

    before = state_of(model)
    path = tmp_path / "journal.sqlite"
    seen: list[int] = []

    def die_after_three(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 3:
            raise Stop  # as a crash in the middle of the grid would

    with Journal(path, {"run": 1}) as j, pytest.raises(Stop):
        lm.plane(land, d1, d2, progress=die_after_three, journal=j, **kw)
    assert_unchanged(model, before)
    with Journal(path, {"run": 1}) as j:
        finished = len(j.rows("plane", 4)[0])
        assert 0 < finished < 13 * 11
        computed: list[int] = []
        again = lm.plane(land, d1, d2, progress=lambda d, t: computed.append(d), journal=j, **kw)
    assert again.meta["engine"]["resumed_points"] == finished
    # Only the points not yet done were computed: the progress starts at `finished`.
    assert computed[0] == finished and computed[-1] == 13 * 11
    for k in full.values:
        assert np.array_equal(full[k], again[k], equal_nan=True), k
        assert full[k].tobytes() == again[k].tobytes(), k
    # A third run finds everything done and computes nothing.
    with Journal(path, {"run": 1}) as j:
        third = lm.plane(land, d1, d2, journal=j, **kw)
    assert third.meta["engine"]["resumed_points"] == 13 * 11
    assert third["loss"].tobytes() == full["loss"].tobytes()


def test_resume_keeps_the_first_strategy(tmp_path: Path, mlp_data) -> None:
    """A resumed auto run reuses the strategy the first attempt chose (other strategies
    differ in the last bits), instead of timing again."""
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    d1, d2 = lm.directions.random(land, 2, seed=0)
    with Journal(tmp_path / "j.sqlite", {}) as j:
        j.set_meta("engine/plane", {"strategy": "loop", "chunk_size": 7, "reason": "test"})
        s = lm.plane(land, d1, d2, steps=5, journal=j)
    assert s.meta["engine"]["strategy"] == "loop" and s.meta["engine"]["chunk_size"] == 7
    ref = lm.plane(land, d1, d2, steps=5, strategy="loop", chunk_size=7)
    assert s["loss"].tobytes() == ref["loss"].tobytes()


def test_spectral_density_resumes_probe_by_probe(tmp_path: Path, mlp_data) -> None:
    from lossmap.hessian import HessianOperator, spectral_density

    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    full = spectral_density(land, probes=3, steps=12, seed=5)

    op = HessianOperator(land)
    real = op.hvp
    calls = {"n": 0}

    def dies_in_the_third_probe(v):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 2 * 12 + 3:
            raise Stop
        return real(v)

    op.hvp = dies_in_the_third_probe  # type: ignore[method-assign]
    with Journal(tmp_path / "j.sqlite", {}) as j, pytest.raises(Stop):
        spectral_density(op, probes=3, steps=12, seed=5, journal=j)
    with Journal(tmp_path / "j.sqlite", {}) as j:
        op2 = HessianOperator(land)
        again = spectral_density(op2, probes=3, steps=12, seed=5, journal=j)
    assert again.meta["resumed_probes"] == 2
    assert op2.matvecs == 12  # only the third probe was computed
    assert again.matvecs == full.matvecs
    assert again.nodes.tobytes() == full.nodes.tobytes()
    assert again.weights.tobytes() == full.weights.tobytes()
    assert again.density.tobytes() == full.density.tobytes()


def test_out_of_memory_halves_the_chunk_and_goes_on(monkeypatch, mlp_data, caplog) -> None:
    from lossmap.evaluate import runner

    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    d1, d2 = lm.directions.random(land, 2, seed=1)
    ref = lm.plane(land, d1, d2, steps=7, strategy="vmap", chunk_size=7)
    real = runner._passes

    def small_memory(ev, land_, points, idx, dsets, cache):  # type: ignore[no-untyped-def]
        if len(idx) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ev, land_, points, idx, dsets, cache)

    monkeypatch.setattr(runner, "_passes", small_memory)
    with caplog.at_level("WARNING", logger="lossmap"):
        s = lm.plane(land, d1, d2, steps=7, strategy="vmap", chunk_size=7)
    assert s.meta["engine"]["oom_halvings"] > 0 and s.meta["engine"]["chunk_size"] <= 2
    assert any("halving the chunk" in r.message for r in caplog.records)
    np.testing.assert_allclose(s["loss"], ref["loss"], rtol=1e-6)


def test_damaged_rows_are_not_returned(tmp_path: Path, caplog) -> None:
    """A row whose bytes changed after it was written fails its checksum: rows() leaves
    it out (the engine computes it again) and a warning names the journal."""
    path = tmp_path / "j.sqlite"
    j = Journal(path, {"a": 1})
    j.add_rows("line", np.arange(6), np.arange(18.0).reshape(6, 3))
    db = sqlite3.connect(path)
    for i in (1, 4):
        (data,) = db.execute("SELECT data FROM rows WHERE idx = ?", (i,)).fetchone()
        flipped = bytes([data[0] ^ 0x01]) + data[1:]
        db.execute("UPDATE rows SET data = ? WHERE idx = ?", (flipped, i))
    db.execute("UPDATE rows SET idx = 7 WHERE idx = 5")  # a row moved to another key
    db.commit()
    db.close()
    with caplog.at_level("WARNING", logger="lossmap"):
        idx, rows = j.rows("line", 3)
    assert idx.tolist() == [0, 2, 3]
    assert rows.tolist() == np.arange(18.0).reshape(6, 3)[[0, 2, 3]].tolist()
    assert any(str(path) in r.message and "3 rows" in r.message for r in caplog.records)
    j.close()


def test_damaged_blob_is_missing_work(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, {})
    j.put("average/0", np.arange(4.0))
    j._db.execute("UPDATE blobs SET data = ? WHERE key = 'average/0'", (b"garbage",))
    assert j.get("average/0") is None  # recomputed, never np.load's error
    j.put("average/0", np.arange(4.0))
    assert j.get("average/0").tolist() == [0.0, 1.0, 2.0, 3.0]  # type: ignore[union-attr]
    j.close()


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_journal_behind_a_link_is_refused(tmp_path: Path, suffix: str) -> None:
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    (tmp_path / f"journal.sqlite{suffix}").symlink_to(other)
    for kw in ({}, {"restart": True}, {"read_only": True}):
        with pytest.raises(ValueError, match="symbolic link"):
            Journal(tmp_path / "journal.sqlite", {"a": 1}, **kw)  # type: ignore[arg-type]
    assert other.read_bytes() == b""


def test_read_only_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path, {"a": 1}) as j:
        j.start("line", 5)
        j.add_rows("line", np.arange(3), np.ones((3, 2)))
        run_id = j.run_id
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with Journal(path, read_only=True) as j:
        assert j.run_id == run_id and j.fingerprint == {"a": 1}
        assert j.progress()["line"]["done"] == 3
        with pytest.raises(sqlite3.OperationalError):
            j.set_meta("x", 1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_run_id_is_kept_on_resume_and_new_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path, {"a": 1}) as j:
        first = j.run_id
    with Journal(path, {"a": 1}) as j:
        assert j.run_id == first and first
    with Journal(path, {"a": 1}, restart=True) as j:
        assert j.run_id != first


def test_stale_temporaries_match_atomic_path_only(tmp_path: Path) -> None:
    from lossmap.results import atomic_path, stale_temporaries

    class Killed(BaseException):
        pass

    leftovers = []
    for name in ("surface.h5", "path.h5", "run.json", "surface.csv"):
        with pytest.raises(Killed), atomic_path(tmp_path / name) as tmp:
            tmp.write_text("x")
            leftovers.append(tmp.name)
            os.link(tmp, tmp.with_name(tmp.name + ".kept"))  # survives the cleanup
            raise Killed
    kept = sorted(p.name[: -len(".kept")] for p in tmp_path.glob("*.kept"))
    for k in kept:
        (tmp_path / (k + ".kept")).rename(tmp_path / k)
    (tmp_path / "surface.h5").write_text("mine")
    (tmp_path / "notes.tmp.txt").write_text("mine")
    (tmp_path / "link.abcdefgh.tmp.h5").symlink_to(tmp_path / "surface.h5")
    assert sorted(p.name for p in stale_temporaries(tmp_path)) == sorted(leftovers)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_get_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    """A result written through a temporary file is readable as a plain ``open()`` would
    make it (0644 under umask 022), not mkstemp's 0600 (a report.html nobody else could
    open); the umask still rules (077 keeps it private)."""
    from lossmap.results import atomic_path

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "report.html") as tmp:
            tmp.write_text("<p>")
        (tmp_path / "plain.html").write_text("<p>")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "report.html").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.html").st_mode) == 0o666 & ~umask
