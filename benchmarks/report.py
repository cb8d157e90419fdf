"""Medians, ratios and targets; text tables, the Markdown report and its chart."""

# The tables and the report use typographic signs on purpose (multiplication sign, en dash).
# ruff: noqa: RUF001

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ours ÷ plain (median seconds) must not exceed these.
RATIO_TARGETS: dict[str, dict[str, float]] = {
    "W1": {"sqlite": 1.25, "postgresql": 1.6},
    "W2": {"sqlite": 2.0, "postgresql": 1.5},
    "W2c": {"postgresql": 1.5},
}
W4_OVER_W2_TARGET = 1.10  # per-commit cost with a big identity map ÷ W2's per-commit cost
W5_TIME_TARGET = 1.10  # ms/commit around commit `mid` ÷ ms/commit over commits 1-50
W5_RSS_SLACK_MB = 2.0  # RSS growth from commit `mid` to the end, beyond plain's own growth
W3_QUERY_TARGET = 2  # queries for a row's whole history with changesets
OURS = "ours"

TITLES = {
    "W1": "W1 batch: inserts in commits of 100, then a one-column update of every row",
    "W2": "W2 web: one row per commit (inserts, then updates of random rows)",
    "W2c": "W2c web, concurrent: W2 split over 8 asyncio tasks, each with its own AsyncSession",
    "W3": "W3 reads: a row's whole history with changesets; current and as-of lookups",
    "W4": "W4 big identity map: single-row commits with many objects loaded in the session",
    "W5": "W5 growth: does a commit cost more once history has grown?",
    "W6": "W6 bulk statements: one ORM bulk INSERT of 10,000 rows, one UPDATE of all of them",
}
DB_NAMES = {"sqlite": "SQLite (aiosqlite)", "postgresql": "PostgreSQL (asyncpg)"}


# --- summarizing ----------------------------------------------------------------------------


def _median(values: list[Any]) -> Any:
    med = statistics.median(values)
    return int(med) if all(isinstance(v, int) for v in values) and med == int(med) else med


def summarize(
    runs: list[dict[str, Any]], meta: dict[str, Any], plan: list[tuple[str, str]]
) -> dict[str, Any]:
    modes: list[str] = meta["config"]["modes"]
    unavailable: dict[str, str] = meta.get("unavailable", {})
    results: dict[str, dict[str, dict[str, Any]]] = {}
    notes: dict[str, list[str]] = {}
    versions: dict[str, dict[str, Any]] = {}
    servers: dict[str, str] = {}
    for db, workload in plan:
        table = results.setdefault(db, {}).setdefault(workload, {})
        for mode in modes:
            if mode in unavailable:
                table[mode] = {"status": "unavailable", "error": unavailable[mode]}
                continue
            mine = [r for r in runs if (r["db"], r["workload"], r["mode"]) == (db, workload, mode)]
            failed = [r for r in mine if not r.get("ok")]
            if failed or not mine:
                error = failed[0].get("error") if failed else "not run"
                table[mode] = {"status": "failed", "error": error}
                continue
            numeric = {
                k
                for k, v in mine[0].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "repeat"
            }
            table[mode] = {
                "status": "ok",
                "repeats": len(mine),
                "median": {k: _median([r[k] for r in mine if k in r]) for k in sorted(numeric)},
            }
            for r in mine:
                for note in r.get("notes", []):
                    if note not in notes.setdefault(mode, []):
                        notes[mode].append(note)
                versions.setdefault(
                    mode,
                    {
                        k: r.get(k)
                        for k in ("library", "library_version", "strategy", "sqlalchemy", "python")
                    },
                )
                if r.get("server_version"):
                    servers[db] = r["server_version"]
    for db, tables in results.items():
        for workload, table in tables.items():
            _derive(db, workload, table, tables)
    return {
        "meta": meta,
        "plan": [list(p) for p in plan],
        "results": results,
        "notes": notes,
        "versions": versions,
        "server_versions": servers,
    }


def _ok(entry: dict[str, Any] | None) -> bool:
    return entry is not None and entry.get("status") == "ok"


def _derive(
    db: str, workload: str, table: dict[str, Any], tables: dict[str, dict[str, Any]]
) -> None:
    """Ratios to plain, cross-workload figures and the verdicts for ours."""
    plain = table.get("plain")
    for mode, entry in table.items():
        if not _ok(entry):
            continue
        med = entry["median"]
        if _ok(plain) and plain["median"].get("seconds"):
            entry["ratio"] = med["seconds"] / plain["median"]["seconds"]
        if workload == "W4":
            w2 = tables.get("W2", {}).get(mode)
            if _ok(w2):
                entry["w2_per_commit_ms"] = w2["median"]["per_commit_ms"]
                entry["w4_over_w2"] = med["per_commit_ms"] / w2["median"]["per_commit_ms"]
        if workload == "W5":
            entry["time_growth"] = med["ms_per_commit_mid"] / med["ms_per_commit_first"]
            entry["rss_growth_mb"] = med["rss_end_mb"] - med["rss_mid_mb"]
    ours = table.get(OURS)
    if _ok(ours):
        ours["target"] = _verdict(db, workload, ours, table)


def _verdict(db: str, workload: str, ours: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    med = ours["median"]
    if workload in RATIO_TARGETS:
        limit = RATIO_TARGETS[workload].get(db)
        ratio = ours.get("ratio")
        if limit is None or ratio is None:
            return {"pass": None, "text": "n/a"}
        return {"pass": ratio <= limit, "text": f"≤ {limit:g}×"}
    if workload == "W3":
        queries = med.get("history_read_queries")
        ok = queries is not None and queries <= W3_QUERY_TARGET
        return {"pass": ok, "text": f"≤ {W3_QUERY_TARGET} queries"}
    plain = table.get("plain")
    if workload == "W4":
        ratio = ours.get("w4_over_w2")
        if ratio is None:
            return {"pass": None, "text": "needs W2"}
        text = f"W4÷W2 ≤ {W4_OVER_W2_TARGET:g}"
        if ratio <= W4_OVER_W2_TARGET:
            return {"pass": True, "text": text}
        # plain's own W4÷W2 shows what the ORM and the machine add; judge what is left
        if _ok(plain) and plain.get("w4_over_w2"):
            relative = ratio / plain["w4_over_w2"]
            if relative <= W4_OVER_W2_TARGET:
                return {"pass": True, "text": f"{text} relative to plain's"}
        return {"pass": False, "text": text}
    if workload == "W5":
        flat_statements = med["statements_per_commit_mid"] <= med["statements_per_commit_first"]
        flat_time = ours["time_growth"] <= W5_TIME_TARGET
        relative_time = False
        if not flat_time and _ok(plain) and plain.get("time_growth"):
            # plain's commits slow down too as the tables grow: judge ours' growth beyond it
            flat_time = relative_time = ours["time_growth"] / plain["time_growth"] <= W5_TIME_TARGET
        allowed = W5_RSS_SLACK_MB + (max(plain["rss_growth_mb"], 0.0) if _ok(plain) else 0.0)
        flat_rss = ours["rss_growth_mb"] <= allowed
        failed = [
            name
            for name, ok in (
                ("statements", flat_statements),
                ("time", flat_time),
                ("RSS", flat_rss),
            )
            if not ok
        ]
        detail = "grows: " + ", ".join(failed) if failed else None
        if relative_time and not failed:
            detail = "flat relative to plain"
        return {"pass": not failed, "text": "flat", "detail": detail, "rss_allowed_mb": allowed}
    return {"pass": None, "text": "n/a"}


# --- tables ---------------------------------------------------------------------------------


def _s(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _x(v: float | None) -> str:
    return "—" if v is None else (f"{v:.2f}×" if v < 100 else f"{v:.0f}×")


def _n(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _target(entry: dict[str, Any]) -> str:
    target = entry.get("target")
    if not target:
        return ""
    verdict = {True: "pass", False: "FAIL", None: "—"}[target["pass"]]
    return f"{verdict} ({target.get('detail') or target['text']})"


Column = tuple[str, Callable[[dict[str, Any]], str]]


def _m(key: str, fmt: Callable[[Any], str] = _s) -> Callable[[dict[str, Any]], str]:
    return lambda e: fmt(e["median"].get(key))


COMMON_TAIL: list[Column] = [
    ("statements", _m("statements", _n)),
    ("peak RSS MB", _m("peak_rss_mb", lambda v: _n(v, 1))),
]

COLUMNS: dict[str, list[Column]] = {
    "W1": [
        ("median s", _m("seconds")),
        ("× plain", lambda e: _x(e.get("ratio"))),
        ("inserts s", _m("insert_seconds")),
        ("updates s", _m("update_seconds")),
        *COMMON_TAIL,
    ],
    "W2": [
        ("median s", _m("seconds")),
        ("× plain", lambda e: _x(e.get("ratio"))),
        ("ms/commit", _m("per_commit_ms", lambda v: _n(v, 2))),
        *COMMON_TAIL,
    ],
    "W3": [
        ("history read s", _m("history_read_seconds")),
        ("queries", _m("history_read_queries", _n)),
        ("joinedload s", _m("history_read_joined_seconds")),
        ("joinedload queries", _m("history_read_joined_queries", _n)),
        ("versions", _m("versions_read", _n)),
        ("lookups s", _m("seconds")),
        ("× plain", lambda e: _x(e.get("ratio"))),
        ("current s", _m("current_seconds")),
        ("as-of s", _m("asof_seconds")),
        ("peak RSS MB", _m("peak_rss_mb", lambda v: _n(v, 1))),
    ],
    "W4": [
        ("median s", _m("seconds")),
        ("× plain", lambda e: _x(e.get("ratio"))),
        ("ms/commit", _m("per_commit_ms", lambda v: _n(v, 2))),
        ("W2 ms/commit", lambda e: _n(e.get("w2_per_commit_ms"), 2)),
        ("W4÷W2", lambda e: _x(e.get("w4_over_w2"))),
        *COMMON_TAIL,
    ],
    "W6": [
        ("median s", _m("seconds")),
        ("× plain", lambda e: _x(e.get("ratio"))),
        ("insert s", _m("insert_seconds")),
        ("update s", _m("update_seconds")),
        *COMMON_TAIL,
    ],
    "W5": [
        ("total s", _m("seconds")),
        ("× plain", lambda e: _x(e.get("ratio"))),
        ("ms/commit first", _m("ms_per_commit_first", lambda v: _n(v, 2))),
        ("ms/commit mid", _m("ms_per_commit_mid", lambda v: _n(v, 2))),
        ("growth", lambda e: _x(e.get("time_growth"))),
        ("stmts/commit first", _m("statements_per_commit_first", lambda v: _n(v, 2))),
        ("stmts/commit mid", _m("statements_per_commit_mid", lambda v: _n(v, 2))),
        ("RSS MB mid", _m("rss_mid_mb", lambda v: _n(v, 1))),
        ("RSS MB end", _m("rss_end_mb", lambda v: _n(v, 1))),
    ],
}
COLUMNS["W2c"] = COLUMNS["W2"]


def table_rows(workload: str, table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    columns = COLUMNS[workload]
    headers = ["mode", *(name for name, _ in columns), "target (ours)"]
    rows = []
    for mode, entry in table.items():
        if entry["status"] != "ok":
            cell = f"{entry['status']}: {entry.get('error') or ''}".strip()
            rows.append([mode, cell, *[""] * len(columns)])
            continue
        rows.append([mode, *(fmt(entry) for _, fmt in columns), _target(entry)])
    return headers, rows


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            # a failure message spans the row; do not let it widen one column
            if not (i == 1 and all(c == "" for c in row[2:])):
                widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if all(c == "" for c in row[2:]):
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table; the first ``text_columns`` are left-aligned, numbers right-aligned."""

    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |"]
    aligns = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    lines.append("|" + "|".join(aligns) + "|")
    for row in rows:
        if all(c == "" for c in row[2:]):
            row = [row[0], esc(row[1]), *["" for _ in row[2:]]]
        lines.append("| " + " | ".join(esc(c) for c in row) + " |")
    return "\n".join(lines)


def text_tables(summary: dict[str, Any]) -> str:
    out = []
    for db, tables in summary["results"].items():
        for workload, table in tables.items():
            out.append(f"== {DB_NAMES[db]} — {TITLES[workload]}")
            out.append(_text_table(*table_rows(workload, table)))
            out.append("")
    for mode, notes in summary["notes"].items():
        for note in notes:
            out.append(f"note ({mode}): {note}")
    return "\n".join(out).rstrip()


# --- the report -----------------------------------------------------------------------------


CHART_WORKLOADS = ["W1", "W2", "W2c", "W3", "W4", "W5"]
CHART_LABELS = {
    "W1": "W1 batch",
    "W2": "W2 web",
    "W2c": "W2c concurrent",
    "W3": "W3 lookups",
    "W4": "W4 big\nidentity map",
    "W5": "W5 growth",
}


def write_chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = summary["results"]
    modes = [m for m in summary["meta"]["config"]["modes"] if m != "plain"]
    dbs = list(results)
    fig, axes = plt.subplots(1, len(dbs), figsize=(7.5 * len(dbs), 5.2), squeeze=False, sharey=True)
    colors = plt.get_cmap("tab10")
    for ax, db in zip(axes[0], dbs, strict=True):
        workloads = [w for w in CHART_WORKLOADS if w in results[db]]
        width = 0.8 / max(len(modes), 1)
        for j, mode in enumerate(modes):
            xs, ys, missing = [], [], []
            for i, workload in enumerate(workloads):
                entry = results[db][workload].get(mode, {})
                x = i - 0.4 + width * (j + 0.5)
                if entry.get("ratio"):
                    xs.append(x)
                    ys.append(entry["ratio"])
                else:
                    missing.append(x)
            ax.bar(xs, ys, width, label=mode, color=colors(j))
            for x in missing:
                ax.text(x, 1.0, "×", ha="center", va="bottom", color=colors(j), fontsize=9)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels([CHART_LABELS[w] for w in workloads], fontsize=9)
        ax.set_title(DB_NAMES[db])
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("median time ÷ plain SQLAlchemy (log scale; lower is better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(modes), fontsize=9, frameon=False)
    fig.suptitle("History libraries through AsyncSession: cost relative to no history (× = failed)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict[str, Any], md_path: Path, png_path: Path) -> None:
    write_chart(summary, png_path)
    md_path.write_text(markdown(summary, png_path.name))


def _versions_table(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    headers = ["mode", "library", "strategy", "SQLAlchemy", "Python"]
    rows = []
    for mode in meta["config"]["modes"]:
        if mode in meta.get("unavailable", {}):
            rows.append([mode, f"unavailable: {meta['unavailable'][mode]}", "", "", ""])
            continue
        v = summary["versions"].get(mode)
        if v is None:
            rows.append([mode, "did not run", "", "", ""])
            continue
        lib = f"{v['library']} {v['library_version']}" if v.get("library") else "— (no history)"
        rows.append([mode, lib, v.get("strategy") or "—", v["sqlalchemy"], v["python"]])
    return _md_table(headers, rows, text_columns=len(headers))


def _duration(meta: dict[str, Any]) -> str | None:
    from datetime import datetime

    try:
        start = datetime.fromisoformat(meta["started"])
        end = datetime.fromisoformat(meta["finished"])
    except (KeyError, ValueError):
        return None
    return f"{(end - start).total_seconds() / 60:.0f} minutes"


def markdown(summary: dict[str, Any], png_name: str) -> str:
    meta = summary["meta"]
    config = meta["config"]
    machine = meta["machine"]
    quick = " (quick smoke-run sizes)" if config["quick"] else ""
    servers = summary["server_versions"]
    lines = [
        "# Benchmarks",
        "",
        "How much does recording history cost an application that uses `AsyncSession`? This page",
        "compares sqlalchemy-history-async (`ours`) with the same models and no history (`plain`)",
        "and with the latest releases of SQLAlchemy-History and SQLAlchemy-Continuum, each in",
        "both of its storage strategies (`validity`: every version row carries the transaction",
        "that ended it; `subquery`: no end column, lookups search for the newest older version).",
        "",
        f"![Median time relative to plain SQLAlchemy, per workload and mode]({png_name})",
        "",
        "The tables and chart below are regenerated by the benchmark itself; the numbers are from",
        f"the run of {meta['started'][:10]}{quick}.",
        "",
        "## Rerunning it",
        "",
        "```console",
        "$ nox -s bench                       # both databases, all workloads and modes",
        "$ nox -s bench -- --quick            # a small smoke run (a few minutes)",
        "$ nox -s bench -- --db sqlite --workloads W1,W2 --modes plain,ours --repeats 5",
        "$ nox -s bench -- --report           # also rewrite this page and its chart",
        "```",
        "",
        "The `bench` nox session installs the library, builds one virtualenv per competitor under",
        "`.nox/bench-envs/` (reused while their pins are unchanged) and starts a throwaway",
        "PostgreSQL server (`devservers/postgres.py`). Each run also writes every measurement to",
        "`benchmarks/results/<time>.json`. `python benchmarks/worker.py --help` runs a single",
        "measurement, and `python benchmarks/profile_ours.py` profiles ours on W1 and W2.",
        "The competitors' slowest modes take most of a full run's time"
        + (f" (this one took {_duration(meta)})" if _duration(meta) else "")
        + "; `--modes plain,ours` is",
        "much quicker when only ours is of interest.",
        "",
        "## How it measures",
        "",
        "- **Same application code in every mode.** One model,",
        "  `Article(id int pk, title str, body text, counter int)`, driven through `AsyncSession`",
        "  (aiosqlite on a file in a temporary directory, asyncpg on a local server) with",
        "  `expire_on_commit=False`. Modes differ only in the library switched on before the",
        "  model is defined.",
        "- **No disk in the way.** PostgreSQL runs with `fsync` and `synchronous_commit` off, and",
        f"  the SQLite file lives under `{config.get('sqlite_dir') or 'the system temp dir'}`"
        + (" (memory)" if str(config.get("sqlite_dir")).startswith("/dev/shm") else "")
        + ": a disk flush per commit",
        "  depends on the machine, not on the library, and on a shared machine it is mostly",
        "  noise. With a real disk every ratio below moves towards 1× (`--sqlite-dir /tmp`).",
        "- **One process per measurement,** pinned to one CPU (PostgreSQL is pinned to the",
        "  others), with a fresh schema. History libraries install process-global listeners, so",
        "  modes never share a process; the competitors conflict with each other, so each runs",
        "  from its own virtualenv on the same SQLAlchemy, greenlet, aiosqlite and asyncpg",
        "  versions as ours.",
        "- **Interleaved repeats, medians, ratios from the same run.** "
        f"{config['repeats']} repeats",
        f"  (W5: {config['growth_repeats']}); in each repeat every mode runs once, in turn.",
        "  `× plain` is the median time of a mode divided by the median time of `plain` in",
        "  this run.",
        "- **Statements** are `before_cursor_execute` events on the engine during the measured",
        "  part: an executemany counts once; BEGIN and COMMIT are not counted. **Peak RSS** is",
        "  the worker's `ru_maxrss`.",
        "- **Every workload checks its results** before it reports a time: row counts and",
        "  values; for modes that version, the number of versions and transactions, that each",
        "  row's newest version equals the row, and for the validity strategy exactly one open",
        "  version (`end_transaction_id IS NULL`) per row and an unbroken chain of closed ones.",
        "  A mode that is fast but wrong fails instead of winning.",
        "- **Reading the numbers.** Absolute times depend on the machine and on whatever else",
        "  runs on it (see the load averages below); ratios from interleaved medians are much",
        "  steadier, but treat differences of a few percent as noise. Statement counts are exact",
        "  and the same on every machine.",
        "",
        "## Workloads",
        "",
        "| | what is measured |",
        "|---|---|",
        "| W1 | 2,000 inserts in commits of 100, then a one-column update of all 2,000 rows in "
        "commits of 100. |",
        "| W2 | 1,000 commits of one row each in one session: 500 inserts, then 500 updates of "
        "random existing rows (fixed seed). |",
        "| W2c | PostgreSQL only: W2 split over 8 concurrent asyncio tasks, each with its own "
        "`AsyncSession`. |",
        "| W3 | Reads. (a) One row with 1,000 versions: all versions with their changesets, and "
        "how many queries that takes — ours: `select(V).where(V.id == x)"
        ".options(selectinload(V.previous))` then `v.changeset`; competitors: their documented "
        "`obj.versions` and `v.changeset`. (b) 1,000 current-version and 1,000 as-of lookups of "
        "single rows in a version table of 100,000 rows (10,000 rows × 10 versions, written "
        "directly with Core). `plain` runs (b) on a hand-rolled history table of the same "
        "shape. The time and ratio columns are (b). |",
        "| W4 | 20,000 rows loaded into the session, then 50 single-row commits (25 inserts, 25 "
        "updates of loaded rows); cost per commit, compared with W2's. |",
        "| W5 | 10,000 commits of one row each, a session per commit (odd commits insert, even "
        "ones update a random row). Statements and time per commit over commits 1–50 (`first`) "
        "and 4,951–5,000 (`mid`); RSS after commits 5,000 and 10,000. |",
        "| W6 | `session.execute(insert(Article), rows)` of 10,000 rows in one commit, then "
        "`session.execute(update(Article).values(counter=Article.counter + 1))` in another. A "
        "mode that records no history for these statements fails the workload. |",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores"
        + (f", {machine['memory_gb']} GB RAM" if machine.get("memory_gb") else ""),
        f"- OS: {machine['platform']}",
        f"- Python {machine['python']}",
    ]
    if "sqlite" in servers:
        lines.append(f"- SQLite {servers['sqlite']} (aiosqlite)")
    if "postgresql" in servers:
        lines.append(
            f"- PostgreSQL {servers['postgresql']} (asyncpg; fsync and synchronous "
            "commit off: a throwaway server)"
        )
    source = meta.get("library_source") or {}
    if source.get("commit"):
        dirty = " plus uncommitted changes" if source.get("uncommitted_changes") else ""
        lines.append(f"- sqlalchemy-history-async at commit `{source['commit']}`{dirty}")
    lines.append(
        f"- Run: {meta['started']} → {meta.get('finished', '?')}; load average at start "
        f"{meta.get('load_average_start')}, at end {meta.get('load_average_end')}"
    )
    lines += ["", _versions_table(summary), ""]

    for db, tables in summary["results"].items():
        lines += [f"## {DB_NAMES[db]}", ""]
        for workload, table in tables.items():
            lines += [f"### {TITLES[workload]}", "", _md_table(*table_rows(workload, table)), ""]
    lines += _targets_section(summary)
    notes = [(mode, note) for mode, ns in summary["notes"].items() for note in ns]
    if notes:
        lines += ["## Notes from the run", ""]
        lines += [f"- `{mode}`: {note}" for mode, note in notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _targets_section(summary: dict[str, Any]) -> list[str]:
    rows = []
    for db, tables in summary["results"].items():
        for workload, table in tables.items():
            ours = table.get(OURS)
            if ours is None:
                continue
            if ours["status"] != "ok":
                rows.append([DB_NAMES[db], workload, "", f"{ours['status']}: {ours.get('error')}"])
                continue
            target = ours.get("target") or {}
            plain = table.get("plain")
            measured = _measured_for_target(workload, ours, plain if _ok(plain) else None)
            verdict = {True: "pass", False: "**FAIL**", None: "—"}[target.get("pass")]
            if target.get("detail"):
                verdict += f" ({target['detail']})"
            rows.append([DB_NAMES[db], workload, target.get("text", ""), f"{measured} — {verdict}"])
    if not rows:
        return []
    return [
        "## Targets for ours",
        "",
        "Ratios are ours ÷ plain, medians of this run. W4 compares ours' cost per commit with",
        "20,000 objects loaded against its own W2 cost per commit. W5 is flat when statements",
        f"per commit do not grow, time per commit grows by at most {W5_TIME_TARGET:g}×, and",
        f"RSS grows by at most {W5_RSS_SLACK_MB:g} MB more than plain's between the middle and",
        "the end of the run. `plain` drifts too between W2 and W4 and across W5 (the tables",
        "grow; the machine is shared): where ours misses the absolute W4 or W5 time target but",
        "stays within it relative to plain's own drift, the verdict says so.",
        "",
        _md_table(["database", "workload", "target", "measured"], rows, text_columns=4),
        "",
    ]


def _measured_for_target(workload: str, ours: dict[str, Any], plain: dict[str, Any] | None) -> str:
    med = ours["median"]
    if workload in RATIO_TARGETS:
        return _x(ours.get("ratio"))
    if workload == "W3":
        queries, versions = med.get("history_read_queries"), med.get("versions_read")
        return f"{_n(queries)} queries for {_n(versions)} versions"
    plain = plain or {}
    if workload == "W4":
        return f"W4÷W2 = {_x(ours.get('w4_over_w2'))} (plain: {_x(plain.get('w4_over_w2'))})"
    if workload == "W5":
        return (
            f"statements {med['statements_per_commit_first']:.2f} → "
            f"{med['statements_per_commit_mid']:.2f}, time {_x(ours['time_growth'])} "
            f"(plain: {_x(plain.get('time_growth'))}), RSS +{ours['rss_growth_mb']:.1f} MB "
            f"(plain: +{plain.get('rss_growth_mb', 0.0):.1f} MB)"
        )
    return ""
