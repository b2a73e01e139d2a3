use clientd_digest::{Digest, DigestError};
use std::io;

/// A store failure, with the gRPC code it maps to. Messages name the blob or file involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    InvalidArgument(String),
    /// Disk full, or a blob larger than the store's bound.
    ResourceExhausted(String),
    FailedPrecondition(String),
    OutOfRange(String),
    Unavailable(String),
    Internal(String),
    /// The remaining codes only come from clusters and are passed through to the client.
    Unauthenticated(String),
    PermissionDenied(String),
    DeadlineExceeded(String),
    Unimplemented(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn blob_not_found(digest: &Digest) -> Self {
        StoreError::NotFound(format!("blob {digest} not found"))
    }

    /// Maps an I/O error during `what` (e.g. "writing blob X") to the right kind: ENOSPC and EDQUOT
    /// become RESOURCE_EXHAUSTED so clients see "disk full", not a generic internal error.
    pub fn io(what: impl std::fmt::Display, err: io::Error) -> Self {
        // The kind, not the raw errno: std decodes ENOSPC and EDQUOT into these kinds, and wrappers
        // such as tempfile's keep the kind while hiding the errno.
        let full = matches!(
            err.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        );
        if full {
            StoreError::ResourceExhausted(format!("disk full while {what}: {err}"))
        } else if err.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound(format!("{what}: {err}"))
        } else {
            StoreError::Internal(format!("{what}: {err}"))
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StoreError::NotFound(m)
            | StoreError::InvalidArgument(m)
            | StoreError::ResourceExhausted(m)
            | StoreError::FailedPrecondition(m)
            | StoreError::OutOfRange(m)
            | StoreError::Unavailable(m)
            | StoreError::Internal(m)
            | StoreError::Unauthenticated(m)
            | StoreError::PermissionDenied(m)
            | StoreError::DeadlineExceeded(m)
            | StoreError::Unimplemented(m) => m,
        }
    }
}

impl StoreError {
    /// A cluster's status as a store error. Codes without a variant of their own map to the
    /// nearest one a client acts on the same way: ABORTED and CANCELLED can be retried
    /// (UNAVAILABLE), the rest are INTERNAL.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let m = status.message().to_string();
        match status.code() {
            Code::NotFound => StoreError::NotFound(m),
            Code::InvalidArgument => StoreError::InvalidArgument(m),
            Code::ResourceExhausted => StoreError::ResourceExhausted(m),
            Code::FailedPrecondition => StoreError::FailedPrecondition(m),
            Code::OutOfRange => StoreError::OutOfRange(m),
            Code::Unavailable | Code::Aborted | Code::Cancelled => StoreError::Unavailable(m),
            Code::Unauthenticated => StoreError::Unauthenticated(m),
            Code::PermissionDenied => StoreError::PermissionDenied(m),
            Code::DeadlineExceeded => StoreError::DeadlineExceeded(m),
            Code::Unimplemented => StoreError::Unimplemented(m),
            Code::Ok | Code::Unknown | Code::AlreadyExists | Code::DataLoss | Code::Internal => {
                StoreError::Internal(m)
            }
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for StoreError {}

impl From<DigestError> for StoreError {
    fn from(err: DigestError) -> Self {
        StoreError::InvalidArgument(err.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        use tonic::Code;
        let code = match &err {
            StoreError::NotFound(_) => Code::NotFound,
            StoreError::InvalidArgument(_) => Code::InvalidArgument,
            StoreError::ResourceExhausted(_) => Code::ResourceExhausted,
            StoreError::FailedPrecondition(_) => Code::FailedPrecondition,
            StoreError::OutOfRange(_) => Code::OutOfRange,
            StoreError::Unavailable(_) => Code::Unavailable,
            StoreError::Internal(_) => Code::Internal,
            StoreError::Unauthenticated(_) => Code::Unauthenticated,
            StoreError::PermissionDenied(_) => Code::PermissionDenied,
            StoreError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            StoreError::Unimplemented(_) => Code::Unimplemented,
        };
        tonic::Status::new(code, err.message())
    }
}
