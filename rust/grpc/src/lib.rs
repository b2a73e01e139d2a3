//! clientd's gRPC front: thin tonic services that parse and validate requests, then call the
//! [`clientd_store`] traits, or forward to a cluster ([`clientd_upstream`]). Every request is checked here (instance names, digests, resource
//! names) so that stores only ever see well-formed values.

#[macro_use]
mod write_through; // first: the modules below use its macro

mod action_cache;
mod activity;
mod authority;
mod bytestream;
mod capabilities;
mod cas;
mod execution;
mod forwarding;
mod front_door;
mod message_limit;
mod request;
mod routes;
mod scrubbing;
mod stats;
mod timing;

pub use action_cache::ActionCacheService;
pub use activity::Recorder;
pub use authority::LenientAuthority;
pub use bytestream::ByteStreamService;
pub use capabilities::{served_capabilities, CapabilitiesService, MAX_BATCH_TOTAL_SIZE_BYTES};
pub use cas::CasService;
pub use execution::ExecutionService;
pub use forwarding::ForwardHeadersLayer;
pub use front_door::{split_tcp, split_unix, Replayed};
pub use message_limit::MessageLimitLayer;
pub use routes::Clusters;
pub use scrubbing::Scrubbing;
pub use stats::{Insight, ServerInfo, StatsService};
pub use timing::TimingLayer;

/// Largest gRPC message accepted or sent: a full batch plus framing, as bb_clientd uses.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
