# shellcheck shell=bash
# What the installers (tests/setup.sh, tests/peers/*.sh) have in common. Sourced, never executed,
# after the script has defined `log MESSAGE...` (its own prefix, on stderr):
#
#   # shellcheck source-path=SCRIPTDIR source=../install_lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/../install_lib.sh"
#
#   quiet COMMAND...     runs COMMAND with its output captured; on failure prints that output and
#                        `failed: COMMAND`, and returns 1.
#   apt_update           apt-get update (once per script: APT_UPDATED=1 afterwards).
#   apt_install PKG...   installs the packages dpkg does not have, saying which; updates first.
#   APT                  apt-get with a 300 s wait for another apt/dpkg's lock (a parallel
#                        setup step, say).

APT=(apt-get -o DPkg::Lock::Timeout=300)
APT_UPDATED=0

quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        log "failed: $*"
        return 1
    fi
}

apt_update() {
    log "apt-get update"
    quiet "${APT[@]}" update
    APT_UPDATED=1
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$APT_UPDATED" -eq 1 ] || apt_update
    log "apt-get install ${missing[*]}"
    quiet env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y "${missing[@]}"
}
