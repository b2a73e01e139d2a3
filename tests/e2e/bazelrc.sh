#!/usr/bin/env bash
# End-to-end proof of `clientd bazelrc` and `clientd scrub-config` with real consumers: the
# --config=clientd fragment generated from the daemon's own JSON configuration file drives Bazel
# 4.2.3 (Debian's bazel-bootstrap) through one clientd daemon to Bazel's remote worker
# (tests/peers/remote_worker.sh), and the scrubbing config is parsed by protobuf's own text-format
# parser (Python, from remote_scrubbing.proto compiled with grpc_tools.protoc).
#
# 1. The remote worker and ONE clientd, started with `serve --config $T/config.json` (grpc.tcp_listen
#    127.0.0.1:<port>, cluster rw.example.com -> the worker, mount.path $T/mnt, cache_dir under $T).
# 2. `clientd bazelrc --config $T/config.json --bazel-version 4.2.3 --instance rw.example.com/x`
#    writes $WS/clientd.bazelrc, which the workspace's .bazelrc try-imports: every line is
#    build:clientd; it has exactly --remote_executor=unix:<the socket>, --remote_instance_name,
#    --remote_download_symlink_template=$T/mnt/cas/rw.example.com/x/blobs/sha256/executable/...,
#    --remote_bytestream_uri_prefix=<worker>/x, and no Output Service flag. `bazel build
#    --config=clientd --spawn_strategy=remote //...` succeeds, every genrule ran remotely, and the
#    outputs in bazel-bin are symlinks into $T/mnt/cas/ that read back the expected bytes.
# 3. Version gating: the fragment for Bazel 7.2.0 (common:clientd, Output Service flags) is refused
#    by Bazel 4.2.3 with an unrecognized-option error naming an Output Service flag, which the
#    4.2.3 fragment does not have (and Bazel 4.2.3 accepts the 4.2.3 fragment). With --tcp the
#    7.2.0 fragment points the Output Service at the TCP listener too (the daemon serves it
#    there). The 6.5.0 fragment (text only): build:clientd lines, the symlink template, no Output
#    Service flag.
# 4. Local cache over loopback TCP, for users whose Bazel cannot use UNIX sockets: `--tcp
#    --instance local/ws` (without --cache-only) gives --remote_cache=grpc://<tcp_listen>, no
#    executor, no symlink template; build, `bazel clean`, build again: every action is a remote
#    cache hit and the outputs are right.
# 5. Errors: an instance under no configured prefix (the message lists the known prefixes), --tcp
#    with no daemon running and a configuration without grpc.tcp_listen, and an unstamped `bazel
#    --version` (Debian's prints `bazel no_version`) without --bazel-version (the message suggests
#    --bazel-version).
# 6. scrub-config, parsed by an independent parser: google.protobuf.text_format.Parse into
#    remote_scrubbing_pb2.Config (protoc-generated here): 2 rules (label x mnemonic), the default
#    omitted input exactly '^bazel-out/volatile-status\.txt$', the argument replacement, the salt;
#    --omit regexes with quotes, backslashes and control characters round-trip exactly; the two
#    warnings on stderr; an invalid --mnemonic regex exits 1 naming it. `scrub-config --check`
#    (the daemon's own reader) reads the generated files and a hand-written one using the text
#    format's other syntax exactly as protobuf does, and refuses `kind` naming rule and line.
# 7. The daemon stayed up; SIGTERM stops it and it unmounts.
#
# Needs: tests/setup.sh (bazel-bootstrap, fuse3), cargo, python3 >= 3.11 with venv and PyPI, /dev/fuse;
# installs the remote worker itself (tests/peers/remote_worker.sh install) and grpcio-tools into
# .tools/protobuf-venv (idempotent). CLIENTD=/path/to/clientd tests a given binary instead of
# building this tree's. KEEP_TMP=1 keeps the temp dir (logs, worker state, workspace).
# Prints `PASS: name` / `FAIL: name: reason` per assertion and `# ...` notes; exits non-zero on any
# failure.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
VENV="$ROOT/.tools/protobuf-venv"
PY="$VENV/bin/python"
# grpcio-tools brings protobuf (the runtime text_format parser) and protoc (grpc_tools.protoc).
GRPCIO_TOOLS_VERSION=1.85.1

# --- peers, clientd, Python protobuf ------------------------------------------------------------
need_bazel
need_fuse
install_peer remote_worker

make_tmp clientd-e2e-bazelrc
mkdir -p "$T/py" "$T/bin"

# The independent parser: protobuf's Python runtime and protoc, from grpcio-tools (idempotent).
if ! "$PY" -c 'import grpc_tools.protoc, google.protobuf.text_format' 2>/dev/null; then
    start=$SECONDS
    if ! { python3 -m venv "$VENV" && "$PY" -m pip install -q "grpcio-tools==$GRPCIO_TOOLS_VERSION"; } >"$T/pip.log" 2>&1; then
        tail -n 20 "$T/pip.log"
        die setup "could not install grpcio-tools==$GRPCIO_TOOLS_VERSION into $VENV"
    fi
    note "installed grpcio-tools==$GRPCIO_TOOLS_VERSION into $VENV ($((SECONDS - start)) s)"
fi

build_clientd

# Two distinct free loopback ports: the remote worker and clientd.
read -r RW_PORT PORT < <(free_port 2)
RW_ENDPOINT="127.0.0.1:$RW_PORT"
RW_DIR="$T/rw"

# --- 1. the worker and one daemon, from one configuration file -----------------------------------
start_remote_worker "$RW_DIR" "$RW_PORT"

CONFIG="$T/config.json"
cat >"$CONFIG" <<EOF
{
  "cache_dir": "$T/cache/clientd",
  "grpc": { "tcp_listen": ["127.0.0.1:$PORT"] },
  "clusters": { "rw.example.com": { "endpoint": "grpc://$RW_ENDPOINT" } },
  "mount": { "path": "$MNT" }
}
EOF
# Another cache directory, where no daemon runs, without a TCP listener: for the --tcp error.
cat >"$T/config-notcp.json" <<EOF
{
  "cache_dir": "$T/cache/notcp",
  "clusters": { "rw.example.com": { "endpoint": "grpc://$RW_ENDPOINT" } },
  "mount": { "path": "$MNT" }
}
EOF

DAEMON_RUST_LOG=clientd=debug,info
start_daemon --mount serve --config "$CONFIG" || die daemon_start "$DAEMON_ERROR"
if [ "$ENDPOINT" != "127.0.0.1:$PORT" ]; then
    die daemon_start "serving on grpc://$ENDPOINT, not on grpc.tcp_listen 127.0.0.1:$PORT"
fi
pass daemon_start
note "daemon pid $DAEMON_PID (serve --config $CONFIG) at unix:$DAEMON_SOCKET and grpc://$ENDPOINT, file system at $MNT"

CAS="$MNT/cas/rw.example.com/x/blobs/sha256"

# --- the workspace ----------------------------------------------------------------------------
WS="$T/ws"
new_workspace "$WS" "build --remote_timeout=30"
mkdir -p "$WS/gen"
cat >"$WS/gen/BUILD" <<'EOF'
# Generated by tests/e2e/bazelrc.sh
genrule(name = "small", outs = ["small.txt"], cmd = "seq 1 1000 > $@")

genrule(
    name = "medium",
    outs = ["medium.bin"],
    # genrule-setup.sh sets pipefail, and `yes` dies of SIGPIPE when head has enough.
    cmd = "{ yes clientd-bazelrc-e2e || true; } | head -c 200000 > $@",
)

genrule(
    name = "tool",
    outs = ["tool.sh"],
    cmd = "printf '#!/bin/sh\\necho tool ran with \"$$*\"\\n' > $@ && chmod +x $@",
    executable = True,
)

# Runs the remotely built tool remotely.
genrule(
    name = "tool_out",
    outs = ["tool_out.txt"],
    cmd = "$(location :tool) remotely > $@",
    tools = [":tool"],
)
EOF
N_GENRULES=$(grep -c '^genrule(' "$WS/gen/BUILD")
# The expected bytes of each output (bazel-bin/gen/...), made here the same way.
EXPECT="$T/expect"
mkdir -p "$EXPECT"
seq 1 1000 >"$EXPECT/small.txt"
{ yes clientd-bazelrc-e2e || true; } | head -c 200000 >"$EXPECT/medium.bin"
printf '#!/bin/sh\necho tool ran with "$*"\n' >"$EXPECT/tool.sh"
echo "tool ran with remotely" >"$EXPECT/tool_out.txt"
OUTS=(small.txt medium.bin tool.sh tool_out.txt)
note "workspace $WS: $N_GENRULES genrules; .bazelrc try-imports %workspace%/clientd.bazelrc"

# flags FILE: the fragment's non-comment lines.
flags() { grep -v -e '^#' -e '^[[:space:]]*$' "$1"; }

# same_lines FILE EXPECTED...: whether FILE's non-comment lines are exactly EXPECTED (in any order).
same_lines() {
    local file=$1
    shift
    [ "$(flags "$file" | sort)" = "$(printf '%s\n' "$@" | sort)" ]
}

# --- 2. the 4.2.3 fragment drives remote execution --------------------------------------------
FRAG4="$T/fragment-4.2.3.bazelrc"
if cl bazelrc --config "$CONFIG" --bazel-version 4.2.3 --instance rw.example.com/x \
    --output "$WS/clientd.bazelrc" >"$T/bazelrc4.out" 2>"$T/bazelrc4.err"; then
    cp "$WS/clientd.bazelrc" "$FRAG4"
    pass bazelrc_4_generated
    note "$WS/clientd.bazelrc:"
    sed 's/^/#   /' "$FRAG4"
else
    cat "$T/bazelrc4.err"
    die bazelrc_4_generated "clientd bazelrc --bazel-version 4.2.3 --instance rw.example.com/x failed"
fi
TEMPLATE="$CAS/executable/{hash}-{size_bytes}"
WANT4=(
    "build:clientd --remote_executor=unix:$DAEMON_SOCKET"
    "build:clientd --remote_instance_name=rw.example.com/x"
    "build:clientd --remote_download_symlink_template=$TEMPLATE"
    "build:clientd --remote_bytestream_uri_prefix=$RW_ENDPOINT/x"
)
if flags "$FRAG4" | grep -q -v '^build:clientd '; then
    fail fragment_4_lines "not every line is build:clientd: $(flags "$FRAG4" | grep -v '^build:clientd ' | head -n 1)"
elif grep -q output_service "$FRAG4"; then
    fail fragment_4_lines "the 4.2.3 fragment has an Output Service flag: $(grep output_service "$FRAG4" | head -n 1)"
elif ! same_lines "$FRAG4" "${WANT4[@]}"; then
    fail fragment_4_lines "want exactly: $(printf '[%s] ' "${WANT4[@]}"); got: $(flags "$FRAG4" | tr '\n' '|')"
else
    pass fragment_4_lines
fi

if bzlog remote build --config=clientd --spawn_strategy=remote //...; then
    pass remote_build
else
    show_log remote 20
    fail remote_build "bazel build --config=clientd --spawn_strategy=remote //... failed"
fi
n_remote=$(count "$T/remote.log" remote)
note "remote build: $n_remote remote process(es); the daemon logged $(grep -c 'Execute: action' "$T/daemon.log") Execute call(s)"
if [ "$n_remote" -ge "$N_GENRULES" ] && [ "$(count "$T/remote.log" non-internal)" -eq "$n_remote" ] &&
    grep -q 'Execute: action .* on cluster rw\.example\.com .* instance "x"' "$T/daemon.log"; then
    pass remote_build_ran_remotely
else
    fail remote_build_ran_remotely "expected $N_GENRULES remote processes and nothing else, executed through clientd on rw.example.com instance x: $(summary_line "$T/remote.log")"
fi

# Every output is a symlink to exactly cas/.../executable/<its digest>, and reads back right.
BIN="$WS/bazel-bin/gen"
bad=""
for out in "${OUTS[@]}"; do
    want="$CAS/executable/$(sha256sum <"$EXPECT/$out" | cut -d' ' -f1)-$(stat -c %s "$EXPECT/$out")"
    if [ ! -L "$BIN/$out" ]; then
        bad+=" $out($( [ -e "$BIN/$out" ] && echo 'not a symlink' || echo missing))"
    elif [ "$(readlink "$BIN/$out")" != "$want" ]; then
        bad+=" $out(-> $(readlink "$BIN/$out"), want $want)"
    elif ! cmp -s "$BIN/$out" "$EXPECT/$out"; then
        bad+=" $out(content: $(cmp "$BIN/$out" "$EXPECT/$out" 2>&1 | head -n 1))"
    fi
done
if [ -z "$bad" ]; then
    pass outputs_are_symlinks_into_mount
    note "e.g. bazel-bin/gen/small.txt -> $(readlink "$BIN/small.txt")"
else
    fail outputs_are_symlinks_into_mount "$bad"
fi
ran=$("$BIN/tool.sh" directly 2>&1)
if [ "$ran" = "tool ran with directly" ]; then
    pass executable_output_runs
else
    fail executable_output_runs "bazel-bin/gen/tool.sh said '$ran'"
fi

# --- 3. version gating --------------------------------------------------------------------------
FRAG7="$T/fragment-7.2.0.bazelrc"
FRAG6="$T/fragment-6.5.0.bazelrc"
FRAG7T="$T/fragment-7.2.0-tcp.bazelrc"
cl bazelrc --config "$CONFIG" --bazel-version 7.2.0 --instance rw.example.com/x --output "$FRAG7" 2>"$T/bazelrc7.err" ||
    fail bazelrc_7_generated "clientd bazelrc --bazel-version 7.2.0 failed: $(cat "$T/bazelrc7.err")"
cl bazelrc --config "$CONFIG" --bazel-version 7.2.0 --tcp --instance rw.example.com/x --output "$FRAG7T" 2>"$T/bazelrc7t.err" ||
    fail bazelrc_7_tcp_generated "clientd bazelrc --bazel-version 7.2.0 --tcp failed: $(cat "$T/bazelrc7t.err")"
cl bazelrc --config "$CONFIG" --bazel-version 6.5.0 --instance rw.example.com/x --output "$FRAG6" 2>"$T/bazelrc6.err" ||
    fail bazelrc_6_generated "clientd bazelrc --bazel-version 6.5.0 failed: $(cat "$T/bazelrc6.err")"
note "the 7.2.0 fragment:"
sed 's/^/#   /' "$FRAG7"
if [ -s "$FRAG7" ] && ! flags "$FRAG7" | grep -q -v '^common:clientd ' &&
    grep -q -x "common:clientd --experimental_remote_output_service=unix:$DAEMON_SOCKET" "$FRAG7" &&
    grep -q "^common:clientd --experimental_remote_output_service_output_path_prefix=$MNT/outputs\$" "$FRAG7" &&
    ! grep -q symlink_template "$FRAG7"; then
    pass fragment_7_lines
else
    fail fragment_7_lines "want only common:clientd lines, both Output Service flags (unix:$DAEMON_SOCKET, prefix $MNT/outputs), no symlink template"
fi
# Over --tcp every service, the Output Service included, is reached on the TCP listener.
if grep -q -x "common:clientd --remote_executor=grpc://127.0.0.1:$PORT" "$FRAG7T" &&
    grep -q -x "common:clientd --experimental_remote_output_service=grpc://127.0.0.1:$PORT" "$FRAG7T" &&
    ! grep -q unix: "$FRAG7T"; then
    pass fragment_7_tcp_output_service
else
    fail fragment_7_tcp_output_service "want --remote_executor and --experimental_remote_output_service at grpc://127.0.0.1:$PORT: $(flags "$FRAG7T" | tr '\n' '|')"
fi
if [ -s "$FRAG6" ] && ! flags "$FRAG6" | grep -q -v '^build:clientd ' &&
    grep -q -F -x "build:clientd --remote_download_symlink_template=$TEMPLATE" "$FRAG6" &&
    ! grep -q output_service "$FRAG6"; then
    pass fragment_6_lines
else
    fail fragment_6_lines "want only build:clientd lines with the symlink template and no Output Service flag: $(flags "$FRAG6" | tr '\n' '|')"
fi

# Bazel 4.2.3 given the 7.2.0 fragment: refused, naming a flag only the 7.2.0 fragment has.
cp "$FRAG7" "$WS/clientd.bazelrc"
if bzlog gate7 build --config=clientd --nobuild //...; then
    fail bazel_rejects_7_fragment "Bazel 4.2.3 accepted the 7.2.0 fragment (--config=clientd --nobuild succeeded)"
else
    rejected=$(grep -o -E 'Unrecognized option: --[A-Za-z0-9_]+' "$T/gate7.log" | head -n 1 | sed 's/^Unrecognized option: //')
    if [[ "$rejected" == --experimental_remote_output_service* ]] && ! grep -q -e "$rejected=" "$FRAG4"; then
        pass bazel_rejects_7_fragment
        note "Bazel 4.2.3 said: $(grep -m1 'Unrecognized option' "$T/gate7.log" | cut -c1-300)"
    else
        show_log gate7 10
        fail bazel_rejects_7_fragment "want an unrecognized-option error naming an Output Service flag absent from the 4.2.3 fragment; got '${rejected:-no Unrecognized option line}'"
    fi
fi
# ... and accepts the 4.2.3 one.
cp "$FRAG4" "$WS/clientd.bazelrc"
if bzlog gate4 build --config=clientd --nobuild //...; then
    pass bazel_accepts_4_fragment
else
    show_log gate4 10
    fail bazel_accepts_4_fragment "bazel build --config=clientd --nobuild //... with the 4.2.3 fragment failed"
fi

# --- 4. the local cache, over loopback TCP --------------------------------------------------------
FRAGL="$T/fragment-local.bazelrc"
if cl bazelrc --config "$CONFIG" --bazel-version 4.2.3 --tcp --instance local/ws --output "$FRAGL" 2>"$T/bazelrcl.err"; then
    pass bazelrc_local_generated
else
    fail bazelrc_local_generated "clientd bazelrc --instance local/ws (without --cache-only) failed: $(cat "$T/bazelrcl.err")"
fi
WANTL=(
    "build:clientd --remote_cache=grpc://127.0.0.1:$PORT"
    "build:clientd --remote_instance_name=local/ws"
)
if same_lines "$FRAGL" "${WANTL[@]}"; then
    pass fragment_local_lines
else
    fail fragment_local_lines "want exactly: $(printf '[%s] ' "${WANTL[@]}"); got: $(flags "$FRAGL" | tr '\n' '|')"
fi
cp "$FRAGL" "$WS/clientd.bazelrc"
# A clean start: bazel-out still has the remote build's outputs (symlinks into the mount).
bzlog clean0 clean >/dev/null
if bzlog cold build --config=clientd //...; then
    pass cache_cold_build
else
    show_log cold 20
    fail cache_cold_build "bazel build --config=clientd //... with the local cache fragment failed"
fi
bzlog clean1 clean >/dev/null
if bzlog warm build --config=clientd //...; then
    hits=$(count "$T/warm.log" "remote cache hit")
    others=$(count "$T/warm.log" non-internal)
    if [ "$hits" -ge "$N_GENRULES" ] && [ "$hits" -eq "$others" ]; then
        pass cache_warm_all_hits
    else
        fail cache_warm_all_hits "want every action a remote cache hit: $(summary_line "$T/warm.log")"
    fi
    bad=""
    for out in "${OUTS[@]}"; do
        if [ -L "$BIN/$out" ] || [ ! -f "$BIN/$out" ] || ! cmp -s "$BIN/$out" "$EXPECT/$out"; then
            bad+=" $out"
        fi
    done
    if [ -z "$bad" ]; then
        pass cache_hit_outputs_correct
    else
        fail cache_hit_outputs_correct "not regular files with the expected bytes:$bad"
    fi
else
    show_log warm 20
    fail cache_warm_all_hits "the build after bazel clean failed"
fi

# --- 5. errors -----------------------------------------------------------------------------------
out=$(cl bazelrc --config "$CONFIG" --bazel-version 4.2.3 --tcp --instance nowhere.example.com/x 2>&1 >/dev/null)
rc=$?
if [ "$rc" -ne 0 ] && [[ "$out" == *nowhere.example.com* ]] && [[ "$out" == *'"local"'* ]] &&
    [[ "$out" == *'"rw.example.com"'* ]]; then
    pass error_unknown_instance
    note "$out"
else
    fail error_unknown_instance "exit $rc, want non-zero and a message naming the known prefixes: '$out'"
fi
out=$(cl bazelrc --config "$T/config-notcp.json" --bazel-version 4.2.3 --tcp --instance rw.example.com/x 2>&1 >/dev/null)
rc=$?
if [ "$rc" -ne 0 ] && [[ "$out" == *--tcp* ]] && [[ "$out" == *tcp_listen* ]]; then
    pass error_tcp_without_listener
    note "$out"
else
    fail error_tcp_without_listener "exit $rc, want non-zero and a message naming --tcp and grpc.tcp_listen: '$out'"
fi
# Without --bazel-version clientd asks `bazel` on PATH: this Bazel, run outside any workspace.
ln -s "$BAZEL" "$T/bin/bazel"
printed=$(cd "$T" && HOME="$T/home" "$BAZEL" --version 2>/dev/null)
out=$(cd "$T" && PATH="$T/bin:$PATH" cl bazelrc --config "$CONFIG" --tcp --instance rw.example.com/x 2>&1 >/dev/null)
rc=$?
if [[ "$printed" =~ [0-9]+\.[0-9]+ ]]; then
    fail error_unstamped_bazel "$BAZEL --version printed '$printed', a version: the test needs an unstamped Bazel (Debian's)"
elif [ "$rc" -ne 0 ] && [[ "$out" == *--bazel-version* ]] && [[ "$out" == *"$printed"* ]]; then
    pass error_unstamped_bazel
    note "$out"
else
    fail error_unstamped_bazel "bazel --version printed '$printed'; clientd bazelrc exit $rc, want non-zero and a message suggesting --bazel-version: '$out'"
fi

# --- 6. scrub-config, parsed by protobuf itself --------------------------------------------------
if ! "$PY" -m grpc_tools.protoc -I "$ROOT/proto" --python_out="$T/py" \
    "$ROOT/proto/remote_scrubbing/remote_scrubbing.proto" 2>"$T/protoc.err"; then
    cat "$T/protoc.err"
    die protoc "grpc_tools.protoc could not compile proto/remote_scrubbing/remote_scrubbing.proto"
fi
CLIENTD="$CLIENTD" PYTHONPATH="$T/py" "$PY" - "$T" >"$T/scrub.out" 2>&1 <<'EOF'
import os, subprocess, sys
from google.protobuf import text_format
from remote_scrubbing import remote_scrubbing_pb2

clientd = os.environ["CLIENTD"]
failures = 0

def check(name, ok, reason):
    global failures
    if ok:
        print(f"PASS: {name}")
    else:
        print(f"FAIL: {name}: {reason}")
        failures += 1

def scrub(*args):
    return subprocess.run([clientd, "scrub-config", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"})

def parse(text):
    return text_format.Parse(text, remote_scrubbing_pb2.Config())

# The documented example: two mnemonics, one label, a replacement, a salt, the default omission.
run = scrub("--mnemonic", "Genrule", "--mnemonic", "Cpp.*", "--label", "//release:.*",
            "--replace", "build-[0-9]+=build-N", "--salt", "s1")
config = None
try:
    config = parse(run.stdout)
except Exception as e:
    check("scrub_config_parses", False, f"exit {run.returncode}; text_format.Parse: {e}; stdout: {run.stdout!r}")
if config is not None:
    check("scrub_config_parses", run.returncode == 0, f"exit {run.returncode}")
    rules = list(config.rules)
    check("scrub_rules", len(rules) == 2
          and [r.matcher.label for r in rules] == ["//release:.*"] * 2
          and sorted(r.matcher.mnemonic for r in rules) == ["Cpp.*", "Genrule"],
          f"want 2 rules with label //release:.* and mnemonics Genrule, Cpp.*: {[str(r.matcher) for r in rules]}")
    want_omit = ["^bazel-out/volatile-status\\.txt$"]
    check("scrub_default_omit", all(list(r.transform.omitted_inputs) == want_omit for r in rules),
          f"want {want_omit!r}: {[list(r.transform.omitted_inputs) for r in rules]!r}")
    check("scrub_replacement", all(len(r.transform.arg_replacements) == 1
                                   and r.transform.arg_replacements[0].source == "build-[0-9]+"
                                   and r.transform.arg_replacements[0].target == "build-N" for r in rules),
          f"{[[(a.source, a.target) for a in r.transform.arg_replacements] for r in rules]!r}")
    check("scrub_salt", all(r.transform.salt == "s1" for r in rules),
          f"{[r.transform.salt for r in rules]!r}")
    check("scrub_no_other_fields", all(not r.matcher.kind and not r.matcher.match_tools for r in rules),
          "matcher.kind or match_tools set")
warnings = run.stderr
check("scrub_warnings", "remote execution" in warnings and "run locally" in warnings
      and "last one wins" in warnings,
      f"want the remote-execution (run locally) and last-rule-wins warnings on stderr: {warnings!r}")

# Regexes with quotes, backslashes, non-ASCII and control characters come back exactly.
omits = ['^a"b\\\\c\\.txt$', '"quoted" \\d+\\s', 'tab\there', 'new\nline', 'caf\u00e9/\u2603', 'c1\u0085x\u0001y', '\\\\"\\\\']
run = scrub("--label", "//:.*", *sum((["--omit", o] for o in omits), []),
            "--replace", 'v"\\d+\\\\=t"\\q', "--salt", 'salt "\\ with\ttab')
try:
    config = parse(run.stdout)
    rule = config.rules[0]
    got = list(rule.transform.omitted_inputs)
    check("scrub_omit_roundtrip", run.returncode == 0 and len(config.rules) == 1 and got == omits,
          f"exit {run.returncode}; want {omits!r}, got {got!r}")
    a = rule.transform.arg_replacements
    check("scrub_escaping_roundtrip",
          rule.matcher.label == "//:.*" and not rule.matcher.mnemonic and len(a) == 1
          and a[0].source == 'v"\\d+\\\\' and a[0].target == 't"\\q'
          and rule.transform.salt == 'salt "\\ with\ttab',
          f"label {rule.matcher.label!r}, replacement {[(x.source, x.target) for x in a]!r}, salt {rule.transform.salt!r}")
except Exception as e:
    check("scrub_omit_roundtrip", False, f"exit {run.returncode}; text_format.Parse: {e}; stdout: {run.stdout!r}; stderr: {run.stderr!r}")

# `clientd scrub-config --check` reads a file as `clientd serve --scrubbing-config` does: it must
# read what protobuf reads, for the files scrub-config writes and for hand-written syntax.
import json

def normal(config):
    return {"rules": [{"label": r.matcher.label, "mnemonic": r.matcher.mnemonic,
                       "omitted_inputs": list(r.transform.omitted_inputs),
                       "arg_replacements": [{"source": a.source, "target": a.target}
                                            for a in r.transform.arg_replacements],
                       "salt": r.transform.salt} for r in config.rules]}

def same_reading(name, text):
    path = os.path.join(sys.argv[1], name + ".txtpb")
    with open(path, "w") as f:
        f.write(text)
    want = normal(parse(text))
    run = scrub("--check", path)
    try:
        got = json.loads(run.stdout)
    except ValueError:
        got = None
    check(name, run.returncode == 0 and got == want,
          f"exit {run.returncode}; clientd read {got!r}, protobuf {want!r}; stderr {run.stderr!r}")

same_reading("scrub_check_reads_generated", run.stdout)
same_reading("scrub_check_reads_handwritten", """# Syntax a hand-written config may use.
rules <
  matcher: { label: '//a:.*' mnemonic: "Gen" 'rule' }  # adjacent literals concatenate
  transform {
    omitted_inputs: ["bazel-out/volatile-status\\\\.txt", 'x/\\'q\\'.txt'];
    arg_replacements: [{ source: "v\\\\d+" target: "\\x41\\101\\u00e9\\U0001F600" }, < target: "z" >]
    salt: "s;1",
  }
>
rules { }
rules { matcher { match_tools: true kind: "" } transform { salt: "" omitted_inputs: [] } }
""")
# What protobuf reads but a proxy cannot honour is refused, naming the rule and field.
path = os.path.join(sys.argv[1], "kind.txtpb")
with open(path, "w") as f:
    f.write('rules {}\nrules { matcher { kind: "genrule rule" } }\n')
parse(open(path).read())
run = scrub("--check", path)
check("scrub_check_refuses_kind", run.returncode == 1
      and f"scrubbing config {path}: rule 2: line 2: matcher.kind" in run.stderr,
      f"exit {run.returncode}, stderr {run.stderr!r}")

# An invalid regex is refused, naming it.
run = scrub("--mnemonic", "Gen(")
check("scrub_invalid_regex", run.returncode == 1 and "Gen(" in run.stderr and run.stdout == "",
      f"exit {run.returncode}, stdout {run.stdout!r}, stderr {run.stderr!r}")
if run.returncode == 1:
    print(f"# {run.stderr.strip()}")
sys.exit(1 if failures else 0)
EOF
py_rc=$?
cat "$T/scrub.out"
# The program's own PASS/FAIL lines; a crash (no FAIL line) counts once.
n_py_fail=$(grep -c '^FAIL: ' "$T/scrub.out")
FAILURES=$((FAILURES + n_py_fail))
if [ "$py_rc" -ne 0 ] && [ "$n_py_fail" -eq 0 ]; then
    fail scrub_python "the Python check exited $py_rc"
fi

# --- 7. the daemon stayed up; SIGTERM stops it and it unmounts ----------------------------------
check_daemon_alive
bz_shutdown
sigterm_daemon && pass daemon_sigterm

finish
