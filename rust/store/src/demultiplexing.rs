//! Routes each call by instance-name prefix to a backend, stripping the prefix ([`Router`]).
//!
//! `local` serves `local` and `local/...`; each configured cluster adds its prefix, such as
//! `mycluster.example.com`.

use crate::error::StoreResult;
use crate::router::Router;
use crate::traits::{ActionCache, BlobSink, BlobStore, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2::ActionResult;
use std::sync::Arc;

/// What one prefix routes to.
#[derive(Clone)]
pub struct Backend {
    pub cas: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionCache>,
}

pub struct Demultiplexing {
    router: Router<Backend>,
}

impl Demultiplexing {
    pub fn new(routes: impl IntoIterator<Item = (InstanceName, Backend)>) -> Self {
        Demultiplexing {
            router: Router::new(routes),
        }
    }

    /// The backend for `instance_name` and the instance name it should see.
    pub fn route(&self, instance_name: &InstanceName) -> StoreResult<(&Backend, InstanceName)> {
        self.router.route(instance_name)
    }
}

#[async_trait]
impl BlobStore for Demultiplexing {
    async fn find_missing(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.find_missing(&rest, digests).await
    }

    async fn read(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.read(&rest, digest, offset, limit).await
    }

    async fn digest_by_hash(
        &self,
        instance_name: &InstanceName,
        name: &Digest,
    ) -> StoreResult<Option<Digest>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.digest_by_hash(&rest, name).await
    }

    async fn make_local(&self, instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.make_local(&rest, digest).await
    }

    async fn known_present(&self, instance_name: &InstanceName, digest: &Digest) -> bool {
        match self.route(instance_name) {
            Ok((backend, rest)) => backend.cas.known_present(&rest, digest).await,
            Err(_) => false,
        }
    }

    async fn begin_write(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.begin_write(&rest, digest).await
    }

    async fn write_bytes(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        data: Bytes,
    ) -> StoreResult<()> {
        let (backend, rest) = self.route(instance_name)?;
        backend.cas.write_bytes(&rest, digest, data).await
    }

    async fn batch_read(
        &self,
        instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        match self.route(instance_name) {
            Ok((backend, rest)) => backend.cas.batch_read(&rest, digests).await,
            Err(e) => vec![Err(e); digests.len()],
        }
    }

    async fn batch_write(
        &self,
        instance_name: &InstanceName,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        match self.route(instance_name) {
            Ok((backend, rest)) => backend.cas.batch_write(&rest, blobs).await,
            Err(e) => vec![Err(e); blobs.len()],
        }
    }
}

#[async_trait]
impl ActionCache for Demultiplexing {
    async fn get(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
    ) -> StoreResult<Option<ActionResult>> {
        let (backend, rest) = self.route(instance_name)?;
        backend.action_cache.get(&rest, action).await
    }

    async fn put(
        &self,
        instance_name: &InstanceName,
        action: &Digest,
        result: &ActionResult,
    ) -> StoreResult<()> {
        let (backend, rest) = self.route(instance_name)?;
        backend.action_cache.put(&rest, action, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::local_ac::LocalActionCache;
    use crate::local_cas::LocalCas;
    use crate::test_store::name;
    use crate::test_store::small_options;

    fn backend(dir: &std::path::Path) -> Backend {
        let options = small_options();
        Backend {
            cas: Arc::new(
                LocalCas::open(&dir.join("cas"), options, Arc::new(SystemClock)).unwrap(),
            ),
            action_cache: Arc::new(
                LocalActionCache::open(&dir.join("ac"), options, Arc::new(SystemClock)).unwrap(),
            ),
        }
    }

    #[tokio::test]
    async fn calls_reach_the_routed_backend_with_the_prefix_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let demux = Demultiplexing::new([
            (name("a.example.com"), backend(&dir.path().join("1"))),
            (name("local"), backend(&dir.path().join("2"))),
        ]);
        let data = bytes::Bytes::from_static(b"routed");
        let digest = clientd_digest::DigestFunction::Sha256.digest_of(&data);
        demux
            .write_bytes(&name("a.example.com/x"), &digest, data.clone())
            .await
            .unwrap();
        assert!(demux
            .contains(&name("a.example.com"), &digest)
            .await
            .unwrap());
        assert!(!demux.contains(&name("local/x"), &digest).await.unwrap());
        demux
            .make_local(&name("a.example.com/x"), &digest)
            .await
            .unwrap();
        assert!(matches!(
            demux.make_local(&name("local/x"), &digest).await,
            Err(crate::StoreError::NotFound(_))
        ));
        let err = demux
            .contains(&name("elsewhere"), &digest)
            .await
            .unwrap_err();
        assert!(
            matches!(err, crate::StoreError::InvalidArgument(_)),
            "{err}"
        );
    }
}
