#!/usr/bin/env bash
# End-to-end proof of `clientd explain` and the daemon's pages: Bazel 4.2.3 builds through
# clientd's UNIX socket (the fragment `clientd bazelrc` writes) with remote execution on Bazel's
# remote worker; between two builds one source file changes and one --action_env; `clientd
# explain` names exactly those causes with the right action counts, from the activity record
# (kept across a daemon restart) and the Actions, Commands and input trees in the CAS. Then a real
# browser (Debian's chromium, headless) loads the pages of the daemon's HTTP listener
# (--http-listen): `/` lists the invocation, the invocation's page lists //pkg:a, and its action
# page shows the command and the miss explanation, and opens its inputs through the listener.
# SCREENSHOTS=DIR saves the action page and the invocation page as PNGs there (docs/ has them).
# Then a cache-only build (local/ instance, Bazel runs the actions): explain names the changed
# variable and says the inputs changed without knowing which (Bazel uploads no input tree); after
# `bazel clean` every action hits, and every byte Bazel read came from the local cache.
#
# The workspace: //pkg:a reads pkg/a.txt; //pkg:b and //pkg:c read nothing. Build 1 with
# --action_env=FOO=1, then pkg/a.txt changes and build 2 has --action_env=FOO=2: all three
# actions miss; two because FOO changed, one because FOO changed and pkg/a.txt changed.
#
# Needs: tests/setup.sh (bazel-bootstrap), cargo; installs the remote worker and netty's epoll
# library itself (idempotent). CLIENTD=/path/to/clientd tests a given binary. KEEP_TMP=1 keeps the
# temp dir. Prints `PASS: name` / `FAIL: name: reason` and `# ...` notes; exits non-zero on any
# failure.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_bazel
need_netty_epoll
install_peer remote_worker
make_tmp clientd-e2e-explain
build_clientd

command -v chromium >/dev/null || die setup "chromium is missing (tests/setup.sh installs it)"
read -r RW_PORT HTTP_PORT < <(free_port 2)
start_remote_worker "$T/rw" "$RW_PORT"
CLUSTER="rw.example.com=grpc://127.0.0.1:$RW_PORT"
HTTP="http://127.0.0.1:$HTTP_PORT"
start_daemon serve --no-mount --cluster "$CLUSTER" --http-listen "127.0.0.1:$HTTP_PORT" ||
    die daemon_start "$DAEMON_ERROR"
pass daemon_start

WS="$T/ws"
new_workspace "$WS" "build --remote_timeout=30"
mkdir -p "$WS/pkg"
echo "first" >"$WS/pkg/a.txt"
cat >"$WS/pkg/BUILD" <<'BUILD'
genrule(name = "a", srcs = ["a.txt"], outs = ["a.out"], cmd = "cat $< > $@; echo $$FOO >> $@")
genrule(name = "b", outs = ["b.out"], cmd = "echo b $$FOO > $@")
genrule(name = "c", outs = ["c.out"], cmd = "echo c $$FOO > $@")
BUILD
write_fragment --instance rw.example.com/x

build() { bzlog "$1" build --config=clientd --spawn_strategy=remote "--action_env=FOO=$2" //pkg:all; }
build build1 1 || { show_log build1; die build1 "bazel build failed"; }
echo "second" >"$WS/pkg/a.txt"
build build2 2 || { show_log build2; die build2 "bazel build failed"; }
if [ "$(count "$T/build2.log" remote)" -eq 3 ]; then
    pass build2_executed_three
else
    fail build2_executed_three "$(summary_line "$T/build2.log")"
fi

# check_explanation NAME: `clientd explain` about build 2.
check_explanation() {
    local out
    if ! out=$(cl explain 2>&1); then
        fail "$1" "clientd explain failed: $out"
        return
    fi
    note "clientd explain:"
    sed 's/^/#   /' <<<"$out"
    local env='  - environment variable FOO: `1` -> `2`'
    local two one
    two=$(printf '2 actions missed because:\n%s\n  (' "$env")
    one=$(printf '1 action missed because:\n%s\n  - input pkg/a.txt: ' "$env")
    if grep -q "^invocation .*: 3 actions, 0 cache hits, 3 misses$" <<<"$out" &&
        [[ "$out" == *"$two"* ]] && [[ "$out" == *"$one"* ]] &&
        [[ "$out" == *"(//pkg:a (Genrule))"* ]] &&
        [ "$(grep -c 'missed because' <<<"$out")" -eq 2 ]; then
        pass "$1"
    else
        fail "$1" "want 3 misses: 2 because FOO 1 -> 2, 1 (//pkg:a) because FOO and pkg/a.txt changed"
    fi
    # Build 2's outputs ran on the worker: Bazel's downloads were fetched from the cluster.
    check_bytes "$1_bytes" "$out" fetched
}

# check_bytes NAME EXPLAIN_OUTPUT fetched|local: the invocation's bytes read, all of them
# fetched from clusters or all from the local cache.
check_bytes() {
    local re='^bytes read: ([0-9]+) \(([0-9]+) from the local cache, ([0-9]+) fetched from clusters\)$'
    local line served local fetched
    line=$(grep -E "$re" <<<"$2")
    served=$(sed -E "s/$re/\1/" <<<"$line")
    local=$(sed -E "s/$re/\2/" <<<"$line")
    fetched=$(sed -E "s/$re/\3/" <<<"$line")
    if [ -n "$line" ] && [ "$served" -gt 0 ] &&
        { { [ "$3" = fetched ] && [ "$fetched" = "$served" ]; } ||
            { [ "$3" = local ] && [ "$local" = "$served" ] && [ "$fetched" = 0 ]; }; }; then
        pass "$1"
    else
        fail "$1" "want every byte read $3: ${line:-no bytes line}"
    fi
}
check_explanation explain_names_the_causes

out=$(cl explain --list 2>&1)
if [ "$(grep -c '^  ' <<<"$out")" -eq 2 ]; then
    pass explain_lists_two_invocations
else
    fail explain_lists_two_invocations "$out"
fi

# The record survives a restart (the daemon keeps it in its cache directory).
stop_daemon
start_daemon serve --no-mount --cluster "$CLUSTER" --http-listen "127.0.0.1:$HTTP_PORT" ||
    die daemon_restart "$DAEMON_ERROR"
check_explanation explain_after_restart

# --- the pages, in a real browser -------------------------------------------------------------
# browse URL: the DOM chromium builds for URL (headless; as root it needs --no-sandbox).
browse() {
    timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --user-data-dir="$T/chromium" --dump-dom "$1" 2>>"$T/chromium.log"
}
shot() {
    timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --user-data-dir="$T/chromium" --hide-scrollbars --window-size=1200,1100 \
        --screenshot="$2" "$1" >>"$T/chromium.log" 2>&1
}
INVOCATION=$(cl explain | sed -n 's/^invocation \([^:]*\):.*/\1/p')
index=$(browse "$HTTP/")
if [[ "$index" == *"$INVOCATION"* ]] && [[ "$index" == *"/invocation?id=$INVOCATION"* ]] &&
    [[ "$index" == *"Bytes by source"* ]] && [[ "$index" == *"<th>fetched from clusters</th>"* ]]; then
    pass page_lists_the_invocation
else
    fail page_lists_the_invocation "/ does not list $INVOCATION: $(head -c 600 <<<"$index")"
fi
inv_page=$(browse "$HTTP/invocation?id=$INVOCATION&outcome=miss")
# The link to //pkg:a's action page (the DOM keeps &amp; in attributes).
action_url=$(grep -o '/action?invocation=[^"]*' <<<"$inv_page" | sed 's/&amp;/\&/g' |
    while read -r url; do grep -q ">//pkg:a<" <<<"$(browse "$HTTP$url")" && echo "$url" && break; done)
if [[ "$inv_page" == *"//pkg:b"* ]] && [[ "$inv_page" == *"executed_remotely"* ]] && [ -n "$action_url" ]; then
    pass page_lists_the_actions
else
    fail page_lists_the_actions "no //pkg:a action link on the invocation page: $(head -c 600 <<<"$inv_page")"
fi
action_page=$(browse "$HTTP$action_url")
if [[ "$action_page" == *"Why it missed the cache"* ]] &&
    [[ "$action_page" == *'environment variable FOO: `1` -&gt; `2`'* ]] &&
    [[ "$action_page" == *"input pkg/a.txt"* ]] &&
    [[ "$action_page" == *"genrule-setup.sh"* ]] && [[ "$action_page" == *"exit code 0"* ]]; then
    pass page_shows_command_and_explanation
else
    fail page_shows_command_and_explanation "$(head -c 1500 <<<"$action_page")"
fi
# A blob link from the page opens the blob: pkg/a.txt's content.
blob_url=$(grep -o '/blob?instance=[^"]*' <<<"$action_page" | sed 's/&amp;/\&/g' |
    while read -r url; do [ "$(curl -s "$HTTP$url")" = "second" ] && echo "$url" && break; done)
if [ -n "$blob_url" ]; then
    pass page_opens_input_blob
else
    fail page_opens_input_blob "no blob link on the action page opens pkg/a.txt"
fi
# Pages that cannot be shown say why, with a status a script can act on: 400 for a request that
# lacks what it must name or names it malformed (a blob the cache has, under an instance name with
# a reserved segment), 404 for what is not there.
page_status() { curl -s -o "$T/page_body" -w '%{http_code}' "$HTTP$1"; }
got="$(page_status "/blob") $(page_status "/blob?instance=local&digest=md4/x/1") \
$(page_status "/blob?instance=local/blobs&digest=${blob_url##*digest=}") \
$(page_status "/invocation?id=no-such-invocation") $(page_status "/action?invocation=$INVOCATION&action=sha256/00/1")"
if [ "$got" = "400 400 400 404 404" ] && grep -q "no action sha256/00/1 in invocation" "$T/page_body"; then
    pass page_refusals_have_their_status
else
    fail page_refusals_have_their_status "statuses $got (want 400 400 400 404 404); last body: $(head -c 300 "$T/page_body")"
fi
if [ -n "${SCREENSHOTS:-}" ]; then
    mkdir -p "$SCREENSHOTS"
    shot "$HTTP$action_url" "$SCREENSHOTS/page-action.png"
    shot "$HTTP/invocation?id=$INVOCATION" "$SCREENSHOTS/page-invocation.png"
    note "screenshots in $SCREENSHOTS"
fi

out=$(cl explain no-such-invocation 2>&1)
if [[ "$out" == *'no invocation "no-such-invocation" in the activity record'* ]]; then
    pass explain_unknown_invocation
else
    fail explain_unknown_invocation "$out"
fi
# --- a cache-only build: Bazel runs the actions and uploads their results ----------------------
# Bazel uploads each Action and Command but no input tree: `clientd explain` still names the
# environment change, and says that the inputs changed but not which (only the input root's
# digest is known).
write_fragment --instance local/explain
cache_build() { bzlog "$1" build --config=clientd "--action_env=FOO=$2" //pkg:all; }
echo "third" >"$WS/pkg/a.txt"
cache_build build3 1 || { show_log build3; die build3 "bazel build failed"; }
echo "fourth" >"$WS/pkg/a.txt"
cache_build build4 2 || { show_log build4; die build4 "bazel build failed"; }
out=$(cl explain 2>&1)
note "clientd explain (cache-only):"
sed 's/^/#   /' <<<"$out"
env='  - environment variable FOO: `1` -> `2`'
two=$(printf '2 actions missed because:\n%s\n  (' "$env")
one=$(printf '1 action missed because:\n%s\n  - the input files changed; which ones is not known: an input tree is not in the CAS' "$env")
if grep -q "^invocation .*: 3 actions, 0 cache hits, 3 misses$" <<<"$out" &&
    [[ "$out" == *"$two"* ]] && [[ "$out" == *"$one"* ]] && [[ "$out" == *"(//pkg:a (Genrule))"* ]]; then
    pass explain_cache_only
else
    fail explain_cache_only "want 2 misses because FOO 1 -> 2, and //pkg:a because FOO and its (unknown) inputs changed"
fi
# After `bazel clean` the same build hits, and its outputs come from the local cache.
bz_clean clean4
cache_build build5 2 || { show_log build5; die build5 "bazel build failed"; }
out=$(cl explain 2>&1)
if grep -q "^invocation .*: 3 actions, 3 cache hits, 0 misses$" <<<"$out"; then
    pass explain_cache_only_hits
else
    fail explain_cache_only_hits "$out"
fi
check_bytes explain_cache_only_bytes_local "$out" local
check_daemon_alive
finish
