//! Why the saved output paths cannot be read, or one of them restored.

use clientd_digest::DigestError;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    /// A directory or file of the saved output paths that cannot be created or read.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A saved state that is not an OutputPathState message.
    #[error("{}: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    /// A saved state naming a digest function clientd does not know.
    #[error("{}: {source}", path.display())]
    Function {
        path: PathBuf,
        #[source]
        source: DigestError,
    },
    /// A saved state whose instance name does not check out.
    #[error("{}: {source}", path.display())]
    InstanceName {
        path: PathBuf,
        #[source]
        source: DigestError,
    },
    /// The file system has no room for the output path's root (its name is taken or invalid).
    #[error("outputs/{id}: the file system refused its root (errno {errno})")]
    Root { id: String, errno: i32 },
}

impl OutputsError {
    /// An [`OutputsError::Io`] of `what` (a verb: "read", "create") on `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| OutputsError::Io { what, path, source }
    }
}
