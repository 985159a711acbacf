//! [`ShardQueue`]: the glommio shell around a [`SenderQueue`].
//!
//! The queue logic runs on the shard; every [`Action`] it asks for (create, preallocate, map
//! and prefault a segment; fdatasync; unmap and delete) runs off the shard, so a shard never
//! waits on the filesystem. Appends that need a segment not yet created, or a group commit
//! not yet synced, wait asynchronously; other tasks keep running.
//!
//! Two lanes ([`Lane`]): background work runs on the executor's blocking pool, in order; the
//! group commits of a persistent `every-batch` queue run on a [`CommitLane`], a thread of
//! their own, so that a commit never waits behind a segment's creation or a checkpoint step.

use crate::ids::{QueueId, Seq};
use crate::mmap::MmapDisk;
use crate::queue::{Action, AppendError, Durability, Lane, QueueConfig, SenderQueue, SyncPolicy};
use crate::record::Event;
use crate::store::{self, Disk, RecoveryError, RecoveryReport, StoreError, StoreOp};
use futures_lite::future;
use futures_util::task::AtomicWaker;
use glommio::executor;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Wakes every task waiting on it. A waiter that subscribed before a notification sees it.
/// A task is registered once however often it polls (a loop that waits on a `notified()`
/// beside other futures polls a fresh one each turn): the waiters are at most the tasks.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every waiter.
    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Completes at the first notification after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            seen: self.generation.get(),
        }
    }
}

/// The future of [`Notify::notified`].
#[derive(Debug)]
pub struct Notified<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        // Not a clone per poll: glommio counts a task's wakers in an i16 and panics at
        // 32 767, which a loop waiting on a rarely notified `Notify` reached within minutes.
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Why an append did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ShardAppendError {
    #[error(transparent)]
    Rejected(#[from] AppendError),
    /// The event is queued, but the fdatasync meant to make it durable failed.
    #[error("event {seq} of queue {queue} is queued but not durable: {why}")]
    NotDurable {
        queue: QueueId,
        seq: Seq,
        why: String,
    },
}

/// Why a queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

/// One piece of work for a [`CommitLane`].
type LaneJob = Box<dyn FnOnce() + Send>;

/// A thread that runs one queue's group commits, one at a time and in order, apart from the
/// executor's blocking pool. There a commit would wait behind whatever was asked for before
/// it: a segment's creation (up to 8 MiB of zeros and an fdatasync, tens of milliseconds on
/// a slow disk) or a checkpoint step. The thread ends when the lane is dropped.
struct CommitLane {
    jobs: mpsc::Sender<LaneJob>,
}

/// The name of a [`CommitLane`]'s thread.
const COMMIT_LANE_THREAD: &str = "strait-commit";

impl CommitLane {
    /// Starts the thread: call it off the shard (spawning a thread is a system call).
    fn spawn() -> std::io::Result<CommitLane> {
        let (jobs, rx) = mpsc::channel::<LaneJob>();
        std::thread::Builder::new()
            .name(COMMIT_LANE_THREAD.into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(CommitLane { jobs })
    }

    /// Runs `f` on the lane's thread and completes with its result, or with `None` if the
    /// thread stopped while running it. If the thread had stopped before, `f` runs on the
    /// blocking pool instead. Neither end ever blocks the shard: the queue is
    /// `std::sync::mpsc` (lock-free) and the reply wakes this task through an `AtomicWaker`.
    async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = mpsc::channel();
        let bell = Arc::new(AtomicWaker::new());
        let ring = bell.clone();
        let job: LaneJob = Box::new(move || {
            let _ = tx.send(f());
            ring.wake();
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            executor().spawn_blocking(job).await;
        }
        future::poll_fn(|cx| {
            bell.register(cx.waker());
            match rx.try_recv() {
                Ok(r) => Poll::Ready(Some(r)),
                Err(mpsc::TryRecvError::Empty) => Poll::Pending,
                Err(mpsc::TryRecvError::Disconnected) => Poll::Ready(None),
            }
        })
        .await
    }
}

struct Inner {
    queue: RefCell<SenderQueue>,
    disk: Arc<dyn Disk>,
    /// Where group commits run; `None` when nobody waits for syncs (memory queues, interval
    /// or no syncs), and then every action runs on the blocking pool.
    commit_lane: Option<CommitLane>,
    /// Something may have changed for the driver (a write, an ack, a completion).
    wake_driver: Notify,
    /// A segment became ready or a sync finished.
    progress: Notify,
    /// An event was appended (what a dispatcher with nothing to send waits for).
    appended: Notify,
    in_flight: Cell<u32>,
    closing: Cell<bool>,
    last_error: RefCell<Option<StoreError>>,
    epoch: Instant,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One sender's queues on one shard, driven by glommio. Create it on the shard that owns it.
pub struct ShardQueue {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for ShardQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardQueue")
            .field("queue", &self.inner.queue.borrow())
            .finish()
    }
}

impl ShardQueue {
    /// Locks `dir`, recovers what it holds (on the blocking pool) and starts the driver.
    pub async fn open(
        dir: PathBuf,
        config: QueueConfig,
    ) -> Result<(ShardQueue, RecoveryReport), OpenError> {
        let opened = executor()
            .spawn_blocking(move || -> Result<_, OpenError> {
                // Only group commits per batch gain from segments made durable at creation;
                // under `interval` a commit a second pays its per-file syncs once.
                let per_batch = config.persistent && config.sync == SyncPolicy::EveryBatch;
                let disk = MmapDisk::open(&dir)?.sync_at_create(per_batch);
                let (queue, report) = store::recover(config, &disk)?;
                let lane = if per_batch {
                    let lane = CommitLane::spawn().map_err(|e| {
                        StoreError::new(StoreOp::StartThread, COMMIT_LANE_THREAD, &e)
                    })?;
                    Some(lane)
                } else {
                    None
                };
                Ok((disk, queue, report, lane))
            })
            .await?;
        let (disk, queue, report, lane) = opened;
        Ok((Self::start(queue, Arc::new(disk), lane), report))
    }

    fn start(
        queue: SenderQueue,
        disk: Arc<dyn Disk>,
        commit_lane: Option<CommitLane>,
    ) -> ShardQueue {
        let inner = Rc::new(Inner {
            queue: RefCell::new(queue),
            disk,
            commit_lane,
            wake_driver: Notify::default(),
            progress: Notify::default(),
            appended: Notify::default(),
            in_flight: Cell::new(0),
            closing: Cell::new(false),
            last_error: RefCell::new(None),
            epoch: Instant::now(),
        });
        glommio::spawn_local(drive(inner.clone())).detach();
        ShardQueue { inner }
    }

    /// Appends and waits until the event has the durability the configuration promises.
    pub async fn append(&self, q: QueueId, event: &Event<'_>) -> Result<Seq, ShardAppendError> {
        let seq = self.append_nowait(q, event).await?;
        self.wait_durable(q, seq).await?;
        Ok(seq)
    }

    /// Appends without waiting for durability (a pipelined writer awaits
    /// [`ShardQueue::wait_durable`] for the last of many). Waits only while no segment is
    /// ready.
    pub async fn append_nowait(&self, q: QueueId, event: &Event<'_>) -> Result<Seq, AppendError> {
        loop {
            let waiter = self.inner.progress.notified();
            let result = self.inner.queue.borrow_mut().append(q, event);
            self.inner.wake_driver.notify();
            if result.is_ok() {
                self.inner.appended.notify();
            }
            match result {
                Err(AppendError::WouldBlock) => waiter.await,
                r => return r,
            }
        }
    }

    /// Waits until the queue makes progress (a segment is created or synced): what a writer
    /// whose [`SenderQueue::check_room`] answered `WouldBlock` waits for before checking again.
    pub async fn wait_progress(&self) {
        let waiter = self.inner.progress.notified();
        self.inner.wake_driver.notify();
        waiter.await;
    }

    /// Waits until the append of `seq` to `q` is durable as configured.
    pub async fn wait_durable(&self, q: QueueId, seq: Seq) -> Result<(), ShardAppendError> {
        loop {
            let waiter = self.inner.progress.notified();
            match self.inner.queue.borrow().durability(q, seq) {
                Durability::Done => return Ok(()),
                Durability::Failed(why) => {
                    return Err(ShardAppendError::NotDurable { queue: q, seq, why });
                }
                Durability::Pending => {}
            }
            waiter.await;
        }
    }

    /// Appends now, without waiting for a segment or for durability: what a writer that
    /// checked [`SenderQueue::check_room`] calls. Wakes the tasks waiting in
    /// [`ShardQueue::appended`].
    pub fn append_now(&self, q: QueueId, event: &Event<'_>) -> Result<Seq, AppendError> {
        let result = self.with(|queue| queue.append(q, event));
        if result.is_ok() {
            self.inner.appended.notify();
        }
        result
    }

    /// Completes at the next append after this call (through [`ShardQueue::append_now`] or
    /// [`ShardQueue::append_nowait`]): a dispatcher with nothing to send creates this before it
    /// peeks, and awaits it once the queues are empty, so it misses no append.
    pub fn appended(&self) -> impl Future<Output = ()> + '_ {
        self.inner.appended.notified()
    }

    /// Runs `f` on the queue (peek, ack, reset, stats), then lets the driver see the change.
    pub fn with<R>(&self, f: impl FnOnce(&mut SenderQueue) -> R) -> R {
        let r = f(&mut self.inner.queue.borrow_mut());
        self.inner.wake_driver.notify();
        r
    }

    /// The last file operation that failed in the background (a delete, a sync), if any.
    pub fn last_error(&self) -> Option<StoreError> {
        self.inner.last_error.borrow().clone()
    }

    /// Syncs everything written, deletes what is fully acknowledged and the unused spares,
    /// waits for all file work, stops the driver and unmaps the segments off the shard.
    pub async fn close(self) -> Result<(), StoreError> {
        let inner = self.inner;
        inner.closing.set(true);
        loop {
            let waiter = inner.progress.notified();
            let action = inner.queue.borrow_mut().poll_close(inner.now_ms());
            if let Some(action) = action {
                run(inner.clone(), action).await;
                continue;
            }
            let busy = inner.in_flight.get() > 0 || inner.queue.borrow().sync_in_flight();
            if !busy {
                break;
            }
            inner.wake_driver.notify();
            waiter.await;
        }
        inner.wake_driver.notify();
        if let Some(e) = inner.last_error.borrow().clone() {
            return Err(e);
        }
        let queue = inner.queue.replace(SenderQueue::new(QueueConfig {
            queue_count: 0,
            ..QueueConfig::default()
        }));
        executor().spawn_blocking(move || drop(queue)).await;
        Ok(())
    }
}

/// The driver: takes actions from the queue and runs each on the blocking pool.
async fn drive(inner: Rc<Inner>) {
    loop {
        if inner.closing.get() {
            return;
        }
        let waiter = inner.wake_driver.notified();
        let now = inner.now_ms();
        let action = inner.queue.borrow_mut().poll_action(now);
        if let Some(action) = action {
            inner.in_flight.set(inner.in_flight.get() + 1);
            let i = inner.clone();
            glommio::spawn_local(async move {
                run(i.clone(), action).await;
                i.in_flight.set(i.in_flight.get() - 1);
                i.progress.notify();
                i.wake_driver.notify();
            })
            .detach();
            continue;
        }
        let deadline = inner.queue.borrow().next_deadline_ms();
        match deadline {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now).max(1));
                future::or(waiter, glommio::timer::sleep(wait)).await;
            }
            None => waiter.await,
        }
    }
}

async fn run(inner: Rc<Inner>, action: Action) {
    let disk = inner.disk.clone();
    match action {
        Action::CreateSegment { id, bytes } => {
            let r = executor()
                .spawn_blocking(move || disk.create(id, bytes))
                .await;
            inner
                .queue
                .borrow_mut()
                .handle_created(id, r, inner.now_ms());
        }
        Action::Sync {
            token,
            segments,
            directory,
            lane,
        } => {
            let first = segments.first().copied();
            let work = move || {
                if directory {
                    disk.sync_directory()?;
                }
                disk.sync_each(&segments)
            };
            let r = match (&inner.commit_lane, lane) {
                (Some(commits), Lane::Commit) => commits.run(work).await.unwrap_or_else(|| {
                    Err(StoreError::new(
                        StoreOp::Sync,
                        format!(
                            "{} (thread {COMMIT_LANE_THREAD})",
                            first.map(|id| inner.disk.location(id)).unwrap_or_default()
                        ),
                        &std::io::Error::other("the thread stopped during the sync"),
                    ))
                }),
                _ => executor().spawn_blocking(work).await,
            };
            if let Err(e) = &r {
                *inner.last_error.borrow_mut() = Some(e.clone());
            }
            inner
                .queue
                .borrow_mut()
                .handle_synced(token, r, inner.now_ms());
        }
        Action::PrefetchSegment { id } => {
            // A hint: if the kernel refuses it, the read faults in later as it would anyway.
            let _ = executor().spawn_blocking(move || disk.prefetch(id)).await;
        }
        Action::DeleteSegment { id, buf } => {
            // A failed delete leaves a fully acknowledged file behind; the next recovery
            // removes it. It is still reported.
            match executor()
                .spawn_blocking(move || disk.delete(id, buf))
                .await
            {
                Ok(()) => inner.queue.borrow_mut().handle_deleted(inner.now_ms()),
                Err(e) => *inner.last_error.borrow_mut() = Some(e),
            }
        }
        Action::RecycleSegment { id, buf } => {
            let (buf, r) = executor()
                .spawn_blocking(move || {
                    let r = disk.sync(id, Some(buf.bytes()));
                    (buf, r)
                })
                .await;
            // A failure loses nothing: the segment is deleted and a new one made instead.
            inner.queue.borrow_mut().handle_recycled(id, buf, r);
        }
    }
    inner.progress.notify();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::*;
    use crate::mem::MemDisk;
    use crate::queue::SEGMENT_BYTES_MIN;
    use crate::record::Op;
    use crate::store::SegmentBuf;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::task::Wake;

    /// A [`MemDisk`] whose segment creations, while the gate is shut, wait for it to open.
    #[derive(Default)]
    struct GatedDisk {
        inner: MemDisk,
        shut: Mutex<bool>,
        opened: Condvar,
        /// A creation is waiting at the gate.
        held: AtomicBool,
    }

    impl GatedDisk {
        fn set_shut(&self, shut: bool) {
            *self.shut.lock().unwrap() = shut;
            self.opened.notify_all();
        }
    }

    impl Disk for GatedDisk {
        fn location(&self, id: SegmentId) -> String {
            self.inner.location(id)
        }
        fn create(&self, id: SegmentId, bytes: u32) -> Result<Box<dyn SegmentBuf>, StoreError> {
            let mut shut = self.shut.lock().unwrap();
            while *shut {
                self.held.store(true, Ordering::SeqCst);
                shut = self.opened.wait(shut).unwrap();
            }
            drop(shut);
            self.inner.create(id, bytes)
        }
        fn list(&self) -> Result<Vec<SegmentId>, StoreError> {
            self.inner.list()
        }
        fn open(&self, id: SegmentId) -> Result<Box<dyn SegmentBuf>, StoreError> {
            self.inner.open(id)
        }
        fn sync(&self, id: SegmentId, current: Option<&[u8]>) -> Result<(), StoreError> {
            self.inner.sync(id, current)
        }
        fn prefetch(&self, id: SegmentId) -> Result<(), StoreError> {
            self.inner.prefetch(id)
        }
        fn sync_directory(&self) -> Result<(), StoreError> {
            self.inner.sync_directory()
        }
        fn delete(&self, id: SegmentId, buf: Box<dyn SegmentBuf>) -> Result<(), StoreError> {
            self.inner.delete(id, buf)
        }
        fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<String, StoreError> {
            self.inner.quarantine(name, bytes)
        }
    }

    fn event(n: u64, recipients: &[SiteId]) -> Event<'_> {
        Event {
            op: Op::Create,
            region: RegionId(1),
            bucket: BucketId(n as u16),
            id: EventId {
                origin_site: SiteId(1),
                origin_member: MemberId(1),
                stream: StreamId(0),
                seq: n,
            },
            version: VersionTag {
                timestamp_us: n,
                site: SiteId(1),
            },
            recipients,
            key: b"key",
            value: &[7; 500],
        }
    }

    /// With one blocking thread, as a server's shard has, a commit asked for after a segment's
    /// creation used to wait for that creation: on a slow disk tens of milliseconds for 8 MiB
    /// of zeros and an fdatasync, and every writer waited with it.
    #[test]
    fn a_group_commit_does_not_wait_behind_a_segment_creation() {
        // A parallel sender's shape under the default `every-batch`: journalled.
        let config = QueueConfig {
            queue_count: 20,
            persistent: true,
            segment_bytes: SEGMENT_BYTES_MIN,
            ..QueueConfig::default()
        };
        assert!(config.commit_journal());
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
            .make()
            .expect("executor");
        ex.run(async move {
            let disk = Arc::new(GatedDisk::default());
            let lane = CommitLane::spawn().expect("commit lane");
            let sq = ShardQueue::start(SenderQueue::new(config), disk.clone(), Some(lane));
            let to = [SiteId(2)];
            // The first segments come with the gate open; then let the file work settle.
            sq.append(QueueId(0), &event(0, &to)).await.expect("first");
            while sq.inner.in_flight.get() > 0 {
                sq.inner.progress.notified().await;
            }
            disk.set_shut(true);
            let bound = Duration::from_secs(10);
            let committed = future::or(
                async {
                    // A queue without a segment takes a spare, and the queue asks for
                    // another: that creation now holds the only blocking thread.
                    sq.append_nowait(QueueId(1), &event(1, &to))
                        .await
                        .expect("second");
                    // The gate is on another thread: look again each millisecond.
                    while !disk.held.load(Ordering::SeqCst) {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    Some(sq.append(QueueId(0), &event(2, &to)).await)
                },
                async {
                    glommio::timer::sleep(bound).await;
                    None
                },
            )
            .await;
            let still_held = disk.held.load(Ordering::SeqCst) && *disk.shut.lock().unwrap();
            disk.set_shut(false);
            let seq = committed
                .unwrap_or_else(|| panic!("no commit within {bound:?} behind a creation"))
                .expect("durable");
            assert_eq!(seq, Seq(2));
            assert!(
                still_held,
                "the creation was still waiting when the commit came"
            );
            sq.close().await.expect("close");
        });
    }

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_task_polling_fresh_waits_is_registered_once_and_still_woken() {
        let notify = Notify::default();
        let (a, b) = (
            Arc::new(Counter(AtomicUsize::new(0))),
            Arc::new(Counter(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        // As a dispatcher's loop does: a new wait each turn, never notified meanwhile.
        for _ in 0..40_000 {
            let mut wait = std::pin::pin!(notify.notified());
            assert!(
                wait.as_mut()
                    .poll(&mut Context::from_waker(&wa))
                    .is_pending()
            );
        }
        let mut other = std::pin::pin!(notify.notified());
        assert!(
            other
                .as_mut()
                .poll(&mut Context::from_waker(&wb))
                .is_pending()
        );
        assert_eq!(notify.waiters.borrow().len(), 2);
        // `a`, `wa` and the one registered clone.
        assert_eq!(Arc::strong_count(&a), 3);
        notify.notify();
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert!(
            other
                .as_mut()
                .poll(&mut Context::from_waker(&wb))
                .is_ready()
        );
    }
}
