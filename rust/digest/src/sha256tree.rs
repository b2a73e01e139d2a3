//! SHA256TREE (REAPI `DigestFunction.SHA256TREE`, from Buildbarn), implemented from the
//! specification in remote_execution.proto:
//!
//! - a blob of at most 1024 bytes hashes as plain SHA-256;
//! - a larger blob splits into a left part of m = 2^k bytes and a right part of n bytes,
//!   0 < n <= m; each part hashes recursively, and the two hashes are combined by one run of the
//!   SHA-256 compression function over `left || right` (one 64-byte block, no padding) from
//!   [`PARENT_IV`], without the final addition of the initial state.
//!
//! So the leaves are 1024-byte chunks, and the tree over them is left-balanced: the streaming
//! [`Sha256Tree`] keeps a stack of complete subtrees, as BLAKE3 does, merging two of the same size
//! as soon as a later chunk shows they are not the last. Subtrees of 2^j chunks are independent,
//! which is what [`hash_ranges`] uses to hash large blobs on several threads.

use crate::hasher::ReadRanges;
use sha2::Digest as _;

/// Leaves: plain SHA-256 of chunks of this many bytes (the last one may be shorter).
pub const CHUNK_BYTES: usize = 1024;

/// The first 32 bits of the fractional parts of the square roots of the 9th to 16th primes (23
/// to 53): parent nodes start from these, so that they never collide with plain SHA-256 leaves.
const PARENT_IV: [u32; 8] = [
    0xcbbb9d5d, 0x629a292a, 0x9159015a, 0x152fecd8, 0x67332667, 0x8eb44a87, 0xdb0c2e0d, 0x47b5481d,
];

pub type Hash = [u8; 32];

/// The parent of two subtrees.
pub fn parent(left: &Hash, right: &Hash) -> Hash {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(left);
    block[32..].copy_from_slice(right);
    let mut state = PARENT_IV;
    // The raw compression function adds the initial state back (Davies-Meyer); the
    // specification's single invocation does not, so it is subtracted again.
    sha2::block_api::compress256(&mut state, &[block]);
    let mut out = [0u8; 32];
    for (i, (word, iv)) in state.iter().zip(PARENT_IV).enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.wrapping_sub(iv).to_be_bytes());
    }
    out
}

/// An incremental SHA256TREE hasher.
#[derive(Clone, Default)]
pub struct Sha256Tree {
    chunk: sha2::Sha256,
    chunk_len: usize,
    /// Complete subtrees, oldest first, with their sizes in chunks (strictly decreasing powers
    /// of two).
    stack: Vec<(Hash, u64)>,
}

impl Sha256Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.chunk_len == CHUNK_BYTES {
                // More data follows: the full chunk is not the last, so it joins the tree.
                let chunk = std::mem::take(&mut self.chunk).finalize().into();
                self.push(chunk, 1);
                self.chunk_len = 0;
            }
            let n = (CHUNK_BYTES - self.chunk_len).min(data.len());
            self.chunk.update(&data[..n]);
            self.chunk_len += n;
            data = &data[n..];
        }
    }

    /// Adds a complete subtree of `chunks` chunks (a power of two), merging equal neighbours.
    fn push(&mut self, mut hash: Hash, mut chunks: u64) {
        while let Some(&(left, size)) = self.stack.last() {
            if size != chunks {
                break;
            }
            self.stack.pop();
            hash = parent(&left, &hash);
            chunks *= 2;
        }
        self.stack.push((hash, chunks));
    }

    pub fn finalize(self) -> Hash {
        let mut hash: Hash = self.chunk.finalize().into();
        for (left, _) in self.stack.iter().rev() {
            hash = parent(left, &hash);
        }
        hash
    }
}

/// Blocks hashed as independent subtrees by [`hash_ranges`]: 4096 chunks, a power of two, so
/// every block but the last is a complete subtree of the whole tree.
pub const BLOCK_BYTES: u64 = 4 << 20;

/// The SHA256TREE hash of `size` bytes that `read(offset, len, sink)` feeds to `sink` in order,
/// with the blocks but the last hashed on `threads` threads: each is a complete subtree, and
/// [`Sha256Tree::push`] combines them in order exactly as the chunks would have been.
pub fn hash_ranges<E: Send>(
    size: u64,
    threads: usize,
    read: &ReadRanges<'_, E>,
) -> Result<Hash, E> {
    let blocks = size.div_ceil(BLOCK_BYTES);
    let mut hasher = Sha256Tree::new();
    if threads > 1 && blocks > 2 {
        let whole = (blocks - 1) as usize;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let hashes = std::sync::Mutex::new(vec![[0u8; 32]; whole]);
        let worker = || -> Result<(), E> {
            loop {
                let block = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if block >= whole {
                    return Ok(());
                }
                let mut subtree = Sha256Tree::new();
                read(block as u64 * BLOCK_BYTES, BLOCK_BYTES, &mut |b| {
                    subtree.update(b)
                })?;
                hashes.lock().unwrap()[block] = subtree.finalize();
            }
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads.min(whole))
                .map(|_| scope.spawn(worker))
                .collect();
            let mine = worker();
            helpers
                .into_iter()
                .map(|h| h.join().expect("hashing thread"))
                .fold(mine, Result::and)
        })?;
        for hash in hashes.into_inner().unwrap() {
            hasher.push(hash, BLOCK_BYTES / CHUNK_BYTES as u64);
        }
        let done = whole as u64 * BLOCK_BYTES;
        read(done, size - done, &mut |b| hasher.update(b))?;
    } else {
        read(0, size, &mut |b| hasher.update(b))?;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vectors (remote-apis' sha256tree_test_vectors.txt, also in Buildbarn's
    /// tests): the sequence 0, 1, ..., 250, 0, 1, ... of each length.
    const VECTORS: [(usize, &str); 18] = [
        (
            1025,
            "36c0998b21839ef74300b9de47d96d1f62323dc81f2b4231e98ce70cd6ffe750",
        ),
        (
            2048,
            "b584996386f01793751c5cf0c39561f51b7e9924b818943b3cb2f6928cea0fa9",
        ),
        (
            2049,
            "7318d2029b0392edf4cf109edb5a086b4bdadbb7950f710a1483eb881d9e5d44",
        ),
        (
            3072,
            "dfc61c0a041f79d55d53bfe31c6cda7df77fdc8e6fbac1143d70b7144fdf6937",
        ),
        (
            3073,
            "517d20c0e5835f060a1bd6388ed68574f63424bdac2a2c3a35a5c2ef859d8fe2",
        ),
        (
            4096,
            "2f72bb93880012168c027f6781527ff08177c7c8dccb443f4d2c6389c186633d",
        ),
        (
            4097,
            "c3ec942c1b8f4580320d3a06bcf4f8fe1f5db2be797ab67061ea4c2a95f208f2",
        ),
        (
            5120,
            "a76924f6535b4b473377c285ec27acc84cc58e95ab1e9e29b1bb6a4a3fb9d0b3",
        ),
        (
            5121,
            "98f987c3e9fc057a70873715b679b89a663d0df806859b6ce73f8379b06a10ff",
        ),
        (
            6144,
            "372f988af412041b680ab236feef45626380062beb7514bbf93607aedd28fc9a",
        ),
        (
            6145,
            "6dc4b78efd770453417b2ffdc74b27054793efe6122ecd7ee098670ed7c4651c",
        ),
        (
            7168,
            "43686312c0cabccf9d5ad509efa096e3d743c63c7a51f122473c57949e4dd9a0",
        ),
        (
            7169,
            "ad729297ab36cd099665b27c4247474a5518e4cd0be443f5f31d95edda08429b",
        ),
        (
            8192,
            "fcfdde6fe59178e17708c5ba647919c3b141a44c9d1970782e597e1465266932",
        ),
        (
            8193,
            "113c6e3a2452f388b6fad13dfab66ee0bff597a0a9a517ad8d0165f7190b603e",
        ),
        (
            16384,
            "a7a10149a8cb00be537000560edb83b196306b780b72fad8af218f369f75fc19",
        ),
        (
            31744,
            "2cdf7662636c173d4b236f6ea03bf84c65e7f6487b53b2a61c420e26cf8a98c7",
        ),
        (
            102400,
            "0668d69e5331840d2f1823d717b7b3f5d1fdc8a09504cddb692b87ff83d50e5f",
        ),
    ];

    fn sequence(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn tree(data: &[u8]) -> Hash {
        let mut hasher = Sha256Tree::new();
        hasher.update(data);
        hasher.finalize()
    }

    /// The specification read literally: split at the largest power of two below the length.
    fn recursive(data: &[u8]) -> Hash {
        if data.len() <= CHUNK_BYTES {
            return sha2::Sha256::digest(data).into();
        }
        let mut m = 1;
        while m * 2 < data.len() {
            m *= 2;
        }
        parent(&recursive(&data[..m]), &recursive(&data[m..]))
    }

    #[test]
    fn published_vectors() {
        for (len, hex) in VECTORS {
            let data = sequence(len);
            assert_eq!(hex::encode(tree(&data)), hex, "{len} bytes");
        }
    }

    /// Reads from memory in pieces of at most 1 MiB, as a file would be read.
    fn from_memory(data: &[u8]) -> Box<ReadRanges<'_, ()>> {
        Box::new(move |offset, len, sink| {
            let range = &data[offset as usize..(offset + len) as usize];
            range.chunks(1 << 20).for_each(&mut *sink);
            Ok(())
        })
    }

    #[test]
    fn blocks_on_threads_give_the_same_hash() {
        let block = BLOCK_BYTES as usize;
        let data = sequence(5 * block + 3000);
        for len in [
            2 * block + 1,
            3 * block - 1,
            3 * block,
            3 * block + 1,
            5 * block + 3000,
        ] {
            let data = &data[..len];
            let want = recursive(data);
            for threads in [1, 2, 3, 8] {
                let got = hash_ranges(len as u64, threads, &from_memory(data)).unwrap();
                assert_eq!(got, want, "{len} bytes, {threads} threads");
            }
        }
        // A read error stops the hash and is returned.
        let failing = |offset: u64, _: u64, _: &mut dyn FnMut(&[u8])| match offset {
            0 => Ok(()),
            _ => Err("EIO"),
        };
        assert_eq!(hash_ranges(4 * BLOCK_BYTES, 2, &failing), Err("EIO"));
    }

    #[test]
    fn small_blobs_are_plain_sha256() {
        let data = sequence(CHUNK_BYTES);
        for len in [0, 1, 100, 1023, 1024] {
            let want: Hash = sha2::Sha256::digest(&data[..len]).into();
            assert_eq!(tree(&data[..len]), want, "{len}");
        }
    }

    #[test]
    fn every_size_class_every_split_and_thread_count_agree() {
        // Around each chunk boundary and power of two, up to 33 chunks, fed in uneven pieces.
        let data = sequence(33 * CHUNK_BYTES + 1);
        let mut sizes = vec![];
        for chunks in 1..=33 {
            let edge = chunks * CHUNK_BYTES;
            sizes.extend([edge - 1, edge, edge + 1]);
        }
        for len in sizes {
            let data = &data[..len];
            let want = recursive(data);
            assert_eq!(tree(data), want, "{len}");
            for piece in [1, 7, 1000, 1024, 4099] {
                let mut hasher = Sha256Tree::new();
                data.chunks(piece).for_each(|p| hasher.update(p));
                assert_eq!(hasher.finalize(), want, "{len} in pieces of {piece}");
            }
        }
    }
}
