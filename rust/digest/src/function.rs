use crate::error::DigestError;
use crate::hasher::Hasher;
use clientd_proto::build::bazel::remote::execution::v2::digest_function::Value as ProtoFunction;

/// The digest functions clientd verifies blobs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    Sha1,
    Md5,
    Sha384,
    Sha512,
    Blake3,
    /// SHA-256 over a Merkle tree of 1024-byte chunks (see [`crate::sha256tree`]).
    Sha256Tree,
}

impl DigestFunction {
    /// Every supported function, in the order Capabilities advertises them.
    pub const ALL: [DigestFunction; 7] = [
        DigestFunction::Sha256,
        DigestFunction::Sha1,
        DigestFunction::Md5,
        DigestFunction::Sha384,
        DigestFunction::Sha512,
        DigestFunction::Blake3,
        DigestFunction::Sha256Tree,
    ];

    /// The lowercase name used in resource names, cache paths and the mount (`sha256`, `blake3`).
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Sha1 => "sha1",
            DigestFunction::Md5 => "md5",
            DigestFunction::Sha384 => "sha384",
            DigestFunction::Sha512 => "sha512",
            DigestFunction::Blake3 => "blake3",
            DigestFunction::Sha256Tree => "sha256tree",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Length of the hash in bytes.
    pub fn hash_len(self) -> usize {
        match self {
            DigestFunction::Md5 => 16,
            DigestFunction::Sha1 => 20,
            DigestFunction::Sha256 | DigestFunction::Blake3 | DigestFunction::Sha256Tree => 32,
            DigestFunction::Sha384 => 48,
            DigestFunction::Sha512 => 64,
        }
    }

    /// Whether ByteStream resource names carry this function's name. REAPI omits the segment for
    /// the functions that predate it, which are inferred from the hash length instead.
    pub fn named_in_resources(self) -> bool {
        matches!(self, DigestFunction::Blake3 | DigestFunction::Sha256Tree)
    }

    /// The function a hash of `hex_len` characters implies when none is named (REAPI's rule for
    /// the functions that predate the `digest_function` field). BLAKE3 and SHA256TREE must always
    /// be named.
    pub fn infer(hex_len: usize) -> Result<Self, DigestError> {
        match hex_len {
            32 => Ok(DigestFunction::Md5),
            40 => Ok(DigestFunction::Sha1),
            64 => Ok(DigestFunction::Sha256),
            96 => Ok(DigestFunction::Sha384),
            128 => Ok(DigestFunction::Sha512),
            n => Err(DigestError::UnknownHashLength(n)),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> i32 {
        let value = match self {
            DigestFunction::Sha256 => ProtoFunction::Sha256,
            DigestFunction::Sha1 => ProtoFunction::Sha1,
            DigestFunction::Md5 => ProtoFunction::Md5,
            DigestFunction::Sha384 => ProtoFunction::Sha384,
            DigestFunction::Sha512 => ProtoFunction::Sha512,
            DigestFunction::Blake3 => ProtoFunction::Blake3,
            DigestFunction::Sha256Tree => ProtoFunction::Sha256tree,
        };
        value as i32
    }

    /// `Ok(None)` for UNKNOWN (infer from the hash), an error for functions clientd does not support.
    pub fn from_proto(value: i32) -> Result<Option<Self>, DigestError> {
        match ProtoFunction::try_from(value) {
            Ok(ProtoFunction::Unknown) => Ok(None),
            Ok(ProtoFunction::Sha256) => Ok(Some(DigestFunction::Sha256)),
            Ok(ProtoFunction::Sha1) => Ok(Some(DigestFunction::Sha1)),
            Ok(ProtoFunction::Md5) => Ok(Some(DigestFunction::Md5)),
            Ok(ProtoFunction::Sha384) => Ok(Some(DigestFunction::Sha384)),
            Ok(ProtoFunction::Sha512) => Ok(Some(DigestFunction::Sha512)),
            Ok(ProtoFunction::Blake3) => Ok(Some(DigestFunction::Blake3)),
            Ok(ProtoFunction::Sha256tree) => Ok(Some(DigestFunction::Sha256Tree)),
            Ok(other) => Err(DigestError::UnsupportedFunction(
                other.as_str_name().to_ascii_lowercase(),
            )),
            Err(_) => Err(DigestError::UnsupportedFunction(value.to_string())),
        }
    }

    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }
}

impl std::fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
