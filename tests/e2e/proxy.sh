#!/usr/bin/env bash
# End-to-end proof of the proxy: real Bazel 4.2.3 (Debian's bazel-bootstrap) talks to one clientd
# daemon that routes to three clusters at once by instance-name prefix:
#
#   bg.example.com   -> BuildGrid 0.4.4 (tests/peers/buildgrid.sh; instances `main` and `direct`),
#                       a real remote cache whose per-RPC counters are the independent witness
#   rw.example.com   -> Bazel's own remote worker (tests/peers/remote_worker.sh), cache + execution
#   dead.example.com -> a loopback port nothing listens on
#
# 1. Remote cache, direct vs through clientd. Bazel -> BuildGrid directly (instance `direct`):
#    cold build, clean + warm build (all remote cache hits), clean + --noremote_accept_cached build.
#    The same three builds through clientd (instance bg.example.com/main). Through clientd the warm
#    build must be all hits with outputs byte-identical to the direct build's, and must read fewer
#    blobs from BuildGrid than the direct warm build did (clientd serves them from its local CAS);
#    the --noremote_accept_cached build must ask BuildGrid about fewer digests than the direct one
#    (clientd's existence cache answers). BuildGrid must see instance `main`, never the prefixed name.
# 2. Remote execution through clientd (rw.example.com/x): //ok/... runs remotely with correct
#    outputs; a failing genrule fails the build with its exit code and stderr.
# 3. Each cluster gets only its own traffic: BuildGrid's counters do not move during remote
#    execution; the remote worker stores nothing and gets no connection during the BuildGrid phases.
# 4. A cluster that is down fails the build quickly with an error naming the cluster and its
#    endpoint; local/x keeps working.
# 5. SIGTERM stops the daemon cleanly and it logs its `stats:` line.
#
# Needs: tests/setup.sh (bazel-bootstrap), cargo, python3 >= 3.11; installs the peers itself
# (tests/peers/*.sh install, idempotent). CLIENTD=/path/to/clientd tests a given binary instead of
# building this tree's. KEEP_TMP=1 keeps the temp dir (logs, BuildGrid and worker state).
# Prints `PASS: name` / `FAIL: name: reason` per assertion and `# ...` notes; exits non-zero on any
# failure.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BAZEL=${BAZEL:-/usr/bin/bazel}
BUILDGRID="$ROOT/tests/peers/buildgrid.sh"
REMOTE_WORKER="$ROOT/tests/peers/remote_worker.sh"
FAILURES=0
T=""
DAEMON_PID=""
BG_DIR=""
RW_PID=""
WS=""

pass() { printf 'PASS: %s\n' "$1"; }
fail() { printf 'FAIL: %s: %s\n' "$1" "$2"; FAILURES=$((FAILURES + 1)); }
note() { printf '# %s\n' "$*"; }
# Fatal: the rest of the test cannot run.
die() { fail "$1" "$2"; exit 1; }

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
    if [ -n "$WS" ] && [ -d "$WS" ]; then
        (cd "$WS" && bz shutdown >/dev/null 2>&1) || true
    fi
    stop_daemon
    [ -n "$DAEMON_PID" ] && wait "$DAEMON_PID" 2>/dev/null
    # BuildGrid: `stop` signals the PID in its pid file (after checking it still is that server).
    if [ -n "$BG_DIR" ] && [ -f "$BG_DIR/buildgrid.pid" ]; then
        bash "$BUILDGRID" stop "$BG_DIR" || true
    fi
    # The remote worker leads its own process group (setsid): its PID stops it and its actions.
    if [ -n "$RW_PID" ] && kill -0 "$RW_PID" 2>/dev/null; then
        kill -TERM -- "-$RW_PID" 2>/dev/null || kill -TERM "$RW_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$RW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$RW_PID" 2>/dev/null && kill -KILL -- "-$RW_PID" 2>/dev/null
    fi
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ -n "${KEEP_TMP:-}" ]; then
            note "kept $T"
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

# --- peers, clientd ---------------------------------------------------------------------------
[ -x "$BAZEL" ] || die setup "$BAZEL not found: run tests/setup.sh"
bash "$BUILDGRID" install || die setup "tests/peers/buildgrid.sh install failed"
bash "$REMOTE_WORKER" install || die setup "tests/peers/remote_worker.sh install failed"

T=$(mktemp -d "${TMPDIR:-/tmp}/clientd-e2e-proxy.XXXXXX")
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

# Four distinct free loopback ports: BuildGrid, the remote worker, clientd, and one left dead.
read -r BG_PORT RW_PORT PORT DEAD_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
BG_ENDPOINT="127.0.0.1:$BG_PORT"
RW_ENDPOINT="127.0.0.1:$RW_PORT"
DEAD_ENDPOINT="127.0.0.1:$DEAD_PORT"

# Both peers start at once (BuildGrid's watchdog follows this script, not the subshell).
BG_DIR="$T/bg"
RW_DIR="$T/rw"
start=$SECONDS
BUILDGRID_WATCH_PID=$$ bash "$BUILDGRID" start "$BG_DIR" "$BG_PORT" main direct >"$T/bg-start.log" 2>&1 &
bg_starter=$!
bash "$REMOTE_WORKER" start "$RW_DIR" "$RW_PORT" >"$T/rw-start.log" 2>&1 &
rw_starter=$!
wait "$bg_starter"
bg_rc=$?
wait "$rw_starter"
rw_rc=$?
[ -f "$RW_DIR/worker.pid" ] && RW_PID=$(cat "$RW_DIR/worker.pid")
if [ "$bg_rc" -ne 0 ]; then
    cat "$T/bg-start.log"
    die peers_start "BuildGrid did not start on $BG_ENDPOINT"
fi
if [ "$rw_rc" -ne 0 ]; then
    cat "$T/rw-start.log"
    die peers_start "the remote worker did not start on $RW_ENDPOINT"
fi
pass peers_start
note "BuildGrid pid $(cat "$BG_DIR/buildgrid.pid") at grpc://$BG_ENDPOINT, remote worker pid $RW_PID at grpc://$RW_ENDPOINT ($((SECONDS - start)) s)"

HOME="$T/home" XDG_CACHE_HOME="$T/cache" XDG_CONFIG_HOME="$T/config" NO_COLOR=1 RUST_LOG=info \
    "$CLIENTD" serve --no-mount --tcp-listen "127.0.0.1:$PORT" \
    --cluster "bg.example.com=grpc://$BG_ENDPOINT" \
    --cluster "rw.example.com=grpc://$RW_ENDPOINT" \
    --cluster "dead.example.com=grpc://$DEAD_ENDPOINT" \
    >"$T/daemon.log" 2>&1 &
DAEMON_PID=$!

ENDPOINT=""
for _ in $(seq 300); do
    ENDPOINT=$(grep -o 'serving on grpc://[0-9.]*:[0-9]*' "$T/daemon.log" | head -n 1 | sed 's|^serving on grpc://||')
    [ -n "$ENDPOINT" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ENDPOINT" ]; then
    cat "$T/daemon.log"
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        die daemon_start "no 'serving on grpc://' line within 30 s"
    fi
    wait "$DAEMON_PID"
    die daemon_start "daemon exited with status $? before listening"
fi
pass daemon_start
note "daemon pid $DAEMON_PID at grpc://$ENDPOINT"

# --- the workspace ----------------------------------------------------------------------------
WS="$T/ws"
mkdir -p "$WS/ok" "$WS/fail"
: >"$WS/WORKSPACE"
cat >"$WS/.bazelrc" <<'EOF'
# Debian's /etc/bazel/bazelrc turns --sandbox_debug on; it keeps sandboxes around.
build --nosandbox_debug
build --color=no --curses=no --show_progress_rate_limit=60 --remote_timeout=30
EOF
cat >"$WS/ok/BUILD" <<'EOF'
# Generated by tests/e2e/proxy.sh
genrule(name = "alpha", outs = ["alpha.txt"], cmd = "echo alpha through the proxy > $@")
genrule(name = "beta", outs = ["beta.txt"], cmd = "echo beta through the proxy > $@")
genrule(name = "gamma", outs = ["gamma.txt"], cmd = "echo gamma through the proxy > $@")

# 3 MiB, deterministic: more than one 1 MiB ByteStream chunk.
genrule(
    name = "big",
    outs = ["big.bin"],
    # genrule-setup.sh sets pipefail, and `yes` dies of SIGPIPE when head has enough.
    cmd = "{ yes clientd-proxy-e2e-big-blob || true; } | head -c 3145728 > $@",
)

genrule(
    name = "big_sum",
    srcs = [":big"],
    outs = ["big.sha256"],
    cmd = "sha256sum < $< | cut -d' ' -f1 > $@",
)

genrule(
    name = "combined",
    srcs = [":alpha", ":beta", ":gamma", ":big_sum"],
    outs = ["combined.txt"],
    cmd = "cat $(SRCS) | tr a-z A-Z > $@",
)
EOF
cat >"$WS/fail/BUILD" <<'EOF'
# Generated by tests/e2e/proxy.sh: outside //ok/..., fails on purpose.
genrule(name = "boom", outs = ["boom.txt"], cmd = "echo boom >&2; exit 3")
EOF
N_OK=$(grep -c '^genrule(' "$WS/ok/BUILD")
note "workspace $WS: $N_OK genrules in //ok, one failing in //fail"

BG_CACHE=(--remote_cache="grpc://$BG_ENDPOINT")
VIA_CLIENTD=(--remote_cache="grpc://$ENDPOINT")

summary_line() { grep -E '^INFO: [0-9]+ process(es)?: ' "$1" | tail -n 1; }

# bzlog LOG TARGETS FLAGS...: runs `bazel build`, output in $T/LOG.log; returns Bazel's status.
bzlog() {
    local log=$1 target=$2
    shift 2
    local t0=$SECONDS rc
    (cd "$WS" && bz build "$target" "$@") >"$T/$log.log" 2>&1
    rc=$?
    note "build $log: exit $rc in $((SECONDS - t0)) s; $(summary_line "$T/$log.log")"
    return "$rc"
}

clean() {
    (cd "$WS" && bz clean) >"$T/clean.log" 2>&1 || { cat "$T/clean.log"; die clean "bazel clean failed"; }
}

# count LOG KIND: the number Bazel's process summary gives for KIND ("remote cache hit", "remote",
# "internal", ...; "non-internal" sums all but internal). -1 when there is no summary.
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
if sys.argv[1] == "non-internal":
    print(sum(n for k, n in parts.items() if k != "internal"))
else:
    print(parts.get(sys.argv[1], 0))
' "$2"
}

# all_of LOG KIND: every non-internal process of the build was KIND, and there were N_OK of them.
all_of() {
    local n others
    n=$(count "$1" "$2")
    others=$(count "$1" non-internal)
    [ "$n" -eq "$N_OK" ] && [ "$others" -eq "$n" ]
}

checksums() { (cd "$WS/bazel-bin/ok" && find -L . -type f | sort | xargs -r sha256sum); }

show_log() { note "last lines of $1:"; tail -n "${2:-30}" "$T/$1.log" | cut -c1-400 | sed 's/^/#   /'; }

# bg_snap NAME [INSTANCE]: BuildGrid's cumulative per-RPC counters (all instances, or INSTANCE) into $T/NAME.bg.
bg_snap() {
    local name=$1
    shift
    bash "$BUILDGRID" count "$BG_DIR" "$@" >"$T/$name.bg" || die buildgrid_count "buildgrid.sh count failed"
}
# bg_delta BEFORE AFTER [KEY...]: the growth of the sum of KEYs (all counters when none) between snapshots.
bg_delta() {
    local before=$1 after=$2
    shift 2
    awk -v keys="$*" '
        BEGIN { n = split(keys, k, " "); for (i = 1; i <= n; i++) want[k[i]] = 1 }
        FNR == NR { a[$1] = $2; next }
        (n == 0 || ($1 in want)) { s += $2 - a[$1] }
        END { print s + 0 }' "$T/$before.bg" "$T/$after.bg"
}
# bg_changes BEFORE AFTER: the counters that moved, "name +N" each.
bg_changes() {
    awk 'FNR == NR { a[$1] = $2; next } $2 != a[$1] { printf "%s +%d ", $1, $2 - a[$1] }' "$T/$1.bg" "$T/$2.bg"
}

# The remote worker: files it has stored (CAS and action cache both live under DIR/cas) and
# TCP connections established to its port.
rw_files() { find "$RW_DIR/cas" -type f | wc -l; }
rw_connections() { ss -Htn state established "( dport = :$RW_PORT or sport = :$RW_PORT )" | wc -l; }
RW_FILES0=$(rw_files)

# --- 1a. baseline: Bazel -> BuildGrid directly, instance `direct` -----------------------------
DIRECT=("${BG_CACHE[@]}" --remote_instance_name=direct)
bzlog direct_cold //ok/... "${DIRECT[@]}" || { show_log direct_cold 40; die direct_cold "direct build against BuildGrid failed"; }
checksums >"$T/sums_direct"
if [ "$(wc -c <"$WS/bazel-bin/ok/big.bin")" -eq 3145728 ] && grep -qx 'ALPHA THROUGH THE PROXY' "$WS/bazel-bin/ok/combined.txt" &&
    [ "$(tail -n 1 "$WS/bazel-bin/ok/combined.txt")" = "$(sha256sum <"$WS/bazel-bin/ok/big.bin" | cut -d' ' -f1 | tr '[:lower:]' '[:upper:]')" ]; then
    pass direct_outputs
else
    fail direct_outputs "bazel-bin/ok/big.bin is not 3 MiB or combined.txt is not what the genrules make"
fi
n=$(count "$T/direct_cold.log" non-internal)
[ "$n" -eq "$N_OK" ] || note "direct cold build ran $n processes, expected $N_OK"
clean
bg_snap d1 direct
bzlog direct_warm //ok/... "${DIRECT[@]}" || { show_log direct_warm 40; die direct_warm "direct build against BuildGrid failed"; }
bg_snap d2 direct
all_of "$T/direct_warm.log" "remote cache hit" || note "direct warm build was not all remote cache hits: $(summary_line "$T/direct_warm.log")"
clean
bg_snap d3 direct
bzlog direct_noaccept //ok/... "${DIRECT[@]}" --noremote_accept_cached ||
    { show_log direct_noaccept 40; die direct_noaccept "direct build against BuildGrid failed"; }
bg_snap d4 direct
DIRECT_READS=$(bg_delta d1 d2 bytestream_reads batch_read_digests)
DIRECT_FMD=$(bg_delta d3 d4 find_missing_digests)
note "direct: warm build read $DIRECT_READS blob(s) from BuildGrid ($(bg_changes d1 d2))"
note "direct: --noremote_accept_cached build asked about $DIRECT_FMD digest(s) ($(bg_changes d3 d4))"

# --- 1b. the same through clientd, instance bg.example.com/main -------------------------------
PROXY=("${VIA_CLIENTD[@]}" --remote_instance_name=bg.example.com/main)
bg_snap all0
bg_snap m0 main
bg_snap p0 bg.example.com/main
clean
if bzlog proxy_cold //ok/... "${PROXY[@]}"; then
    pass proxy_cold_build
else
    show_log proxy_cold 40
    tail -n 30 "$T/daemon.log"
    die proxy_cold_build "bazel build through clientd (bg.example.com/main) failed"
fi
warnings=$(grep -cE 'WARNING: .*([Rr]emote|[Uu]pload|[Cc]ache)' "$T/proxy_cold.log")
if [ "$warnings" -eq 0 ]; then
    pass proxy_cold_no_remote_warnings
else
    fail proxy_cold_no_remote_warnings "$warnings remote cache warning(s) in the cold build through clientd"
    grep -E 'WARNING: .*([Rr]emote|[Uu]pload|[Cc]ache)' "$T/proxy_cold.log" | head -n 5 | cut -c1-400 | sed 's/^/#   /'
fi

clean
bg_snap m1 main
bzlog proxy_warm //ok/... "${PROXY[@]}" || { show_log proxy_warm 40; fail proxy_warm_build "warm build through clientd failed"; }
bg_snap m2 main
if all_of "$T/proxy_warm.log" "remote cache hit"; then
    pass proxy_warm_all_hits
else
    fail proxy_warm_all_hits "expected $N_OK remote cache hits and nothing else: $(summary_line "$T/proxy_warm.log")"
fi
checksums >"$T/sums_proxy"
if [ -s "$T/sums_direct" ] && cmp -s "$T/sums_direct" "$T/sums_proxy"; then
    pass proxy_warm_outputs_identical_to_direct
else
    fail proxy_warm_outputs_identical_to_direct "sha256sums of bazel-bin/ok differ from the direct build's"
    diff "$T/sums_direct" "$T/sums_proxy" | head -n 20 | sed 's/^/#   /'
fi
PROXY_READS=$(bg_delta m1 m2 bytestream_reads batch_read_digests)
note "through clientd: warm build read $PROXY_READS blob(s) from BuildGrid, direct $DIRECT_READS ($(bg_changes m1 m2))"
if [ "$PROXY_READS" -lt "$DIRECT_READS" ]; then
    pass proxy_warm_fewer_upstream_reads
else
    fail proxy_warm_fewer_upstream_reads "BuildGrid served $PROXY_READS blob read(s) through clientd, $DIRECT_READS directly"
fi

clean
bg_snap m3 main
bzlog proxy_noaccept //ok/... "${PROXY[@]}" --noremote_accept_cached ||
    { show_log proxy_noaccept 40; fail proxy_noaccept_build "--noremote_accept_cached build through clientd failed"; }
bg_snap m4 main
PROXY_FMD=$(bg_delta m3 m4 find_missing_digests)
note "through clientd: --noremote_accept_cached build asked BuildGrid about $PROXY_FMD digest(s), direct $DIRECT_FMD ($(bg_changes m3 m4))"
if [ "$PROXY_FMD" -lt "$DIRECT_FMD" ]; then
    pass proxy_fewer_find_missing
else
    fail proxy_fewer_find_missing "BuildGrid got $PROXY_FMD FindMissingBlobs digest(s) through clientd, $DIRECT_FMD directly"
fi
checksums >"$T/sums_proxy_noaccept"
cmp -s "$T/sums_direct" "$T/sums_proxy_noaccept" || fail proxy_noaccept_outputs "outputs of the --noremote_accept_cached build differ"

bg_snap all1
bg_snap m5 main
bg_snap p1 bg.example.com/main
main_calls=$(bg_delta m0 m5)
prefixed_calls=$(bg_delta p0 p1)
all_calls=$(bg_delta all0 all1)
note "BuildGrid during the clientd phase: $all_calls call(s), $main_calls for instance \"main\", $prefixed_calls for \"bg.example.com/main\""
if [ "$main_calls" -gt 0 ] && [ "$prefixed_calls" -eq 0 ] && [ "$all_calls" -eq "$main_calls" ]; then
    pass buildgrid_sees_stripped_instance
else
    fail buildgrid_sees_stripped_instance "expected every call for \"main\": $all_calls in all, $main_calls for main, $prefixed_calls for bg.example.com/main"
fi

# --- 3a. the remote worker got nothing during the BuildGrid phases ----------------------------
rw_files1=$(rw_files)
rw_conns1=$(rw_connections)
if [ "$rw_files1" -eq "$RW_FILES0" ] && [ "$rw_conns1" -eq 0 ]; then
    pass remote_worker_idle_during_buildgrid_phases
else
    fail remote_worker_idle_during_buildgrid_phases "worker files $RW_FILES0 -> $rw_files1, $rw_conns1 established connection(s) to $RW_ENDPOINT"
fi

# --- 2. remote execution through clientd, instance rw.example.com/x ----------------------------
EXEC=(--remote_executor="grpc://$ENDPOINT" --remote_instance_name=rw.example.com/x --spawn_strategy=remote)
bg_snap e0
clean
if bzlog exec_ok //ok/... "${EXEC[@]}"; then
    pass remote_execution_build
else
    show_log exec_ok 40
    tail -n 30 "$T/daemon.log" | sed 's/^/#   /'
    fail remote_execution_build "bazel build //ok/... with --remote_executor through clientd failed"
fi
if all_of "$T/exec_ok.log" remote; then
    pass remote_execution_all_remote
else
    fail remote_execution_all_remote "expected $N_OK processes run remotely: $(summary_line "$T/exec_ok.log")"
fi
checksums >"$T/sums_exec"
if cmp -s "$T/sums_direct" "$T/sums_exec"; then
    pass remote_execution_outputs_identical
else
    fail remote_execution_outputs_identical "outputs of the remote execution differ from the direct build's"
    diff "$T/sums_direct" "$T/sums_exec" | head -n 20 | sed 's/^/#   /'
fi

bzlog exec_fail //fail:boom "${EXEC[@]}"
rc=$?
grep -E '^ERROR: |^boom$' "$T/exec_fail.log" | cut -c1-300 | sed 's/^/#   /'
if [ "$rc" -ne 0 ] && grep -q '(Exit 3)' "$T/exec_fail.log" && grep -qx 'boom' "$T/exec_fail.log"; then
    pass remote_execution_failure_reported
else
    fail remote_execution_failure_reported "expected a failed build showing '(Exit 3)' and the action's stderr 'boom' (bazel exit $rc)"
    show_log exec_fail 30
fi
# The worker keeps what its actions print: the failing one ran there, not on this side.
boom_hash=$(printf 'boom\n' | sha256sum | cut -d' ' -f1)
if [ -n "$(find "$RW_DIR/cas" -type f -name "$boom_hash")" ]; then
    pass remote_execution_failure_ran_on_worker
else
    fail remote_execution_failure_ran_on_worker "the worker's CAS has no blob 'boom\\n' ($boom_hash)"
fi
rw_files2=$(rw_files)
rw_conns2=$(rw_connections)
note "remote worker stored $((rw_files2 - rw_files1)) file(s) during remote execution; $rw_conns2 established connection end(s) on its port"

# --- 3b. BuildGrid got nothing during remote execution ----------------------------------------
bg_snap e1
moved=$(bg_delta e0 e1)
if [ "$moved" -eq 0 ]; then
    pass buildgrid_idle_during_remote_execution
else
    fail buildgrid_idle_during_remote_execution "BuildGrid counters moved: $(bg_changes e0 e1)"
fi
if [ "$rw_files2" -gt "$rw_files1" ] && [ "$rw_conns2" -gt 0 ]; then
    pass remote_worker_got_the_execution_traffic
else
    fail remote_worker_got_the_execution_traffic "worker files $rw_files1 -> $rw_files2, $rw_conns2 connection end(s) on $RW_ENDPOINT"
fi

# --- 4. a cluster that is down ----------------------------------------------------------------
clean
t0=$(date +%s%N)
bzlog dead //ok/... "${VIA_CLIENTD[@]}" --remote_instance_name=dead.example.com/x
rc=$?
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
note "build against dead.example.com/x: exit $rc after $elapsed_ms ms"
grep -m 3 -E 'ERROR|WARNING|FATAL' "$T/dead.log" | cut -c1-400 | sed 's/^/#   /'
if [ "$rc" -ne 0 ] && [ "$elapsed_ms" -lt 30000 ]; then
    pass dead_cluster_fails_fast
else
    fail dead_cluster_fails_fast "expected a failed build within 30 s: exit $rc after $elapsed_ms ms"
    show_log dead 20
fi
if grep -q 'dead\.example\.com' "$T/dead.log" && grep -qF "$DEAD_ENDPOINT" "$T/dead.log"; then
    pass dead_cluster_error_names_cluster
elif grep -q "cluster dead\.example\.com (grpc://$DEAD_ENDPOINT)" "$T/daemon.log"; then
    note "Bazel's output does not carry the daemon's message; the daemon log does:"
    grep -m 2 "cluster dead\.example\.com" "$T/daemon.log" | cut -c1-400 | sed 's/^/#   /'
    pass dead_cluster_error_names_cluster
else
    fail dead_cluster_error_names_cluster "neither Bazel's output nor the daemon log names dead.example.com and $DEAD_ENDPOINT"
    show_log dead 20
fi

LOCAL=("${VIA_CLIENTD[@]}" --remote_instance_name=local/x)
clean
if bzlog local_cold //ok/... "${LOCAL[@]}" && { clean; bzlog local_warm //ok/... "${LOCAL[@]}"; }; then
    if all_of "$T/local_warm.log" "remote cache hit"; then
        pass local_still_works
    else
        fail local_still_works "expected $N_OK remote cache hits from local/x: $(summary_line "$T/local_warm.log")"
    fi
else
    show_log local_cold 20
    [ -f "$T/local_warm.log" ] && show_log local_warm 20
    fail local_still_works "build with --remote_instance_name=local/x failed"
fi
checksums >"$T/sums_local"
cmp -s "$T/sums_direct" "$T/sums_local" || fail local_outputs "outputs of the local/x build differ from the direct build's"

# --- 5. the daemon stayed up; SIGTERM stops it and it logs its stats ---------------------------
if kill -0 "$DAEMON_PID" 2>/dev/null; then
    pass daemon_alive
else
    fail daemon_alive "the daemon died during the test"
    tail -n 30 "$T/daemon.log"
fi
(cd "$WS" && bz shutdown) >/dev/null 2>&1
kill -TERM "$DAEMON_PID" 2>/dev/null
for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$DAEMON_PID" 2>/dev/null; then
    fail daemon_sigterm "still running 10 s after SIGTERM"
else
    wait "$DAEMON_PID"
    status=$?
    DAEMON_PID=""
    stats=$(grep -o 'stats: .*' "$T/daemon.log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        fail daemon_sigterm "exit status $status after SIGTERM"
    elif [ -z "$stats" ]; then
        fail daemon_sigterm "no 'stats:' line in the daemon log"
    else
        pass daemon_sigterm
        note "$stats"
    fi
fi

note "total $SECONDS s"
if [ "$FAILURES" -gt 0 ]; then
    note "$FAILURES assertion(s) failed; daemon log tail:"
    tail -n 20 "$T/daemon.log" | cut -c1-400 | sed 's/^/#   /'
    exit 1
fi
echo "all passed"
