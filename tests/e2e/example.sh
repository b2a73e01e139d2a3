#!/usr/bin/env bash
# End-to-end: examples/basic, as a user would run it with Debian's Bazel 4.2.3.
#
# A copy of the example (its WORKSPACE pointed at this repository) gets its clientd.bazelrc from
# `clientd bazelrc --bazel-version 4.2.3 --tcp --instance local/example`; `bazel build
# --config=clientd //...` builds through a running daemon (project_tree's outputs feed a genrule);
# after `bazel clean` a second build hits the remote cache for every action but the stamped one
# (its volatile status input changes every build: the case for scrubbing on Bazel 7+);
# `--config=release` stamps; `bazel run` of the launcher behind `@clientd//:bazelrc` passes the
# subcommand, the arguments and the workspace through.
#
# Needs: tests/setup.sh (bazel-bootstrap), cargo. KEEP_TMP=1 keeps the temp dir; CLIENTD=... tests
# a given binary. Prints `PASS: name` / `FAIL: name: reason`; exits non-zero on any failure.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BAZEL=${BAZEL:-/usr/bin/bazel}
FAILURES=0
T=""
DAEMON_PID=""
WS=""

pass() { printf 'PASS: %s\n' "$1"; }
fail() { printf 'FAIL: %s: %s\n' "$1" "$2"; FAILURES=$((FAILURES + 1)); }
die() { fail "$1" "$2"; exit 1; }

cleanup() {
    local rc=$?
    if [ -n "$WS" ] && [ -d "$WS" ]; then
        (cd "$WS" && bz shutdown >/dev/null 2>&1) || true
    fi
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "$T" ] && [ -d "$T" ] && [ -z "${KEEP_TMP:-}" ]; then
        chmod -R u+w "$T" 2>/dev/null
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bz() { HOME="$T/home" "$BAZEL" --output_user_root="$T/bazel-root" "$@"; }

[ -x "$BAZEL" ] || die setup "$BAZEL not found: run tests/setup.sh"
T=$(mktemp -d "${TMPDIR:-/tmp}/clientd-e2e-example.XXXXXX")
mkdir -p "$T/home"
if [ -z "${CLIENTD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p clientd) >"$T/cargo.log" 2>&1 ||
        { cat "$T/cargo.log"; die build "cargo build --release -p clientd failed"; }
    CLIENTD="$ROOT/target/release/clientd"
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$T/config.json" <<JSON
{"cache_dir": "$T/cache", "grpc": {"tcp_listen": ["127.0.0.1:$PORT"]}, "mount": {"enabled": false}}
JSON
HOME="$T/home" NO_COLOR=1 "$CLIENTD" serve --config "$T/config.json" >"$T/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do
    grep -q "serving on grpc://" "$T/daemon.log" && break
    sleep 0.1
done
grep -q "serving on grpc://" "$T/daemon.log" || { cat "$T/daemon.log"; die daemon "clientd did not start"; }

# The example, copied so that nothing is written into the repository.
WS="$T/example"
cp -r "$ROOT/examples/basic" "$WS"
sed -i "s|path = \"../..\"|path = \"$ROOT\"|" "$WS/WORKSPACE"
if HOME="$T/home" "$CLIENTD" bazelrc --config "$T/config.json" --bazel-version 4.2.3 --tcp \
    --instance local/example --output "$WS/clientd.bazelrc" 2>"$T/bazelrc.err"; then
    pass fragment_written
else
    fail fragment_written "$(cat "$T/bazelrc.err")"
fi

build() { (cd "$WS" && bz build --config=clientd "$@" //... 2>&1); }
out=$(build) && pass build || fail build "$(printf '%s' "$out" | tail -15)"
[ "$(cat "$WS/bazel-bin/answer.txt" 2>/dev/null)" = "42" ] && pass projected_file_used ||
    fail projected_file_used "answer.txt: $(cat "$WS/bazel-bin/answer.txt" 2>&1)"
(cd "$WS" && bz clean >/dev/null 2>&1)
out=$(build --execution_log_json_file="$T/exec.json")
# Every action but the stamped one is a remote cache hit. The stamped genrule reads the volatile
# workspace status (BUILD_TIMESTAMP), so its cache key changes on every build: what a scrubbing
# config fixes on Bazel 7+ (see examples/basic/.bazelrc); 4.2.3 cannot scrub.
misses=$(python3 - "$T/exec.json" <<'PY'
import json, sys
text, decoder, at, misses = open(sys.argv[1]).read(), json.JSONDecoder(), 0, []
while text[at:].strip():
    at += len(text[at:]) - len(text[at:].lstrip())
    spawn, end = decoder.raw_decode(text, at)
    at = end
    if not spawn.get("remoteCacheHit"):
        misses.append(" ".join(o["path"] for o in spawn.get("actualOutputs", [])))
print("\n".join(misses))
PY
)
if [ "$misses" = "bazel-out/k8-fastbuild/bin/version.txt" ]; then
    pass second_build_hits_all_but_stamped
else
    fail second_build_hits_all_but_stamped "misses: ${misses:-none?} $(printf '%s' "$out" | grep 'processes:')"
fi
out=$(build --config=release) && grep -q "STABLE_VERSION 1.0.0" "$WS/bazel-bin/version.txt" &&
    pass release_stamped || fail release_stamped "$(cat "$WS/bazel-bin/version.txt" 2>&1) $(printf '%s' "$out" | tail -5)"

# The launcher behind `bazel run @clientd//:bazelrc` (rules/command.bzl), around a stand-in for
# the clientd binary (rules_rust cannot build it under Bazel 4.2.3): the subcommand and the
# arguments arrive, and BUILD_WORKSPACE_DIRECTORY names the workspace.
mkdir -p "$WS/launcher"
# An executable rule, not sh_binary: that needs rules_cc's launcher, which cannot be fetched here.
cat >"$WS/launcher/fake.bzl" <<'BZL'
def _fake_clientd_impl(ctx):
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        script,
        "#!/bin/sh\necho \"args: $*\"\necho \"workspace: $BUILD_WORKSPACE_DIRECTORY\"\n",
        is_executable = True,
    )
    return [DefaultInfo(executable = script)]

fake_clientd = rule(implementation = _fake_clientd_impl, executable = True)
BZL
cat >"$WS/launcher/BUILD.bazel" <<'BUILD'
load("@clientd//rules:command.bzl", "clientd_command")
load(":fake.bzl", "fake_clientd")

fake_clientd(name = "fake_clientd")

clientd_command(
    name = "bazelrc",
    binary = ":fake_clientd",
    command = "bazelrc",
)
BUILD
out=$(cd "$WS" && bz run //launcher:bazelrc -- --instance local/x 2>"$T/run.err")
if printf '%s' "$out" | grep -qx "args: bazelrc --instance local/x" &&
    printf '%s' "$out" | grep -qx "workspace: $WS"; then
    pass bazel_run_launcher
else
    fail bazel_run_launcher "$out $(tail -5 "$T/run.err")"
fi

echo
if [ "$FAILURES" -eq 0 ]; then echo "all passed"; else echo "$FAILURES failed"; fi
[ "$FAILURES" -eq 0 ]
