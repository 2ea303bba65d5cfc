"""What every benchmark report states about the machine and the code it measured."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    """An installed distribution's version, or ``"not installed"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def code_state() -> str:
    """The git commit and the lossmap files changed in the working tree (read at start:
    others may commit while a long run is going)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "src/lossmap").split("\n")
        changed = ", ".join(line[3:].removeprefix("src/lossmap/") for line in dirty if line)
    except (OSError, subprocess.CalledProcessError):
        return "git unknown"
    return f"git {commit}; changed in the working tree at start: {changed or 'nothing'}"
