//! Where blobs and action results live.
//!
//! Two narrow traits, [`BlobStore`] and [`ActionCache`], are all the gRPC front and the file system
//! see. The local implementations ([`LocalCas`], [`LocalActionCache`]) sit on [`DiskLru`], a bounded
//! directory of immutable files. Behaviours that wrap a store (existence caching, completeness
//! checking, routing) are decorators, one file each, taking the inner store in their constructor.

mod clock;
mod completeness;
mod demultiplexing;
mod disk_lru;
mod error;
mod local_ac;
mod local_cas;
mod traits;

pub use clock::{Clock, ManualClock, SystemClock};
pub use completeness::CompletenessChecking;
pub use demultiplexing::{Backend, Demultiplexing};
pub use disk_lru::{DiskKey, DiskLru, DiskLruOptions};
pub use error::{StoreError, StoreResult};
pub use local_ac::LocalActionCache;
pub use local_cas::LocalCas;
pub use traits::{ActionCache, BlobSink, BlobStore, ByteStream};
