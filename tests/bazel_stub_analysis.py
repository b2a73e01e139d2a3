#!/usr/bin/env python3
"""Runs Bazel's loading and analysis over the real BUILD files, with stub rules.

Modern Bazel (bzlmod, rules_rust, crate_universe) cannot run on these machines;
Debian's Bazel 4.2.3 can, in WORKSPACE mode. This copies the tree into a temporary
workspace where
  * @rules_rust//rust:defs.bzl is a stub whose rust_library / rust_binary /
    rust_test have rules_rust's attributes and enforce what rules_rust enforces
    at analysis (proc-macros only in proc_macro_deps, $(rootpath ...) in
    rustc_env only for declared data/compile_data, a crate root it can find);
  * @clientd_crates//:defs.bzl is a stub all_crate_deps() whose per-package maps come
    from `cargo metadata` (normal / dev / proc-macro, exactly as crate_universe
    splits them), with one stub target per external crate;
and runs `bazel build --nobuild //...`. That evaluates every BUILD file (globs,
comprehensions, string methods, labels, visibility) and analyses every target.
Nothing is compiled: rustc, crate_universe and the real rules are not exercised.

Usage: tests/bazel_stub_analysis.py [--keep]
Needs bazel (Debian's bazel-bootstrap, see tests/setup.sh) and cargo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORE = ("target", ".git", ".tools", "node_modules", "bazel-*", ".bazelrc", "MODULE.bazel", "MODULE.bazel.lock")

RULES_RUST_STUB = r'''"""Stand-ins for rules_rust's rules: same attributes, analysis-time checks only."""

RustStub = provider(fields = ["proc_macro"])

def _impl(ctx):
    for d in ctx.attr.deps:
        if d[RustStub].proc_macro:
            fail("proc-macro %s is in deps; it belongs in proc_macro_deps" % d.label)
    for d in ctx.attr.proc_macro_deps:
        if not d[RustStub].proc_macro:
            fail("%s in proc_macro_deps is not a proc-macro" % d.label)
    if ctx.attr._kind == "test" and not ctx.attr.srcs and not ctx.attr.crate:
        fail("a rust_test needs srcs or crate")
    if len(ctx.files.srcs) > 1 and not ctx.file.crate_root:
        names = [f.basename for f in ctx.files.srcs]
        if not ("lib.rs" in names or "main.rs" in names or ctx.label.name + ".rs" in names):
            fail("cannot infer the crate root: set crate_root")
    for value in ctx.attr.rustc_env.values():
        ctx.expand_location(value, ctx.attr.data + ctx.attr.compile_data)
    for value in getattr(ctx.attr, "env", {}).values():
        ctx.expand_location(value, ctx.attr.data)
    out = [RustStub(proc_macro = False)]
    if ctx.attr._kind in ("bin", "test"):
        exe = ctx.actions.declare_file(ctx.label.name + ".stub.sh")
        ctx.actions.write(exe, "#!/bin/sh\nexit 0\n", is_executable = True)
        out.append(DefaultInfo(executable = exe, runfiles = ctx.runfiles(files = ctx.files.data)))
    return out

def _attrs(kind):
    attrs = {
        # rules_rust's type: crate label -> the name the crate is known by.
        "aliases": attr.label_keyed_string_dict(),
        "compile_data": attr.label_list(allow_files = True),
        "crate_name": attr.string(),
        "crate_root": attr.label(allow_single_file = [".rs"]),
        "data": attr.label_list(allow_files = True),
        "deps": attr.label_list(providers = [RustStub]),
        "edition": attr.string(),
        "proc_macro_deps": attr.label_list(providers = [RustStub]),
        "rustc_env": attr.string_dict(),
        "rustc_flags": attr.string_list(),
        "srcs": attr.label_list(allow_files = [".rs"]),
        "_kind": attr.string(default = kind),
    }
    if kind in ("bin", "test"):
        attrs["env"] = attr.string_dict()
    if kind == "test":
        attrs["crate"] = attr.label(providers = [RustStub])
    return attrs

rust_library = rule(implementation = _impl, attrs = _attrs("lib"))
rust_binary = rule(implementation = _impl, attrs = _attrs("bin"), executable = True)
rust_test = rule(implementation = _impl, attrs = _attrs("test"), test = True)

def _crate_impl(ctx):
    return [RustStub(proc_macro = ctx.attr.proc_macro)]

external_crate = rule(implementation = _crate_impl, attrs = {"proc_macro": attr.bool()})

def _exe_impl(ctx):
    exe = ctx.actions.declare_file(ctx.label.name + ".stub.sh")
    ctx.actions.write(exe, "#!/bin/sh\nexit 0\n", is_executable = True)
    return [DefaultInfo(executable = exe)]

stub_exe = rule(implementation = _exe_impl, executable = True)
'''

CRATES_DEFS = r'''
def aliases(normal = False, normal_dev = False, proc_macro = False, proc_macro_dev = False, build = False, build_proc_macro = False, package_name = None):
    """Like crate_universe's: renamed crates' labels -> their Cargo names (none are modelled here)."""
    return {}

def all_crate_deps(normal = False, normal_dev = False, proc_macro = False, proc_macro_dev = False, build = False, build_proc_macro = False, package_name = None):
    """Like crate_universe's: labels of the package's direct external crates of the kinds asked for."""
    if package_name == None:
        package_name = native.package_name()
    kinds = [k for k, on in [("normal", normal), ("normal_dev", normal_dev), ("proc_macro", proc_macro), ("proc_macro_dev", proc_macro_dev)] if on]
    if build or build_proc_macro:
        fail("build-script dependencies are not modelled by this stub")
    merged = {}
    for kind in kinds or ["normal"]:
        if package_name not in _MAPS[kind]:
            fail("Tried to get all_crate_deps for package " + package_name + " but that package had no Cargo.toml file")
        merged.update(_MAPS[kind][package_name])
    return merged.values()
'''


def write_stub_workspace(out: Path, meta: dict) -> Path:
    ws, rr, crates, cov = out / "ws", out / "rules_rust", out / "crates", out / "remote_coverage_tools"
    shutil.copytree(REPO, ws, ignore=shutil.ignore_patterns(*IGNORE), symlinks=True)
    (ws / "WORKSPACE").write_text(
        f'local_repository(name = "rules_rust", path = "{rr}")\n'
        f'local_repository(name = "clientd_crates", path = "{crates}")\n'
        # Test rules depend on it implicitly; the real one is downloaded.
        f'local_repository(name = "remote_coverage_tools", path = "{cov}")\n'
    )
    for d in (rr / "rust", crates, cov):
        d.mkdir(parents=True)
    for d in (rr, crates, cov):
        (d / "WORKSPACE").write_text("")
    (rr / "rust/BUILD.bazel").write_text("")
    (rr / "rust/defs.bzl").write_text(RULES_RUST_STUB)
    (cov / "BUILD.bazel").write_text(
        'load("@rules_rust//rust:defs.bzl", "stub_exe")\n'
        + "".join(f'stub_exe(name = "{n}", visibility = ["//visibility:public"])\n' for n in ("coverage_report_generator", "lcov_merger"))
    )

    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    root = Path(meta["workspace_root"])
    maps: dict[str, dict[str, dict[str, str]]] = {k: {} for k in ("normal", "normal_dev", "proc_macro", "proc_macro_dev")}
    crates_targets: dict[str, bool] = {}
    for mid in members:
        rel = Path(packages[mid]["manifest_path"]).parent.relative_to(root).as_posix()
        for k in maps:
            maps[k][rel] = {}
        for dep in nodes[mid]["deps"]:
            if dep["pkg"] in members:
                continue  # path dependencies: the BUILD files name them
            p = packages[dep["pkg"]]
            proc_macro = any("proc-macro" in t["kind"] for t in p["targets"])
            target = f'{p["name"]}-{p["version"]}'
            crates_targets[target] = proc_macro
            for dk in dep["dep_kinds"]:
                if dk["kind"] == "build":
                    continue
                kind = ("proc_macro" if proc_macro else "normal") + ("_dev" if dk["kind"] == "dev" else "")
                maps[kind][rel][p["name"]] = f"@clientd_crates//:{target}"
    (crates / "BUILD.bazel").write_text(
        'load("@rules_rust//rust:defs.bzl", "external_crate")\n'
        + "".join(
            f'external_crate(name = "{t}", proc_macro = {pm}, visibility = ["//visibility:public"])\n'
            for t, pm in sorted(crates_targets.items())
        )
    )
    (crates / "defs.bzl").write_text("_MAPS = " + json.dumps(maps, indent=4, sort_keys=True) + "\n" + CRATES_DEFS)
    return ws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace and print its path")
    args = ap.parse_args()
    for tool in ("bazel", "cargo"):
        if shutil.which(tool) is None:
            print(f"bazel_stub_analysis: {tool} not found (tests/setup.sh installs bazel-bootstrap)", file=sys.stderr)
            return 2
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    tmp = Path(tempfile.mkdtemp(prefix="clientd-bazel-stub."))
    try:
        ws = write_stub_workspace(tmp, json.loads(meta))
        # Bazel's own output root in the temporary directory, removed with it (after the
        # shutdown below); the server would exit on its own shortly after anyway.
        startup = [f"--output_user_root={tmp}/bazel-root", "--max_idle_secs=30"]
        proc = subprocess.run(
            ["bazel", *startup, "build", "--nobuild", "--noshow_progress", "//..."],
            cwd=ws, capture_output=True, text=True,
        )
        subprocess.run(["bazel", *startup, "shutdown"], cwd=ws, capture_output=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            print("bazel_stub_analysis: FAILED: Bazel could not load or analyse the BUILD files", file=sys.stderr)
            return 1
        analysed = [l for l in proc.stderr.splitlines() if l.startswith("INFO: Analyzed")]
        print(f"bazel_stub_analysis: ok: {analysed[-1][6:] if analysed else 'analysis succeeded'}")
        return 0
    finally:
        if args.keep:
            print(f"bazel_stub_analysis: workspace kept at {tmp}/ws")
        else:
            # Bazel makes its install base read-only.
            subprocess.run(["chmod", "-R", "u+w", str(tmp)], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
