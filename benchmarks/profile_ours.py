"""Where does ours spend its time? cProfile of the measured part of W1 and W2, per database.

    python benchmarks/profile_ours.py                          # W1, W2 on SQLite and PostgreSQL
    python benchmarks/profile_ours.py --db sqlite --workloads W2 --top 30

Runs the same worker as the benchmark (one process, one CPU) for ``plain`` and ``ours`` with the
profiler switched on around the measured part only, then prints:

* how long commits took in each mode, and how much of ours' extra time is inside the library;
* the library's own functions: calls, own time, cumulative time (share of the measured time);
* where the library's cumulative time goes: SQL execution it asks for versus its own Python.

Profiling slows everything down by a similar factor, so read shares, not absolute times.
Statements executed inside the flush hook run through SQLAlchemy's greenlet bridge; the
cumulative time of a hook function includes waiting for the database.
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import RESULT_PREFIX, default_sqlite_dir, start_postgres  # noqa: E402

LIBRARY = "sqlalchemy_history_async"
Func = tuple[str, int, str]


def _name(func: Func) -> str:
    path, line, name = func
    if path == "~":
        return name
    parts = Path(path).parts
    for anchor in (LIBRARY, "sqlalchemy", "asyncpg", "aiosqlite"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[i:])}:{line}({name})"
    return f"{Path(path).name}:{line}({name})"


def _is_library(func: Func) -> bool:
    return f"/{LIBRARY}/" in func[0].replace("\\", "/")


def _find(stats: dict[Func, Any], path_part: str, name: str) -> Func | None:
    for func in stats:
        if func[2] == name and path_part in func[0].replace("\\", "/"):
            return func
    return None


def profile_one(mode: str, db: str, workload: str, url: str | None, args: Any) -> tuple[Any, Path]:
    out = Path(tempfile.mkstemp(prefix=f"prof-{mode}-{db}-{workload}-", suffix=".prof")[1])
    cmd = [sys.executable, str(BENCH / "worker.py"), "--mode", mode, "--db", db]
    cmd += ["--workload", workload, "--profile", str(out)]
    if url:
        cmd += ["--url", url]
    if db == "sqlite" and args.sqlite_dir:
        cmd += ["--sqlite-dir", args.sqlite_dir]
    if args.quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if not result.get("ok"):
        raise SystemExit(f"{mode} {db} {workload} failed: {result.get('error')}")
    return result, out


def report(
    db: str, workload: str, plain: dict[str, Any], ours: dict[str, Any], prof: Path, top: int
) -> str:
    stats: dict[Func, Any] = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    measured = ours["seconds"]
    lines = [
        f"=== {db} {workload}: plain {plain['seconds']:.3f}s ({plain['statements']} statements), "
        f"ours {measured:.3f}s ({ours['statements']} statements) — both profiled",
    ]
    # Library functions called from outside the library: the hook's entry points.
    roots = [f for f in stats if _is_library(f) and not any(_is_library(c) for c in stats[f][4])]
    root_time = sum(stats[f][3] for f in roots)
    lines.append(
        f"time inside the library (entry points' cumulative): {root_time:.3f}s = "
        f"{root_time / measured:.0%} of ours' measured time; "
        f"extra over plain: {measured - plain['seconds']:.3f}s"
    )
    for f in sorted(roots, key=lambda f: -stats[f][3]):
        _cc, nc, tt, ct, _ = stats[f]
        lines.append(f"  entry {_name(f):<70} calls {nc:>7}  cum {ct:7.3f}s  {ct / measured:5.1%}")
    # SQL the library asks for, versus its own Python.
    execute = _find(stats, "sqlalchemy/engine/base.py", "execute")
    sql_time = 0.0
    sql_calls = 0
    if execute is not None:
        for caller, (_cc, nc, _tt, ct) in stats[execute][4].items():
            if _is_library(caller):
                sql_time += ct
                sql_calls += nc
    own = sum(stats[f][2] for f in stats if _is_library(f))
    lines.append(
        f"  of which Connection.execute called by the library: {sql_time:.3f}s in {sql_calls} "
        f"calls ({sql_time / measured:.0%}); the library's own Python (tottime): {own:.3f}s "
        f"({own / measured:.0%}); the rest is SQLAlchemy/driver work the library calls into"
    )
    lines.append("")
    lines.append(
        f"  {'function':<70} {'calls':>7} {'own s':>7} {'cum s':>7} {'cum %':>6} {'us/call':>8}"
    )
    funcs = sorted((f for f in stats if _is_library(f)), key=lambda f: -stats[f][3])
    for f in funcs[:top]:
        _cc, nc, tt, ct, _ = stats[f]
        lines.append(
            f"  {_name(f):<70} {nc:>7} {tt:7.3f} {ct:7.3f} {ct / measured:6.1%} "
            f"{ct / max(nc, 1) * 1e6:8.1f}"
        )
    # What the library's statements cost, by callee of the library's functions.
    lines.append("")
    lines.append("  heaviest callees of library functions (outside the library):")
    callee_time: dict[Func, list[float]] = {}
    for f, (_, _, _, _, callers) in stats.items():
        if _is_library(f):
            continue
        for caller, (_cc, nc, _tt, ct) in callers.items():
            if _is_library(caller):
                entry = callee_time.setdefault(f, [0, 0.0])
                entry[0] += nc
                entry[1] += ct
    for f, (nc, ct) in sorted(callee_time.items(), key=lambda kv: -kv[1][1])[:10]:
        lines.append(f"  {_name(f):<70} {int(nc):>7} {'':>7} {ct:7.3f} {ct / measured:6.1%}")
    return "\n".join(lines)


def _frame_function(frame: str) -> str:
    """``func (path/file.py:123)`` → ``func (path/file.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})"


def py_spy_summary(mode: str, db: str, workload: str, url: str | None, args: Any) -> str:
    """Wall-clock view from py-spy samples of the worker's main thread (``--py-spy``).

    Unlike cProfile, sampling sees the real stack inside SQLAlchemy's greenlet, and samples
    taken while the event loop waits for the database show up as idle time.
    """
    out = Path(tempfile.mkstemp(prefix=f"spy-{mode}-{db}-{workload}-", suffix=".txt")[1])
    worker = [sys.executable, str(BENCH / "worker.py"), "--mode", mode, "--db", db]
    worker += ["--workload", workload]
    if url:
        worker += ["--url", url]
    if db == "sqlite" and args.sqlite_dir:
        worker += ["--sqlite-dir", args.sqlite_dir]
    if args.quick:
        worker.append("--quick")
    found = shutil.which(args.py_spy)
    executable = str(Path(found).resolve()) if found else args.py_spy
    spy = [executable, "record", "--idle", "--threads", "--rate", "500", "--format", "raw"]
    subprocess.run(
        [*spy, "-o", str(out), "--", *worker], capture_output=True, text=True, cwd=BENCH, check=True
    )
    buckets: dict[str, int] = {}
    by_function: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "MainThread" not in frames[0] or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = frames[1:]
        if not frames:
            continue
        if any("importlib" in f or "_find_and_load" in f for f in frames):
            continue  # start-up, not the workload
        total += count
        library = [f for f in frames if f"{LIBRARY}/" in f]
        leaf = frames[-1] if frames else ""
        if library:
            bucket = "history hook (library frames on the stack)"
            for name in {_frame_function(f) for f in library}:
                by_function[name] = by_function.get(name, 0) + count
        elif "select (selectors.py" in leaf or "EpollSelector.select" in leaf:
            bucket = "event loop idle: waiting for the database"
        elif not frames[0].startswith("<module>"):
            bucket = "SQLAlchemy flush/commit outside the hook (greenlet)"
        else:
            bucket = "workload, event loop and driver glue"
        buckets[bucket] = buckets.get(bucket, 0) + count
    out.unlink()
    lines = [f"--- py-spy wall-clock, {mode} {db} {workload}: {total} main-thread samples"]
    for bucket, count in sorted(buckets.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {bucket:<55} {count / max(total, 1):6.1%}")
    lines.append("  library functions (inclusive, share of all main-thread samples):")
    for name, count in sorted(by_function.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"    {name:<70} {count / max(total, 1):6.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--sqlite-dir", default=default_sqlite_dir())
    parser.add_argument("--keep", action="store_true", help="keep the .prof files")
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        nargs="?",
        const="py-spy",
        help="also sample plain and ours with py-spy (pip install py-spy) for a wall-clock view",
    )
    args = parser.parse_args(argv)
    dbs = [d for d in args.db.split(",") if d]
    server = start_postgres() if "postgresql" in dbs else None
    try:
        for db in dbs:
            url = server.url if db == "postgresql" and server is not None else None
            for workload in [w for w in args.workloads.split(",") if w]:
                plain, plain_prof = profile_one("plain", db, workload, url, args)
                ours, ours_prof = profile_one("ours", db, workload, url, args)
                print(report(db, workload, plain, ours, ours_prof, args.top), flush=True)
                print(flush=True)
                if args.py_spy:
                    for mode in ("plain", "ours"):
                        print(py_spy_summary(mode, db, workload, url, args), flush=True)
                    print(flush=True)
                if args.keep:
                    print(f"profiles: {plain_prof} {ours_prof}")
                else:
                    plain_prof.unlink()
                    ours_prof.unlink()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
