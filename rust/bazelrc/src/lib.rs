//! What users of clientd put into Bazel: the `--config=clientd` fragment (`clientd bazelrc`) and
//! remote-scrubbing configs for stamped builds (`clientd scrub-config`). Pure text generation,
//! tested against the flags each Bazel version knows.

mod fragment;
mod scrubbing;
mod version;

pub use fragment::{fragment, Connection, FragmentOptions};
pub use scrubbing::{scrub_config, ScrubOptions};
pub use version::BazelVersion;
