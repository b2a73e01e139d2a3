#!/usr/bin/env bash
# BuildGrid 0.4.4 (from PyPI) as a real upstream REAPI cache for end-to-end tests:
# CAS, ActionCache, ByteStream and Capabilities on an insecure 127.0.0.1 port,
# in-memory (!lru-storage / !lru-action-cache), no authorization.
#
# Usage:
#   tests/peers/buildgrid.sh install
#       Idempotently create $ROOT/.tools/buildgrid-venv with buildgrid==0.4.4 and
#       pinned dependencies. Quiet on success; a no-op (no network) once done.
#   tests/peers/buildgrid.sh start DIR PORT [INSTANCE...]
#       Write DIR/buildgrid.yml, start the server in the background (log in
#       DIR/buildgrid.log, PID in DIR/buildgrid.pid) and wait until it serves.
#       One in-memory CAS + ActionCache per INSTANCE name (default: the empty
#       name ""); other instance names get INVALID_ARGUMENT. Runs `install` first.
#       The server stops by itself (SIGTERM) when the process BUILDGRID_WATCH_PID
#       exits; that defaults to the caller of this script (its parent), and 0
#       disables it. Callers should still stop it: `stop DIR` or kill the PID.
#   tests/peers/buildgrid.sh count DIR [INSTANCE]
#       Print per-RPC counters parsed from DIR/buildgrid.log (all instances, or
#       only INSTANCE), e.g. "find_missing_digests 12". Digest counts are the raw
#       number of digests in each request (duplicates and the empty blob included).
#   tests/peers/buildgrid.sh stop DIR
#       SIGTERM the server from DIR/buildgrid.pid, SIGKILL after 10 s.
#
# Environment: BUILDGRID_PYTHON (default python3, >= 3.11),
# BUILDGRID_LRU_SIZE (per-instance CAS size, default 1GB),
# BUILDGRID_THREADS (gRPC workers = max concurrent RPCs, default 64),
# BUILDGRID_START_TIMEOUT (seconds, default 30), BUILDGRID_WATCH_PID,
# BUILDGRID_HOST (IPv4 address to listen on, default 127.0.0.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.tools/buildgrid-venv"
BUILDGRID_VERSION=0.4.4

# Every transitive dependency, pinned to the set tested with buildgrid 0.4.4 on
# Python 3.11 (what pip resolved on 2026-11-21). BuildGrid's generated code is
# protobuf 6.31 / grpc 1.73; the newer protobuf 7 runtime loads it without
# warnings, and grpcio-reflection/-health-checking 1.85 require protobuf >= 7.35.
CONSTRAINTS='aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
alembic==1.20.1
annotated-types==0.8.0
async-lru==2.4.0
attrs==26.1.0
boto3==1.44.5
botocore==1.44.5
buildgrid-metering-client==0.0.4
cachetools==8.0.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cryptography==50.0.2
dnspython==2.9.2
frozenlist==1.8.0
grpcio==1.85.1
grpcio-health-checking==1.85.1
grpcio-reflection==1.85.1
idna==3.20
janus==2.0.0
Jinja2==3.1.6
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lark-parser==0.12.0
Mako==1.4.3
MarkupSafe==3.0.4
mmh3==5.3.1
multidict==7.2.1
propcache==0.5.4
protobuf==7.36.2
pycparser==3.12
pycurl==7.49.0
pydantic==2.14.3
pydantic_core==2.50.4
PyJWT==2.15.1
python-dateutil==2.9.0.post0
PyYAML==6.0.3
referencing==0.37.0
requests==2.34.2
rpds-py==2026.9.1
s3transfer==0.19.3
sentry-sdk==2.75.0
six==1.17.0
SQLAlchemy==2.1.9
tenacity==9.2.1
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
yarl==1.25.1'

die() {
    echo "buildgrid.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The stamp records what was installed, so a change of pins reinstalls.
stamp_content() {
    printf 'buildgrid==%s\n%s\n' "$BUILDGRID_VERSION" "$CONSTRAINTS"
}

ensure_venv_module() {
    local py="$1"
    if "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        return 0
    fi
    # Debian's system Python splits venv/ensurepip into python3-venv.
    command -v apt-get >/dev/null || die "$py lacks the venv module and apt-get is missing"
    local pkgs=(python3-venv)
    local minor
    minor="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if apt-cache show "python${minor}-venv" >/dev/null 2>&1; then
        pkgs+=("python${minor}-venv")
    fi
    local log
    log="$(mktemp)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >"$log" 2>&1; then
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"; } >>"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            die "could not install ${pkgs[*]}"
        fi
    fi
    rm -f "$log"
    "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || die "$py still lacks venv/ensurepip after installing ${pkgs[*]}"
}

cmd_install() {
    local stamp="$VENV/.buildgrid-installed"
    if [[ -x "$VENV/bin/python" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$(stamp_content)" ]]; then
        return 0
    fi
    local py="${BUILDGRID_PYTHON:-python3}"
    command -v "$py" >/dev/null || die "$py not found"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "BuildGrid $BUILDGRID_VERSION needs Python >= 3.11; $py is $("$py" --version 2>&1)"
    ensure_venv_module "$py"

    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    local log constraints
    log="$(mktemp)"
    constraints="$(mktemp)"
    printf '%s\n' "$CONSTRAINTS" >"$constraints"
    if ! { "$py" -m venv "$VENV" &&
        "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            -c "$constraints" "buildgrid==$BUILDGRID_VERSION" &&
        "$VENV/bin/python" -c 'import buildgrid.server.app.cli, buildgrid.server.cas.service'; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log" "$constraints"
        rm -rf "$VENV"
        die "installing buildgrid==$BUILDGRID_VERSION into $VENV failed"
    fi
    rm -f "$log" "$constraints"
    stamp_content >"$stamp"
}

port_open() {
    (: <>"/dev/tcp/${BUILDGRID_HOST:-127.0.0.1}/$1") 2>/dev/null
}

# Single-quoted YAML scalar.
yaml_quote() {
    printf "'%s'" "${1//\'/\'\'}"
}

write_config() {
    local dir="$1" port="$2"
    shift 2
    local cfg="$dir/buildgrid.yml" i name
    {
        echo "server:"
        echo "  - !channel"
        echo "    address: \"${BUILDGRID_HOST:-127.0.0.1}:$port\""
        echo "    insecure-mode: true"
        echo "grpc-server-options:"
        echo "  grpc.so_reuseport: 0"
        echo "authorization:"
        echo "  method: none"
        echo "thread-pool-size: ${BUILDGRID_THREADS:-64}"
        echo "storages:"
        for ((i = 0; i < $#; i++)); do
            echo "  - !lru-storage &storage$i"
            echo "    size: ${BUILDGRID_LRU_SIZE:-1GB}"
        done
        echo "caches:"
        for ((i = 0; i < $#; i++)); do
            echo "  - !lru-action-cache &cache$i"
            echo "    storage: *storage$i"
            echo "    max-cached-refs: 100000"
            echo "    allow-updates: true"
            echo "    cache-failed-actions: true"
        done
        echo "instances:"
        i=0
        for name in "$@"; do
            echo "  - name: $(yaml_quote "$name")"
            echo "    services:"
            echo "      - !cas"
            echo "        storage: *storage$i"
            echo "      - !bytestream"
            echo "        storage: *storage$i"
            echo "      - !action-cache"
            echo "        cache: *cache$i"
            i=$((i + 1))
        done
    } >"$cfg"
}

# Runs `bgd` after wrapping the REAPI servicers so that every incoming request
# logs one "bgcount" line with its raw digest count or resource name (BuildGrid
# logs only the method name), and SIGTERMs itself when the watched PID is gone.
write_launcher() {
    cat >"$1/bgd_launch.py" <<'EOF'
import itertools
import logging
import os
import signal
import sys
import threading
import time

from buildgrid.server.actioncache.service import ActionCacheService
from buildgrid.server.app.cli import cli
from buildgrid.server.capabilities.service import CapabilitiesService
from buildgrid.server.cas.service import ByteStreamService, ContentAddressableStorageService, ResourceNameRegex

LOG = logging.getLogger("bgcount")


def _instance(resource_name, regex):
    import re

    m = re.match(regex, resource_name)
    return m[1] if m else "?"


def _wrap(cls, method, describe, streaming_request=False):
    orig = getattr(cls, method)

    if streaming_request:

        def wrapper(self, request_iterator, context):
            first = next(request_iterator, None)
            if first is None:
                return orig(self, iter(()), context)
            LOG.info("bgcount method=%s %s", method, describe(first))
            return orig(self, itertools.chain([first], request_iterator), context)

    else:

        def wrapper(self, request, context):
            LOG.info("bgcount method=%s %s", method, describe(request))
            return orig(self, request, context)

    wrapper.__name__ = orig.__name__
    setattr(cls, method, wrapper)


def _inst(r):
    return 'instance="%s"' % r.instance_name


_wrap(ContentAddressableStorageService, "FindMissingBlobs",
      lambda r: '%s digests=%d' % (_inst(r), len(r.blob_digests)))
_wrap(ContentAddressableStorageService, "BatchReadBlobs",
      lambda r: '%s digests=%d' % (_inst(r), len(r.digests)))
_wrap(ContentAddressableStorageService, "BatchUpdateBlobs",
      lambda r: '%s digests=%d' % (_inst(r), len(r.requests)))
_wrap(ContentAddressableStorageService, "GetTree",
      lambda r: '%s root=%s/%d' % (_inst(r), r.root_digest.hash, r.root_digest.size_bytes))
_wrap(ByteStreamService, "Read",
      lambda r: 'instance="%s" resource=%s offset=%d' % (
          _instance(r.resource_name, ResourceNameRegex.READ), r.resource_name, r.read_offset))
_wrap(ByteStreamService, "Write",
      lambda r: 'instance="%s" resource=%s offset=%d' % (
          _instance(r.resource_name, ResourceNameRegex.WRITE), r.resource_name, r.write_offset),
      streaming_request=True)
_wrap(ActionCacheService, "GetActionResult",
      lambda r: '%s action=%s/%d' % (_inst(r), r.action_digest.hash, r.action_digest.size_bytes))
_wrap(ActionCacheService, "UpdateActionResult",
      lambda r: '%s action=%s/%d' % (_inst(r), r.action_digest.hash, r.action_digest.size_bytes))
_wrap(CapabilitiesService, "GetCapabilities", _inst)


def _watch(pid):
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            LOG.warning("bgcount watched pid %d is gone, stopping", pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except PermissionError:
            pass


_watch_pid = int(os.environ.get("BUILDGRID_WATCH_PID", "0") or "0")
if _watch_pid > 0:
    threading.Thread(target=_watch, args=(_watch_pid,), daemon=True, name="watch-parent").start()

sys.argv[0] = "bgd"
sys.exit(cli())
EOF
}

cmd_start() {
    [[ $# -ge 2 ]] || usage
    local dir="$1" port="$2"
    shift 2
    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        die "bad port: $port"
    fi
    local instances=("$@")
    [[ ${#instances[@]} -gt 0 ]] || instances=("")
    local name
    for name in "${instances[@]}"; do
        [[ "$name" != unnamed ]] || die "BuildGrid reserves the instance name 'unnamed'"
    done

    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local pidfile="$dir/buildgrid.pid" log="$dir/buildgrid.log" ready="$dir/buildgrid.ready"
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "a server from $dir is already running (PID $(cat "$pidfile"))"
    fi
    port_open "$port" && die "${BUILDGRID_HOST:-127.0.0.1}:$port is already in use"

    cmd_install
    write_config "$dir" "$port" "${instances[@]}"
    write_launcher "$dir"
    rm -f "$ready"

    local watch="${BUILDGRID_WATCH_PID:-$PPID}"
    BUILDGRID_WATCH_PID="$watch" PYTHONUNBUFFERED=1 \
        "$VENV/bin/python" "$dir/bgd_launch.py" server start -vv --pid-file "$ready" "$dir/buildgrid.yml" \
        >"$log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"

    local timeout="${BUILDGRID_START_TIMEOUT:-30}" deadline
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "buildgrid.sh: BuildGrid (PID $pid) exited during startup; log tail ($log):" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
        if [[ -f "$ready" ]] && port_open "$port"; then
            return 0
        fi
        sleep 0.2
    done
    stop_pid "$pid"
    echo "buildgrid.sh: BuildGrid (PID $pid) not serving on ${BUILDGRID_HOST:-127.0.0.1}:$port after ${timeout}s; log tail ($log):" >&2
    tail -n 40 "$log" >&2
    exit 1
}

cmd_count() {
    [[ $# -ge 1 && $# -le 2 ]] || usage
    local log="$1/buildgrid.log"
    [[ -f "$log" ]] || die "no log at $log"
    local filter=0 inst=""
    if [[ $# -eq 2 ]]; then
        filter=1
        inst="$2"
    fi
    # Lines: "...: bgcount method=M instance="I" [digests=N] ..."
    awk -v filter="$filter" -v inst="$inst" '
        function field(key,    re, s) {
            re = " " key "=[^ ]*"
            if (!match($0, re)) return ""
            s = substr($0, RSTART + length(key) + 2, RLENGTH - length(key) - 2)
            return s
        }
        / bgcount method=/ {
            m = field("method")
            if (filter) {
                i = field("instance")
                gsub(/^"|"$/, "", i)
                if (i != inst) next
            }
            req[m]++
            d = field("digests")
            if (d != "") dig[m] += d
        }
        END {
            printf "find_missing_requests %d\n", req["FindMissingBlobs"]
            printf "find_missing_digests %d\n", dig["FindMissingBlobs"]
            printf "batch_read_requests %d\n", req["BatchReadBlobs"]
            printf "batch_read_digests %d\n", dig["BatchReadBlobs"]
            printf "bytestream_reads %d\n", req["Read"]
            printf "bytestream_writes %d\n", req["Write"]
            printf "batch_update_requests %d\n", req["BatchUpdateBlobs"]
            printf "batch_update_digests %d\n", dig["BatchUpdateBlobs"]
            printf "get_action_result %d\n", req["GetActionResult"]
            printf "update_action_result %d\n", req["UpdateActionResult"]
            printf "get_tree %d\n", req["GetTree"]
            printf "get_capabilities %d\n", req["GetCapabilities"]
        }' "$log"
}

# SIGTERM (BuildGrid shuts down gracefully), SIGKILL after 10 s.
stop_pid() {
    local pid="$1" i
    # Only signal the PID if it still is our server (PIDs get reused).
    grep -qs bgd_launch.py "/proc/$pid/cmdline" || return 0
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local pidfile="$1/buildgrid.pid"
    [[ -f "$pidfile" ]] || return 0
    stop_pid "$(cat "$pidfile")"
    rm -f "$pidfile"
}

[[ $# -ge 1 ]] || usage
cmd="$1"
shift
case "$cmd" in
install) [[ $# -eq 0 ]] || usage; cmd_install ;;
start) cmd_start "$@" ;;
count) cmd_count "$@" ;;
stop) cmd_stop "$@" ;;
*) usage ;;
esac
