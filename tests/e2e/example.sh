#!/usr/bin/env bash
# End-to-end: examples/basic, as a user would run it with Debian's Bazel 4.2.3.
#
# A copy of the example (its WORKSPACE pointed at this repository) gets its clientd.bazelrc from
# `clientd bazelrc --bazel-version 4.2.3 --instance local/example`, and its .bazelrc the startup
# line that gives Debian's Bazel netty's epoll library (as the README says); `bazel build
# --config=clientd //...` builds through a running daemon's UNIX socket (project_tree's outputs
# feed a genrule);
# after `bazel clean` a second build hits the remote cache for every action but the stamped one
# (its volatile status input changes every build: the case for scrubbing on Bazel 7+);
# `--config=release` stamps; `bazel run` of the launcher behind `@clientd//:bazelrc` passes the
# subcommand, the arguments and the workspace through.
#
# Needs: tests/setup.sh (bazel-bootstrap), cargo. KEEP_TMP=1 keeps the temp dir; CLIENTD=... tests
# a given binary. Prints `PASS: name` / `FAIL: name: reason`; exits non-zero on any failure.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_bazel
need_netty_epoll
make_tmp clientd-e2e-example
build_clientd

cat >"$T/config.json" <<JSON
{"cache_dir": "$T/cache", "mount": {"enabled": false}}
JSON
start_daemon serve --config "$T/config.json" || die daemon "clientd did not start"

# The example, copied so that nothing is written into the repository.
WS="$T/example"
cp -r "$ROOT/examples/basic" "$WS"
WORKSPACES+=("$WS")
sed -i "s|path = \"../..\"|path = \"$ROOT\"|" "$WS/WORKSPACE"
echo "$JVM_LINE" >>"$WS/.bazelrc"
if cl bazelrc --config "$T/config.json" --bazel-version 4.2.3 \
    --instance local/example --output "$WS/clientd.bazelrc" 2>"$T/bazelrc.err" &&
    grep -qx "build:clientd --remote_cache=unix:$DAEMON_SOCKET" "$WS/clientd.bazelrc"; then
    pass fragment_written
else
    fail fragment_written "want --remote_cache=unix:$DAEMON_SOCKET: $(cat "$T/bazelrc.err" "$WS/clientd.bazelrc")"
fi

build() { (cd "$WS" && bz build --config=clientd "$@" //... 2>&1); }
if out=$(build); then pass build; else fail build "$(printf '%s' "$out" | tail -15)"; fi
if [ "$(cat "$WS/bazel-bin/answer.txt" 2>/dev/null)" = "42" ]; then
    pass projected_file_used
else
    fail projected_file_used "answer.txt: $(cat "$WS/bazel-bin/answer.txt" 2>&1)"
fi
(cd "$WS" && bz clean >/dev/null 2>&1)
out=$(build --execution_log_json_file="$T/exec.json")
# Every action but the stamped one is a remote cache hit. The stamped genrule reads the volatile
# workspace status (BUILD_TIMESTAMP, in seconds), so its cache key changes from one second to the
# next: what a scrubbing config fixes on Bazel 7+ (see examples/basic/.bazelrc); 4.2.3 cannot
# scrub. Two builds within the same second do hit for it too, so it may or may not miss.
misses=$(exec_log "$T/exec.json" | python3 -c '
import json, sys
for line in sys.stdin:
    spawn = json.loads(line)
    if not spawn.get("remoteCacheHit"):
        print(" ".join(o["path"] for o in spawn.get("actualOutputs", [])))
')
if [ -z "$misses" ] || [ "$misses" = "bazel-out/k8-fastbuild/bin/version.txt" ]; then
    note "second build: misses: ${misses:-none (the builds fell within one second)}"
    pass second_build_hits_all_but_stamped
else
    fail second_build_hits_all_but_stamped "misses: $misses $(printf '%s' "$out" | grep 'processes:')"
fi
if out=$(build --config=release) && grep -q "STABLE_VERSION 1.0.0" "$WS/bazel-bin/version.txt"; then
    pass release_stamped
else
    fail release_stamped "$(cat "$WS/bazel-bin/version.txt" 2>&1) $(printf '%s' "$out" | tail -5)"
fi

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

finish
