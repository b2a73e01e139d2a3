//! Splitting many blobs into a cluster's batch calls, and matching its answers to them: shared
//! by BatchUpdateBlobs (uploads) and BatchReadBlobs (reads).

use clientd_digest::{Digest, DigestFunction};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::StoreResult;
use futures::{stream, StreamExt};
use std::collections::HashMap;
use std::future::Future;

/// Calls of one kind (batches, singles, FindMissingBlobs chunks) in flight at once for one
/// request.
pub(crate) const CALLS_IN_FLIGHT: usize = 4;

/// Bytes a batch entry adds besides its data (digest, status, framing), so batches stay under
/// the cluster's limit.
pub(crate) const ENTRY_OVERHEAD: u64 = 128;

/// Whether a blob of `digest`'s size fits in a batch call of at most `limit` bytes.
pub(crate) fn fits(digest: &Digest, limit: u64) -> bool {
    digest.size() + ENTRY_OVERHEAD <= limit
}

/// The blobs (by position) in batch calls of at most `limit` bytes each, packed greedily in
/// order (a call has one digest function), and those too large for any batch, which go by
/// ByteStream.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Packing {
    pub(crate) batches: Vec<(DigestFunction, Vec<usize>)>,
    pub(crate) singles: Vec<usize>,
}

pub(crate) fn pack<'a>(digests: impl IntoIterator<Item = &'a Digest>, limit: u64) -> Packing {
    let mut packing = Packing::default();
    let mut current: Option<(DigestFunction, Vec<usize>, u64)> = None;
    for (i, digest) in digests.into_iter().enumerate() {
        if !fits(digest, limit) {
            packing.singles.push(i);
            continue;
        }
        let cost = digest.size() + ENTRY_OVERHEAD;
        match &mut current {
            Some((f, members, total)) if *f == digest.function() && *total + cost <= limit => {
                members.push(i);
                *total += cost;
            }
            _ => {
                if let Some((f, members, _)) = current.take() {
                    packing.batches.push((f, members));
                }
                current = Some((digest.function(), vec![i], cost));
            }
        }
    }
    if let Some((f, members, _)) = current {
        packing.batches.push((f, members));
    }
    packing
}

impl Packing {
    /// Runs `batch` on each batch's blobs (it answers one result per blob, in order) and
    /// `single` on each blob too large, a few calls of each kind at a time; one result per blob,
    /// in order, for `len` blobs.
    pub(crate) async fn run<T, B, BatchCall, S, SingleCall>(
        self,
        len: usize,
        batch: B,
        single: S,
    ) -> Vec<StoreResult<T>>
    where
        B: Fn(DigestFunction, Vec<usize>) -> BatchCall,
        BatchCall: Future<Output = Vec<StoreResult<T>>>,
        S: Fn(usize) -> SingleCall,
        SingleCall: Future<Output = StoreResult<T>>,
    {
        let batched = stream::iter(self.batches)
            .map(|(function, members)| {
                let call = batch(function, members.clone());
                async move { members.into_iter().zip(call.await).collect::<Vec<_>>() }
            })
            .buffer_unordered(CALLS_IN_FLIGHT)
            .collect::<Vec<_>>();
        let singles = stream::iter(self.singles)
            .map(|i| {
                let call = single(i);
                async move { vec![(i, call.await)] }
            })
            .buffer_unordered(CALLS_IN_FLIGHT)
            .collect::<Vec<_>>();
        let (batched, singles) = futures::join!(batched, singles);
        let mut results: Vec<Option<StoreResult<T>>> = (0..len).map(|_| None).collect();
        for (i, result) in batched.into_iter().chain(singles).flatten() {
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every blob has a call"))
            .collect()
    }
}

/// Which of a batch call's blobs each response entry answers: those with its digest, or the one
/// at its position when the cluster leaves the digest empty (Bazel's remote worker does).
pub(crate) struct Answers {
    by_digest: HashMap<(String, i64), Vec<usize>>,
    len: usize,
}

impl Answers {
    pub(crate) fn new<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Self {
        let mut by_digest: HashMap<(String, i64), Vec<usize>> = HashMap::new();
        let mut len = 0;
        for (i, digest) in digests.into_iter().enumerate() {
            by_digest
                .entry((digest.hash_hex(), digest.size() as i64))
                .or_default()
                .push(i);
            len = i + 1;
        }
        Answers { by_digest, len }
    }

    /// The blobs the response entry at `position`, naming `digest`, answers.
    pub(crate) fn slots(&self, position: usize, digest: Option<&re::Digest>) -> Vec<usize> {
        match digest {
            Some(d) if !d.hash.is_empty() => self
                .by_digest
                .get(&(d.hash.to_ascii_lowercase(), d.size_bytes))
                .cloned()
                .unwrap_or_default(),
            _ if position < self.len => vec![position],
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(function: DigestFunction, size: usize) -> Digest {
        function.digest_of(&vec![b'x'; size])
    }

    #[test]
    fn blobs_are_packed_in_order_under_the_limit_and_by_function() {
        let sha = DigestFunction::Sha256;
        let limit = 1000;
        let digests = [
            blob(sha, 300),                      // 428
            blob(sha, 400),                      // 528: 956 with the first
            blob(sha, 100),                      // 228: over, a new batch
            blob(sha, 2000),                     // never fits
            blob(DigestFunction::Sha256Tree, 1), // another function, another batch
            blob(sha, 0),
        ];
        let packing = pack(&digests, limit);
        assert_eq!(
            packing,
            Packing {
                batches: vec![
                    (sha, vec![0, 1]),
                    (sha, vec![2]),
                    (DigestFunction::Sha256Tree, vec![4]),
                    (sha, vec![5]),
                ],
                singles: vec![3],
            }
        );
        assert!(fits(&digests[1], limit) && !fits(&digests[3], limit));
    }

    #[tokio::test]
    async fn run_puts_each_result_in_its_blobs_place() {
        let packing = Packing {
            batches: vec![
                (DigestFunction::Sha256, vec![0, 2]),
                (DigestFunction::Sha256, vec![3]),
            ],
            singles: vec![1],
        };
        let results = packing
            .run(
                4,
                |_, members| async move { members.into_iter().map(|i| Ok(i * 10)).collect() },
                |i| async move { Ok(i * 100) },
            )
            .await;
        let results: Vec<usize> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(results, vec![0, 100, 20, 30]);
    }

    #[test]
    fn answers_are_matched_by_digest_or_else_by_position() {
        let sha = DigestFunction::Sha256;
        let (a, b) = (blob(sha, 1), blob(sha, 2));
        let answers = Answers::new(&[a, b, a]);
        assert_eq!(answers.slots(0, Some(&a.to_proto())), vec![0, 2]);
        let mut upper = b.to_proto();
        upper.hash = upper.hash.to_ascii_uppercase();
        assert_eq!(answers.slots(0, Some(&upper)), vec![1]);
        assert_eq!(answers.slots(1, None), vec![1]);
        assert_eq!(answers.slots(1, Some(&re::Digest::default())), vec![1]);
        assert_eq!(answers.slots(3, None), Vec::<usize>::new());
        let other = blob(sha, 3);
        assert_eq!(
            answers.slots(0, Some(&other.to_proto())),
            Vec::<usize>::new()
        );
    }
}
