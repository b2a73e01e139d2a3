//! What the front knows about each instance-name prefix beyond storage: which cluster, if any,
//! answers Capabilities and Execution for it. `None` is the local cache.

use clientd_store::Router;
use clientd_upstream::Cluster;
use std::sync::Arc;

pub type Clusters = Router<Option<Arc<Cluster>>>;
