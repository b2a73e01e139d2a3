"""`clientd_crate`: the Bazel targets of one of clientd's library crates (rust/<dir>).

    load("//rust:crate.bzl", "clientd_crate")

    clientd_crate(
        name = "clientd_store",
        deps = [
            "//rust/digest:clientd_digest",
            "//rust/proto:clientd_proto",
        ],
    )

External crates come from Cargo.toml through crate_universe's all_crate_deps() (for the
package of the BUILD file that calls the macro), with their Cargo names from aliases();
`deps` are the internal path dependencies. tests/check_bazel_sync.py evaluates this file to check each crate against
its Cargo.toml, so a change here is checked like a change in a BUILD file.
"""

load("@clientd_crates//:defs.bzl", "aliases", "all_crate_deps")
load("@rules_rust//rust:defs.bzl", "rust_library", "rust_test")

def clientd_crate(name, deps = []):
    """Declares a library crate, its unit tests and one rust_test per tests/*.rs.

    Targets, in the package of the calling BUILD file:
      * `name`: rust_library of src/**/*.rs (crate root src/lib.rs), edition 2021, public,
        taking `deps` and the [dependencies] of Cargo.toml (proc-macros in proc_macro_deps);
      * `name + "_test"`: rust_test of the library's #[cfg(test)] code (`crate = ":name"`),
        adding [dev-dependencies];
      * one rust_test per tests/*.rs, named after the file like `cargo test --test NAME`,
        with tests/common/**/*.rs; like Cargo's integration tests they see the library,
        `deps`, [dependencies] and [dev-dependencies].

    Args:
      name: the library target and the crate name (Cargo's lib name, e.g. "clientd_store").
      deps: labels of the internal path dependencies ([dependencies] with `path = ...`).
    """
    rust_library(
        name = name,
        srcs = native.glob(["src/**/*.rs"]),
        # Renamed dependencies (`hex = { package = "const-hex" }`) keep their Cargo names.
        aliases = aliases(),
        crate_name = name,
        edition = "2021",
        proc_macro_deps = all_crate_deps(proc_macro = True),
        visibility = ["//visibility:public"],
        deps = deps + all_crate_deps(normal = True),
    )

    rust_test(
        name = name + "_test",
        aliases = aliases(
            normal = True,
            normal_dev = True,
        ),
        crate = ":" + name,
        proc_macro_deps = all_crate_deps(proc_macro_dev = True),
        deps = all_crate_deps(normal_dev = True),
    )

    for src in native.glob(["tests/*.rs"], allow_empty = True):
        rust_test(
            name = src[len("tests/"):-len(".rs")],
            srcs = [src] + native.glob(["tests/common/**/*.rs"], allow_empty = True),
            aliases = aliases(
                normal = True,
                normal_dev = True,
            ),
            crate_root = src,
            edition = "2021",
            proc_macro_deps = all_crate_deps(
                proc_macro = True,
                proc_macro_dev = True,
            ),
            deps = [":" + name] + deps + all_crate_deps(
                normal = True,
                normal_dev = True,
            ),
        )
