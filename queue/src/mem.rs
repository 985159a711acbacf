//! [`MemDisk`]: a [`Disk`] made of vectors, for tests and simulation. It can be told to fail
//! creations (a full disk) and syncs, and it emulates what a process crash or a power loss
//! leaves behind.

use crate::ids::SegmentId;
use crate::queue::{Action, SenderQueue};
use crate::segment;
use crate::store::{Disk, SegmentBuf, StoreError, StoreOp};
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

/// Page size used to tear unsynced writes at a simulated power loss.
pub const MEM_PAGE_BYTES: usize = 4096;

#[derive(Default, Debug)]
struct State {
    /// What survives a power loss: the bytes as of each segment's last sync.
    durable: BTreeMap<SegmentId, Vec<u8>>,
    /// What survives a process crash: the latest bytes (the page cache).
    current: BTreeMap<SegmentId, Vec<u8>>,
    quarantine: BTreeMap<String, Vec<u8>>,
    fail_creates: u32,
    full: bool,
    fail_syncs: u32,
}

/// An in-memory disk. See the module documentation.
#[derive(Default, Debug)]
pub struct MemDisk {
    state: Mutex<State>,
}

/// What a crash leaves on a [`MemDisk`].
#[derive(Clone, Copy, Debug)]
pub enum Crash {
    /// The process dies; the kernel keeps every write.
    Process,
    /// The machine loses power: writes made since a segment's last sync survive page by
    /// page, at random (a page may also be torn in half). `seed` drives the choice.
    PowerLoss { seed: u64 },
}

fn err(op: StoreOp, id: impl std::fmt::Display, kind: io::ErrorKind, msg: &str) -> StoreError {
    StoreError {
        op,
        path: format!("mem:{id}"),
        kind,
        message: msg.to_string(),
    }
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` creations fail with an I/O error.
    pub fn fail_creates(&self, n: u32) {
        self.state().fail_creates = n;
    }

    /// While set, creations fail as on a full disk.
    pub fn set_full(&self, full: bool) {
        self.state().full = full;
    }

    /// The next `n` syncs fail.
    pub fn fail_syncs(&self, n: u32) {
        self.state().fail_syncs = n;
    }

    /// Ends `queue` as `crash` would and leaves on this disk what would survive it.
    pub fn crash(&self, queue: SenderQueue, crash: Crash) {
        self.crash_with(queue, Vec::new(), crash);
    }

    /// [`MemDisk::crash`], where `in_flight` are the buffers of actions asked for and not yet
    /// done (a recycle, a delete): their bytes are in the page cache, unsynced.
    pub fn crash_with(
        &self,
        queue: SenderQueue,
        in_flight: Vec<(SegmentId, Box<dyn SegmentBuf>)>,
        crash: Crash,
    ) {
        let mut st = self.state();
        for (id, buf) in queue.into_segments().into_iter().chain(in_flight) {
            st.current.insert(id, buf.bytes().to_vec());
        }
        if let Crash::PowerLoss { seed } = crash {
            let mut rng = SplitMix(seed);
            let ids: Vec<SegmentId> = st.current.keys().copied().collect();
            for id in ids {
                let now = st.current[&id].clone();
                let mut out = st
                    .durable
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| vec![0; now.len()]);
                for (p, page) in now.chunks(MEM_PAGE_BYTES).enumerate() {
                    let at = p * MEM_PAGE_BYTES;
                    if out[at..at + page.len()] == *page {
                        continue;
                    }
                    match rng.next_u64() % 3 {
                        0 => {}
                        1 => out[at..at + page.len()].copy_from_slice(page),
                        _ => {
                            let cut = (rng.next_u64() as usize) % page.len();
                            out[at..at + cut].copy_from_slice(&page[..cut]);
                        }
                    }
                }
                st.current.insert(id, out);
            }
        }
        let current = st.current.clone();
        st.durable = current;
    }

    /// Files kept aside by recovery.
    pub fn quarantined(&self) -> BTreeMap<String, Vec<u8>> {
        self.state().quarantine.clone()
    }

    /// The bytes of a segment as a crash would leave them (for corruption tests to damage).
    pub fn with_segment<R>(&self, id: SegmentId, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let mut st = self.state();
        let r = st.current.get_mut(&id).map(f);
        if let Some(bytes) = st.current.get(&id).cloned() {
            st.durable.insert(id, bytes);
        }
        r
    }

    /// Removes a segment as if its file had vanished.
    pub fn remove(&self, id: SegmentId) {
        let mut st = self.state();
        st.current.remove(&id);
        st.durable.remove(&id);
    }

    /// The size of a segment present, in bytes.
    pub fn size(&self, id: SegmentId) -> Option<usize> {
        self.state().current.get(&id).map(Vec::len)
    }

    /// Segment ids present.
    pub fn ids(&self) -> Vec<SegmentId> {
        self.state().current.keys().copied().collect()
    }
}

impl Disk for MemDisk {
    fn location(&self, id: SegmentId) -> String {
        format!("mem:{:016x}.seg", id.0)
    }

    fn create(&self, id: SegmentId, bytes: u32) -> Result<Box<dyn SegmentBuf>, StoreError> {
        let mut st = self.state();
        if st.full {
            return Err(err(
                StoreOp::Create,
                id,
                io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        if st.fail_creates > 0 {
            st.fail_creates -= 1;
            return Err(err(
                StoreOp::Create,
                id,
                io::ErrorKind::PermissionDenied,
                "Permission denied",
            ));
        }
        let buf = vec![0u8; bytes as usize];
        st.current.insert(id, buf.clone());
        st.durable.insert(id, buf.clone());
        Ok(Box::new(buf))
    }

    fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
        Ok(self.ids())
    }

    fn open(&self, id: SegmentId) -> Result<Box<dyn SegmentBuf>, StoreError> {
        let st = self.state();
        match st.current.get(&id) {
            Some(b) => Ok(Box::new(b.clone())),
            None => Err(err(
                StoreOp::Open,
                id,
                io::ErrorKind::NotFound,
                "No such file",
            )),
        }
    }

    fn sync(&self, id: SegmentId, current: Option<&[u8]>) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.fail_syncs > 0 {
            st.fail_syncs -= 1;
            return Err(err(
                StoreOp::Sync,
                id,
                io::ErrorKind::Other,
                "Input/output error",
            ));
        }
        if let Some(bytes) = current {
            // Like the file-backed disk: the header's page, and the pages from the one
            // holding the first unacknowledged record on. Acknowledged pages in between keep
            // whatever was durable before, which a power loss then leaves.
            let from =
                (segment::ack_offset_of(bytes) / MEM_PAGE_BYTES * MEM_PAGE_BYTES).min(bytes.len());
            let mut durable = st
                .durable
                .remove(&id)
                .filter(|d| d.len() == bytes.len())
                .unwrap_or_else(|| vec![0; bytes.len()]);
            let head = bytes.len().min(MEM_PAGE_BYTES);
            durable[..head].copy_from_slice(&bytes[..head]);
            durable[from..].copy_from_slice(&bytes[from..]);
            st.durable.insert(id, durable);
            st.current.insert(id, bytes.to_vec());
        }
        Ok(())
    }

    fn sync_directory(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn prefetch(&self, _id: SegmentId) -> Result<(), StoreError> {
        Ok(())
    }

    fn delete(&self, id: SegmentId, _buf: Box<dyn SegmentBuf>) -> Result<(), StoreError> {
        self.remove(id);
        Ok(())
    }

    fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<String, StoreError> {
        self.state()
            .quarantine
            .insert(name.to_string(), bytes.to_vec());
        Ok(format!("mem:quarantine/{name}"))
    }
}

/// Carries out every action `queue` has now, synchronously, against `disk` (tests, simulation,
/// tools). Returns how many actions ran.
pub fn run_actions(queue: &mut SenderQueue, disk: &dyn Disk, now_ms: u64) -> usize {
    let mut n = 0;
    while let Some(action) = queue.poll_action(now_ms) {
        n += 1;
        run_action(queue, disk, action, now_ms);
    }
    n
}

/// Carries out one action synchronously.
pub fn run_action(queue: &mut SenderQueue, disk: &dyn Disk, action: Action, now_ms: u64) {
    match action {
        Action::CreateSegment { id, bytes } => {
            let r = disk.create(id, bytes);
            queue.handle_created(id, r, now_ms);
        }
        Action::Sync {
            token,
            segments,
            directory,
            ..
        } => {
            let r = sync_now(queue, disk, &segments, directory);
            queue.handle_synced(token, r, now_ms);
        }
        Action::PrefetchSegment { id } => {
            // A hint: a failure changes nothing.
            let _ = disk.prefetch(id);
        }
        Action::DeleteSegment { id, buf } => {
            // A failed delete leaves a fully acknowledged file that the next recovery removes.
            if disk.delete(id, buf).is_ok() {
                queue.handle_deleted(now_ms);
            }
        }
        Action::RecycleSegment { id, buf } => {
            let r = disk.sync(id, Some(buf.bytes()));
            queue.handle_recycled(id, buf, r);
        }
    }
}

/// Carries out the file work of an [`Action::Sync`] synchronously, without reporting it to
/// the queue.
pub fn sync_now(
    queue: &SenderQueue,
    disk: &dyn Disk,
    segments: &[SegmentId],
    directory: bool,
) -> Result<(), StoreError> {
    if directory {
        disk.sync_directory()?;
    }
    segments
        .iter()
        .try_for_each(|&id| disk.sync(id, queue.segment_bytes(id)))
}

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}
