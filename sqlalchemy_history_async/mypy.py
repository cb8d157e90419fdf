"""Mypy plugin: typed version classes for versioned models.

Enable it with ``plugins = ["sqlalchemy_history_async.mypy"]`` (``pyproject.toml``) or
``plugins = sqlalchemy_history_async.mypy`` (``mypy.ini``). It imports mypy and is only ever
imported by mypy; nothing in the package imports it.

For every declarative model that has ``__versioned__`` (declared or inherited), semantic
analysis gets what the runtime builds when the model is mapped:

- a version class ``<Model>Version``, subclass of ``Version[Model]`` (or of the version class
  of the versioned model it inherits from), with the model's tracked ``Mapped[...]``
  attributes — columns with their own types, relationships to versioned models with the
  related version class (collections as ``list``, as the temporal relationships load them) —
  and ``previous`` / ``next`` typed with the version class itself;
- ``Model.versions: WriteOnlyMapped[<Model>Version]``.

The version class lives in the model's module under ``<Model>Version@history``, a name no
Python code can bind; ``version_class(Model)`` returns it (and ``X = version_class(Model)``
makes ``X`` usable in annotations), and the package's functions typed with
``Version[Model]`` return it. ``Version.__getattr__`` (a fallback for type checkers without
the plugin) does not apply to these classes: a misspelt attribute is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final

from mypy.nodes import (
    GDEF,
    MDEF,
    AssignmentStmt,
    Block,
    CallExpr,
    ClassDef,
    Decorator,
    DictExpr,
    Expression,
    FuncDef,
    IfStmt,
    ListExpr,
    MemberExpr,
    MypyFile,
    NameExpr,
    RefExpr,
    SetExpr,
    Statement,
    StrExpr,
    SymbolTable,
    SymbolTableNode,
    TupleExpr,
    TypeInfo,
    Var,
)
from mypy.plugin import (
    AttributeContext,
    ClassDefContext,
    DynamicClassDefContext,
    FunctionContext,
    MethodContext,
    Plugin,
    SemanticAnalyzerPluginInterface,
)
from mypy.semanal_shared import has_placeholder
from mypy.type_visitor import TypeTranslator
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    NoneType,
    ProperType,
    Type,
    TypeAliasType,
    TypeOfAny,
    TypeVarType,
    UnboundType,
    UnionType,
    get_proper_type,
)

__all__ = ["plugin"]

_PACKAGE: Final = "sqlalchemy_history_async"
_MODELS: Final = f"{_PACKAGE}._models"
_VERSION: Final = f"{_MODELS}.Version"
_VERSION_CLASS: Final = f"{_MODELS}.version_class"
_MAPPED: Final = "sqlalchemy.orm.base.Mapped"
_WRITE_ONLY: Final = "sqlalchemy.orm.base.WriteOnlyMapped"
_DYNAMIC: Final = "sqlalchemy.orm.base.DynamicMapped"
_MAPPED_ANNOTATIONS: Final = frozenset({_MAPPED, _WRITE_ONLY, _DYNAMIC})
#: Mapped attributes that are not copied to version tables, by type and by constructor.
_NOT_COPIED_TYPES: Final = frozenset(
    {
        "sqlalchemy.orm.descriptor_props.Composite",
        "sqlalchemy.orm.descriptor_props.Synonym",
        "sqlalchemy.orm.properties.MappedSQLExpression",
    }
)
_COPIED: Final = frozenset({"mapped_column", "Column", "deferred", "relationship"})
_NOT_COPIED: Final = frozenset(
    {"composite", "synonym", "column_property", "query_expression", "association_proxy"}
)
_DECLARATIVE_BASES: Final = frozenset(
    {"sqlalchemy.orm.decl_api.DeclarativeBase", "sqlalchemy.orm.decl_api.DeclarativeBaseNoMeta"}
)
#: ``TypeInfo.metadata`` key (serialized with the cache). On a model: ``{"version": fullname of
#: its version class}``; on a version class: ``{"model": ...}``; on a class whose body defines
#: mapped attributes or ``__versioned__``: ``{"class": _class_facts()}``.
_META: Final = _PACKAGE
#: Suffix of the version classes' names in their module: "@" keeps them out of Python's reach.
_SUFFIX: Final = "@history"


class HistoryPlugin(Plugin):
    """Synthesizes version classes for versioned models and types the package's helpers."""

    def get_additional_deps(self, file: MypyFile) -> list[tuple[int, str, int]]:
        # A module declaring versioned models needs ``Version`` analysed before it, even when
        # it does not import the package itself.
        if _is_library(file.fullname) or not _declares_versioned(file):
            return []
        return [(10, _MODELS, -1)]

    def get_customize_class_mro_hook(
        self, fullname: str
    ) -> Callable[[ClassDefContext], None] | None:
        # Called for every class before its body is analysed: a hook only for those whose body
        # tells something the version classes need (models, mixins, ``__versioned__``).
        if _is_library(fullname):
            return None
        symbol = self.lookup_fully_qualified(fullname)
        node = symbol.node if symbol is not None else None
        return (
            _record_class_facts if isinstance(node, TypeInfo) and _class_facts(node.defn) else None
        )

    def get_base_class_hook(self, fullname: str) -> Callable[[ClassDefContext], None] | None:
        symbol = self.lookup_fully_qualified(fullname)
        if (
            symbol is not None
            and isinstance(symbol.node, TypeInfo)
            and _is_declarative(symbol.node)
        ):
            return self._declarative_class
        return None

    def get_dynamic_class_hook(
        self, fullname: str
    ) -> Callable[[DynamicClassDefContext], None] | None:
        return self._version_class_alias if fullname == _VERSION_CLASS else None

    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        return self._returns_version_classes if fullname.startswith(f"{_PACKAGE}.") else None

    def get_method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        return self._returns_version_classes if fullname.startswith(f"{_PACKAGE}.") else None

    def get_attribute_hook(self, fullname: str) -> Callable[[AttributeContext], Type] | None:
        if fullname.startswith(f"{_VERSION}."):
            return partial(_version_attribute, fullname[len(_VERSION) + 1 :])
        return None

    # --- semantic analysis --------------------------------------------------------------------

    def _declarative_class(self, ctx: ClassDefContext) -> None:
        model = ctx.cls.info
        if not (_is_model(model) and _is_versioned(model)):
            return
        version = _ensure_version_class(ctx.api, model)
        if version is None:
            return
        ready = _fill_version_class(ctx.api, model, version)
        if not ready and not ctx.api.final_iteration:
            ctx.api.defer()

    def _version_class_alias(self, ctx: DynamicClassDefContext) -> None:
        """``X = version_class(Model)``: bind ``X`` to the version class, usable as a type."""
        statement = getattr(ctx.api, "statement", None)
        if isinstance(statement, AssignmentStmt) and statement.type is not None:
            return  # an annotated assignment keeps its declared type
        args = ctx.call.args
        if len(args) != 1 or not isinstance(args[0], RefExpr):
            return
        model = args[0].node
        if not (isinstance(model, TypeInfo) and _is_model(model) and _is_versioned(model)):
            return
        version = _ensure_version_class(ctx.api, model)
        if version is not None:
            ctx.api.add_symbol_table_node(
                ctx.name, SymbolTableNode(GDEF, version, plugin_generated=True)
            )

    # --- type checking ------------------------------------------------------------------------

    def _returns_version_classes(self, ctx: FunctionContext | MethodContext) -> Type:
        """Replace ``Version[Model]`` in a return type with the model's version class."""
        return ctx.default_return_type.accept(_VersionClasses(self))

    def version_class_of(self, model: TypeInfo) -> TypeInfo | None:
        """The version class synthesized for ``model`` (from its metadata), if any."""
        meta = model.metadata.get(_META)
        fullname = meta.get("version") if meta else None
        if not isinstance(fullname, str):
            return None
        symbol = self.lookup_fully_qualified(fullname)
        node = symbol.node if symbol is not None else None
        return node if isinstance(node, TypeInfo) else None


class _VersionClasses(TypeTranslator):
    def __init__(self, plugin: HistoryPlugin) -> None:
        super().__init__()
        self.plugin = plugin

    def visit_instance(self, t: Instance) -> Type:
        if t.type.fullname == _VERSION and len(t.args) == 1:
            model = get_proper_type(t.args[0])
            if isinstance(model, Instance):
                version = self.plugin.version_class_of(model.type)
                if version is not None:
                    return Instance(version, [])
        return super().visit_instance(t)

    def visit_type_alias_type(self, t: TypeAliasType) -> Type:
        return t.copy_modified(args=[arg.accept(self) for arg in t.args])


def _record_class_facts(ctx: ClassDefContext) -> None:
    facts = _class_facts(ctx.cls)
    if facts:
        ctx.cls.info.metadata.setdefault(_META, {})["class"] = facts


def _version_attribute(name: str, ctx: AttributeContext) -> Type:
    """An attribute of a ``Version``: found through ``__getattr__`` is an error on a version class.

    ``ctx.type`` is the type the attribute is read on: a union reports the version class
    items that lack it.
    """
    for item in _union_items(ctx.type):
        if (
            isinstance(item, Instance)
            and _is_version_class(item.type)
            and not any(name in base.names for base in item.type.mro)
        ):
            ctx.api.msg.has_no_attr(ctx.type, item, name, ctx.context)
            return AnyType(TypeOfAny.from_error)
    return ctx.default_attr_type  # a real attribute, or a ``Version[...]`` of no known model


def _union_items(typ: ProperType) -> list[ProperType]:
    if isinstance(typ, TypeVarType):
        typ = get_proper_type(typ.upper_bound)
    if isinstance(typ, UnionType):
        return [p for item in typ.items for p in _union_items(get_proper_type(item))]
    return [typ]


# --- models -----------------------------------------------------------------------------------


def _is_library(fullname: str) -> bool:
    """SQLAlchemy's or this package's own modules and classes: never models."""
    return fullname.partition(".")[0] in ("sqlalchemy", _PACKAGE)


def _is_declarative(info: TypeInfo) -> bool:
    return any(base.fullname in _DECLARATIVE_BASES for base in info.mro)


def _is_model(info: TypeInfo) -> bool:
    """A mapped declarative class (not a declarative base, not ``__abstract__``)."""
    return (
        _is_declarative(info)
        and not any(base.type.fullname in _DECLARATIVE_BASES for base in info.bases)
        and "__abstract__" not in info.names
        and not _is_version_class(info)
    )


def _is_versioned(info: TypeInfo) -> bool:
    return any("__versioned__" in base.names for base in info.mro)


def _is_version_class(info: TypeInfo) -> bool:
    return any("model" in base.metadata.get(_META, ()) for base in info.mro)


def _mapped_base(model: TypeInfo) -> TypeInfo | None:
    """The model ``model`` inherits from (its mapper's ``inherits``), if any."""
    return next((base for base in model.mro[1:] if _is_model(base)), None)


def _ensure_version_class(api: SemanticAnalyzerPluginInterface, model: TypeInfo) -> TypeInfo | None:
    """The version class of ``model``, created (empty) if it does not exist yet."""
    meta = model.metadata.setdefault(_META, {})
    fullname = meta.get("version")
    if isinstance(fullname, str):
        existing = api.lookup_fully_qualified_or_none(fullname)
        if existing is not None and isinstance(existing.node, TypeInfo):
            return existing.node
    base_model = _mapped_base(model)
    if base_model is not None and _is_versioned(base_model):
        base_version = _ensure_version_class(api, base_model)
        if base_version is None:
            return None
        base = Instance(base_version, [])
    else:
        version_symbol = api.lookup_fully_qualified_or_none(_VERSION)
        if version_symbol is None or not isinstance(version_symbol.node, TypeInfo):
            return None  # the package is not part of this build
        base = Instance(version_symbol.node, [_instance(model)])
    module = model.module_name
    key = _version_key(model)
    defn = ClassDef(f"{model.name}Version", Block([]))
    defn.fullname = f"{module}.{key}"
    defn.line = model.line
    info = TypeInfo(SymbolTable(), defn, module)
    defn.info = info
    info.bases = [base]
    info.mro = [info, *base.type.mro]
    info.metadata[_META] = {"model": model.fullname}
    api.modules[module].names[key] = SymbolTableNode(GDEF, info, plugin_generated=True)
    meta["version"] = info.fullname
    return info


def _version_key(model: TypeInfo) -> str:
    """The module-level name of ``model``'s version class (unique per model in its module)."""
    local = model.fullname[len(model.module_name) + 1 :]
    if local == model.name:
        return f"{model.name}Version{_SUFFIX}"
    return f"{model.name}Version{_SUFFIX}@{local.replace('.', '@')}"


def _fill_version_class(
    api: SemanticAnalyzerPluginInterface, model: TypeInfo, version: TypeInfo
) -> bool:
    """(Re)build the attributes of ``version`` and ``model.versions``; False if not ready."""
    exclude = _excluded(model)
    base_model = _mapped_base(model)
    inherited = base_model.mro if base_model and _is_version_class(version.bases[0].type) else []
    attributes = _mapped_attributes(api, model, inherited)
    ready = attributes is not None
    version.names.clear()
    for name, (typ, source) in (attributes or {}).items():
        if name in exclude:
            continue
        version_type = _version_attribute_type(api, typ)
        if version_type is None or has_placeholder(version_type):
            ready = False
            version_type = AnyType(TypeOfAny.special_form)
        _add_var(version, name, version_type, source)
    self_type = Instance(version, [])
    chain = api.named_type_or_none(_MAPPED, [UnionType([self_type, NoneType()])])
    if chain is not None:
        for name in ("previous", "next"):
            _add_var(version, name, chain, None)
    versions = model.names.get("versions")
    if versions is None or versions.plugin_generated:
        write_only = api.named_type_or_none(_WRITE_ONLY, [self_type])
        if write_only is not None:
            _add_var(model, "versions", write_only, None)
    return ready


def _add_var(info: TypeInfo, name: str, typ: Type, source: Var | None) -> None:
    var = Var(name, typ)
    var.info = info
    var._fullname = f"{info.fullname}.{name}"
    var.is_ready = True
    var.is_initialized_in_class = True if source is None else source.is_initialized_in_class
    info.names[name] = SymbolTableNode(MDEF, var, plugin_generated=True)


def _mapped_attributes(
    api: SemanticAnalyzerPluginInterface, model: TypeInfo, inherited: Iterable[TypeInfo]
) -> dict[str, tuple[Instance, Var | None]] | None:
    """The mapped attributes of ``model`` that its version class copies, by name.

    Those of ``inherited`` classes are left out (the base version class has them). Each is
    typed ``Mapped[X]`` (or ``WriteOnlyMapped`` / ``DynamicMapped``): an annotation, or the
    type of an unannotated ``mapped_column()`` / ``relationship()`` (``Mapped[Any]`` while not
    inferred yet). ``composite()``, ``synonym()`` and ``column_property()`` attributes are not
    copied by the library.
    None when one is not analysed yet (a ``@declared_attr`` whose signature is pending).
    """
    skip = {base.fullname for base in inherited}
    found: dict[str, tuple[Instance, Var | None]] = {}
    for base in reversed(model.mro):
        if base.fullname in skip or base.fullname.startswith(("sqlalchemy.", "builtins.")):
            continue
        constructors = _facts(base).get("constructors", {})
        for name, symbol in base.names.items():
            node = symbol.node
            typ: ProperType | None = None
            source: Var | None = None
            if isinstance(node, Var) and node.type is not None:
                typ, source = get_proper_type(node.type), node
            elif isinstance(node, Var) and constructors.get(name) in _COPIED:
                # ``x = mapped_column(...)``: its type is inferred after semantic analysis.
                typ = api.named_type_or_none(_MAPPED, [AnyType(TypeOfAny.unannotated)])
                source = node
            elif isinstance(node, Decorator) and isinstance(node.func.type, CallableType):
                # ``@declared_attr def x(cls) -> Mapped[...]``: method signatures are analysed
                # after class bodies; analyse the return type here when it is still unbound.
                returns: Type | None = node.func.type.ret_type
                if isinstance(returns, UnboundType):
                    if base.module_name != api.cur_mod_id:
                        continue  # a mixin of an import cycle: not typed on the version class
                    returns = api.anal_type(returns, report_invalid_types=False)
                    if returns is None:
                        return None
                typ = get_proper_type(returns)
            mapped = _as_mapped(typ)
            if (
                mapped is not None
                and constructors.get(name) not in _NOT_COPIED
                and not (symbol.plugin_generated and name == "versions")
            ):
                found[name] = (mapped, source)
            else:
                found.pop(name, None)
    return found


def _as_mapped(typ: ProperType | None) -> Instance | None:
    """``Mapped[X]`` (or a write-only / dynamic annotation) for a copied attribute's type."""
    if not isinstance(typ, Instance) or typ.type.fullname in _NOT_COPIED_TYPES:
        return None
    if typ.type.fullname in _MAPPED_ANNOTATIONS:
        return typ if len(typ.args) == 1 else None
    mapped = next((base for base in typ.type.mro if base.fullname == _MAPPED), None)
    if mapped is None:
        return None
    # Imported here: importing mypy.maptype first thing fails on mypy's own import cycle.
    from mypy.maptype import map_instance_to_supertype

    as_mapped = map_instance_to_supertype(typ, mapped)  # MappedColumn[X] -> Mapped[X]
    return as_mapped if len(as_mapped.args) == 1 else None


def _version_attribute_type(api: SemanticAnalyzerPluginInterface, typ: Instance) -> Type | None:
    """The type of a model's attribute on its version class; None if not known yet."""
    value = get_proper_type(typ.args[0])
    if typ.type.fullname != _MAPPED:  # WriteOnlyMapped / DynamicMapped: a collection
        item = _related(api, value)
        if item is None:
            return None
        return _mapped(api, api.named_type("builtins.list", [item]))
    if isinstance(value, Instance) and _is_model(value.type):  # many-to-one / one-to-one
        return _mapped(api, _related(api, value))
    if isinstance(value, UnionType) and any(_model_instance(i) for i in value.items):
        items = [_related(api, get_proper_type(i)) for i in value.items]
        if any(i is None for i in items):
            return None
        return _mapped(api, UnionType([i for i in items if i is not None]))
    if isinstance(value, Instance) and value.args:  # a collection of related objects
        targets = [get_proper_type(a) for a in value.args if _model_instance(a)]
        if targets:
            item = _related(api, targets[-1])
            return None if item is None else _mapped(api, api.named_type("builtins.list", [item]))
    return typ  # a column: same type


def _mapped(api: SemanticAnalyzerPluginInterface, typ: Type | None) -> Type | None:
    return None if typ is None else api.named_type_or_none(_MAPPED, [typ])


def _model_instance(typ: Type) -> bool:
    proper = get_proper_type(typ)
    return isinstance(proper, Instance) and _is_model(proper.type)


def _related(api: SemanticAnalyzerPluginInterface, typ: ProperType) -> Type | None:
    """A relationship target as its temporal twin yields it: versions of versioned models."""
    if isinstance(typ, Instance) and _is_model(typ.type) and _is_versioned(typ.type):
        version = _ensure_version_class(api, typ.type)
        return None if version is None else Instance(version, [])
    return typ


def _instance(info: TypeInfo) -> Instance:
    return Instance(info, [AnyType(TypeOfAny.special_form)] * len(info.defn.type_vars))


# --- __versioned__ ----------------------------------------------------------------------------


def _facts(info: TypeInfo) -> dict[str, Any]:
    """What :func:`_class_facts` read from ``info``'s class body (kept in the cache)."""
    facts = info.metadata.get(_META, {}).get("class")
    if isinstance(facts, dict):
        return facts
    return _class_facts(info.defn)  # a class not recorded (local to a function): read it now


def _class_facts(defn: ClassDef) -> dict[str, Any]:
    """Read a class body for what types cannot tell (JSON, stored in ``TypeInfo.metadata``).

    ``exclude``: the literal ``__versioned__["exclude"]``, when the class assigns
    ``__versioned__``; ``columns``: column name -> attribute, for ``mapped_column("name")``;
    ``constructors``: attribute -> the function called to define it (``composite``...).
    Read when the class is defined: mypy frees the bodies of the modules it has checked.
    """
    facts: dict[str, Any] = {}
    columns: dict[str, str] = {}
    constructors: dict[str, str] = {}
    for statement in defn.defs.body:
        if not isinstance(statement, AssignmentStmt):
            continue
        names = [lvalue.name for lvalue in statement.lvalues if isinstance(lvalue, NameExpr)]
        if "__versioned__" in names:
            facts["exclude"] = _literal_exclude(statement.rvalue)
        call = statement.rvalue
        if isinstance(call, CallExpr) and isinstance(call.callee, (NameExpr, MemberExpr)):
            constructor = call.callee.name
            inner = call.args[0] if call.args else None
            if (
                constructor == "column_property"
                and isinstance(inner, CallExpr)
                and isinstance(inner.callee, (NameExpr, MemberExpr))
                and inner.callee.name in _COPIED
            ):
                constructor = inner.callee.name  # ``column_property(Column(...))``: a column
            for name in names:
                constructors[name] = constructor
            column = call.args[0] if call.args else None
            if call.callee.name in _COPIED and isinstance(column, StrExpr) and len(names) == 1:
                columns[column.value] = names[0]
    if columns:
        facts["columns"] = columns
    if constructors:
        facts["constructors"] = constructors
    return facts


def _excluded(model: TypeInfo) -> set[str]:
    """Attribute names excluded by the model's ``__versioned__`` (when it is a literal)."""
    declaring = next(base for base in model.mro if "__versioned__" in base.names)
    columns: dict[str, str] = {}
    for base in reversed(model.mro):
        columns.update(_facts(base).get("columns", {}))
    return {columns.get(name, name) for name in _facts(declaring).get("exclude", ())}


def _literal_exclude(value: Expression) -> list[str]:
    exclude: Expression | None = None
    if isinstance(value, DictExpr):
        for key, item in value.items:
            if isinstance(key, StrExpr) and key.value == "exclude":
                exclude = item
    elif (
        isinstance(value, CallExpr)
        and isinstance(value.callee, NameExpr)
        and value.callee.name == "dict"
    ):
        for arg_name, arg in zip(value.arg_names, value.args, strict=False):
            if arg_name == "exclude":
                exclude = arg
    if isinstance(exclude, (ListExpr, TupleExpr, SetExpr)) and all(
        isinstance(item, StrExpr) for item in exclude.items
    ):
        return [item.value for item in exclude.items if isinstance(item, StrExpr)]
    return []


def _declares_versioned(file: MypyFile) -> bool:
    """Does the module have a class body assigning ``__versioned__`` (at any nesting)?"""
    pending: list[Statement] = list(file.defs)
    while pending:
        statement = pending.pop()
        if isinstance(statement, ClassDef):
            for item in statement.defs.body:
                if isinstance(item, AssignmentStmt) and any(
                    isinstance(lvalue, NameExpr) and lvalue.name == "__versioned__"
                    for lvalue in item.lvalues
                ):
                    return True
            pending.extend(statement.defs.body)
        elif isinstance(statement, (FuncDef, Decorator)):
            func = statement if isinstance(statement, FuncDef) else statement.func
            pending.extend(func.body.body)
        elif isinstance(statement, IfStmt):
            for block in [*statement.body, statement.else_body]:
                if block is not None:
                    pending.extend(block.body)
    return False


def plugin(version: str) -> type[Plugin]:
    """Entry point named by ``plugins = ["sqlalchemy_history_async.mypy"]``."""
    return HistoryPlugin
