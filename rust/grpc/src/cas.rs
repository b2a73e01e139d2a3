use crate::activity::Recorder;
use crate::capabilities::MAX_BATCH_TOTAL_SIZE_BYTES;
use crate::request;
use clientd_digest::{truncate, Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{BlobStore, Stats, StoreError};
use futures::stream::{self, BoxStream, StreamExt};
use prost::Message;
use re::content_addressable_storage_server::ContentAddressableStorage;
use std::collections::HashSet;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Directories per GetTree response when the client asks for no page size.
const DEFAULT_TREE_PAGE: usize = 1000;

pub struct CasService {
    cas: Arc<dyn BlobStore>,
    /// Blobs and bytes served and stored, as clients see them.
    stats: Arc<Stats>,
    /// Bytes each invocation read, for the activity record.
    recorder: Recorder,
}

impl CasService {
    pub fn new(cas: Arc<dyn BlobStore>, stats: Arc<Stats>, recorder: Recorder) -> Self {
        CasService {
            cas,
            stats,
            recorder,
        }
    }
}

/// Refuses a batch whose blobs add up to more than Capabilities advertises (INVALID_ARGUMENT, as
/// REAPI says for both batch calls). Sizes are the client's: the sum saturates instead of wrapping
/// ([2^63-1, 2^63-1, 3] must not come to 1).
fn check_batch_total(sizes: impl Iterator<Item = u64>) -> Result<(), Status> {
    let total = sizes.fold(0u64, u64::saturating_add);
    if total > MAX_BATCH_TOTAL_SIZE_BYTES as u64 {
        return Err(Status::invalid_argument(format!(
            "batch of {total} bytes exceeds max_batch_total_size_bytes {MAX_BATCH_TOTAL_SIZE_BYTES}; use ByteStream"
        )));
    }
    Ok(())
}

fn parse_digests(
    function: Option<DigestFunction>,
    digests: &[re::Digest],
) -> Result<Vec<Digest>, Status> {
    digests
        .iter()
        .map(|d| {
            Digest::from_proto(function, d).map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect()
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        let request = request.get_ref();
        let instance_name = &request::instance_name(&request.instance_name)?;
        let function = request::digest_function(request.digest_function)?;
        let digests = parse_digests(function, &request.blob_digests)?;
        let missing = self
            .cas
            .find_missing(instance_name, &digests)
            .await
            .map_err(request::status)?;
        Ok(Response::new(re::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        let instance_name = &request::instance_name(&request.instance_name)?;
        let function = request::digest_function(request.digest_function)?;
        check_batch_total(request.requests.iter().map(|r| r.data.len() as u64))?;
        // Entries that fail validation get their status here; the rest are written as one batch.
        let mut statuses: Vec<Option<Status>> = Vec::with_capacity(request.requests.len());
        let mut blobs = Vec::new();
        for entry in &request.requests {
            let parsed = request::digest(function, entry.digest.as_ref(), "digest").and_then(|d| {
                if entry.compressor != re::compressor::Value::Identity as i32 {
                    return Err(Status::invalid_argument(
                        "compressed batch uploads are not supported; Capabilities advertises none",
                    ));
                }
                Ok(d)
            });
            match parsed {
                Ok(digest) => {
                    blobs.push((digest, entry.data.clone()));
                    statuses.push(None);
                }
                Err(status) => statuses.push(Some(status)),
            }
        }
        let mut written = self.cas.batch_write(instance_name, blobs).await.into_iter();
        let responses = request
            .requests
            .into_iter()
            .zip(statuses)
            .map(|(entry, status)| {
                let status = status.map_or_else(
                    || {
                        written
                            .next()
                            .expect("one result per blob")
                            .map(|()| {
                                Stats::add(&self.stats.blobs_stored, 1);
                                Stats::add(&self.stats.bytes_stored, entry.data.len() as u64);
                            })
                            .map_err(request::status)
                    },
                    Err,
                );
                re::batch_update_blobs_response::Response {
                    digest: entry.digest,
                    status: Some(
                        status.map_or_else(|s| request::rpc_status(&s), |()| request::ok_status()),
                    ),
                }
            })
            .collect();
        Ok(Response::new(re::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        let mut tally = self.recorder.read_tally(request.metadata());
        let request = request.get_ref();
        let instance_name = &request::instance_name(&request.instance_name)?;
        let function = request::digest_function(request.digest_function)?;
        let digests = parse_digests(function, &request.digests)?;
        check_batch_total(digests.iter().map(Digest::size))?;
        let read = self.cas.batch_read(instance_name, digests.clone()).await;
        let responses = digests
            .into_iter()
            .zip(read)
            .map(|(digest, read)| {
                let (data, status) = match read {
                    Ok(data) => {
                        Stats::add(&self.stats.blobs_served, 1);
                        Stats::add(&self.stats.bytes_served, data.len() as u64);
                        if let Some(tally) = &mut tally {
                            tally.served(data.len());
                        }
                        (data, request::ok_status())
                    }
                    Err(e) => (Default::default(), request::rpc_status(&request::status(e))),
                };
                re::batch_read_blobs_response::Response {
                    digest: Some(digest.to_proto()),
                    data,
                    status: Some(status),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(re::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = BoxStream<'static, Result<re::GetTreeResponse, Status>>;

    /// Streams the tree breadth first, each distinct directory once. Page tokens are offsets into
    /// that order, so a client can resume from any `next_page_token`.
    async fn get_tree(
        &self,
        request: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let request = request.into_inner();
        let instance_name = request::instance_name(&request.instance_name)?;
        let function = request::digest_function(request.digest_function)?;
        let root = request::digest(function, request.root_digest.as_ref(), "root_digest")?;
        let skip: usize = match request.page_token.as_str() {
            "" => 0,
            token => token.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token {:?} was not issued by this server",
                    truncate(token)
                ))
            })?,
        };
        let page_size = match request.page_size {
            n if n < 0 => return Err(Status::invalid_argument("page_size is negative")),
            0 => DEFAULT_TREE_PAGE,
            n => n as usize,
        };
        // The root must exist; everything below it that is missing is omitted, as REAPI says.
        // It is read here, where its absence can still be the call's status, and the walk starts
        // from it: asking whether it exists first cost a round trip more through a cluster.
        let first = self
            .cas
            .batch_read(&instance_name, vec![root])
            .await
            .pop()
            .expect("an answer per digest")
            .map_err(request::status)?;
        let walk = TreeWalk {
            cas: self.cas.clone(),
            instance_name,
            queue: Default::default(),
            read: std::collections::VecDeque::from([(root, Ok(first))]),
            seen: HashSet::from([root]),
            position: 0,
        };
        let pages = stream::unfold(Some(walk), move |walk| async move {
            let mut walk = walk?;
            let mut directories = Vec::new();
            let mut bytes = 0;
            while directories.len() < page_size && bytes < crate::MAX_MESSAGE_BYTES / 2 {
                match walk.next().await {
                    Ok(Some(directory)) if walk.position > skip => {
                        bytes += directory.encoded_len();
                        directories.push(directory);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let last = re::GetTreeResponse {
                            directories,
                            next_page_token: String::new(),
                        };
                        return Some((Ok(last), None));
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
            let page = re::GetTreeResponse {
                directories,
                next_page_token: walk.position.to_string(),
            };
            Some((Ok(page), Some(walk)))
        });
        Ok(Response::new(pages.boxed()))
    }

    async fn split_blob(
        &self,
        _request: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        Err(Status::unimplemented(
            "SplitBlob is not supported (split_blob_support is false)",
        ))
    }

    async fn splice_blob(
        &self,
        _request: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented(
            "SpliceBlob is not supported (splice_blob_support is false)",
        ))
    }
}

/// Directories a tree walk reads in one batch: a level of a wide tree at once (through a cluster,
/// a few BatchReadBlobs calls instead of a round trip per directory).
const WALK_BATCH: usize = 1000;

/// Breadth-first walk over Directory messages in the CAS.
struct TreeWalk {
    cas: Arc<dyn BlobStore>,
    instance_name: InstanceName,
    /// Directories to read, in breadth-first order.
    queue: std::collections::VecDeque<Digest>,
    /// The front of the queue, read in one batch and not yet produced.
    read: std::collections::VecDeque<(Digest, Result<bytes::Bytes, StoreError>)>,
    seen: HashSet<Digest>,
    /// How many directories have been produced.
    position: usize,
}

impl TreeWalk {
    async fn next(&mut self) -> Result<Option<re::Directory>, Status> {
        loop {
            if self.read.is_empty() {
                if self.queue.is_empty() {
                    return Ok(None);
                }
                let batch: Vec<Digest> = {
                    let n = self.queue.len().min(WALK_BATCH);
                    self.queue.drain(..n).collect()
                };
                let data = self
                    .cas
                    .batch_read(&self.instance_name, batch.clone())
                    .await;
                self.read.extend(batch.into_iter().zip(data));
            }
            let (digest, data) = self.read.pop_front().expect("read above");
            let data = match data {
                Ok(data) => data,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(request::status(e)),
            };
            let directory = re::Directory::decode(data).map_err(|e| {
                Status::invalid_argument(format!("blob {digest} is not a Directory: {e}"))
            })?;
            for child in &directory.directories {
                let child = request::digest(
                    Some(digest.function()),
                    child.digest.as_ref(),
                    "directory digest",
                )?;
                if self.seen.insert(child) {
                    self.queue.push_back(child);
                }
            }
            self.position += 1;
            return Ok(Some(directory));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_totals_are_checked_without_wrapping() {
        let max = MAX_BATCH_TOTAL_SIZE_BYTES as u64;
        assert!(check_batch_total([max / 2, max / 2].into_iter()).is_ok());
        let over = check_batch_total([max, 1].into_iter()).unwrap_err();
        assert_eq!(over.code(), tonic::Code::InvalidArgument);
        // Wrapping arithmetic would make this 1 byte.
        let huge = (1u64 << 63) - 1;
        let wrapped = check_batch_total([huge, huge, 3].into_iter()).unwrap_err();
        assert_eq!(wrapped.code(), tonic::Code::InvalidArgument);
    }
}
