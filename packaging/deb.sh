#!/usr/bin/env bash
# Builds the Debian package of clientd: the release binary (/usr/bin/clientd), the systemd user
# unit (/usr/lib/systemd/user/clientd.service) and the README (/usr/share/doc/clientd/). The
# package's metadata is [package.metadata.deb] in rust/clientd/Cargo.toml.
#
#   packaging/deb.sh            installs cargo-deb into .tools/cargo-deb (once, from crates.io,
#                               a few minutes), builds target/debian/clientd_<version>_<arch>.deb
#                               and prints its path on the last line of standard output
#
# Then: `sudo dpkg -i target/debian/clientd_*.deb` and `systemctl --user enable --now clientd`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO_DEB_VERSION=3.8.0
TOOL="$ROOT/.tools/cargo-deb"

log() { printf 'deb: %s\n' "$*" >&2; }

if [ "$("$TOOL/bin/cargo-deb" --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    start=$SECONDS
    log "installing cargo-deb $CARGO_DEB_VERSION into $TOOL (from crates.io)"
    cargo install --quiet --locked --root "$TOOL" --version "$CARGO_DEB_VERSION" cargo-deb
    log "cargo-deb ready ($((SECONDS - start)) s)"
fi
cd "$ROOT"
start=$SECONDS
log "building the release binary and the package"
# --locked: the versions in Cargo.lock, as `cargo install --locked` builds.
deb=$("$TOOL/bin/cargo-deb" --package clientd --locked --quiet)
log "built $deb ($((SECONDS - start)) s)"
echo "$deb"
