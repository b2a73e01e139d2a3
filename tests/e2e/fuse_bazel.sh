#!/usr/bin/env bash
# End-to-end proof of the file system with a real client: Bazel 4.2.3 (Debian's bazel-bootstrap)
# executes genrules remotely on Bazel's own remote worker (tests/peers/remote_worker.sh) through one
# clientd daemon (cluster prefix rw.example.com, instance rw.example.com/x) that also mounts its
# file system at $T/mnt, and Bazel downloads nothing: --remote_download_symlink_template points
# every remote output at $T/mnt/cas/rw.example.com/x/blobs/sha256/executable/{hash}-{size_bytes}.
#
# 0. Reference: the same workspace built purely locally (no clientd, no remote) in a second
#    workspace copy; its outputs are the expected bytes and digests.
# 1. Remote build of //gen:remote (outputs from 1 byte to ~2 MB, an empty one, an executable
#    shell script, and a genrule that runs that script remotely): the build succeeds; each
#    non-empty output in bazel-out is a symlink to exactly cas/.../executable/<its digest>;
#    Bazel's own gRPC log (--experimental_remote_grpc_log) has no ByteStream/Read or
#    BatchReadBlobs; reading every output through its symlink gives the reference bytes; the
#    outputs, produced on the worker, reached clientd's local CAS only by reads through cas/
#    (Bazel 4.2.3 reads each output to digest it; `clientd stats` upstream_fetches grows); the
#    generated script runs through its symlink. An output built with --remote_download_minimal
#    (never read by Bazel) is not in the local CAS, stat through cas/ does not fetch it, and the
#    first read does (exactly one fetch of its size).
# 2. A downstream genrule tagged no-remote runs locally (--strategy=Genrule=remote,local),
#    reads the remote outputs through the symlinks and produces the reference bytes.
# 3. Every remotely executed action (digests from the daemon's `Execute: action` debug lines) is
#    reproduced from the file system alone: its Action is read from cas/.../file/<action> and
#    decoded (BuildGrid's generated REAPI modules), its input root hard-linked with
#    `cp -lr cas/.../directory/<input root> scratch/repro/<n>` (genrule-setup.sh included), its
#    cas/.../command/<command> script run there; the outputs it names must equal Bazel's.
# 4. stat of a digest nobody has, under cas/, fails with "No such file or directory".
# 5. SIGTERM stops the daemon cleanly and it unmounts.
#
# Needs: tests/setup.sh (bazel-bootstrap, fuse3), cargo, python3 >= 3.11, /dev/fuse; installs the
# peers itself (tests/peers/remote_worker.sh install; tests/peers/buildgrid.sh install for the
# Python REAPI modules, idempotent). CLIENTD=/path/to/clientd tests a given binary instead of
# building this tree's. KEEP_TMP=1 keeps the temp dir (logs, worker state, workspaces).
# Prints `PASS: name` / `FAIL: name: reason` per assertion and `# ...` notes; exits non-zero on any
# failure.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BAZEL=${BAZEL:-/usr/bin/bazel}
BUILDGRID="$ROOT/tests/peers/buildgrid.sh"
REMOTE_WORKER="$ROOT/tests/peers/remote_worker.sh"
PY="$ROOT/.tools/buildgrid-venv/bin/python"
FAILURES=0
T=""
MNT=""
DAEMON_PID=""
RW_PID=""
WS=""
WS_LOCAL=""

pass() { printf 'PASS: %s\n' "$1"; }
fail() { printf 'FAIL: %s: %s\n' "$1" "$2"; FAILURES=$((FAILURES + 1)); }
note() { printf '# %s\n' "$*"; }
# Fatal: the rest of the test cannot run.
die() { fail "$1" "$2"; exit 1; }

# Whether $MNT is a mount point (of anything: the daemon's file system, live or stale).
mounted() {
    [ -n "$MNT" ] && awk -v m="$MNT" '$2 == m { found = 1 } END { exit !found }' /proc/mounts
}

stop_daemon() {
    [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null || return 0
    kill -TERM "$DAEMON_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        note "daemon $DAEMON_PID ignored SIGTERM for 10 s; killing it"
        kill -KILL "$DAEMON_PID" 2>/dev/null
    fi
}

cleanup() {
    local rc=$?
    local ws
    for ws in "$WS" "$WS_LOCAL"; do
        if [ -n "$ws" ] && [ -d "$ws" ]; then
            (cd "$ws" && bz shutdown >/dev/null 2>&1) || true
        fi
    done
    stop_daemon
    [ -n "$DAEMON_PID" ] && wait "$DAEMON_PID" 2>/dev/null
    # The remote worker leads its own process group (setsid): its PID stops it and its actions.
    if [ -n "$RW_PID" ] && kill -0 "$RW_PID" 2>/dev/null; then
        kill -TERM -- "-$RW_PID" 2>/dev/null || kill -TERM "$RW_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$RW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$RW_PID" 2>/dev/null && kill -KILL -- "-$RW_PID" 2>/dev/null
    fi
    # The daemon unmounts when it stops; a daemon that was killed leaves the mount behind.
    if mounted; then
        note "$MNT is still mounted; fusermount3 -u -z"
        fusermount3 -u -z "$MNT" 2>/dev/null || true
    fi
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ -n "${KEEP_TMP:-}" ]; then
            note "kept $T"
        elif mounted; then
            # Never recurse into a live mount: chmod/rm would walk the file system.
            note "$MNT could not be unmounted; left $T in place"
        else
            chmod -R u+w "$T" 2>/dev/null
            rm -rf "$T"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Bazel with everything of its own under $T: its output root, and a HOME with no ~/.bazelrc.
bz() {
    HOME="$T/home" "$BAZEL" --output_user_root="$T/bazel-root" "$@"
}

# `clientd stats` with the daemon's environment: it finds the daemon's socket the same way.
clientd_stats() {
    HOME="$T/home" XDG_CACHE_HOME="$T/cache" XDG_CONFIG_HOME="$T/config" NO_COLOR=1 "$CLIENTD" stats
}

# --- peers, clientd ---------------------------------------------------------------------------
[ -x "$BAZEL" ] || die setup "$BAZEL not found: run tests/setup.sh"
command -v fusermount3 >/dev/null || die setup "fusermount3 not found: run tests/setup.sh (fuse3)"
[ -e /dev/fuse ] || die setup "/dev/fuse does not exist"
bash "$REMOTE_WORKER" install || die setup "tests/peers/remote_worker.sh install failed"
bash "$BUILDGRID" install || die setup "tests/peers/buildgrid.sh install failed (needed for its REAPI Python modules)"
"$PY" -c 'from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2' 2>/dev/null ||
    die setup "$PY cannot import buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2"

T=$(mktemp -d "${TMPDIR:-/tmp}/clientd-e2e-fuse.XXXXXX")
MNT="$T/mnt"
mkdir -p "$T/home" "$T/cache" "$T/config"

if [ -z "${CLIENTD:-}" ]; then
    start=$SECONDS
    if ! (cd "$ROOT" && cargo build --release -p clientd) >"$T/cargo.log" 2>&1; then
        cat "$T/cargo.log"
        die build "cargo build --release -p clientd failed"
    fi
    note "cargo build: $((SECONDS - start)) s"
    CLIENTD="$ROOT/target/release/clientd"
fi

# Two distinct free loopback ports: the remote worker and clientd.
read -r RW_PORT PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
RW_ENDPOINT="127.0.0.1:$RW_PORT"
RW_DIR="$T/rw"

start=$SECONDS
bash "$REMOTE_WORKER" start "$RW_DIR" "$RW_PORT" >"$T/rw-start.log" 2>&1
rw_rc=$?
[ -f "$RW_DIR/worker.pid" ] && RW_PID=$(cat "$RW_DIR/worker.pid")
if [ "$rw_rc" -ne 0 ]; then
    cat "$T/rw-start.log"
    die worker_start "the remote worker did not start on $RW_ENDPOINT"
fi
pass worker_start
note "remote worker pid $RW_PID at grpc://$RW_ENDPOINT ($((SECONDS - start)) s)"

# Started directly, not through a shell function: $! must be the daemon itself, for SIGTERM.
HOME="$T/home" XDG_CACHE_HOME="$T/cache" XDG_CONFIG_HOME="$T/config" NO_COLOR=1 RUST_LOG=clientd=debug,info \
    "$CLIENTD" serve --tcp-listen "127.0.0.1:$PORT" --mount "$MNT" \
    --cluster "rw.example.com=grpc://$RW_ENDPOINT" \
    >"$T/daemon.log" 2>&1 &
DAEMON_PID=$!

ENDPOINT=""
for _ in $(seq 300); do
    ENDPOINT=$(grep -o 'serving on grpc://[0-9.]*:[0-9]*' "$T/daemon.log" 2>/dev/null | head -n 1 | sed 's|^serving on grpc://||')
    [ -n "$ENDPOINT" ] && [ -d "$MNT/scratch" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ENDPOINT" ] || [ ! -d "$MNT/scratch" ]; then
    cat "$T/daemon.log"
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        die daemon_start "no 'serving on grpc://' line or no $MNT/scratch within 30 s"
    fi
    wait "$DAEMON_PID"
    die daemon_start "daemon exited with status $? before listening"
fi
if mounted; then
    pass daemon_start
else
    die daemon_start "$MNT/scratch exists but $MNT is not in /proc/mounts"
fi
note "daemon pid $DAEMON_PID at grpc://$ENDPOINT, file system at $MNT"

CAS="$MNT/cas/rw.example.com/x/blobs/sha256"

# clientd's counters: `stats NAME` prints the file, `counter NAME KEY` one value.
stats() { clientd_stats >"$T/$1.stats" 2>"$T/$1.stats.err" || { cat "$T/$1.stats.err"; die stats "clientd stats failed"; }; }
counter() { awk -v k="$2" '$1 == k { print $2; found = 1 } END { if (!found) print -1 }' "$T/$1.stats"; }
delta() { echo $(($(counter "$2" "$3") - $(counter "$1" "$3"))); }
# Whether the local CAS holds a blob (its file is named <hash>-<size>).
in_local_cas() { [ -n "$(find "$T/cache" -path '*/cas/*' -type f -name "$1" -print -quit)" ]; }

# --- the workspace ----------------------------------------------------------------------------
WS="$T/ws"
mkdir -p "$WS/gen"
: >"$WS/WORKSPACE"
cat >"$WS/.bazelrc" <<'EOF'
# Debian's /etc/bazel/bazelrc turns --sandbox_debug on; it keeps sandboxes around.
build --nosandbox_debug
build --color=no --curses=no --show_progress_rate_limit=60 --remote_timeout=30
EOF
cat >"$WS/gen/BUILD" <<'EOF'
# Generated by tests/e2e/fuse_bazel.sh
genrule(name = "empty", outs = ["empty.txt"], cmd = ": > $@")

genrule(name = "tiny", outs = ["tiny.txt"], cmd = "printf x > $@")

genrule(name = "small", outs = ["small.txt"], cmd = "seq 1 1000 > $@")

genrule(
    name = "medium",
    outs = ["medium.bin"],
    # genrule-setup.sh sets pipefail, and `yes` dies of SIGPIPE when head has enough.
    cmd = "{ yes clientd-fuse-e2e-medium || true; } | head -c 200000 > $@",
)

# 1,988,895 bytes: two 1 MiB read chunks.
genrule(name = "big", outs = ["big.txt"], cmd = "seq 1 300000 > $@")

genrule(
    name = "tool",
    outs = ["tool.sh"],
    cmd = "printf '#!/bin/sh\\necho tool ran with \"$$*\"\\n' > $@ && chmod +x $@",
    executable = True,
)

# Runs the remotely built tool remotely: its input root holds an output only the worker has.
genrule(
    name = "tool_out",
    outs = ["tool_out.txt"],
    cmd = "$(location :tool) remotely > $@",
    tools = [":tool"],
)

filegroup(
    name = "remote",
    srcs = [":empty", ":tiny", ":small", ":medium", ":big", ":tool", ":tool_out"],
)

# Built with --remote_download_minimal: nobody reads it until the test does, through cas/.
genrule(name = "unread", outs = ["unread.txt"], cmd = "seq 1 30000 | sed 's/^/never read by Bazel /' > $@")

# Runs on this machine and reads the remote outputs (through the symlinks into the mount).
genrule(
    name = "check",
    srcs = [":remote"],
    outs = ["check.txt"],
    cmd = "sha256sum $(SRCS) > $@ && wc -c $(SRCS) >> $@ && $(location :tool) locally >> $@",
    tags = ["no-remote"],
    tools = [":tool"],
)
EOF
# Outputs of //gen:remote, relative to bazel-bin (target configuration); the tool is also built
# for the host configuration (bazel-out/host/bin/gen/tool.sh).
OUTS=(empty.txt tiny.txt small.txt medium.bin big.txt tool.sh tool_out.txt)
WS_LOCAL="$T/ws-local"
cp -r "$WS" "$WS_LOCAL"
note "workspace $WS: ${#OUTS[@]} remote genrules (//gen:remote), //gen:check tagged no-remote"

# grpc_calls LOG: the calls Bazel logged with --experimental_remote_grpc_log ("Service/Method=N ..."):
# each LogEntry carries its full method name as plain text.
grpc_calls() {
    grep -a -o -E '(google\.bytestream\.ByteStream|build\.bazel\.remote\.execution\.v2\.[A-Za-z]+)/[A-Za-z]+' "$1" 2>/dev/null |
        sed 's/^.*\.//' | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }'
}

summary_line() { grep -E '^INFO: [0-9]+ process(es)?: ' "$1" | tail -n 1; }
show_log() { note "last lines of $1:"; tail -n "${2:-30}" "$T/$1.log" | cut -c1-400 | sed 's/^/#   /'; }

# count LOG KIND: the number Bazel's process summary gives for KIND ("remote", "local",
# "internal", ...). -1 when there is no summary.
count() {
    summary_line "$1" | python3 -c '
import re, sys
line = sys.stdin.read().strip()
m = re.match(r"INFO: (\d+) process(?:es)?: (.*?)\.?$", line)
if not m:
    print(-1); sys.exit()
parts = {}
for part in m.group(2).split(","):
    n, _, kind = part.strip().partition(" ")
    parts[kind] = parts.get(kind, 0) + int(n)
print(parts.get(sys.argv[1], 0))
' "$2"
}

# bzlog DIR LOG FLAGS...: runs `bazel build` in DIR, output in $T/LOG.log; returns Bazel's status.
bzlog() {
    local dir=$1 log=$2
    shift 2
    local t0=$SECONDS rc
    (cd "$dir" && bz build "$@") >"$T/$log.log" 2>&1
    rc=$?
    note "build $log: exit $rc in $((SECONDS - t0)) s; $(summary_line "$T/$log.log")"
    return "$rc"
}

# digest FILE: <sha256>-<size>, the name the blob has under cas/ and in the local CAS.
digest() { printf '%s-%s' "$(sha256sum <"$1" | cut -d' ' -f1)" "$(stat -L -c %s "$1")"; }

# --- 0. reference: the same workspace purely local ---------------------------------------------
if ! bzlog "$WS_LOCAL" reference //gen:check //gen:unread --spawn_strategy=local; then
    show_log reference 40
    die reference_build "the purely local build of //gen:check failed"
fi
(cd "$WS_LOCAL" && bz shutdown) >/dev/null 2>&1
REF="$WS_LOCAL/bazel-bin/gen"
declare -A WANT
for out in "${OUTS[@]}" unread.txt; do
    [ -f "$REF/$out" ] && [ ! -L "$REF/$out" ] || die reference_build "bazel-bin/gen/$out is not a regular file"
    WANT[$out]=$(digest "$REF/$out")
done
note "reference digests: $(for o in "${OUTS[@]}"; do printf '%s=%s ' "$o" "${WANT[$o]}"; done)"

# --- 1. remote execution through clientd, outputs as symlinks into the mount --------------------
TEMPLATE="$CAS/executable/{hash}-{size_bytes}"
EXEC=(--remote_executor="grpc://$ENDPOINT" --remote_instance_name=rw.example.com/x
    --spawn_strategy=remote --strategy=Genrule=remote,local
    --remote_download_symlink_template="$TEMPLATE" --keep_going)
stats s0
if bzlog "$WS" remote //gen:remote "${EXEC[@]}" --experimental_remote_grpc_log="$T/remote.grpclog"; then
    pass remote_build
else
    show_log remote 20
    fail remote_build "bazel build //gen:remote with --remote_download_symlink_template through clientd failed"
    # Bazel 4.2.3 chmods each output it symlinked (RemoteCache.moveOutputsToFinalLocation ->
    # setExecutable), which follows the symlink into cas/: show what that does on the mount.
    if grep -q 'Operation not permitted' "$T/remote.log"; then
        if [ -L "$WS/bazel-bin/gen/big.txt" ]; then
            target=$(readlink "$WS/bazel-bin/gen/big.txt")
            note "the failing call is Bazel's chmod through the symlink; by hand on $target:"
            note "  mode before: $(stat -c %a "$target" 2>&1)"
            note "  chmod 555 (no change): $(chmod 555 "$target" 2>&1 && echo ok)"
            note "  chmod 444: $(chmod 444 "$target" 2>&1 && echo ok)"
        fi
    fi
fi
stats s1
n_remote=$(count "$T/remote.log" remote)
note "remote build: $n_remote remote process(es); the daemon logged $(grep -c 'Execute: action' "$T/daemon.log") Execute call(s)"
if [ "$n_remote" -ge "${#OUTS[@]}" ]; then
    pass remote_build_ran_remotely
else
    fail remote_build_ran_remotely "expected at least ${#OUTS[@]} remote processes: $(summary_line "$T/remote.log")"
fi

# Each non-empty output is a symlink to exactly cas/.../executable/<its digest> (Bazel writes
# empty outputs itself).
BIN="$WS/bazel-bin/gen"
bad=""
for out in "${OUTS[@]}" host:tool.sh; do
    case $out in
        host:*) path="$WS/bazel-out/host/bin/gen/${out#host:}"; want=${WANT[${out#host:}]} ;;
        *) path="$BIN/$out"; want=${WANT[$out]} ;;
    esac
    if [ "${want##*-}" = 0 ]; then
        [ -f "$path" ] && [ ! -L "$path" ] && [ ! -s "$path" ] || bad+=" $out(not an empty regular file)"
    elif [ ! -L "$path" ]; then
        bad+=" $out($( [ -e "$path" ] && echo 'not a symlink' || echo missing))"
    elif [ "$(readlink "$path")" != "$CAS/executable/$want" ]; then
        bad+=" $out(-> $(readlink "$path"), want $CAS/executable/$want)"
    fi
done
if [ -z "$bad" ]; then
    pass outputs_are_symlinks_into_cas
    note "e.g. bazel-bin/gen/big.txt -> $(readlink "$BIN/big.txt")"
else
    fail outputs_are_symlinks_into_cas "$bad"
fi

# Bazel downloaded nothing: its own log of its gRPC calls has no blob reads.
calls=$(grpc_calls "$T/remote.grpclog")
note "Bazel's gRPC calls during the remote build: $calls"
if [[ "$calls" == *Execution/Execute=* ]] && [[ "$calls" != *ByteStream/Read=* ]] && [[ "$calls" != *BatchReadBlobs=* ]]; then
    pass bazel_did_not_download
else
    fail bazel_did_not_download "expected Execute calls and no ByteStream/Read or BatchReadBlobs in Bazel's gRPC log: $calls"
fi
note "counters during the remote build: upstream_fetches +$(delta s0 s1 upstream_fetches), upstream_fetch_bytes +$(delta s0 s1 upstream_fetch_bytes) (Bazel digests each output by reading it through its symlink)"

# Reading through the symlinks gives the reference bytes.
bad=""
for out in "${OUTS[@]}"; do
    if ! cmp -s "$BIN/$out" "$REF/$out"; then
        bad+=" $out"
    fi
done
cmp -s "$WS/bazel-out/host/bin/gen/tool.sh" "$WS_LOCAL/bazel-out/host/bin/gen/tool.sh" || bad+=" host:tool.sh"
stats s2
if [ -z "$bad" ]; then
    pass outputs_identical_to_local_build
else
    fail outputs_identical_to_local_build "differ from (or cannot be read like) the purely local build's:$bad"
    for out in $bad; do [ -e "$BIN/$out" ] && note "  $out: $(cmp "$BIN/$out" "$REF/$out" 2>&1 | head -n 1)"; done
fi
# The outputs were only on the worker: clientd fetched them when they were read through cas/
# (by Bazel during the build, or by the reads above), since nobody asked for them over gRPC.
BIG=${WANT[big.txt]}
fetches=$(delta s0 s2 upstream_fetches)
fetch_bytes=$(delta s0 s2 upstream_fetch_bytes)
note "upstream fetches since before the build: +$fetches ($fetch_bytes bytes; $(delta s1 s2 upstream_fetches) of them by the reads after the build)"
if [ "$fetches" -ge 1 ] && [ "$fetch_bytes" -ge "${BIG##*-}" ] && in_local_cas "$BIG"; then
    pass outputs_fetched_through_cas
else
    fail outputs_fetched_through_cas "expected big.txt ($BIG) fetched from the worker into the local CAS through cas/ (fetches +$fetches, bytes +$fetch_bytes, in local CAS: $(in_local_cas "$BIG" && echo yes || echo no))"
fi

# An output Bazel never read (--remote_download_minimal: no file, no symlink) is only on the worker:
# stat through cas/ finds it without fetching it; the first read fetches it.
UNREAD=${WANT[unread.txt]}
if bzlog "$WS" minimal //gen:unread "${EXEC[@]}" --remote_download_minimal; then
    stats s3
    size=$(stat -c %s "$CAS/file/$UNREAD" 2>&1)
    before=$(in_local_cas "$UNREAD" && echo yes || echo no)
    if [ ! -e "$BIN/unread.txt" ] && [ "$size" = "${UNREAD##*-}" ] && [ "$before" = no ] &&
        [ "$(delta s2 s3 upstream_fetches)" -eq 0 ]; then
        pass unread_output_only_in_cluster
    else
        fail unread_output_only_in_cluster "bazel-bin/gen/unread.txt exists: $([ -e "$BIN/unread.txt" ] && echo yes || echo no); stat size '$size', want ${UNREAD##*-}; in the local CAS after stat: $before; upstream_fetches +$(delta s2 s3 upstream_fetches) since the reads"
    fi
    same=$(cmp -s "$CAS/file/$UNREAD" "$REF/unread.txt" && echo yes || echo no)
    stats s4
    note "reading cas/.../file/$UNREAD: upstream_fetches +$(delta s3 s4 upstream_fetches), upstream_fetch_bytes +$(delta s3 s4 upstream_fetch_bytes)"
    if [ "$same" = yes ] && [ "$(delta s3 s4 upstream_fetches)" -eq 1 ] &&
        [ "$(delta s3 s4 upstream_fetch_bytes)" -eq "${UNREAD##*-}" ] && in_local_cas "$UNREAD"; then
        pass first_read_fetches_from_cluster
    else
        fail first_read_fetches_from_cluster "content identical: $same; upstream_fetches +$(delta s3 s4 upstream_fetches), bytes +$(delta s3 s4 upstream_fetch_bytes) (want 1, ${UNREAD##*-}); in the local CAS: $(in_local_cas "$UNREAD" && echo yes || echo no)"
    fi
else
    show_log minimal 20
    fail unread_output_only_in_cluster "bazel build //gen:unread --remote_download_minimal failed"
fi

# The executable output runs through its symlink.
ran=$("$BIN/tool.sh" directly 2>&1)
if [ -x "$BIN/tool.sh" ] && [ "$ran" = "tool ran with directly" ] &&
    [ "$(cat "$BIN/tool_out.txt" 2>&1)" = "tool ran with remotely" ]; then
    pass executable_output_runs
else
    fail executable_output_runs "bazel-bin/gen/tool.sh said '$ran'; tool_out.txt: '$(cat "$BIN/tool_out.txt" 2>&1)'"
fi

# --- 2. a downstream genrule runs locally on the remote outputs ---------------------------------
if bzlog "$WS" check //gen:check "${EXEC[@]}"; then
    pass local_downstream_build
else
    show_log check 20
    fail local_downstream_build "bazel build //gen:check (no-remote) failed"
fi
if [ "$(count "$T/check.log" local)" -eq 1 ] && [ "$(count "$T/check.log" remote)" -eq 0 ]; then
    pass downstream_ran_locally
else
    fail downstream_ran_locally "expected exactly 1 local process: $(summary_line "$T/check.log")"
fi
if [ -f "$BIN/check.txt" ] && [ ! -L "$BIN/check.txt" ] && cmp -s "$BIN/check.txt" "$REF/check.txt"; then
    pass downstream_output_correct
else
    fail downstream_output_correct "bazel-bin/gen/check.txt differs from the local build's"
    diff "$REF/check.txt" "$BIN/check.txt" 2>&1 | head -n 10 | sed 's/^/#   /'
fi

# --- 3. every remote action, reproduced from the file system -------------------------------------
mapfile -t ACTIONS < <(grep -o 'Execute: action [0-9a-f]*-[0-9]* on cluster rw\.example\.com ([^)]*) instance "x"' "$T/daemon.log" |
    awk '!seen[$3]++ { print $3 }')
note "${#ACTIONS[@]} distinct action(s) executed on rw.example.com/x"
[ "${#ACTIONS[@]}" -gt 0 ] || fail execute_logged "no 'Execute: action ... instance \"x\"' line in the daemon log"
# Each Action and its Command, decoded from cas/: action, command, input root, working directory,
# output paths ('|'-separated: a tab would merge an empty working directory with its neighbours).
"$PY" - "$CAS" "${ACTIONS[@]}" >"$T/actions.txt" 2>"$T/actions.err" <<'EOF'
import sys
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re

cas, actions = sys.argv[1], sys.argv[2:]
name = lambda d: f"{d.hash}-{d.size_bytes}"
for digest in actions:
    action = re.Action()
    with open(f"{cas}/file/{digest}", "rb") as f:
        action.ParseFromString(f.read())
    command = re.Command()
    with open(f"{cas}/file/{name(action.command_digest)}", "rb") as f:
        command.ParseFromString(f.read())
    outputs = list(command.output_paths) or list(command.output_files) + list(command.output_directories)
    print("|".join([digest, name(action.command_digest), name(action.input_root_digest),
                     command.working_directory, " ".join(outputs)]))
EOF
if [ -s "$T/actions.err" ]; then
    sed 's/^/#   /' "$T/actions.err" | tail -n 5
    fail decode_actions "decoding the Actions/Commands read from cas/ failed"
fi
# Exec roots (bazel-out is a symlink to <exec root>/bazel-out): the remote build's, and the
# reference build's for outputs the remote build did not materialize (--remote_download_minimal).
EXECROOT=$(dirname "$(readlink "$WS/bazel-out")")
EXECROOT_LOCAL=$(dirname "$(readlink "$WS_LOCAL/bazel-out")")
mkdir -p "$MNT/scratch/repro" || fail scratch_mkdir "mkdir $MNT/scratch/repro failed"
n=0
reproduced=0
repro_bad=""
while IFS='|' read -r action command root wd outputs; do
    n=$((n + 1))
    dir="$MNT/scratch/repro/$n"
    if ! cp -lr "$CAS/directory/$root" "$dir" 2>"$T/repro-$n.err"; then
        repro_bad+=" $action(cp -lr: $(head -n 1 "$T/repro-$n.err"))"
        continue
    fi
    if [ ! -f "$dir/external/bazel_tools/tools/genrule/genrule-setup.sh" ]; then
        repro_bad+=" $action(no genrule-setup.sh in the input root)"
        continue
    fi
    present=""
    for path in $outputs; do
        [ -e "$dir/${wd:+$wd/}$path" ] && present+=" $path"
    done
    if [ -n "$present" ]; then
        repro_bad+=" $action(outputs already in the input root:$present)"
        continue
    fi
    if ! (cd "$dir" && "$CAS/command/$command") >"$T/repro-$n.log" 2>&1; then
        repro_bad+=" $action(command failed: $(tail -n 1 "$T/repro-$n.log"))"
        continue
    fi
    same=1
    [ -n "$outputs" ] || { same=0; repro_bad+=" $action(the Command names no outputs)"; }
    for path in $outputs; do
        got="$dir/${wd:+$wd/}$path"
        bazel="$EXECROOT/${wd:+$wd/}$path"
        if [ ! -e "$bazel" ] && [ ! -L "$bazel" ]; then
            note "$path: not materialized by Bazel; compared with the reference build's"
            bazel="$EXECROOT_LOCAL/${wd:+$wd/}$path"
        fi
        if ! cmp -s "$got" "$bazel"; then
            same=0
            repro_bad+=" $action($path: $(cmp "$got" "$bazel" 2>&1 | head -n 1))"
        fi
    done
    if [ "$same" = 1 ]; then
        reproduced=$((reproduced + 1))
        note "reproduced action $action ($outputs): input root $root, command $command"
    fi
done <"$T/actions.txt"
if [ "$n" -gt 0 ] && [ "$reproduced" -eq "$n" ] && [ "$n" -eq "${#ACTIONS[@]}" ]; then
    pass actions_reproduced_from_fs
else
    fail actions_reproduced_from_fs "$reproduced of ${#ACTIONS[@]} action(s) reproduced with Bazel's outputs:$repro_bad"
fi
# One script, for the record.
first_command=$(head -n 1 "$T/actions.txt" | cut -d'|' -f2)
if [ -n "$first_command" ]; then
    note "cas/.../command/$first_command:"
    cut -c1-200 "$CAS/command/$first_command" | sed 's/^/#   /'
fi

# --- 4. a digest nobody has ---------------------------------------------------------------------
nothing=$(printf 'clientd-fuse-e2e %s %s' "$$" "$(date +%s%N)" | sha256sum | cut -d' ' -f1)
bad=""
for kind in file executable directory; do
    out=$(stat "$CAS/$kind/$nothing-1234" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ] || [[ "$out" != *"No such file or directory"* ]]; then
        bad+=" $kind: exit $rc, '$out'"
    fi
done
if [ -z "$bad" ]; then
    pass missing_digest_enoent
else
    fail missing_digest_enoent "$bad"
fi

# --- 5. the daemon stayed up; SIGTERM stops it and it unmounts ----------------------------------
if kill -0 "$DAEMON_PID" 2>/dev/null; then
    pass daemon_alive
else
    fail daemon_alive "the daemon died during the test"
    tail -n 30 "$T/daemon.log"
fi
for ws in "$WS" "$WS_LOCAL"; do (cd "$ws" && bz shutdown) >/dev/null 2>&1; done
kill -TERM "$DAEMON_PID" 2>/dev/null
for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$DAEMON_PID" 2>/dev/null; then
    fail daemon_sigterm "still running 10 s after SIGTERM"
else
    wait "$DAEMON_PID"
    status=$?
    DAEMON_PID=""
    if [ "$status" -ne 0 ]; then
        fail daemon_sigterm "exit status $status after SIGTERM"
    elif mounted; then
        fail daemon_sigterm "$MNT is still mounted after the daemon exited"
    else
        pass daemon_sigterm
        note "$(grep -o 'stats: .*' "$T/daemon.log" | tail -n 1)"
    fi
fi

note "total $SECONDS s"
if [ "$FAILURES" -gt 0 ]; then
    # fuser's multi-line "[Not Implemented]" warnings (ioctl, getxattr) left out.
    note "$FAILURES assertion(s) failed; daemon log tail (clientd's own lines):"
    grep -E '^[0-9]{4}-.* clientd' "$T/daemon.log" | tail -n 20 | cut -c1-400 | sed 's/^/#   /'
    exit 1
fi
echo "all passed"
