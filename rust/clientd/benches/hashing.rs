//! Hashing throughput of a large blob: SHA-256 (sequential by construction) against SHA256TREE
//! on one thread and on two (its blocks are independent subtrees), and BLAKE3 for reference;
//! from memory, and from a file in the page cache read with pread, as BatchStat hashes a file a
//! local action wrote. The cases alternate within each round, in rotated order, and the ratios
//! are taken within a round (these machines are shared and noisy).
//!
//! Run: `cargo bench -p clientd --bench hashing` (BENCH_HASH_MIB: the blob's size, 1024;
//! BENCH_ROUNDS: 4; BENCH_DIR: where the file goes).

#[path = "../tests/common/mod.rs"]
mod common;

use clientd_digest::{DigestFunction, ReadRanges};
use common::{bench_dir, env_number, pseudo_random};
use std::convert::Infallible;
use std::os::unix::fs::FileExt;
use std::time::Instant;

type Read<'a> = Box<ReadRanges<'a, Infallible>>;

/// Feeds [offset, offset + len) of `data` in 1 MiB pieces.
fn memory(data: &[u8]) -> Read<'_> {
    Box::new(move |offset, len, sink| {
        let range = &data[offset as usize..(offset + len) as usize];
        range.chunks(1 << 20).for_each(&mut *sink);
        Ok(())
    })
}

/// Reads [offset, offset + len) of `file` with pread in 1 MiB pieces.
fn file(file: &std::fs::File) -> Read<'_> {
    Box::new(move |mut offset, len, sink| {
        let end = offset + len;
        let mut buffer = vec![0u8; 1 << 20];
        while offset < end {
            let n = ((end - offset) as usize).min(buffer.len());
            file.read_exact_at(&mut buffer[..n], offset).unwrap();
            sink(&buffer[..n]);
            offset += n as u64;
        }
        Ok(())
    })
}

const CASES: [(&str, DigestFunction, usize); 4] = [
    ("sha256, 1 thread", DigestFunction::Sha256, 1),
    ("sha256tree, 1 thread", DigestFunction::Sha256Tree, 1),
    ("sha256tree, 2 threads", DigestFunction::Sha256Tree, 2),
    ("blake3, 1 thread", DigestFunction::Blake3, 1),
];

fn main() {
    let mib = env_number("BENCH_HASH_MIB", 1024);
    let rounds = env_number("BENCH_ROUNDS", 4);
    let size = (mib as u64) << 20;
    let data = pseudo_random(1, size as usize);
    let dir = bench_dir();
    let path = dir.path().join("blob");
    std::fs::write(&path, &data).unwrap();
    let on_disk = std::fs::File::open(&path).unwrap();
    println!("hashing {mib} MiB, {rounds} rounds; the file is in the page cache (just written)");
    for (source, read) in [("memory", memory(&data)), ("file", file(&on_disk))] {
        // seconds[case][round]
        let mut seconds = vec![vec![]; CASES.len()];
        for round in 0..rounds {
            for k in 0..CASES.len() {
                let case = (k + round) % CASES.len();
                let (_, function, threads) = CASES[case];
                let start = Instant::now();
                let digest = function.digest_of_ranges(size, threads, &read).unwrap();
                seconds[case].push(start.elapsed().as_secs_f64());
                std::hint::black_box(digest);
            }
        }
        println!("\n{source}:");
        for (case, (name, _, _)) in CASES.iter().enumerate() {
            let mut gbps: Vec<f64> = seconds[case]
                .iter()
                .map(|s| size as f64 / s / 1e9)
                .collect();
            gbps.sort_by(f64::total_cmp);
            // Per-round ratio of SHA-256's time to this case's: > 1 is faster than SHA-256.
            let mut ratios: Vec<f64> = (0..rounds)
                .map(|r| seconds[0][r] / seconds[case][r])
                .collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "  {name:<22} median {:.2} GB/s [{:.2}..{:.2}]   vs sha256: {:.2}x [{:.2}..{:.2}]",
                gbps[gbps.len() / 2],
                gbps[0],
                gbps[gbps.len() - 1],
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1],
            );
        }
    }
}
