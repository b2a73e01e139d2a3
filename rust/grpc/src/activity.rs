//! What the services tell the activity record ([`clientd_activity`]): the RequestMetadata of
//! each call (invocation, target, mnemonic) with what happened to its action, and the bytes each
//! read served (and fetched from clusters to serve them).

use clientd_activity::{action_key, ActivityLog, Event, Outcome};
use clientd_digest::{Digest, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::context::{self, REQUEST_METADATA};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tonic::metadata::MetadataMap;

/// The call's RequestMetadata; the default when absent or malformed (which only costs the call
/// its place in the record).
pub(crate) fn request_metadata(metadata: &MetadataMap) -> re::RequestMetadata {
    metadata
        .get_bin(REQUEST_METADATA)
        .and_then(|value| value.to_bytes().ok())
        .and_then(|bytes| re::RequestMetadata::decode(bytes).ok())
        .unwrap_or_default()
}

/// Bytes of the outputs a result names.
fn output_bytes(result: &re::ActionResult) -> u64 {
    let files = result.output_files.iter().filter_map(|f| f.digest.as_ref());
    let logs = [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten();
    files.chain(logs).map(|d| d.size_bytes.max(0) as u64).sum()
}

/// The record of one action's calls, when the daemon keeps one.
#[derive(Clone, Default)]
pub struct Recorder(Option<Arc<ActivityLog>>);

impl Recorder {
    pub fn new(log: Option<Arc<ActivityLog>>) -> Self {
        Recorder(log)
    }

    pub(crate) fn record(
        &self,
        metadata: &re::RequestMetadata,
        instance_name: &InstanceName,
        action: &Digest,
        outcome: Outcome,
        started: Instant,
        result: Option<&re::ActionResult>,
    ) {
        let Some(log) = &self.0 else { return };
        log.record(Event {
            invocation: &metadata.tool_invocation_id,
            instance: instance_name.as_str(),
            action: action_key(action),
            target: &metadata.target_id,
            mnemonic: &metadata.action_mnemonic,
            outcome,
            micros: started.elapsed().as_micros() as u64,
            output_bytes: result.map_or(0, output_bytes),
        });
    }
}

/// One read call's bytes, told to the record when dropped: when a stream ends, and also when the
/// client abandons it.
pub(crate) struct ReadTally {
    log: Arc<ActivityLog>,
    invocation: String,
    served: u64,
    /// The call's fetched-bytes counter ([`context::RequestContext::fetched`]).
    fetched: Arc<AtomicU64>,
}

impl ReadTally {
    pub(crate) fn served(&mut self, bytes: usize) {
        self.served += bytes as u64;
    }
}

impl Drop for ReadTally {
    fn drop(&mut self) {
        let fetched = self.fetched.load(Ordering::Relaxed);
        self.log.traffic(&self.invocation, self.served, fetched);
    }
}

impl Recorder {
    /// A tally for a read call; None when no record is kept or the call names no invocation.
    pub(crate) fn read_tally(&self, metadata: &MetadataMap) -> Option<ReadTally> {
        let log = self.0.clone()?;
        let invocation = request_metadata(metadata).tool_invocation_id;
        (!invocation.is_empty()).then(|| ReadTally {
            log,
            invocation,
            served: 0,
            fetched: context::current().map(|c| c.fetched).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_absent_or_malformed_is_the_default() {
        let mut metadata = MetadataMap::new();
        assert_eq!(request_metadata(&metadata), re::RequestMetadata::default());
        let sent = re::RequestMetadata {
            tool_invocation_id: "inv".into(),
            target_id: "//app:stamped".into(),
            action_mnemonic: "Genrule".into(),
            ..Default::default()
        };
        metadata.insert_bin(
            REQUEST_METADATA,
            tonic::metadata::MetadataValue::from_bytes(&sent.encode_to_vec()),
        );
        assert_eq!(request_metadata(&metadata), sent);
        let mut garbage = MetadataMap::new();
        garbage.insert_bin(
            REQUEST_METADATA,
            tonic::metadata::MetadataValue::from_bytes(b"\xff\xff"),
        );
        assert_eq!(request_metadata(&garbage), re::RequestMetadata::default());
    }

    #[test]
    fn output_bytes_count_files_and_logs() {
        let digest = |n| {
            Some(re::Digest {
                hash: String::new(),
                size_bytes: n,
            })
        };
        let result = re::ActionResult {
            output_files: vec![re::OutputFile {
                digest: digest(10),
                ..Default::default()
            }],
            stdout_digest: digest(5),
            ..Default::default()
        };
        assert_eq!(output_bytes(&result), 15);
    }
}
