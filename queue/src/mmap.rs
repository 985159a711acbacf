//! [`MmapDisk`]: segments as preallocated, memory-mapped files. The only `unsafe` code in
//! Strait lives here.
//!
//! # The mapping's contract
//! A segment file is mapped shared and read-write for as long as its queue holds it. Mapped
//! memory is only sound while nobody truncates or rewrites the file underneath, so:
//! - a data directory is locked (`LOCK`, an exclusive `flock`) against a second Strait
//!   process for as long as the [`MmapDisk`] lives;
//! - Strait never shrinks or truncates a segment file: every block is written (with zeros) at
//!   creation, so a write through the mapping cannot hit a hole on a full disk, and files are
//!   only ever deleted whole, after being unmapped;
//! - an operator or another program that truncates a segment file while Strait runs makes
//!   the process die with SIGBUS. The lock cannot prevent that; nothing in Rust can recover.
//!
//! Every method here blocks: the shell calls them on a helper thread, never on a shard.

#![allow(unsafe_code)]

use crate::ids::SegmentId;
use crate::store::{Disk, SegmentBuf, StoreError, StoreOp};
use memmap2::{Advice, MmapMut, MmapOptions};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An open segment file.
#[derive(Debug)]
struct SegmentFile {
    file: File,
    /// The file's blocks and size are durable: writes into it change no metadata, so writing
    /// its pages back and flushing the disk's cache makes them durable. Only segments made by
    /// `create` with `sync_at_create`: a segment found at recovery may have come back with
    /// holes (a crash before its zeros were written back), where a write allocates a block,
    /// so it is always fdatasynced whole.
    layout_durable: bool,
}

impl SegmentFile {
    fn new(file: File, layout_durable: bool) -> SegmentFile {
        SegmentFile {
            file,
            layout_durable,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum WriteBack {
    /// Start writing back every dirty page, without waiting.
    Start,
    /// Write back every dirty page and wait until the disk has them all.
    Wait,
}

/// Writes back the dirty pages of `file` that recovery would read: its header page, and every
/// page from the one holding the first unacknowledged record on (the ack slot's offset, read
/// from the page cache; [`segment::ack_offset_of`]). The pages between hold acknowledged
/// records only: they stay dirty until the segment is deleted, which drops them unwritten,
/// and so never cost a write-protection of the shard's mapping or a disk write. In the disk's
/// cache: durable only after a flush, which the caller makes.
fn write_back_unacknowledged(file: &File, how: WriteBack) -> io::Result<()> {
    let mut header = [0u8; crate::segment::SEGMENT_HEADER_BYTES];
    let from = match file.read_exact_at(&mut header, 0) {
        Ok(()) => crate::segment::ack_offset_of(&header) / PAGE_BYTES * PAGE_BYTES,
        Err(_) => 0,
    };
    if from <= PAGE_BYTES {
        return write_back(file, 0, 0, how);
    }
    write_back(file, 0, PAGE_BYTES as u64, how)?;
    write_back(file, from as u64, 0, how)
}

/// Writes back dirty pages of `file` in `offset..offset + bytes` (to its end when `bytes` is
/// 0), in the disk's cache: durable only after a flush, which the caller makes.
fn write_back(file: &File, offset: u64, bytes: u64, how: WriteBack) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = match how {
        WriteBack::Start => libc::SYNC_FILE_RANGE_WRITE,
        WriteBack::Wait => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    // SAFETY: sync_file_range takes a file descriptor and integers and touches no memory of
    // ours; the descriptor is open for the whole call because `file` is borrowed. Length 0
    // means to the end of the file.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, bytes as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Name of the lock file in a data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Sub-directory that receives damaged bytes found at recovery.
pub const QUARANTINE_DIR: &str = "quarantine";
const PAGE_BYTES: usize = 4096;
/// Zeros written into a new segment file, a chunk at a time, or a page at a time for a
/// segment made durable at creation (see `MmapDisk::create`).
static ZEROS: [u8; 256 << 10] = [0; 256 << 10];
/// Most quarantine files kept under one name (`name`, `name.1`, …).
pub const QUARANTINE_SUFFIXES_MAX: u32 = 10_000;

/// A mapped segment file.
#[derive(Debug)]
struct Mapped(MmapMut);

impl SegmentBuf for Mapped {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// A locked data directory of segment files. See the module documentation.
#[derive(Debug)]
pub struct MmapDisk {
    dir: PathBuf,
    /// The lock file. Also what a group commit fdatasyncs to flush the disk's cache: it is
    /// never written, so its fdatasync writes nothing back and only flushes.
    lock: File,
    files: Mutex<HashMap<SegmentId, Arc<SegmentFile>>>,
    /// See [`MmapDisk::sync_at_create`].
    sync_at_create: bool,
}

impl MmapDisk {
    /// Opens (creating it if needed) and locks a data directory.
    pub fn open(dir: &Path) -> Result<MmapDisk, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::new(StoreOp::Lock, dir.display(), &e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::new(StoreOp::Lock, lock_path.display(), &e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError {
                    op: StoreOp::Lock,
                    path: lock_path.display().to_string(),
                    kind: io::ErrorKind::ResourceBusy,
                    message: "the data directory is in use by another Strait process".into(),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::new(StoreOp::Lock, lock_path.display(), &e));
            }
        }
        Ok(MmapDisk {
            dir: dir.to_path_buf(),
            lock,
            files: Mutex::new(HashMap::new()),
            sync_at_create: false,
        })
    }

    /// Makes `create` fdatasync each new segment before handing it over, so that group
    /// commits of it need one device flush in all (`sync_each`). For persistent queues under
    /// `every-batch`, which commit many times a second; others would only pay for writing the
    /// zeros out sooner.
    pub fn sync_at_create(mut self, yes: bool) -> MmapDisk {
        self.sync_at_create = yes;
        self
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: SegmentId) -> PathBuf {
        self.dir.join(format!("{:016x}.seg", id.0))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentId, Arc<SegmentFile>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn map(&self, file: &File, path: &Path, op: StoreOp) -> Result<MmapMut, StoreError> {
        // SAFETY: the file lies in a directory this process holds locked, and Strait never
        // truncates a segment file while it is mapped (see the module's contract), so the
        // mapping stays backed for its whole life.
        let map = unsafe { MmapOptions::new().map_mut(file) }
            .map_err(|e| StoreError::new(op, path.display(), &e))?;
        // Advice is a hint; a refusal changes nothing. Sequential widens readahead, and
        // WillNeed starts reading the file at once, so that recovery, which opens every
        // segment before scanning any, keeps the disk busy on all of them together.
        // (No MAP_POPULATE: on a shared mapping it read-faults every page, which measured
        // three times slower than the prefault writes of `create`.)
        let _ = map.advise(Advice::Sequential);
        let _ = map.advise(Advice::WillNeed);
        Ok(map)
    }
}

impl Disk for MmapDisk {
    fn location(&self, id: SegmentId) -> String {
        self.path(id).display().to_string()
    }

    fn create(&self, id: SegmentId, bytes: u32) -> Result<Box<dyn SegmentBuf>, StoreError> {
        let path = self.path(id);
        let fail = |e: &io::Error| StoreError::new(StoreOp::Create, path.display(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| fail(&e))?;
        // Writing zeros reserves every block (a full disk fails here, never on a later write
        // through the mapping, which would be SIGBUS) and leaves every page in the page cache,
        // so the prefault below reads nothing. `strait-bench queue` measured this at more
        // than twice the speed of posix_fallocate with MAP_POPULATE.
        //
        // With sync_at_create, a page at a time: the page cache sizes a folio by the write
        // that creates it (up to 2 MiB on ext4 since Linux 6.16, and on XFS), and a write
        // through a mapping dirties a whole folio, so a record of 1 KiB in a segment zeroed
        // in 256 KiB writes made each group commit write back 256 KiB (`write_back` below).
        // Measured on this machine's ext4 with a 1 000-byte write and a sync_file_range per
        // step, 2 000 steps: 9.7 MiB to the disk with 4 KiB folios, 33 MiB with 16 KiB, 502
        // MiB with 256 KiB and 3.9 GiB with the 2 MiB folios of one 8 MiB write
        // (docs/benchmarks.md, "Seventh round"). Without it, the prefault below dirties every
        // page anyway and a sync a second writes the segment whole: large folios cost fewer
        // write-protections there.
        let chunk = if self.sync_at_create {
            PAGE_BYTES
        } else {
            ZEROS.len()
        };
        let mut written = 0u64;
        while written < bytes as u64 {
            let n = (bytes as u64 - written).min(chunk as u64) as usize;
            if let Err(e) = file.write_all_at(&ZEROS[..n], written) {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(fail(&e));
            }
            written += n as u64;
        }
        // With sync_at_create, make the file's blocks and size durable now, before it is
        // mapped (writing back mapped pages would write-protect them, a TLB shootdown of every
        // shard's core) and off the write path: from here on a write through the mapping only
        // overwrites allocated blocks, which changes no metadata (`sync_each`).
        if self.sync_at_create
            && let Err(e) = file.sync_data()
        {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(fail(&e));
        }
        let mut map = match self.map(&file, &path, StoreOp::Create) {
            Ok(m) => m,
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        if self.sync_at_create {
            // Map every page by reading it: the pages stay clean, so a group commit writes
            // back only the pages records went into, not 4 MiB of zeros per segment. The
            // shard's first write to each page then takes a minor write fault.
            let mut sum = 0u8;
            for page in map.chunks(PAGE_BYTES) {
                sum |= page[0];
            }
            std::hint::black_box(sum);
        } else {
            // Take every page's write fault now, here, rather than on the shard's first write.
            for page in map.chunks_mut(PAGE_BYTES) {
                page[0] = 0;
            }
        }
        self.files()
            .insert(id, Arc::new(SegmentFile::new(file, self.sync_at_create)));
        Ok(Box::new(Mapped(map)))
    }

    fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
        let fail = |e: &io::Error| StoreError::new(StoreOp::List, self.dir.display(), e);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| fail(&e))? {
            let name = entry.map_err(|e| fail(&e))?.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            // Exactly the names `path` writes: 16 lowercase hex digits.
            let ours =
                stem.len() == 16 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if ours && let Ok(id) = u64::from_str_radix(stem, 16) {
                ids.push(SegmentId(id));
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn open(&self, id: SegmentId) -> Result<Box<dyn SegmentBuf>, StoreError> {
        let path = self.path(id);
        let fail = |e: &io::Error| StoreError::new(StoreOp::Open, path.display(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| fail(&e))?;
        let len = file.metadata().map_err(|e| fail(&e))?.len();
        if len < crate::segment::SEGMENT_HEADER_BYTES as u64 {
            // Too short to map usefully: a creation cut short. Hand over its bytes.
            let bytes = fs::read(&path).map_err(|e| fail(&e))?;
            self.files()
                .insert(id, Arc::new(SegmentFile::new(file, false)));
            return Ok(Box::new(bytes));
        }
        let map = self.map(&file, &path, StoreOp::Open)?;
        self.files()
            .insert(id, Arc::new(SegmentFile::new(file, false)));
        Ok(Box::new(Mapped(map)))
    }

    fn sync(&self, id: SegmentId, _current: Option<&[u8]>) -> Result<(), StoreError> {
        let file = self.files().get(&id).cloned();
        match file {
            // fdatasync also writes back pages dirtied through a shared mapping.
            Some(f) => f
                .file
                .sync_data()
                .map_err(|e| StoreError::new(StoreOp::Sync, self.path(id).display(), &e)),
            None => Ok(()),
        }
    }

    /// One group commit with one device flush, however many segments it covers. Each fdatasync
    /// ends with a flush of the disk's write cache, and a commit of a parallel sender touches a
    /// segment per bucket written: one by one, `strace -T` on `strait-bench site` under
    /// `every-batch` showed 0.4 ms per fdatasync and more fdatasyncs than writes. So: write
    /// back the dirty pages recovery would read of every segment (its header and its
    /// unacknowledged records, `write_back_unacknowledged`) and wait for them
    /// (`sync_file_range`), then fdatasync the lock file, whose flush makes all of them
    /// durable. That is complete only for files whose blocks and size are already durable, so
    /// that the commit changes no metadata: every segment made by `create` with
    /// `sync_at_create` is (it is fdatasynced there); any other segment gets a full fdatasync
    /// at every commit (one found at recovery may have come back with holes).
    fn sync_each(&self, ids: &[SegmentId]) -> Result<(), StoreError> {
        let files: Vec<(SegmentId, Arc<SegmentFile>)> = {
            let map = self.files();
            ids.iter()
                .filter_map(|id| map.get(id).map(|f| (*id, f.clone())))
                .collect()
        };
        let fail = |id: SegmentId, e: &io::Error| {
            StoreError::new(StoreOp::Sync, self.path(id).display(), e)
        };
        // Start every write-back first, so the disk has them all in flight together, then
        // wait for each.
        for (id, f) in &files {
            if f.layout_durable {
                write_back_unacknowledged(&f.file, WriteBack::Start).map_err(|e| fail(*id, &e))?;
            }
        }
        let mut flush = false;
        for (id, f) in &files {
            if f.layout_durable {
                write_back_unacknowledged(&f.file, WriteBack::Wait).map_err(|e| fail(*id, &e))?;
                flush = true;
            } else {
                f.file.sync_data().map_err(|e| fail(*id, &e))?;
            }
        }
        if flush {
            let lock = self.dir.join(LOCK_FILE);
            self.lock
                .sync_data()
                .map_err(|e| StoreError::new(StoreOp::Sync, lock.display(), &e))?;
        }
        Ok(())
    }

    fn prefetch(&self, id: SegmentId) -> Result<(), StoreError> {
        let file = self.files().get(&id).cloned();
        match file {
            Some(f) => {
                rustix::fs::fadvise(&f.file, 0, None, rustix::fs::Advice::WillNeed).map_err(|e| {
                    StoreError::new(StoreOp::Prefetch, self.path(id).display(), &e.into())
                })
            }
            None => Ok(()),
        }
    }

    fn sync_directory(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::new(StoreOp::Sync, self.dir.display(), &e))
    }

    fn delete(&self, id: SegmentId, buf: Box<dyn SegmentBuf>) -> Result<(), StoreError> {
        drop(buf);
        self.files().remove(&id);
        let path = self.path(id);
        fs::remove_file(&path).map_err(|e| StoreError::new(StoreOp::Delete, path.display(), &e))
    }

    fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<String, StoreError> {
        use std::io::Write;
        let dir = self.dir.join(QUARANTINE_DIR);
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::new(StoreOp::Quarantine, dir.display(), &e))?;
        // Never overwrite what an earlier recovery kept aside: add a suffix instead.
        for n in 0..QUARANTINE_SUFFIXES_MAX {
            let path = if n == 0 {
                dir.join(name)
            } else {
                dir.join(format!("{name}.{n}"))
            };
            let fail = |e: &io::Error| StoreError::new(StoreOp::Quarantine, path.display(), e);
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(&e)),
            };
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| fail(&e))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail(&e))?;
            return Ok(path.display().to_string());
        }
        Err(StoreError {
            op: StoreOp::Quarantine,
            path: dir.join(name).display().to_string(),
            kind: io::ErrorKind::AlreadyExists,
            message: format!(
                "{QUARANTINE_SUFFIXES_MAX} quarantine files of this name exist already; move them away"
            ),
        })
    }
}
