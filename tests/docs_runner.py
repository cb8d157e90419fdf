"""Run the Python snippets of one page of the docs, in order, as a reader would.

``python tests/docs_runner.py PAGE ASYNC_URL SYNC_URL``: the snippets of ``PAGE`` (``README.md``,
``docs/usage.md``, ...) run one after the other in one module namespace, with top-level
``await`` allowed (as in the asyncio REPL) and one event loop for the whole page. A snippet
that is a complete program (it calls ``asyncio.run()``) runs in a thread of its own. What a
page assumes without showing it (a session, some rows, "your auth dependency") is supplied by
the page's hooks in ``tests/docs_pages.py``, which also check the snippets' results. Run in a
subprocess per page: pages call ``make_versioned()`` and define models of the same names.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def snippets(page: str) -> list[str]:
    """The Python snippets of ``page`` (a path relative to the repository root), in order."""
    return [m.group(1) for m in FENCE.finditer((ROOT / page).read_text())]


async def run_page(page: str, async_url: str, sync_url: str) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.docs_pages import PAGES, Page

    spec: Page = PAGES[page]
    ns = _module("docs_page")
    ns.update(ASYNC_URL=async_url, SYNC_URL=sync_url)
    try:
        for number, source in enumerate(snippets(page), start=1):
            for hook in spec.before.get(number, ()):
                await hook(ns)
            where = f"{page}#{number}"
            if "asyncio.run(" in source:
                code = compile(source, where, "exec")
                await asyncio.to_thread(exec, code, _module(f"docs_program_{number}"))
                continue
            code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, ns)
            if inspect.iscoroutine(result):
                await result
        for hook in spec.after:
            await hook(ns)
    finally:
        for closing in spec.cleanup:
            await closing(ns)


def _module(name: str) -> dict[str, Any]:
    """The namespace of a new module ``name``, registered in ``sys.modules`` (declarative
    classes resolve their annotations in their module)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    return module.__dict__


def main() -> None:
    page, async_url, sync_url = sys.argv[1:4]
    asyncio.run(run_page(page, async_url, sync_url))
    print(f"{page}: {len(snippets(page))} snippets ran")


if __name__ == "__main__":
    main()
