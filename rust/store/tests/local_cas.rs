//! The local CAS under concurrency: many writers and readers of overlapping digests, with
//! eviction running, never expose a partial or wrong blob.

use bytes::Bytes;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_store::{BlobStore, DiskLruOptions, LocalCas, ManualClock, StoreError, SystemClock};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Options for a store of `max_bytes` that does not sync (tests need no power-loss safety).
fn unsynced(max_bytes: u64) -> DiskLruOptions {
    DiskLruOptions {
        max_bytes,
        sync_writes: false,
    }
}

/// The bytes a read of the blob streams back.
async fn read(cas: &LocalCas, digest: &Digest, offset: u64, limit: Option<u64>) -> Vec<u8> {
    let mut stream = cas
        .read(&InstanceName::default(), digest, offset, limit)
        .await
        .unwrap();
    let mut read = Vec::new();
    while let Some(chunk) = stream.next().await {
        read.extend_from_slice(&chunk.unwrap());
    }
    read
}

fn blob(i: u64) -> Vec<u8> {
    let len = 1000 + (i as usize * 7919) % 200_000;
    (0..len).map(|j| (i as usize * 31 + j * 17) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_with_eviction() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about two fifths of the blobs, so eviction runs all the time, and for the 16
    // workers' largest writes (201 KB each) all in progress at once: writes in progress cannot be
    // evicted, and one that does not fit is refused (RESOURCE_EXHAUSTED), which a loaded machine
    // made happen with a quarter.
    const BOUND: u64 = 4_000_000;
    let options = unsynced(BOUND);
    let cas = Arc::new(LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap());
    let digests: Vec<(Digest, Vec<u8>)> = (0..100)
        .map(|i| (DigestFunction::Sha256.digest_of(&blob(i)), blob(i)))
        .collect();
    let digests = Arc::new(digests);
    let mut tasks = Vec::new();
    for worker in 0..16usize {
        let cas = cas.clone();
        let digests = digests.clone();
        tasks.push(tokio::spawn(async move {
            let mut reads = 0;
            for round in 0..200usize {
                let (digest, data) = &digests[(worker * 7 + round * 13) % digests.len()];
                if (worker + round) % 3 == 0 {
                    // Streamed write in uneven chunks.
                    let mut sink = cas
                        .begin_write(&InstanceName::default(), digest)
                        .await
                        .unwrap();
                    for piece in data.chunks(4096 + worker) {
                        sink.write(Bytes::copy_from_slice(piece)).await.unwrap();
                    }
                    sink.commit().await.unwrap();
                } else if round % 5 == 0 {
                    cas.write_bytes(&InstanceName::default(), digest, Bytes::from(data.clone()))
                        .await
                        .unwrap();
                } else {
                    match cas.read(&InstanceName::default(), digest, 0, None).await {
                        Ok(mut stream) => {
                            let mut got = Vec::new();
                            while let Some(chunk) = stream.next().await {
                                got.extend_from_slice(&chunk.unwrap());
                            }
                            assert_eq!(&got, data, "read returned the wrong bytes for {digest}");
                            reads += 1;
                        }
                        Err(StoreError::NotFound(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            reads
        }));
    }
    let mut reads = 0;
    for task in tasks {
        reads += task.await.unwrap();
    }
    assert!(reads > 0);
    let (_, bytes) = cas.usage();
    assert!(bytes <= BOUND, "bound exceeded: {bytes}");
    // Every blob the index lists is on disk, whole.
    let all: Vec<Digest> = digests.iter().map(|(d, _)| *d).collect();
    let missing = cas
        .find_missing(&InstanceName::default(), &all)
        .await
        .unwrap();
    for (digest, data) in digests.iter().filter(|(d, _)| !missing.contains(d)) {
        assert_eq!(
            &cas.read_bytes(&InstanceName::default(), digest)
                .await
                .unwrap()[..],
            &data[..]
        );
    }
}

#[tokio::test]
async fn offsets_limits_and_the_empty_blob() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskLruOptions {
        max_bytes: 1 << 30,
        sync_writes: true,
    };
    let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let data = blob(1);
    let digest = DigestFunction::Sha256.digest_of(&data);
    cas.write_bytes(&InstanceName::default(), &digest, Bytes::from(data.clone()))
        .await
        .unwrap();
    let mut stream = cas
        .read(&InstanceName::default(), &digest, 10, Some(5))
        .await
        .unwrap();
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], &data[10..15]);
    assert!(stream.next().await.is_none());
    let past = cas
        .read(
            &InstanceName::default(),
            &digest,
            data.len() as u64 + 1,
            None,
        )
        .await;
    assert!(matches!(past, Err(StoreError::OutOfRange(_))));
    let empty = Digest::empty(DigestFunction::Sha256);
    assert!(cas
        .find_missing(&InstanceName::default(), &[empty])
        .await
        .unwrap()
        .is_empty());
    assert!(cas
        .read_bytes(&InstanceName::default(), &empty)
        .await
        .unwrap()
        .is_empty());
    let wrong = DigestFunction::Sha256.digest_of(b"expected");
    let err = cas
        .write_bytes(
            &InstanceName::default(),
            &wrong,
            Bytes::from_static(b"actual!!"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
}

/// A blob larger than the writeback window and the read prefetch distance, uploaded in chunks
/// and read back from an offset; a sink whose bytes do not match its digest stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_in_chunks_and_read_from_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskLruOptions {
        max_bytes: 1 << 30,
        sync_writes: true,
    };
    let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let digest = DigestFunction::Sha256.digest_of(&data);
    let upload = |digest: Digest| {
        let cas = &cas;
        let data = &data;
        async move {
            let mut sink = cas.begin_write(&InstanceName::default(), &digest).await?;
            for chunk in data.chunks(1 << 20) {
                sink.write(Bytes::copy_from_slice(chunk)).await?;
            }
            sink.commit().await
        }
    };
    upload(digest).await.unwrap();
    let (offset, limit) = ((1 << 20) + 5, 18 << 20);
    let read = read(&cas, &digest, offset, Some(limit)).await;
    assert!(read == data[offset as usize..(offset + limit) as usize]);

    let mut wrong = data.clone();
    wrong[0] ^= 1;
    let wrong = DigestFunction::Sha256.digest_of(&wrong);
    let err = upload(wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    assert_eq!(
        cas.find_missing(&InstanceName::default(), &[wrong])
            .await
            .unwrap(),
        vec![wrong]
    );
}

/// Uploads as Bazel sends them, in WriteRequests of 16 KiB, at the sizes where the way a blob is
/// stored changes (packed, kept in memory until commit, streamed in batches of 1 MiB): each one
/// reads back whole; one wrong byte, or one byte too many, is refused; and neither a refused nor
/// an abandoned upload leaves a temporary file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_16_kib_requests_at_every_size_the_layout_turns_on() {
    const KIB: usize = 1 << 10;
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path(), unsynced(1 << 30), Arc::new(SystemClock)).unwrap();
    let temp_files = || std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    let sizes = [
        0,
        100,
        16 * KIB,
        16 * KIB + 1,
        1024 * KIB - 1,
        1024 * KIB,
        1024 * KIB + 1,
        3 * 1024 * KIB + 5,
    ];
    for size in sizes {
        let data: Vec<u8> = (0..size).map(|i| (i ^ (i >> 9) ^ size) as u8).collect();
        let upload = |digest: Digest, data: Vec<u8>| {
            let cas = &cas;
            async move {
                let mut sink = cas.begin_write(&InstanceName::default(), &digest).await?;
                for chunk in data.chunks(16 * KIB) {
                    sink.write(Bytes::copy_from_slice(chunk)).await?;
                }
                sink.commit().await
            }
        };
        let digest = DigestFunction::Sha256.digest_of(&data);
        upload(digest, data.clone()).await.unwrap();
        let read = read(&cas, &digest, 0, None).await;
        assert!(read == data, "{size} bytes read back differ");
        if size == 0 {
            continue;
        }

        let mut wrong = data.clone();
        wrong[size / 2] ^= 1;
        let wrong_digest = DigestFunction::Sha256.digest_of(&wrong);
        let err = upload(wrong_digest, data.clone()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{size}: {err:?}"
        );
        assert_eq!(
            cas.find_missing(&InstanceName::default(), &[wrong_digest])
                .await
                .unwrap(),
            vec![wrong_digest]
        );

        let mut longer = data.clone();
        longer.push(0);
        let err = upload(digest, longer).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{size}: {err:?}"
        );

        let mut abandoned = cas
            .begin_write(&InstanceName::default(), &wrong_digest)
            .await
            .unwrap();
        abandoned
            .write(Bytes::copy_from_slice(&data[..size / 2]))
            .await
            .unwrap();
        assert_eq!(abandoned.committed(), (size / 2) as u64);
        drop(abandoned);
        // The writer thread of a streamed upload lets its file go once it sees the queue closed:
        // soon, though on a loaded machine (the other tests of this file run beside this one)
        // that thread can wait for a CPU for more than a second.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while temp_files() != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(temp_files(), 0, "{size}: temporary files left");
    }
}

/// BatchUpdateBlobs' path: every blob gets its own outcome, in order, across group commits; a
/// blob whose bytes do not match its digest is refused and the rest are stored.
#[tokio::test]
async fn batch_write_stores_each_blob_with_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskLruOptions {
        max_bytes: 1 << 30,
        sync_writes: true,
    };
    let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let mut blobs: Vec<(Digest, Bytes)> = (0..300u64)
        .map(|i| {
            let data = i.to_le_bytes().repeat(1 + i as usize % 50);
            (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
        })
        .collect();
    // A wrong body, the empty blob and a blob sent twice in the same batch.
    let wrong = blobs[150].0;
    blobs[150].1 = Bytes::from_static(b"not these bytes");
    blobs[7] = (DigestFunction::Sha256.digest_of(b""), Bytes::new());
    blobs[299] = blobs[3].clone();
    let outcomes = cas
        .batch_write(&InstanceName::default(), blobs.clone())
        .await;
    assert_eq!(outcomes.len(), blobs.len());
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 150 {
            assert!(
                matches!(outcome, Err(StoreError::InvalidArgument(_))),
                "{outcome:?}"
            );
        } else {
            assert!(outcome.is_ok(), "blob {i}: {outcome:?}");
        }
    }
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        cas.find_missing(&InstanceName::default(), &digests)
            .await
            .unwrap(),
        vec![wrong]
    );
    for (digest, data) in blobs.iter().filter(|(d, _)| *d != wrong) {
        assert_eq!(
            &cas.read_bytes(&InstanceName::default(), digest)
                .await
                .unwrap(),
            data
        );
    }
}

/// BatchReadBlobs' path: one outcome per digest, in order, the empty blob included and a
/// missing blob NOT_FOUND without failing the others.
#[tokio::test]
async fn batch_read_returns_each_blob_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let options = unsynced(1 << 30);
    let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let blobs: Vec<(Digest, Bytes)> = (0..50u64)
        .map(|i| Bytes::from(blob(i)))
        .map(|data| (DigestFunction::Sha256.digest_of(&data), data))
        .collect();
    for (digest, data) in &blobs {
        cas.write_bytes(&InstanceName::default(), digest, data.clone())
            .await
            .unwrap();
    }
    let absent = DigestFunction::Sha256.digest_of(b"never written");
    let empty = DigestFunction::Sha256.digest_of(b"");
    let mut digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    digests.insert(10, absent);
    digests.push(empty);
    let read = cas
        .batch_read(&InstanceName::default(), digests.clone())
        .await;
    assert_eq!(read.len(), digests.len());
    assert!(
        matches!(read[10], Err(StoreError::NotFound(_))),
        "{:?}",
        read[10]
    );
    assert_eq!(read[digests.len() - 1].as_ref().unwrap().len(), 0);
    for (i, (_, data)) in blobs.iter().enumerate() {
        let at = if i < 10 { i } else { i + 1 };
        assert_eq!(read[at].as_ref().unwrap(), data, "blob {i}");
    }
}

/// SHA256TREE blobs are verified with their own function, streamed or whole, and kept apart from
/// SHA-256 blobs with the same hex.
#[tokio::test]
async fn sha256tree_blobs_are_verified_and_namespaced() {
    let dir = tempfile::tempdir().unwrap();
    let options = unsynced(1 << 30);
    let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    let tree = DigestFunction::Sha256Tree;
    for len in [0, 1024, 1025, 3 * 1024 + 7, 90_000] {
        let mut data = blob(1);
        data.resize(len, 7);
        let digest = tree.digest_of(&data);
        let mut sink = cas
            .begin_write(&InstanceName::default(), &digest)
            .await
            .unwrap();
        for piece in data.chunks(1000) {
            sink.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        sink.commit().await.unwrap();
        assert_eq!(
            cas.read_bytes(&InstanceName::default(), &digest)
                .await
                .unwrap(),
            data
        );
        // The SHA-256 hex of the same bytes, as a SHA256TREE digest, does not verify (beyond
        // one chunk the hashes differ).
        let plain = DigestFunction::Sha256.digest_of(&data);
        let wrong = Digest::parse(Some(tree), &plain.hash_hex(), plain.size()).unwrap();
        let written = cas
            .write_bytes(&InstanceName::default(), &wrong, Bytes::from(data.clone()))
            .await;
        if len > 1024 {
            assert!(
                matches!(written, Err(StoreError::InvalidArgument(_))),
                "{len}: {written:?}"
            );
        }
        if len > 0 {
            assert!(
                !cas.contains(&InstanceName::default(), &plain)
                    .await
                    .unwrap(),
                "{len}: not a SHA-256 blob"
            );
        }
    }
}

/// Bytes allocated on disk under `dir` (what `du` counts), files and directories alike.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// `cas.max_size_bytes` bounds the blocks the blobs really occupy, for small blobs (packed) and
/// larger ones (a file each, counted in whole 4 KiB blocks) alike.
#[tokio::test]
async fn the_bound_holds_on_the_disk_for_small_and_larger_blobs() {
    let dir = tempfile::tempdir().unwrap();
    const BOUND: u64 = 4 << 20;
    let options = unsynced(BOUND);
    let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
    for i in 0..3000u64 {
        // 100 B to 4 KiB (packed), and one in five 16 KiB + 1 B (a file each, five blocks).
        let len = match i % 5 {
            0 => (16 << 10) + 1,
            _ => 100 + (i as usize * 7919) % 4000,
        };
        let mut data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 17) as u8).collect();
        data[..8].copy_from_slice(&i.to_le_bytes());
        let digest = DigestFunction::Sha256.digest_of(&data);
        cas.write_bytes(&InstanceName::default(), &digest, Bytes::from(data))
            .await
            .unwrap();
        let (_, counted) = cas.usage();
        assert!(counted <= BOUND, "counted {counted} after {i}");
    }
    let on_disk = allocated(dir.path());
    assert!(on_disk <= BOUND, "{on_disk} bytes allocated");
    // Both parts are full: eviction ran in each, and little room is left unused.
    assert!(on_disk > BOUND / 2, "{on_disk} bytes allocated");
}

/// Right after a restart, while the packed blobs are being indexed, none is reported missing:
/// FindMissingBlobs, reads and empty reads at the end wait for the index instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_blobs_are_found_while_they_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let options = unsynced(1 << 30);
    let blobs: Vec<(Digest, Bytes)> = (0..20_000u64)
        .map(|i| Bytes::from(format!("small blob {i}")))
        .map(|data| (DigestFunction::Sha256.digest_of(&data), data))
        .collect();
    {
        let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
        for result in cas
            .batch_write(&InstanceName::default(), blobs.clone())
            .await
        {
            result.unwrap();
        }
    }
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    for (i, check) in ["find_missing", "read", "empty read at the end"]
        .iter()
        .enumerate()
    {
        let cas = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
        let (digest, data) = &blobs[blobs.len() - 1 - i];
        match i {
            0 => assert!(
                cas.find_missing(&InstanceName::default(), &digests)
                    .await
                    .unwrap()
                    .is_empty(),
                "{check}"
            ),
            1 => assert_eq!(
                &cas.read_bytes(&InstanceName::default(), digest)
                    .await
                    .unwrap(),
                data,
                "{check}"
            ),
            _ => {
                let mut end = cas
                    .read(&InstanceName::default(), digest, digest.size(), None)
                    .await
                    .unwrap();
                assert!(end.next().await.is_none(), "{check}");
            }
        }
    }
}

/// `count` distinct blobs of `len` bytes, from `seed` on.
fn blobs_of(seed: u64, count: u64, len: usize) -> Vec<(Digest, Bytes)> {
    (seed..seed + count)
        .map(|i| {
            let mut data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 17) as u8).collect();
            data[..8].copy_from_slice(&i.to_le_bytes());
            (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
        })
        .collect()
}

async fn store_all(cas: &LocalCas, blobs: &[(Digest, Bytes)]) {
    for batch in blobs.chunks(64) {
        for result in cas
            .batch_write(&InstanceName::default(), batch.to_vec())
            .await
        {
            result.unwrap();
        }
        let (_, counted) = cas.usage();
        assert!(counted <= 8 << 20, "counted {counted}");
    }
}

async fn present(cas: &LocalCas, blobs: &[(Digest, Bytes)]) -> usize {
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    digests.len()
        - cas
            .find_missing(&InstanceName::default(), &digests)
            .await
            .unwrap()
            .len()
}

/// One bound over both layouts: small blobs alone get (nearly) all of it, and when both hold
/// data, the layout whose least recently used data is older gives way.
#[tokio::test]
async fn both_layouts_share_the_bound_and_the_older_data_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    const BOUND: u64 = 8 << 20;
    let options = unsynced(BOUND);
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
    ));
    let cas = LocalCas::open(dir.path(), options, clock.clone()).unwrap();
    // Larger blobs (a file each) first: they fill what the packed blobs do not hold.
    let files = blobs_of(0, 100, 64 << 10);
    store_all(&cas, &files).await;
    assert!(present(&cas, &files).await >= 80);
    // An hour later, small blobs only, twice the bound: the files are older, so they go.
    clock.advance(Duration::from_secs(3600));
    let small = blobs_of(1000, 4096, 4 << 10);
    store_all(&cas, &small).await;
    assert!(
        present(&cas, &files).await <= 5,
        "the older files went first"
    );
    let kept = present(&cas, &small).await;
    // Before the bound was joint, small blobs got a quarter of it: about 500 of these.
    assert!(
        kept * (4 << 10) > (BOUND as usize) * 3 / 4,
        "{kept} small blobs kept"
    );
    assert_eq!(present(&cas, &small[small.len() - 256..]).await, 256);
    // An hour later, larger blobs again: now the packed blobs are older, and make room.
    clock.advance(Duration::from_secs(3600));
    let newer = blobs_of(9000, 64, 64 << 10);
    store_all(&cas, &newer).await;
    assert_eq!(present(&cas, &newer).await, 64);
    assert!(present(&cas, &small).await < kept);
    assert!(
        allocated(dir.path()) <= BOUND,
        "{} bytes allocated",
        allocated(dir.path())
    );
}

/// Four writers pack small blobs past the packed blobs' first budget (two segments) while the
/// files use none of theirs: the budget moves to the packed blobs as they need it, under the
/// packed writer's lock, so racing writers never make them evict (a check then a write let
/// another writer take the room in between, and a segment of acknowledged blobs went).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_past_the_packed_budget_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB in all: 8 MiB segments, the packed blobs start with 16 MiB.
    let cas =
        Arc::new(LocalCas::open(dir.path(), unsynced(64 << 20), Arc::new(SystemClock)).unwrap());
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let cas = cas.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for batch in 0..30u64 {
                    let blobs = blobs_of(w << 32 | batch << 8, 40, 9000);
                    for result in cas
                        .batch_write(&InstanceName::default(), blobs.clone())
                        .await
                    {
                        result.unwrap();
                    }
                    written.extend(blobs);
                }
                written
            })
        })
        .collect();
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert!(
        written.len() * 9000 > 32 << 20,
        "past the first budget twice over"
    );
    assert_eq!(present(&cas, &written).await, written.len());
}

/// After a restart the packed blobs' bound is what they hold, yet while the files leave budget
/// unused no segment is about to go: reading blobs from the oldest copies none of them to the
/// newest segment (each read used to, until the budget had moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_reads_copy_nothing_while_the_files_leave_budget_unused() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = blobs_of(0, 4000, 9000); // 36 MB: five 8 MiB segments
    {
        let cas = LocalCas::open(dir.path(), unsynced(64 << 20), Arc::new(SystemClock)).unwrap();
        for batch in blobs.chunks(100) {
            for result in cas
                .batch_write(&InstanceName::default(), batch.to_vec())
                .await
            {
                result.unwrap();
            }
        }
    }
    let cas = LocalCas::open(dir.path(), unsynced(64 << 20), Arc::new(SystemClock)).unwrap();
    assert_eq!(present(&cas, &blobs).await, blobs.len());
    let before = cas.usage();
    for (digest, data) in &blobs[..500] {
        assert!(read(&cas, digest, 0, None).await == data[..]);
    }
    assert_eq!(cas.usage(), before, "blobs copied by reads");
}

/// Bazel's HTTP cache client names blobs by hash alone: the store finds them whatever their
/// layout, also after a restart (its index and its files, not a memory of what it handed out).
#[tokio::test]
async fn blobs_are_found_by_hash_alone_in_both_layouts_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let small = blobs_of(1, 3, 100); // packed
    let large = blobs_of(10, 3, 64 << 10); // a file each
    let absent = blobs_of(20, 1, 100);
    let by_hash = |digest: &Digest| Digest::from_raw(digest.function(), digest.hash(), 0).unwrap();
    for restart in [false, true] {
        let cas = LocalCas::open(dir.path(), unsynced(64 << 20), Arc::new(SystemClock)).unwrap();
        if !restart {
            store_all(&cas, &small).await;
            store_all(&cas, &large).await;
        }
        for (digest, _) in small.iter().chain(&large) {
            let found = cas
                .digest_by_hash(&InstanceName::default(), &by_hash(digest))
                .await
                .unwrap();
            assert_eq!(found, Some(*digest), "restart: {restart}");
        }
        let found = cas
            .digest_by_hash(&InstanceName::default(), &by_hash(&absent[0].0))
            .await
            .unwrap();
        assert_eq!(found, None);
    }
}

#[tokio::test]
async fn make_local_answers_for_what_is_here_in_either_layout_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path(), unsynced(1 << 22), Arc::new(SystemClock)).unwrap();
    let small = Bytes::from_static(b"packed");
    let large = Bytes::from(blob(7));
    for data in [&small, &large] {
        let digest = DigestFunction::Sha256.digest_of(data);
        assert!(matches!(
            cas.make_local(&InstanceName::default(), &digest).await,
            Err(StoreError::NotFound(_))
        ));
        cas.write_bytes(&InstanceName::default(), &digest, data.clone())
            .await
            .unwrap();
        cas.make_local(&InstanceName::default(), &digest)
            .await
            .unwrap();
    }
    cas.make_local(
        &InstanceName::default(),
        &Digest::empty(DigestFunction::Sha256),
    )
    .await
    .unwrap();
}

/// open_local_now opens what open_local would, a packed blob and a file alike, once it can do so
/// without waiting (a packed blob is hashed at its first read, on a thread that may wait); absent
/// blobs of a file's size are answered too.
#[tokio::test]
async fn open_local_now_opens_what_open_local_would() {
    use clientd_store::LocalBlob;
    let dir = tempfile::tempdir().unwrap();
    let cas = LocalCas::open(dir.path(), unsynced(64 << 20), Arc::new(SystemClock)).unwrap();
    let (small, large) = (Bytes::from(blob(1)[..300].to_vec()), Bytes::from(blob(2)));
    let digests =
        [small.clone(), large.clone()].map(|data| DigestFunction::Sha256.digest_of(&data));
    for (digest, data) in digests.iter().zip([small.clone(), large.clone()]) {
        cas.write_bytes(&InstanceName::default(), digest, data)
            .await
            .unwrap();
    }
    let bytes_of = |blob: LocalBlob| match blob {
        LocalBlob::Bytes(data) => data.to_vec(),
        LocalBlob::File(file) => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut data).unwrap();
            data
        }
    };
    for (digest, data) in digests.iter().zip([small, large]) {
        let blocking = cas.open_local(digest).unwrap().unwrap();
        assert_eq!(bytes_of(blocking), data);
        let now = cas.open_local_now(digest).expect("no wait once read");
        assert_eq!(bytes_of(now.unwrap()), data);
    }
    let absent = DigestFunction::Sha256.digest_of(&blob(3));
    assert!(matches!(cas.open_local_now(&absent), Some(None)));
}
