//! clientd's side of the conversation with remote clusters.
//!
//! A [`Cluster`] is one configured upstream: a lazily connected gRPC channel, the headers sent
//! with every call (static ones from the config, and the client's forwarded `authorization` and
//! `requestmetadata-bin`), the last credentials seen (in memory only, for the file system's
//! background reads), bounded retries of UNAVAILABLE, and its capabilities. [`UpstreamCas`] and
//! [`UpstreamActionCache`] present it as the store traits, so the caching decorators in
//! `clientd_store` compose in front of it; Execution is forwarded by [`Cluster::execute`].

mod action_cache;
mod batch;
mod cas;
mod cluster;
mod endpoint;
mod health;
mod latency;
mod retry;

pub use action_cache::UpstreamActionCache;
pub use cas::UpstreamCas;
pub use cluster::{Cluster, ClusterOptions};
pub use endpoint::{ConfigError, Endpoint};
pub use latency::{Histogram, Latency, BUCKETS};
pub use retry::RetryPolicy;
