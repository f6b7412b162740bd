"""Every program the project starts, read from its source, and what installs each one.

`scan()` parses every .py file under SCANNED_DIRS with `ast`; nothing is imported or run. It
collects the programs they start: argv[0] of subprocess, asyncio and os.exec* calls, and of
calls to the project's own wrappers of those. A wrapper is found by following a parameter into
a launch, not by its name, and that repeats until nothing new turns up. It also takes the argv
lambdas of `Daemon`-style objects, `shutil.which` look-ups and Playwright's `executable_path`,
and counts a Docker SDK client as the Docker engine, `dockerd`. A launch whose program it cannot
work out is reported with its file and line, so new code is either readable or declared.
Programs that only shell scripts run, or that the documentation tells people to run, are
declared by hand below (SCRIPTED, DOCUMENTED, IMPLICIT).

`check()` resolves each program the way a shell would (PATH and PostgreSQL's versioned bin
directory). It accepts the program when `dpkg -S` names a package of system-packages.txt or one
that a listed package needs, when the list says the base image ships that file, when a Python
distribution that pyproject.toml names installed it, or when it is the Python running the check.

Standard library only.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ("flows", "tasks", "blocks", "deployments", "sandbox", "benchmarks", "tests")
PG_BIN_DIR = "/usr/lib/postgresql/15/bin"  # the PostgreSQL server tools live here, not on PATH
DOCKER_ENGINE = "dockerd"

# --- what the hand-written declarations cover ---------------------------------------------------
# Command words of the shell scripts and Makefile recipes. They are listed by hand: telling bash's
# commands from its arguments, here-documents and case patterns reliably would take a parser of
# its own. .github/workflows/kind.yml is left out because it runs on GitHub's runners, not here.
SCRIPTED: dict[str, tuple[str, ...]] = {
    "env": ("sandbox/make_app_repo.sh", ".ci/run"),  # the `#!/usr/bin/env bash` line
    "bash": ("sandbox/make_app_repo.sh", ".ci/run"),
    "git": ("sandbox/make_app_repo.sh",),
    "find": ("sandbox/make_app_repo.sh",),
    "sort": ("sandbox/make_app_repo.sh",),
    "xargs": ("sandbox/make_app_repo.sh",),
    "sha256sum": ("sandbox/make_app_repo.sh",),
    "sed": ("sandbox/make_app_repo.sh",),
    "cut": ("sandbox/make_app_repo.sh",),
    "cat": ("sandbox/make_app_repo.sh",),
    "ls": ("sandbox/make_app_repo.sh",),
    "rmdir": ("sandbox/make_app_repo.sh",),
    "rm": ("sandbox/make_app_repo.sh",),
    "mkdir": ("sandbox/make_app_repo.sh",),
    "dirname": ("sandbox/make_app_repo.sh", ".ci/run"),
    "mktemp": ("sandbox/make_app_repo.sh",),
    "tar": ("sandbox/make_app_repo.sh",),
    "diff": ("sandbox/make_app_repo.sh",),
    "chmod": ("sandbox/make_app_repo.sh",),
    "mv": ("sandbox/make_app_repo.sh",),
    "make": (".ci/run",),
    "apt-get": (".ci/run",),
    "python3": (".ci/run", "Makefile"),
    "date": (".ci/run",),
    "tr": (".ci/run",),
    "prefect": ("Makefile",),
}
# Programs the documentation tells people to run.
DOCUMENTED: dict[str, tuple[str, ...]] = {
    "make": ("README.md", "sandbox/README.md"),
    "architect-signoff": ("README.md",),
    "kubectl": ("README.md", "docs/kubernetes.md"),
    "wrk": ("README.md",),
    "hey": ("README.md",),
    "pg_dump": ("README.md",),
    "pg_restore": ("README.md",),
    "python": ("sandbox/README.md", "docs/kubernetes.md"),
    "docker": ("sandbox/README.md",),
    "git": ("sandbox/releases/RELEASES.md",),
    "go": ("sandbox/releases/RELEASES.md",),
    "chromium": ("pyproject.toml",),  # the real-browser sign-off test; pyproject says why Playwright is there
}
# Run although no file names them: program -> (the file responsible, why).
IMPLICIT: dict[str, tuple[str, str]] = {
    "sh": ("Makefile", "make runs every recipe line with /bin/sh"),
}

# --- what counts as starting a program ----------------------------------------------------------
_ARGV_LAUNCHERS = {f"subprocess.{n}" for n in ("run", "Popen", "call", "check_call", "check_output")} | {"pty.spawn"}
_SHELL_LAUNCHERS = {
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "os.system",
    "os.popen",
    "asyncio.create_subprocess_shell",
    "asyncio.subprocess.create_subprocess_shell",
}
_EXEC_SUFFIXES = ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")
_PROGRAM_FIRST = {
    "asyncio.create_subprocess_exec",
    "asyncio.subprocess.create_subprocess_exec",
    "os.posix_spawn",
    "os.posix_spawnp",
} | {f"os.exec{s}" for s in _EXEC_SUFFIXES}
_PROGRAM_SECOND = {f"os.spawn{s}" for s in _EXEC_SUFFIXES}
_DOCKER_CLIENTS = {"from_env", "DockerClient", "APIClient"}
# Programs that run another program given later on their command line: the argv[0] after the
# `--` (or, where noted, after the options) is started too.
_COMMAND_RUNNERS = {"runuser": "--", "sudo": "--", "env": "options", "nohup": "options", "setsid": "options"}

# Calls whose result names the same program as their first argument (paths, look-ups).
_SAME_PROGRAM = {
    "builtins.str",
    "os.fspath",
    "pathlib.Path",
    "pathlib.PurePath",
    "pathlib.PosixPath",
    "shutil.which",
    "os.path.realpath",
    "os.path.abspath",
    "os.path.expanduser",
    "os.path.normpath",
    "os.path.basename",
}
_PATH_METHODS = {"resolve", "absolute", "expanduser", "as_posix"}
_ENV_LOOKUPS = {"os.environ.get", "os.getenv"}  # the default is the program; an override is the user's business


# ================================================================================================
# Results
# ================================================================================================
@dataclass(frozen=True, order=True)
class Site:
    path: str  # relative to the scanned root, "/"-separated
    line: int  # 0: the file as a whole

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class Unresolved:
    site: Site
    code: str
    why: str

    def __str__(self) -> str:
        return f"{self.site}: {self.code}  ({self.why})"


@dataclass
class Scan:
    programs: dict[str, set[Site]]  # program name -> where the project starts it
    unresolved: list[Unresolved]  # launches whose program could not be worked out


# ================================================================================================
# The project's source, indexed: modules, scopes, the names bound in each
# ================================================================================================
_END = (sys.maxsize, 0)  # a position after every binding of a module


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "positional", "vararg", "keyword" (keyword-only) or "kwargs"
    index: int  # among the positional parameters; -1 for the others
    default: ast.expr | None


@dataclass(frozen=True)
class Binding:
    kind: str  # "value", "for", "append", "extend", "def", "class", "import" or "opaque"
    pos: tuple[int, int]  # where it takes effect: a use before this position does not see it
    node: object  # an expression, a Scope (def), a ClassInfo (class) or (module, name) (import)


class Scope:
    """A module, function or lambda: its parameters, the names it binds and what it returns."""

    def __init__(self, node: ast.AST, module: Module, parent: Scope | None, cls: ClassInfo | None) -> None:
        self.node, self.module, self.parent, self.cls = node, module, parent, cls
        self.names: dict[str, list[Binding]] = defaultdict(list)
        is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        self.params: list[Param] = _params(node) if is_function else []  # type: ignore[arg-type]
        self.returns: list[ast.expr] = [node.body] if isinstance(node, ast.Lambda) else []

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def __repr__(self) -> str:
        return f"<{self.module.path}:{getattr(self.node, 'lineno', 0)} {getattr(self.node, 'name', 'lambda')}>"


@dataclass(eq=False)
class ClassInfo:
    name: str
    module: Module
    node: ast.ClassDef
    scope: Scope  # where the class statement is
    fields: list[tuple[str, ast.expr | None, ast.expr]] = field(default_factory=list)  # name, default, annotation
    methods: dict[str, Scope] = field(default_factory=dict)


@dataclass(eq=False)
class Module:
    name: str  # dotted, from the path
    path: str  # relative to the root
    source: str
    tree: ast.Module
    is_package: bool
    scope: Scope = field(init=False)
    calls: list[tuple[ast.Call, Scope]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scope = Scope(self.tree, self, None, None)


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[Param]:
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params = [Param(p.arg, "positional", i, d) for i, (p, d) in enumerate(zip(positional, defaults, strict=True))]
    if a.vararg:
        params.append(Param(a.vararg.arg, "vararg", -1, None))
    params += [Param(p.arg, "keyword", -1, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg:
        params.append(Param(a.kwarg.arg, "kwargs", -1, None))
    return params


def _end(node: ast.AST) -> tuple[int, int]:
    return (getattr(node, "end_lineno", 0) or 0, getattr(node, "end_col_offset", 0) or 0)


def _start(node: ast.AST) -> tuple[int, int]:
    return (getattr(node, "lineno", 0) or 0, getattr(node, "col_offset", 0) or 0)


class Project:
    """Every Python module under the scanned directories, parsed and indexed."""

    def __init__(self, root: Path, dirs: Iterable[str]) -> None:
        self.root = root
        self.modules: dict[str, Module] = {}
        self.lambdas: dict[ast.Lambda, Scope] = {}
        self.classes: dict[str, list[ClassInfo]] = defaultdict(list)
        self.calls_named: dict[str, list[tuple[ast.Call, Scope]]] = defaultdict(list)
        self.broken: list[Unresolved] = []  # files that do not parse
        for path in _python_files(root, dirs):
            rel = path.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            source = path.read_text(encoding="utf-8", errors="replace")
            try:
                tree = ast.parse(source, filename=str(rel))
            except SyntaxError as exc:
                self.broken.append(Unresolved(Site(rel.as_posix(), exc.lineno or 0), "", f"does not parse: {exc.msg}"))
                continue
            self.modules[name] = Module(name, rel.as_posix(), source, tree, is_package)
        for module in self.modules.values():
            _Indexer(self, module).walk(module.tree, module.scope, None)
            for call, scope in module.calls:
                callee = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
                if callee:
                    self.calls_named[callee].append((call, scope))

    def methods_named(self, name: str) -> Iterator[tuple[Scope, ClassInfo]]:
        for infos in self.classes.values():
            for info in infos:
                if name in info.methods:
                    yield info.methods[name], info

    def absolute(self, module: Module, level: int, name: str | None) -> str:
        """The dotted name `from <level dots><name> import ...` means inside `module`."""
        if level == 0:
            return name or ""
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        base = package[: len(package) - (level - 1)]
        return ".".join([*base, *([name] if name else [])])


def _python_files(root: Path, dirs: Iterable[str]) -> Iterator[Path]:
    for top in dirs:
        for path in sorted((root / top).rglob("*.py")):
            rel_parts = path.relative_to(root).parts
            if not any(p.startswith(".") or p == "__pycache__" for p in rel_parts):
                yield path


class _Indexer:
    """Records, per scope, every binding of a name, in source order."""

    def __init__(self, project: Project, module: Module) -> None:
        self.project, self.module = project, module

    def walk(self, node: ast.AST, scope: Scope, cls: ClassInfo | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._outer_parts(node, scope)
            inner = Scope(node, self.module, scope, cls)
            if cls is not None:
                cls.methods[node.name] = inner
            else:
                scope.names[node.name].append(Binding("def", _start(node), inner))
            for stmt in node.body:
                self.walk(stmt, inner, None)
            return
        if isinstance(node, ast.Lambda):
            self._outer_parts(node, scope)
            inner = Scope(node, self.module, scope, None)
            self.project.lambdas[node] = inner
            self.walk(node.body, inner, None)
            return
        if isinstance(node, ast.ClassDef):
            for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                self.walk(expr, scope, None)
            info = ClassInfo(node.name, self.module, node, scope)
            self.project.classes[node.name].append(info)
            scope.names[node.name].append(Binding("class", _start(node), info))
            for stmt in node.body:
                self.walk(stmt, scope, info)
            return
        if isinstance(node, ast.Call):
            self.module.calls.append((node, scope))
        self._record(node, scope, cls)
        for child in ast.iter_child_nodes(node):
            self.walk(child, scope, cls)

    def _outer_parts(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, scope: Scope) -> None:
        # Decorators and defaults are evaluated where the function is defined.
        outer = [*getattr(node, "decorator_list", []), *node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        for expr in outer:
            self.walk(expr, scope, None)

    def _record(self, node: ast.AST, scope: Scope, cls: ClassInfo | None) -> None:
        if isinstance(node, ast.Return) and node.value is not None:
            scope.returns.append(node.value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                self._bind(target, node.value, node, scope, cls)
        elif isinstance(node, ast.AnnAssign):
            if cls is not None and isinstance(node.target, ast.Name):
                cls.fields.append((node.target.id, node.value, node.annotation))
            elif node.value is not None:
                self._bind(node.target, node.value, node, scope, cls)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and cls is None:
            scope.names[node.target.id].append(Binding("extend", _end(node), node.value))
        elif isinstance(node, ast.NamedExpr):
            scope.names[node.target.id].append(Binding("value", _end(node), node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            if isinstance(node.target, ast.Name):
                scope.names[node.target.id].append(Binding("for", _end(node.target), node.iter))
            else:
                self._opaque(node.target, scope, "a for loop that unpacks")
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    self._opaque(item.optional_vars, scope, "a with statement")
        elif isinstance(node, ast.ExceptHandler) and node.name:
            scope.names[node.name].append(Binding("opaque", _start(node), "an except clause"))
        elif isinstance(node, ast.Import) and cls is None:
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                imported = alias.name if alias.asname else alias.name.split(".")[0]
                scope.names[local].append(Binding("import", _start(node), (imported, None)))
        elif isinstance(node, ast.ImportFrom) and cls is None:
            base = self.project.absolute(self.module, node.level, node.module)
            for alias in node.names:
                if alias.name != "*":
                    scope.names[alias.asname or alias.name].append(Binding("import", _start(node), (base, alias.name)))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            self._growth(node.value, scope)

    def _bind(self, target: ast.expr, value: ast.expr, stmt: ast.stmt, scope: Scope, cls: ClassInfo | None) -> None:
        if cls is not None:
            return  # plain class attributes: not followed
        if isinstance(target, ast.Name):
            scope.names[target.id].append(Binding("value", _end(stmt), value))
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else []
            pairs = len(values) == len(target.elts)
            if pairs and not any(isinstance(e, ast.Starred) for e in [*target.elts, *values]):
                for sub_target, sub_value in zip(target.elts, values, strict=True):
                    self._bind(sub_target, sub_value, stmt, scope, cls)
            else:
                self._opaque(target, scope, "unpacking")

    def _opaque(self, target: ast.AST, scope: Scope, how: str) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                scope.names[node.id].append(Binding("opaque", _end(target), how))

    @staticmethod
    def _growth(call: ast.Call, scope: Scope) -> None:
        # `names.append(x)` and `names.extend(xs)`: a list built up piece by piece.
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and call.args:
            if func.attr == "append":
                scope.names[func.value.id].append(Binding("append", _end(call), call.args[0]))
            elif func.attr == "insert" and len(call.args) == 2:
                scope.names[func.value.id].append(Binding("append", _end(call), call.args[1]))
            elif func.attr == "extend":
                scope.names[func.value.id].append(Binding("extend", _end(call), call.args[0]))


# ================================================================================================
# A small interpreter: what program an argv expression names
# ================================================================================================
@dataclass(frozen=True, eq=False)
class Ctx:
    """Where an expression is evaluated: its scope and, for an inlined call, the arguments.

    bindings None: the scope's parameters are free; the expression belongs to the launch (or to
    a forwarder's call site) being read. An argument value of None was passed with * or **.
    """

    scope: Scope
    bindings: Mapping[str, tuple[ast.expr, Ctx] | None] | None = None
    origin: Site | None = None  # reported instead of the launch site (a Daemon(...) construction)

    def outer(self) -> Ctx | None:
        return Ctx(self.scope.parent, None, self.origin) if self.scope.parent else None


@dataclass(frozen=True)
class _Program:
    name: str
    origin: Site | None


@dataclass(frozen=True)
class _Forward:  # the program comes from a parameter: the function forwards it to the launch
    scope: Scope
    param: str
    kind: str  # "value": the parameter is the program; "seq": it is the whole argument list


@dataclass(frozen=True)
class _Unknown:
    why: str


@dataclass(frozen=True)
class _OwnPython:  # sys.executable: the interpreter running the project
    pass


Result = _Program | _Forward | _Unknown | _OwnPython
Item = tuple[ast.expr, Ctx]
Marker = _Forward | _Unknown
Alt = tuple[Item | Marker, ...]  # one possible argument list; a marker ends it


# What a name (or module attribute) turned out to be.
@dataclass(frozen=True)
class _Expr:
    expr: ast.expr
    ctx: Ctx
    name: str | None = None  # the name it was bound to in ctx.scope, for list growth
    pos: tuple[int, int] = (0, 0)  # where it was bound


@dataclass(frozen=True)
class _Loop:
    iter: ast.expr
    ctx: Ctx


@dataclass(frozen=True)
class _Def:
    scope: Scope


@dataclass(frozen=True)
class _Class:
    info: ClassInfo


@dataclass(frozen=True)
class _Mod:
    module: Module


@dataclass(frozen=True)
class _External:
    qualname: str


@dataclass(frozen=True)
class _Free:  # a parameter of a scope being read with free parameters
    scope: Scope
    name: str


Found = _Expr | _Loop | _Def | _Class | _Mod | _External | _Free | _Unknown


@dataclass(frozen=True)
class _Target:  # a project function or lambda a call reaches
    scope: Scope
    drop_self: bool
    origin: Site | None = None


_OWN_PYTHON = _OwnPython()
_T = TypeVar("_T")
_MAX_DEPTH = 60
_MAX_ALTS = 64


class Interpreter:
    def __init__(self, project: Project) -> None:
        self.project = project
        self._active: set[tuple[str, int, int]] = set()
        self._field_cache: dict[tuple[int, str], list[_Target | _Unknown | _External]] = {}

    # --- names -----------------------------------------------------------------------------------
    def lookup(self, name: str, ctx: Ctx, pos: tuple[int, int]) -> list[Found]:
        scope_ctx: Ctx | None = ctx
        own = True
        while scope_ctx is not None:
            scope = scope_ctx.scope
            bindings = [b for b in scope.names.get(name, ()) if b.kind not in ("append", "extend")]
            param = scope.param(name)
            if own:
                before = [b for b in bindings if b.pos <= pos]
                if before:
                    return [self._binding(before[-1], name, scope_ctx)]
                if param:
                    return [self._param(param, scope_ctx)]
                if bindings:  # bound only later: a loop carries it round
                    return [self._binding(b, name, scope_ctx) for b in bindings]
            elif bindings:
                return [self._binding(bindings[-1], name, scope_ctx)]
            elif param:
                return [self._param(param, scope_ctx)]
            scope_ctx, own = scope_ctx.outer(), False
        if hasattr(builtins, name):
            return [_External(f"builtins.{name}")]
        return [_Unknown(f"`{name}` is not defined in the project")]

    def _binding(self, binding: Binding, name: str, ctx: Ctx) -> Found:
        kind, node = binding.kind, binding.node
        if kind == "value" and isinstance(node, ast.expr):
            return _Expr(node, ctx, name, binding.pos)
        if kind == "for" and isinstance(node, ast.expr):
            return _Loop(node, ctx)
        if isinstance(node, Scope):
            return _Def(node)
        if isinstance(node, ClassInfo):
            return _Class(node)
        if kind == "import" and isinstance(node, tuple):
            return self._import(*node)
        return _Unknown(f"`{name}` is bound by {node}")

    def _import(self, module_name: str, attr: str | None) -> Found:
        modules = self.project.modules
        if attr is None:
            return _Mod(modules[module_name]) if module_name in modules else _External(module_name)
        if f"{module_name}.{attr}" in modules:
            return _Mod(modules[f"{module_name}.{attr}"])
        if module_name in modules:
            found = self.lookup(attr, Ctx(modules[module_name].scope), _END)
            return found[0] if len(found) == 1 else _Unknown(f"`{attr}` has several meanings in {module_name}")
        return _External(f"{module_name}.{attr}")

    def _param(self, param: Param, ctx: Ctx) -> Found:
        if ctx.bindings is None:
            return _Free(ctx.scope, param.name)
        if param.name in ctx.bindings:
            bound = ctx.bindings[param.name]
            if bound is None:
                return _Unknown(f"`{param.name}` is passed with * or **")
            return _Expr(bound[0], bound[1])
        if param.default is not None:
            def_site = ctx.scope.parent or ctx.scope
            return _Expr(param.default, Ctx(def_site, None, ctx.origin))
        return _Unknown(f"no argument for `{param.name}`")

    def module_of(self, expr: ast.expr, ctx: Ctx) -> _Mod | _External | None:
        """The module (of the project, or outside it) an expression names, if it names one."""
        if isinstance(expr, ast.Name):
            found = self.lookup(expr.id, ctx, _start(expr))
            return next((f for f in found if isinstance(f, (_Mod, _External))), None)
        if isinstance(expr, ast.Attribute):
            base = self.module_of(expr.value, ctx)
            if isinstance(base, _External):
                return _External(f"{base.qualname}.{expr.attr}")
            if isinstance(base, _Mod):
                sub = self.project.modules.get(f"{base.module.name}.{expr.attr}")
                if sub is not None:
                    return _Mod(sub)
                found = self.lookup(expr.attr, Ctx(base.module.scope), _END)
                return next((f for f in found if isinstance(f, (_Mod, _External))), None)
        return None

    def attribute(self, expr: ast.Attribute, ctx: Ctx) -> list[Found]:
        base = self.module_of(expr.value, ctx)
        if isinstance(base, _External):
            return [_External(f"{base.qualname}.{expr.attr}")]
        if isinstance(base, _Mod):
            sub = self.project.modules.get(f"{base.module.name}.{expr.attr}")
            return [_Mod(sub)] if sub else self.lookup(expr.attr, Ctx(base.module.scope, None, ctx.origin), _END)
        return [_Unknown(f"`{_code(expr)}` is an attribute of an object")]

    def external(self, func: ast.expr, ctx: Ctx) -> str | None:
        """The qualified name of a callable from outside the project (`subprocess.run`), if it is one."""
        if isinstance(func, ast.Name):
            found = self.lookup(func.id, ctx, _start(func))
        elif isinstance(func, ast.Attribute):
            found = self.attribute(func, ctx) if self.module_of(func.value, ctx) else []
        else:
            return None
        return next((f.qualname for f in found if isinstance(f, _External)), None)

    # --- guarded recursion -------------------------------------------------------------------------
    def _guard(self, what: str, expr: ast.AST, ctx: Ctx, compute: Callable[[], list[_T]]) -> list[_T]:
        key = (what, id(expr), id(ctx.bindings) if ctx.bindings is not None else id(ctx.scope))
        if key in self._active:
            return [_Unknown(f"`{_code(expr)}` is defined in terms of itself")]  # type: ignore[list-item]
        if len(self._active) > _MAX_DEPTH:
            return [_Unknown(f"`{_code(expr)}` is too deeply nested to follow")]  # type: ignore[list-item]
        self._active.add(key)
        try:
            return compute()
        finally:
            self._active.discard(key)

    # --- a single string: the program's name ----------------------------------------------------
    def value(self, expr: ast.expr, ctx: Ctx) -> list[Result]:
        return self._guard("value", expr, ctx, lambda: self._value(expr, ctx))

    def _value(self, expr: ast.expr, ctx: Ctx) -> list[Result]:
        if isinstance(expr, ast.Constant):
            if isinstance(expr.value, str) and expr.value.split():
                return [_Program(os.path.basename(expr.value.split()[0]), ctx.origin)]
            return [_Unknown(f"`{_code(expr)}` is not a program name")]
        if isinstance(expr, ast.JoinedStr):
            return self._fstring(expr, ctx)
        if isinstance(expr, ast.Name):
            return self._values_of(self.lookup(expr.id, ctx, _start(expr)))
        if isinstance(expr, ast.Attribute):
            return self._values_of(self.attribute(expr, ctx))
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div):
            return self.value(expr.right, ctx)  # a path: the last part is the program
        if isinstance(expr, ast.IfExp):
            return self.value(expr.body, ctx) + self.value(expr.orelse, ctx)
        if isinstance(expr, ast.BoolOp):
            return [r for v in expr.values for r in self.value(v, ctx)]
        if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant) and expr.slice.value == 0:
            return self.argv0(self.seq(expr.value, ctx))
        if isinstance(expr, ast.Call):
            return self._call_value(expr, ctx)
        return [_Unknown(f"cannot read a program name from `{_code(expr)}`")]

    def _fstring(self, expr: ast.JoinedStr, ctx: Ctx) -> list[Result]:
        # f"{PG_BIN}/pg_dump" names pg_dump: only what follows the last "/" matters.
        tail: list[ast.expr] = list(expr.values)
        for i, part in enumerate(expr.values):
            if isinstance(part, ast.Constant) and "/" in str(part.value):
                tail = [ast.Constant(str(part.value).rsplit("/", 1)[1]), *expr.values[i + 1 :]]
        tail = [p for p in tail if not (isinstance(p, ast.Constant) and p.value == "")]
        texts = [str(p.value) for p in tail if isinstance(p, ast.Constant)]
        if tail and len(texts) == len(tail):
            return [_Program("".join(texts), ctx.origin)]
        if len(tail) == 1 and isinstance(tail[0], ast.FormattedValue):
            return self.value(tail[0].value, ctx)
        return [_Unknown(f"the program name in `{_code(expr)}` is computed")]

    def _values_of(self, found: list[Found]) -> list[Result]:
        out: list[Result] = []
        for f in found:
            if isinstance(f, _Expr):
                out += self.value(f.expr, f.ctx)
            elif isinstance(f, _Loop):
                for item in self.elements(f.iter, f.ctx):
                    out += self.value(*item) if isinstance(item, tuple) else [item]
            elif isinstance(f, _Free):
                out.append(_Forward(f.scope, f.name, "value"))
            elif isinstance(f, _External):
                own = f.qualname == "sys.executable"
                out.append(_OWN_PYTHON if own else _Unknown(f"`{f.qualname}` is outside the project"))
            elif isinstance(f, _Unknown):
                out.append(f)
            else:
                out.append(_Unknown(f"{type(f).__name__.strip('_').lower()} is not a program name"))
        return out

    def _call_value(self, call: ast.Call, ctx: Ctx) -> list[Result]:
        qualname = self.external(call.func, ctx)
        first = call.args[0] if call.args and not isinstance(call.args[0], ast.Starred) else None
        if qualname in _SAME_PROGRAM and first is not None:
            return self.value(first, ctx)
        if qualname == "os.path.join" and call.args:
            return self.value(call.args[-1], ctx)
        if qualname in _ENV_LOOKUPS:
            keyword = next((k.value for k in call.keywords if k.arg == "default"), None)
            default = call.args[1] if len(call.args) > 1 else keyword
            return self.value(default, ctx) if default is not None else [_Unknown(f"`{_code(call)}` has no default")]
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in _PATH_METHODS and not call.args and qualname is None:
            return self.value(func.value, ctx)
        out: list[Result] = []
        for r in self.returns(call, ctx):
            out += self.value(*r) if isinstance(r, tuple) else [r]
        return out

    # --- a whole argument list ---------------------------------------------------------------------
    def seq(self, expr: ast.expr, ctx: Ctx) -> list[Alt]:
        return self._guard("seq", expr, ctx, lambda: self._seq(expr, ctx))

    def _seq(self, expr: ast.expr, ctx: Ctx) -> list[Alt]:
        if isinstance(expr, (ast.List, ast.Tuple)):
            parts: list[list[Alt]] = [
                self.seq(e.value, ctx) if isinstance(e, ast.Starred) else [((e, ctx),)] for e in expr.elts
            ]
            return _concat(parts)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return _concat([self.seq(expr.left, ctx), self.seq(expr.right, ctx)])
        if isinstance(expr, ast.IfExp):
            return self.seq(expr.body, ctx) + self.seq(expr.orelse, ctx)
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return [tuple((ast.copy_location(ast.Constant(w), expr), ctx) for w in _words(expr.value))]
        if isinstance(expr, ast.JoinedStr):
            return [((expr, ctx),)]
        if isinstance(expr, (ast.Name, ast.Attribute)):
            found = self.lookup(expr.id, ctx, _start(expr)) if isinstance(expr, ast.Name) else self.attribute(expr, ctx)
            return self._seqs_of(found, expr, ctx)
        if isinstance(expr, ast.Call):
            return self._call_seq(expr, ctx)
        return [(_Unknown(f"cannot read an argument list from `{_code(expr)}`"),)]

    def _seqs_of(self, found: list[Found], expr: ast.expr, ctx: Ctx) -> list[Alt]:
        out: list[Alt] = []
        for f in found:
            if isinstance(f, _Expr):
                out += _concat([self.seq(f.expr, f.ctx), *self._growth_after(f)])
            elif isinstance(f, _Loop):
                for item in self.elements(f.iter, f.ctx):
                    out += self.seq(*item) if isinstance(item, tuple) else [(item,)]
            elif isinstance(f, _Free):
                out.append((_Forward(f.scope, f.name, "seq"),))
            elif isinstance(f, _External) and f.qualname == "sys.executable":
                out.append(((expr, ctx),))
            elif isinstance(f, _Unknown):
                out.append((f,))
            else:
                out.append((_Unknown(f"`{_code(expr)}` is not an argument list"),))
        return out

    def _call_seq(self, call: ast.Call, ctx: Ctx) -> list[Alt]:
        qualname = self.external(call.func, ctx)
        first = call.args[0] if call.args and not isinstance(call.args[0], ast.Starred) else None
        if qualname in ("builtins.list", "builtins.tuple") and first is not None:
            return self.seq(first, ctx)
        if qualname == "shlex.split" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            return self.seq(first, ctx)
        if qualname in _SAME_PROGRAM or qualname == "os.path.join":
            return [((call, ctx),)]  # one string: the program alone
        out: list[Alt] = []
        for r in self.returns(call, ctx):
            out += self.seq(*r) if isinstance(r, tuple) else [(r,)]
        return out

    def elements(self, expr: ast.expr, ctx: Ctx) -> list[Item | _Unknown]:
        """Every element a collection may hold (what a for loop over it sees)."""
        return self._guard("elements", expr, ctx, lambda: self._elements(expr, ctx))

    def _elements(self, expr: ast.expr, ctx: Ctx) -> list[Item | _Unknown]:
        if isinstance(expr, (ast.List, ast.Tuple, ast.Set)):
            out: list[Item | _Unknown] = []
            for e in expr.elts:
                out += self.elements(e.value, ctx) if isinstance(e, ast.Starred) else [(e, ctx)]
            return out
        if isinstance(expr, (ast.IfExp, ast.BinOp)):
            parts = (expr.body, expr.orelse) if isinstance(expr, ast.IfExp) else (expr.left, expr.right)
            return [e for part in parts for e in self.elements(part, ctx)]
        copies = ("builtins.list", "builtins.tuple", "builtins.sorted")
        if isinstance(expr, ast.Call) and self.external(expr.func, ctx) in copies:
            return self.elements(expr.args[0], ctx) if expr.args else []
        if isinstance(expr, (ast.Name, ast.Attribute)):
            found = self.lookup(expr.id, ctx, _start(expr)) if isinstance(expr, ast.Name) else self.attribute(expr, ctx)
            out = []
            for f in found:
                if isinstance(f, _Expr):
                    out += self.elements(f.expr, f.ctx) + self._grown(f)
                else:
                    out.append(f if isinstance(f, _Unknown) else _Unknown(f"cannot list what `{_code(expr)}` holds"))
            return out
        return [_Unknown(f"cannot list what `{_code(expr)}` holds")]

    def _growth_after(self, found: _Expr) -> list[list[Alt]]:
        """`cmd = []` then `cmd.append("git")`: what the list gains after it is bound, in order."""
        if found.name is None:
            return []
        parts: list[list[Alt]] = []
        for b in found.ctx.scope.names.get(found.name, ()):
            if b.pos > found.pos and isinstance(b.node, ast.expr):
                if b.kind == "append":
                    parts.append([((b.node, found.ctx),)])
                elif b.kind == "extend":
                    parts.append(self.seq(b.node, found.ctx))
        return parts

    def _grown(self, found: _Expr) -> list[Item | _Unknown]:
        if found.name is None:
            return []
        out: list[Item | _Unknown] = []
        for b in found.ctx.scope.names.get(found.name, ()):
            if b.kind == "append" and isinstance(b.node, ast.expr):
                out.append((b.node, found.ctx))
            elif b.kind == "extend" and isinstance(b.node, ast.expr):
                out += self.elements(b.node, found.ctx)
        return out

    # --- argv[0] -----------------------------------------------------------------------------------
    def argv0(self, alts: list[Alt]) -> list[Result]:
        out: list[Result] = []
        for alt in alts:
            if not alt:
                out.append(_Unknown("an empty argument list"))
                continue
            first = alt[0]
            if not isinstance(first, tuple):
                out.append(first)
                continue
            for r in self.value(*first):
                out.append(r)
                if isinstance(r, _Program) and r.name in _COMMAND_RUNNERS:
                    out += self._run_by(r.name, alt[1:])
        return out

    def _run_by(self, runner: str, rest: Alt) -> list[Result]:
        """The program a command runner (runuser -u postgres -- initdb ...) starts."""
        for i, item in enumerate(rest):
            if not isinstance(item, tuple):
                return [_Unknown(f"cannot tell which program `{runner}` runs")]
            text = item[0].value if isinstance(item[0], ast.Constant) and isinstance(item[0].value, str) else None
            if text == "--":
                return self.argv0([rest[i + 1 :]])
            if _COMMAND_RUNNERS[runner] == "options" and not (text and (text.startswith("-") or "=" in text)):
                return self.argv0([rest[i:]])
        return [_Unknown(f"cannot tell which program `{runner}` runs (no `--` before it)")]

    # --- calls into the project --------------------------------------------------------------------
    def returns(self, call: ast.Call, ctx: Ctx) -> list[Item | _Unknown]:
        """What a call of project code may return, each with the arguments bound."""
        out: list[Item | _Unknown] = []
        for target in self.callees(call.func, ctx):
            if isinstance(target, _Target):
                callee = Ctx(target.scope, self.bind(call, target, ctx), target.origin or ctx.origin)
                if not target.scope.returns:
                    out.append(_Unknown(f"{target.scope!r} returns nothing"))
                out += [(r, callee) for r in target.scope.returns]
            elif isinstance(target, _External):
                out.append(_Unknown(f"`{_code(call)}` calls `{target.qualname}`, outside the project"))
            else:
                out.append(target)
        return out or [_Unknown(f"`{_code(call)}` calls nothing the project defines")]

    def callees(self, func: ast.expr, ctx: Ctx) -> list[_Target | _External | _Unknown]:
        return self._guard("callees", func, ctx, lambda: self._callees(func, ctx))

    def _callees(self, func: ast.expr, ctx: Ctx) -> list[_Target | _External | _Unknown]:
        if isinstance(func, ast.Name):
            return [t for f in self.lookup(func.id, ctx, _start(func)) for t in self._callable(f)]
        if isinstance(func, ast.Attribute):
            if self.module_of(func.value, ctx) is not None:
                return [t for f in self.attribute(func, ctx) for t in self._callable(f)]
            own_class = self._self_class(func.value, ctx)
            if own_class is not None:
                members = self._members(own_class, func.attr)
                if members:
                    return members
            # An object of unknown class: every project method or callable field of that name.
            targets: list[_Target | _External | _Unknown] = [
                _Target(m, drop_self=not _is_static(m)) for m, _ in self.project.methods_named(func.attr)
            ]
            for infos in self.project.classes.values():
                for info in infos:
                    if any(n == func.attr and "Callable" in _code(a) for n, _, a in info.fields):
                        targets += self._field_values(info, func.attr)
            return targets
        return [_Unknown(f"calls `{_code(func)}`, a computed function")]

    def _callable(self, found: Found) -> list[_Target | _External | _Unknown]:
        if isinstance(found, _Def):
            return [_Target(found.scope, drop_self=False)]
        if isinstance(found, _External):
            return [found]
        if isinstance(found, _Expr):
            if isinstance(found.expr, ast.Lambda):
                return [_Target(self.project.lambdas[found.expr], drop_self=False, origin=None)]
            if isinstance(found.expr, (ast.Name, ast.Attribute)):
                return self.callees(found.expr, found.ctx)  # an alias: real_run = pg_tools.run
            return [_Unknown(f"calls the result of `{_code(found.expr)}`")]
        if isinstance(found, _Unknown):
            return [found]
        if isinstance(found, _Free):
            return [_Unknown(f"calls its parameter `{found.name}`")]
        return [_Unknown(f"calls a {type(found).__name__.strip('_').lower()}")]

    def _self_class(self, expr: ast.expr, ctx: Ctx) -> ClassInfo | None:
        """The class of `self` (or `cls`) when expr is a method's first parameter."""
        if not isinstance(expr, ast.Name):
            return None
        scope: Scope | None = ctx.scope
        while scope is not None:
            if scope.cls is not None and scope.params and scope.params[0].name == expr.id:
                return scope.cls
            scope = scope.parent
        return None

    def _members(self, info: ClassInfo, name: str) -> list[_Target | _External | _Unknown]:
        if name in info.methods:
            return [_Target(info.methods[name], drop_self=not _is_static(info.methods[name]))]
        if any(n == name for n, _, _ in info.fields):
            return self._field_values(info, name)
        for base in info.node.bases:  # inherited from a project class
            base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
            for base_info in self.project.classes.get(base_name or "", []):
                if base_info is not info:
                    found = self._members(base_info, name)
                    if found:
                        return found
        return []

    def _field_values(self, info: ClassInfo, name: str) -> list[_Target | _External | _Unknown]:
        """The callables every construction `Cls(...)` gives the field (Daemon(..., argv=lambda: [...]))."""
        key = (id(info), name)
        if key in self._field_cache:
            return self._field_cache[key]
        self._field_cache[key] = []  # a construction that needs itself resolves to nothing
        names = [n for n, _, _ in info.fields]
        index = names.index(name)
        default = info.fields[index][1]
        out: list[_Target | _External | _Unknown] = []
        for call, scope in self.project.calls_named.get(info.name, []):
            site = Site(scope.module.path, call.lineno)
            given = next((k.value for k in call.keywords if k.arg == name), None)
            positional = call.args[: index + 1]
            if given is None and len(positional) > index and not any(isinstance(a, ast.Starred) for a in positional):
                given = call.args[index]
            ctx = Ctx(scope, None, site) if given is not None else Ctx(info.scope, None, site)
            expr = given if given is not None else default
            if expr is None:
                continue
            if isinstance(expr, ast.Lambda):
                out.append(_Target(self.project.lambdas[expr], drop_self=False, origin=site))
            elif isinstance(expr, (ast.Name, ast.Attribute)):
                callees = self.callees(expr, ctx)
                out += [_Target(t.scope, t.drop_self, site) if isinstance(t, _Target) else t for t in callees]
            else:
                out.append(_Unknown(f"{site}: `{name}=` is `{_code(expr)}`, not a function"))
        self._field_cache[key] = out
        return out

    def bind(self, call: ast.Call, target: _Target, ctx: Ctx) -> dict[str, tuple[ast.expr, Ctx] | None]:
        """The target's parameters, each bound to the call's argument (None: passed with * or **)."""
        params = target.scope.params
        positional = [p for p in params if p.kind == "positional"][1 if target.drop_self else 0 :]
        vararg = next((p for p in params if p.kind == "vararg"), None)
        binds: dict[str, tuple[ast.expr, Ctx] | None] = {}
        starred_at = next((i for i, a in enumerate(call.args) if isinstance(a, ast.Starred)), len(call.args))
        for i, param in enumerate(positional):
            if i < starred_at:
                if i < len(call.args):
                    binds[param.name] = (call.args[i], ctx)
            else:
                binds[param.name] = None
        if vararg is not None:
            if starred_at >= len(positional):
                rest = ast.Tuple(elts=list(call.args[len(positional) :]), ctx=ast.Load())
                binds[vararg.name] = (rest, ctx)
            else:
                binds[vararg.name] = None
        for keyword in call.keywords:
            if keyword.arg is not None:
                binds[keyword.arg] = (keyword.value, ctx)
            else:  # **kwargs: any parameter not bound yet may come from it
                for param in params:
                    if param.kind in ("positional", "keyword") and param.name not in binds:
                        binds[param.name] = None
        return binds


def _is_static(scope: Scope) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in getattr(scope.node, "decorator_list", []))


def _concat(parts: list[list[Alt]]) -> list[Alt]:
    alts: list[Alt] = [()]
    for options in parts:
        grown: list[Alt] = []
        for alt in alts:
            if alt and not isinstance(alt[-1], tuple):
                grown.append(alt)  # ended by a marker: nothing after it is known
            else:
                grown += [alt + option for option in options]
        alts = grown[:_MAX_ALTS]
    return alts


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _code(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # a synthetic node ast cannot print
        text = type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."


# ================================================================================================
# The scan: direct launches, then the calls of every function that forwards a program to one
# ================================================================================================
@dataclass(frozen=True)
class _Launch:
    site: Site
    expr: ast.expr | None
    kind: str  # "seq" (an argument list), "value" (the program), "reference" (a look-up), "fixed", "unknown"
    ctx: Ctx | None
    detail: str = ""  # the program for "fixed", the reason for "unknown"


class _Scanner:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.interp = Interpreter(project)
        self._callers: dict[Scope, list[tuple[ast.Call, Ctx, _Target]]] | None = None

    def run(self) -> Scan:
        programs: dict[str, set[Site]] = defaultdict(set)
        unresolved: list[Unresolved] = list(self.project.broken)
        forwarders: set[tuple[Scope, str, str]] = set()
        queue = deque(launch for module in self.project.modules.values() for launch in self._direct(module))
        while queue:
            launch = queue.popleft()
            for result in dict.fromkeys(self._evaluate(launch)):
                if isinstance(result, _Program):
                    programs[result.name].add(result.origin or launch.site)
                elif isinstance(result, _Unknown) and launch.kind != "reference":
                    code = _code(launch.expr) if launch.expr is not None else ""
                    unresolved.append(Unresolved(launch.site, code, result.why))
                elif isinstance(result, _Forward) and launch.kind != "reference":
                    key = (result.scope, result.param, result.kind)
                    if key not in forwarders:
                        forwarders.add(key)
                        queue.extend(self._forwarded(result))
        unique = sorted(set(unresolved), key=lambda u: (u.site, u.why))
        return Scan(dict(programs), unique)

    def _evaluate(self, launch: _Launch) -> list[Result]:
        if launch.kind == "fixed":
            return [_Program(launch.detail, None)]
        if launch.kind == "unknown" or launch.expr is None or launch.ctx is None:
            return [_Unknown(launch.detail or "no argument list")]
        if launch.kind == "seq":
            return self.interp.argv0(self.interp.seq(launch.expr, launch.ctx))
        return self.interp.value(launch.expr, launch.ctx)

    def _direct(self, module: Module) -> Iterator[_Launch]:
        for call, scope in module.calls:
            ctx = Ctx(scope)
            site = Site(module.path, call.lineno)
            qualname = self.interp.external(call.func, ctx) or ""
            keywords = {k.arg: k.value for k in call.keywords if k.arg}
            args = call.args
            if qualname in _ARGV_LAUNCHERS or qualname in _SHELL_LAUNCHERS:
                if "executable" in keywords:  # it replaces argv[0] as the program run
                    yield _Launch(site, keywords["executable"], "value", ctx)
                else:
                    argv = args[0] if args else keywords.get("args", keywords.get("cmd"))
                    if argv is None:
                        yield _Launch(site, call, "unknown", ctx, "no argument list")
                    else:
                        yield _Launch(site, argv, "seq", ctx)
            elif qualname in _PROGRAM_FIRST or qualname in _PROGRAM_SECOND:
                position = 0 if qualname in _PROGRAM_FIRST else 1
                program = args[position] if len(args) > position else None
                if program is None:
                    yield _Launch(site, call, "unknown", ctx, "no program argument")
                elif isinstance(program, ast.Starred):  # create_subprocess_exec(*argv)
                    yield _Launch(site, program.value, "seq", ctx)
                else:
                    yield _Launch(site, program, "value", ctx)
            elif _is_docker_client(qualname) or _is_containers_run(call.func):
                yield _Launch(site, None, "fixed", None, DOCKER_ENGINE)
            elif qualname == "shutil.which" and args:
                yield _Launch(site, args[0], "reference", ctx)
            if "executable_path" in keywords:  # Playwright's browser
                yield _Launch(site, keywords["executable_path"], "reference", ctx)

    def _forwarded(self, forward: _Forward) -> Iterator[_Launch]:
        """Every call of a forwarding function, as a launch of what it passes for the parameter."""
        param = forward.scope.param(forward.param)
        for call, ctx, target in self._callers_of(forward.scope):
            site = Site(ctx.scope.module.path, call.lineno)
            binds = self.interp.bind(call, target, ctx)
            if forward.param not in binds:
                if param is not None and param.default is not None:
                    yield _Launch(site, param.default, forward.kind, Ctx(forward.scope.parent or forward.scope))
                continue
            bound = binds[forward.param]
            if bound is None:
                yield _Launch(site, call, "unknown", ctx, f"the program reaches {forward.scope!r} through * or **")
            else:
                yield _Launch(site, bound[0], forward.kind, bound[1])

    def _callers_of(self, scope: Scope) -> list[tuple[ast.Call, Ctx, _Target]]:
        if self._callers is None:
            self._callers = defaultdict(list)
            for module in self.project.modules.values():
                for call, call_scope in module.calls:
                    ctx = Ctx(call_scope)
                    for target in self.interp.callees(call.func, ctx):
                        if isinstance(target, _Target):
                            self._callers[target.scope].append((call, ctx, target))
        return self._callers.get(scope, [])


def _is_docker_client(qualname: str) -> bool:
    return qualname.startswith("docker.") and qualname.rsplit(".", 1)[-1] in _DOCKER_CLIENTS


def _is_containers_run(func: ast.expr) -> bool:
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "run"
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "containers"
    )


def scan(root: Path = REPO_ROOT, dirs: Iterable[str] = SCANNED_DIRS) -> Scan:
    """The programs the Python code under root/dirs starts, and the launches it could not read."""
    return _Scanner(Project(root, dirs)).run()


def declared(root: Path = REPO_ROOT) -> tuple[dict[str, set[Site]], list[str]]:
    """SCRIPTED, DOCUMENTED and IMPLICIT as program -> sites, and the declarations gone stale
    (a program no longer mentioned in the file it is declared for)."""
    programs: dict[str, set[Site]] = defaultdict(set)
    stale: list[str] = []
    lines: dict[str, list[str]] = {}
    for table in (SCRIPTED, DOCUMENTED):
        for program, files in table.items():
            word = re.compile(rf"(?<![\w.-]){re.escape(program)}(?![\w-])")
            for name in files:
                if name not in lines:
                    path = root / name
                    lines[name] = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
                number = next((i for i, text in enumerate(lines[name], 1) if word.search(text)), 0)
                if number:
                    programs[program].add(Site(name, number))
                else:
                    stale.append(f"{program}: declared for {name}, which does not mention it")
    for program, (name, _why) in IMPLICIT.items():
        if (root / name).is_file():
            programs[program].add(Site(name, 0))
        else:
            stale.append(f"{program}: declared for {name}, which does not exist")
    return dict(programs), stale


# ================================================================================================
# The resolver: what installed each program
# ================================================================================================
class ListEntry(Protocol):
    name: str
    origin: str

    @property
    def is_file(self) -> bool: ...


@dataclass(frozen=True)
class Verdict:
    program: str
    path: str | None  # where it resolves to, symlinks followed
    owner: str | None  # the Debian package or Python distribution that installed it
    accepted: bool
    why: str

    def __str__(self) -> str:
        return f"{self.program} -> {self.path or '(not found)'} -> {self.owner or '(no package)'}: {self.why}"


def search_path() -> list[str]:
    # The interpreter's scripts directory first: on a pyenv machine the first `prefect` on PATH is
    # a shim script; the real one is where pip put it (on the CI image, /usr/local/bin, on PATH anyway).
    dirs = [sysconfig.get_path("scripts"), *os.environ.get("PATH", os.defpath).split(os.pathsep), PG_BIN_DIR]
    return list(dict.fromkeys(d for d in dirs if d))


def _usrmerge_aliases(path: str) -> list[str]:
    """/usr/sbin/runuser is recorded by dpkg as /sbin/runuser on a merged-/usr system, and back."""
    parts = path.split("/")
    aliases = []
    if len(parts) > 3 and parts[1] == "usr" and os.path.islink(f"/{parts[2]}"):
        aliases.append("/" + "/".join(parts[2:]))
    if len(parts) > 2 and parts[1] != "usr" and os.path.islink(f"/{parts[1]}"):
        aliases.append("/usr" + path)
    return aliases


def dpkg_owners(paths: Iterable[str]) -> dict[str, list[str]]:
    """path -> the Debian packages that own it, from one `dpkg -S` call."""
    wanted = sorted(set(paths))
    if not wanted:
        return {}
    out = subprocess.run(["dpkg", "-S", *wanted], capture_output=True, text=True, check=False).stdout
    owners: dict[str, list[str]] = defaultdict(list)
    for line in out.splitlines():
        if line.startswith(("diversion by", "local diversion")):
            continue
        head, sep, rest = line.partition(": /")
        if sep:
            owners["/" + rest].extend(p.strip().split(":")[0] for p in head.split(","))
    return dict(owners)


@dataclass
class DebianPackages:
    installed: set[str]
    needs: dict[str, set[str]]  # package -> what its Depends and Pre-Depends name (every alternative)
    providers: dict[str, set[str]]  # virtual package -> installed packages that provide it

    @classmethod
    def read(cls) -> DebianPackages:
        fmt = "${Package}\t${db:Status-Abbrev}\t${Depends}\t${Pre-Depends}\t${Provides}\n"
        out = subprocess.run(["dpkg-query", "-W", f"-f={fmt}"], capture_output=True, text=True, check=True).stdout
        installed: set[str] = set()
        needs: dict[str, set[str]] = {}
        providers: dict[str, set[str]] = defaultdict(set)
        for line in out.splitlines():
            package, status, depends, pre_depends, provides = (line.split("\t") + [""] * 5)[:5]
            if not status.startswith("ii"):
                continue
            installed.add(package)
            needs.setdefault(package, set()).update(_relation_names(f"{depends},{pre_depends}"))
            for virtual in _relation_names(provides):
                providers[virtual].add(package)
        return cls(installed, needs, dict(providers))

    def closure(self, roots: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Every installed package the roots need, directly or not -> how: (root, ..., package)."""
        chains: dict[str, tuple[str, ...]] = {}
        queue: deque[tuple[str, tuple[str, ...]]] = deque((root, ()) for root in roots)
        while queue:  # breadth first: the shortest chain wins
            name, chain = queue.popleft()
            for package in [name, *sorted(self.providers.get(name, ()))]:
                if package in self.installed and package not in chains:
                    chains[package] = (*chain, package)
                    queue.extend((need, chains[package]) for need in sorted(self.needs.get(package, ())))
        return chains


def _relation_names(field_text: str) -> Iterator[str]:
    # "libc6 (>= 2.34), awk | mawk, python3:any" -> libc6, awk, mawk, python3
    for relation in field_text.split(","):
        for alternative in relation.split("|"):
            name = alternative.strip().split(" ")[0].split("(")[0].split(":")[0]
            if name:
                yield name


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_distributions(pyproject: Path) -> tuple[set[str], set[str]]:
    """The distributions pyproject.toml names (the project, its dependencies, every extra),
    normalised, and the project's own console scripts."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    requirements = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = {_normalise(m.group(0)) for r in requirements if (m := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()))}
    if "name" in project:
        names.add(_normalise(project["name"]))
    return names, set(project.get("scripts", {}))


def _python_files_of(names: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """realpath -> distribution for the executables those distributions installed, and
    console-script name -> distribution (an editable install may record no files)."""
    files: dict[str, str] = {}
    scripts: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if _normalise(name) not in names:
            continue
        for entry in dist.entry_points:
            if entry.group in ("console_scripts", "gui_scripts"):
                scripts.setdefault(entry.name, name)
        for file in dist.files or ():
            if "bin" in Path(str(file)).parts or "Scripts" in Path(str(file)).parts:
                files.setdefault(os.path.realpath(str(dist.locate_file(file))), name)
    return files, scripts


def check(
    programs: Iterable[str], entries: Iterable[ListEntry], pyproject: Path = REPO_ROOT / "pyproject.toml"
) -> dict[str, Verdict]:
    """A verdict per program: does the list, the base image or pyproject.toml account for it?"""
    entries = list(entries)
    listed = {e.name: e.origin for e in entries if not e.is_file}
    base_files = {p for e in entries if e.is_file for p in (e.name, os.path.realpath(e.name))}
    path = os.pathsep.join(search_path())
    located = {name: shutil.which(name, path=path) for name in sorted(set(programs))}
    candidates: dict[str, list[str]] = {}
    for name, found in located.items():
        if found:
            paths = list(dict.fromkeys([found, os.path.realpath(found)]))
            candidates[name] = list(dict.fromkeys(paths + [a for p in paths for a in _usrmerge_aliases(p)]))
    owners = dpkg_owners(p for paths in candidates.values() for p in paths)
    needed_by = DebianPackages.read().closure(listed)
    python_names, own_scripts = pyproject_distributions(pyproject)
    python_files, python_scripts = _python_files_of(python_names)
    own_python = os.path.realpath(sys.executable)
    scripts_dir = os.path.realpath(sysconfig.get_path("scripts"))

    verdicts: dict[str, Verdict] = {}
    for name, found in located.items():
        if not found:
            where = f"on PATH, in {sysconfig.get_path('scripts')} or in {PG_BIN_DIR}"
            verdicts[name] = Verdict(name, None, None, False, f"not installed: found neither {where}")
            continue
        real = os.path.realpath(found)
        packages = list(dict.fromkeys(p for c in candidates[name] for p in owners.get(c, ())))
        verdicts[name] = _decide(
            name,
            real,
            found,
            packages,
            listed,
            needed_by,
            base_files,
            python_files,
            {**python_scripts, **dict.fromkeys(own_scripts, "this project")},
            own_python,
            scripts_dir,
        )
    return verdicts


def _decide(
    name: str,
    real: str,
    found: str,
    packages: list[str],
    listed: Mapping[str, str],
    needed_by: Mapping[str, tuple[str, ...]],
    base_files: set[str],
    python_files: Mapping[str, str],
    python_scripts: Mapping[str, str],
    own_python: str,
    scripts_dir: str,
) -> Verdict:
    for package in packages:
        if package in listed:
            return Verdict(name, real, package, True, f"listed ({listed[package]})")
    for package in packages:
        if package in needed_by:
            chain = needed_by[package]
            why = f"needed by {chain[0]}, which is listed ({listed[chain[0]]}): {' -> '.join(chain)}"
            return Verdict(name, real, package, True, why)
    if found in base_files or real in base_files:
        return Verdict(name, real, None, True, "a file of the base image the list names")
    if real in python_files:
        return Verdict(name, real, python_files[real], True, "installed by a Python distribution pyproject.toml names")
    if name in python_scripts and os.path.realpath(os.path.dirname(found)) == scripts_dir:
        return Verdict(name, real, python_scripts[name], True, "a console script of a pyproject.toml distribution")
    if real == own_python:
        return Verdict(name, real, None, True, "the Python that runs the project (sys.executable)")
    if packages:
        return Verdict(
            name,
            real,
            ", ".join(packages),
            False,
            "its Debian package is not in system-packages.txt, and no package there needs it",
        )
    return Verdict(
        name,
        real,
        None,
        False,
        "no Debian package owns it (dpkg -S), the list names no such base file, "
        "and no distribution pyproject.toml names installed it",
    )
