//! Insight into the builds that go through the daemon: the activity record (per invocation, per
//! action, what happened) and, from it and the CAS, why actions missed the cache.

mod explain;
mod log;
mod writer;

pub use explain::{
    explain, explain_action, flatten, load, parse_action, parse_instance, Cause, ExplainError,
    Explanation, Loaded,
};
pub use log::{action_key, ActionRecord, ActivityLog, Event, Invocation, Outcome, Traffic};
