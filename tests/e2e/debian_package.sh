#!/usr/bin/env bash
# End-to-end proof of the Debian package (packaging/deb.sh, cargo-deb from crates.io): it holds
# the binary, the systemd user unit and the README; `dpkg -i` installs it (fuse3 is its only
# dependency beyond libc); the installed binary runs `clientd --version`; the installed unit
# passes `systemd-analyze verify` (its ExecStart and ExecStopPost binaries exist now); `clientd
# unmount` (the unit's ExecStopPost) succeeds when nothing is mounted; `dpkg -r` removes it all.
#
# Needs root (dpkg -i), cargo, dpkg-deb and systemd-analyze (Debian's systemd). If a clientd
# package was installed before the test, it is left installed (the test's version replaces it).
# Prints `PASS: name` / `FAIL: name: reason` and `# ...` notes; exits non-zero on any failure.
set -uo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die setup "dpkg -i needs root"
command -v systemd-analyze >/dev/null || die setup "systemd-analyze is missing (apt-get install systemd)"
make_tmp clientd-e2e-deb
installed_before=0
dpkg -s clientd >/dev/null 2>&1 && installed_before=1

remove_package() {
    if [ "$installed_before" -eq 0 ] && dpkg -s clientd >/dev/null 2>&1; then
        dpkg -r clientd >/dev/null 2>&1
    fi
}
CLEANUP_HOOKS+=(remove_package)

start=$SECONDS
if deb=$(bash "$ROOT/packaging/deb.sh" 2>"$T/deb.err" | tail -n 1) && [ -f "$deb" ]; then
    pass package_built
    note "$deb ($((SECONDS - start)) s, $(du -h "$deb" | cut -f1))"
else
    cat "$T/deb.err"
    die package_built "packaging/deb.sh did not build a package"
fi

contents=$(dpkg-deb --contents "$deb" | awk '{ print $6 }')
missing=""
for path in ./usr/bin/clientd ./usr/lib/systemd/user/clientd.service ./usr/share/doc/clientd/README.md; do
    grep -qx "$path" <<<"$contents" || missing+=" $path"
done
if [ -z "$missing" ]; then
    pass package_contents
else
    fail package_contents "missing:$missing; has: $(tr '\n' ' ' <<<"$contents")"
fi
depends=$(dpkg-deb --field "$deb" Depends)
if [[ "$depends" == *fuse3* ]]; then pass package_depends_on_fuse3; else fail package_depends_on_fuse3 "Depends: $depends"; fi

if dpkg -i "$deb" >"$T/dpkg-i.log" 2>&1; then
    pass dpkg_install
else
    cat "$T/dpkg-i.log"
    die dpkg_install "dpkg -i $deb failed"
fi
version=$(/usr/bin/clientd --version 2>&1)
want="clientd $(dpkg-deb --field "$deb" Version | cut -d- -f1)"
if [ "$version" = "$want" ]; then pass installed_binary_runs; else fail installed_binary_runs "clientd --version: '$version', want '$want'"; fi
if out=$(systemd-analyze verify /usr/lib/systemd/user/clientd.service 2>&1); then
    pass unit_verifies
else
    fail unit_verifies "systemd-analyze verify: $out"
fi
if out=$(HOME="$T/home" XDG_CACHE_HOME="$T/cache" /usr/bin/clientd unmount 2>&1) && [[ "$out" == *"nothing is mounted"* ]]; then
    pass unit_stop_post_is_harmless
else
    fail unit_stop_post_is_harmless "clientd unmount with nothing mounted: $out"
fi
if [ "$installed_before" -eq 0 ]; then
    if dpkg -r clientd >"$T/dpkg-r.log" 2>&1 && [ ! -e /usr/bin/clientd ] &&
        [ ! -e /usr/lib/systemd/user/clientd.service ]; then
        pass dpkg_remove
    else
        fail dpkg_remove "$(cat "$T/dpkg-r.log")"
    fi
fi

finish
