//! Counters of what the caches saved and what crossed the network, shared by the decorators that
//! count them, logged at shutdown and served to `clientd stats`.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Monotonic counters since the daemon started.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// Every counter by name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }

            /// Every counter with its doc comment (for `/metrics`' HELP lines), in declaration
            /// order.
            pub fn described(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((
                    stringify!($name),
                    concat!($($doc),*),
                    self.$name.load(Ordering::Relaxed),
                ),)*]
            }
        }
    };
}

counters! {
    /// GetActionResult calls answered with a result (a cache hit for the client), any instance.
    action_cache_hits,
    /// GetActionResult calls answered NOT_FOUND.
    action_cache_misses,
    /// Blobs sent to clients by BatchReadBlobs and ByteStream.Read, any instance (the local
    /// cache's included).
    blobs_served,
    /// Bytes of those blobs.
    bytes_served,
    /// Blobs received from clients by BatchUpdateBlobs and ByteStream.Write and stored, any
    /// instance.
    blobs_stored,
    /// Bytes of those blobs.
    bytes_stored,
    /// Reads of cluster blobs served from the local CAS.
    local_hits,
    /// Blobs fetched from a cluster into the local CAS (one per distinct concurrent read).
    upstream_fetches,
    /// Bytes of those fetches.
    upstream_fetch_bytes,
    /// Reads that joined a fetch another reader had started.
    shared_fetches,
    /// FindMissingBlobs digests answered from the existence cache.
    find_missing_local,
    /// FindMissingBlobs digests asked of a cluster.
    find_missing_upstream,
    /// GetActionResult calls for clusters answered from remembered results.
    action_results_local,
    /// GetActionResult calls answered from remembered results while their cluster did not answer.
    action_results_offline,
    /// Blobs uploaded to a cluster.
    upstream_writes,
    /// Bytes of those uploads.
    upstream_write_bytes,
    /// Executes a scrubbing rule matched that were answered from a result stored under their
    /// scrubbed key (nothing ran).
    scrubbed_hits,
    /// Executes a scrubbing rule matched that found nothing under their scrubbed key and went to
    /// the cluster.
    scrubbed_misses,
    /// Successful results of those stored under their scrubbed key.
    scrubbed_stored,
    /// Executes a scrubbing rule matched whose key could not be computed (forwarded unscrubbed).
    scrub_failures,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
