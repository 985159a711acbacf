//! The bounds the queue is compared against, measured in the same run: memory copy
//! bandwidth, raw disk write and (cold) read bandwidth, and how fast the queue's own segment
//! store creates segment files.

use crate::report::{Stopwatch, Timing};
use anyhow::Context as _;
use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use strait_queue::ids::SegmentId;
use strait_queue::mmap::MmapDisk;
use strait_queue::store::Disk;

/// Size of the memcpy destination ring: larger than the CPU caches, so that the copies
/// stream to DRAM as appends into fresh segment pages do.
pub const MEMCPY_RING_BYTES: usize = 256 << 20;
/// Size of each `write` of the disk write bound and of each `read` of the disk read bound.
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
    let clock = Stopwatch::start();
    let chunks = write_chunks(&mut file, total).with_context(what)?;
    file.sync_data().with_context(what)?;
    let timing = clock.stop();
    drop(file);
    fs::remove_file(&path).with_context(what)?;
    Ok((chunks, timing))
}

/// Writes `total` bytes of a fixed non-zero pattern in [`DISK_CHUNK_BYTES`] chunks; returns
/// the number of chunks.
fn write_chunks(file: &mut fs::File, total: u64) -> std::io::Result<u64> {
    let chunk: Vec<u8> = (0..DISK_CHUNK_BYTES).map(|i| (i * 13 + 5) as u8).collect();
    let mut left = total;
    let mut chunks = 0u64;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
        chunks += 1;
    }
    Ok(chunks)
}

/// Writes back every dirty page of the system, then drops the page cache (`echo 3 >
/// /proc/sys/vm/drop_caches`, root only), so that the next read of any file comes from the
/// disk.
pub fn drop_page_cache() -> std::io::Result<()> {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3")
}

/// Creates the file [`disk_read`] reads: `total` bytes in `dir`, written in
/// [`DISK_CHUNK_BYTES`] chunks and `fdatasync`ed. Untimed.
pub fn disk_read_file(dir: &Path, total: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join("disk-read-bound.dat");
    let what = || format!("disk read bound on {}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(what)?;
    write_chunks(&mut file, total).with_context(what)?;
    file.sync_data().with_context(what)?;
    Ok(path)
}

/// Reads the file at `path` from start to end with plain `read` calls of
/// [`DISK_CHUNK_BYTES`] into one buffer, on this thread; call it with the page cache dropped.
/// Returns the bytes read and the timing (of the open and the reads). The file is deleted
/// afterwards.
pub fn disk_read(path: &Path) -> anyhow::Result<(u64, Timing)> {
    let what = || format!("disk read bound on {}", path.display());
    let mut buf = vec![0u8; DISK_CHUNK_BYTES];
    let clock = Stopwatch::start();
    let mut file = fs::File::open(path).with_context(what)?;
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(what)?;
        if n == 0 {
            break;
        }
        black_box(&buf[..n]);
        bytes += n as u64;
    }
    let timing = clock.stop();
    drop(file);
    fs::remove_file(path).with_context(what)?;
    Ok((bytes, timing))
}

/// Creates `count` segment files of `bytes` bytes, one after another, with the queue's own
/// [`MmapDisk::create`] (whatever it does: in the current queue, write zeros, map and touch
/// every page), as the queue's helper thread does ahead of appends; returns the timing. The segments are deleted
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
