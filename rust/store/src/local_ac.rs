//! The local action cache: ActionResult messages in a [`DiskLru`], one namespace per instance name.

use crate::clock::Clock;
use crate::disk_lru::{in_blocks, DiskKey, DiskLru, DiskLruOptions};
use crate::error::{StoreError, StoreResult};
use crate::local_cas::join_error;
use crate::nowait::read_cached;
use crate::traits::ActionCache;
use async_trait::async_trait;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use prost::Message;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An action digest within one instance name's namespace. Instance names can be long and contain
/// slashes, so the namespace directory is named by a hash of the name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AcKey {
    namespace: [u8; 16],
    action: Digest,
}

impl AcKey {
    fn new(instance_name: &InstanceName, action: &Digest) -> Self {
        let hash = DigestFunction::Sha256.digest_of(instance_name.as_str().as_bytes());
        let mut namespace = [0u8; 16];
        namespace.copy_from_slice(&hash.hash()[..16]);
        AcKey {
            namespace,
            action: *action,
        }
    }
}

/// Entries live at `<namespace hex>/<the CAS layout of the action digest>`.
impl DiskKey for AcKey {
    fn rel_path(&self) -> PathBuf {
        PathBuf::from(hex::encode(self.namespace)).join(self.action.rel_path())
    }

    fn from_rel_path(path: &Path) -> Option<Self> {
        let mut parts = path.iter();
        let mut namespace = [0u8; 16];
        hex::decode_to_slice(parts.next()?.to_str()?, &mut namespace).ok()?;
        let action = Digest::from_rel_path(parts.as_path())?;
        Some(AcKey { namespace, action })
    }

    const IMMUTABLE: bool = false;

    fn footprint(len: u64) -> u64 {
        in_blocks(len)
    }
}

pub struct LocalActionCache {
    entries: Arc<DiskLru<AcKey>>,
}

impl LocalActionCache {
    pub fn open(
        root: &Path,
        options: DiskLruOptions,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Self> {
        Ok(LocalActionCache {
            entries: DiskLru::open(root, options, clock)?,
        })
    }
}

#[async_trait]
impl ActionCache for LocalActionCache {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<ActionResult>> {
        let key = AcKey::new(instance_name, action);
        // A miss, or an entry in the page cache, is answered here: most lookups are one or the
        // other, and a blocking thread would cost more than the lookup.
        let opened = match self.entries.open_file_now(&key) {
            Some(None) => return Ok(None),
            Some(Some(file)) => match read_now(&file) {
                Some(data) => return Ok(decode(action, &data)),
                None => Some(file),
            },
            None => None,
        };
        let entries = self.entries.clone();
        let action = *action;
        tokio::task::spawn_blocking(move || {
            let mut file = match opened {
                Some(file) => file,
                None => match entries.open_file(&key)? {
                    Some(file) => file,
                    None => return Ok(None),
                },
            };
            let mut data = Vec::new();
            file.read_to_end(&mut data)
                .map_err(|e| StoreError::io(format!("reading action result {action}"), e))?;
            Ok(decode(&action, &data))
        })
        .await
        .map_err(join_error)?
    }

    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()> {
        let key = AcKey::new(instance_name, action);
        let entries = self.entries.clone();
        let data = result.encode_to_vec();
        let action = *action;
        // Making room may evict, which unlinks files: not on the runtime's threads.
        let free = entries.reserve_free(data.len() as u64);
        tokio::task::spawn_blocking(move || {
            let reservation = match free {
                Some(reservation) => reservation,
                None => entries.reserve(data.len() as u64)?,
            };
            let mut file = entries.temp_file()?;
            file.write_all(&data)
                .map_err(|e| StoreError::io(format!("writing action result {action}"), e))?;
            entries.insert(&key, file, reservation)
        })
        .await
        .map_err(join_error)?
    }
}

/// The whole file, if it is in the page cache.
fn read_now(file: &File) -> Option<Vec<u8>> {
    read_cached(file, 0, file.metadata().ok()?.len())
}

/// The entry's result; None (a miss, logged) if its bytes do not decode.
fn decode(action: &Digest, data: &[u8]) -> Option<ActionResult> {
    match ActionResult::decode(data) {
        Ok(result) => Some(result),
        Err(e) => {
            tracing::warn!(%action, "ignoring undecodable action cache entry: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::test_store::name;
    use crate::test_store::small_options;

    #[tokio::test]
    async fn namespaces_are_separate_and_updates_replace() {
        let dir = tempfile::tempdir().unwrap();
        let ac =
            LocalActionCache::open(dir.path(), small_options(), Arc::new(SystemClock)).unwrap();
        let action = DigestFunction::Sha256.digest_of(b"action");
        let one = ActionResult {
            exit_code: 1,
            ..Default::default()
        };
        let two = ActionResult {
            exit_code: 2,
            ..Default::default()
        };
        ac.put(&name("local/a"), &action, &one).await.unwrap();
        assert_eq!(ac.get(&name("local/a"), &action).await.unwrap(), Some(one));
        assert_eq!(ac.get(&name("local/b"), &action).await.unwrap(), None);
        ac.put(&name("local/a"), &action, &two).await.unwrap();
        assert_eq!(
            ac.get(&name("local/a"), &action).await.unwrap(),
            Some(two.clone())
        );
        drop(ac);
        let ac =
            LocalActionCache::open(dir.path(), small_options(), Arc::new(SystemClock)).unwrap();
        assert_eq!(ac.get(&name("local/a"), &action).await.unwrap(), Some(two));
    }

    /// An entry whose bytes do not decode is a miss, whether its bytes are in the page cache
    /// (read on the calling thread) or not (read on a blocking one).
    #[tokio::test]
    async fn an_undecodable_entry_is_a_miss_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let ac =
            LocalActionCache::open(dir.path(), small_options(), Arc::new(SystemClock)).unwrap();
        let action = DigestFunction::Sha256.digest_of(b"action");
        let result = ActionResult {
            exit_code: 3,
            ..Default::default()
        };
        ac.put(&name("local"), &action, &result).await.unwrap();
        let path = dir
            .path()
            .join("entries")
            .join(AcKey::new(&InstanceName::local(), &action).rel_path());
        std::fs::write(&path, b"\xff\xff\xff not a message").unwrap();
        assert_eq!(ac.get(&name("local"), &action).await.unwrap(), None);
        crate::nowait::drop_cached(&path);
        assert_eq!(ac.get(&name("local"), &action).await.unwrap(), None);
    }
}
