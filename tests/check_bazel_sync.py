#!/usr/bin/env python3
"""Fails when the Bazel build and the Cargo workspace disagree.

Cargo (Cargo.toml / Cargo.lock) is the source of truth; Bazel builds the same
crates through rules_rust and crate_universe (MODULE.bazel: crate.from_cargo).
For every workspace member (the root Cargo.toml's `members` globs) this checks:

  a. the member has a BUILD.bazel;
  b. a lib crate has a rust_library whose crate name is the Cargo lib name and
     whose srcs (+ compile_data) cover every .rs file under src/, with the same
     crate root and edition; a bin crate has a rust_binary per Cargo binary;
  c. internal path dependencies appear as labels (//rust/<dir>:<lib target>) in
     deps, and no internal label is in deps that Cargo does not list;
  d. external crates come from all_crate_deps(normal = True) in deps and
     all_crate_deps(proc_macro = True) in proc_macro_deps (or explicit
     @clientd_crates//:name labels equal to Cargo's external dependencies), and no
     dev-only crates leak into a library or binary; a target whose crate
     renames a crates.io package (`hex = { package = "const-hex" }`) passes
     aliases = aliases(...) of those kinds, or rustc would not know the name;
  e. every Cargo integration test (tests/*.rs, tests/*/main.rs, [[test]]) has a
     rust_test with that crate root, and the crate has a unit-test rust_test
     (crate = ":<lib>", or crate_root = the binary's root); tests take
     [dev-dependencies] (all_crate_deps(normal_dev = True), dev path deps) and
     tests that use CARGO_BIN_EXE_<bin> get it through rustc_env + data;
  f. MODULE.bazel's crate.from_cargo lists exactly //:Cargo.toml and every
     member's Cargo.toml, with cargo_lockfile = "//:Cargo.lock"; the manifests
     and lockfile are exported by their packages;
  g. Cargo.lock exists and names every member;
  h. crate.from_cargo has lockfile = "//:cargo-bazel-lock.json" (without it `bazel_dep` on this
     module fails) and that file is current against Cargo.lock (tests/bazel_lockfile.py, which
     also regenerates it).

BUILD files are Starlark, which parses as Python: they are read with `ast` and
evaluated by a small interpreter that understands what these files use (rule
calls, lists, +, glob(), all_crate_deps(), select(), list comprehensions,
module-level constants and a few string methods). A load() of a .bzl file of
this repository (e.g. //rust:crate.bzl, the clientd_crate macro) evaluates that
file as Bazel does: a call of one of its `def`s runs the body (parameters with
defaults, assignments, for loops, return, native.glob()), and the rule calls it
makes become targets of the calling BUILD file, checked like written-out ones.
Symbols loaded from other repositories (@rules_rust, @crates) are known by
name. Anything it cannot evaluate is itself reported, never silently skipped.

Usage:
  tests/check_bazel_sync.py [--root DIR]   check the tree (default: the repo)
  tests/check_bazel_sync.py --self-test    prove the check catches drift, on
                                            temporary copies of the tree

Prints one line per problem ("path: what differs"), then a summary line; exits
1 when there is any problem. Standard library only (Python >= 3.11).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import shutil
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import bazel_lockfile

REPO = Path(__file__).resolve().parent.parent
BUILD_NAMES = ("BUILD.bazel", "BUILD")
# crate.from_cargo(name = ...) / load("@clientd_crates//:defs.bzl", ...): the project's own hub
# name, since crate_universe's default, "crates", collides with a user module's hub.
CRATES_REPO = "clientd_crates"
SKIP_DIRS = {"target", "node_modules", ".git", ".tools"}


class EvalError(Exception):
    pass


# --------------------------------------------------------------------------
# A small Starlark evaluator for BUILD files and the .bzl files they load
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CrateDeps:
    """What all_crate_deps(...) returns: a marker with the kinds asked for."""

    kinds: frozenset[str]

    def __repr__(self) -> str:
        return "all_crate_deps(%s)" % ", ".join("%s = True" % k for k in sorted(self.kinds))


@dataclass(frozen=True)
class CrateAliases:
    """What aliases(...) returns: a marker with the kinds asked for."""

    kinds: frozenset[str]

    def __repr__(self) -> str:
        return "aliases(%s)" % ", ".join("%s = True" % k for k in sorted(self.kinds))


@dataclass
class Target:
    kind: str  # rust_library, rust_test, ...
    attrs: dict
    line: int  # the BUILD file's statement that declared it (for a macro's targets, the macro call)
    via: str | None = None  # "clientd_crate in rust/crate.bzl" when a macro declared it

    @property
    def name(self) -> str:
        return self.attrs.get("name", "")

    def describe(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.via})" if self.via else "")


@dataclass
class BuildFile:
    path: Path  # absolute
    package: str  # "rust/digest"
    targets: list[Target] = field(default_factory=list)
    exported: set[str] = field(default_factory=set)
    loads: set[str] = field(default_factory=set)  # .bzl files of this repository it loads, directly or not
    macro_calls: list[tuple[str, str]] = field(default_factory=list)  # (function, .bzl file) it calls

    def by_kind(self, *kinds: str) -> list[Target]:
        return [t for t in self.targets if t.kind in kinds]


@dataclass(frozen=True)
class Loaded:
    """A symbol loaded from another repository (@rules_rust, @crates, ...): known by its name only."""

    label: str
    symbol: str


@dataclass(frozen=True)
class RuleClass:
    """What rule(...) returns in a .bzl file; Bazel names the rule after the global it is assigned to."""

    name: str | None = None


@dataclass(frozen=True)
class Opaque:
    """A value the checks never look into (provider(...), attr.label(...))."""

    what: str


@dataclass(eq=False)
class Module:
    """A .bzl file of this repository, evaluated once (Bazel's load semantics)."""

    rel: str  # "rust/crate.bzl"
    package: str  # "rust"
    env: dict = field(default_factory=dict)
    loads: set[str] = field(default_factory=set)  # itself and what it loads, directly or not


@dataclass(eq=False)
class Function:
    """A `def` of a loaded .bzl file (a macro): calling it runs its body."""

    name: str
    node: ast.FunctionDef
    module: Module
    defaults: dict


@dataclass
class Frame:
    module: Module | None  # None: the BUILD file
    globals: dict
    locals: dict | None = None  # a function's (and a comprehension's) names; None at a file's top level
    in_def: bool = False  # running a function body (not a .bzl file's top level)

    def where(self) -> str:
        return f"{self.module.rel} " if self.module else ""


class _Unbound:
    pass


UNBOUND = _Unbound()
LOADING = "loading"  # in Evaluator.modules while a .bzl file is being evaluated (load cycles)
CRATES_FUNCTIONS = ("aliases", "all_crate_deps", "crate_deps")  # from @crates//:defs.bzl


@dataclass
class _Return:
    value: object


def package_files(pkg_dir: Path) -> list[str]:
    """Files of a Bazel package, relative to it, not descending into subpackages."""
    out = []

    def walk(d: Path, rel: str) -> None:
        for entry in sorted(d.iterdir()):
            r = f"{rel}{entry.name}"
            if entry.is_dir():
                if entry.name in SKIP_DIRS or any((entry / b).is_file() for b in BUILD_NAMES):
                    continue
                walk(entry, r + "/")
            elif entry.is_file():
                out.append(r)

    if pkg_dir.is_dir():
        walk(pkg_dir, "")
    return out


def glob_match(pattern: str, path: str) -> bool:
    """Bazel glob semantics: '**' is zero or more whole segments, '*' stays in one."""

    def m(ps: list[str], xs: list[str]) -> bool:
        if not ps:
            return not xs
        if ps[0] == "**":
            return any(m(ps[1:], xs[i:]) for i in range(len(xs) + 1))
        return bool(xs) and fnmatch.fnmatchcase(xs[0], ps[0]) and m(ps[1:], xs[1:])

    return m(pattern.split("/"), path.split("/"))


def is_package(d: Path) -> bool:
    return any((d / b).is_file() for b in BUILD_NAMES)


class Evaluator:
    """Evaluates one BUILD file; the targets it declares (itself or through macros) go to self.build.

    `modules` caches the loaded .bzl files by path; share it between evaluators of one tree.
    """

    def __init__(self, pkg_dir: Path, package: str, root: Path, modules: dict | None = None):
        self.pkg_dir = pkg_dir
        self.package = package
        self.root = root
        self.modules = {} if modules is None else modules
        self.build = BuildFile(pkg_dir / "BUILD.bazel", package)
        self._files: list[str] | None = None
        self._stmt_line = 0
        self._stack: list[Function] = []

    def err(self, frame: Frame, node, msg: str) -> EvalError:
        return EvalError(f"{frame.where()}line {getattr(node, 'lineno', '?')}: {msg}")

    # -- files --
    def run(self, source: str, filename: str) -> BuildFile:
        frame = Frame(None, {})
        self.exec_file(self.parse(source, filename, frame), frame)
        return self.build

    def parse(self, source: str, filename: str, frame: Frame) -> ast.Module:
        try:
            return ast.parse(source, filename=filename)
        except SyntaxError as e:
            raise EvalError(f"{frame.where()}does not parse: {e.msg} (line {e.lineno})") from None

    def exec_file(self, tree: ast.Module, frame: Frame) -> None:
        """The top level of a BUILD file (frame.module None) or of a .bzl file."""
        build = frame.module is None
        for stmt in tree.body:
            if build:
                self._stmt_line = stmt.lineno
            if isinstance(stmt, ast.Expr):
                v = stmt.value
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    continue  # docstring
                if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "load":
                    self.load(v, frame)
                    continue
                if build and isinstance(v, ast.Call):
                    self.call(v, frame, statement=True)
                    continue
                if build and isinstance(v, ast.ListComp):
                    self.eval_comp(v, frame, statement=True)
                    continue
                if isinstance(v, ast.Call):
                    raise self.err(frame, stmt, "a call at the top level of a .bzl file (Bazel declares targets only from BUILD files and the macros they call)")
                raise self.err(frame, stmt, f"unsupported statement {ast.dump(v)[:60]}")
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                value = self.ev(stmt.value, frame)
                if isinstance(value, RuleClass) and value.name is None:
                    value = RuleClass(stmt.targets[0].id)
                frame.globals[stmt.targets[0].id] = value
            elif isinstance(stmt, ast.FunctionDef) and not build:
                frame.globals[stmt.name] = self.define(stmt, frame)
            elif isinstance(stmt, ast.FunctionDef):
                raise self.err(frame, stmt, "def is not allowed in a BUILD file (put macros in a .bzl file)")
            else:
                raise self.err(frame, stmt, f"unsupported statement {type(stmt).__name__}")

    def load(self, call: ast.Call, frame: Frame) -> None:
        if not call.args or not isinstance(call.args[0], ast.Constant) or not isinstance(call.args[0].value, str):
            raise self.err(frame, call, "load() needs a label string first")
        label = call.args[0].value
        names = []
        for a in call.args[1:]:
            s = self.ev(a, frame)
            names.append((s, s))
        for kw in call.keywords:
            names.append((kw.arg, self.ev(kw.value, frame)))
        module = self.load_module(label, frame, call)
        for local, symbol in names:
            if module is None:
                frame.globals[local] = Loaded(label, symbol)
            elif symbol.startswith("_"):
                raise self.err(frame, call, f"load({label!r}): {symbol} is private to {module.rel}")
            elif symbol not in module.env:
                raise self.err(frame, call, f"load({label!r}): {module.rel} does not define {symbol}")
            else:
                frame.globals[local] = module.env[symbol]

    def load_module(self, label: str, frame: Frame, node) -> Module | None:
        """Evaluates a .bzl file of this repository (None for another repository's)."""
        if label.startswith(":"):
            package, name = (frame.module.package if frame.module else self.package), label[1:]
        elif label.startswith(("//", "@//", "@@//")):
            package, colon, name = label[label.index("//") + 2:].partition(":")
            if not colon:
                raise self.err(frame, node, f"load({label!r}): the label needs ':' before the file name")
        else:
            return None
        if not name.endswith(".bzl"):
            raise self.err(frame, node, f"load({label!r}): not a .bzl file")
        pkg_dir = self.root / package if package else self.root
        if not is_package(pkg_dir):
            raise self.err(frame, node, f"load({label!r}): {package or '//'} is not a package (it has no BUILD.bazel)")
        parts = name.split("/")
        for i in range(1, len(parts)):
            if is_package(pkg_dir.joinpath(*parts[:i])):
                raise self.err(frame, node, f"load({label!r}): crosses into package {'/'.join([package, *parts[:i]]).lstrip('/')}")
        rel = (Path(package) / name).as_posix() if package else name
        loads = frame.module.loads if frame.module else self.build.loads
        cached = self.modules.get(rel)
        if cached is LOADING:
            raise self.err(frame, node, f"load({label!r}): cycle (it loads itself, directly or not)")
        if isinstance(cached, EvalError):
            raise cached
        if cached is None:
            path = self.root / rel
            if not path.is_file():
                raise self.err(frame, node, f"load({label!r}): {rel} does not exist")
            self.modules[rel] = LOADING
            module = Module(rel, package, loads={rel})
            try:
                mframe = Frame(module, module.env)
                self.exec_file(self.parse(path.read_text(), str(path), mframe), mframe)
            except EvalError as e:
                self.modules[rel] = e
                raise
            self.modules[rel] = cached = module
        loads |= cached.loads
        return cached

    def define(self, node: ast.FunctionDef, frame: Frame) -> Function:
        a = node.args
        if node.decorator_list:
            raise self.err(frame, node, f"def {node.name}: decorators are not Starlark")
        params = [p.arg for p in a.args]
        defaults = {p: self.ev(d, frame) for p, d in zip(params[len(params) - len(a.defaults):], a.defaults)}
        for p, d in zip(a.kwonlyargs, a.kw_defaults):
            if d is not None:
                defaults[p.arg] = self.ev(d, frame)
        return Function(node.name, node, frame.module, defaults)

    # -- function bodies --
    def call_function(self, fn: Function, node: ast.Call, frame: Frame):
        a = fn.node.args
        if a.vararg or a.kwarg or a.posonlyargs:
            raise self.err(frame, node, f"{fn.name}() has *args, **kwargs or positional-only parameters, which this checker does not evaluate")
        if fn in self._stack:
            raise self.err(frame, node, f"{fn.name}() calls itself (Starlark has no recursion)")
        args, kwargs = self.arguments(node, frame)
        params = [p.arg for p in a.args]
        kwonly = [p.arg for p in a.kwonlyargs]
        if len(args) > len(params):
            raise self.err(frame, node, f"{fn.name}() takes {len(params)} positional argument(s), got {len(args)}")
        bound = dict(zip(params, args))
        for k, v in kwargs.items():
            if k not in params and k not in kwonly:
                raise self.err(frame, node, f"{fn.name}() has no parameter {k}")
            if k in bound:
                raise self.err(frame, node, f"{fn.name}() got {k} twice")
            bound[k] = v
        for p in params + kwonly:
            if p not in bound:
                if p not in fn.defaults:
                    raise self.err(frame, node, f"{fn.name}() is missing argument {p}")
                bound[p] = fn.defaults[p]
        if frame.module is None:
            self.build.macro_calls.append((fn.name, fn.module.rel))
        self._stack.append(fn)
        try:
            result = self.exec_block(fn.node.body, Frame(fn.module, fn.module.env, bound, in_def=True))
        except EvalError as e:
            raise EvalError(f"{e}; in {fn.name}() called at {frame.where()}line {node.lineno}") from None
        finally:
            self._stack.pop()
        return result.value if result else None

    def exec_block(self, stmts: list[ast.stmt], frame: Frame) -> _Return | None:
        for stmt in stmts:
            if isinstance(stmt, ast.Expr):
                v = stmt.value
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    continue  # docstring
                if not isinstance(v, ast.Call):
                    raise self.err(frame, stmt, f"unsupported statement {ast.dump(v)[:60]}")
                self.call(v, frame, statement=True)
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                frame.locals[stmt.targets[0].id] = self.ev(stmt.value, frame)
            elif isinstance(stmt, ast.For):
                if not isinstance(stmt.target, ast.Name) or stmt.orelse:
                    raise self.err(frame, stmt, "for loops must bind one name and have no else")
                for item in list(self.ev(stmt.iter, frame)):
                    frame.locals[stmt.target.id] = item
                    result = self.exec_block(stmt.body, frame)
                    if result:
                        return result
            elif isinstance(stmt, ast.Return):
                return _Return(self.ev(stmt.value, frame) if stmt.value else None)
            elif isinstance(stmt, ast.Pass):
                continue
            else:
                raise self.err(frame, stmt, f"unsupported statement {type(stmt).__name__}")
        return None

    # -- calls --
    def arguments(self, node: ast.Call, frame: Frame) -> tuple[list, dict]:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(kw.arg is None for kw in node.keywords):
            raise self.err(frame, node, "*args / **kwargs in a call are not supported by this checker")
        return [self.ev(a, frame) for a in node.args], {kw.arg: self.ev(kw.value, frame) for kw in node.keywords}

    def lookup(self, name: str, frame: Frame):
        if frame.locals is not None and name in frame.locals:
            return frame.locals[name]
        return frame.globals.get(name, UNBOUND)

    def call(self, node: ast.Call, frame: Frame, statement: bool = False):
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and self.lookup(func.value.id, frame) is UNBOUND:
            ns = func.value.id
            if ns == "native" and frame.module is not None:
                if not frame.in_def:
                    raise self.err(frame, node, f"native.{func.attr}() at the top level of a .bzl file (only BUILD files and the macros they call have a package)")
                return self.call_builtin_or_rule(func.attr, node, frame, statement)
            if ns == "attr" and frame.module is not None:
                self.arguments(node, frame)
                return Opaque(f"attr.{func.attr}()")
            raise self.err(frame, node, f"unknown name {ns}")
        if isinstance(func, ast.Attribute):
            obj = self.ev(func.value, frame)
            args, kwargs = self.arguments(node, frame)
            meth = func.attr
            if isinstance(obj, str) and meth in ("removeprefix", "removesuffix", "replace", "format", "lower", "upper"):
                return getattr(obj, meth)(*args, **kwargs)
            raise self.err(frame, node, f"unsupported method .{meth}()")
        if not isinstance(func, ast.Name):
            raise self.err(frame, node, "unsupported call")
        name = func.id
        value = self.lookup(name, frame)
        if isinstance(value, Function):
            return self.call_function(value, node, frame)
        if isinstance(value, RuleClass):
            return self.declare(value.name or name, node, frame, statement)
        if isinstance(value, Loaded):
            if value.label.startswith(f"@{CRATES_REPO}//") and value.symbol in CRATES_FUNCTIONS:
                return self.builtin(value.symbol, node, frame)
            return self.declare(value.symbol, node, frame, statement)  # a rule (rules_rust, ...)
        if value is not UNBOUND:
            raise self.err(frame, node, f"{name} is not callable")
        if name in ("len", "select"):
            return self.builtin(name, node, frame)
        if name in CRATES_FUNCTIONS:
            raise self.err(frame, node, f'{name}() is not loaded (load("@{CRATES_REPO}//:defs.bzl", "{name}"))')
        if frame.module is not None:
            if name == "rule":
                self.arguments(node, frame)
                return RuleClass()
            if name == "provider":
                self.arguments(node, frame)
                return Opaque("provider()")
            raise self.err(frame, node, f"unknown function {name}()" + (f" (a .bzl file calls native.{name})" if name in ("glob", "package_name") else ""))
        return self.call_builtin_or_rule(name, node, frame, statement)

    def call_builtin_or_rule(self, name: str, node: ast.Call, frame: Frame, statement: bool):
        """A name of the BUILD language (bare in a BUILD file, native.NAME in a macro)."""
        if name in ("glob", "package_name"):
            return self.builtin(name, node, frame)
        return self.declare(name, node, frame, statement)  # a native rule, exports_files, package

    def builtin(self, fn: str, node: ast.Call, frame: Frame):
        args, kwargs = self.arguments(node, frame)
        if fn == "glob":
            include = args[0] if args else kwargs.pop("include")
            return self.glob(include, *args[1:], **kwargs)
        if fn == "package_name":
            return self.package
        if fn == "all_crate_deps":
            kinds = frozenset(k for k, v in kwargs.items() if v is True and k != "package_name")
            return [CrateDeps(kinds or frozenset({"normal"}))]
        if fn == "aliases":
            kinds = frozenset(k for k, v in kwargs.items() if v is True and k != "package_name")
            return CrateAliases(kinds or frozenset({"normal"}))
        if fn == "crate_deps":
            return [f"@{CRATES_REPO}//:{n}" for n in args[0]]
        if fn == "select":
            merged: list = []
            for branch in args[0].values():
                merged += [x for x in branch if x not in merged]
            return merged
        if fn == "len":
            return len(args[0])
        raise self.err(frame, node, f"unsupported function {fn}()")

    def declare(self, kind: str, node: ast.Call, frame: Frame, statement: bool) -> None:
        """A rule call: records a target of the BUILD file."""
        if not statement:
            raise self.err(frame, node, f"{kind}() declares a target; it can only be a statement")
        if frame.module is not None and not frame.in_def:
            raise self.err(frame, node, f"{kind}() at the top level of a .bzl file")
        if kind == "exports_files":
            files = self.ev(node.args[0], frame) if node.args else []
            self.build.exported.update(files)
            return None
        if node.args:
            raise self.err(frame, node, f"{kind}() with positional arguments")
        if kind == "package":
            return None
        _, attrs = self.arguments(node, frame)
        via = f"{self._stack[0].name} in {self._stack[0].module.rel}" if self._stack else None
        self.build.targets.append(Target(kind, attrs, self._stmt_line, via))
        return None

    def eval_comp(self, comp: ast.ListComp, frame: Frame, statement: bool = False) -> list:
        if len(comp.generators) != 1:
            raise self.err(frame, comp, "nested comprehension")
        gen = comp.generators[0]
        if not isinstance(gen.target, ast.Name):
            raise self.err(frame, comp, "comprehension target must be a name")
        if statement and not isinstance(comp.elt, ast.Call):
            raise self.err(frame, comp, "top-level comprehension must call a rule")
        out = []
        for item in self.ev(gen.iter, frame):
            scope = Frame(frame.module, frame.globals, {**(frame.locals or {}), gen.target.id: item}, frame.in_def)
            if not all(self.ev(c, scope) for c in gen.ifs):
                continue
            if statement:
                self.call(comp.elt, scope, statement=True)
            else:
                out.append(self.ev(comp.elt, scope))
        return out

    # -- expressions --
    def files(self) -> list[str]:
        if self._files is None:
            self._files = package_files(self.pkg_dir)
        return self._files

    def glob(self, include, exclude=(), allow_empty=True, exclude_directories=1):
        found = [f for f in self.files() if any(glob_match(p, f) for p in include)]
        return sorted(f for f in found if not any(glob_match(p, f) for p in exclude))

    def ev(self, node, frame: Frame):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.ev(e, frame) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {self.ev(k, frame): self.ev(v, frame) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Name):
            value = self.lookup(node.id, frame)
            if value is not UNBOUND:
                return value
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            raise self.err(frame, node, f"unknown name {node.id}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.ev(node.left, frame), self.ev(node.right, frame)
            if isinstance(left, dict) and isinstance(right, dict):
                return {**left, **right}
            try:
                return left + right
            except TypeError:
                raise self.err(frame, node, f"cannot add {type(left).__name__} and {type(right).__name__}") from None
        if isinstance(node, ast.Subscript):
            value = self.ev(node.value, frame)
            if isinstance(node.slice, ast.Slice):
                s = node.slice
                return value[
                    self.ev(s.lower, frame) if s.lower else None:
                    self.ev(s.upper, frame) if s.upper else None
                ]
            return value[self.ev(node.slice, frame)]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.ev(node.operand, frame)
        if isinstance(node, ast.ListComp):
            return self.eval_comp(node, frame)
        if isinstance(node, ast.Call):
            return self.call(node, frame)
        raise self.err(frame, node, f"unsupported expression {type(node).__name__}")


def parse_build(pkg_dir: Path, package: str, root: Path | None = None, modules: dict | None = None) -> BuildFile:
    """Evaluates pkg_dir's BUILD file; root is the repository root (for //labels of .bzl files)."""
    if root is None:
        root = pkg_dir.parents[package.count("/")] if package else pkg_dir
    for name in BUILD_NAMES:
        p = pkg_dir / name
        if p.is_file():
            ev = Evaluator(pkg_dir, package, root, modules)
            ev.build.path = p
            return ev.run(p.read_text(), str(p))
    raise FileNotFoundError(pkg_dir / "BUILD.bazel")


def norm_label(label: str, package: str) -> str:
    """Canonical form: //pkg:name for the main repo, @repo//pkg:name otherwise."""
    if label.startswith("@@//") or label.startswith("@//"):
        label = label[label.index("//"):]
    if label.startswith("//"):
        pkg, _, name = label[2:].partition(":")
        return f"//{pkg}:{name or pkg.rsplit('/', 1)[-1]}"
    if label.startswith("@"):
        repo, _, rest = label.lstrip("@").partition("//")
        pkg, _, name = rest.partition(":")
        return f"@{repo}//{pkg}:{name or pkg.rsplit('/', 1)[-1] or repo}"
    return f"//{package}:{label.lstrip(':')}"


# --------------------------------------------------------------------------
# The Cargo side
# --------------------------------------------------------------------------


@dataclass
class Dep:
    key: str  # name used in code / Cargo.toml key
    package: str  # real package name
    path: Path | None  # resolved absolute path for path dependencies


@dataclass
class CargoTarget:
    name: str
    root: str  # path relative to the member dir
    test: bool = True  # `test = false` in Cargo.toml: no unit tests


@dataclass
class Member:
    dir: Path
    rel: str  # "rust/digest"
    package: str
    edition: str
    lib: CargoTarget | None
    proc_macro: bool
    bins: list[CargoTarget]
    tests: list[CargoTarget]
    deps: list[Dep]
    dev_deps: list[Dep]
    build_script: str | None


def _inherit(value, root_ws: dict, key: str):
    if isinstance(value, dict) and value.get("workspace") is True:
        return root_ws.get("package", {}).get(key)
    return value


def _deps(table: dict, base: Path, root: Path, root_ws: dict) -> list[Dep]:
    out = []
    for key, spec in (table or {}).items():
        path = None
        package = key
        if isinstance(spec, dict):
            if spec.get("workspace") is True:
                wspec = root_ws.get("dependencies", {}).get(key, {})
                if isinstance(wspec, dict):
                    package = wspec.get("package", key)
                    if "path" in wspec:
                        path = (root / wspec["path"]).resolve()
            else:
                package = spec.get("package", key)
                if "path" in spec:
                    path = (base / spec["path"]).resolve()
        out.append(Dep(key, package, path))
    return out


def _all_dep_tables(manifest: dict, kind: str) -> dict:
    merged = dict(manifest.get(kind, {}))
    for target in manifest.get("target", {}).values():
        merged.update(target.get(kind, {}))
    return merged


def load_members(root: Path, problems: list[str]) -> list[Member]:
    root_manifest = tomllib.loads((root / "Cargo.toml").read_text())
    ws = root_manifest.get("workspace", {})
    excluded = {(root / e).resolve() for e in ws.get("exclude", [])}
    dirs: list[Path] = []
    for pattern in ws.get("members", []):
        for d in sorted(root.glob(pattern)):
            if d.is_dir() and (d / "Cargo.toml").is_file() and d.resolve() not in excluded and d not in dirs:
                dirs.append(d)
    members = []
    for d in dirs:
        rel = d.relative_to(root).as_posix()
        try:
            m = tomllib.loads((d / "Cargo.toml").read_text())
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{rel}/Cargo.toml: does not parse: {e}")
            continue
        pkg = m.get("package", {})
        name = pkg["name"]
        edition = _inherit(pkg.get("edition", "2015"), ws, "edition") or "2015"
        lib_tbl = m.get("lib", {})
        lib_root = lib_tbl.get("path", "src/lib.rs")
        lib = None
        if (d / lib_root).is_file() or "lib" in m:
            lib = CargoTarget(lib_tbl.get("name", name.replace("-", "_")), lib_root, lib_tbl.get("test", True))
        bins = [CargoTarget(b["name"], b.get("path", f"src/bin/{b['name']}.rs"), b.get("test", True)) for b in m.get("bin", [])]
        if pkg.get("autobins", True):
            known = {b.root for b in bins}
            auto = []
            if (d / "src/main.rs").is_file():
                auto.append(CargoTarget(name, "src/main.rs"))
            for f in sorted((d / "src/bin").glob("*.rs")):
                auto.append(CargoTarget(f.stem, f"src/bin/{f.name}"))
            for f in sorted((d / "src/bin").glob("*/main.rs")):
                auto.append(CargoTarget(f.parent.name, f"src/bin/{f.parent.name}/main.rs"))
            bins += [b for b in auto if b.root not in known and b.name not in {x.name for x in bins}]
        tests = [CargoTarget(t["name"], t.get("path", f"tests/{t['name']}.rs")) for t in m.get("test", [])]
        if pkg.get("autotests", True):
            known = {t.root for t in tests}
            for f in sorted((d / "tests").glob("*.rs")):
                if f"tests/{f.name}" not in known:
                    tests.append(CargoTarget(f.stem, f"tests/{f.name}"))
            for f in sorted((d / "tests").glob("*/main.rs")):
                if f"tests/{f.parent.name}/main.rs" not in known:
                    tests.append(CargoTarget(f.parent.name, f"tests/{f.parent.name}/main.rs"))
        build = pkg.get("build")
        if build is None and (d / "build.rs").is_file():
            build = "build.rs"
        members.append(Member(
            dir=d, rel=rel, package=name, edition=str(edition), lib=lib,
            proc_macro=bool(lib_tbl.get("proc-macro", False)), bins=bins, tests=tests,
            deps=_deps(_all_dep_tables(m, "dependencies"), d, root, ws),
            dev_deps=_deps(_all_dep_tables(m, "dev-dependencies"), d, root, ws),
            build_script=build if build not in (False, None) else None,
        ))
    return members


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


def _labels(values, package: str) -> list:
    """Normalized string labels plus CrateDeps markers from an attribute value."""
    out = []
    for v in values or []:
        out.append(norm_label(v, package) if isinstance(v, str) else v)
    return out


def _crate_kinds(values) -> set[str]:
    kinds: set[str] = set()
    for v in values:
        if isinstance(v, CrateDeps):
            kinds |= v.kinds
    return kinds


def _explicit_crates(values) -> set[str]:
    prefix = f"@{CRATES_REPO}//:"
    return {v[len(prefix):] for v in values if isinstance(v, str) and v.startswith(prefix)}


def _internal(values) -> set[str]:
    return {v for v in values if isinstance(v, str) and v.startswith("//")}


def _crate_name(t: Target) -> str:
    return t.attrs.get("crate_name") or t.name.replace("-", "_")


def _crate_root(t: Target, default_names: tuple[str, ...]) -> str | None:
    if t.attrs.get("crate_root"):
        return t.attrs["crate_root"]
    srcs = t.attrs.get("srcs") or []
    if len(srcs) == 1:
        return srcs[0]
    for s in srcs:
        if s.rsplit("/", 1)[-1] in default_names:
            return s
    return None


class Checker:
    def __init__(self, root: Path):
        self.root = root
        self.problems: list[str] = []
        self.builds: dict[str, BuildFile] = {}
        self.modules: dict = {}  # the .bzl files loaded so far (Evaluator.modules), shared by all BUILD files

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def run(self) -> list[str]:
        root = self.root
        if not (root / "Cargo.toml").is_file():
            self.problem("Cargo.toml", "missing")
            return self.problems
        members = load_members(root, self.problems)
        by_package = {m.package: m for m in members}
        by_dir = {m.dir.resolve(): m for m in members}

        for m in members:
            try:
                self.builds[m.rel] = parse_build(m.dir, m.rel, root, self.modules)
            except FileNotFoundError:
                self.problem(f"{m.rel}/BUILD.bazel", f"missing (workspace member {m.package} has no Bazel package)")
            except EvalError as e:
                self.problem(f"{m.rel}/BUILD.bazel", f"cannot be evaluated: {e}")

        for m in members:
            if m.rel in self.builds:
                self.check_member(m, by_package, by_dir)
        self.check_module(members)
        self.check_root_build()
        self.check_lock(members)
        self.problems.extend(bazel_lockfile.staleness(root))
        return self.problems

    # -- helpers --
    def lib_label(self, dep_member: Member) -> str:
        """The label a dependent must use for dep_member's library."""
        b = self.builds.get(dep_member.rel)
        if b and dep_member.lib:
            for t in b.by_kind("rust_library", "rust_proc_macro"):
                if _crate_name(t) == dep_member.lib.name:
                    return f"//{dep_member.rel}:{t.name}"
        name = dep_member.lib.name if dep_member.lib else dep_member.package
        return f"//{dep_member.rel}:{name}"

    def internal_expected(self, m: Member, deps: list[Dep], where: str, by_dir) -> tuple[set[str], set[str]]:
        """(labels of internal path deps, names of external deps)."""
        internal, external = set(), set()
        for d in deps:
            if d.path is None:
                external.add(d.package)
                continue
            dm = by_dir.get(d.path)
            if dm is None:
                self.problem(where, f"path dependency {d.key} ({d.path}) is not a workspace member, so Bazel has no target for it")
                continue
            if dm.lib is None:
                self.problem(where, f"path dependency {d.key} has no library target")
                continue
            if d.key != d.package:
                self.problem(where, f"path dependency renamed {d.package} -> {d.key} needs `aliases` in BUILD.bazel (not checked)")
            internal.add(self.lib_label(dm))
        return internal, external

    def compare_internal(self, where: str, have: set[str], want: set[str], what: str, also_allowed: set[str] = frozenset()) -> None:
        for label in sorted(want - have):
            self.problem(where, f"{what} is missing internal dependency {label} (listed in Cargo.toml)")
        for label in sorted(have - want - also_allowed):
            self.problem(where, f"{what} has internal dependency {label} that Cargo.toml does not list")

    def check_external(self, where: str, t: Target, deps, pmdeps, external: set[str], kinds: tuple[str, str], what: str) -> None:
        """kinds: (normal kind, proc-macro kind), e.g. ("normal", "proc_macro")."""
        normal, pm = kinds
        explicit = _explicit_crates(deps) | _explicit_crates(pmdeps)
        dk, pk = _crate_kinds(deps), _crate_kinds(pmdeps)
        if explicit and not dk and not pk:
            for name in sorted(external - explicit):
                self.problem(where, f"{what} lacks @{CRATES_REPO}//:{name} (a Cargo dependency)")
            for name in sorted(explicit - external):
                self.problem(where, f"{what} has @{CRATES_REPO}//:{name} that Cargo.toml does not list")
            return
        if external and normal not in dk:
            self.problem(where, f"{what} does not take its external crates: deps needs all_crate_deps({normal} = True)")
        if external and pm not in pk:
            self.problem(where, f"{what} does not take proc-macro crates: proc_macro_deps needs all_crate_deps({pm} = True)")
        for k in sorted(dk & {"proc_macro", "proc_macro_dev"}):
            self.problem(where, f"{what} has all_crate_deps({k} = True) in deps; it belongs in proc_macro_deps")
        for k in sorted(pk & {"normal", "normal_dev"}):
            self.problem(where, f"{what} has all_crate_deps({k} = True) in proc_macro_deps; it belongs in deps")
        for name in sorted(explicit - external):
            self.problem(where, f"{what} has @{CRATES_REPO}//:{name} that Cargo.toml does not list")

    def check_aliases(self, where: str, t: Target, renamed: dict[str, set[str]], what: str) -> None:
        """renamed: kind ("normal", "normal_dev") -> crates.io packages the Cargo.toml renames.
        crate_universe's targets carry the package's name; a renamed dependency is only known by
        its Cargo name through the target's `aliases` (crate_universe's aliases())."""
        need = {k for k, names in renamed.items() if names}
        if not need:
            return
        have = t.attrs.get("aliases")
        have_kinds = have.kinds if isinstance(have, CrateAliases) else frozenset()
        missing = sorted(need - have_kinds)
        if missing:
            names = sorted(set().union(*renamed.values()))
            want = ", ".join(f"{k} = True" for k in sorted(need))
            self.problem(where, f"{what} depends on renamed crate(s) {', '.join(names)} but lacks aliases = aliases({want}): "
                                f"without it rustc knows them by their package name only")

    def check_no_dev(self, where: str, deps, pmdeps, what: str) -> None:
        for k in sorted((_crate_kinds(deps) | _crate_kinds(pmdeps)) & {"normal_dev", "proc_macro_dev"}):
            self.problem(where, f"{what} takes [dev-dependencies] (all_crate_deps({k} = True)); Cargo does not")

    def check_edition(self, where: str, t: Target, m: Member, what: str) -> None:
        ed = t.attrs.get("edition")
        if ed is None:
            self.problem(where, f"{what} has no edition (Cargo.toml: {m.edition})")
        elif str(ed) != m.edition:
            self.problem(where, f"{what} has edition {ed}, Cargo.toml has {m.edition}")

    def covered(self, t: Target) -> set[str]:
        return set(t.attrs.get("srcs") or []) | set(t.attrs.get("compile_data") or [])

    # -- per member --
    def check_member(self, m: Member, by_package, by_dir) -> None:
        b = self.builds[m.rel]
        where = f"{m.rel}/{b.path.name}"
        pkg = m.rel
        all_rs = [f for f in package_files(m.dir) if f.endswith(".rs")]
        src_rs = {f for f in all_rs if f.startswith("src/")}
        bin_only_rs = {f for f in src_rs if f == "src/main.rs" or f.startswith("src/bin/")}
        normal_int, normal_ext = self.internal_expected(m, m.deps, f"{m.rel}/Cargo.toml", by_dir)
        dev_int, dev_ext = self.internal_expected(m, m.dev_deps, f"{m.rel}/Cargo.toml", by_dir)
        renamed = {
            "normal": {d.package for d in m.deps if d.path is None and d.key != d.package},
            "normal_dev": {d.package for d in m.dev_deps if d.path is None and d.key != d.package},
        }
        renamed_normal = {"normal": renamed["normal"]}

        if "Cargo.toml" not in b.exported:
            self.problem(where, 'does not exports_files(["Cargo.toml"]) (crate.from_cargo reads it)')
        if m.build_script and not b.by_kind("cargo_build_script"):
            self.problem(where, f"Cargo.toml has a build script ({m.build_script}) but there is no cargo_build_script")

        own_targets: set[str] = set()
        lib_target = None
        if m.lib:
            kinds = ("rust_proc_macro",) if m.proc_macro else ("rust_library",)
            found = [t for t in b.by_kind(*kinds) if _crate_name(t) == m.lib.name]
            if not found:
                self.problem(where, f"no {kinds[0]} with crate name {m.lib.name} (Cargo lib of {m.package})")
            else:
                lib_target = found[0]
                lt = lib_target.describe()
                own_targets.add(f"//{pkg}:{lib_target.name}")
                missing = sorted((src_rs - bin_only_rs) - self.covered(lib_target))
                if missing:
                    self.problem(where, f"{lt} srcs/compile_data miss {', '.join(missing)}")
                root = _crate_root(lib_target, ("lib.rs", f"{m.lib.name}.rs"))
                if root != m.lib.root:
                    self.problem(where, f"{lt} crate root is {root}, Cargo's is {m.lib.root}")
                self.check_edition(where, lib_target, m, lt)
                deps = _labels(lib_target.attrs.get("deps"), pkg)
                pmdeps = _labels(lib_target.attrs.get("proc_macro_deps"), pkg)
                self.compare_internal(where, _internal(deps) | _internal(pmdeps), normal_int, lt)
                self.check_external(where, lib_target, deps, pmdeps, normal_ext, ("normal", "proc_macro"), lt)
                self.check_aliases(where, lib_target, renamed_normal, lt)
                self.check_no_dev(where, deps, pmdeps, lt)

        bin_targets = {}
        for cb in m.bins:
            found = [t for t in b.by_kind("rust_binary") if t.name == cb.name or t.attrs.get("crate_name") == cb.name.replace("-", "_")]
            if not found:
                self.problem(where, f"no rust_binary named {cb.name} (Cargo binary, {cb.root})")
                continue
            t = found[0]
            bin_targets[cb.name] = t
            bt = t.describe()
            own_targets.add(f"//{pkg}:{t.name}")
            root = _crate_root(t, ("main.rs", f"{cb.name}.rs"))
            if root != cb.root:
                self.problem(where, f"{bt} crate root is {root}, Cargo's is {cb.root}")
            if lib_target is None and cb.root == "src/main.rs":
                missing = sorted((src_rs - {f for f in bin_only_rs if f != "src/main.rs"}) - self.covered(t))
                if missing:
                    self.problem(where, f"{bt} srcs miss {', '.join(missing)}")
            self.check_edition(where, t, m, bt)
            deps = _labels(t.attrs.get("deps"), pkg)
            pmdeps = _labels(t.attrs.get("proc_macro_deps"), pkg)
            want = set(normal_int)
            if lib_target is not None:
                want.add(f"//{pkg}:{lib_target.name}")
            self.compare_internal(where, _internal(deps) | _internal(pmdeps), want, bt)
            self.check_external(where, t, deps, pmdeps, normal_ext, ("normal", "proc_macro"), bt)
            self.check_aliases(where, t, renamed_normal, bt)
            self.check_no_dev(where, deps, pmdeps, bt)

        tests = b.by_kind("rust_test")
        # Unit tests.
        if lib_target is not None and m.lib.test:
            unit = [t for t in tests if t.attrs.get("crate") and norm_label(t.attrs["crate"], pkg) == f"//{pkg}:{lib_target.name}"]
            if not unit:
                self.problem(where, f'no unit-test rust_test with crate = ":{lib_target.name}"')
            for t in unit:
                tt = t.describe()
                deps = _labels(t.attrs.get("deps"), pkg)
                pmdeps = _labels(t.attrs.get("proc_macro_deps"), pkg)
                # The library's own deps come with `crate`; dev-only path deps must be added.
                self.compare_internal(where, _internal(deps) | _internal(pmdeps), dev_int - normal_int, tt, normal_int)
                self.check_external(where, t, deps, pmdeps, dev_ext, ("normal_dev", "proc_macro_dev"), tt)
                self.check_aliases(where, t, renamed, tt)
        for cb in m.bins:
            if cb.name not in bin_targets or not cb.test:
                continue
            unit = [t for t in tests if not t.attrs.get("crate") and _crate_root(t, ("main.rs",)) == cb.root]
            if not unit:
                self.problem(where, f"no unit-test rust_test with crate_root = {cb.root!r} for binary {cb.name}")
            for t in unit:
                tt = t.describe()
                bt = bin_targets[cb.name]
                missing = sorted(self.covered(bt) - self.covered(t))
                if missing:
                    self.problem(where, f"{tt} does not compile all of {bt.name}'s sources: {', '.join(missing)}")
                self.check_edition(where, t, m, tt)
                self.check_test_deps(where, t, m, normal_int, dev_int, normal_ext, dev_ext, lib_target)
                self.check_aliases(where, t, renamed, tt)

        # Integration tests.
        for ct in m.tests:
            found = [t for t in tests if not t.attrs.get("crate") and _crate_root(t, (ct.root.rsplit("/", 1)[-1],)) == ct.root]
            if not found:
                self.problem(where, f"{ct.root} has no rust_test (crate_root = {ct.root!r}); Cargo runs it as test {ct.name}")
                continue
            for t in found:
                tt = t.describe()
                self.check_edition(where, t, m, tt)
                self.check_test_deps(where, t, m, normal_int, dev_int, normal_ext, dev_ext, lib_target)
                self.check_aliases(where, t, renamed, tt)
                for bname, bt in bin_targets.items():
                    self.check_bin_exe(where, t, m, bname, bt)

    def check_test_deps(self, where, t, m, normal_int, dev_int, normal_ext, dev_ext, lib_target) -> None:
        """A test compiled from its own sources: Cargo gives it [dependencies], [dev-dependencies] and the lib."""
        pkg = m.rel
        tt = t.describe()
        deps = _labels(t.attrs.get("deps"), pkg)
        pmdeps = _labels(t.attrs.get("proc_macro_deps"), pkg)
        want = normal_int | dev_int
        if lib_target is not None:
            want = want | {f"//{pkg}:{lib_target.name}"}
        self.compare_internal(where, _internal(deps) | _internal(pmdeps), want, tt)
        if normal_ext:
            self.check_external(where, t, deps, pmdeps, normal_ext, ("normal", "proc_macro"), tt + " ([dependencies])")
        if dev_ext:
            self.check_external(where, t, deps, pmdeps, dev_ext, ("normal_dev", "proc_macro_dev"), tt + " ([dev-dependencies])")

    def check_bin_exe(self, where, t: Target, m: Member, bname: str, bt: Target) -> None:
        var = f"CARGO_BIN_EXE_{bname}"
        uses = any(var in (m.dir / s).read_text(errors="replace") for s in (t.attrs.get("srcs") or []) if (m.dir / s).is_file())
        if not uses:
            return
        tt = t.describe()
        label = f"//{m.rel}:{bt.name}"
        data = {norm_label(x, m.rel) for x in (t.attrs.get("data") or []) if isinstance(x, str)}
        if label not in data:
            self.problem(where, f"{tt} uses {var} but data does not include :{bt.name}")
        value = (t.attrs.get("rustc_env") or {}).get(var)
        ok = False
        if isinstance(value, str) and value.startswith("$(") and value.endswith(")"):
            fn, _, arg = value[2:-1].partition(" ")
            ok = fn in ("rootpath", "execpath", "location", "rlocationpath") and norm_label(arg.strip(), m.rel) == label
        if not ok:
            self.problem(where, f'{tt} uses {var} but rustc_env does not set it to "$(rootpath :{bt.name})" (got {value!r})')

    # -- workspace-wide --
    def check_module(self, members: list[Member]) -> None:
        path = self.root / "MODULE.bazel"
        if not path.is_file():
            self.problem("MODULE.bazel", "missing")
            return
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except SyntaxError as e:
            self.problem("MODULE.bazel", f"does not parse: {e.msg} (line {e.lineno})")
            return
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "from_cargo"]
        if len(calls) != 1:
            self.problem("MODULE.bazel", f"expected one crate.from_cargo(...), found {len(calls)}")
            return
        kw = {k.arg: k.value for k in calls[0].keywords}

        def const(node):
            try:
                return ast.literal_eval(node)
            except (ValueError, TypeError, SyntaxError):
                return None

        if const(kw.get("name")) == "crates":
            self.problem("MODULE.bazel", 'crate.from_cargo name is "crates", crate_universe\'s default: a user module '
                                         f'that uses the default too cannot depend on clientd; name it "{CRATES_REPO}"')
        elif const(kw.get("name")) != CRATES_REPO:
            self.problem("MODULE.bazel", f'crate.from_cargo name is {const(kw.get("name"))!r}, BUILD files load "@{CRATES_REPO}//:defs.bzl"')
        lock = const(kw.get("cargo_lockfile"))
        if lock is None or norm_label(lock, "") != "//:Cargo.lock":
            self.problem("MODULE.bazel", f'crate.from_cargo cargo_lockfile is {lock!r}, expected "//:Cargo.lock"')
        lockfile = const(kw.get("lockfile"))
        if lockfile is None:
            self.problem("MODULE.bazel", f'crate.from_cargo has no lockfile: a module that depends on clientd fails '
                                         f'("non-root module but has no lockfile"); add lockfile = "{bazel_lockfile.LOCKFILE_LABEL}"')
        elif norm_label(lockfile, "") != bazel_lockfile.LOCKFILE_LABEL:
            self.problem("MODULE.bazel", f'crate.from_cargo lockfile is {lockfile!r}, expected "{bazel_lockfile.LOCKFILE_LABEL}"')
        manifests = const(kw.get("manifests"))
        if not isinstance(manifests, list):
            self.problem("MODULE.bazel", "crate.from_cargo manifests is not a literal list of labels")
            return
        have = [norm_label(x, "") for x in manifests]
        want = {"//:Cargo.toml"} | {f"//{m.rel}:Cargo.toml" for m in members}
        for label in sorted(want - set(have)):
            self.problem("MODULE.bazel", f"crate.from_cargo manifests lacks {label} (a workspace member's manifest)")
        for label in sorted(set(have) - want):
            self.problem("MODULE.bazel", f"crate.from_cargo manifests has {label}, which is not the root or a workspace member")
        dups = sorted({x for x in have if have.count(x) > 1})
        if dups:
            self.problem("MODULE.bazel", f"crate.from_cargo manifests lists {', '.join(dups)} twice")
        uses = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "use_repo"]
        if not any(CRATES_REPO in [const(a) for a in u.args[1:]] for u in uses):
            self.problem("MODULE.bazel", f'no use_repo(crate, "{CRATES_REPO}")')

    def check_root_build(self) -> None:
        try:
            b = parse_build(self.root, "", self.root, self.modules)
        except FileNotFoundError:
            self.problem("BUILD.bazel", "missing at the repository root (//:Cargo.toml and //:Cargo.lock need a package)")
            return
        except EvalError as e:
            self.problem("BUILD.bazel", f"cannot be evaluated: {e}")
            return
        for f in ("Cargo.toml", "Cargo.lock"):
            if f not in b.exported:
                self.problem(b.path.name, f'does not exports_files(["{f}"])')

    def check_lock(self, members: list[Member]) -> None:
        path = self.root / "Cargo.lock"
        if not path.is_file():
            self.problem("Cargo.lock", "missing (crate.from_cargo needs it; run cargo generate-lockfile)")
            return
        try:
            lock = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            self.problem("Cargo.lock", f"does not parse: {e}")
            return
        locked = {p["name"] for p in lock.get("package", []) if "source" not in p}
        for m in members:
            if m.package not in locked:
                self.problem("Cargo.lock", f"does not list workspace member {m.package} (stale: run cargo metadata)")


def check(root: Path) -> list[str]:
    return Checker(root).run()


# --------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------


def copy_tree(src: Path, dst: Path) -> None:
    """The files the check reads: manifests, lockfiles, BUILD files and the .bzl files they load, member sources."""
    for name in ("Cargo.toml", "Cargo.lock", bazel_lockfile.LOCKFILE, "MODULE.bazel", *BUILD_NAMES):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    problems: list[str] = []
    for m in load_members(src, problems):
        shutil.copytree(m.dir, dst / m.rel, ignore=shutil.ignore_patterns(*SKIP_DIRS))
    checker = Checker(src)
    checker.run()
    for rel, module in checker.modules.items():
        if not isinstance(module, Module):
            continue
        # The .bzl file and its package's BUILD file (Bazel loads .bzl files of packages only).
        for f in [rel, *(f"{module.package}/{b}".lstrip("/") for b in BUILD_NAMES)]:
            if (src / f).is_file():
                (dst / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / f, dst / f)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise AssertionError(f"self-test fixture: {old!r} not found in {path}; update --self-test")
    path.write_text(text.replace(old, new, 1))


class Case:
    """One kind of drift: a mutation of a fresh copy and what must be reported."""

    def __init__(self, title: str, mutate, expect: list[str]):
        self.title, self.mutate, self.expect = title, mutate, expect


def drift_cases(root: Path) -> list[Case]:
    checker = Checker(root)
    if checker.run():
        raise AssertionError("the tree itself has problems; fix them before --self-test")
    members = load_members(root, [])
    libs = [m for m in members if m.lib]
    build = {m.rel: (m.dir / "BUILD.bazel").read_text() for m in members}

    # Members whose BUILD.bazel calls a macro (clientd_crate of rust/crate.bzl): the check must see
    # through it, so the macro cases below change the .bzl file or a macro call's arguments.
    macro_of = {m.rel: checker.builds[m.rel].macro_calls[0] for m in members if checker.builds[m.rel].macro_calls}
    by_macro = [m for m in members if m.rel in macro_of]
    if not by_macro:
        raise AssertionError("no BUILD.bazel calls a macro of a .bzl file; nothing to prove the macro is checked on")
    macro, macro_rel = macro_of[by_macro[0].rel]
    via = f"({macro} in {macro_rel})"

    # A member with a literal internal-dependency line, and a library it does not depend on;
    # members built by the macro first, so that the dependency is an argument of the macro call.
    pair = None
    for m in by_macro + [x for x in members if x not in by_macro]:
        dep_dirs = {d.path for d in m.deps if d.path is not None}
        for d in m.deps:
            dm = next((x for x in libs if d.path is not None and x.dir.resolve() == d.path), None)
            line = dm and f'        "{checker.lib_label(dm)}",\n'
            other = next((x for x in libs if x is not m and x.dir.resolve() not in dep_dirs), None)
            if dm and line in build[m.rel] and other:
                pair = (m, line, checker.lib_label(dm), other, checker.lib_label(other))
                break
        if pair:
            break
    if pair is None:
        raise AssertionError("no member has a literal internal dependency line and a library it does not use")
    m, line, label, other, other_label = pair
    m_how = f" ({m.rel} built by {macro})" if m.rel in macro_of else ""
    up = "/".join([".."] * (m.rel.count("/") + 1))
    # A member whose tests are listed one by one (neither globbed nor from the macro), for a test file with no rust_test.
    t_member = next((x for x in members if x.rel not in macro_of and '"tests/*.rs"' not in build[x.rel]), None)
    if t_member is None:
        raise AssertionError("every member globs tests/*.rs; nothing to leave a test file out of")
    # A library built by the macro, for a new test file the macro's glob must pick up.
    n_member = next((x for x in by_macro if x.lib), None)
    # A macro-built library with external [dependencies], for the macro no longer taking them.
    e_member = next((x for x in by_macro if x.lib and any(d.path is None for d in x.deps)), None)
    # A macro-built library with integration tests and internal [dependencies], for the macro
    # no longer passing `deps` to the tests.
    i_member = next((x for x in by_macro if x.lib and x.tests and any(d.path is not None for d in x.deps)), None)
    # A library whose sources are globbed recursively (in its BUILD.bazel or in the macro), to narrow its glob.
    glob_src = 'glob(["src/**/*.rs"])'
    g_member, g_file = next(
        ((x, f) for x in by_macro + libs if x.lib
         for f in (f"{x.rel}/BUILD.bazel", macro_of.get(x.rel, (None, None))[1]) if f and glob_src in (root / f).read_text()),
        (None, None),
    )
    manifest = members[-1]

    def new_test(member: Member):
        def mutate(t: Path) -> None:
            (t / member.rel / "tests").mkdir(exist_ok=True)
            (t / member.rel / "tests/drift_check.rs").write_text("#[test]\nfn drift() {}\n")

        return mutate

    cases = [
        Case("clean copy", lambda t: None, []),
        Case(
            "dependency label removed from a BUILD.bazel" + m_how,
            lambda t: edit(t / m.rel / "BUILD.bazel", line, ""),
            [f"{m.rel}/BUILD.bazel", f"missing internal dependency {label}"],
        ),
        Case(
            "tests/*.rs file without a rust_test",
            new_test(t_member),
            [f"{t_member.rel}/BUILD.bazel", "tests/drift_check.rs has no rust_test"],
        ),
        Case(
            "the crate_universe hub named with the default, crates",
            lambda t: edit(t / "MODULE.bazel", f'name = "{CRATES_REPO}"', 'name = "crates"'),
            ["MODULE.bazel", "crate_universe's default"],
        ),
        Case(
            "crate.from_cargo without its lockfile",
            lambda t: edit(t / "MODULE.bazel", f'    lockfile = "{bazel_lockfile.LOCKFILE_LABEL}",\n', ""),
            ["MODULE.bazel", "has no lockfile"],
        ),
        Case(
            "a crate updated in Cargo.lock but not in the lockfile",
            bump_locked_crate,
            [bazel_lockfile.LOCKFILE, "which Cargo.lock pins"],
        ),
        Case(
            "a crates.io dependency added to a member's Cargo.toml, the lockfile not regenerated",
            add_manifest_dependency,
            [bazel_lockfile.LOCKFILE, "lacks dependency libc, which its Cargo.toml lists"],
        ),
        Case(
            "manifest dropped from MODULE.bazel",
            lambda t: edit(t / "MODULE.bazel", f'        "//{manifest.rel}:Cargo.toml",\n', ""),
            ["MODULE.bazel", f"lacks //{manifest.rel}:Cargo.toml"],
        ),
        Case(
            "internal label in a BUILD.bazel that Cargo.toml does not list" + m_how,
            lambda t: edit(t / m.rel / "BUILD.bazel", line, line + f'        "{other_label}",\n'),
            [f"{m.rel}/BUILD.bazel", f"{other_label} that Cargo.toml does not list"],
        ),
        Case(
            "path dependency added to a Cargo.toml only" + m_how,
            lambda t: edit(
                t / m.rel / "Cargo.toml",
                "[dependencies]\n",
                f'[dependencies]\n{other.package} = {{ path = "{up}/{other.rel}" }}\n',
            ),
            [f"{m.rel}/BUILD.bazel", f"missing internal dependency {other_label}"],
        ),
        Case(
            f"{macro_rel} not loadable: its package's BUILD.bazel is gone",
            lambda t: [(t / Path(macro_rel).parent / b).unlink(missing_ok=True) for b in BUILD_NAMES],
            [f"{by_macro[0].rel}/BUILD.bazel", "cannot be evaluated", "is not a package"],
        ),
    ]
    if n_member is not None:
        cases.append(Case(f"tests/*.rs file added to a crate built by {macro}: the macro's glob covers it",
                          new_test(n_member), []))
    if e_member is not None:
        cases.append(Case(
            f"{macro_rel}: the library no longer takes external crates",
            lambda t: edit(t / macro_rel, "deps = deps + all_crate_deps(normal = True),", "deps = deps,"),
            [f"{e_member.rel}/BUILD.bazel", f"{via} does not take its external crates", "all_crate_deps(normal = True)"],
        ))
    # A macro-built library with a renamed crates.io dependency (hex = { package = "const-hex" }).
    r_member = next((x for x in by_macro if x.lib and any(d.path is None and d.key != d.package for d in x.deps)), None)
    if r_member is not None:
        r_name = next(d.package for d in r_member.deps if d.path is None and d.key != d.package)
        cases.append(Case(
            f"{macro_rel}: the library no longer passes aliases() for a renamed crate",
            lambda t: edit(t / macro_rel, "        aliases = aliases(),\n", ""),
            [f"{r_member.rel}/BUILD.bazel", f"{via} depends on renamed crate(s) {r_name}", "aliases = aliases(normal = True)"],
        ))
    if i_member is not None:
        i_test = i_member.tests[0].name
        i_label = next(checker.lib_label(x) for x in libs for d in i_member.deps if d.path == x.dir.resolve())
        cases.append(Case(
            f"{macro_rel}: integration tests no longer get the internal deps",
            lambda t: edit(t / macro_rel, 'deps = [":" + name] + deps + all_crate_deps(', 'deps = [":" + name] + all_crate_deps('),
            [f"{i_member.rel}/BUILD.bazel", f"rust_test {i_test} {via} is missing internal dependency {i_label}"],
        ))
    if g_member is not None:
        def narrow(t: Path) -> None:
            edit(t / g_file, glob_src, 'glob(["src/*.rs"])')
            (t / g_member.rel / "src/zz_drift").mkdir()
            (t / g_member.rel / "src/zz_drift/mod.rs").write_text("")

        cases.append(Case(f"source file outside a library's srcs (glob narrowed in {g_file})", narrow,
                          [f"{g_member.rel}/BUILD.bazel", "miss src/zz_drift/mod.rs"]))
    bin_exe = next((x for x in members if '"CARGO_BIN_EXE_' in build[x.rel]), None)
    if bin_exe is not None:
        def drop_env(t: Path) -> None:
            text = (t / bin_exe.rel / "BUILD.bazel").read_text()
            start = text.index("        rustc_env = {")
            edit(t / bin_exe.rel / "BUILD.bazel", text[start:text.index("\n", start) + 1], "")

        cases.append(Case("CARGO_BIN_EXE_* no longer set for integration tests", drop_env,
                          [f"{bin_exe.rel}/BUILD.bazel", "rustc_env does not set it"]))
    return cases


def bump_locked_crate(t: Path) -> None:
    """Give the first crates.io package in Cargo.lock another version, as `cargo update` would."""
    text = (t / "Cargo.lock").read_text()
    package = next(p for p in tomllib.loads(text)["package"] if p.get("source") == bazel_lockfile.CRATES_IO_PREFIX)
    old = f'name = "{package["name"]}"\nversion = "{package["version"]}"'
    edit(t / "Cargo.lock", old, f'name = "{package["name"]}"\nversion = "{package["version"]}-drift"')


def add_manifest_dependency(t: Path) -> None:
    """Give the first member without it a crates.io dependency that Cargo.lock already pins."""
    lock = tomllib.loads((t / "Cargo.lock").read_text())
    pinned = next(p for p in lock["package"] if p.get("source") and p["name"] == "libc")
    for manifest in sorted(t.glob("rust/*/Cargo.toml")):
        text = manifest.read_text()
        if "\nlibc" not in text and "[dependencies]\n" in text:
            edit(manifest, "[dependencies]\n", f'[dependencies]\nlibc = "={pinned["version"]}"\n')
            return
    raise AssertionError("self-test fixture: every member already depends on libc")


def self_test(root: Path) -> int:
    try:
        cases = drift_cases(root)
    except AssertionError as e:
        print(f"self-test: cannot set up: {e}", file=sys.stderr)
        return 1
    failures = 0
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="check_bazel_sync.") as tmp:
            t = Path(tmp)
            copy_tree(root, t)
            try:
                case.mutate(t)
                problems = check(t)
            except AssertionError as e:
                problems, ok = [f"(fixture) {e}"], False
            else:
                if case.expect:
                    ok = any(all(e in p for e in case.expect) for p in problems)
                else:
                    ok = not problems
        print(f"self-test: {'ok  ' if ok else 'FAIL'} {case.title}")
        if not ok:
            failures += 1
            want = " and ".join(map(repr, case.expect)) if case.expect else "no problem at all"
            print(f"  expected a problem line containing {want}; got:", file=sys.stderr)
            for p in problems or ["(no problem reported)"]:
                print(f"    {p}", file=sys.stderr)
    print(f"self-test: {len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO, help="repository root (default: %(default)s)")
    ap.add_argument("--self-test", action="store_true", help="check that drift in temporary copies is reported")
    args = ap.parse_args()
    root = args.root.resolve()
    if args.self_test:
        return self_test(root)
    problems = check(root)
    for p in problems:
        print(p)
    n = len(load_members(root, [])) if (root / "Cargo.toml").is_file() else 0
    if problems:
        print(f"check_bazel_sync: {len(problems)} problem(s); Bazel and Cargo disagree ({n} workspace members)")
        return 1
    print(f"check_bazel_sync: ok, {n} workspace members agree with their BUILD.bazel and MODULE.bazel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
