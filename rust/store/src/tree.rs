//! Reading a whole Directory tree from a [`BlobStore`]: what scrubbing (the input tree of an
//! action) and miss explanations (two input trees to compare) need.

use crate::error::StoreError;
use crate::traits::BlobStore;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use prost::Message;
use std::collections::{HashMap, HashSet};

/// The most directories a tree may have: bounds the memory one read takes.
pub const MAX_DIRECTORIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read the Directory {digest}: {error}")]
    Read {
        digest: Box<Digest>,
        error: StoreError,
    },
    #[error("the Directory {digest} is not a valid message: {error}")]
    Decode {
        digest: Box<Digest>,
        error: prost::DecodeError,
    },
    #[error("the Directory {0} names a malformed digest")]
    BadDigest(Box<Digest>),
    #[error("the tree has more than {MAX_DIRECTORIES} directories")]
    TooLarge,
}

/// Every Directory of the tree under `root`, read a level at a time (one batch per level).
pub async fn read_tree(
    store: &dyn BlobStore,
    instance_name: &InstanceName,
    root: &Digest,
) -> Result<HashMap<Digest, re::Directory>, TreeError> {
    let mut tree = HashMap::new();
    let mut level = vec![*root];
    while !level.is_empty() {
        if tree.len() + level.len() > MAX_DIRECTORIES {
            return Err(TreeError::TooLarge);
        }
        let read = store.batch_read(instance_name, level.clone()).await;
        // The next level, each directory once: a set beside the list, as a level can be wide.
        let (mut next, mut queued) = (Vec::new(), HashSet::new());
        for (digest, bytes) in level.into_iter().zip(read) {
            let bytes = bytes.map_err(|error| TreeError::Read {
                digest: Box::new(digest),
                error,
            })?;
            let directory = re::Directory::decode(bytes).map_err(|error| TreeError::Decode {
                digest: Box::new(digest),
                error,
            })?;
            for child in &directory.directories {
                let child = child
                    .digest
                    .as_ref()
                    .and_then(|d| Digest::from_proto(Some(digest.function()), d).ok())
                    .ok_or_else(|| TreeError::BadDigest(Box::new(digest)))?;
                if !tree.contains_key(&child) && child != digest && queued.insert(child) {
                    next.push(child);
                }
            }
            tree.insert(digest, directory);
        }
        level = next;
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store::{name, Counting};
    use crate::SystemClock;
    use bytes::Bytes;
    use clientd_digest::DigestFunction;
    use std::sync::Arc;

    /// Stores a Directory with `children` as its subdirectories (named `tag` and their position)
    /// and returns its digest.
    async fn directory(store: &Counting, tag: &str, children: &[Digest]) -> Digest {
        let message = re::Directory {
            directories: children
                .iter()
                .enumerate()
                .map(|(i, child)| re::DirectoryNode {
                    name: format!("{tag}{i}"),
                    digest: Some(child.to_proto()),
                })
                .collect(),
            ..Default::default()
        };
        let bytes = Bytes::from(message.encode_to_vec());
        let digest = DigestFunction::Sha256.digest_of(&bytes);
        store.write_bytes(&name("i"), &digest, bytes).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn a_tree_is_read_a_level_a_batch_and_each_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Arc::new(SystemClock));
        let leaf = directory(&store, "", &[]).await;
        // A wide middle level of distinct directories that all hold the same leaf.
        let mut middle = Vec::new();
        for i in 0..2_000 {
            middle.push(directory(&store, &format!("m{i}-"), &[leaf]).await);
        }
        let root = directory(&store, "d", &middle).await;
        let tree = read_tree(&*store, &name("i"), &root).await.unwrap();
        assert_eq!(tree.len(), 1 + 2_000 + 1);
        assert_eq!(Counting::count(&store.batch_reads), 3);
    }

    #[tokio::test]
    async fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Arc::new(SystemClock));
        let absent = DigestFunction::Sha256.digest_of(b"not a stored directory");
        let root = directory(&store, "d", &[absent]).await;
        match read_tree(&*store, &name("i"), &root).await {
            Err(TreeError::Read { digest, error }) => {
                assert_eq!(*digest, absent);
                assert!(matches!(error, StoreError::NotFound(_)), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
