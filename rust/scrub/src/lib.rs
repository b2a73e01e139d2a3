//! Stamped builds that still hit the cache. `clientd scrub-config` writes a
//! `remote_scrubbing.Config` (the text proto Bazel 7 reads); `clientd serve` reads the same file
//! and, on Execute, looks actions up under a scrubbed key that leaves out what stamping changes
//! every build (see [`key`]), so that stamped actions run remotely and hit the cache, on any
//! Bazel version.

pub mod config;
mod generate;
pub mod key;
mod textproto;

pub use config::{ConfigError, ParseError, Pattern, Rule, ScrubbingConfig, Transform};
pub use generate::{scrub_config, GenerateError, ScrubOptions};
pub use key::{scrub_action, ScrubError, ScrubbedAction};
pub use textproto::SyntaxError;
