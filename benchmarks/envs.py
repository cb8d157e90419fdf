"""Virtualenvs for the competing libraries, one per library (they conflict with each other).

Each environment gets the competitor at a pinned version plus the same SQLAlchemy, aiosqlite and
asyncpg versions as the interpreter running the benchmark, so every mode runs on the same stack.
An environment is reused while its requirements are unchanged (``bench-env.json`` inside it).
When one cannot be built, :func:`ensure` returns the reason, and its modes are reported as
unavailable instead of being dropped.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

#: competitor → (pinned distribution, import name). The latest releases when this was written;
#: both declare support for SQLAlchemy 2.1 (Continuum ``<2.2``, History ``>=2``).
COMPETITORS: dict[str, tuple[str, str]] = {
    "history": ("sqlalchemy-history==2.2.1", "sqlalchemy_history"),
    "continuum": ("sqlalchemy-continuum==2.0.0", "sqlalchemy_continuum"),
}
MARKER = "bench-env.json"
PIP_TIMEOUT = 900


@dataclass
class Env:
    name: str
    python: str | None
    error: str | None = None


def competitor_of(mode: str) -> str | None:
    """``history-validity`` → ``history``; ``None`` for modes run by the benchmark's own Python."""
    prefix = mode.split("-", 1)[0]
    return prefix if prefix in COMPETITORS else None


def requirements(name: str) -> list[str]:
    """The competitor, and the stack of the running interpreter, pinned."""
    package, _ = COMPETITORS[name]
    stack = []
    for dist in ("sqlalchemy", "greenlet", "aiosqlite", "asyncpg"):
        try:
            stack.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            stack.append(dist)
    return [package, *stack]


def _python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _short(text: str, lines: int = 4) -> str:
    useful = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in useful if "error" in line.lower()] or useful
    return " | ".join(errors[-lines:])[:400] or "(no output)"


def ensure(name: str, root: Path, log: bool = True) -> Env:
    """Build (or reuse) the environment of competitor ``name`` under ``root``."""
    path = root / name
    reqs = requirements(name)
    wanted = {"python": sys.version.split()[0], "requirements": reqs}
    marker = path / MARKER
    python = _python(path)
    if marker.is_file() and python.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                return Env(name, str(python))
        except (OSError, ValueError):
            pass
    if log:
        print(f"building the {name} environment in {path}: {' '.join(reqs)}", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    except Exception as exc:
        return Env(name, None, f"could not create a virtualenv: {exc}")
    try:
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Env(name, None, f"pip install timed out after {PIP_TIMEOUT}s")
    if result.returncode != 0:
        return Env(name, None, "pip install failed: " + _short(result.stderr + result.stdout))
    _, module = COMPETITORS[name]
    check = subprocess.run(
        [str(python), "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check.returncode != 0:
        return Env(name, None, f"import {module} failed: " + _short(check.stderr))
    marker.write_text(json.dumps(wanted))
    return Env(name, str(python))
