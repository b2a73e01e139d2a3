//! What users of clientd put into Bazel: the `--config=clientd` fragment (`clientd bazelrc`).
//! Pure text generation, tested against the flags each Bazel version knows.

mod fragment;
mod version;

pub use fragment::{fragment, Connection, FragmentError, FragmentOptions};
pub use version::{BazelVersion, VersionError};
