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

/// At most 100 characters of `text`, for an error message that quotes a client's input. Hostile
/// input can be megabytes long, and a gRPC status message travels in a header that clients cap
/// (8 KiB in grpc-java and grpc C-core: a longer one reaches them as RESOURCE_EXHAUSTED instead of
/// the status it was).
pub fn truncate(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_cut_and_its_length_said() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(50_000);
        let cut = truncate(&long);
        assert_eq!(cut, format!("{}... (100000 bytes)", "é".repeat(100)));
    }
}
