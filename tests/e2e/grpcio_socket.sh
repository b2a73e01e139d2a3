#!/usr/bin/env bash
# End-to-end: a grpcio (Python, grpc C-core) client against clientd's UNIX socket.
#
# Over `unix:` targets grpc C-core sends the percent-encoded socket path as :authority, grpc-java
# (Bazel) the path itself, grpc-go `localhost`; the socket must serve them all. grpcio_socket.py
# calls every service with grpcio's default channel options on `unix:<socket>` (instance name
# local/grpcio): Capabilities; CAS FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, GetTree;
# ByteStream multi-chunk Write, Read (whole, from an offset), a resumed Write, a wrong digest and
# malformed resource names; ActionCache round trip and NOT_FOUND; Execute (UNIMPLEMENTED for a
# local instance); Stats; the Output Service (StartBuild, StageArtifacts of a blob present and one
# missing, BatchStat, FinalizeBuild, Clean). Then GetCapabilities with explicit authorities: the
# socket path, `localhost`, the percent-encoded path. Last, the daemon's HTTP listener
# (--http-listen): /metrics parsed by prometheus_client's text-format parser, the page, 405 and 404.
#
# Installs (idempotently) .tools/grpcio-venv with pinned grpcio, grpcio-tools and protobuf from
# PyPI, generates the stubs from proto/ into the temp dir, builds and starts the daemon (--no-mount).
# Needs: python3 >= 3.10 with venv (python3-venv is installed with apt if missing; GRPCIO_PYTHON
# names another interpreter), cargo.
# KEEP_TMP=1 keeps the temp dir. Prints `PASS: name` / `FAIL: name: reason` per assertion; exits
# non-zero on any failure.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$ROOT/.tools/grpcio-venv"
PY=${GRPCIO_PYTHON:-python3}
# Pinned together (what pip resolved on 2026-12-03, the versions BuildGrid's venv has too):
# grpcio-tools 1.85.1 requires grpcio >= 1.85.1, protobuf >= 7.35.1 < 8 and setuptools >= 77.0.1,
# grpcio typing_extensions ~= 4.12; all are wheels for CPython >= 3.10. prometheus-client: the
# Prometheus text-format parser /metrics is checked with.
PINS='grpcio==1.85.1
grpcio-tools==1.85.1
prometheus-client==0.26.0
protobuf==7.36.2
setuptools==84.2.1
typing_extensions==4.16.0'

# --- the venv ---------------------------------------------------------------------------------
ensure_venv_module() {
    "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 && return 0
    # Debian's system Python splits venv/ensurepip into python3-venv.
    command -v apt-get >/dev/null || die setup "$PY lacks the venv module and apt-get is missing"
    local minor pkgs=(python3-venv)
    minor=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt-cache show "python${minor}-venv" >/dev/null 2>&1 && pkgs+=("python${minor}-venv")
    note "installing ${pkgs[*]} with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >"$T/apt.log" 2>&1; then
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"; } >>"$T/apt.log" 2>&1 ||
            { cat "$T/apt.log"; die setup "could not install ${pkgs[*]}"; }
    fi
    "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || die setup "$PY still lacks venv/ensurepip"
}

install_venv() {
    local stamp="$VENV/.grpcio-installed" start=$SECONDS
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PINS" ]; then
        note "grpcio venv: $VENV is up to date ($(tr '\n' ' ' <"$stamp"))"
        return 0
    fi
    command -v "$PY" >/dev/null || die setup "$PY not found"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die setup "grpcio 1.85 needs Python >= 3.10; $PY is $("$PY" --version 2>&1)"
    ensure_venv_module
    note "grpcio venv: installing $(echo "$PINS" | tr '\n' ' ')into $VENV with pip"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    printf '%s\n' "$PINS" >"$T/requirements.txt"
    if ! { "$PY" -m venv "$VENV" &&
        "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            --only-binary=:all: -r "$T/requirements.txt" &&
        "$VENV/bin/python" -c 'import grpc, grpc_tools.protoc, google.protobuf, prometheus_client'; } >"$T/pip.log" 2>&1; then
        cat "$T/pip.log"
        rm -rf "$VENV"
        die setup "installing grpcio into $VENV failed"
    fi
    printf '%s' "$PINS" >"$stamp"
    note "grpcio venv: installed in $((SECONDS - start)) s"
}

make_tmp clientd-e2e-grpcio
install_venv

# --- the stubs --------------------------------------------------------------------------------
STUBS="$T/stubs"
mkdir -p "$STUBS"
mapfile -t PROTOS < <(cd "$ROOT/proto" && find . -name '*.proto' | sed 's|^\./||' | sort)
if ! (cd "$ROOT/proto" && "$VENV/bin/python" -m grpc_tools.protoc -I. \
    --python_out="$STUBS" --grpc_python_out="$STUBS" "${PROTOS[@]}") >"$T/protoc.log" 2>&1; then
    cat "$T/protoc.log"
    die stubs "grpc_tools.protoc failed on proto/"
fi
pass stubs
note "${#PROTOS[@]} protos from proto/ compiled into $STUBS"

# --- the daemon -------------------------------------------------------------------------------
# CLIENTD=/path/to/clientd tests a given binary instead of building this tree's.
build_clientd
read -r HTTP_PORT < <(free_port 1)
start_daemon serve --no-mount --http-listen "127.0.0.1:$HTTP_PORT" || die daemon_start "$DAEMON_ERROR"
TARGET="unix:$DAEMON_SOCKET"
pass daemon_start
[ "$DAEMON_SOCKET" = "$T/cache/clientd/grpc" ] ||
    note "the daemon serves on unix:$DAEMON_SOCKET, not the default $T/cache/clientd/grpc"
# The Output Service's path prefix as Bazel gets it (clientd bazelrc): the mount's outputs/. Without
# the mount StartBuild still takes it and answers the output base id as suffix.
OUTPUTS_PREFIX=$(cl config | python3 -c 'import json, sys; print(json.load(sys.stdin)["mount"]["path"] + "/outputs")') ||
    die setup "clientd config failed"
note "daemon pid $DAEMON_PID; client target $TARGET; output path prefix $OUTPUTS_PREFIX"

# --- the client -------------------------------------------------------------------------------
# Each call has a 20 s deadline; the whole client 120 s (it takes 1-2 s).
start=$SECONDS
timeout -k 5 120 "$VENV/bin/python" "$ROOT/tests/e2e/grpcio_socket.py" --stubs "$STUBS" --target "$TARGET" \
    --socket "$DAEMON_SOCKET" --outputs-prefix "$OUTPUTS_PREFIX" --http "http://127.0.0.1:$HTTP_PORT" \
    2>"$T/client.err" | tee "$T/client.out"
rc=${PIPESTATUS[0]}
FAILURES=$((FAILURES + $(grep -c '^FAIL: ' "$T/client.out")))
note "client: exit $rc in $((SECONDS - start)) s"
if [ -s "$T/client.err" ]; then
    note "client stderr (last lines):"
    tail -n 20 "$T/client.err" | cut -c1-400 | sed 's/^/#   /'
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail client "killed after 120 s (exit $rc)"
elif [ "$rc" -ne 0 ] && ! grep -q '^FAIL: ' "$T/client.out"; then
    fail client "exit status $rc without a FAIL line"
fi

check_daemon_alive
sigterm_daemon && pass daemon_sigterm
finish
