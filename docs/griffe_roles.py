"""A griffe extension for the API reference: the package's reST-isms in Markdown.

The docstrings are prose written for ``help()`` and editors, with two reST habits that
Markdown does not know:

- roles, ``:func:`name```, ``:class:`~module.Name```: a public name of the package becomes a
  link to its entry in the reference, anything else inline code;
- literal blocks, a paragraph ending in ``::`` followed by an indented block: a fenced Python
  code block.

It also shows SQLAlchemy's ``hybrid_property`` as what it is to a reader, a property.

Loaded by mkdocstrings (``extensions`` in ``mkdocs.yml``); nothing in the package imports it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PACKAGE = "sqlalchemy_history_async"
ROLE = re.compile(r":(?:func|meth|class|exc|attr|mod|data|obj):`(~?)([\w.]+)`")
CALLABLE_ROLES = (":func:", ":meth:")
HYBRID_PROPERTY = "sqlalchemy.ext.hybrid.hybrid_property"


class ReSTRoles(griffe.Extension):
    """Rewrite the docstrings of the package's objects once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path == PACKAGE:
            _rewrite(pkg, _public_paths(pkg))

    # griffe 1.x names the same event differently.
    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self.on_package(pkg=pkg)


def _public_paths(pkg: griffe.Module) -> dict[str, str]:
    """Short name → path in the reference, for the names the reference documents: those the
    package exports and those its public modules (no ``_`` prefix) export."""
    paths = {name: f"{PACKAGE}.{name}" for name in _exports(pkg)}
    for module in pkg.modules.values():
        if not module.name.startswith("_"):
            for name in _exports(module):
                paths.setdefault(f"{module.name}.{name}", f"{module.path}.{name}")
    return paths


def _exports(module: griffe.Module) -> list[str]:
    return [str(name) for name in module.exports or ()]


def _rewrite(obj: griffe.Object, public: dict[str, str]) -> None:
    if obj.docstring is not None:
        local = _module_of(obj)
        obj.docstring.value = literal_blocks(roles(obj.docstring.value, public, local))
    for name, member in list(obj.members.items()):
        if member.is_alias:
            continue
        assert isinstance(member, griffe.Object)
        if isinstance(member, griffe.Function) and _is_hybrid_property(member):
            member = _as_property(member)
            obj.set_member(name, member)
        _rewrite(member, public)


def _is_hybrid_property(function: griffe.Function) -> bool:
    return any(d.callable_path == HYBRID_PROPERTY for d in function.decorators)


def _as_property(function: griffe.Function) -> griffe.Attribute:
    attribute = griffe.Attribute(
        function.name,
        annotation=function.returns,
        lineno=function.lineno,
        endlineno=function.endlineno,
        docstring=function.docstring,
    )
    attribute.labels.update({"property", "hybrid"})
    return attribute


def _module_of(obj: griffe.Object) -> str | None:
    """The public module (``fastapi``, ``testing``, ...) an object belongs to, if any."""
    parts = obj.path.split(".")
    if len(parts) > 1 and not parts[1].startswith("_"):
        return parts[1]
    return None


def roles(text: str, public: dict[str, str], local: str | None = None) -> str:
    """Replace every reST role of ``text`` by a reference link or inline code."""

    def replace(match: re.Match[str]) -> str:
        tilde, target = match.groups()
        name = target.removeprefix(PACKAGE + ".").lstrip(".")
        shown = target.rsplit(".", 1)[-1] if tilde else target.lstrip(".")
        if match.group(0).startswith(CALLABLE_ROLES):
            shown += "()"
        path = public.get(name) or (public.get(f"{local}.{name}") if local else None)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    return ROLE.sub(replace, text)


def literal_blocks(text: str) -> str:
    """Turn reST literal blocks (``...::`` and an indented block) into fenced code blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.rstrip().endswith("::"):
            out.append(line)
            continue
        indent = _indent(line)
        stripped = line.rstrip()[:-2].rstrip()
        out.append(stripped + ":" if stripped else "")
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        body = [b for b in block if b.strip()]
        if not body:
            continue
        cut = min(_indent(b) for b in body)
        pad = " " * indent
        out.append("")
        out.append(pad + "```python")
        out.extend((pad + b[cut:]) if b.strip() else "" for b in _trim_leading(block))
        out.append(pad + "```")
        out.append("")
    return "\n".join(out)


def _trim_leading(block: list[str]) -> list[str]:
    while block and not block[0].strip():
        block = block[1:]
    return block


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))
