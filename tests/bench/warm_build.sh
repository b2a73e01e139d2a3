#!/usr/bin/env bash
# Benchmark (not part of tests/run): Bazel 4.2.3 builds the same workspace with clientd as its
# cache, the way users run it (the UNIX socket, `--config=clientd` from the fragment `clientd
# bazelrc` writes, a `local/` instance), and with Bazel's own `--disk_cache`; prints the ratios.
#
#   tests/bench/warm_build.sh
#
# The workspace: N_ACTIONS genrules (default 500; tests/bench/genrule_workspace.py), outputs from
# 8 B to MAX_BYTES (4 MiB). Each round times `bazel build //...` by wall clock, after `bazel clean`
# and a `bazel build --nobuild //...` with the same flags (so the Bazel server, loading and
# analysis are not in the timing) and a `sync` (the previous build's writeback, 300 MiB or more
# left in the page cache, would otherwise slow whichever side comes next, a side whose writes are
# synced most):
#   none:          no cache at all (what filling a cache costs is measured against it);
#   disk cold:     --disk_cache=DIR, DIR empty: every action runs and is stored;
#   disk warm:     after `bazel clean`: every action a cache hit, outputs copied from DIR;
#   clientd cold:  a fresh daemon (empty cache) and --config=clientd: every action runs and is
#                  uploaded over the socket;
#   clientd warm:  after `bazel clean`: every action a hit, outputs downloaded over the socket.
#   clientd-http cold/warm (unless HTTP=0): the same through Bazel's HTTP cache client on the
#                  same socket (`clientd bazelrc --http`);
#   clientd-norecord cold/warm (RECORD_COST=1): the same with the activity record off
#                  (`activity.max_invocations: 0`), to give the record's cost as a ratio.
# The sides take turns going first (these machines are shared and noisy); the table gives every
# round, and the ratios are medians of the per-round ratios [min..max]. It also gives the CPU time
# the Bazel server and the daemon used per build (whose work the difference is), and from Bazel's
# --profile of each build the median time per action in its job slot, its cache lookup, a hit's
# downloads and the action's run (where the difference goes).
#
# Each side has a Bazel server of its own (its own --output_user_root), as a user has one server
# per workspace with one cache setup, and untimed rounds (PRIME, 3) go first: a server's JIT
# compiler is still busy for several builds (its C2 threads used 0.5 to 1.5 s of CPU in each of
# the first warm builds; the HTTP client's warm builds took 2.9, 2.0 and 1.9 s of Bazel's CPU in
# the first three rounds, 1.6 after), and one server alternating between the disk cache's code
# and gRPC's keeps recompiling both. SERVERS=shared measures in one server, as this benchmark used to.
#
# Environment: ROUNDS (5), PRIME (3), SERVERS (separate | shared), N_ACTIONS (500), HTTP (1),
# RECORD_COST (unset), MAX_BYTES (4194304), JOBS (Bazel's --jobs; default: Bazel's), CLIENTD (a binary instead
# of building this tree's), CLIENTD_CONFIG (a config.json for the daemon instead of its defaults,
# e.g. to measure without sync_writes), KEEP_TMP=1 (keep the temp dir: Bazel logs and --profile
# files, the daemon's log). Needs tests/setup.sh (Bazel, netty's epoll library), python3, cargo.
# About 14 minutes on 2 CPUs with the defaults. Exits non-zero when a build fails; a warm build
# that is not all cache hits is reported.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-5}
PRIME=${PRIME:-3}
SERVERS=${SERVERS:-separate}
N_ACTIONS=${N_ACTIONS:-500}
MAX_BYTES=${MAX_BYTES:-4194304}
case $SERVERS in separate | shared) ;; *) die "SERVERS must be separate or shared, not $SERVERS" ;; esac
# One Bazel server per side (lib.sh's BAZEL_SERVER, set by measure), or one for all.
[ "$SERVERS" = shared ] || { BAZEL_SERVERS=(none disk clientd clientd-http clientd-norecord); BAZEL_SERVER=none; }

need_bazel
make_tmp clientd-bench-warm
mkdir -p "$T/logs"
build_clientd

WS="$T/ws"
new_workspace "$WS"
python3 "$ROOT/tests/bench/genrule_workspace.py" "$N_ACTIONS" "$MAX_BYTES" >"$WS/BUILD" ||
    die "cannot write the workspace"
TOTAL_BYTES=$(sed -n 's/^# total output bytes: //p' "$WS/BUILD")
note "workspace: $N_ACTIONS genrules, outputs 8 B .. $MAX_BYTES B, $((TOTAL_BYTES >> 20)) MiB in all"

RESULTS="$T/times"
: >"$RESULTS"

# measure ROUND SCENARIO FLAGS...: times one build (timed_build) in the scenario's side's server;
# appends "SCENARIO ROUND SECS BAZEL_CPU DAEMON_CPU", unless ROUND is a priming round (p1, ...).
measure() {
    local round=$1 scenario=$2 log hits
    shift 2
    log="$T/logs/$scenario-$round"
    if [ "$SERVERS" = separate ]; then
        BAZEL_SERVER=${scenario%-cold}
        BAZEL_SERVER=${BAZEL_SERVER%-warm}
    fi
    timed_build "$log" "$@"
    if [ "$BUILD_RC" -ne 0 ]; then
        tail -n 30 "$log.log" | sed 's/^/#   /'
        die "($scenario) bazel build failed"
    fi
    case $round in p*) ;; *) echo "$scenario $round $BUILD_SECS $BAZEL_CPU $DAEMON_CPU" >>"$RESULTS" ;; esac
    hits=$(count "$log.log" "remote cache hit")
    note "round $round $scenario: $BUILD_SECS s (CPU: Bazel $BAZEL_CPU s, clientd $DAEMON_CPU s); $(summary_line "$log.log")"
    case $scenario in *warm)
        [ "$hits" -ge "$N_ACTIONS" ] || note "round $round $scenario: NOT all cache hits ($hits of $N_ACTIONS)"
        ;;
    esac
}

disk_side() {
    local round=$1 dir="$T/disk-cache-$1"
    measure "$round" "disk-cold" --disk_cache="$dir"
    measure "$round" "disk-warm" --disk_cache="$dir"
    rm -rf "$dir"
}

# clientd_side ROUND [norecord | http]: a fresh daemon, cold then warm; `norecord` turns the
# activity record off, `http` has Bazel use its HTTP cache client (`clientd bazelrc --http`).
clientd_side() {
    local round=$1 name=clientd fragment=()
    DAEMON_DIR="$T/clientd-$round"
    mkdir -p "$DAEMON_DIR/config/clientd"
    [ -z "${CLIENTD_CONFIG:-}" ] || cp "$CLIENTD_CONFIG" "$DAEMON_DIR/config/clientd/config.json"
    if [ "${2:-}" = norecord ]; then
        name=clientd-norecord
        python3 - "$DAEMON_DIR/config/clientd/config.json" <<'PY' || die "cannot write the config"
import json, os, sys
path = sys.argv[1]
config = json.load(open(path)) if os.path.exists(path) else {}
config.setdefault("activity", {})["max_invocations"] = 0
json.dump(config, open(path, "w"))
PY
    fi
    if [ "${2:-}" = http ]; then
        name=clientd-http
        fragment=(--http)
    fi
    start_daemon serve --no-mount || die "clientd did not start"
    write_fragment "${fragment[@]}" >/dev/null
    measure "$round" "$name-cold" --config=clientd
    measure "$round" "$name-warm" --config=clientd
    stop_daemon
    rm -rf "$DAEMON_DIR"
}
norecord_side() { clientd_side "$1" norecord; }
http_side() { clientd_side "$1" http; }

(cd "$WS" && bz info release) >"$T/logs/bazel-info.log" 2>&1 || { cat "$T/logs/bazel-info.log"; die "bazel does not start"; }
SIDES=(disk_side clientd_side)
[ "${HTTP:-1}" = 0 ] || SIDES+=(http_side)
[ -z "${RECORD_COST:-}" ] || SIDES+=(norecord_side)
for round in $(seq "$PRIME"); do
    note "priming round $round (untimed): each side's Bazel server compiles its code paths"
    measure "p$round" none
    for side in "${SIDES[@]}"; do "$side" "p$round"; done
done
for round in $(seq "$ROUNDS"); do
    measure "$round" none
    # Each round starts with the next side: every side goes first as often as the others.
    for i in "${!SIDES[@]}"; do
        "${SIDES[(round + i) % ${#SIDES[@]}]}" "$round"
    done
done

python3 - "$RESULTS" "$N_ACTIONS" "$TOTAL_BYTES" "${JOBS:-default}" "$SERVERS" "$PRIME" "$T/logs" <<'EOF'
import collections, json, os, statistics, sys
path, n, total, jobs, servers, prime, logs = sys.argv[1:]
times = collections.defaultdict(dict)
cpu = collections.defaultdict(dict)
for line in open(path):
    scenario, rnd, secs, bazel_cpu, daemon_cpu = line.split()
    times[scenario][int(rnd)] = float(secs)
    cpu[scenario][int(rnd)] = (float(bazel_cpu), float(daemon_cpu))
rounds = sorted(times["none"])
print()
print("warm_build: %s actions, %.0f MiB of outputs, --jobs %s, %d rounds after %s untimed, Bazel servers %s"
      % (n, int(total) / 2**20, jobs, len(rounds), prime, servers))
print("%-21s %s" % ("seconds", " ".join("%7s" % ("r%d" % r) for r in rounds)))
for s in ("none", "disk-cold", "clientd-cold", "disk-warm", "clientd-warm"):
    print("%-21s %s" % (s, " ".join("%7.2f" % times[s][r] for r in rounds)))
for s in ("clientd-http-cold", "clientd-http-warm", "clientd-norecord-cold", "clientd-norecord-warm"):
    if s in times:
        print("%-21s %s" % (s, " ".join("%7.2f" % times[s][r] for r in rounds)))
def summary(values):
    return "%.2f [%.2f..%.2f]" % (statistics.median(values), min(values), max(values))
ratio = lambda a, b: [times[a][r] / times[b][r] for r in rounds]
print()
print("clientd / disk cache, warm (all hits):  %s   (target <= 1.00)" % summary(ratio("clientd-warm", "disk-warm")))
print("clientd / disk cache, cold (empty):     %s   (target <= 1.10)" % summary(ratio("clientd-cold", "disk-cold")))
print("filling the cache vs none: clientd %s, disk cache %s" % (
    summary([t - 1 for t in ratio("clientd-cold", "none")]), summary([t - 1 for t in ratio("disk-cold", "none")])))
if "clientd-http-warm" in times:
    print("clientd over HTTP / disk cache, warm:   %s" % summary(ratio("clientd-http-warm", "disk-warm")))
    print("clientd over HTTP / disk cache, cold:   %s" % summary(ratio("clientd-http-cold", "disk-cold")))
    print("clientd over HTTP / over gRPC: warm %s, cold %s" % (
        summary(ratio("clientd-http-warm", "clientd-warm")), summary(ratio("clientd-http-cold", "clientd-cold"))))
per_action = lambda s: [1000 * times[s][r] / int(n) for r in rounds]
print("warm, ms per action: clientd %s, disk cache %s" % (summary(per_action("clientd-warm")), summary(per_action("disk-warm"))))
print("CPU seconds per build, medians (Bazel's server / clientd; the actions' processes not counted):")
for s in ("none", "disk-cold", "clientd-cold", "clientd-http-cold", "disk-warm", "clientd-warm", "clientd-http-warm"):
    if s not in times:
        continue
    print("  %-17s %6.2f / %5.2f" % (s, statistics.median(cpu[s][r][0] for r in rounds), statistics.median(cpu[s][r][1] for r in rounds)))
if "clientd-norecord-warm" in times:
    print("the activity record's cost, clientd / clientd without it: warm %s, cold %s" % (
        summary(ratio("clientd-warm", "clientd-norecord-warm")), summary(ratio("clientd-cold", "clientd-norecord-cold"))))
# Where an action's time goes, from Bazel's --profile of each timed build: the median per action
# over all rounds of a scenario, in ms. "execute" is the whole of an action in its job slot (run,
# cache lookup, download or upload), "lookup" the cache lookup, "download" a hit's downloads.
PHASES = {"ActionContinuation.execute": "execute", "check cache hit": "lookup",
          "download outputs": "download", "subprocess.run": "run"}
def phases(scenario):
    found = collections.defaultdict(list)
    for r in rounds:
        try:
            events = json.load(open(os.path.join(logs, "%s-%s.profile.json" % (scenario, r))))
        except (OSError, ValueError):
            continue
        for e in events.get("traceEvents", []) if isinstance(events, dict) else events:
            key = PHASES.get(e.get("name")) if e.get("ph") == "X" else None
            if key:
                found[key].append(e.get("dur", 0) / 1000)
    return " ".join("%s %6s" % (key, "%.2f" % statistics.median(found[key]) if found[key] else "-")
                    for key in PHASES.values())
print("Bazel's profile, ms per action (medians):")
for s in ("disk-cold", "clientd-cold", "clientd-http-cold", "disk-warm", "clientd-warm", "clientd-http-warm"):
    if s in times:
        print("  %-17s %s" % (s, phases(s)))
EOF
