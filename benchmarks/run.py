"""Side-by-side benchmark of history libraries for SQLAlchemy, through AsyncSession.

    nox -s bench                                 # everything: both databases, all modes
    nox -s bench -- --quick                      # a small smoke run
    nox -s bench -- --db sqlite --workloads W1,W2 --modes plain,ours --repeats 5
    nox -s bench -- --report                     # also rewrite docs/benchmarks.md and .png
    python benchmarks/run.py --help              # without nox (competitor envs are built too)

Each measurement runs in its own worker process (``worker.py``) pinned to one CPU, with the
interpreter of the mode's virtualenv (competitors conflict with each other, see ``envs.py``).
Repeats are interleaved — for each repeat, every mode runs once — and the tables show medians
and ratios to ``plain`` from this same run. Results go to ``benchmarks/results/<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import envs  # noqa: E402
import report  # noqa: E402
from modes import MODES  # noqa: E402
from workloads import ONLY_ON, WORKLOADS  # noqa: E402

DATABASES = ("sqlite", "postgresql")
WORKER = BENCH / "worker.py"
LIBRARY = "sqlalchemy_history_async"
RESULT_PREFIX = "BENCH-RESULT "


def _list(value: str, known: Any, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}"
        )
    return items


def default_sqlite_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", type=lambda v: _list(v, DATABASES, "database"), default=list(DATABASES)
    )
    parser.add_argument(
        "--workloads", type=lambda v: _list(v, WORKLOADS, "workload"), default=list(WORKLOADS)
    )
    parser.add_argument("--modes", type=lambda v: _list(v, MODES, "mode"), default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (3)")
    parser.add_argument(
        "--growth-repeats",
        type=int,
        default=1,
        help="repeats of W5, whose figures compare commits within one run (default 1)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--report", action="store_true", help="rewrite docs/benchmarks.md and docs/benchmarks.png"
    )
    parser.add_argument(
        "--envs-dir",
        type=Path,
        default=REPO / ".nox" / "bench-envs",
        help="where the competitors' virtualenvs live (reused while their pins are unchanged)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1200, help="seconds before a worker is given up (1200)"
    )
    parser.add_argument(
        "--sqlite-dir",
        default=default_sqlite_dir(),
        help="directory for SQLite's temp dirs (default: /dev/shm when present, so disk "
        "flushes do not drown the libraries' own cost; pass /tmp to include the disk)",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="run nothing: print the tables (and with --report, write the report) of a "
        "results file written by an earlier run",
    )
    parser.add_argument(
        "--live-library",
        action="store_true",
        help="import the library from the working tree in every worker instead of from a "
        "copy taken at the start of the run",
    )
    args = parser.parse_args(argv)
    if "plain" not in args.modes:
        args.modes.insert(0, "plain")  # every ratio is to plain, measured in the same run
    args.modes = [m for m in MODES if m in args.modes]
    if args.repeats < 1 or args.growth_repeats < 1:
        parser.error("--repeats and --growth-repeats must be at least 1")
    return args


# --- environments and servers ---------------------------------------------------------------


def prepare_interpreters(modes: list[str], root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Interpreter per available mode, and the reason for each unavailable one."""
    pythons: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    built: dict[str, envs.Env] = {}
    for mode in modes:
        competitor = envs.competitor_of(mode)
        if competitor is None:
            pythons[mode] = sys.executable
            continue
        if competitor not in built:
            built[competitor] = envs.ensure(competitor, root)
        env = built[competitor]
        if env.python is None:
            unavailable[mode] = env.error or "environment could not be built"
            print(f"{mode}: unavailable: {unavailable[mode]}", flush=True)
        else:
            pythons[mode] = env.python
    return pythons, unavailable


def start_postgres() -> Any:
    sys.path.insert(0, str(REPO))
    from devservers import start_postgres as start

    server = start()
    _pin_server(server)
    return server


def _pin_server(server: Any) -> None:
    """Keep PostgreSQL off the workers' CPU: pin the postmaster and its children to the rest."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    others = cpus - {0}
    if not others:
        return
    try:
        postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == postmaster:
            pids.append(int(entry.name))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, others)


# --- running --------------------------------------------------------------------------------


def snapshot_library(dest: Path) -> dict[str, Any]:
    """Copy the library's source tree, so that edits made during a long run are not measured.

    Returns what was measured: the git commit and whether the working tree differed from it.
    """
    shutil.copytree(REPO / LIBRARY, dest / LIBRARY, ignore=shutil.ignore_patterns("__pycache__"))
    info: dict[str, Any] = {"snapshot": str(dest)}
    git = ["git", "-C", str(REPO)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["commit"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", LIBRARY], capture_output=True, text=True
        ).stdout
        info["uncommitted_changes"] = bool(status.strip())
    return info


def run_worker(
    python: str, mode: str, db: str, url: str | None, workload: str, repeat: int, args: Any
) -> dict[str, Any]:
    cmd = [python, str(WORKER), "--mode", mode, "--db", db, "--workload", workload]
    cmd += ["--repeat", str(repeat)]
    if url:
        cmd += ["--url", url]
    if db == "sqlite" and args.sqlite_dir:
        cmd += ["--sqlite-dir", args.sqlite_dir]
    if args.quick:
        cmd.append("--quick")
    env = dict(os.environ)
    if args.library_snapshot and envs.competitor_of(mode) is None:
        # Found before the editable install's path entry: the library as it was at the start.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (args.library_snapshot, env.get("PYTHONPATH")) if p
        )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=args.timeout,
            cwd=BENCH,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return _failure(mode, db, workload, repeat, f"timed out after {args.timeout:.0f}s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return _failure(mode, db, workload, repeat, f"worker exited {proc.returncode}: {tail}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["worker_seconds"] = time.monotonic() - started
    if not result.get("ok"):
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-15:]
    return result


def _failure(mode: str, db: str, workload: str, repeat: int, error: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "db": db,
        "workload": workload,
        "repeat": repeat,
        "ok": False,
        "error": error,
    }


def _progress(result: dict[str, Any], label: str) -> str:
    if not result.get("ok"):
        return f"{label} {result['mode']:<20} FAILED: {result.get('error')}"
    return (
        f"{label} {result['mode']:<20} {result['seconds']:8.3f}s {result['statements']:7d} stmts "
        f"{result['peak_rss_mb']:6.1f} MB  (worker {result.get('worker_seconds', 0):.1f}s)"
    )


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["memory_gb"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_report(summary: dict[str, Any]) -> None:
    md, png = REPO / "docs" / "benchmarks.md", REPO / "docs" / "benchmarks.png"
    report.write_report(summary, md, png)
    print(f"report: {md.relative_to(REPO)}, {png.relative_to(REPO)}")


def rerender(path: Path, write: bool) -> int:
    saved = json.loads(path.read_text())
    plan = [tuple(p) for p in saved["summary"]["plan"]]
    summary = report.summarize(saved["runs"], saved["meta"], plan)
    print(report.text_tables(summary))
    if write:
        write_report(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results is not None:
        return rerender(args.from_results, args.report)
    started = datetime.now(timezone.utc)
    pythons, unavailable = prepare_interpreters(args.modes, args.envs_dir)
    snapshot_dir = None
    library: dict[str, Any] = {}
    args.library_snapshot = None
    if not args.live_library and (REPO / LIBRARY).is_dir():
        snapshot_dir = Path(tempfile.mkdtemp(prefix="history-bench-lib-"))
        library = snapshot_library(snapshot_dir)
        args.library_snapshot = str(snapshot_dir)
    plan = [
        (db, workload)
        for db in args.db
        for workload in args.workloads
        if db in ONLY_ON.get(workload, {db})
    ]
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": load_average(),
        "config": {
            "databases": args.db,
            "workloads": args.workloads,
            "modes": args.modes,
            "repeats": args.repeats,
            "growth_repeats": args.growth_repeats,
            "quick": args.quick,
            "sqlite_dir": args.sqlite_dir,
        },
        "competitor_pins": {name: envs.requirements(name) for name in envs.COMPETITORS},
        "unavailable": unavailable,
        "library_source": library,
    }
    runs: list[dict[str, Any]] = []
    server = start_postgres() if "postgresql" in args.db else None
    try:
        url = server.url if server is not None else None
        for db, workload in plan:
            repeats = args.growth_repeats if workload == "W5" else args.repeats
            broken: set[str] = set()
            for repeat in range(repeats):
                for mode in args.modes:
                    if mode in unavailable or mode in broken:
                        continue
                    result = run_worker(
                        pythons[mode],
                        mode,
                        db,
                        url if db == "postgresql" else None,
                        workload,
                        repeat,
                        args,
                    )
                    runs.append(result)
                    label = f"[{db} {workload} {repeat + 1}/{repeats}]"
                    print(_progress(result, label), flush=True)
                    if not result.get("ok"):
                        broken.add(mode)  # one failure is the answer; do not repeat it
    finally:
        if server is not None:
            server.stop()
        if snapshot_dir is not None:
            shutil.rmtree(snapshot_dir, ignore_errors=True)
    meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["load_average_end"] = load_average()
    summary = report.summarize(runs, meta, plan)
    print()
    print(report.text_tables(summary))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.results_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    print(f"\nresults: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if args.report:
        write_report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
