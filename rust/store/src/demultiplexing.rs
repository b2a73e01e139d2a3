//! Routes each call by instance-name prefix to a backend, stripping the prefix.
//!
//! `local` serves `local` and `local/...`; the proxy adds cluster prefixes such as
//! `mycluster.example.com`. Prefixes match whole leading components and the longest wins, so
//! `a.example.com/x` routed under prefix `a.example.com` reaches that backend as instance `x`.

use crate::error::{StoreError, StoreResult};
use crate::traits::{ActionCache, BlobSink, BlobStore, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::Digest;
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use std::sync::Arc;

/// What one prefix routes to.
#[derive(Clone)]
pub struct Backend {
    pub cas: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionCache>,
}

pub struct Demultiplexing {
    /// Sorted longest prefix first, so the first match is the longest.
    routes: Vec<(String, Backend)>,
}

impl Demultiplexing {
    pub fn new(routes: impl IntoIterator<Item = (String, Backend)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.split('/').count()));
        Demultiplexing { routes }
    }

    /// The backend for `instance_name` and the instance name it should see.
    pub fn route<'a>(&self, instance_name: &'a str) -> StoreResult<(&Backend, &'a str)> {
        for (prefix, backend) in &self.routes {
            if let Some(rest) = instance_name.strip_prefix(prefix.as_str()) {
                if rest.is_empty() {
                    return Ok((backend, ""));
                }
                if let Some(rest) = rest.strip_prefix('/') {
                    return Ok((backend, rest));
                }
            }
        }
        let known: Vec<String> = self.routes.iter().map(|(p, _)| format!("{p:?}")).collect();
        Err(StoreError::InvalidArgument(format!(
            "instance name {instance_name:?} matches no configured prefix; known prefixes: {} \
             (use e.g. --remote_instance_name=local/<project>)",
            known.join(", ")
        )))
    }
}

#[async_trait]
impl BlobStore for Demultiplexing {
    async fn find_missing(
        &self,
        instance_name: &str,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.find_missing(rest, digests).await
    }

    async fn read(
        &self,
        instance_name: &str,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.read(rest, digest, offset, limit).await
    }

    async fn begin_write(
        &self,
        instance_name: &str,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.begin_write(rest, digest).await
    }

    async fn write_bytes(
        &self,
        instance_name: &str,
        digest: &Digest,
        data: Bytes,
    ) -> StoreResult<()> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.write_bytes(rest, digest, data).await
    }
}

#[async_trait]
impl ActionCache for Demultiplexing {
    async fn get(&self, instance_name: &str, action: &Digest) -> StoreResult<Option<ActionResult>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.action_cache.get(rest, action).await
    }

    async fn put(
        &self,
        instance_name: &str,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()> {
        let (backend, rest) = self.route(instance_name)?;
        backend.action_cache.put(rest, action, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::disk_lru::DiskLruOptions;
    use crate::local_ac::LocalActionCache;
    use crate::local_cas::LocalCas;

    fn backend(dir: &std::path::Path) -> Backend {
        let options = DiskLruOptions {
            max_bytes: 1 << 20,
            sync_writes: false,
        };
        Backend {
            cas: Arc::new(
                LocalCas::open(&dir.join("cas"), options, Arc::new(SystemClock)).unwrap(),
            ),
            action_cache: Arc::new(
                LocalActionCache::open(&dir.join("ac"), options, Arc::new(SystemClock)).unwrap(),
            ),
        }
    }

    #[test]
    fn longest_whole_component_prefix_wins_and_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let demux = Demultiplexing::new([
            ("a.example.com".to_string(), backend(&dir.path().join("1"))),
            (
                "a.example.com/deep".to_string(),
                backend(&dir.path().join("2")),
            ),
            ("local".to_string(), backend(&dir.path().join("3"))),
        ]);
        let (_, rest) = demux.route("a.example.com/hello").unwrap();
        assert_eq!(rest, "hello");
        let (_, rest) = demux.route("a.example.com").unwrap();
        assert_eq!(rest, "");
        let (deep, rest) = demux.route("a.example.com/deep/x").unwrap();
        assert_eq!(rest, "x");
        let (shallow, _) = demux.route("a.example.com/deeper").unwrap();
        assert!(!Arc::ptr_eq(&deep.cas, &shallow.cas));
        let err = demux.route("localhost/x").err().unwrap().to_string();
        assert!(
            err.contains("\"local\"") && err.contains("\"a.example.com\""),
            "{err}"
        );
    }
}
