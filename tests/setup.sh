#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh Debian machine (run as root).
# Idempotent and quiet on success: each step checks first and does nothing when
# its tools are already there.
#
# Adding an installer: write one `step_NAME` function below and add NAME to STEPS.
set -euo pipefail

STEPS=(apt netty_epoll peers)

log() { printf 'setup: %s\n' "$*" >&2; }

# shellcheck source-path=SCRIPTDIR source=install_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/install_lib.sh"

# fuse3: fusermount3 for FUSE tests; systemd: systemd-analyze for the unit test; chromium: a real
# browser for the daemon's pages; bazel-bootstrap: Bazel 4.2.3 (and a JDK) as a real REAPI client.
step_apt() {
    apt_install fuse3 systemd chromium bazel-bootstrap
}

# Netty's epoll JNI library, which Debian's Bazel 4.2.3 lacks: without it `--remote_cache=unix:...`
# crashes the Bazel server. Compiled from Debian's netty source package into .tools/netty-epoll/;
# use it with --host_jvm_args=-Djava.library.path="$(tests/peers/netty_epoll.sh dir):/usr/share/bazel".
step_netty_epoll() {
    bash "$(dirname "${BASH_SOURCE[0]}")/peers/netty_epoll.sh" install
}

# Real upstream clusters for the proxy's end-to-end tests: BuildGrid (a venv under .tools/) and
# Bazel's own remote worker (compiled from Debian's bazel-bootstrap-source into .tools/).
step_peers() {
    local here
    here=$(dirname "${BASH_SOURCE[0]}")
    bash "$here/peers/buildgrid.sh" install
    bash "$here/peers/remote_worker.sh" install
}

main() {
    local step
    if [ "$#" -gt 0 ]; then STEPS=("$@"); fi
    for step in "${STEPS[@]}"; do
        declare -F "step_$step" >/dev/null || { log "unknown step: $step"; return 2; }
        local start=$SECONDS
        "step_$step"
        log "$step: ready ($((SECONDS - start)) s)"
    done
}

main "$@"
