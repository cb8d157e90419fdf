"""Run ONE (mode, database, workload, repeat) in this process and print one JSON result line.

    python benchmarks/worker.py --mode ours --db sqlite --workload W1 [--quick]
    python benchmarks/worker.py --mode plain --db postgresql --url postgresql+asyncpg://... \
        --workload W2 --profile /tmp/w2.prof

``run.py`` starts one worker per measurement, with the interpreter of the mode's virtualenv, so
each history library's process-global listeners stay in their own process. The worker pins
itself to one CPU, builds a fresh schema, runs the workload and prints a line starting with
``BENCH-RESULT`` followed by JSON (``ok`` false and ``error`` when the workload failed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import traceback
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "


def pin_to_cpu(cpu: int) -> bool:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError, ValueError):
        return False
    return True


async def run_workload(
    mode: Any, db: str, url: str, workload: str, *, quick: bool, profiler: cProfile.Profile | None
) -> dict[str, Any]:
    import sqlalchemy as sa
    import workloads
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(url)
    counter = workloads.StatementCounter()
    sa.event.listen(engine.sync_engine, "before_cursor_execute", counter)
    try:
        async with engine.begin() as conn:
            if db == "postgresql":
                await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
                await conn.execute(sa.text("CREATE SCHEMA public"))
                server = await conn.scalar(sa.text("SHOW server_version"))
            else:
                server = await conn.scalar(sa.text("SELECT sqlite_version()"))
            await conn.run_sync(mode.Base.metadata.create_all)
        ctx = workloads.Ctx(
            mode=mode,
            db=db,
            engine=engine,
            Session=async_sessionmaker(engine, expire_on_commit=False),
            stmts=counter,
            scale=workloads.SCALES["quick" if quick else "full"],
            profiler=profiler,
        )
        result = await workloads.WORKLOADS[workload](ctx)
        result["server_version"] = server
        result["notes"] = ctx.notes
        return result
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", required=True)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], required=True)
    parser.add_argument("--url", help="database URL (PostgreSQL); SQLite uses a temp file")
    parser.add_argument("--workload", required=True)
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: do not pin)")
    parser.add_argument("--profile", metavar="PATH", help="cProfile the measured part to PATH")
    parser.add_argument("--sqlite-dir", help="where to create the SQLite file (a temp dir in it)")
    args = parser.parse_args(argv)

    out: dict[str, Any] = {
        "mode": args.mode,
        "db": args.db,
        "workload": args.workload,
        "repeat": args.repeat,
        "quick": args.quick,
        "pinned": args.cpu >= 0 and pin_to_cpu(args.cpu),
        "python": platform.python_version(),
    }
    tmpdir = None
    profiler = cProfile.Profile() if args.profile else None
    try:
        import modes
        import sqlalchemy

        out["sqlalchemy"] = sqlalchemy.__version__
        url = args.url
        if args.db == "sqlite":
            tmpdir = tempfile.mkdtemp(prefix="history-bench-", dir=args.sqlite_dir)
            url = f"sqlite+aiosqlite:///{os.path.join(tmpdir, 'bench.db')}"
        elif not url:
            raise SystemExit("--url is required for PostgreSQL")
        mode = modes.build(args.mode)
        out["library"] = mode.library
        out["library_version"] = mode.library_version
        out["strategy"] = mode.strategy
        result = asyncio.run(
            run_workload(mode, args.db, url, args.workload, quick=args.quick, profiler=profiler)
        )
        out.update(result)
        out["ok"] = True
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        message = str(exc).strip().splitlines()
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {message[0] if message else ''}"[:300]
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT_PREFIX + json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
