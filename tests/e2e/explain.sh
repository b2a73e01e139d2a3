#!/usr/bin/env bash
# End-to-end proof of `clientd explain`: Bazel 4.2.3 builds through clientd's UNIX socket (the
# fragment `clientd bazelrc` writes) with remote execution on Bazel's remote worker; between two
# builds one source file changes and one --action_env; `clientd explain` names exactly those
# causes with the right action counts, from the activity record (kept across a daemon restart)
# and the Actions, Commands and input trees in the CAS.
#
# The workspace: //pkg:a reads pkg/a.txt; //pkg:b and //pkg:c read nothing. Build 1 with
# --action_env=FOO=1, then pkg/a.txt changes and build 2 has --action_env=FOO=2: all three
# actions miss; two because FOO changed, one because FOO changed and pkg/a.txt changed.
#
# Needs: tests/setup.sh (bazel-bootstrap), cargo; installs the remote worker and netty's epoll
# library itself (idempotent). CLIENTD=/path/to/clientd tests a given binary. KEEP_TMP=1 keeps the
# temp dir. Prints `PASS: name` / `FAIL: name: reason` and `# ...` notes; exits non-zero on any
# failure.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_bazel
need_netty_epoll
install_peer remote_worker
make_tmp clientd-e2e-explain
build_clientd

read -r RW_PORT < <(free_port 1)
start_remote_worker "$T/rw" "$RW_PORT"
CLUSTER="rw.example.com=grpc://127.0.0.1:$RW_PORT"
start_daemon serve --no-mount --cluster "$CLUSTER" || die daemon_start "$DAEMON_ERROR"
pass daemon_start

WS="$T/ws"
new_workspace "$WS" "build --remote_timeout=30"
mkdir -p "$WS/pkg"
echo "first" >"$WS/pkg/a.txt"
cat >"$WS/pkg/BUILD" <<'BUILD'
genrule(name = "a", srcs = ["a.txt"], outs = ["a.out"], cmd = "cat $< > $@; echo $$FOO >> $@")
genrule(name = "b", outs = ["b.out"], cmd = "echo b $$FOO > $@")
genrule(name = "c", outs = ["c.out"], cmd = "echo c $$FOO > $@")
BUILD
write_fragment --instance rw.example.com/x

build() { bzlog "$1" build --config=clientd --spawn_strategy=remote "--action_env=FOO=$2" //pkg:all; }
build build1 1 || { show_log build1; die build1 "bazel build failed"; }
echo "second" >"$WS/pkg/a.txt"
build build2 2 || { show_log build2; die build2 "bazel build failed"; }
if [ "$(count "$T/build2.log" remote)" -eq 3 ]; then
    pass build2_executed_three
else
    fail build2_executed_three "$(summary_line "$T/build2.log")"
fi

# check_explanation NAME: `clientd explain` about build 2.
check_explanation() {
    local out
    if ! out=$(cl explain 2>&1); then
        fail "$1" "clientd explain failed: $out"
        return
    fi
    note "clientd explain:"
    sed 's/^/#   /' <<<"$out"
    local env='  - environment variable FOO: `1` -> `2`'
    local two one
    two=$(printf '2 actions missed because:\n%s\n  (' "$env")
    one=$(printf '1 action missed because:\n%s\n  - input pkg/a.txt: ' "$env")
    if grep -q "^invocation .*: 3 actions, 0 cache hits, 3 misses$" <<<"$out" &&
        [[ "$out" == *"$two"* ]] && [[ "$out" == *"$one"* ]] &&
        [[ "$out" == *"(//pkg:a (Genrule))"* ]] &&
        [ "$(grep -c 'missed because' <<<"$out")" -eq 2 ]; then
        pass "$1"
    else
        fail "$1" "want 3 misses: 2 because FOO 1 -> 2, 1 (//pkg:a) because FOO and pkg/a.txt changed"
    fi
}
check_explanation explain_names_the_causes

out=$(cl explain --list 2>&1)
if [ "$(grep -c '^  ' <<<"$out")" -eq 2 ]; then
    pass explain_lists_two_invocations
else
    fail explain_lists_two_invocations "$out"
fi

# The record survives a restart (the daemon keeps it in its cache directory).
stop_daemon
start_daemon serve --no-mount --cluster "$CLUSTER" || die daemon_restart "$DAEMON_ERROR"
check_explanation explain_after_restart

out=$(cl explain no-such-invocation 2>&1)
if [[ "$out" == *'no invocation "no-such-invocation" in the activity record'* ]]; then
    pass explain_unknown_invocation
else
    fail explain_unknown_invocation "$out"
fi
check_daemon_alive
finish
