//! Blob sizes by hash. The HTTP cache protocol names a blob by its hash alone, while the CAS
//! (its files, its index, `cas/`) knows blobs by hash and size. Bazel asks for a blob by hash
//! nearly always just after it learned the hash from this front: from an ActionResult it got
//! here (outputs, stdout, stderr, output directories' Trees), from a Tree it got here (the files
//! in it), or from its own upload. So the front remembers the digests it hands out and takes in,
//! bounded (least recently used go first), and asks the store to look a hash up
//! ([`clientd_store::BlobStore::digest_by_hash`]: its packed index, a directory listing) only
//! for the others, such as an output of an earlier build that Builds without the Bytes fetches
//! late, after the daemon restarted.

use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use lru::LruCache;
use re::{ActionResult, Tree};
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// A known blob: its digest, and whether it is a Tree (whose files are learned when it is
/// served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Known {
    pub digest: Digest,
    pub tree: bool,
}

pub(crate) struct Sizes(Mutex<LruCache<Digest, Known>>);

impl Sizes {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Sizes(Mutex::new(LruCache::new(capacity)))
    }

    /// The blob named by `name` (a hash with size 0), if known. The empty blob always is.
    pub fn get(&self, name: &Digest) -> Option<Known> {
        if name.is_empty_blob() {
            return Some(Known {
                digest: *name,
                tree: false,
            });
        }
        self.0.lock().unwrap().get(name).copied()
    }

    pub fn learn(&self, digest: Digest, tree: bool) {
        let Some(name) = Digest::from_raw(digest.function(), digest.hash(), 0) else {
            return;
        };
        let mut known = self.0.lock().unwrap();
        // A Tree stays one, whoever names its digest next.
        let tree = tree || known.peek(&name).is_some_and(|k| k.tree);
        known.put(name, Known { digest, tree });
    }

    /// Every blob an ActionResult names.
    pub fn learn_result(&self, result: &ActionResult) {
        for file in &result.output_files {
            if let Some(digest) = digest(&file.digest) {
                self.learn(digest, false);
            }
        }
        for directory in &result.output_directories {
            if let Some(digest) = digest(&directory.tree_digest) {
                self.learn(digest, true);
            }
        }
        for named in [&result.stdout_digest, &result.stderr_digest] {
            if let Some(digest) = digest(named) {
                self.learn(digest, false);
            }
        }
    }

    /// Every file a Tree holds.
    pub fn learn_tree(&self, tree: &Tree) {
        for directory in tree.root.iter().chain(&tree.children) {
            for file in &directory.files {
                if let Some(digest) = digest(&file.digest) {
                    self.learn(digest, false);
                }
            }
        }
    }
}

/// A digest in a message, with its function inferred from the hash's length as the request
/// paths' are; None if absent or malformed (a path cannot name it then either).
fn digest(named: &Option<re::Digest>) -> Option<Digest> {
    Digest::from_proto(None, named.as_ref()?).ok()
}
