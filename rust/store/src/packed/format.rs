//! The bytes of segment and index files.
//!
//! A segment is a run of records: `cdp1`, the digest function's code, three bytes of padding, the
//! blob's length (u32, little-endian), the hash, then the blob. Its index file (`<seq>.idx`)
//! lists the same records in order, without their bytes: `i`, the function's code, two bytes of
//! padding, the length (u32), where the blob's bytes start in the segment (u64), then the hash.
//! The index is a hint, written without a sync: start-up reads it instead of the segment, checks
//! that its entries lie in order within the segment, and verifies the blobs later.

use clientd_digest::{Digest, DigestFunction};

/// `cdp1`: the start of every record.
const MAGIC: [u8; 4] = *b"cdp1";
/// A record's header: magic, digest function, three bytes of padding, the blob's length.
pub(super) const HEADER: usize = 12;
/// The start of every index entry.
const ENTRY_MAGIC: u8 = b'i';
/// An index entry before its hash: magic, function, padding, length, offset.
const ENTRY_HEADER: usize = 16;
/// An entry with a SHA-256 hash, the usual one: start-up sizes the index by it.
pub(super) const SHA256_ENTRY: u64 = ENTRY_HEADER as u64 + 32;
/// The shortest entry (an MD5 hash): entries start at least this far apart.
pub(super) const MIN_ENTRY: usize = ENTRY_HEADER + 16;

fn function_code(function: DigestFunction) -> u8 {
    DigestFunction::ALL
        .iter()
        .position(|f| *f == function)
        .expect("every function is in ALL") as u8
}

fn function_of(code: u8) -> Option<DigestFunction> {
    DigestFunction::ALL.get(code as usize).copied()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// One record: header, hash, bytes.
pub(super) fn encode(digest: &Digest, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[function_code(digest.function()), 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(digest.hash());
    out.extend_from_slice(data);
}

/// Where a record's blob starts, for a record that starts at `record_at`.
pub(super) fn data_offset(digest: &Digest, record_at: u64) -> u64 {
    record_at + (HEADER + digest.hash().len()) as u64
}

/// The records of segment bytes that start at offset `base` and that verify, with where each
/// blob's bytes start, and where the whole records end: a torn record, or a header that is not
/// one, ends them; a whole record whose bytes do not hash to its digest (a damaged disk block) is
/// skipped.
pub(super) fn decode(bytes: &[u8], base: u64) -> (Vec<(Digest, u64)>, u64) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let (Some(function), true) = (function_of(header[4]), header[..4] == MAGIC) else {
            break;
        };
        let len = u32_at(header, 8) as usize;
        let hash_at = at + HEADER;
        let data_at = hash_at + function.hash_len();
        let Some(data) = bytes.get(data_at..data_at + len) else {
            break;
        };
        let digest = function.digest_of(data);
        if digest.hash() == &bytes[hash_at..data_at] {
            found.push((digest, base + data_at as u64));
        }
        at = data_at + len;
    }
    (found, base + at as u64)
}

/// One index entry: the blob and where its bytes start in the segment.
pub(super) fn encode_entry(digest: &Digest, data_at: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&[ENTRY_MAGIC, function_code(digest.function()), 0, 0]);
    out.extend_from_slice(&(digest.size() as u32).to_le_bytes());
    out.extend_from_slice(&data_at.to_le_bytes());
    out.extend_from_slice(digest.hash());
}

/// An index entry, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    pub function: DigestFunction,
    pub len: u64,
    /// Where the blob's bytes start in the segment.
    pub data_at: u64,
    pub hash: &'a [u8],
}

impl Entry<'_> {
    pub fn digest(&self) -> Digest {
        Digest::from_raw(self.function, self.hash, self.len).expect("the function's length")
    }

    pub fn is(&self, digest: &Digest) -> bool {
        (self.function, self.len, self.hash) == (digest.function(), digest.size(), digest.hash())
    }

    /// Whether both entries list the same blob (wherever its bytes are).
    pub fn same_blob(&self, other: &Entry) -> bool {
        (self.function, self.len, self.hash) == (other.function, other.len, other.hash)
    }

    /// Its length in the index.
    pub fn bytes(&self) -> usize {
        ENTRY_HEADER + self.hash.len()
    }
}

/// The entry that starts at `at` in `bytes`, if a whole one does.
pub(super) fn entry_at(bytes: &[u8], at: usize) -> Option<Entry<'_>> {
    let header = bytes.get(at..at + ENTRY_HEADER)?;
    let function = function_of(header[1]).filter(|_| header[0] == ENTRY_MAGIC)?;
    let hash_at = at + ENTRY_HEADER;
    Some(Entry {
        function,
        len: u32_at(header, 4).into(),
        data_at: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        hash: bytes.get(hash_at..hash_at + function.hash_len())?,
    })
}

/// How many bytes of an index file for a segment of `segment_len` bytes hold entries to believe:
/// whole ones, in order, each record after the one before and within the segment; and where the
/// records they list end in the segment (0 for none). What follows (a torn or garbled tail, when
/// the index lagged its segment at a crash) is not used: the caller reads the segment from there.
pub(super) fn decode_index(bytes: &[u8], segment_len: u64) -> (usize, u64) {
    let (mut at, mut end) = (0usize, 0u64);
    while let Some(entry) = entry_at(bytes, at) {
        let record_at = entry
            .data_at
            .checked_sub((HEADER + entry.hash.len()) as u64);
        if record_at.is_none_or(|r| r < end)
            || entry.data_at.saturating_add(entry.len) > segment_len
        {
            break;
        }
        end = entry.data_at + entry.len;
        at += entry.bytes();
    }
    (at, end)
}

/// The entries of index bytes that [`decode_index`] accepted, from the one that starts at byte
/// `from`, each with where it starts.
pub(super) fn entries(bytes: &[u8], from: usize) -> impl Iterator<Item = (usize, Entry<'_>)> {
    let mut at = from;
    std::iter::from_fn(move || {
        let entry = entry_at(bytes, at)?;
        let start = at;
        at += entry.bytes();
        Some((start, entry))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(blobs: &[&[u8]]) -> (Vec<u8>, Vec<u8>, Vec<(Digest, u64)>) {
        let (mut segment, mut index, mut placed) = (Vec::new(), Vec::new(), Vec::new());
        for data in blobs {
            let digest = DigestFunction::Sha256.digest_of(data);
            let data_at = data_offset(&digest, segment.len() as u64);
            encode(&digest, data, &mut segment);
            encode_entry(&digest, data_at, &mut index);
            placed.push((digest, data_at));
        }
        (segment, index, placed)
    }

    /// The entries that decode_index believes, and where their records end.
    fn listed(index: &[u8], segment_len: u64) -> (Vec<(Digest, u64)>, u64) {
        let (bytes, end) = decode_index(index, segment_len);
        let entries = entries(&index[..bytes], 0).map(|(_, e)| (e.digest(), e.data_at));
        (entries.collect(), end)
    }

    #[test]
    fn no_entry_is_shorter_than_min_entry() {
        let shortest = DigestFunction::ALL.iter().map(|f| f.hash_len()).min();
        assert_eq!(shortest.map(|len| ENTRY_HEADER + len), Some(MIN_ENTRY));
    }

    #[test]
    fn the_index_lists_what_decoding_the_segment_finds() {
        let (segment, index, placed) = records(&[b"one", b"", b"three three"]);
        let len = segment.len() as u64;
        assert_eq!(decode(&segment, 0), (placed.clone(), len));
        assert_eq!(listed(&index, len), (placed.clone(), len));
        // Decoding from the middle gives offsets in the segment.
        let second = placed[1].1 - data_offset(&placed[1].0, 0);
        assert_eq!(
            decode(&segment[second as usize..], second),
            (placed[1..].to_vec(), len)
        );
    }

    #[test]
    fn an_index_is_used_only_as_far_as_it_agrees_with_its_segment() {
        let (segment, index, placed) = records(&[b"one", b"two", b"three"]);
        let len = segment.len() as u64;
        let entry = index.len() / 3;
        let end_of = |i: usize| placed[i].1 + placed[i].0.size();
        // A torn entry, zeros (pages never written), an entry past a segment cut short.
        assert_eq!(
            listed(&index[..index.len() - 1], len),
            (placed[..2].to_vec(), end_of(1))
        );
        let mut zeros = index[..entry].to_vec();
        zeros.extend_from_slice(&[0; 100]);
        assert_eq!(listed(&zeros, len), (placed[..1].to_vec(), end_of(0)));
        assert_eq!(listed(&index, len - 1), (placed[..2].to_vec(), end_of(1)));
        // An entry that goes back into the record before it.
        let mut back = index[..2 * entry].to_vec();
        back.extend_from_slice(&index[..entry]);
        assert_eq!(listed(&back, len), (placed[..2].to_vec(), end_of(1)));
        assert_eq!(listed(&[], len), (vec![], 0));
    }
}
