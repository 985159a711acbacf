//! The bounds the queue is compared against, measured in the same run: memory copy
//! bandwidth, raw disk write bandwidth, and how fast the queue's own segment store creates
//! segment files.

use crate::report::{Stopwatch, Timing};
use anyhow::Context as _;
use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use strait_queue::ids::SegmentId;
use strait_queue::mmap::MmapDisk;
use strait_queue::store::Disk;

/// Size of the memcpy destination ring: larger than the CPU caches, so that the copies
/// stream to DRAM as appends into fresh segment pages do.
pub const MEMCPY_RING_BYTES: usize = 256 << 20;
/// Size of each `write` of the disk write bound.
pub const DISK_CHUNK_BYTES: usize = 1 << 20;

/// A destination ring for [`memcpy`], allocated and faulted in once.
#[derive(Debug)]
pub struct Ring(Vec<u8>);

impl Ring {
    /// Allocates [`MEMCPY_RING_BYTES`] and writes every page, so no page fault is timed.
    pub fn new() -> Ring {
        Ring(vec![1u8; MEMCPY_RING_BYTES])
    }
}

/// Copies `total` bytes (at least twice the ring, so that the copies reach DRAM however
/// small `total` is) in chunks of `chunk` bytes from one cache-resident source (the event
/// being appended) to consecutive places in the ring, wrapping around. Returns the number
/// of chunks copied and the timing.
pub fn memcpy(ring: &mut Ring, chunk: usize, total: u64) -> (u64, Timing) {
    let ring = &mut ring.0;
    let chunk = chunk.clamp(1, ring.len());
    let source: Vec<u8> = (0..chunk).map(|i| (i * 31 + 7) as u8).collect();
    let total = total.max(2 * ring.len() as u64);
    let count = (total / chunk as u64).max(1);
    let clock = Stopwatch::start();
    let mut at = 0;
    for _ in 0..count {
        if at + chunk > ring.len() {
            at = 0;
        }
        ring[at..at + chunk].copy_from_slice(black_box(&source));
        at += chunk;
    }
    black_box(&mut *ring);
    (count, clock.stop())
}

/// Writes `total` bytes with `write_all` in [`DISK_CHUNK_BYTES`] chunks into a file
/// preallocated with `fallocate` in `dir`, then `fdatasync`s it. Returns the number of
/// chunks written and the timing (of the writes and the sync; not of the preallocation).
/// The file is deleted afterwards.
pub fn disk_write(dir: &Path, total: u64) -> anyhow::Result<(u64, Timing)> {
    let path = dir.join("disk-write-bound.dat");
    let what = || format!("disk write bound on {}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(what)?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, total)
        .with_context(what)?;
    file.sync_all().with_context(what)?;
    let chunk: Vec<u8> = (0..DISK_CHUNK_BYTES).map(|i| (i * 13 + 5) as u8).collect();
    let clock = Stopwatch::start();
    let mut left = total;
    let mut chunks = 0u64;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).with_context(what)?;
        left -= n as u64;
        chunks += 1;
    }
    file.sync_data().with_context(what)?;
    let timing = clock.stop();
    drop(file);
    fs::remove_file(&path).with_context(what)?;
    Ok((chunks, timing))
}

/// Creates `count` segment files of `bytes` bytes, one after another, with the queue's own
/// [`MmapDisk`] (create, preallocate, map, prefault, sync the directory), as the queue's
/// helper thread does ahead of appends; returns the timing. The segments are deleted
/// afterwards, untimed, with the directory `dir` that held them.
pub fn segment_create(dir: &Path, bytes: u32, count: u64) -> anyhow::Result<Timing> {
    let disk = MmapDisk::open(dir)?;
    let clock = Stopwatch::start();
    let mut created = Vec::new();
    for id in (1..=count).map(SegmentId) {
        created.push((id, disk.create(id, bytes)?));
    }
    let timing = clock.stop();
    for (id, buf) in created {
        disk.delete(id, buf)?;
    }
    drop(disk);
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(timing)
}
