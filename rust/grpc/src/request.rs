//! Request validation shared by the services, and the gRPC edge of the store's errors: a
//! [`StoreError`] becomes a [`Status`] here, so the store itself needs no transport.

use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::StoreError;
use tonic::Status;

/// The instance name, refused with INVALID_ARGUMENT if malformed.
pub fn instance_name(name: &str) -> Result<InstanceName, Status> {
    InstanceName::new(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The request's `digest_function` field: None (infer from hash length) for UNKNOWN.
pub fn digest_function(value: i32) -> Result<Option<DigestFunction>, Status> {
    DigestFunction::from_proto(value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A required digest field.
pub fn digest(
    function: Option<DigestFunction>,
    digest: Option<&re::Digest>,
    field: &str,
) -> Result<Digest, Status> {
    let digest = digest.ok_or_else(|| Status::invalid_argument(format!("{field} is missing")))?;
    Digest::from_proto(function, digest)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A store error as the status the client gets: its code and message.
pub fn status(err: StoreError) -> Status {
    Status::new(err.code().into(), err.message())
}

/// A `google.rpc.Status` for per-entry results of batch calls.
pub fn rpc_status(status: &Status) -> clientd_proto::google::rpc::Status {
    clientd_proto::google::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: vec![],
    }
}

pub fn ok_status() -> clientd_proto::google::rpc::Status {
    clientd_proto::google::rpc::Status::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn store_errors_keep_their_code_and_message() {
        let m = || "blob x: why".to_string();
        for (err, code) in [
            (StoreError::NotFound(m()), Code::NotFound),
            (StoreError::InvalidArgument(m()), Code::InvalidArgument),
            (StoreError::ResourceExhausted(m()), Code::ResourceExhausted),
            (
                StoreError::FailedPrecondition(m()),
                Code::FailedPrecondition,
            ),
            (StoreError::OutOfRange(m()), Code::OutOfRange),
            (StoreError::Unavailable(m()), Code::Unavailable),
            (StoreError::Internal(m()), Code::Internal),
            (StoreError::Unauthenticated(m()), Code::Unauthenticated),
            (StoreError::PermissionDenied(m()), Code::PermissionDenied),
            (StoreError::DeadlineExceeded(m()), Code::DeadlineExceeded),
            (StoreError::Unimplemented(m()), Code::Unimplemented),
        ] {
            let status = status(err);
            assert_eq!((status.code(), status.message()), (code, "blob x: why"));
        }
    }
}
