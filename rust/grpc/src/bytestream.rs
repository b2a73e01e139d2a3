//! ByteStream Read, Write (resumable) and QueryWriteStatus over the CAS.

use crate::activity::Recorder;
use crate::request;
use bs::byte_stream_server::ByteStream;
use clientd_digest::{truncate, Compressor, DigestError, ReadResource, WriteResource};
use clientd_proto::google::bytestream as bs;
use clientd_store::{BlobSink, BlobStore, Clock, Stats, StoreError};
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tonic::{Request, Response, Status, Streaming};

/// An upload that has not finished yet, kept so that a client whose stream broke can resume it
/// (QueryWriteStatus, then Write from `committed_size`). Its bytes are in a temporary file that
/// never becomes visible unless the whole blob arrives and verifies.
struct PartialUpload {
    sink: Box<dyn BlobSink>,
    last_active: SystemTime,
}

/// One resource name's upload. A Write holds `upload` for its whole stream; `committed` follows
/// the upload's committed size, so that QueryWriteStatus answers at once while a Write runs.
#[derive(Default)]
struct Slot {
    upload: tokio::sync::Mutex<Option<PartialUpload>>,
    committed: AtomicU64,
}

pub struct ByteStreamService {
    cas: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    /// Blobs and bytes served and stored, as clients see them.
    stats: Arc<Stats>,
    recorder: Recorder,
    /// Unfinished uploads by resource name. A Write holds its slot's lock while it runs, so the
    /// state survives even when the client's cancellation drops the handler mid-stream.
    uploads: Mutex<HashMap<String, Arc<Slot>>>,
    /// Unfinished uploads idle for longer than this are discarded.
    upload_expiry: Duration,
}

impl ByteStreamService {
    pub fn new(
        cas: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        upload_expiry: Duration,
        stats: Arc<Stats>,
        recorder: Recorder,
    ) -> Self {
        ByteStreamService {
            cas,
            clock,
            stats,
            recorder,
            uploads: Mutex::new(HashMap::new()),
            upload_expiry,
        }
    }

    /// The slot for `name`, created if absent; expired idle uploads are dropped on the way.
    fn slot(&self, name: &str) -> Arc<Slot> {
        let now = self.clock.now();
        let mut uploads = self.uploads.lock().unwrap();
        uploads.retain(|_, slot| match slot.upload.try_lock() {
            Ok(guard) => guard.as_ref().is_some_and(|u| {
                now.duration_since(u.last_active).unwrap_or_default() < self.upload_expiry
            }),
            Err(_) => true, // in use
        });
        uploads.entry(name.to_string()).or_default().clone()
    }

    /// Drops every interrupted upload no Write is using (they give back the room they hold);
    /// how many there were.
    fn drop_idle_uploads(&self) -> usize {
        let mut uploads = self.uploads.lock().unwrap();
        let before = uploads.len();
        uploads.retain(|_, slot| match slot.upload.try_lock() {
            Ok(guard) => guard.is_none(),
            Err(_) => true, // in use
        });
        let dropped = before - uploads.len();
        if dropped > 0 {
            tracing::info!("dropped {dropped} interrupted upload(s) to make room for a new one");
        }
        dropped
    }

    fn forget(&self, name: &str) {
        self.uploads.lock().unwrap().remove(name);
    }

    async fn write_stream(
        &self,
        first: bs::WriteRequest,
        stream: &mut Streaming<bs::WriteRequest>,
    ) -> Result<bs::WriteResponse, Status> {
        let name = first.resource_name.clone();
        let resource = WriteResource::parse(&name).map_err(invalid)?;
        identity_only(resource.compressor)?;
        let digest = resource.digest;
        let size = digest.size() as i64;
        let done = bs::WriteResponse {
            committed_size: size,
        };
        let slot = self.slot(&name);
        let mut guard = slot.upload.try_lock().map_err(|_| {
            Status::aborted(format!(
                "another Write to {} is in progress",
                truncate(&name)
            ))
        })?;
        let resumable = guard.as_ref().map_or(0, |u| u.sink.committed());
        if first.write_offset != 0 && first.write_offset as u64 != resumable {
            return Err(Status::invalid_argument(format!(
                "write_offset {} does not match the committed size {resumable} of {}",
                first.write_offset,
                truncate(&name)
            )));
        }
        if first.write_offset == 0 {
            *guard = None;
            slot.committed.store(0, Ordering::Release);
            // Another client already uploaded it: finish at once, as REAPI allows.
            if self
                .cas
                .known_present(&resource.instance_name, &digest)
                .await
            {
                drop(guard);
                self.forget(&name);
                return Ok(done);
            }
            let begin = || self.cas.begin_write(&resource.instance_name, &digest);
            let sink = match begin().await {
                // Interrupted uploads waiting to be resumed hold room in the bound: a new
                // upload that needs it takes it from them.
                Err(StoreError::ResourceExhausted(_)) if self.drop_idle_uploads() > 0 => {
                    begin().await.map_err(request::status)?
                }
                other => other.map_err(request::status)?,
            };
            *guard = Some(PartialUpload {
                sink,
                last_active: self.clock.now(),
            });
        }
        let mut message = first;
        loop {
            let upload = guard.as_mut().expect("set above");
            if !message.resource_name.is_empty() && message.resource_name != name {
                return Err(Status::invalid_argument(format!(
                    "resource_name changed within one Write from {:?} to {:?}",
                    truncate(&name),
                    truncate(&message.resource_name)
                )));
            }
            if message.write_offset as u64 != upload.sink.committed() {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not match the {} bytes received",
                    message.write_offset,
                    upload.sink.committed()
                )));
            }
            if !message.data.is_empty() {
                let written = upload.sink.write(message.data).await;
                if let Err(e) = written {
                    *guard = None;
                    slot.committed.store(0, Ordering::Release);
                    return Err(request::status(e));
                }
                slot.committed
                    .store(upload.sink.committed(), Ordering::Release);
                upload.last_active = self.clock.now();
            }
            if message.finish_write {
                // The slot stays (locked) until the blob is visible: a QueryWriteStatus meanwhile
                // sees the bytes received, never a NOT_FOUND.
                let upload = guard.take().expect("set above");
                let committed = upload.sink.commit().await;
                drop(guard);
                self.forget(&name);
                committed.map_err(request::status)?;
                Stats::add(&self.stats.blobs_stored, 1);
                Stats::add(&self.stats.bytes_stored, digest.size());
                return Ok(done);
            }
            message = match stream.message().await? {
                Some(next) => next,
                None => {
                    return Err(Status::invalid_argument(format!(
                    "Write stream for {} ended without finish_write; resume from committed_size",
                    truncate(&name)
                )))
                }
            };
        }
    }
}

fn invalid(e: DigestError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn identity_only(compressor: Option<Compressor>) -> Result<(), Status> {
    match compressor {
        None | Some(Compressor::Identity) => Ok(()),
        Some(c) => Err(Status::invalid_argument(format!(
            "compressor {} is not supported; Capabilities advertises none",
            c.name()
        ))),
    }
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = BoxStream<'static, Result<bs::ReadResponse, Status>>;

    async fn read(
        &self,
        request: Request<bs::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let mut tally = self.recorder.read_tally(request.metadata());
        let request = request.into_inner();
        let resource = ReadResource::parse(&request.resource_name).map_err(invalid)?;
        identity_only(resource.compressor)?;
        if request.read_offset < 0 {
            return Err(Status::out_of_range(format!(
                "read_offset {} is negative",
                request.read_offset
            )));
        }
        let limit = match request.read_limit {
            n if n < 0 => {
                return Err(Status::invalid_argument(format!(
                    "read_limit {n} is negative"
                )))
            }
            0 => None,
            n => Some(n as u64),
        };
        let chunks = self
            .cas
            .read(
                &resource.instance_name,
                &resource.digest,
                request.read_offset as u64,
                limit,
            )
            .await
            .map_err(request::status)?;
        Stats::add(&self.stats.blobs_served, 1);
        let stats = self.stats.clone();
        let responses = chunks.map(move |chunk| match chunk {
            Ok(data) => {
                Stats::add(&stats.bytes_served, data.len() as u64);
                if let Some(tally) = &mut tally {
                    tally.served(data.len());
                }
                Ok(bs::ReadResponse { data })
            }
            Err(e) => Err(request::status(e)),
        });
        Ok(Response::new(responses.boxed()))
    }

    async fn write(
        &self,
        request: Request<Streaming<bs::WriteRequest>>,
    ) -> Result<Response<bs::WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("Write stream carried no request"))?;
        if first.resource_name.is_empty() {
            return Err(Status::invalid_argument(
                "the first WriteRequest must name the resource",
            ));
        }
        self.write_stream(first, &mut stream)
            .await
            .map(Response::new)
    }

    async fn query_write_status(
        &self,
        request: Request<bs::QueryWriteStatusRequest>,
    ) -> Result<Response<bs::QueryWriteStatusResponse>, Status> {
        let name = &request.get_ref().resource_name;
        let resource = WriteResource::parse(name).map_err(invalid)?;
        let slot = self.uploads.lock().unwrap().get(name).cloned();
        if let Some(slot) = slot {
            // A Write in progress holds the lock: answer from what it has received so far.
            let in_progress = match slot.upload.try_lock() {
                Ok(guard) => guard.as_ref().map(|upload| upload.sink.committed()),
                Err(_) => Some(slot.committed.load(Ordering::Acquire)),
            };
            if let Some(committed) = in_progress {
                return Ok(Response::new(bs::QueryWriteStatusResponse {
                    committed_size: committed as i64,
                    complete: false,
                }));
            }
        }
        if self
            .cas
            .contains(&resource.instance_name, &resource.digest)
            .await
            .map_err(request::status)?
        {
            return Ok(Response::new(bs::QueryWriteStatusResponse {
                committed_size: resource.digest.size() as i64,
                complete: true,
            }));
        }
        Err(Status::not_found(format!(
            "no upload in progress for {}",
            truncate(name)
        )))
    }
}
