#!/usr/bin/env bash
# Netty's epoll JNI library (libnetty_transport_native_epoll_<arch>.so) for Debian's Bazel 4.2.3.
# bazel-bootstrap's A-server.jar bundles Debian's netty classes but not their native library, so
# Bazel cannot open UNIX sockets: `--remote_cache=unix:PATH` crashes the server ("Unix domain sockets
# are unsupported on this platform", exit 37). This compiles the library from Debian's netty source
# package for exactly the netty version in the jar.
#
#   netty_epoll.sh install   apt-installs what is missing (gcc, libc6-dev, xz-utils, the JDK's
#                            headers), adds deb-src entries for Debian's archive if apt has none
#                            (/etc/apt/sources.list.d/clientd-deb-src.sources), downloads the netty
#                            source with `apt-get source --download-only`, compiles the library into
#                            .tools/netty-epoll/ and checks that netty's Epoll loads it. No-op when
#                            already built. Run as root.
#   netty_epoll.sh dir       prints the directory holding the library (fails if not built). Use:
#                              bazel --host_jvm_args=-Djava.library.path="$(netty_epoll.sh dir):/usr/share/bazel" ...
#                            (Bazel's own -Djava.library.path=/usr/share/bazel/ comes first and the
#                            last one wins; /usr/share/bazel only holds libcpu_profiler.so.)
#
# The flags are netty 4.1.48's own (transport-native-unix-common/pom.xml and
# transport-native-epoll/pom.xml, less -Werror as in Debian's 15-disable-Werror.patch); Debian's
# patches do not touch the C sources. NETTY_BUILD_STATIC is left undefined: JNI_OnLoad then takes
# the package prefix from the library's own file name (dladdr), and the plain name
# libnetty_transport_native_epoll_<arch>.so means no prefix, i.e. the natives are registered on
# the unshaded io/netty/... classes, as A-server.jar has them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT="$ROOT/.tools/netty-epoll"
SERVER_JAR=/usr/share/bazel/A-server.jar
POM_PROPERTIES=META-INF/maven/io.netty/netty-transport-native-epoll/pom.properties
DEB_SRC_FILE=/etc/apt/sources.list.d/clientd-deb-src.sources
DEB_SRC_LIST=/etc/apt/sources.list.d/clientd-deb-src.list
CFLAGS=(-O3 -Wno-attributes -fPIC -fno-omit-frame-pointer -Wunused-variable -fvisibility=hidden)
LDFLAGS=('-Wl,--no-as-needed' -lrt)

log() { printf 'netty_epoll: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source-path=SCRIPTDIR source=../install_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../install_lib.sh"

# netty's name for the architecture (PlatformDependent.normalizedArch).
netty_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo x86_64 ;;
        aarch64 | arm64) echo aarch_64 ;;
        *) die "unsupported architecture: $(uname -m)" ;;
    esac
}

lib_name() { printf 'libnetty_transport_native_epoll_%s.so\n' "$(netty_arch)"; }

# Identifies the inputs of a build: a rebuild happens when Bazel's package (so its netty) changes.
stamp() {
    dpkg-query -W -f='${Package}=${Version} ' bazel-bootstrap 2>/dev/null || true
    printf '%s netty-epoll-1\n' "$(lib_name)"
}

# Built and unchanged since: the stamp is written last, after a successful compile and check.
installed() {
    [ -f "$OUT/stamp" ] && [ -f "$SERVER_JAR" ] && [ "$(cat "$OUT/stamp")" = "$(stamp)" ] \
        && (cd "$OUT" && sha256sum --quiet --status -c SHA256SUMS 2>/dev/null)
}

# The JDK that /usr/bin/java runs (Bazel's server javabase on Debian), with its JNI headers.
java_home() {
    local java
    java=$(readlink -f "$(command -v java)") || die "java not found (bazel-bootstrap pulls in a JDK)"
    printf '%s\n' "${java%/bin/java}"
}

ensure_jni_headers() {
    local jh=$1 java pkg
    [ -f "$jh/include/jni.h" ] && [ -f "$jh/include/linux/jni_md.h" ] && return 0
    java="$jh/bin/java"
    pkg=$(dpkg -S "$java" 2>/dev/null | head -n1 | cut -d: -f1) || true
    case "$pkg" in
        *-jre-headless | *-jdk-headless) pkg="${pkg%-j??-headless}-jdk-headless" ;;
        *) die "no JNI headers in $jh and no Debian package owns $java" ;;
    esac
    apt_install "$pkg"
    [ -f "$jh/include/jni.h" ] || die "$pkg did not install $jh/include/jni.h"
}

# netty's version in A-server.jar, e.g. 4.1.48 (from 4.1.48.Final).
jar_netty_version() {
    local tmp=$1 v
    (cd "$tmp" && unzip -q -o "$SERVER_JAR" "$POM_PROPERTIES") \
        || die "$SERVER_JAR has no $POM_PROPERTIES"
    v=$(sed -n 's/^version=//p' "$tmp/$POM_PROPERTIES" | tr -d '\r')
    [ -n "$v" ] || die "no version in $SERVER_JAR!$POM_PROPERTIES"
    printf '%s\n' "${v%.Final}"
}

have_deb_src() {
    # shellcheck disable=SC2016 # $(CREATED_BY) is apt's template, not a shell expansion
    apt-get indextargets --format '$(CREATED_BY)' 2>/dev/null | grep -qx Sources
}

# deb-src twins of Debian's deb entries (same URIs, suites, components, keys), in a file of ours.
add_deb_src() {
    local deb822=/etc/apt/sources.list.d/debian.sources oneline=/etc/apt/sources.list
    if [ -f "$deb822" ] && grep -qE '^Types:.*\bdeb\b' "$deb822"; then
        log "adding deb-src entries for $deb822 in $DEB_SRC_FILE"
        {
            echo "# Added by tests/peers/netty_epoll.sh (apt-get source netty): deb-src twins of $deb822."
            sed -E 's/^Types:.*/Types: deb-src/' "$deb822"
        } >"$DEB_SRC_FILE"
    elif [ -f "$oneline" ] && grep -qE '^deb[[:space:]]' "$oneline"; then
        log "adding deb-src entries for $oneline in $DEB_SRC_LIST"
        {
            echo "# Added by tests/peers/netty_epoll.sh (apt-get source netty): deb-src twins of $oneline."
            sed -nE 's/^deb([[:space:]])/deb-src\1/p' "$oneline"
        } >"$DEB_SRC_LIST"
    else
        die "no Debian deb entries found ($deb822 or $oneline) to add deb-src entries for"
    fi
}

# The Debian versions of source package netty (1:4.1.48-7+deb12u2, ...) apt knows, one a line.
netty_src_versions() {
    apt-cache showsrc netty 2>/dev/null | sed -n 's/^Version: //p' | sort -u
}

# Downloads netty's source package for upstream version $2 into $1; prints the orig tarball.
fetch_source() {
    local dir=$1 want=$2 v u best=""
    if ! have_deb_src; then
        add_deb_src
        apt_update
    elif [ -z "$(netty_src_versions)" ] && [ "$APT_UPDATED" -eq 0 ]; then
        apt_update
    fi
    # The newest Debian revision of exactly that upstream version (strip epoch and revision).
    while read -r v; do
        u=${v#*:}
        [ "${u%-*}" = "$want" ] && best=$v
    done < <(netty_src_versions | sort -V)
    [ -n "$best" ] || die "apt knows no netty source package of version $want (has: $(netty_src_versions | tr '\n' ' '))"
    # Let apt's _apt user write there (otherwise it downloads unsandboxed, with a notice).
    id _apt >/dev/null 2>&1 && chown _apt "$dir"
    log "apt-get source --download-only netty=$best"
    (cd "$dir" && quiet "${APT[@]}" source --download-only "netty=$best")
    local orig
    orig=$(find "$dir" -maxdepth 1 -name "netty_${want}.orig.tar.*" | head -n1)
    [ -n "$orig" ] || die "no netty_${want}.orig.tar.* after apt-get source"
    printf '%s\n' "$orig"
}

# Loads the library through A-server.jar's own netty classes, as Bazel will.
check_lib() {
    local tmp=$1 jh=$2
    cat >"$tmp/CheckEpoll.java" <<'EOF'
public class CheckEpoll {
    public static void main(String[] args) throws Exception {
        if (!io.netty.channel.epoll.Epoll.isAvailable()) {
            io.netty.channel.epoll.Epoll.unavailabilityCause().printStackTrace();
            System.exit(1);
        }
        // A UNIX socket: the natives of transport-native-unix-common (io/netty/channel/unix).
        io.netty.channel.unix.Socket.newSocketDomain().close();
        System.out.println("epoll available");
    }
}
EOF
    quiet "$jh/bin/java" -Djava.library.path="$OUT" -cp "$SERVER_JAR" "$tmp/CheckEpoll.java"
}

cmd_install() {
    installed && return 0
    local start=$SECONDS
    log "building $(lib_name) into $OUT"
    apt_install bazel-bootstrap gcc libc6-dev xz-utils unzip
    [ -f "$SERVER_JAR" ] || die "$SERVER_JAR not found (bazel-bootstrap)"

    local jh tmp ver orig lib
    jh=$(java_home)
    ensure_jni_headers "$jh"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/netty-epoll.XXXXXX")
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    chmod 755 "$tmp"
    ver=$(jar_netty_version "$tmp")
    mkdir "$tmp/src"
    orig=$(fetch_source "$tmp/src" "$ver")

    local top="netty-netty-$ver.Final" epoll_c unix_c
    log "extracting the C sources from $(basename "$orig")"
    quiet tar -xf "$orig" -C "$tmp" --wildcards \
        "*/transport-native-epoll/src/main/c/*" "*/transport-native-unix-common/src/main/c/*"
    [ -d "$tmp/$top" ] || top=$(cd "$tmp" && find . -maxdepth 2 -type d -name transport-native-epoll -printf '%h\n' | head -n1)
    epoll_c="$tmp/$top/transport-native-epoll/src/main/c"
    unix_c="$tmp/$top/transport-native-unix-common/src/main/c"
    if [ ! -d "$epoll_c" ] || [ ! -d "$unix_c" ]; then die "no native sources in $(basename "$orig")"; fi

    lib=$(lib_name)
    rm -rf "$OUT"
    mkdir -p "$OUT"
    log "compiling with gcc ${CFLAGS[*]} (JDK $jh)"
    quiet gcc -shared -o "$OUT/$lib" "${CFLAGS[@]}" \
        -I"$jh/include" -I"$jh/include/linux" -I"$unix_c" \
        "$epoll_c"/*.c "$unix_c"/*.c "${LDFLAGS[@]}"

    log "checking that netty's Epoll in $SERVER_JAR loads it"
    check_lib "$tmp" "$jh" || { rm -rf "$OUT"; die "the library does not load (see above)"; }
    (cd "$OUT" && sha256sum "$lib" >SHA256SUMS)
    stamp >"$OUT/stamp"
    log "installed $OUT/$lib (netty $ver) in $((SECONDS - start)) s"
}

cmd_dir() {
    if [ ! -f "$OUT/stamp" ] || [ ! -f "$OUT/$(lib_name)" ]; then die "not built; run: $0 install"; fi
    printf '%s\n' "$OUT"
}

main() {
    local cmd=${1:-}
    [ "$#" -gt 0 ] && shift
    case "$cmd" in
        install) cmd_install "$@" ;;
        dir) cmd_dir "$@" ;;
        *) die "usage: $0 install | dir" ;;
    esac
}

main "$@"
