//! Reading a whole Directory tree from a [`BlobStore`]: what scrubbing (the input tree of an
//! action) and miss explanations (two input trees to compare) need.

use crate::error::StoreError;
use crate::traits::BlobStore;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use prost::Message;
use std::collections::HashMap;

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
        let mut next = Vec::new();
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
                if !tree.contains_key(&child) && !next.contains(&child) && child != digest {
                    next.push(child);
                }
            }
            tree.insert(digest, directory);
        }
        level = next;
    }
    Ok(tree)
}
