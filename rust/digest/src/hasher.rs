use crate::digest::{Digest, HashBytes};
use crate::function::DigestFunction;
use crate::sha256tree::Sha256Tree;
use sha2::Digest as _;

/// Feeds the bytes of `[offset, offset + len)` of a blob to a sink, in order: how
/// [`DigestFunction::digest_of_ranges`] reads a blob it may hash in parts on several threads.
pub type ReadRanges<'a, E> = dyn Fn(u64, u64, &mut dyn FnMut(&[u8])) -> Result<(), E> + Sync + 'a;

/// An incremental hasher for any supported function; one enum so callers need no generics.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Blake3(Box<blake3::Hasher>),
    Sha256Tree(Box<Sha256Tree>),
}

impl Hasher {
    pub fn new(function: DigestFunction) -> Self {
        match function {
            DigestFunction::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestFunction::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            DigestFunction::Md5 => Hasher::Md5(md5::Md5::new()),
            DigestFunction::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            DigestFunction::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            DigestFunction::Blake3 => Hasher::Blake3(Box::default()),
            DigestFunction::Sha256Tree => Hasher::Sha256Tree(Box::default()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Sha256Tree(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far, with `size` as its size.
    pub fn finish(self, size: u64) -> Digest {
        let (function, hash) = match self {
            Hasher::Sha256(h) => (DigestFunction::Sha256, HashBytes::new(&h.finalize())),
            Hasher::Sha1(h) => (DigestFunction::Sha1, HashBytes::new(&h.finalize())),
            Hasher::Md5(h) => (DigestFunction::Md5, HashBytes::new(&h.finalize())),
            Hasher::Sha384(h) => (DigestFunction::Sha384, HashBytes::new(&h.finalize())),
            Hasher::Sha512(h) => (DigestFunction::Sha512, HashBytes::new(&h.finalize())),
            Hasher::Blake3(h) => (
                DigestFunction::Blake3,
                HashBytes::new(h.finalize().as_bytes()),
            ),
            Hasher::Sha256Tree(h) => (DigestFunction::Sha256Tree, HashBytes::new(&h.finalize())),
        };
        Digest::new(function, hash, size)
    }
}

impl DigestFunction {
    /// The digest of `data` in one call.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish(data.len() as u64)
    }

    /// The digest of `size` bytes that `read(offset, len, sink)` feeds to `sink` in order (a file
    /// read with pread, say). SHA256TREE hashes blocks of a large blob on up to `threads`
    /// threads (see [`crate::sha256tree::hash_ranges`]); the other functions are sequential by
    /// construction, and read everything in one range on this thread.
    pub fn digest_of_ranges<E: Send>(
        self,
        size: u64,
        threads: usize,
        read: &ReadRanges<'_, E>,
    ) -> Result<Digest, E> {
        if self == DigestFunction::Sha256Tree {
            let hash = crate::sha256tree::hash_ranges(size, threads, read)?;
            return Ok(Digest::new(self, HashBytes::new(&hash), size));
        }
        let mut hasher = self.hasher();
        read(0, size, &mut |b| hasher.update(b))?;
        Ok(hasher.finish(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_empty_hashes() {
        let cases = [
            (DigestFunction::Md5, "d41d8cd98f00b204e9800998ecf8427e"),
            (
                DigestFunction::Sha1,
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            ),
            (
                DigestFunction::Sha256,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                DigestFunction::Blake3,
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
        ];
        for (function, hex) in cases {
            assert_eq!(function.digest_of(b"").hash_hex(), hex, "{function}");
        }
        assert_eq!(
            DigestFunction::Sha384.digest_of(b"abc").hash_hex().len(),
            96
        );
        assert_eq!(
            DigestFunction::Sha512.digest_of(b"abc").hash_hex().len(),
            128
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        for function in DigestFunction::ALL {
            let mut h = function.hasher();
            h.update(b"hello ");
            h.update(b"world");
            assert_eq!(h.finish(11), function.digest_of(b"hello world"));
        }
    }
}
