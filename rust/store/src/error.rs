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

/// The canonical status codes of gRPC (`google.rpc.Code`), as numbers on the wire: what a
/// [`StoreError`] becomes at the gRPC edge (tonic's `Code` there), and in the per-blob statuses of
/// batch calls. The store speaks codes, not tonic, so it needs no transport.
mod code {
    pub const CANCELLED: i32 = 1;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

impl StoreError {
    /// The gRPC status code (`google.rpc.Code`) this error is answered with.
    pub fn code(&self) -> i32 {
        match self {
            StoreError::NotFound(_) => code::NOT_FOUND,
            StoreError::InvalidArgument(_) => code::INVALID_ARGUMENT,
            StoreError::ResourceExhausted(_) => code::RESOURCE_EXHAUSTED,
            StoreError::FailedPrecondition(_) => code::FAILED_PRECONDITION,
            StoreError::OutOfRange(_) => code::OUT_OF_RANGE,
            StoreError::Unavailable(_) => code::UNAVAILABLE,
            StoreError::Internal(_) => code::INTERNAL,
            StoreError::Unauthenticated(_) => code::UNAUTHENTICATED,
            StoreError::PermissionDenied(_) => code::PERMISSION_DENIED,
            StoreError::DeadlineExceeded(_) => code::DEADLINE_EXCEEDED,
            StoreError::Unimplemented(_) => code::UNIMPLEMENTED,
        }
    }

    /// A cluster's status (its gRPC code and message) as a store error. Codes without a variant
    /// of their own map to the nearest one a client acts on the same way: ABORTED and CANCELLED
    /// can be retried (UNAVAILABLE), the rest (OK, UNKNOWN, ALREADY_EXISTS, DATA_LOSS, codes
    /// gRPC does not define) are INTERNAL.
    pub fn from_code(code: i32, message: impl Into<String>) -> Self {
        let m = message.into();
        match code {
            code::NOT_FOUND => StoreError::NotFound(m),
            code::INVALID_ARGUMENT => StoreError::InvalidArgument(m),
            code::RESOURCE_EXHAUSTED => StoreError::ResourceExhausted(m),
            code::FAILED_PRECONDITION => StoreError::FailedPrecondition(m),
            code::OUT_OF_RANGE => StoreError::OutOfRange(m),
            code::UNAVAILABLE | code::ABORTED | code::CANCELLED => StoreError::Unavailable(m),
            code::UNAUTHENTICATED => StoreError::Unauthenticated(m),
            code::PERMISSION_DENIED => StoreError::PermissionDenied(m),
            code::DEADLINE_EXCEEDED => StoreError::DeadlineExceeded(m),
            code::UNIMPLEMENTED => StoreError::Unimplemented(m),
            _ => StoreError::Internal(m),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_comes_back_from_its_own_code() {
        let all = [
            StoreError::NotFound("m".into()),
            StoreError::InvalidArgument("m".into()),
            StoreError::ResourceExhausted("m".into()),
            StoreError::FailedPrecondition("m".into()),
            StoreError::OutOfRange("m".into()),
            StoreError::Unavailable("m".into()),
            StoreError::Internal("m".into()),
            StoreError::Unauthenticated("m".into()),
            StoreError::PermissionDenied("m".into()),
            StoreError::DeadlineExceeded("m".into()),
            StoreError::Unimplemented("m".into()),
        ];
        for err in all {
            assert_eq!(StoreError::from_code(err.code(), "m"), err);
        }
    }

    #[test]
    fn codes_without_a_variant_map_to_what_a_client_does_with_them() {
        for retried in [code::ABORTED, code::CANCELLED] {
            assert_eq!(
                StoreError::from_code(retried, "m"),
                StoreError::Unavailable("m".into())
            );
        }
        // OK, UNKNOWN, ALREADY_EXISTS, DATA_LOSS, and a code gRPC does not define.
        for other in [0, 2, 6, 15, 99] {
            assert_eq!(
                StoreError::from_code(other, "m"),
                StoreError::Internal("m".into())
            );
        }
    }
}
