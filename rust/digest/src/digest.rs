use crate::error::{truncate, DigestError};
use crate::function::DigestFunction;
use clientd_proto::build::bazel::remote::execution::v2 as re;
use std::fmt;

/// A hash of up to 64 bytes stored inline, so digests are `Copy` and cheap as map keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashBytes {
    len: u8,
    bytes: [u8; 64],
}

impl HashBytes {
    /// Panics if `hash` is longer than 64 bytes, which no supported function produces.
    pub fn new(hash: &[u8]) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..hash.len()].copy_from_slice(hash);
        HashBytes {
            len: hash.len() as u8,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A verified-shape digest: function, hash of the function's length, and a size below 2^63.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    hash: HashBytes,
    size: u64,
}

impl Digest {
    pub(crate) fn new(function: DigestFunction, hash: HashBytes, size: u64) -> Self {
        Digest {
            function,
            hash,
            size,
        }
    }

    /// Parses a lowercase hex hash and a size. `function` None infers it from the hash length.
    pub fn parse(
        function: Option<DigestFunction>,
        hex: &str,
        size: u64,
    ) -> Result<Self, DigestError> {
        let function = match function {
            Some(f) => f,
            None => DigestFunction::infer(hex.len())?,
        };
        let expected = function.hash_len() * 2;
        let lowercase_hex = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if hex.len() != expected || !lowercase_hex {
            return Err(DigestError::BadHash {
                hash: truncate(hex),
                function: function.name(),
                expected,
            });
        }
        if size > i64::MAX as u64 {
            return Err(DigestError::BadSize(size.to_string()));
        }
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(hex, &mut bytes[..function.hash_len()])
            .expect("checked to be lowercase hex of the right length");
        Ok(Digest::new(
            function,
            HashBytes::new(&bytes[..function.hash_len()]),
            size,
        ))
    }

    /// A digest from its hash's raw bytes (as stored on disk), which must be `function`'s length.
    pub fn from_raw(function: DigestFunction, hash: &[u8], size: u64) -> Option<Self> {
        (hash.len() == function.hash_len() && size <= i64::MAX as u64)
            .then(|| Digest::new(function, HashBytes::new(hash), size))
    }

    /// Parses a size segment: decimal digits only (no sign, no spaces), below 2^63.
    pub fn parse_size(text: &str) -> Result<u64, DigestError> {
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DigestError::BadSize(truncate(text)));
        }
        let size: u64 = text
            .parse()
            .map_err(|_| DigestError::BadSize(truncate(text)))?;
        if size > i64::MAX as u64 {
            return Err(DigestError::BadSize(truncate(text)));
        }
        Ok(size)
    }

    /// Parses `HASH/SIZE` (ByteStream form) or `HASH-SIZE` (file-system form), per `separator`.
    pub fn parse_joined(
        function: Option<DigestFunction>,
        text: &str,
        separator: char,
    ) -> Result<Self, DigestError> {
        let (hex, size) = text
            .split_once(separator)
            .ok_or_else(|| DigestError::BadForm(truncate(text), separator))?;
        Digest::parse(function, hex, Digest::parse_size(size)?)
    }

    /// Converts a proto digest. `function` None infers it from the hash length.
    pub fn from_proto(
        function: Option<DigestFunction>,
        digest: &re::Digest,
    ) -> Result<Self, DigestError> {
        if digest.size_bytes < 0 {
            return Err(DigestError::BadSize(digest.size_bytes.to_string()));
        }
        Digest::parse(function, &digest.hash, digest.size_bytes as u64)
    }

    pub fn to_proto(&self) -> re::Digest {
        re::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }

    /// The digest of the empty blob under `function`, which always exists.
    pub fn empty(function: DigestFunction) -> Self {
        function.digest_of(&[])
    }

    pub fn function(&self) -> DigestFunction {
        self.function
    }

    pub fn hash(&self) -> &[u8] {
        self.hash.as_bytes()
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash.as_bytes())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == Digest::empty(self.function)
    }

    /// `HASH-SIZE`, the form used in file names (cache, mount).
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.hash_hex(), self.size)
    }

    /// `[function/]HASH/SIZE`, the tail of a ByteStream resource name.
    pub fn resource_tail(&self) -> String {
        if self.function.named_in_resources() {
            format!("{}/{}/{}", self.function.name(), self.hash_hex(), self.size)
        } else {
            format!("{}/{}", self.hash_hex(), self.size)
        }
    }
}

impl fmt::Display for Digest {
    /// `function:HASH-SIZE`, for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}-{}", self.function, self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn both_joined_forms() {
        let a = Digest::parse_joined(None, &format!("{SHA256_EMPTY}/0"), '/').unwrap();
        let b = Digest::parse_joined(None, &format!("{SHA256_EMPTY}-0"), '-').unwrap();
        assert_eq!(a, b);
        assert_eq!(a.function(), DigestFunction::Sha256);
        assert!(a.is_empty_blob());
        assert_eq!(a.file_name(), format!("{SHA256_EMPTY}-0"));
        assert_eq!(a.resource_tail(), format!("{SHA256_EMPTY}/0"));
    }

    #[test]
    fn from_raw_bytes_checks_the_length() {
        let d = DigestFunction::Sha256.digest_of(b"x");
        assert_eq!(Digest::from_raw(d.function(), d.hash(), 1), Some(d));
        assert_eq!(Digest::from_raw(DigestFunction::Sha1, d.hash(), 1), None);
    }

    #[test]
    fn blake3_is_named_in_resources() {
        let d = DigestFunction::Blake3.digest_of(b"x");
        assert!(d.resource_tail().starts_with("blake3/"));
    }

    #[test]
    fn hostile_hashes_refused() {
        let upper = SHA256_EMPTY.to_uppercase();
        let long = "a".repeat(1_000_000);
        for bad in [
            "",
            "zz",
            &SHA256_EMPTY[1..],
            upper.as_str(),
            long.as_str(),
            "é",
        ] {
            assert!(Digest::parse(None, bad, 0).is_err(), "{bad:.20}");
        }
        // Length right for SHA-1, but SHA-256 asked for.
        let sha1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
        assert!(Digest::parse(Some(DigestFunction::Sha256), sha1, 0).is_err());
        let err = Digest::parse(None, &long, 0).unwrap_err().to_string();
        assert!(
            err.len() < 300,
            "error message quotes too much: {}",
            err.len()
        );
    }

    #[test]
    fn hostile_sizes_refused() {
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "9223372036854775808",
            "99999999999999999999",
            "0x10",
            "1.0",
        ] {
            assert!(Digest::parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::parse_size("9223372036854775807").unwrap(),
            i64::MAX as u64
        );
        assert_eq!(Digest::parse_size("007").unwrap(), 7);
        let proto = re::Digest {
            hash: SHA256_EMPTY.into(),
            size_bytes: -5,
        };
        assert!(Digest::from_proto(None, &proto).is_err());
    }

    #[test]
    fn joined_form_needs_separator() {
        assert!(Digest::parse_joined(None, SHA256_EMPTY, '/').is_err());
        assert!(Digest::parse_joined(None, &format!("{SHA256_EMPTY}-0"), '/').is_err());
    }

    #[test]
    fn proto_round_trip() {
        for function in DigestFunction::ALL {
            let d = function.digest_of(b"round trip");
            assert_eq!(
                Digest::from_proto(Some(function), &d.to_proto()).unwrap(),
                d
            );
            assert_eq!(
                DigestFunction::from_proto(function.to_proto()).unwrap(),
                Some(function)
            );
        }
        assert_eq!(DigestFunction::from_proto(0).unwrap(), None);
        assert!(DigestFunction::from_proto(4).is_err()); // VSO
        assert!(DigestFunction::from_proto(12345).is_err());
    }
}
