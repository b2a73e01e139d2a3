//! Where blobs and action results live.
//!
//! Two narrow traits, [`BlobStore`] and [`ActionCache`], are all the gRPC front and the file system
//! see. The local implementations ([`LocalCas`], [`LocalActionCache`]) sit on [`DiskLru`], a bounded
//! directory of immutable files. Behaviours that wrap a store (existence caching, completeness
//! checking, existence and read caching, concurrency limiting, routing) are decorators, one file each, taking the inner store in their constructor.

mod action_result_caching;
mod clock;
mod completeness;
mod concurrency_limiting;
pub mod context;
mod demultiplexing;
mod disk_lru;
mod error;
mod existence_caching;
mod joint_bound;
mod local_ac;
mod local_cas;
mod nowait;
mod packed;
mod read_caching;
mod router;
mod stats;
#[cfg(test)]
mod test_store;
mod traits;
mod tree;

pub use action_result_caching::ActionResultCaching;
pub use clock::{Clock, ManualClock, SystemClock};
pub use completeness::CompletenessChecking;
pub use concurrency_limiting::ConcurrencyLimiting;
pub use demultiplexing::{Backend, Demultiplexing};
pub use disk_lru::{DiskKey, DiskLru, DiskLruOptions, Reservation};
pub use error::{StoreError, StoreResult};
pub use existence_caching::ExistenceCaching;
pub use local_ac::LocalActionCache;
pub use local_cas::{LocalBlob, LocalCas};
pub use packed::PACKED_MAX_BLOB;
pub use read_caching::ReadCaching;
pub use router::Router;
pub use stats::Stats;
pub use traits::{ActionCache, BlobSink, BlobStore, ByteStream, BATCH_CONCURRENCY};
pub use tree::{read_tree, TreeError, MAX_DIRECTORIES};
