"""A crash-safe journal of finished work, so that a long run can be resumed.

Why SQLite (the standard library's ``sqlite3``) and not HDF5: a SQLite transaction in
write-ahead-log mode is atomic and durable across a killed process (and, with
``synchronous=FULL``, a power cut): a reader sees a chunk of points entirely or not at
all, and a ``SIGKILL`` in the middle of a write leaves the last committed state intact.
HDF5 gives no such guarantee: a process killed while the library holds the file open
for writing can leave its metadata inconsistent and the whole file unreadable (SWMR
mode narrows this but still needs a clean close). Results are written to HDF5 only at
the end, atomically (temporary file, then rename), from what the journal holds.

The journal holds

- a *fingerprint*: what the run computes (arguments, hashes of the checkpoint, of the
  directions and of the data). Opening a journal with a different fingerprint is refused
  with a one-line error naming what differs, unless ``restart=True``;
- *rows*: finished points of a grid, ``rows(view, idx) -> float64 values``;
- *blobs*: any other finished unit of work (``get``/``put`` of numpy arrays), used by
  sampling loops and curve fitting;
- *progress*: totals and timestamps, so that ``lossmap status`` can report done/total
  and an ETA while a run is going or after it died;
- a *run id*, made when the journal is created: ``run.json`` records it, so that
  ``lossmap status`` can tell the results of this run from older ones.

Every stored row and blob carries a CRC-32 of its key and bytes, written in the same
transaction and checked on read: a damaged row is not returned (the engine computes it
again) and a warning names the file. The journal is never opened through a symbolic
link (lossmap must not write into another program's database), and ``read_only=True``
(``lossmap status``) writes nothing.

>>> import tempfile, numpy as np
>>> with tempfile.TemporaryDirectory() as d:
...     j = Journal(f"{d}/journal.sqlite", {"steps": 41})
...     j.put("average/0", np.arange(3.0))
...     j.get("average/0").tolist(), j.get("average/1")
([0.0, 1.0, 2.0], None)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sqlite3
import stat
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["Blobs", "Journal", "JournalMismatch", "fingerprint_diff", "hash_tensors"]

log = logging.getLogger("lossmap")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    view TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, t REAL NOT NULL,
    crc INTEGER, PRIMARY KEY (view, idx));
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY, data BLOB NOT NULL, t REAL NOT NULL, crc INTEGER);
"""

# The files SQLite keeps next to a database: none of them may be a link.
_SIDECARS = ("", "-wal", "-shm", "-journal")


def _crc(key: str, data: bytes) -> int:
    """CRC-32 of a stored unit's key and bytes (a row moved to another key fails it too)."""
    return zlib.crc32(data, zlib.crc32(key.encode() + b"\0"))


def _check_files(path: Path) -> None:
    """Refuse a journal (or a SQLite side file) that is a link or not a regular file:
    writing through it would change a file outside the run folder."""
    for suffix in _SIDECARS:
        p = Path(str(path) + suffix)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ValueError(
                f"{p} is a symbolic link; lossmap never opens its journal through a link "
                "(it would write into the file it points to): remove the link or choose "
                "another --out"
            )
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{p} is not a regular file; remove it or choose another --out")


class JournalMismatch(ValueError):
    """The run folder's journal was started with other arguments."""


class Blobs(Protocol):
    """What a resumable loop (a curve fit, average sharpness) needs of a journal: numpy
    arrays stored and read back by key. A :class:`Journal` is one; so is a view of one
    under a key prefix, or a dict-backed stand-in in a test."""

    def get(self, key: str) -> np.ndarray | None: ...

    def put(self, key: str, value: np.ndarray) -> None: ...


def hash_tensors(tensors: Mapping[str, Any] | Iterable[Any]) -> str:
    """SHA-256 (first 16 hex digits) of tensors' names, dtypes, shapes and bytes.

    >>> import torch
    >>> hash_tensors({"w": torch.zeros(2)}) == hash_tensors({"w": torch.zeros(2)})
    True
    """
    import torch

    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, Mapping) else enumerate(tensors)
    for k, t in items:
        a = t.detach().cpu().contiguous() if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        h.update(f"{k}|{a.dtype}|{tuple(a.shape)}|".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (``key: old -> new``)."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "(absent)"), new.get(k, "(absent)")
        if a != b:
            out.append(f"{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(x: Any) -> str:
    s = json.dumps(x, default=str) if not isinstance(x, str) else x
    return s if len(s) <= 60 else s[:57] + "..."


def _dump(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _load(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)  # type: ignore[no-any-return]


class Journal:
    """A crash-safe record of finished work in one SQLite file (see the module docstring).

    Args:
        path: the journal file (conventionally ``<run folder>/journal.sqlite``).
        fingerprint: JSON-able description of what the run computes. If the file already
            holds another fingerprint, :class:`JournalMismatch` is raised naming the
            differences, unless ``restart=True``, which discards the old journal.
        restart: start afresh even if the journal exists.
        read_only: only read (``lossmap status``): nothing is created or written, not
            even SQLite's side files where the folder does not already hold them.

    Raises:
        ValueError: the file (or a SQLite side file) is a symbolic link or not a regular
            file, or is not a lossmap journal.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: Mapping[str, Any] | None = None,
        *,
        restart: bool = False,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        _check_files(self.path)
        if restart and not read_only:
            for suffix in _SIDECARS:
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        try:
            if read_only:
                self._db = self._connect_read_only()
            else:
                self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                for table in ("rows", "blobs"):  # journals written before checksums
                    cols = [c[1] for c in self._db.execute(f"PRAGMA table_info({table})")]
                    if "crc" not in cols:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER")
            old = self.meta("fingerprint")
        except sqlite3.DatabaseError as e:
            raise ValueError(
                f"{self.path} is not a lossmap journal ({e}); delete it or pass --restart"
            ) from None
        fp = json.loads(json.dumps(dict(fingerprint or {}), default=str))
        self.previous_pid: int | None = self.meta("pid")
        if read_only:
            self.fingerprint: dict[str, Any] = old or {}
            return
        if old is None:
            with self._tx():
                self._set_meta("fingerprint", fp)
                self._set_meta("created", time.time())
                self._set_meta("run_id", uuid.uuid4().hex)
        elif fingerprint is not None and old != fp:
            diff = fingerprint_diff(old, fp)
            self.close()
            raise JournalMismatch(
                f"{self.path.parent} holds a run started with other arguments "
                f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); "
                "re-run with --restart to discard it, or choose another --out"
            )
        self.fingerprint = fp if old is None else old
        if self.meta("run_id") is None:  # a journal from before run ids
            self.set_meta("run_id", uuid.uuid4().hex)
        if fingerprint is not None:  # a writer: status reports whether it is alive
            self._set_meta("pid", os.getpid())

    def _connect_read_only(self) -> sqlite3.Connection:
        """``mode=ro``; a WAL database whose ``-shm`` is absent (a run that closed
        cleanly) cannot be opened that way without creating it, so it is opened as
        ``immutable`` then: nothing is writing to it."""
        url = "file:" + urllib.request.pathname2url(str(self.path.absolute()))
        shm = Path(str(self.path) + "-shm")
        mode = "mode=ro" if shm.exists() else "mode=ro&immutable=1"
        db = sqlite3.connect(f"{url}?{mode}", uri=True, timeout=30.0, isolation_level=None)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db

    @property
    def run_id(self) -> str | None:
        """Made when the journal was created; ``run.json`` records the same id."""
        rid = self.meta("run_id")
        return str(rid) if rid is not None else None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One atomic transaction: all its writes land, or none do."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ----------------------------------------------------------------- meta
    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able value (atomically)."""
        with self._tx():
            self._set_meta(key, value)

    def meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row is not None else default

    # ---------------------------------------------------------------- blobs
    def get(self, key: str) -> np.ndarray | None:
        """The array stored under ``key``, or ``None`` if that work is not done."""
        row = self._db.execute("SELECT data, crc FROM blobs WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[1] != _crc(key, row[0]):
            self._damaged(f"the unit {key!r}")
            return None
        try:
            return _load(row[0])
        except ValueError as e:
            raise ValueError(
                f"{self.path}: the stored unit {key!r} is unreadable ({e}); pass --restart"
            ) from None

    def put(self, key: str, value: np.ndarray) -> None:
        """Store ``value`` under ``key``, durably, in one transaction."""
        data = _dump(value)
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO blobs (key, data, t, crc) VALUES (?, ?, ?, ?)",
                (key, data, time.time(), _crc(key, data)),
            )

    # ----------------------------------------------------------------- rows
    def start(self, view: str, total: int, extra: Mapping[str, Any] | None = None) -> None:
        """Declare a grid of ``total`` points (for progress reports)."""
        views = dict(self.meta("views", {}))
        views[view] = {"total": int(total), **(dict(extra) if extra else {})}
        self.set_meta("views", views)

    def add_rows(self, view: str, idx: np.ndarray, rows: np.ndarray) -> None:
        """Record finished points ``idx`` (their value rows), all or nothing."""
        now = time.time()
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        data = [(int(i), r.tobytes()) for i, r in zip(idx, rows, strict=True)]
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO rows (view, idx, data, t, crc) VALUES (?, ?, ?, ?, ?)",
                [(view, i, b, now, _crc(f"{view}/{i}", b)) for i, b in data],
            )

    def rows(self, view: str, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(idx [m], rows [m, width])`` of the finished points of ``view``.

        Rows whose checksum fails are left out (so the engine computes them again),
        with a warning naming the journal."""
        stored = self._db.execute(
            "SELECT idx, data, crc FROM rows WHERE view = ? ORDER BY idx", (view,)
        ).fetchall()
        got = [g for g in stored if g[2] == _crc(f"{view}/{g[0]}", g[1])]
        if len(got) < len(stored):
            self._damaged(f"{len(stored) - len(got)} rows of {view!r}")
        idx = np.array([g[0] for g in got], dtype=np.int64)
        rows = np.empty((len(got), width))
        for j, g in enumerate(got):
            r = np.frombuffer(g[1], dtype=np.float64)
            if r.size != width:
                raise ValueError(
                    f"{self.path}: stored rows of {view!r} have {r.size} values, expected "
                    f"{width}; pass --restart"
                )
            rows[j] = r
        return idx, rows

    def _damaged(self, what: str) -> None:
        log.warning("%s: %s failed the checksum (damaged): computing again", self.path, what)

    def progress(self) -> dict[str, Any]:
        """Per view: done, total, first/last write time, points per second, ETA (s)."""
        out: dict[str, Any] = {}
        for view, info in dict(self.meta("views", {})).items():
            done, t_first, t_last = self._db.execute(
                "SELECT COUNT(*), MIN(t), MAX(t) FROM rows WHERE view = ?", (view,)
            ).fetchone()
            total = int(info["total"])
            rate = None
            if done > 1 and t_last > t_first:
                rate = (done - 1) / (t_last - t_first)
            out[view] = {
                "done": int(done),
                "total": total,
                "last_write": t_last,
                "points_per_second": rate,
                "eta_seconds": (total - done) / rate if rate and done < total else None,
            }
        n_blobs, t_blob = self._db.execute("SELECT COUNT(*), MAX(t) FROM blobs").fetchone()
        if n_blobs:
            out["units"] = {"done": int(n_blobs), "last": float(t_blob)}
        return out

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
