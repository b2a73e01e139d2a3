//! A cluster's CAS and ByteStream as a [`BlobStore`].
//!
//! Small uploads go in BatchUpdateBlobs calls split to the cluster's batch limit, and small
//! batch reads in BatchReadBlobs calls; larger blobs by ByteStream (see [`crate::batch`]).
//! Nothing here verifies hashes: the local CAS in front does that for reads, and the cluster for
//! writes.

use crate::batch::{self, Answers};
use crate::cluster::{
    broken_connection_is_unavailable, digest_function_field, store_error, upstream_error, Cluster,
};
use crate::health::Watch;
use async_trait::async_trait;
use bytes::Bytes;
use clientd_digest::{Digest, DigestFunction, InstanceName, ReadResource, WriteResource};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::bytestream::{ReadRequest, WriteRequest, WriteResponse};
use clientd_proto::google::rpc::Status as RpcStatus;
use clientd_store::{BlobSink, BlobStore, ByteStream, StoreError, StoreResult, BATCH_CONCURRENCY};
use futures::{stream, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

/// Digests per FindMissingBlobs call: about 0.8 MB of request, far below the message limit.
const FIND_MISSING_CHUNK: usize = 10_000;
/// Chunks an upload may queue ahead of the network.
const WRITE_QUEUE: usize = 4;

pub struct UpstreamCas {
    cluster: Arc<Cluster>,
    /// Whether the cluster answers BatchReadBlobs. Bazel's own remote worker does not
    /// (UNIMPLEMENTED); then blobs are read one by one, and it is not asked again.
    batch_reads: AtomicBool,
}

impl UpstreamCas {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        UpstreamCas {
            cluster,
            batch_reads: AtomicBool::new(true),
        }
    }

    /// Reads `digests` a blob at a time (ByteStream), a few at once.
    async fn read_each(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> Vec<StoreResult<Bytes>> {
        stream::iter(digests.iter().copied())
            .map(|digest| async move { self.read_bytes(instance_name, &digest).await })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }

    /// Sends one BatchUpdateBlobs call; one result per blob, in order.
    async fn batch_update(
        &self,
        instance_name: &InstanceName,
        function: DigestFunction,
        blobs: &[(Digest, Bytes)],
    ) -> Vec<StoreResult<()>> {
        let request = re::BatchUpdateBlobsRequest {
            instance_name: instance_name.to_string(),
            requests: blobs
                .iter()
                .map(|(digest, data)| re::batch_update_blobs_request::Request {
                    digest: Some(digest.to_proto()),
                    data: data.clone(),
                    compressor: 0,
                })
                .collect(),
            digest_function: digest_function_field(function),
        };
        let response = self
            .cluster
            .store_call("BatchUpdateBlobs", || {
                let mut client = self.cluster.cas_client();
                let request = self.cluster.request(request.clone());
                async move { client.batch_update_blobs(request).await }
            })
            .await;
        let digests: Vec<Digest> = blobs.iter().map(|(digest, _)| *digest).collect();
        let responses = response.map(|r| r.into_inner().responses);
        self.answered("BatchUpdateBlobs", &digests, responses, |_, _| Ok(()))
    }

    /// Sends one BatchReadBlobs call; one result per digest, in order.
    async fn batch_read_call(
        &self,
        instance_name: &InstanceName,
        function: DigestFunction,
        digests: &[Digest],
    ) -> Vec<StoreResult<Bytes>> {
        let request = re::BatchReadBlobsRequest {
            instance_name: instance_name.to_string(),
            digests: digests.iter().map(Digest::to_proto).collect(),
            acceptable_compressors: vec![],
            digest_function: digest_function_field(function),
        };
        let response = self
            .cluster
            .store_call("BatchReadBlobs", || {
                let mut client = self.cluster.cas_client();
                let request = self.cluster.request(request.clone());
                async move { client.batch_read_blobs(request).await }
            })
            .await;
        let responses = response.map(|r| r.into_inner().responses);
        self.answered("BatchReadBlobs", digests, responses, |response, digest| {
            // Only uncompressed data was asked for.
            match response.compressor {
                0 => Ok(response.data.clone()),
                other => Err(StoreError::Internal(format!(
                    "{}: BatchReadBlobs: blob {digest} came compressed ({other}), which was not \
                     asked for",
                    self.cluster.describe(),
                ))),
            }
        })
    }

    /// One result per blob of a `method` batch call, from the call's response entries: each
    /// entry answers the blobs [`Answers`] matches it to, with its status if that is not OK,
    /// else with what `value` makes of it. Blobs no entry answers fail; so do all when the call
    /// does.
    fn answered<R: BatchEntry, T: Clone>(
        &self,
        method: &str,
        digests: &[Digest],
        responses: StoreResult<Vec<R>>,
        value: impl Fn(&R, &Digest) -> StoreResult<T>,
    ) -> Vec<StoreResult<T>> {
        let responses = match responses {
            Ok(responses) => responses,
            Err(e) => return vec![Err(e); digests.len()],
        };
        let answers = Answers::new(digests);
        let mut results: Vec<StoreResult<T>> = vec![
            Err(StoreError::Internal(format!(
                "{}: {method}: no response for this blob",
                self.cluster.describe()
            )));
            digests.len()
        ];
        for (position, response) in responses.iter().enumerate() {
            for slot in answers.slots(position, response.digest()) {
                results[slot] = match response.status() {
                    Some(status) if status.code != 0 => Err(upstream_error(
                        &self.cluster.describe(),
                        format_args!("{method}: blob {}", digests[slot]),
                        status.code.into(),
                        &status.message,
                    )),
                    _ => value(response, &digests[slot]),
                };
            }
        }
        results
    }
}

/// A batch call's response entry: the blob it answers (if it says) and how that went.
trait BatchEntry {
    fn digest(&self) -> Option<&re::Digest>;
    fn status(&self) -> Option<&RpcStatus>;
}

impl BatchEntry for re::batch_update_blobs_response::Response {
    fn digest(&self) -> Option<&re::Digest> {
        self.digest.as_ref()
    }
    fn status(&self) -> Option<&RpcStatus> {
        self.status.as_ref()
    }
}

impl BatchEntry for re::batch_read_blobs_response::Response {
    fn digest(&self) -> Option<&re::Digest> {
        self.digest.as_ref()
    }
    fn status(&self) -> Option<&RpcStatus> {
        self.status.as_ref()
    }
}

#[async_trait]
impl BlobStore for UpstreamCas {
    async fn find_missing(
        &self,
        instance_name: &InstanceName,
        digests: &[Digest],
    ) -> StoreResult<Vec<Digest>> {
        let mut by_function: HashMap<DigestFunction, Vec<Digest>> = HashMap::new();
        for digest in digests.iter().filter(|d| !d.is_empty_blob()) {
            by_function
                .entry(digest.function())
                .or_default()
                .push(*digest);
        }
        let calls = by_function.into_iter().flat_map(|(function, digests)| {
            digests
                .chunks(FIND_MISSING_CHUNK)
                .map(|chunk| (function, chunk.to_vec()))
                .collect::<Vec<_>>()
        });
        let missing: Vec<Vec<Digest>> = stream::iter(calls)
            .map(|(function, chunk)| async move {
                let request = re::FindMissingBlobsRequest {
                    instance_name: instance_name.to_string(),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: digest_function_field(function),
                };
                let response = self
                    .cluster
                    .store_call("FindMissingBlobs", || {
                        let mut client = self.cluster.cas_client();
                        let request = self.cluster.request(request.clone());
                        async move { client.find_missing_blobs(request).await }
                    })
                    .await?;
                response
                    .into_inner()
                    .missing_blob_digests
                    .iter()
                    .map(|d| {
                        Digest::from_proto(Some(function), d).map_err(|e| {
                            StoreError::Internal(format!(
                                "{}: FindMissingBlobs answered a malformed digest: {e}",
                                self.cluster.describe()
                            ))
                        })
                    })
                    .collect::<StoreResult<Vec<Digest>>>()
            })
            .buffer_unordered(batch::CALLS_IN_FLIGHT)
            .try_collect()
            .await?;
        // In request order, as the trait promises.
        let missing: std::collections::HashSet<Digest> = missing.into_iter().flatten().collect();
        Ok(digests
            .iter()
            .filter(|d| missing.contains(d))
            .copied()
            .collect())
    }

    /// A cluster's CAS keeps no local copy: read caching in front of it does.
    async fn make_local(&self, _instance_name: &InstanceName, digest: &Digest) -> StoreResult<()> {
        Err(StoreError::Unimplemented(format!(
            "{}: cannot make blob {digest} local: no local CAS in front of it",
            self.cluster.describe()
        )))
    }

    async fn read(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> StoreResult<ByteStream> {
        if digest.is_empty_blob() {
            return Ok(stream::empty().boxed());
        }
        let resource_name = ReadResource {
            instance_name: instance_name.clone(),
            compressor: None,
            digest: *digest,
        }
        .to_resource_name();
        let request = ReadRequest {
            resource_name,
            read_offset: offset as i64,
            read_limit: limit.unwrap_or(0) as i64,
        };
        let what = format!("ByteStream.Read of blob {digest}");
        let response = self
            .cluster
            .store_call(&what, || {
                let mut client = self.cluster.bytestream_client();
                let request = self.cluster.request(request.clone());
                async move { client.read(request).await }
            })
            .await?;
        let describe = self.cluster.describe();
        Ok(self
            .cluster
            .progressing(response.into_inner())
            .map_ok(|r| r.data)
            .map_err(move |status| {
                upstream_error(&describe, &what, status.code(), status.message())
            })
            .boxed())
    }

    async fn begin_write(
        &self,
        instance_name: &InstanceName,
        digest: &Digest,
    ) -> StoreResult<Box<dyn BlobSink>> {
        let limit = self
            .cluster
            .batch_limit(instance_name)
            .await
            .map_err(|s| store_error(&s))?;
        if batch::fits(digest, limit) {
            return Ok(Box::new(BufferedSink {
                cas: UpstreamCas::new(self.cluster.clone()),
                instance_name: instance_name.clone(),
                digest: *digest,
                data: bytes::BytesMut::new(),
            }));
        }
        self.cluster
            .check_up(format_args!("ByteStream.Write of blob {digest}"))
            .map_err(|s| store_error(&s))?;
        Ok(Box::new(ByteStreamSink::start(
            &self.cluster,
            instance_name,
            digest,
        )))
    }

    async fn batch_write(
        &self,
        instance_name: &InstanceName,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Vec<StoreResult<()>> {
        let limit = match self.cluster.batch_limit(instance_name).await {
            Ok(limit) => limit,
            Err(s) => return vec![Err(store_error(&s)); blobs.len()],
        };
        let blobs = &blobs;
        batch::pack(blobs.iter().map(|(digest, _)| digest), limit)
            .run(
                blobs.len(),
                |function, members| async move {
                    let group: Vec<(Digest, Bytes)> =
                        members.iter().map(|&i| blobs[i].clone()).collect();
                    self.batch_update(instance_name, function, &group).await
                },
                |i| async move {
                    let (digest, data) = &blobs[i];
                    self.write_bytes(instance_name, digest, data.clone()).await
                },
            )
            .await
    }

    /// Small blobs in BatchReadBlobs calls of up to the cluster's batch limit (a few round trips
    /// for a whole tree level, not one per blob), larger ones by ByteStream; all by ByteStream
    /// from a cluster without BatchReadBlobs.
    async fn batch_read(
        &self,
        instance_name: &InstanceName,
        digests: Vec<Digest>,
    ) -> Vec<StoreResult<Bytes>> {
        let limit = match self.cluster.batch_limit(instance_name).await {
            Ok(limit) => limit,
            Err(s) => return vec![Err(store_error(&s)); digests.len()],
        };
        if !self.batch_reads.load(Ordering::Relaxed) {
            return self.read_each(instance_name, &digests).await;
        }
        let digests = &digests;
        batch::pack(digests, limit)
            .run(
                digests.len(),
                |function, members| async move {
                    let group: Vec<Digest> = members.iter().map(|&i| digests[i]).collect();
                    let results = self.batch_read_call(instance_name, function, &group).await;
                    let unimplemented =
                        |r: &StoreResult<Bytes>| matches!(r, Err(StoreError::Unimplemented(_)));
                    if !results.iter().all(unimplemented) {
                        return results;
                    }
                    if self.batch_reads.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "{}: no BatchReadBlobs (UNIMPLEMENTED); its blobs are read one by one",
                            self.cluster.describe()
                        );
                    }
                    self.read_each(instance_name, &group).await
                },
                |i| async move { self.read_bytes(instance_name, &digests[i]).await },
            )
            .await
    }
}

/// A small upload, held in memory and sent in one BatchUpdateBlobs call at commit.
struct BufferedSink {
    cas: UpstreamCas,
    instance_name: InstanceName,
    digest: Digest,
    data: bytes::BytesMut,
}

#[async_trait]
impl BlobSink for BufferedSink {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        self.data.extend_from_slice(&data);
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.data.len() as u64
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let blob = [(self.digest, self.data.freeze())];
        let mut results = self
            .cas
            .batch_update(&self.instance_name, self.digest.function(), &blob)
            .await;
        results.pop().expect("one result")
    }
}

/// A large upload streamed by ByteStream.Write as the chunks arrive. Dropping it before commit
/// cancels the call, so the cluster never sees a finished write of a partial blob.
struct ByteStreamSink {
    describe: String,
    resource_name: Option<String>,
    digest: Digest,
    offset: u64,
    chunks: Option<mpsc::Sender<WriteRequest>>,
    call: JoinHandle<Result<WriteResponse, Status>>,
    /// How long the cluster may take to accept a chunk, or to answer once all are sent.
    stall: Duration,
    /// The call's outcome once known (the call's handle can be awaited only once).
    outcome: Option<StoreResult<()>>,
    /// Told when the cluster stops answering.
    watch: Watch,
}

impl ByteStreamSink {
    fn start(cluster: &Arc<Cluster>, instance_name: &InstanceName, digest: &Digest) -> Self {
        let resource_name = WriteResource {
            instance_name: instance_name.clone(),
            uuid: uuid::Uuid::new_v4().to_string(),
            compressor: None,
            digest: *digest,
        }
        .to_resource_name();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let mut client = cluster.bytestream_client();
        let request = cluster.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let call = clientd_store::context::spawn(async move {
            client.write(request).await.map(tonic::Response::into_inner)
        });
        ByteStreamSink {
            describe: cluster.describe(),
            resource_name: Some(resource_name),
            digest: *digest,
            offset: 0,
            chunks: Some(tx),
            call,
            stall: cluster.stall_timeout(),
            outcome: None,
            watch: cluster.watch().clone(),
        }
    }

    fn error(&self, status: &Status) -> StoreError {
        upstream_error(
            &self.describe,
            format_args!("ByteStream.Write of blob {}", self.digest),
            status.code(),
            status.message(),
        )
    }

    /// Sends one message; false if the call has already ended (for better or worse), or the
    /// cluster took nothing for the stall timeout (the call is then ended as UNAVAILABLE).
    async fn send(&mut self, data: Bytes, finish_write: bool) -> bool {
        let request = WriteRequest {
            resource_name: self.resource_name.take().unwrap_or_default(),
            write_offset: self.offset as i64,
            finish_write,
            data,
        };
        self.offset += request.data.len() as u64;
        let Some(chunks) = &self.chunks else {
            return false;
        };
        match tokio::time::timeout(self.stall, chunks.send(request)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stalled();
                false
            }
        }
    }

    /// Ends a call the cluster stopped taking data for, or answering: UNAVAILABLE.
    fn stalled(&mut self) {
        self.call.abort();
        let status = Status::unavailable(format!(
            "the upload stalled: the cluster took nothing for {:?}",
            self.stall
        ));
        self.watch.failed(&status);
        self.outcome = Some(Err(self.error(&status)));
    }

    /// The call's outcome, once it has ended (or stalled).
    async fn outcome(&mut self) -> StoreResult<()> {
        self.chunks = None;
        if self.outcome.is_none() {
            match tokio::time::timeout(self.stall, &mut self.call).await {
                Ok(joined) => {
                    let response = joined
                        .unwrap_or_else(|e| {
                            Err(Status::internal(format!("upload task failed: {e}")))
                        })
                        .map_err(broken_connection_is_unavailable);
                    self.outcome = Some(match response {
                        Ok(r) if r.committed_size == self.digest.size() as i64 => Ok(()),
                        Ok(r) => Err(StoreError::Internal(format!(
                            "{}: ByteStream.Write of blob {}: committed {} bytes",
                            self.describe, self.digest, r.committed_size
                        ))),
                        Err(status) => {
                            self.watch.failed(&status);
                            Err(self.error(&status))
                        }
                    });
                }
                Err(_) => self.stalled(),
            }
        }
        self.outcome.clone().expect("set above")
    }
}

#[async_trait]
impl BlobSink for ByteStreamSink {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        if self.chunks.is_some() && !self.send(data, false).await {
            // The cluster ended the call early: either it already has the blob, or it failed.
            return self.outcome().await;
        }
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.offset
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if self.chunks.is_some() {
            self.send(Bytes::new(), true).await;
        }
        self.outcome().await
    }
}

impl Drop for ByteStreamSink {
    fn drop(&mut self) {
        self.call.abort();
    }
}
