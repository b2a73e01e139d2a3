use thiserror::Error;

/// Why a digest, resource name or instance name was refused. The text is shown to clients as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    #[error("unsupported digest function {0}")]
    UnsupportedFunction(String),
    #[error("cannot infer the digest function of a {0}-character hash; set digest_function")]
    UnknownHashLength(usize),
    #[error("hash {hash:?} is not {expected} lowercase hex characters as {function} requires")]
    BadHash {
        hash: String,
        function: &'static str,
        expected: usize,
    },
    #[error("size {0:?} is not a non-negative decimal integer below 2^63")]
    BadSize(String),
    #[error("digest {0:?} is not of the form HASH{1}SIZE")]
    BadForm(String, char),
    #[error("malformed resource name {name:?}: {why}")]
    BadResourceName { name: String, why: String },
    #[error("invalid instance name {name:?}: {why}")]
    BadInstanceName { name: String, why: String },
}
