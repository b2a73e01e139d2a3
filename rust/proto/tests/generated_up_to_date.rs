//! Checks that the checked-in bindings in `src/gen/` match what
//! tonic-prost-build (with protox as the .proto compiler) generates from the
//! `.proto` files today.
//!
//! * Default: generate into a temporary directory and require every file to be
//!   byte-identical to `src/gen/`, with no missing or extra files.
//! * `CLIENTD_REGENERATE=1`: write the freshly generated files into `src/gen/`
//!   (removing stale `.rs` files there) instead of comparing.
//!
//! Locations (overridable so the test also runs under Bazel, where
//! `CARGO_MANIFEST_DIR` is not a usable path at run time):
//! * `CLIENTD_PROTO_ROOT`: the proto root (default `$CARGO_MANIFEST_DIR/../../proto`).
//! * `CLIENTD_GEN_DIR`: the checked-in bindings (default `$CARGO_MANIFEST_DIR/src/gen`).

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const STALE: &str = "generated code is stale: run CLIENTD_REGENERATE=1 cargo test -p clientd-proto --test generated_up_to_date";

fn env_path(var: &str) -> Option<PathBuf> {
    env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn proto_root() -> PathBuf {
    env_path("CLIENTD_PROTO_ROOT")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto"))
}

fn gen_dir() -> PathBuf {
    env_path("CLIENTD_GEN_DIR")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen"))
}

/// All `.proto` files under `root`, as root-relative paths with `/`
/// separators, sorted so that generation does not depend on directory order.
fn proto_files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                let rel = path.strip_prefix(root).expect("path under the proto root");
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(rel.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Generates the bindings for every `.proto` file under `root` into `out_dir`.
fn generate(root: &Path, out_dir: &Path) {
    let files = proto_files(root);
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        root.display()
    );
    // protox resolves root-relative names against the include path, exactly
    // like `import` statements.
    // The set includes the bundled google/protobuf/*.proto descriptors, which
    // prost-build needs for type analysis; no code is generated for them
    // (well-known types map to prost_types by default).
    let fds = protox::compile(&files, [root])
        .unwrap_or_else(|e| panic!("compiling protos under {}: {e:?}", root.display()));
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .out_dir(out_dir)
        .compile_fds(fds)
        .expect("tonic-prost-build code generation");
}

/// The `.rs` files directly in `dir`, by file name.
fn read_rs_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "rs") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            files.insert(name, bytes);
        }
    }
    files
}

#[test]
fn generated_code_is_up_to_date() {
    let root = proto_root();
    let gen = gen_dir();
    let tmp = tempfile::tempdir().expect("temporary directory");
    generate(&root, tmp.path());
    let fresh = read_rs_files(tmp.path());
    assert!(!fresh.is_empty(), "tonic-prost-build generated no files");

    if env::var("CLIENTD_REGENERATE").is_ok_and(|v| v == "1") {
        fs::create_dir_all(&gen).expect("creating the gen directory");
        for name in read_rs_files(&gen).keys() {
            if !fresh.contains_key(name) {
                fs::remove_file(gen.join(name)).expect("removing a stale generated file");
            }
        }
        for (name, bytes) in &fresh {
            fs::write(gen.join(name), bytes).expect("writing a generated file");
        }
        eprintln!("regenerated {} files in {}", fresh.len(), gen.display());
        return;
    }

    let checked_in = read_rs_files(&gen);
    let missing: Vec<&String> = fresh
        .keys()
        .filter(|n| !checked_in.contains_key(*n))
        .collect();
    let extra: Vec<&String> = checked_in
        .keys()
        .filter(|n| !fresh.contains_key(*n))
        .collect();
    let differing: Vec<&String> = fresh
        .iter()
        .filter(|(n, bytes)| checked_in.get(*n).is_some_and(|old| old != *bytes))
        .map(|(n, _)| n)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differing.is_empty(),
        "{STALE}\n  gen dir: {}\n  missing: {missing:?}\n  extra: {extra:?}\n  differing: {differing:?}",
        gen.display()
    );
}
