#!/usr/bin/env bash
# Bazel's own remote worker (CAS, AC, ByteStream, Capabilities, Execution on one gRPC port) as a
# real, independent REAPI upstream for end-to-end tests. Built from Debian's bazel-bootstrap-source
# (src/tools/remote) against the classes in bazel-bootstrap's A-server.jar (Bazel 4.2.3).
#
#   remote_worker.sh install          apt-installs the packages if missing, compiles the worker into
#                                     .tools/remote-worker/ (no-op when already built). Run as root.
#   remote_worker.sh start DIR PORT   starts it in the background on 127.0.0.1:PORT, state under DIR
#                                     (DIR/cas, DIR/work, DIR/tmp), log in DIR/worker.log, PID in
#                                     DIR/worker.pid; returns once the port accepts connections.
#                                     Stop it and any action it runs: kill -- -"$(cat DIR/worker.pid)"
#
# The upstream worker binds every interface and has no flag for the address; since it runs any
# command it is sent, the copy compiled here is patched to bind 127.0.0.1 only.
# It ignores instance names, executes actions unsandboxed as the calling user, rejects any call
# without the build.bazel.remote.execution.v2.requestmetadata-bin header (INVALID_ARGUMENT), has no
# BatchReadBlobs (UNIMPLEMENTED) and no Operations service, ignores ByteStream read_offset/limit,
# and its BatchUpdateBlobs responses leave `digest` empty (match responses by position).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT="$ROOT/.tools/remote-worker"
SERVER_JAR=/usr/share/bazel/A-server.jar
SRC_PKG_ROOT=/usr/src/bazel-bootstrap
WORKER_SRC_REL=src/tools/remote/src/main/java
MAIN_CLASS=com.google.devtools.build.remote.worker.RemoteWorker
START_TIMEOUT=${REMOTE_WORKER_START_TIMEOUT:-60}

log() { printf 'remote_worker: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source-path=SCRIPTDIR source=../install_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../install_lib.sh"

# Where bazel-bootstrap-source put the worker's Java sources.
worker_src_dir() {
    local d="$SRC_PKG_ROOT/$WORKER_SRC_REL"
    if [ ! -d "$d" ]; then
        d=$(dpkg -L bazel-bootstrap-source | grep -m1 "/$WORKER_SRC_REL\$" || true)
    fi
    [ -n "$d" ] && [ -d "$d" ] || die "worker sources ($WORKER_SRC_REL) not found in bazel-bootstrap-source"
    printf '%s\n' "$d"
}

cmd_install() {
    # Fast path: already built (the stamp is written last, after a successful compile).
    if [ -f "$OUT/stamp" ] && [ -f "$SERVER_JAR" ] && [ "$(cat "$OUT/stamp")" = "$(stamp)" ]; then
        return 0
    fi
    apt_install bazel-bootstrap bazel-bootstrap-source
    command -v javac >/dev/null || die "javac not found (bazel-bootstrap should have pulled in a JDK)"

    local src tmp
    src=$(worker_src_dir)
    rm -rf "$OUT"
    mkdir -p "$OUT"
    tmp="$OUT/src"
    cp -r "$src/." "$tmp/"
    # Bind loopback only: upstream uses NettyServerBuilder.forPort (all interfaces), no flag for it.
    local main="$tmp/com/google/devtools/build/remote/worker/RemoteWorker.java"
    grep -q 'NettyServerBuilder.forPort(workerOptions.listenPort)' "$main" \
        || die "cannot patch the listen address: RemoteWorker.java changed"
    sed -i 's/NettyServerBuilder.forPort(workerOptions.listenPort)/NettyServerBuilder.forAddress(new java.net.InetSocketAddress("127.0.0.1", workerOptions.listenPort))/' "$main"

    local files=()
    mapfile -t files < <(find "$tmp" -name '*.java' | sort)
    mkdir -p "$OUT/classes"
    # -proc:none: A-server.jar carries annotation processors (AutoValue, ...) the worker does not use.
    quiet javac -nowarn -proc:none -encoding UTF-8 -cp "$SERVER_JAR" -d "$OUT/classes" "${files[@]}"
    stamp >"$OUT/stamp"
}

# Identifies the inputs of a build: a rebuild happens when Bazel's package version changes.
stamp() {
    dpkg-query -W -f='${Package}=${Version} ' bazel-bootstrap bazel-bootstrap-source 2>/dev/null || true
    printf ' patched-loopback-1\n'
}

# Stop a worker this script started and its actions (its process group): SIGTERM, then SIGKILL
# after 10 s.
stop_pid() {
    local pid=$1 i
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
    [ "$#" -eq 2 ] || die "usage: $0 start DIR PORT"
    local dir port pid i
    dir=$(mkdir -p "$1" && cd "$1" && pwd)
    port=$2
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "bad port: $port"
    [ -f "$OUT/stamp" ] || die "not built; run: $0 install"
    port_open "$port" && die "127.0.0.1:$port is already in use"
    mkdir -p "$dir/cas" "$dir/work" "$dir/tmp"
    rm -f "$dir/worker.ready"

    # --pid_file is written by the worker itself once the gRPC server is bound (and removed when
    # it exits); it is the readiness signal. worker.pid is written here at once so the caller can
    # always kill it.
    # setsid: the worker leads its own process group (PGID = PID), so `kill -- -PID` also stops
    # the actions it is running (a plain kill of the worker leaves them orphaned).
    setsid java -Djava.io.tmpdir="$dir/tmp" -cp "$OUT/classes:$SERVER_JAR" "$MAIN_CLASS" \
        --listen_port="$port" \
        --work_path="$dir/work" \
        --cas_path="$dir/cas" \
        --pid_file="$dir/worker.ready" \
        </dev/null >"$dir/worker.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/worker.pid"

    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$dir/worker.log" >&2 2>/dev/null || true
            die "worker exited during startup (log: $dir/worker.log)"
        fi
        if [ -s "$dir/worker.ready" ] && port_open "$port"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$dir/worker.log" >&2 2>/dev/null || true
    stop_pid "$pid"
    die "worker did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT}s (log: $dir/worker.log)"
}

main() {
    local cmd=${1:-}
    [ "$#" -gt 0 ] && shift
    case "$cmd" in
        install) cmd_install "$@" ;;
        start) cmd_start "$@" ;;
        *) die "usage: $0 install | start DIR PORT" ;;
    esac
}

main "$@"
