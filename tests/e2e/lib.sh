# shellcheck shell=bash disable=SC2034 # some of the state is only read by the sourcing scripts
# What the end-to-end scripts (tests/e2e/*.sh, and tests/bench/proxy_latency.sh) have in common.
# Sourced, never executed, after `set -uo pipefail`:
#
#   # shellcheck source-path=SCRIPTDIR source=lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# (tests/.shellcheckrc lets a plain `shellcheck` follow it.)
# Sourcing it sets ROOT (this repository), BAZEL (${BAZEL:-/usr/bin/bazel}), BUILDGRID and
# REMOTE_WORKER (the peers' scripts under tests/peers), FAILURES=0, and the traps: EXIT runs
# cleanup, INT exits 130, TERM exits 143. The state below starts empty; the functions fill it in
# and cleanup reads it, so a script only has to record what it starts:
#   T, MNT          the temp dir (make_tmp) and $T/mnt, where a daemon may mount its file system
#   WS              the workspace bzlog and bz_clean run in (the script sets it)
#   WORKSPACES      Bazel workspaces, shut down at exit (new_workspace appends; or append yourself)
#   CLIENTD         the clientd binary (build_clientd, or set beforehand to test a given binary)
#   DAEMON_PID      the running daemon (start_daemon); DAEMON_SOCKET, the path of its UNIX socket;
#                   ENDPOINT, the HOST:PORT of its first TCP listener, if any; DAEMON_ERROR, why
#                   it did not start
#   DAEMON_DIR      where the daemon's cache/, config/ and daemon.log are (default: $T)
#   DAEMON_RUST_LOG the daemon's RUST_LOG (default info)
#   PEER_PIDS       other processes to stop at exit (run_remote_worker appends the worker)
#   RW_PID          the remote worker's PID (run_remote_worker)
#   BG_DIR          a BuildGrid state dir (tests/peers/buildgrid.sh start DIR): stopped at exit
#   CLEANUP_HOOKS   names of functions cleanup calls after stopping the peers, before unmounting
#
# Results (stdout; tests/run counts the PASS:/FAIL: lines):
#   pass NAME          prints `PASS: NAME`.
#   fail NAME REASON   prints `FAIL: NAME: REASON`; FAILURES += 1.
#   note TEXT...       prints `# TEXT`.
#   die NAME REASON    fail, then exit 1: the rest of the test cannot run. A script may redefine
#                      it (the benchmark does); the functions here call it as `die NAME REASON`.
#   finish             the end of a test: `# total N s`; after any failure their number and the tail
#                      of the daemon log's own lines (if there is a daemon log), exit 1; otherwise
#                      prints `all passed` and returns 0.
# Setup (each dies `setup` or `build` when it cannot be done):
#   need_bazel         $BAZEL is executable.
#   need_fuse          fusermount3 and /dev/fuse exist.
#   install_peer NAME [WHY]  tests/peers/NAME.sh install (idempotent).
#   make_tmp PREFIX    T=$(mktemp -d ${TMPDIR:-/tmp}/PREFIX.XXXXXX) with home/ cache/ config/ in it;
#                      MNT=$T/mnt (not created).
#   build_clientd      unless CLIENTD is set: cargo build --release -p clientd (output in
#                      $T/cargo.log, printed on failure; its time as a note) and
#                      CLIENTD=$ROOT/target/release/clientd.
#   free_port N        prints N distinct free loopback TCP ports, space-separated.
# Processes:
#   cl ARGS...         $CLIENTD ARGS... with the daemon's environment: HOME=$T/home,
#                      XDG_CACHE_HOME=$DAEMON_DIR/cache, XDG_CONFIG_HOME=$DAEMON_DIR/config, NO_COLOR=1.
#   start_daemon [--mount] ARGS...
#                      $CLIENTD ARGS... in the background with that environment and
#                      RUST_LOG=$DAEMON_RUST_LOG, output in $DAEMON_DIR/daemon.log; DAEMON_PID is the
#                      daemon itself (for SIGTERM). Waits up to 30 s for its `serving on unix:PATH`
#                      line, which it logs after every listener is up, and the socket PATH
#                      (DAEMON_SOCKET=PATH; ENDPOINT=HOST:PORT of its first `serving on grpc://`
#                      line, empty without TCP listeners) and, with --mount, for $MNT/scratch and
#                      $MNT in /proc/mounts. Returns 0 when so; otherwise prints the log, sets
#                      DAEMON_ERROR to the reason and returns 1.
#   mounted            whether $MNT is a mount point (the daemon's file system, live or stale).
#   check_daemon_alive pass daemon_alive, or fail it and print the daemon log's tail.
#   sigterm_daemon     SIGTERMs the daemon and waits up to 10 s. Returns 0 when it exited with status
#                      0 (DAEMON_PID cleared) and, if it was started with --mount, $MNT is no longer
#                      mounted; otherwise fails daemon_sigterm (still running, its status, still
#                      mounted) and returns 1. The caller passes daemon_sigterm after its own checks.
#   stop_pid PID       SIGTERM to PID (to its process group when it leads one: a setsid peer and its
#                      children), SIGKILL after 10 s; reaps it when it is a child. 0 always.
#   stop_daemon        stop_pid $DAEMON_PID, then DAEMON_PID="".
#   run_remote_worker DIR PORT
#                      tests/peers/remote_worker.sh start DIR PORT, output in $T/rw-start.log
#                      (printed on failure); RW_PID its PID, recorded in PEER_PIDS. Returns the
#                      script's status.
#   start_remote_worker DIR PORT
#                      the test step: run_remote_worker, then pass worker_start and note its PID,
#                      endpoint and start time; dies worker_start when it does not start.
#   cleanup            the EXIT trap: shuts Bazel down in WORKSPACES, stops the daemon, BuildGrid
#                      (BG_DIR) and PEER_PIDS, runs CLEANUP_HOOKS, unmounts $MNT lazily if it is
#                      mounted, removes $T unless KEEP_TMP is set (or $MNT is still mounted); exits
#                      with the script's status. INT and TERM are ignored while it runs.
# Bazel:
#   bz ARGS...         $BAZEL ARGS... with everything of its own under $T: HOME=$T/home (no
#                      ~/.bazelrc) and --output_user_root=$T/bazel-root, or $T/bazel-root-NAME
#                      when BAZEL_SERVER=NAME: a Bazel server of its own (list every NAME used in
#                      BAZEL_SERVERS, for bz_shutdown).
#   new_workspace DIR [LINE...]
#                      DIR with an empty WORKSPACE and a .bazelrc as the README tells users of
#                      Debian's Bazel: $JVM_LINE (need_netty_epoll), `try-import
#                      %workspace%/clientd.bazelrc`, no --sandbox_debug, plain output; then the
#                      LINEs. Appended to WORKSPACES.
#   need_netty_epoll   tests/peers/netty_epoll.sh install (idempotent; dies `setup` if it fails) and
#                      JVM_LINE, the .bazelrc line that gives Debian's Bazel 4.2.3 netty's epoll JNI
#                      library: without it, unix: targets crash that Bazel.
#   write_fragment ARGS...
#                      `clientd bazelrc --bazel-version 4.2.3 --output $WS/clientd.bazelrc ARGS...`
#                      (the daemon's own answer: its socket, listeners, mount and clusters) and
#                      notes the fragment; dies `fragment` when it fails.
#   bzlog [-C DIR] LOG ARGS...
#                      bz ARGS... in DIR (default $WS), all output in $T/LOG.log; notes
#                      `ARG1 LOG: exit RC in N s; <process summary>`; returns Bazel's status.
#   bz_clean LOG       bazel clean in $WS, output in $T/LOG.log; dies `clean` when it fails.
#   bz_shutdown        bazel shutdown in each of WORKSPACES that exists, in the default server and
#                      each of BAZEL_SERVERS (quietly, never fails).
#   summary_line LOG   Bazel's last `INFO: N processes: ...` line in the file LOG.
#   count LOG KIND     the number that line gives for KIND ("remote cache hit", "remote",
#                      "internal", ...; 0 if absent), or for "total", "non-internal" (all but
#                      internal) or "executed" (all but internal and remote cache hit); -1 when
#                      LOG has no such line.
#   show_log LOG [N]   notes the last N (default 30) lines of $T/LOG.log, cut at 400 characters.
#   exec_log JSON      the spawns of Bazel's --execution_log_json_file JSON (a stream of JSON
#                      objects, not one document), one compact JSON object per line.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BAZEL=${BAZEL:-/usr/bin/bazel}
BUILDGRID="$ROOT/tests/peers/buildgrid.sh"
REMOTE_WORKER="$ROOT/tests/peers/remote_worker.sh"
CLIENTD=${CLIENTD:-}
FAILURES=0
T=""
MNT=""
WS=""
WORKSPACES=()
BAZEL_SERVER=""
BAZEL_SERVERS=()
DAEMON_PID=""
DAEMON_DIR=""
DAEMON_RUST_LOG=info
DAEMON_ERROR=""
DAEMON_MOUNT=""
ENDPOINT=""
DAEMON_SOCKET=""
JVM_LINE=""
PEER_PIDS=()
RW_PID=""
BG_DIR=""
CLEANUP_HOOKS=()

# --- results -------------------------------------------------------------------------------------
pass() { printf 'PASS: %s\n' "$1"; }
fail() { printf 'FAIL: %s: %s\n' "$1" "$2"; FAILURES=$((FAILURES + 1)); }
note() { printf '# %s\n' "$*"; }
die() { fail "$1" "$2"; exit 1; }

finish() {
    note "total $SECONDS s"
    if [ "$FAILURES" -gt 0 ]; then
        local log="${DAEMON_DIR:-$T}/daemon.log"
        if [ -f "$log" ]; then
            # Timestamped lines of clientd's own targets: fuser's multi-line warnings left out.
            note "$FAILURES assertion(s) failed; daemon log tail (clientd's own lines):"
            grep -E '^[0-9]{4}-.* clientd' "$log" | tail -n 20 | cut -c1-400 | sed 's/^/#   /'
        else
            note "$FAILURES assertion(s) failed"
        fi
        exit 1
    fi
    echo "all passed"
}

# --- setup ---------------------------------------------------------------------------------------
need_bazel() { [ -x "$BAZEL" ] || die setup "$BAZEL not found: run tests/setup.sh"; }

need_fuse() {
    command -v fusermount3 >/dev/null || die setup "fusermount3 not found: run tests/setup.sh (fuse3)"
    [ -e /dev/fuse ] || die setup "/dev/fuse does not exist"
}

install_peer() {
    bash "$ROOT/tests/peers/$1.sh" install || die setup "tests/peers/$1.sh install failed${2:+ ($2)}"
}

make_tmp() {
    T=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX") || die setup "mktemp failed"
    MNT="$T/mnt"
    mkdir -p "$T/home" "$T/cache" "$T/config"
}

build_clientd() {
    [ -z "$CLIENTD" ] || return 0
    local start=$SECONDS
    if ! (cd "$ROOT" && cargo build --release -p clientd) >"$T/cargo.log" 2>&1; then
        cat "$T/cargo.log"
        die build "cargo build --release -p clientd failed"
    fi
    note "cargo build: $((SECONDS - start)) s"
    CLIENTD="$ROOT/target/release/clientd"
}

free_port() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
' "$1"
}

# --- processes -----------------------------------------------------------------------------------
cl() {
    local dir=${DAEMON_DIR:-$T}
    HOME="$T/home" XDG_CACHE_HOME="$dir/cache" XDG_CONFIG_HOME="$dir/config" NO_COLOR=1 "$CLIENTD" "$@"
}

# daemon_listening DIR: reads DAEMON_SOCKET and ENDPOINT from DIR/daemon.log; whether the daemon
# said it serves on its socket, and the socket is there.
daemon_listening() {
    ENDPOINT=$(grep -o 'serving on grpc://[0-9.]*:[0-9]*' "$1/daemon.log" 2>/dev/null | head -n 1 | sed 's|^serving on grpc://||')
    DAEMON_SOCKET=$(sed -n 's|.*serving on unix:\(.*[^[:space:]]\)[[:space:]]*$|\1|p' "$1/daemon.log" 2>/dev/null | head -n 1)
    [ -n "$DAEMON_SOCKET" ] && [ -S "$DAEMON_SOCKET" ]
}

start_daemon() {
    local mount="" dir=${DAEMON_DIR:-$T} _
    if [ "${1:-}" = --mount ]; then
        mount=1
        shift
    fi
    DAEMON_MOUNT=$mount
    mkdir -p "$dir/cache" "$dir/config"
    # The command itself in the background (not a function like cl): $! is the daemon.
    HOME="$T/home" XDG_CACHE_HOME="$dir/cache" XDG_CONFIG_HOME="$dir/config" NO_COLOR=1 \
        RUST_LOG="$DAEMON_RUST_LOG" "$CLIENTD" "$@" >"$dir/daemon.log" 2>&1 &
    DAEMON_PID=$!
    ENDPOINT=""
    DAEMON_SOCKET=""
    DAEMON_ERROR=""
    for _ in $(seq 300); do
        daemon_listening "$dir" && { [ -z "$mount" ] || [ -d "$MNT/scratch" ]; } && break
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! daemon_listening "$dir" || { [ -n "$mount" ] && [ ! -d "$MNT/scratch" ]; }; then
        cat "$dir/daemon.log"
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            DAEMON_ERROR="no 'serving on unix:' line and socket${mount:+ or no $MNT/scratch} within 30 s"
        else
            wait "$DAEMON_PID"
            DAEMON_ERROR="daemon exited with status $? before listening"
        fi
        return 1
    fi
    if [ -n "$mount" ] && ! mounted; then
        DAEMON_ERROR="$MNT/scratch exists but $MNT is not in /proc/mounts"
        return 1
    fi
}

mounted() {
    [ -n "$MNT" ] && awk -v m="$MNT" '$2 == m { found = 1 } END { exit !found }' /proc/mounts
}

check_daemon_alive() {
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        pass daemon_alive
    else
        fail daemon_alive "the daemon died during the test"
        tail -n 30 "${DAEMON_DIR:-$T}/daemon.log"
    fi
}

sigterm_daemon() {
    local status _
    kill -TERM "$DAEMON_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        fail daemon_sigterm "still running 10 s after SIGTERM"
        return 1
    fi
    wait "$DAEMON_PID"
    status=$?
    DAEMON_PID=""
    if [ "$status" -ne 0 ]; then
        fail daemon_sigterm "exit status $status after SIGTERM"
        return 1
    fi
    if [ -n "$DAEMON_MOUNT" ] && mounted; then
        fail daemon_sigterm "$MNT is still mounted after the daemon exited"
        return 1
    fi
}

stop_pid() {
    local pid=$1 target=$1 _
    kill -0 "$pid" 2>/dev/null || return 0
    [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] && target="-$pid"
    kill -TERM -- "$target" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        note "process $pid ignored SIGTERM for 10 s; killing it"
        kill -KILL -- "$target" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

stop_daemon() {
    [ -n "$DAEMON_PID" ] && stop_pid "$DAEMON_PID"
    DAEMON_PID=""
}

run_remote_worker() {
    local rc
    bash "$REMOTE_WORKER" start "$1" "$2" >"$T/rw-start.log" 2>&1
    rc=$?
    if [ -f "$1/worker.pid" ]; then
        RW_PID=$(cat "$1/worker.pid")
        PEER_PIDS+=("$RW_PID")
    fi
    [ "$rc" -eq 0 ] || cat "$T/rw-start.log"
    return "$rc"
}

start_remote_worker() {
    local start=$SECONDS
    run_remote_worker "$1" "$2" || die worker_start "the remote worker did not start on 127.0.0.1:$2"
    pass worker_start
    note "remote worker pid $RW_PID at grpc://127.0.0.1:$2 ($((SECONDS - start)) s)"
}

cleanup() {
    local rc=$? pid hook
    trap - EXIT
    trap '' INT TERM
    bz_shutdown
    stop_daemon
    # BuildGrid: `stop` signals the PID in its pid file (after checking it still is that server).
    [ -z "$BG_DIR" ] || bash "$BUILDGRID" stop "$BG_DIR" >/dev/null 2>&1
    for pid in "${PEER_PIDS[@]}"; do stop_pid "$pid"; done
    for hook in "${CLEANUP_HOOKS[@]}"; do "$hook"; done
    # The daemon unmounts when it stops; a daemon that was killed leaves the mount behind.
    if mounted; then
        note "$MNT is still mounted; fusermount3 -u -z"
        fusermount3 -u -z "$MNT" 2>/dev/null
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

# --- Bazel ---------------------------------------------------------------------------------------
# The output user root of BAZEL_SERVER's Bazel server.
bazel_root() { echo "$T/bazel-root${BAZEL_SERVER:+-$BAZEL_SERVER}"; }

bz() {
    HOME="$T/home" "$BAZEL" --output_user_root="$(bazel_root)" "$@"
}

need_netty_epoll() {
    install_peer netty_epoll "Debian's Bazel needs it for unix: targets"
    JVM_LINE="startup --host_jvm_args=-Djava.library.path=$(bash "$ROOT/tests/peers/netty_epoll.sh" dir):/usr/share/bazel"
}

new_workspace() {
    local dir=$1
    shift
    need_netty_epoll
    mkdir -p "$dir"
    : >"$dir/WORKSPACE"
    {
        echo "# Debian's Bazel 4.2.3 lacks netty's epoll library, without which unix: targets crash it."
        echo "$JVM_LINE"
        echo "# clientd bazelrc writes it; --config=clientd uses it."
        echo 'try-import %workspace%/clientd.bazelrc'
        echo "# Debian's /etc/bazel/bazelrc turns --sandbox_debug on; it keeps sandboxes around."
        echo 'build --nosandbox_debug'
        echo 'build --color=no --curses=no --show_progress_rate_limit=60'
        [ "$#" -eq 0 ] || printf '%s\n' "$@"
    } >"$dir/.bazelrc"
    WORKSPACES+=("$dir")
}

write_fragment() {
    if ! cl bazelrc --bazel-version 4.2.3 --output "$WS/clientd.bazelrc" "$@" 2>"$T/fragment.err"; then
        cat "$T/fragment.err"
        die fragment "clientd bazelrc $* failed"
    fi
    note "clientd bazelrc $*: $(grep -v '^#' "$WS/clientd.bazelrc" | sed 's/^build:clientd //' | tr '\n' ' ')"
}

bzlog() {
    local dir=$WS log t0=$SECONDS rc
    if [ "$1" = -C ]; then
        dir=$2
        shift 2
    fi
    log=$1
    shift
    (cd "$dir" && bz "$@") >"$T/$log.log" 2>&1
    rc=$?
    note "$1 $log: exit $rc in $((SECONDS - t0)) s; $(summary_line "$T/$log.log")"
    return "$rc"
}

bz_clean() {
    local log="$T/$1.log"
    (cd "$WS" && bz clean) >"$log" 2>&1 || { cat "$log"; die clean "bazel clean failed"; }
}

bz_shutdown() {
    local ws BAZEL_SERVER
    for BAZEL_SERVER in "" "${BAZEL_SERVERS[@]}"; do
        # No root, no server: `bazel shutdown` would only unpack Bazel there.
        [ -d "$(bazel_root)" ] || continue
        for ws in "${WORKSPACES[@]}"; do
            [ -d "$ws" ] && (cd "$ws" && bz shutdown >/dev/null 2>&1)
        done
    done
    return 0
}

summary_line() { grep -E '^INFO: [0-9]+ process(es)?: ' "$1" | tail -n 1; }

# Bazel's summary looks like "INFO: 22 processes: 1 internal, 21 remote cache hit." (or
# "... 21 linux-sandbox.", "... 21 remote.").
count() {
    summary_line "$1" | python3 -c '
import re, sys
m = re.match(r"INFO: (\d+) process(?:es)?: (.*?)\.?$", sys.stdin.read().strip())
if not m:
    print(-1); sys.exit()
parts = {}
for part in m.group(2).split(","):
    n, _, kind = part.strip().partition(" ")
    parts[kind] = parts.get(kind, 0) + int(n)
kind = sys.argv[1]
if kind == "total":
    print(m.group(1))
elif kind == "non-internal":
    print(sum(n for k, n in parts.items() if k != "internal"))
elif kind == "executed":
    print(sum(n for k, n in parts.items() if k not in ("internal", "remote cache hit")))
else:
    print(parts.get(kind, 0))
' "$2"
}

show_log() { note "last lines of $1:"; tail -n "${2:-30}" "$T/$1.log" | cut -c1-400 | sed 's/^/#   /'; }

exec_log() {
    python3 - "$1" <<'EOF'
import json, sys
text, decoder, i = open(sys.argv[1]).read(), json.JSONDecoder(), 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    spawn, i = decoder.raw_decode(text, i)
    print(json.dumps(spawn))
EOF
}
