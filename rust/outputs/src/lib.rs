//! The Bazel Remote Output Service (`bazel_output_service.BazelOutputService`, rev2 locators).
//!
//! With `--experimental_remote_output_service`, Bazel's output path (bazel-out) is a directory
//! of the mount, `outputs/<output base id>/`. Outputs of remotely executed or cached actions are
//! staged there as CAS nodes: visible at once, read (and fetched) only when opened. Local actions
//! write there like anywhere else. At the end of each build the tree is saved, and at start the
//! saved trees come back, so incremental builds continue after a restart.

mod bases;
mod error;
mod expand;
mod locators;
mod paths;
mod service;
mod state;

pub use error::OutputsError;
pub use service::OutputService;
