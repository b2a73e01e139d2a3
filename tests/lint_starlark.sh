#!/usr/bin/env bash
# Formats and lints every Starlark file of the repository with buildifier:
# BUILD / BUILD.bazel, *.bzl, *.star, MODULE.bazel, WORKSPACE(.bazel|.bzlmod).
#
#   tests/lint_starlark.sh          check only: lists what is off, exits non-zero
#   tests/lint_starlark.sh --fix    rewrites the files (format + automatic lint fixes)
#
# buildifier comes from the npm registry (@bazel/buildifier ships the native
# binaries) and is installed into .tools/ (gitignored) the first time, or when
# the pinned version changes. Set BUILDIFIER=/path/to/buildifier to use another.
set -euo pipefail

BUILDIFIER_VERSION=8.2.1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

mode=check
case "${1:-}" in
"") ;;
--fix) mode=fix ;;
-h | --help)
    sed -n '2,11p' "$0"
    exit 0
    ;;
*)
    echo "usage: $0 [--fix]" >&2
    exit 2
    ;;
esac

tools="$root/.tools"
pkg="$tools/node_modules/@bazel/buildifier"

install_buildifier() {
    local have=""
    if [ -f "$pkg/package.json" ]; then
        have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$pkg/package.json" | head -n1)
    fi
    [ "$have" = "$BUILDIFIER_VERSION" ] && return 0
    if ! command -v npm >/dev/null 2>&1; then
        echo "lint_starlark: npm is needed to install buildifier (apt-get install npm)" >&2
        exit 2
    fi
    echo "lint_starlark: installing @bazel/buildifier@$BUILDIFIER_VERSION into .tools/" >&2
    mkdir -p "$tools"
    local out
    if ! out=$(npm install --no-save --no-audit --no-fund --loglevel=error \
        --prefix "$tools" "@bazel/buildifier@$BUILDIFIER_VERSION" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "lint_starlark: npm install failed" >&2
        exit 2
    fi
}

# The native binary inside the npm package (the package's JS wrapper needs node).
native_binary() {
    local os arch
    case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) return 1 ;;
    esac
    case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    riscv64) arch=riscv64 ;;
    *) return 1 ;;
    esac
    [ -x "$pkg/buildifier-${os}_${arch}" ] && echo "$pkg/buildifier-${os}_${arch}"
}

if [ -n "${BUILDIFIER:-}" ]; then
    buildifier=$BUILDIFIER
else
    install_buildifier
    if ! buildifier=$(native_binary); then
        buildifier="$tools/node_modules/.bin/buildifier"
    fi
fi

# Every Starlark file, skipping build outputs, installed tools and Bazel's symlinks.
files=()
while IFS= read -r -d '' f; do
    files+=("${f#./}")
done < <(find . \
    \( -name .git -o -name .tools -o -name node_modules -o -name target -o -name 'bazel-*' \) -prune -o \
    -type f \( -name BUILD -o -name BUILD.bazel -o -name '*.bzl' -o -name '*.star' \
    -o -name MODULE.bazel -o -name WORKSPACE -o -name WORKSPACE.bazel -o -name WORKSPACE.bzlmod \) \
    -print0 | sort -z)

if [ "${#files[@]}" -eq 0 ]; then
    echo "lint_starlark: no Starlark files found" >&2
    exit 1
fi

if [ "$mode" = fix ]; then
    "$buildifier" --mode=fix --lint=fix "${files[@]}"
fi

# In both modes: report what is (still) off.

set +e
out=$("$buildifier" --mode=check --lint=warn "${files[@]}" 2>&1)
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out"
    if [ "$mode" = check ]; then
        echo "lint_starlark: Starlark files need attention (rc=$rc); tests/lint_starlark.sh --fix rewrites what it can" >&2
    else
        echo "lint_starlark: warnings remain that buildifier cannot fix by itself (rc=$rc)" >&2
    fi
    exit 1
fi
echo "lint_starlark: ok, ${#files[@]} Starlark files formatted and lint-clean (buildifier $BUILDIFIER_VERSION)"
