//! Lookups and listings, without mounting; and the helpers the other parts' tests share.

use super::*;
use crate::cas::{DigestFunctions, LocalRouting, Routing};
use clientd_digest::{DigestFunction, InstanceName};
use clientd_store::{BlobStore, DiskLruOptions, LocalCas, SystemClock};
use std::time::Duration;

pub(super) fn vfs(dir: &std::path::Path, pool_bytes: u64) -> (Vfs, Arc<LocalCas>) {
    vfs_with(dir, pool_bytes, Box::new(LocalRouting))
}

fn vfs_with(
    dir: &std::path::Path,
    pool_bytes: u64,
    routing: Box<dyn Routing>,
) -> (Vfs, Arc<LocalCas>) {
    let options = DiskLruOptions {
        max_bytes: 1 << 20,
        sync_writes: false,
    };
    let local = Arc::new(LocalCas::open(&dir.join("cas"), options, Arc::new(SystemClock)).unwrap());
    let cas = CasView::new(
        local.clone(),
        routing,
        local.clone(),
        Duration::from_secs(5),
    );
    let pool = Pool::open_empty(&dir.join("pool"), pool_bytes).unwrap();
    (Vfs::new(cas, pool, 1000, 1000), local)
}

pub(super) fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// cas/ resolves the instance names the gRPC front serves, and no others: a local blob is
/// not readable under a name a gRPC call would be refused for.
#[tokio::test]
async fn cas_serves_only_routable_instance_names() {
    let dir = tempfile::tempdir().unwrap();
    let (vfs, local) = vfs(dir.path(), 1 << 20);
    let data = bytes::Bytes::from_static(b"content");
    let digest = clientd_digest::DigestFunction::Sha256.digest_of(&data);
    local
        .write_bytes(&InstanceName::default(), &digest, data)
        .await
        .unwrap();
    let nosuch = vfs.lookup(CAS_ROOT, name("nosuch")).await.unwrap().ino;
    let x = vfs.lookup(nosuch, name("x")).await.unwrap().ino;
    assert_eq!(vfs.lookup(x, name("blobs")).await.err(), Some(Errno::NOENT));
    assert_eq!(
        vfs.lookup(CAS_ROOT, name("blobs")).await.err(),
        Some(Errno::NOENT)
    );
    let mut ino = CAS_ROOT;
    for part in ["local", "x", "blobs", "sha256", "file"] {
        ino = vfs.lookup(ino, name(part)).await.unwrap().ino;
    }
    assert!(vfs.lookup(ino, name(&digest.file_name())).await.is_ok());
}

/// blobs/ lists the digest functions offered for its instance name: those of a cluster that
/// offers one, EIO while a cluster's offer is unknown (it does not answer).
#[tokio::test]
async fn blobs_lists_the_offered_digest_functions() {
    struct Offers;
    impl Routing for Offers {
        fn serves(&self, _name: &InstanceName) -> bool {
            true
        }
        fn digest_functions<'a>(&'a self, name: &'a InstanceName) -> DigestFunctions<'a> {
            Box::pin(async move { (name.as_str() == "one").then(|| vec![DigestFunction::Sha256]) })
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (vfs, _) = vfs_with(dir.path(), 1 << 20, Box::new(Offers));
    let blobs = |instance: &'static str| {
        let vfs = &vfs;
        async move {
            let top = vfs.lookup(CAS_ROOT, name(instance)).await.unwrap().ino;
            let blobs = vfs.lookup(top, name("blobs")).await.unwrap();
            assert_eq!(blobs.perm, 0o555);
            vfs.readdir(blobs.ino).await
        }
    };
    let listed: Vec<OsString> = blobs("one")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(listed, vec![OsString::from("sha256")]);
    assert_eq!(blobs("down").await.err(), Some(Errno::IO));
}

/// A wide Directory lists every entry with its kind, files, subdirectories and symlinks alike
/// (each made from its own node: finding each name again made a listing quadratic), and what
/// listings intern without a lookup is bounded.
#[tokio::test]
async fn a_wide_directory_lists_every_entry() {
    use clientd_proto::build::bazel::remote::execution::v2 as re;
    let dir = tempfile::tempdir().unwrap();
    let (vfs, local) = vfs(dir.path(), 1 << 20);
    let instance = InstanceName::local();
    let empty_dir = DigestFunction::Sha256.digest_of(&[]);
    let message = re::Directory {
        files: (0..5_000u32)
            .map(|i| re::FileNode {
                name: format!("f{i:05}"),
                // Distinct blobs (they need not exist to be listed): distinct nodes.
                digest: Some(
                    DigestFunction::Sha256
                        .digest_of(&i.to_le_bytes())
                        .to_proto(),
                ),
                ..Default::default()
            })
            .collect(),
        directories: vec![re::DirectoryNode {
            name: "sub".into(),
            digest: Some(empty_dir.to_proto()),
        }],
        symlinks: vec![re::SymlinkNode {
            name: "link".into(),
            target: "f00000".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let bytes = bytes::Bytes::from(prost::Message::encode_to_vec(&message));
    let digest = DigestFunction::Sha256.digest_of(&bytes);
    local.write_bytes(&instance, &digest, bytes).await.unwrap();
    let mut ino = CAS_ROOT;
    for part in ["local", "blobs", "sha256", "directory", &digest.file_name()] {
        ino = vfs.lookup(ino, name(part)).await.unwrap().ino;
    }
    let listed = vfs.readdir(ino).await.unwrap();
    let kinds = |kind: FileKind| listed.iter().filter(|e| e.1 == kind).count();
    assert_eq!(
        (
            kinds(FileKind::File),
            kinds(FileKind::Directory),
            kinds(FileKind::Symlink)
        ),
        (5_000, 1, 1)
    );
    let interned = vfs.table().entries.len();
    assert!((1_000..1_100).contains(&interned), "{interned} nodes");
    // A node a lookup holds keeps its inode however many listings come after.
    let held = vfs.lookup(ino, name("f04999")).await.unwrap().ino;
    let _ = vfs.readdir(ino).await.unwrap();
    assert_eq!(vfs.lookup(ino, name("f04999")).await.unwrap().ino, held);
}
