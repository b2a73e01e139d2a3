//! clientd's gRPC front: thin tonic services that parse and validate requests, then call the
//! [`clientd_store`] traits. Every request is checked here (instance names, digests, resource
//! names) so that stores only ever see well-formed values.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;
mod request;

pub use action_cache::ActionCacheService;
pub use bytestream::ByteStreamService;
pub use capabilities::{CapabilitiesService, MAX_BATCH_TOTAL_SIZE_BYTES};
pub use cas::CasService;

/// Largest gRPC message accepted or sent: a full batch plus framing, as bb_clientd uses.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
