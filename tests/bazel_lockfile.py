#!/usr/bin/env python3
"""crate_universe's lockfile (cargo-bazel-lock.json): generate it without Bazel, and check it.

Why the file exists: a module that others `bazel_dep` on must ship it. From rules_rust 0.71.1 on,
crate.from_cargo in a non-root module fails without `lockfile = ...`, and there crate_universe
takes the file as it is (no digest check, no repinning): it only renders BUILD files from it.

Why without Bazel: Bazel >= 7 does not run on the machines this project is developed on, so the
file is made by cargo-bazel (crate_universe's generator, published on crates.io) from the same
inputs crate_universe's module extension would give it: a config and a splicing manifest built
from MODULE.bazel's crate.from_cargo call, Cargo.toml and Cargo.lock. As the root module, Bazel
checks the file's digest, which covers the cargo-bazel, cargo and rustc versions; .bazelrc makes
the root re-pin instead of failing when those differ from the ones used here.

  tests/bazel_lockfile.py generate   (re)write cargo-bazel-lock.json; installs cargo-bazel
                                     CARGO_BAZEL_VERSION into .tools/cargo-bazel first (cargo install)
  tests/bazel_lockfile.py check      exit 1 when the file is stale against Cargo.lock
                                     (standard library only; tests/check_bazel_sync.py runs it too)

Standard library only (Python >= 3.11).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

LOCKFILE = "cargo-bazel-lock.json"
LOCKFILE_LABEL = "//:" + LOCKFILE

# The newest cargo-bazel on crates.io. rules_rust reports the same version for the cargo-bazel it
# ships (crate_universe/version.bzl), and the lockfile's Context format reads back in it.
CARGO_BAZEL_VERSION = "0.18.0"

CRATES_IO_PREFIX = "registry+https://github.com/rust-lang/crates.io-index"


def from_cargo_call(root: Path) -> dict:
    """The keyword arguments of MODULE.bazel's one crate.from_cargo(...) call, as Python values."""
    tree = ast.parse((root / "MODULE.bazel").read_text())
    calls = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "from_cargo"
    ]
    if len(calls) != 1:
        raise SystemExit(f"MODULE.bazel: expected one crate.from_cargo(...), found {len(calls)}")
    out = {}
    for k in calls[0].keywords:
        try:
            out[k.arg] = ast.literal_eval(k.value)
        except ValueError:
            out[k.arg] = None
    return out


def module_name(root: Path) -> str:
    tree = ast.parse((root / "MODULE.bazel").read_text())
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "module":
            for k in n.keywords:
                if k.arg == "name":
                    return ast.literal_eval(k.value)
    raise SystemExit("MODULE.bazel: no module(name = ...)")


def label_path(root: Path, label: str) -> Path:
    package, _, name = label.removeprefix("//").partition(":")
    return root / package / name


# --------------------------------------------------------------------------
# check: the lockfile against Cargo.lock
# --------------------------------------------------------------------------


def staleness(root: Path) -> list[str]:
    """What makes cargo-bazel-lock.json disagree with Cargo.lock; empty when it is current.

    Compares what Cargo.lock pins, every crates.io package (name, version, checksum) and the
    workspace members, and what each member's Cargo.toml asks for: its crates.io dependencies and
    dev-dependencies, by kind. Enough to catch a `cargo update`, an added dependency or one moved
    between kinds without a regenerated lockfile; the rest of the file is derived by cargo-bazel
    from the same inputs.
    """
    where = LOCKFILE
    path = root / LOCKFILE
    if not path.is_file():
        return [f"{where}: missing; run tests/bazel_lockfile.py generate"]
    try:
        ctx = json.loads(path.read_text())
        crates = ctx["crates"]
        members = ctx["workspace_members"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{where}: not a crate_universe lockfile ({e}); run tests/bazel_lockfile.py generate"]
    cargo_lock = tomllib.loads((root / "Cargo.lock").read_text())
    packages = cargo_lock.get("package", [])
    problems = []

    want = {
        (p["name"], p["version"]): p.get("checksum")
        for p in packages if p.get("source") == CRATES_IO_PREFIX
    }
    have = {}
    for c in crates.values():
        repo = c.get("repository") or {}
        if "Http" in repo:
            have[(c["name"], c["version"])] = repo["Http"].get("sha256")
    for key in sorted(want.keys() - have.keys()):
        problems.append(f"{where}: lacks {key[0]} {key[1]}, which Cargo.lock pins")
    for key in sorted(have.keys() - want.keys()):
        problems.append(f"{where}: has {key[0]} {key[1]}, which Cargo.lock does not pin")
    for key in sorted(want.keys() & have.keys()):
        if want[key] != have[key]:
            problems.append(f"{where}: {key[0]} {key[1]} has checksum {have[key]}, Cargo.lock {want[key]}")

    local = {p["name"]: p for p in packages if "source" not in p}
    # Member name -> its directory, as the lockfile records them.
    paths = {ident.split(" ")[0]: rel for ident, rel in members.items()}
    for name in sorted(local.keys() - paths.keys()):
        problems.append(f"{where}: lacks workspace member {name}")
    for name in sorted(paths.keys() - local.keys()):
        problems.append(f"{where}: has workspace member {name}, which Cargo.lock does not list")

    root_deps = tomllib.loads((root / "Cargo.toml").read_text()).get("workspace", {}).get("dependencies", {})
    for name in sorted(local.keys() & paths.keys()):
        ident = f"{name} {local[name]['version']}"
        crate = crates.get(ident)
        if crate is None:
            problems.append(f"{where}: has no crate entry for workspace member {ident}")
            continue
        manifest = tomllib.loads((root / paths[name] / "Cargo.toml").read_text())
        normal = external_packages(manifest.get("dependencies", {}), root_deps)
        dev = external_packages(manifest.get("dev-dependencies", {}), root_deps) - normal
        for kind, want, have in (
            ("dependency", normal, dependency_names(crate, ("deps", "proc_macro_deps"))),
            ("dev-dependency", dev, dependency_names(crate, ("deps_dev", "proc_macro_deps_dev"))),
        ):
            for dep in sorted(want - have):
                problems.append(f"{where}: {name} lacks {kind} {dep}, which its Cargo.toml lists")
            for dep in sorted(have - want):
                problems.append(f"{where}: {name} has {kind} {dep}, which its Cargo.toml does not list")
    return problems


def external_packages(table: dict, root_deps: dict) -> set[str]:
    """The crates.io package names of a manifest's dependency table (path dependencies left out;
    `workspace = true` entries resolved through the root's [workspace.dependencies])."""
    out = set()
    for key, spec in table.items():
        if isinstance(spec, dict) and spec.get("workspace"):
            spec = root_deps.get(key, {})
        if isinstance(spec, dict):
            if "path" in spec:
                continue
            out.add(spec.get("package", key))
        else:
            out.add(key)
    return out


def dependency_names(crate: dict, kinds: tuple[str, ...]) -> set[str]:
    """The package names of the dependencies of these kinds a crate entry records, any platform."""
    attrs = crate.get("common_attrs", {})
    names = set()
    for kind in kinds:
        select = attrs.get(kind) or {}
        groups = [select.get("common", [])] + list((select.get("selects") or {}).values())
        for group in groups:
            names.update(d["id"].split(" ")[0] for d in group)
    return names


# --------------------------------------------------------------------------
# generate: run cargo-bazel as crate_universe's module extension would
# --------------------------------------------------------------------------


def cargo_bazel(root: Path) -> Path:
    """cargo-bazel CARGO_BAZEL_VERSION under .tools/cargo-bazel, installed from crates.io if absent."""
    prefix = root / ".tools" / "cargo-bazel"
    binary = prefix / "bin" / "cargo-bazel"
    if binary.is_file():
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
        if out[-1:] == [CARGO_BAZEL_VERSION]:
            return binary
    print(f"bazel_lockfile: installing cargo-bazel {CARGO_BAZEL_VERSION} from crates.io into {prefix} "
          "(a few minutes, once)", file=sys.stderr)
    subprocess.run(
        ["cargo", "install", "--quiet", "--locked", "cargo-bazel", "--version", CARGO_BAZEL_VERSION,
         "--root", str(prefix)],
        check=True,
    )
    return binary


def extension_config(hub: str, module: str, triples: list[str]) -> dict:
    """crate_universe's config.json for a crate.from_cargo call with default attributes.

    What the extension writes (crates_vendor.bzl generate_config_file, mode "remote", the default
    render_config, repository and output package named after the hub): a cargo_bazel Config.
    """
    return {
        "generate_binaries": False,
        "generate_build_scripts": True,
        "annotations": {},
        "cargo_config": None,
        "rendering": {
            "repository_name": hub,
            "build_file_template": f"@{hub}//{hub}:BUILD.{{name}}-{{version}}.bazel",
            "crate_alias_template": "@{repository}//{name}-{version}",
            "crate_label_template": "@{repository}__{name}-{version}//:{target}",
            "crate_repository_template": "{repository}__{name}-{version}",
            "crates_module_template": f"@{hub}//{hub}:{{file}}",
            "default_alias_rule": "alias",
            "default_package_name": None,
            "generate_cargo_toml_env_vars": True,
            "generate_rules_license_metadata": False,
            "generate_target_compatible_with": True,
            "platforms_template": "@rules_rust//rust/platform:{triple}",
            "regen_command": f"bazel mod show_repo '{module}'",
            "vendor_mode": "remote",
        },
        "supported_platform_triples": triples,
    }


def splicing_manifest(root: Path, manifests: list[str]) -> dict:
    """crate_universe's splicing_manifest.json: each manifest's path and label, no extra packages."""
    return {
        "resolver_version": "2",
        "cargo_config": None,
        "direct_packages": {},
        "manifests": {str(label_path(root, m)): m for m in manifests},
    }


def generate(root: Path) -> None:
    call = from_cargo_call(root)
    hub, triples, manifests = call.get("name"), call.get("supported_platform_triples"), call.get("manifests")
    if not (isinstance(hub, str) and isinstance(triples, list) and isinstance(manifests, list)):
        raise SystemExit("MODULE.bazel: crate.from_cargo needs literal name, supported_platform_triples and manifests")
    binary = cargo_bazel(root)
    with tempfile.TemporaryDirectory(prefix="clientd-lockfile-") as tmp:
        tmp = Path(tmp)
        config = tmp / "config.json"
        config.write_text(json.dumps(extension_config(hub, module_name(root), triples), indent=4))
        manifest = tmp / "splicing_manifest.json"
        manifest.write_text(json.dumps(splicing_manifest(root, manifests), indent=4))
        env = dict(os.environ, **toolchain())
        common = ["--config", config, "--splicing-manifest", manifest, "--nonhermetic-root-bazel-workspace-dir", root]
        splice = tmp / "splice"
        run([binary, "splice", "--output-dir", splice, "--repository-name", hub,
             "--cargo-lockfile", root / "Cargo.lock", *common], env)
        run([binary, "generate", "--repin", "--metadata", splice / "metadata.json",
             "--cargo-lockfile", root / "Cargo.lock", "--skip-cargo-lockfile-overwrite",
             "--lockfile", root / LOCKFILE, "--repository-dir", tmp / "repository",
             "--paths-to-track", tmp / "paths.json", "--warnings-output-path", tmp / "warnings.json",
             *common], env)
        for warning in json.loads((tmp / "warnings.json").read_text()):
            print(f"bazel_lockfile: cargo-bazel warns: {warning}", file=sys.stderr)
    problems = staleness(root)
    if problems:
        raise SystemExit("\n".join(["bazel_lockfile: the generated file is still stale:"] + problems))
    print(f"bazel_lockfile: wrote {root / LOCKFILE}")


def toolchain() -> dict:
    """CARGO and RUSTC as absolute paths into the toolchain itself.

    cargo-bazel runs them with a scrubbed environment, where rustup's proxies cannot work.
    """
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True)
    bin_dir = Path(sysroot.stdout.strip()) / "bin"
    return {"CARGO": str(bin_dir / "cargo"), "RUSTC": str(bin_dir / "rustc")}


def run(argv: list, env: dict) -> None:
    result = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bazel_lockfile: {' '.join(map(str, argv[:2]))} failed:\n{result.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["generate", "check"])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    root = args.root.resolve()
    if args.command == "generate":
        generate(root)
        return 0
    problems = staleness(root)
    for p in problems:
        print(p)
    print(f"bazel_lockfile: {len(problems)} problem(s)" if problems else f"bazel_lockfile: {LOCKFILE} is current")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
