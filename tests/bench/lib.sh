#!/usr/bin/env bash
# Shared by the Bazel benchmarks (tests/bench/*.sh): the end-to-end tests' lib.sh, and one timed
# build. Sourced, not run.

# shellcheck source-path=SCRIPTDIR source=../e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
# A benchmark, not a test: a fatal error is `FATAL: reason` on stderr (lib.sh's calls pass NAME REASON).
die() { printf 'FATAL: %s\n' "${@: -1}" >&2; exit 1; }

# Bazel's --jobs when JOBS is set; Bazel's default otherwise.
JOB_FLAGS=()
[ -n "${JOBS:-}" ] && JOB_FLAGS=(--jobs="$JOBS")

# cpu_ticks PID: the CPU time the process has used, its threads' user and system time (children
# not included), in clock ticks; 0 when PID is empty or gone.
cpu_ticks() {
    local fields
    [ -n "${1:-}" ] && fields=$(cut -d' ' -f14,15 "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    echo $((${fields% *} + ${fields#* }))
}

# timed_build LOG FLAGS...: in $WS, `bazel clean` and `bazel build --nobuild //... FLAGS` (so the
# Bazel server, loading and analysis are not timed) and `sync`, then `bazel build //... FLAGS`
# timed by wall clock, with its output in LOG.log and its profile in LOG.profile.json. Sets
# BUILD_SECS (two decimals), BUILD_RC, and BAZEL_CPU and DAEMON_CPU: the CPU seconds the Bazel
# server and the daemon ($DAEMON_PID, if one runs) used during the build (actions' processes not
# included), to tell whose work a difference in wall time is.
timed_build() {
    local log=$1 t0 t1 server bazel0 daemon0
    shift
    (cd "$WS" && bz clean) >"$log.clean" 2>&1 || { cat "$log.clean"; die "bazel clean failed"; }
    (cd "$WS" && bz build --nobuild //... "$@" "${JOB_FLAGS[@]}") >"$log.nobuild" 2>&1 ||
        { tail -n 20 "$log.nobuild"; die "bazel build --nobuild failed ($log)"; }
    server=$(cd "$WS" && bz info server_pid 2>/dev/null)
    # What the previous build left in the page cache goes to the disk now, not during this one:
    # otherwise its writeback lands on whichever side comes next, and most on a side that syncs.
    sync
    bazel0=$(cpu_ticks "$server")
    daemon0=$(cpu_ticks "${DAEMON_PID:-}")
    t0=$EPOCHREALTIME
    (cd "$WS" && bz build //... "$@" "${JOB_FLAGS[@]}" --profile="$log.profile.json") >"$log.log" 2>&1
    # shellcheck disable=SC2034 # read by the benchmarks that source this file
    BUILD_RC=$?
    t1=$EPOCHREALTIME
    # shellcheck disable=SC2034 # read by the benchmarks that source this file
    BAZEL_CPU=$(python3 -c "import os; print('%.2f' % (($(cpu_ticks "$server") - $bazel0) / os.sysconf('SC_CLK_TCK')))")
    # shellcheck disable=SC2034 # read by the benchmarks that source this file
    DAEMON_CPU=$(python3 -c "import os; print('%.2f' % (($(cpu_ticks "${DAEMON_PID:-}") - $daemon0) / os.sysconf('SC_CLK_TCK')))")
    # shellcheck disable=SC2034 # read by the benchmarks that source this file
    BUILD_SECS=$(python3 -c "print('%.2f' % ($t1 - $t0))")
}
