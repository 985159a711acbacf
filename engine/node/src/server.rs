//! The server: one glommio executor (shard) per core, each owning the buckets the bucket
//! table gives it, their region entries and, per gateway sender, their queues.
//!
//! Every shard listens on the client port (SO_REUSEPORT: the kernel spreads connections over
//! shards). A connection parses pipelined RESP commands, sends each key's operation to the
//! shard that owns the key's bucket, one batch per shard through a mailbox (`crate::mailbox`), and
//! writes the replies in request order. A create, update or destroy is queued in each attached
//! sender's queue on the owning shard before its reply, with the queue's durability.

use crate::command::{self, Command, CommandError};
use crate::config::{RegionType, SiteConfig};
use crate::mailbox::{self, MailReceiver, MailSender};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strait_engine::bucket::{BucketTable, ShardId};
use strait_engine::region::{RegionConfig, RegionKind, RegionStore, ScanCursor};
use strait_engine::sender::QueueLayout;
use strait_net::resp::{self, Limits, Parsed};
use strait_queue::ids::{BucketId, EventId, MemberId, QueueId, RegionId, SiteId, StreamId};
use strait_queue::queue::{AppendError, QueueConfig};
use strait_queue::record::{Event, Op as RecordOp};
use strait_queue::shard::ShardQueue;

/// Bytes read from a client socket at a time; the read buffer grows only for larger requests.
pub const CLIENT_READ_BYTES: usize = 64 << 10;
/// Arguments of a command held without an allocation (`MSET` with three pairs has seven).
const ARGS_INLINE: usize = 8;
/// How often a shard checks whether the server is stopping.
pub const STOP_POLL_MS: u64 = 50;
/// How long a shard waits for its connections to finish when stopping.
pub const STOP_GRACE_MS: u64 = 5000;
/// Site id used in version tags when no `distributed-system-id` is configured.
const NO_SITE: SiteId = SiteId(0);

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the directory {dir} is in use by another Strait server (it holds {dir}/{SERVER_LOCK_FILE}); give each server its own directory"
    )]
    DirectoryInUse { dir: PathBuf },
    #[error("cannot lock the directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("client port {addr} is in use by another process")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("invalid region `{region}`: {reason}")]
    Region { region: String, reason: String },
    #[error("cannot start shard {shard}: {reason}")]
    Shard { shard: u16, reason: String },
    #[error(
        "gateway sender `{sender}`: the persistent queues in {dir} were written by a server with \
         {was} shards and still hold events; start it with --shards {was} until they drain \
         (moving queues between shard counts is not supported yet)"
    )]
    ShardCountChanged {
        sender: String,
        dir: PathBuf,
        was: u16,
        now: u16,
    },
    #[error("gateway sender `{sender}`: {path}: {source}")]
    QueueLayout {
        sender: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registration(#[from] crate::registration::RegistrationError),
    #[error(transparent)]
    ReceiverPorts(#[from] crate::wan::PortRangeError),
    #[error("gateway receiver: cannot listen on {addr}: {reason}")]
    ReceiverListen { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::JournalError),
}

/// One operation on the shard that owns its key.
#[derive(Debug)]
pub(crate) enum ShardOp {
    Get {
        region: u16,
        key: Bytes,
    },
    Set {
        region: u16,
        key: Bytes,
        value: Bytes,
    },
    Del {
        region: u16,
        key: Bytes,
    },
    Exists {
        region: u16,
        key: Bytes,
    },
    Count {
        region: u16,
    },
    /// This shard's figures for INFO.
    Stats,
    Scan {
        region: u16,
        cursor: u64,
        count: usize,
        pattern: Option<Bytes>,
    },
    /// Records from another site (their local region index and bytes as received) whose
    /// buckets this shard owns: apply (or, for a dead-letter replay, replay) and forward.
    ApplyRemote {
        replay: bool,
        records: Vec<(u16, Bytes)>,
    },
    /// `STRAIT.SENDER`: apply an operation to gateway sender `index` (or, `None`, report its
    /// state) on this shard.
    Sender {
        index: usize,
        op: Option<command::SenderOp>,
    },
    /// `STRAIT.RECEIVER`: start or stop the gateway receiver on this shard (or, `None`,
    /// report whether it runs).
    Receiver(Option<command::ReceiverOp>),
    /// `STRAIT.LAYOUT`: a run-time change (`crate::control`), prepared or committed.
    Layout {
        config: Arc<SiteConfig>,
        ids: Arc<crate::runtime::RegionIds>,
        receiver_ports: Arc<Vec<u16>>,
        commit: bool,
    },
}

/// The refusal of an operation on a region destroyed meanwhile.
const REGION_DESTROYED: &str =
    "ERR the region was destroyed; `strait list regions` shows the regions";

#[derive(Debug)]
pub(crate) enum OpReply {
    Value(Option<Bytes>),
    Done,
    Flag(bool),
    Count(u64),
    Stats(Box<ShardStats>),
    Page {
        next: u64,
        keys: Vec<Bytes>,
    },
    /// The outcome of each record of an `ApplyRemote`, in order.
    Applied(Vec<strait_engine::apply::ApplyOutcome>),
    /// A gateway sender's state on the shard after a `ShardOp::Sender`.
    Sender(crate::wan::SenderState),
    /// Whether the gateway receiver runs on the shard after a `ShardOp::Receiver`.
    Receiver(bool),
    Error(String),
}

/// Operations for the shard that owns their keys, and where their replies go (one per
/// operation, in order).
#[derive(Debug)]
struct Request {
    ops: Vec<ShardOp>,
    reply: MailSender<Vec<OpReply>>,
}

/// The mailbox ends one shard holds, indexed by peer shard.
struct Wiring {
    requests_out: Vec<Option<MailSender<Request>>>,
    requests_in: Vec<Option<MailReceiver<Request>>>,
}

/// A running server. Dropping it does not stop it: call [`ServerHandle::stop`].
#[derive(Debug)]
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    shards: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>,
    /// The embedded locator and the registration agent.
    registration: crate::registration::Registration,
    /// The client port's address.
    pub client_addr: SocketAddr,
    /// The admin API, unless `http-service-port` is 0.
    admin: Option<crate::admin::AdminHandle>,
    /// Held (an exclusive lock on `server.lock`) while the server runs.
    _lock: std::fs::File,
}

impl ServerHandle {
    /// A flag that stops the server when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits until the server stops (after the stop flag is set), and reports a shard's failure.
    pub fn join(self) -> Result<(), String> {
        let mut first_error = None;
        for (i, h) in self.shards.into_iter().enumerate() {
            let r = h
                .join()
                .map_err(|e| format!("shard {i} died: {e}"))
                .and_then(|r| r.map_err(|e| format!("shard {i}: {e}")));
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        // Shards may also stop by themselves (a failure): the agent then deregisters too.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.admin {
            a.join();
        }
        if let Err(e) = self.registration.finish() {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The admin API's address, unless `http-service-port` is 0.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The embedded locator's address (`start-locator`), if the server runs one.
    pub fn locator_addr(&self) -> Option<SocketAddr> {
        self.registration.locator_addr()
    }

    /// Stops accepting, finishes in-flight work, closes the queues and waits.
    pub fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }
}

/// The CPUs this process may run on, from its affinity mask.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Starts a server; returns once every shard listens, or with the reason none can.
pub fn start(config: SiteConfig) -> Result<ServerHandle, StartError> {
    let lock = lock_directory(&config.server.directory)?;
    set_transparent_huge_pages(config.server.transparent_huge_pages);
    // What was created, altered or destroyed at run time comes back (`crate::runtime`).
    let dir = config.server.directory.clone();
    let journal = crate::runtime::Journal::load(&dir)?;
    let state = journal.replay(&dir, config)?;
    if !journal.changes.is_empty() {
        tracing::info!(
            "{}: replayed {} run-time changes",
            dir.join(crate::runtime::JOURNAL_FILE).display(),
            journal.changes.len()
        );
    }
    let config = state.config.clone();
    let region_ids = crate::runtime::RegionIds::load(&dir)?
        .assign(&config)
        .ok_or_else(|| crate::runtime::JournalError::RegionIdsFull {
            file: dir.join(crate::runtime::REGION_IDS_FILE),
        })?;
    region_ids.save(&dir)?;
    let cpus = allowed_cpus();
    let shards = config.server.shards.unwrap_or(cpus.len().max(1) as u16);
    let addr = SocketAddr::new(config.server.bind_address, config.server.client_port);
    // glommio's listeners set SO_REUSEPORT; an exclusive bind first tells a port in use
    // apart from our own shards sharing it.
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => drop(probe),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(StartError::PortInUse { addr });
        }
        Err(source) => return Err(StartError::Listen { addr, source }),
    }
    for def in config.senders.iter().filter(|d| d.enable_persistence) {
        check_shard_count(&def.id, &def.disk_dir, shards)?;
    }
    let receiver_ports = match &config.receiver {
        Some(def) => crate::wan::pick_receiver_ports(def, usize::from(shards))?,
        None => Vec::new(),
    };
    let receivers = match (
        &config.receiver,
        crate::wan::wan_table(config.regions.iter().map(|r| r.total_num_buckets), shards),
    ) {
        (Some(def), Some(table)) => crate::wan::advertised_receivers(def, &receiver_ports, &table),
        _ => Vec::new(),
    };
    let receivers: crate::registration::Receivers = Arc::new(std::sync::Mutex::new(receivers));
    let control = Arc::new(crate::control::Control::new(
        (state, journal, region_ids.clone()),
        addr,
        shards,
        (receiver_ports.clone(), receivers.clone()),
    ));
    let receiver_ports = Arc::new(receiver_ports);
    // Whether the receiver runs (and is advertised to the locators): from the start unless it
    // has `manual-start`; `STRAIT.RECEIVER START|STOP` changes it.
    let receiver_advertised = Arc::new(AtomicBool::new(
        config.receiver.as_ref().is_some_and(|r| !r.manual_start),
    ));
    for r in &config.regions {
        let rc = region_config(r);
        BucketTable::new(r.total_num_buckets, shards).map_err(|e| StartError::Region {
            region: r.name.clone(),
            reason: e.to_string(),
        })?;
        RegionStore::new(&rc).map_err(|e| StartError::Region {
            region: r.name.clone(),
            reason: e.to_string(),
        })?;
    }
    let n = shards as usize;
    let mut wiring: Vec<Wiring> = (0..n)
        .map(|_| Wiring {
            requests_out: (0..n).map(|_| None).collect(),
            requests_in: (0..n).map(|_| None).collect(),
        })
        .collect();
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (tx, rx) = mailbox::channel();
            wiring[i].requests_out[j] = Some(tx);
            wiring[j].requests_in[i] = Some(rx);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Open client connections on all shards: the load the registration agent reports.
    let load = Arc::new(AtomicU32::new(0));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), (u16, String)>>();
    let config = Arc::new(config);
    let region_ids = Arc::new(region_ids);
    let mut handles = Vec::new();
    for (i, w) in wiring.into_iter().enumerate() {
        let placement = match cpus.get(i) {
            Some(&cpu)
                if config
                    .server
                    .shards
                    .is_none_or(|s| s as usize <= cpus.len()) =>
            {
                Placement::Fixed(cpu)
            }
            _ => Placement::Unbound,
        };
        let (config, regions, shard_stop, ready, load, ports, advertised) = (
            config.clone(),
            region_ids.clone(),
            stop.clone(),
            ready_tx.clone(),
            load.clone(),
            receiver_ports.clone(),
            receiver_advertised.clone(),
        );
        // One blocking thread: the queue's background file work (segment creation, deletes,
        // checkpoints) relies on running in order (a needed segment is not raced by spares on
        // a nearly full disk). Locator lookups and dead-letter writes share it (docs/wan.md,
        // "Blocking pool"). Group commits under `every-batch` run on each queue's own commit
        // lane (strait_queue::shard), not here.
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .preempt_timer(Duration::from_millis(5))
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || async move {
                let shard = ShardId(i as u16);
                let r = shard_main(
                    shard,
                    config,
                    regions,
                    w,
                    (shard_stop.clone(), load, advertised),
                    (addr, ports),
                    &ready,
                )
                .await;
                if let Err(e) = &r {
                    let _ = ready.send(Err((i as u16, e.clone())));
                    shard_stop.store(true, Ordering::SeqCst);
                }
                r
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return Err(StartError::Shard {
                    shard: i as u16,
                    reason: e.to_string(),
                });
            }
        }
    }
    drop(ready_tx);
    for _ in 0..n {
        let outcome = ready_rx
            .recv()
            .unwrap_or_else(|_| Err((u16::MAX, "a shard stopped before it was ready".into())));
        if let Err((shard, reason)) = outcome {
            stop.store(true, Ordering::SeqCst);
            for h in handles {
                let _ = h.join();
            }
            return Err(StartError::Shard { shard, reason });
        }
    }
    let admin = match config.server.http_service_port {
        0 => None,
        port => {
            let at = SocketAddr::new(config.server.http_service_bind_address, port);
            match crate::admin::start(at, addr, control.clone(), stop.clone()) {
                Ok(a) => Some(a),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e.into());
                }
            }
        }
    };
    let registration = match crate::registration::start(
        &config.server,
        addr,
        (receivers, receiver_advertised),
        admin.as_ref().map(|a| a.addr),
        load,
        stop.clone(),
    ) {
        Ok(r) => r,
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            for h in handles {
                let _ = h.join();
            }
            return Err(e.into());
        }
    };
    Ok(ServerHandle {
        stop,
        shards: handles,
        registration,
        client_addr: addr,
        admin,
        _lock: lock,
    })
}

/// The lock file in a server's directory: one server per directory.
pub const SERVER_LOCK_FILE: &str = "server.lock";

/// Takes the server's directory: creates it and holds an exclusive lock on its lock file for
/// the life of the process, so a second server on the same directory (whose queues, region
/// logs and dead letters would be the same files) is refused.
fn lock_directory(dir: &Path) -> Result<std::fs::File, StartError> {
    let fail = |source| StartError::Directory {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(SERVER_LOCK_FILE))
        .map_err(fail)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DirectoryInUse {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
    }
}

/// The file in a sender's disk directory that records how many shards wrote its queues.
pub const SHARDS_FILE: &str = "shards";

/// A persistent sender's queues are per shard (`shard-<i>/`), and a bucket's queue lives on the
/// shard that owns the bucket, so they can only be read back by a server with the shard count
/// that wrote them. Refuses a different count while any of them holds an event; otherwise
/// records `shards`.
fn check_shard_count(sender: &str, dir: &Path, shards: u16) -> Result<(), StartError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::QueueLayout {
            sender: sender.to_string(),
            path,
            source,
        }
    };
    let file = dir.join(SHARDS_FILE);
    let was = match std::fs::read_to_string(&file) {
        Ok(text) => text.trim().parse::<u16>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&file)(e)),
    };
    if let Some(was) = was
        && was != shards
        && holds_events(dir).map_err(io(dir))?
    {
        return Err(StartError::ShardCountChanged {
            sender: sender.to_string(),
            dir: dir.to_path_buf(),
            was,
            now: shards,
        });
    }
    if was != Some(shards) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::write(&file, format!("{shards}\n")).map_err(io(&file))?;
    }
    Ok(())
}

/// Turns transparent huge pages off for this process (`transparent-huge-pages = false`, the
/// default), before any shard allocates: a huge page fault zeroes 2 MiB on the thread that
/// takes it, which stalled shards for milliseconds while their stores grew. `true` leaves the
/// process to the system setting (`/sys/kernel/mm/transparent_hugepage/enabled`). A kernel
/// that refuses the call leaves the setting as it was, with a warning.
fn set_transparent_huge_pages(allowed: bool) {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(!allowed) {
        tracing::warn!(
            "cannot {} transparent huge pages for this server (prctl PR_SET_THP_DISABLE): {e}",
            if allowed { "allow" } else { "turn off" }
        );
    }
}

/// Whether any `shard-*` queue directory under `dir` still holds an unacknowledged event.
/// Reads them the way a shard would at start (recovery), so a drained queue whose last
/// segment stays on disk does not count.
fn holds_events(dir: &Path) -> std::io::Result<bool> {
    for shard_dir in std::fs::read_dir(dir)? {
        let shard_dir = shard_dir?.path();
        let is_shard = shard_dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("shard-"));
        if !is_shard || !shard_dir.is_dir() {
            continue;
        }
        let disk = strait_queue::mmap::MmapDisk::open(&shard_dir).map_err(std::io::Error::other)?;
        let config = QueueConfig {
            queue_count: u16::MAX,
            persistent: true,
            ..QueueConfig::default()
        };
        let (_, report) =
            strait_queue::store::recover(config, &disk).map_err(std::io::Error::other)?;
        if report.events > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whose queue a write goes into.
#[derive(Clone, Copy, Debug)]
enum QueueOwner {
    /// A gateway sender, by index.
    Sender(usize),
    /// The region's log.
    Log,
}

/// A gateway sender's queues on this shard. A sender keeps its index (its slot in
/// `Shard::senders`) for the life of the process; a destroyed sender's slot stays, retired.
pub(crate) struct SenderRt {
    pub(crate) id: String,
    parallel: bool,
    dispatchers: u16,
    /// Its options, changed by `alter gateway-sender`; the dispatcher reads them at each
    /// connection.
    pub(crate) def: RefCell<crate::config::SenderDef>,
    pub(crate) queue: RefCell<Option<Rc<ShardQueue>>>,
    /// Queues per shard: a parallel sender's bucket `b` goes to queue `b % queues`.
    queues: u16,
    /// False once destroyed.
    pub(crate) live: Cell<bool>,
    /// Its dispatcher, until the sender is destroyed or the server stops.
    dispatcher: RefCell<Option<glommio::Task<()>>>,
}

impl SenderRt {
    pub(crate) fn queue_id(&self, bucket: BucketId) -> QueueId {
        let layout = if self.parallel {
            QueueLayout::Parallel {
                queues: self.queues,
            }
        } else {
            QueueLayout::Serial {
                dispatchers: self.dispatchers,
            }
        };
        layout.queue_of(bucket)
    }
}

/// Where a region is in its life on this shard (`crate::runtime` for run-time changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionState {
    /// Created and taking operations, not yet found by name: every shard gets a region
    /// before any client can name it.
    Prepared,
    Live,
    /// Destroyed: its id stays taken, operations on it are refused.
    Destroyed,
}

/// A region on this shard, at its id (its index in `Shard::regions`).
pub(crate) struct RegionSlot {
    pub(crate) rc: RegionConfig,
    pub(crate) table: BucketTable,
    pub(crate) persistent: bool,
    pub(crate) state: Cell<RegionState>,
    /// Its senders (indices into `Shard::senders`) and the recipient set of a local write.
    pub(crate) attached: RefCell<Rc<(Vec<usize>, Vec<SiteId>)>>,
}

pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) shards: usize,
    pub(crate) site: SiteId,
    member: MemberId,
    /// The running configuration; a run-time change replaces it.
    config: RefCell<Arc<SiteConfig>>,
    /// Every region id this process has used, by id.
    regions: RefCell<Rc<Vec<Rc<RegionSlot>>>>,
    /// Per region id: its store (emptied when the region is destroyed).
    pub(crate) stores: RefCell<Vec<RegionStore>>,
    /// Per region id: its log when the region is persistent (`crate::region_log`). Emptied at
    /// shutdown.
    pub(crate) logs: RefCell<Vec<Option<Rc<ShardQueue>>>>,
    /// Every gateway sender this process has had, by index.
    senders: RefCell<Vec<Rc<SenderRt>>>,
    /// Gateway sender and receiver figures.
    pub(crate) wan: crate::wan::WanShard,
    /// Open gateway-receiver connections.
    pub(crate) wan_connections: Cell<u32>,
    /// This shard's gateway-receiver port, when the server has a receiver.
    pub(crate) receiver_port: Cell<Option<u16>>,
    /// Whether the receiver is advertised to the locators (shared by every shard and the
    /// registration agents).
    pub(crate) receiver_advertised: Arc<AtomicBool>,
    /// Last event sequence number per (region, bucket) stream.
    streams: RefCell<HashMap<(u16, u16), u64>>,
    /// Per peer shard: its mailbox. Emptied at shutdown, which ends the peers' request
    /// servers once they answered what they hold.
    requests_out: RefCell<Vec<Option<MailSender<Request>>>>,
    connections: Cell<u32>,
    /// The region of a client that chose none: the first configured.
    default_region: Cell<Option<u16>>,
    /// The server's stop flag, for tasks a run-time change starts.
    stop: Arc<AtomicBool>,
    /// This shard, for tasks a run-time change starts.
    me: std::rc::Weak<Shard>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A stable 16-bit member id from the member's name.
fn member_id(name: &str) -> MemberId {
    MemberId((strait_engine::bucket::key_hash(name.as_bytes()) & 0xffff) as u16)
}

/// Deletes a directory and what it holds, on the blocking pool.
async fn remove_dir(dir: PathBuf) {
    let shown = dir.display().to_string();
    let removed = glommio::executor()
        .spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
    if let Err(e) = removed {
        tracing::warn!("cannot remove {shown}: {e}");
    }
}

/// Opens gateway sender `def`'s queues on shard `id` of `n`.
async fn open_sender(
    id: ShardId,
    n: usize,
    def: &crate::config::SenderDef,
    config: &SiteConfig,
) -> Result<SenderRt, String> {
    // A parallel sender has a queue per bucket of the largest region on the server (also the
    // regions it is not attached to yet: `alter region` may attach it later).
    let queue_count = if def.parallel {
        config
            .regions
            .iter()
            .map(|r| r.total_num_buckets)
            .max()
            .unwrap_or(strait_engine::bucket::TOTAL_BUCKETS_DEFAULT)
    } else {
        def.dispatcher_threads
    };
    let qc = QueueConfig {
        queue_count,
        memory_bytes_max: def.maximum_queue_memory_bytes / n as u64,
        persistent: def.enable_persistence,
        disk_synchronous: def.disk_synchronous,
        sync: def.sync,
        conflation: def.enable_batch_conflation,
        segment_bytes: strait_queue::queue::segment_bytes_for(queue_count),
        ..QueueConfig::default()
    };
    let dir = def.disk_dir.join(format!("shard-{}", id.0));
    let (queue, report) = ShardQueue::open(dir, qc)
        .await
        .map_err(|e| format!("gateway sender `{}`: {e}", def.id))?;
    if report.events > 0 || report.journal_events_replayed > 0 {
        tracing::info!(
            "gateway sender `{}` shard {}: {} queued events recovered, {} of them from the commit journal",
            def.id,
            id.0,
            report.events,
            report.journal_events_replayed
        );
    }
    if !report.is_clean() {
        tracing::warn!(
            "gateway sender `{}` shard {}: recovery cleared {} torn tail(s), kept aside {} damaged part(s) and found {} gap(s): {report:?}",
            def.id,
            id.0,
            report.torn.len(),
            report.corrupt.len(),
            report.gaps.len()
        );
    }
    Ok(SenderRt {
        id: def.id.clone(),
        parallel: def.parallel,
        dispatchers: def.dispatcher_threads,
        def: RefCell::new(def.clone()),
        queue: RefCell::new(Some(Rc::new(queue))),
        queues: queue_count,
        live: Cell::new(true),
        dispatcher: RefCell::new(None),
    })
}

fn region_config(def: &crate::config::RegionDef) -> RegionConfig {
    let mut rc = RegionConfig::new(
        def.name.clone(),
        match def.kind {
            RegionType::Partition => RegionKind::Partition,
            RegionType::Replicate => RegionKind::Replicate,
        },
    );
    rc.total_buckets = def.total_num_buckets;
    rc.gateway_sender_ids = def.gateway_sender_ids.clone();
    rc
}

/// The slot of a region id whose region is not configured (destroyed, or of an earlier run).
fn retired_slot(name: &str, shards: u16) -> Result<RegionSlot, String> {
    let rc = RegionConfig::new(name.to_string(), RegionKind::Replicate);
    let table = BucketTable::new(rc.total_buckets, shards).map_err(|e| e.to_string())?;
    Ok(RegionSlot {
        rc,
        table,
        persistent: false,
        state: Cell::new(RegionState::Destroyed),
        attached: RefCell::default(),
    })
}

/// Region `def` on shard `id`: its slot (prepared), its store, and its log restored into the
/// store when the region is persistent.
async fn open_region(
    id: ShardId,
    shards: u16,
    config: &SiteConfig,
    def: &crate::config::RegionDef,
    site: SiteId,
) -> Result<(RegionSlot, RegionStore, Option<Rc<ShardQueue>>), String> {
    let rc = region_config(def);
    let table = BucketTable::new(def.total_num_buckets, shards)
        .map_err(|e| format!("region `{}`: {e}", def.name))?;
    let mut store = RegionStore::new(&rc).map_err(|e| format!("region `{}`: {e}", def.name))?;
    let log = if def.persistent {
        let dir = crate::region_log::log_dir(&config.server.directory, &def.name, id.0);
        let (log, restored) = crate::region_log::open(&def.name, dir, &mut store, site)
            .await
            .map_err(|e| e.to_string())?;
        if restored.records > 0 {
            tracing::info!(
                region = %def.name,
                shard = id.0,
                "region `{}`, shard {}: restored {} logged writes ({} changed the store)",
                def.name, id.0, restored.records, restored.applied
            );
        }
        Some(Rc::new(log))
    } else {
        None
    };
    Ok((
        RegionSlot {
            rc,
            table,
            persistent: def.persistent,
            state: Cell::new(RegionState::Prepared),
            attached: RefCell::default(),
        },
        store,
        log,
    ))
}

pub(crate) async fn wait_stop(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
}

async fn shard_main(
    id: ShardId,
    config: Arc<SiteConfig>,
    region_ids: Arc<crate::runtime::RegionIds>,
    w: Wiring,
    (stop, load, advertised): (Arc<AtomicBool>, Arc<AtomicU32>, Arc<AtomicBool>),
    (addr, receiver_ports): (SocketAddr, Arc<Vec<u16>>),
    ready: &mpsc::Sender<Result<(), (u16, String)>>,
) -> Result<(), String> {
    let n = w.requests_out.len();
    // A timer that fires every STOP_POLL_MS for the shard's whole life. Each time the reactor
    // wakes it also collects finished blocking-pool work (glommio's `flush_syscall_thread`).
    // Without it, a start could hang: about one start in ten with many servers starting at once
    // left both shards asleep in io_uring while the blocking pool's result for a queue being
    // opened sat uncollected (gdb: the pool threads idle, the shards parked, `start` waiting for
    // ready). Once serving, the accept loop's stop checks wake the reactor just as often.
    {
        let stop = stop.clone();
        glommio::spawn_local(async move { wait_stop(&stop).await }).detach();
    }
    let (requests_out, requests_in) = (w.requests_out, w.requests_in);

    let site = config.server.distributed_system_id.unwrap_or(NO_SITE);
    let mut senders = Vec::new();
    for def in &config.senders {
        senders.push(Rc::new(open_sender(id, n, def, &config).await?));
    }
    let mut slots = Vec::new();
    let mut stores = Vec::new();
    let mut logs = Vec::new();
    for name in &region_ids.names {
        let Some(def) = config.regions.iter().find(|r| &r.name == name) else {
            // A region of an earlier run, not configured now: its id stays taken.
            let slot = retired_slot(name, n as u16)?;
            stores.push(RegionStore::new(&slot.rc).map_err(|e| e.to_string())?);
            slots.push(Rc::new(slot));
            logs.push(None);
            continue;
        };
        let (slot, store, log) = open_region(id, n as u16, &config, def, site).await?;
        slot.state.set(RegionState::Live);
        slots.push(Rc::new(slot));
        stores.push(store);
        logs.push(log);
    }
    let receiver_port = receiver_ports.get(id.0 as usize).copied();
    let shard = Rc::new_cyclic(|me| Shard {
        id,
        shards: n,
        site,
        member: member_id(&config.server.name),
        config: RefCell::new(config.clone()),
        regions: RefCell::new(Rc::new(slots)),
        stores: RefCell::new(stores),
        logs: RefCell::new(logs),
        wan: crate::wan::WanShard::new(&config.senders),
        wan_connections: Cell::new(0),
        receiver_port: Cell::new(receiver_port),
        receiver_advertised: advertised,
        senders: RefCell::new(senders),
        streams: RefCell::new(HashMap::new()),
        requests_out: RefCell::new(requests_out),
        connections: Cell::new(0),
        default_region: Cell::new(None),
        stop: stop.clone(),
        me: me.clone(),
    });
    shard.attach_all();

    // Serve the other shards' requests; each task ends when that peer stops sending. Every
    // request runs in a task of its own: a batch of writes waits for its group commit, and
    // the batches behind it must join that commit rather than queue for the next one.
    let mut servers = Vec::new();
    for rx in requests_in.into_iter().flatten() {
        let shard = shard.clone();
        servers.push(glommio::spawn_local(async move {
            let running = glommio::sync::Gate::new();
            while let Some(req) = rx.recv().await {
                let shard = shard.clone();
                let spawned = running.spawn(async move {
                    let replies = shard.execute(req.ops).await;
                    // A gone receiver means the peer is stopping and no longer waits.
                    let _ = req.reply.send(replies);
                });
                // Spawning fails only through a closed gate, and the gate closes below.
                if let Ok(task) = spawned {
                    task.detach();
                }
            }
            // Wait for the requests still running (the gate is only closed here).
            let _ = running.close().await;
        }));
    }

    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let receiver = match (&config.receiver, receiver_port) {
        (Some(def), Some(port)) if !def.manual_start => {
            let at = SocketAddr::new(def.bind_address, port);
            let l = TcpListener::bind(at).map_err(|e| {
                StartError::ReceiverListen {
                    addr: at,
                    reason: e.to_string(),
                }
                .to_string()
            })?;
            Some(l)
        }
        _ => None,
    };
    let _ = ready.send(Ok(()));
    // The receiver's task runs for the server's life: a receiver created at run time gets
    // its listener here.
    shard.wan.set_receiver(receiver);
    let receiver_task = glommio::spawn_local(crate::wan::run_receiver(shard.clone(), stop.clone()));
    // Every sender gets its dispatcher; one with `manual-start` waits for a START.
    for i in 0..config.senders.len() {
        shard.spawn_dispatcher(i);
    }
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            wait_stop(&stop).await;
            None
        })
        .await;
        match accepted {
            Some(Ok(stream)) => {
                let shard = shard.clone();
                let (stop, load) = (stop.clone(), load.clone());
                shard.connections.set(shard.connections.get() + 1);
                load.fetch_add(1, Ordering::Relaxed);
                glommio::spawn_local(async move {
                    serve_connection(&shard, stream, &stop).await;
                    shard.connections.set(shard.connections.get() - 1);
                    load.fetch_sub(1, Ordering::Relaxed);
                })
                .detach();
            }
            // A failed accept (out of descriptors, a reset) does not stop the server.
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await,
            None => break,
        }
    }
    drop(listener);
    // Dispatchers and the receiver's listener stop at the flag; their queue handles go.
    receiver_task.await;
    let dispatchers: Vec<_> = shard
        .senders
        .borrow()
        .iter()
        .filter_map(|s| s.dispatcher.borrow_mut().take())
        .collect();
    for t in dispatchers {
        t.await;
    }
    // Let connections finish what they read, within the grace period.
    let mut waited = 0;
    while (shard.connections.get() > 0 || shard.wan_connections.get() > 0) && waited < STOP_GRACE_MS
    {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
        waited += STOP_POLL_MS;
    }
    // No more requests from this shard: peers' request servers end once every shard is done.
    shard.requests_out.borrow_mut().clear();
    for t in servers {
        t.await;
    }
    let mut first_error = None;
    let logs = std::mem::take(&mut *shard.logs.borrow_mut());
    let slots = shard.regions();
    for (log, slot) in logs.into_iter().zip(slots.iter()) {
        if let Some(q) = log.and_then(|q| Rc::try_unwrap(q).ok())
            && let Err(e) = q.close().await
        {
            first_error.get_or_insert(format!("closing the log of region `{}`: {e}", slot.rc.name));
        }
    }
    let senders: Vec<_> = shard.senders.borrow().clone();
    for s in &senders {
        let queue = s.queue.borrow_mut().take();
        if let Some(q) = queue.and_then(|q| Rc::try_unwrap(q).ok())
            && let Err(e) = q.close().await
        {
            first_error.get_or_insert(format!("closing gateway sender `{}`: {e}", s.id));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How a command's reply is put together from its operations' replies.
enum Pending {
    Ready(Vec<u8>),
    /// The flag: encode a missing value as RESP3's null.
    Value(usize, usize, bool),
    Done(usize, usize),
    Values(Vec<(usize, usize)>, bool),
    AllDone(Vec<(usize, usize)>),
    Sum(Vec<(usize, usize)>),
    Scan(usize, usize),
    /// INFO: the header, then every shard's figures summed.
    Info(String, Vec<(usize, usize)>),
    /// `STRAIT.STATS`: one `ShardOp::Stats` per shard.
    Stats(Vec<(usize, usize)>),
    /// STRAIT.DEADLETTERS: run once the batches are answered.
    DeadLetters(command::DeadLettersCommand),
    /// STRAIT.SENDER: every shard's answer; STATUS (`true`) answers the state, an operation
    /// `+OK`.
    Sender(Vec<(usize, usize)>, bool),
    /// `STRAIT.RECEIVER`: one reply per shard; the status is wanted when `true`.
    Receiver(Vec<(usize, usize)>, bool),
}

/// One shard's figures, summed over shards for INFO.
#[derive(Debug, Default)]
pub(crate) struct ShardStats {
    connections: u64,
    /// Live entries per region.
    entries: Vec<u64>,
    /// Per gateway sender, in configuration order.
    senders: Vec<strait_queue::queue::QueueStats>,
    wan: crate::wan::WanStats,
}

impl ShardStats {
    fn add(&mut self, other: &ShardStats) {
        self.connections += other.connections;
        self.wan.add(&other.wan);
        add_each(&mut self.entries, &other.entries, |a, b| *a += b);
        add_each(&mut self.senders, &other.senders, |a, b| {
            a.events_queued += b.events_queued;
            a.bytes_queued += b.bytes_queued;
            a.events_in_memory += b.events_in_memory;
            a.bytes_in_memory += b.bytes_in_memory;
            a.events_on_disk += b.events_on_disk;
            a.bytes_on_disk += b.bytes_on_disk;
            a.memory_bytes += b.memory_bytes;
            a.segments += b.segments;
            a.segment_bytes += b.segment_bytes;
            a.conflated += b.conflated;
            a.possible_duplicates += b.possible_duplicates;
            a.oldest_event_age_us = a.oldest_event_age_us.max(b.oldest_event_age_us);
        });
    }
}

fn add_each<T: Default + Clone>(to: &mut Vec<T>, from: &[T], add: impl Fn(&mut T, &T)) {
    if to.len() < from.len() {
        to.resize(from.len(), T::default());
    }
    for (a, b) in to.iter_mut().zip(from) {
        add(a, b);
    }
}

impl Shard {
    /// The running configuration.
    pub(crate) fn config(&self) -> Arc<SiteConfig> {
        self.config.borrow().clone()
    }

    /// Every region id's slot, by id.
    pub(crate) fn regions(&self) -> Rc<Vec<Rc<RegionSlot>>> {
        self.regions.borrow().clone()
    }

    /// Region `region`, unless it was destroyed.
    pub(crate) fn region(&self, region: u16) -> Option<Rc<RegionSlot>> {
        self.regions
            .borrow()
            .get(usize::from(region))
            .filter(|s| s.state.get() != RegionState::Destroyed)
            .cloned()
    }

    /// The id of the live region named `name`.
    pub(crate) fn region_named(&self, name: &[u8]) -> Option<u16> {
        self.regions
            .borrow()
            .iter()
            .position(|s| s.state.get() == RegionState::Live && s.rc.name.as_bytes() == name)
            .map(|i| i as u16)
    }

    /// The live regions' ids in the configuration's order (what `SELECT n` counts).
    pub(crate) fn live_region_ids(&self) -> Vec<u16> {
        self.config()
            .regions
            .iter()
            .filter_map(|r| self.region_named(r.name.as_bytes()))
            .collect()
    }

    /// Every gateway sender this process has had, by index (destroyed ones are not `live`).
    pub(crate) fn senders(&self) -> Vec<Rc<SenderRt>> {
        self.senders.borrow().clone()
    }

    pub(crate) fn sender(&self, index: usize) -> Option<Rc<SenderRt>> {
        self.senders.borrow().get(index).cloned()
    }

    /// The index of the live sender `id`.
    pub(crate) fn sender_index(&self, id: &[u8]) -> Option<usize> {
        self.senders
            .borrow()
            .iter()
            .position(|s| s.live.get() && s.id.as_bytes() == id)
    }

    /// The shard owning `key` of `region`; this one for a destroyed region, which refuses.
    pub(crate) fn owner(&self, region: u16, key: &[u8]) -> usize {
        match self.region(region) {
            Some(slot) => {
                let t = &slot.table;
                t.shard_of(t.bucket_of(key)).map_or(0, |s| s.0 as usize)
            }
            None => usize::from(self.id.0),
        }
    }

    /// Works out every region's senders and recipients from the running configuration.
    fn attach_all(&self) {
        let config = self.config();
        let senders = self.senders();
        for slot in self.regions().iter() {
            let Some(def) = config.regions.iter().find(|r| r.name == slot.rc.name) else {
                *slot.attached.borrow_mut() = Rc::default();
                continue;
            };
            let idx: Vec<usize> = senders
                .iter()
                .enumerate()
                .filter(|(_, s)| s.live.get() && def.gateway_sender_ids.contains(&s.id))
                .map(|(i, _)| i)
                .collect();
            let mut recipients: Vec<SiteId> = idx
                .iter()
                .map(|&i| senders[i].def.borrow().remote_distributed_system_id)
                .collect();
            recipients.sort();
            recipients.dedup();
            *slot.attached.borrow_mut() = Rc::new((idx, recipients));
        }
        self.default_region
            .set(self.live_region_ids().first().copied());
    }

    /// The names of the regions sender `index` is attached to.
    fn regions_of(&self, index: usize) -> Vec<String> {
        self.regions()
            .iter()
            .filter(|s| s.attached.borrow().0.contains(&index))
            .map(|s| s.rc.name.clone())
            .collect()
    }

    fn spawn_dispatcher(&self, index: usize) {
        let (Some(me), Some(sender)) = (self.me.upgrade(), self.sender(index)) else {
            return;
        };
        let task = glommio::spawn_local(crate::wan::run_dispatcher(me, index, self.stop.clone()));
        *sender.dispatcher.borrow_mut() = Some(task);
    }

    /// A run-time change, first half: opens what the new configuration adds (regions'
    /// stores and logs, senders' queues) without letting clients name it yet. Slots are
    /// added in the same order on every shard, so ids and indices agree; a region or sender
    /// that cannot be opened still takes its slot, retired, and the change is refused.
    async fn prepare_layout(
        &self,
        config: &SiteConfig,
        ids: &crate::runtime::RegionIds,
    ) -> Result<(), String> {
        let mut failure = None;
        let n = self.shards as u16;
        for (id, name) in ids.names.iter().enumerate() {
            let slot = self.regions().get(id).cloned();
            let def = config.regions.iter().find(|r| &r.name == name);
            let reopen = match (&slot, def) {
                (None, _) => true,
                (Some(s), Some(_)) => s.state.get() == RegionState::Destroyed,
                (Some(_), None) => false,
            };
            if !reopen {
                continue;
            }
            let opened = match def {
                Some(def) => open_region(self.id, n, config, def, self.site).await,
                None => retired_slot(name, n).and_then(|slot| {
                    let store = RegionStore::new(&slot.rc).map_err(|e| e.to_string())?;
                    Ok((slot, store, None))
                }),
            };
            let (slot, store, log) = match opened {
                Ok(o) => o,
                Err(e) => {
                    failure.get_or_insert(e);
                    let slot = retired_slot(name, n)?;
                    let store = RegionStore::new(&slot.rc).map_err(|e| e.to_string())?;
                    (slot, store, None)
                }
            };
            let mut regions = (*self.regions()).clone();
            let mut stores = self.stores.borrow_mut();
            let mut logs = self.logs.borrow_mut();
            if id < regions.len() {
                regions[id] = Rc::new(slot);
                stores[id] = store;
                logs[id] = log;
            } else {
                regions.push(Rc::new(slot));
                stores.push(store);
                logs.push(log);
            }
            *self.regions.borrow_mut() = Rc::new(regions);
        }
        for def in &config.senders {
            if self.sender_index(def.id.as_bytes()).is_some() {
                continue;
            }
            let rt = match open_sender(self.id, self.shards, def, config).await {
                Ok(rt) => rt,
                // The sender keeps its index with no queue: writes to its regions are
                // refused with the reason, and destroying it clears it.
                Err(e) => {
                    tracing::error!(sender = %def.id, shard = self.id.0, "{e}");
                    failure.get_or_insert(e);
                    SenderRt {
                        id: def.id.clone(),
                        parallel: def.parallel,
                        dispatchers: def.dispatcher_threads,
                        def: RefCell::new(def.clone()),
                        queue: RefCell::new(None),
                        queues: 1,
                        live: Cell::new(true),
                        dispatcher: RefCell::new(None),
                    }
                }
            };
            self.senders.borrow_mut().push(Rc::new(rt));
            self.wan.add_sender(def);
        }
        failure.map_or(Ok(()), Err)
    }

    /// A run-time change, second half: the new configuration takes over. Destroyed regions
    /// lose their data (and their logs), destroyed senders their dispatcher and queues (and
    /// their files); altered and re-attached senders reconnect with their new options and
    /// regions; new senders start; the receiver is created or destroyed.
    async fn commit_layout(
        &self,
        config: Arc<SiteConfig>,
        ids: &crate::runtime::RegionIds,
        receiver_ports: &[u16],
    ) -> Result<(), String> {
        let prepared = self.prepare_layout(&config, ids).await;
        let old = self.config();
        let before: Vec<Vec<String>> = (0..self.senders.borrow().len())
            .map(|i| self.regions_of(i))
            .collect();
        *self.config.borrow_mut() = config.clone();
        let mut failure = prepared.err();
        // Regions.
        for (id, slot) in self.regions().iter().enumerate() {
            let wanted = config.regions.iter().any(|r| r.name == slot.rc.name);
            match slot.state.get() {
                RegionState::Prepared if wanted => slot.state.set(RegionState::Live),
                RegionState::Live | RegionState::Prepared if !wanted => {
                    slot.state.set(RegionState::Destroyed);
                    if let Ok(empty) = RegionStore::new(&slot.rc) {
                        self.stores.borrow_mut()[id] = empty;
                    }
                    let log = self.logs.borrow_mut()[id].take();
                    if let Some(q) = log.and_then(|q| Rc::try_unwrap(q).ok())
                        && let Err(e) = q.close().await
                    {
                        failure.get_or_insert(format!(
                            "closing the log of region `{}`: {e}",
                            slot.rc.name
                        ));
                    }
                    if slot.persistent {
                        let dir = crate::region_log::log_dir(
                            &old.server.directory,
                            &slot.rc.name,
                            self.id.0,
                        );
                        remove_dir(dir).await;
                    }
                    tracing::info!(region = %slot.rc.name, shard = self.id.0, "region `{}` destroyed (shard {})", slot.rc.name, self.id.0);
                }
                _ => {}
            }
        }
        // Senders destroyed and altered.
        for (i, s) in self.senders().iter().enumerate() {
            if !s.live.get() {
                continue;
            }
            match config.senders.iter().find(|d| d.id == s.id) {
                None => {
                    s.live.set(false);
                    self.wan.retire_sender(i);
                    let task = s.dispatcher.borrow_mut().take();
                    if let Some(t) = task {
                        t.await;
                    }
                    let queue = s.queue.borrow_mut().take();
                    if let Some(q) = queue.and_then(|q| Rc::try_unwrap(q).ok())
                        && let Err(e) = q.close().await
                    {
                        failure.get_or_insert(format!("closing gateway sender `{}`: {e}", s.id));
                    }
                    let dir = s.def.borrow().disk_dir.join(format!("shard-{}", self.id.0));
                    remove_dir(dir).await;
                    tracing::info!(sender = %s.id, shard = self.id.0, "gateway sender `{}` destroyed (shard {})", s.id, self.id.0);
                }
                Some(def) if *def != *s.def.borrow() => {
                    *s.def.borrow_mut() = def.clone();
                    self.wan.relink_sender(i);
                }
                Some(_) => {}
            }
        }
        self.attach_all();
        for (i, s) in self.senders().iter().enumerate() {
            if !s.live.get() {
                continue;
            }
            if s.dispatcher.borrow().is_none() {
                self.spawn_dispatcher(i);
            } else if before.get(i) != Some(&self.regions_of(i)) {
                self.wan.relink_sender(i);
            }
        }
        // The receiver.
        match (&old.receiver, &config.receiver) {
            (None, Some(def)) => {
                let port = receiver_ports.get(usize::from(self.id.0)).copied();
                self.receiver_port.set(port);
                if !def.manual_start
                    && let OpReply::Error(e) =
                        crate::wan::receiver_op(self, Some(command::ReceiverOp::Start))
                {
                    failure.get_or_insert(e);
                }
            }
            (Some(_), None) => {
                crate::wan::stop_receiver(self);
                self.receiver_port.set(None);
            }
            _ => {}
        }
        failure.map_or(Ok(()), Err)
    }

    /// The sequence number the stream's next event gets. It continues after a restart without
    /// being persisted, as long as the clock moved on.
    fn peek_stream_seq(&self, region: u16, bucket: BucketId, now_us: u64) -> u64 {
        let last = self
            .streams
            .borrow()
            .get(&(region, bucket.0))
            .copied()
            .unwrap_or(0);
        (last + 1).max(now_us)
    }

    fn commit_stream_seq(&self, region: u16, bucket: BucketId, seq: u64) {
        self.streams.borrow_mut().insert((region, bucket.0), seq);
    }

    /// Runs a batch of operations on this shard's buckets; writes are queued for their
    /// senders and the whole batch waits once for the durability of what it queued.
    async fn execute(&self, ops: Vec<ShardOp>) -> Vec<OpReply> {
        let mut replies = Vec::with_capacity(ops.len());
        let mut waits: Vec<(Rc<ShardQueue>, QueueId, strait_queue::ids::Seq, usize)> = Vec::new();
        for op in ops {
            let index = replies.len();
            let reply = match op {
                ShardOp::Get { region, .. }
                | ShardOp::Exists { region, .. }
                | ShardOp::Count { region }
                | ShardOp::Scan { region, .. }
                | ShardOp::Set { region, .. }
                | ShardOp::Del { region, .. }
                    if self.region(region).is_none() =>
                {
                    OpReply::Error(REGION_DESTROYED.into())
                }
                ShardOp::Get { region, key } => {
                    OpReply::Value(self.stores.borrow()[region as usize].get(&key).cloned())
                }
                ShardOp::Exists { region, key } => {
                    OpReply::Flag(self.stores.borrow()[region as usize].get(&key).is_some())
                }
                ShardOp::Count { region } => {
                    OpReply::Count(self.stores.borrow()[region as usize].len() as u64)
                }
                ShardOp::Stats => OpReply::Stats(Box::new(self.stats())),
                ShardOp::Scan {
                    region,
                    cursor,
                    count,
                    pattern,
                } => {
                    let stores = self.stores.borrow();
                    let page = stores[region as usize].scan(ScanCursor(cursor), count);
                    let keys = page
                        .entries
                        .iter()
                        .filter(|(k, _)| pattern.as_ref().is_none_or(|p| command::glob_match(p, k)))
                        .map(|(k, _)| (*k).clone())
                        .collect();
                    OpReply::Page {
                        next: page.next.0,
                        keys,
                    }
                }
                ShardOp::Set { region, key, value } => {
                    self.write(region, key, Some(value), &mut waits, index)
                        .await
                }
                ShardOp::Del { region, key } => {
                    self.write(region, key, None, &mut waits, index).await
                }
                ShardOp::ApplyRemote { replay, records } => {
                    crate::wan::apply_op(self, records, replay).await
                }
                ShardOp::Sender { index, op } => crate::wan::sender_op(self, index, op),
                ShardOp::Receiver(op) => crate::wan::receiver_op(self, op),
                ShardOp::Layout {
                    config,
                    ids,
                    receiver_ports,
                    commit,
                } => {
                    let done = if commit {
                        self.commit_layout(config, &ids, &receiver_ports).await
                    } else {
                        self.prepare_layout(&config, &ids).await
                    };
                    match done {
                        Ok(()) => OpReply::Done,
                        Err(e) => OpReply::Error(format!("ERR shard {}: {e}", self.id.0)),
                    }
                }
            };
            replies.push(reply);
        }
        // One wait per queue, for the last event this batch put in it (group commit).
        let mut last: HashMap<(usize, QueueId), (Rc<ShardQueue>, strait_queue::ids::Seq)> =
            HashMap::new();
        for (q, qid, seq, _) in &waits {
            let e = last
                .entry((Rc::as_ptr(q) as usize, *qid))
                .or_insert((q.clone(), *seq));
            e.1 = e.1.max(*seq);
        }
        for ((_, qid), (q, seq)) in last {
            if let Err(e) = q.wait_durable(qid, seq).await {
                let why = format!("ERR {e}");
                for (wq, wqid, wseq, i) in &waits {
                    if Rc::ptr_eq(wq, &q) && *wqid == qid && *wseq <= seq {
                        replies[*i] = OpReply::Error(why.clone());
                    }
                }
            }
        }
        replies
    }

    /// A local create, update or destroy. The event is queued in every attached sender first
    /// and the store is updated only once all of them took it, with no wait in between: a
    /// write that any sender refuses (a full disk, a full budget) changes nothing here and
    /// reaches no site.
    async fn write(
        &self,
        region: u16,
        key: Bytes,
        value: Option<Bytes>,
        waits: &mut Vec<(Rc<ShardQueue>, QueueId, strait_queue::ids::Seq, usize)>,
        index: usize,
    ) -> OpReply {
        let Some(slot) = self.region(region) else {
            return OpReply::Error(REGION_DESTROYED.into());
        };
        let attached = slot.attached.borrow().clone();
        let (senders, recipients) = &*attached;
        let bucket = slot.table.bucket_of(&key);
        // Every queue the write goes into: each attached sender's, and the region's log.
        let mut queues: SmallVec<[(QueueOwner, Rc<ShardQueue>, QueueId); 4]> = SmallVec::new();
        // A sender that is not running does not queue the write (Geode drops it too).
        let mut dropped: SmallVec<[usize; 4]> = SmallVec::new();
        for &i in senders {
            let Some(s) = self.sender(i) else { continue };
            if self.wan.sender(i).state.get() == crate::wan::SenderState::NotRunning {
                dropped.push(i);
                continue;
            }
            let Some(queue) = s.queue.borrow().clone() else {
                return OpReply::Error(format!(
                    "ERR gateway sender `{}` has no queue on this shard: the server is stopping, or its queues could not be opened (the server's log says why)",
                    s.id
                ));
            };
            queues.push((QueueOwner::Sender(i), queue, s.queue_id(bucket)));
        }
        if slot.persistent {
            // Emptied at shutdown: a write that arrives after that is refused, not a panic.
            let Some(log) = self.logs.borrow().get(region as usize).cloned().flatten() else {
                return OpReply::Error("ERR the server is stopping".into());
            };
            queues.push((QueueOwner::Log, log, crate::region_log::LOG_QUEUE));
        }
        loop {
            let now = now_us();
            let outcome = {
                let stores = self.stores.borrow();
                match stores[region as usize].plan_local(&key, value.as_deref(), now, self.site) {
                    Ok(Some(o)) => o,
                    Ok(None) => return OpReply::Flag(false),
                    Err(e) => return OpReply::Error(format!("ERR {e}")),
                }
            };
            let seq = if queues.is_empty() {
                0
            } else {
                self.peek_stream_seq(region, bucket, now)
            };
            let event = Event {
                op: outcome.op,
                region: RegionId(region),
                bucket,
                id: EventId {
                    origin_site: self.site,
                    origin_member: self.member,
                    stream: StreamId(u32::from(region) << 16 | u32::from(bucket.0)),
                    seq,
                },
                version: outcome.tag,
                recipients,
                key: &key,
                value: if outcome.op == RecordOp::Destroy {
                    &[]
                } else {
                    value.as_deref().unwrap_or(&[])
                },
            };
            let mut blocked = None;
            for (owner, queue, qid) in &queues {
                match queue.with(|q| q.check_room(*qid, &event)) {
                    Ok(()) => {}
                    Err(AppendError::WouldBlock) => blocked = Some(queue.clone()),
                    Err(e) => return OpReply::Error(self.refusal(*owner, region, &e)),
                }
            }
            if let Some(queue) = blocked {
                // A segment is being made; the store may change meanwhile, so plan again.
                queue.wait_progress().await;
                continue;
            }
            // Every sender has room: queue everywhere, then write, with no await in between.
            for (owner, queue, qid) in &queues {
                match queue.append_now(*qid, &event) {
                    Ok(seq) => {
                        if let QueueOwner::Sender(i) = owner {
                            let c = &self.wan.sender(*i).queued;
                            c.set(c.get() + 1);
                        }
                        waits.push((queue.clone(), *qid, seq, index));
                    }
                    // check_room said yes a moment ago with nothing in between; if a queue
                    // still refuses, say so rather than write half the fan-out.
                    Err(e) => return OpReply::Error(self.refusal(*owner, region, &e)),
                }
            }
            if !queues.is_empty() {
                self.commit_stream_seq(region, bucket, seq);
            }
            let mut stores = self.stores.borrow_mut();
            let store = &mut stores[region as usize];
            let written = match &value {
                Some(v) => store.put_local(&key, v.clone(), now, self.site).ok(),
                None => store.destroy_local(&key, now, self.site),
            };
            debug_assert_eq!(written.map(|w| w.tag), Some(outcome.tag));
            for &i in &dropped {
                let c = &self.wan.sender(i).dropped;
                c.set(c.get() + 1);
            }
            return match value {
                Some(_) => OpReply::Done,
                None => OpReply::Flag(true),
            };
        }
    }

    /// The error a client gets when a queue refuses its write.
    fn refusal(&self, owner: QueueOwner, region: u16, e: &AppendError) -> String {
        match owner {
            QueueOwner::Sender(i) => format!(
                "ERR gateway sender `{}`: {e}",
                self.sender(i).map_or(String::new(), |s| s.id.clone())
            ),
            QueueOwner::Log => format!(
                "ERR region `{}`: its log: {e}",
                self.region(region)
                    .map_or(String::new(), |s| s.rc.name.clone())
            ),
        }
    }

    /// This shard's figures for INFO.
    fn stats(&self) -> ShardStats {
        let now = now_us();
        ShardStats {
            connections: u64::from(self.connections.get()),
            entries: self
                .stores
                .borrow()
                .iter()
                .map(|r| r.len() as u64)
                .collect(),
            senders: self
                .senders()
                .iter()
                .map(|sender| {
                    sender
                        .queue
                        .borrow()
                        .as_ref()
                        .map(|q| q.with(|q| q.stats(now)))
                        .unwrap_or_default()
                })
                .collect(),
            wan: self.wan.stats(),
        }
    }

    /// Sends `ops` to shard `to` and waits for the replies.
    pub(crate) async fn remote(&self, to: usize, ops: Vec<ShardOp>) -> Vec<OpReply> {
        self.send_ops(to, ops).await
    }

    /// Sends `ops` to shard `to` now (the send never waits); the future it returns waits
    /// for the replies, one per operation, in order.
    fn send_ops(
        &self,
        to: usize,
        ops: Vec<ShardOp>,
    ) -> impl std::future::Future<Output = Vec<OpReply>> + 'static {
        let count = ops.len();
        let fail = move |why: &str| -> Vec<OpReply> {
            (0..count)
                .map(|_| OpReply::Error(format!("ERR {why}")))
                .collect()
        };
        let (reply, replies) = mailbox::channel();
        let sent = match self.requests_out.borrow().get(to) {
            Some(Some(peer)) => peer
                .send(Request { ops, reply })
                .map_err(|_| "shard unavailable"),
            _ => Err("the server is stopping"),
        };
        async move {
            match sent {
                Ok(()) => replies
                    .recv()
                    .await
                    .unwrap_or_else(|| fail("shard unavailable")),
                Err(why) => fail(why),
            }
        }
    }
}

struct Session {
    /// The region chosen with `SELECT` or `STRAIT.REGION`; `None`: the first configured.
    region: Option<u16>,
    /// The client asked for RESP3 (HELLO 3).
    resp3: bool,
}

async fn serve_connection(shard: &Rc<Shard>, mut stream: TcpStream, stop: &AtomicBool) {
    // As redis does: a pipelined request read in two parts is answered in two writes, and
    // Nagle would hold the second until the client's delayed ack (~40 ms a round trip).
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    // `buf[..filled]` holds bytes read and not yet parsed; the rest is room to read into,
    // zeroed once when the buffer is made or grown, not at every read.
    let mut buf: Vec<u8> = vec![0; CLIENT_READ_BYTES];
    let mut filled = 0;
    let mut out: Vec<u8> = Vec::new();
    let mut plans = Vec::new();
    let mut session = Session {
        region: None,
        resp3: false,
    };
    loop {
        if buf.len() - filled < CLIENT_READ_BYTES {
            buf.resize(filled + CLIENT_READ_BYTES, 0);
        }
        let read = future::or(
            async { Some(stream.read(&mut buf[filled..]).await) },
            async {
                wait_stop(stop).await;
                None
            },
        )
        .await;
        let n = match read {
            Some(Ok(n)) if n > 0 => n,
            _ => return,
        };
        filled += n;
        let mut at = 0;
        let mut batches: Vec<Vec<ShardOp>> = (0..shard.shards).map(|_| Vec::new()).collect();
        let mut close = false;
        loop {
            match resp::parse_command(&buf[at..filled], &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Skip { consumed }) => at += consumed,
                Ok(Parsed::Command(c)) => {
                    let args: SmallVec<[&[u8]; ARGS_INLINE]> = c.args(&buf[at..filled]).collect();
                    let (plan, quit) = plan(shard, &mut session, &args, &mut batches);
                    plans.push(plan);
                    at += c.consumed;
                    if quit {
                        close = true;
                        break;
                    }
                }
                Err(e) => {
                    let mut err = Vec::new();
                    e.encode_reply(&mut err);
                    plans.push(Pending::Ready(err));
                    close = true;
                    break;
                }
            }
        }
        let results = run_batches(shard, batches).await;
        for p in plans.iter_mut() {
            if let Pending::DeadLetters(cmd) = p {
                let mut reply = Vec::new();
                match crate::wan::dead_letters_command(shard, cmd.clone()).await {
                    Ok(text) => resp::encode_bulk(&mut reply, text.as_bytes()),
                    Err(e) => error_line(&mut reply, &e),
                }
                *p = Pending::Ready(reply);
            }
        }
        assemble(shard, &plans, results, &mut out);
        plans.clear();
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        buf.copy_within(at..filled, 0);
        filled -= at;
        if close {
            return;
        }
    }
}

/// Runs one read's batches: each other shard's is sent first (one message per shard, so one
/// wake-up per read at most), then this shard's runs while they do, then their replies are
/// awaited.
async fn run_batches(shard: &Rc<Shard>, batches: Vec<Vec<ShardOp>>) -> Vec<Vec<Option<OpReply>>> {
    let own = shard.id.0 as usize;
    let mut remote = Vec::new();
    let mut local = Vec::new();
    for (to, ops) in batches.into_iter().enumerate() {
        if ops.is_empty() {
            remote.push(None);
        } else if to == own {
            remote.push(None);
            local = ops;
        } else {
            remote.push(Some(shard.send_ops(to, ops)));
        }
    }
    let local = shard.execute(local).await;
    let mut results = Vec::with_capacity(remote.len());
    for replies in remote {
        let replies = match replies {
            Some(r) => r.await,
            None => Vec::new(),
        };
        results.push(replies.into_iter().map(Some).collect::<Vec<_>>());
    }
    results[own] = local.into_iter().map(Some).collect();
    results
}

fn error_line(out: &mut Vec<u8>, e: &str) {
    resp::encode_error(out, e.as_bytes());
}

fn assemble(
    shard: &Shard,
    plans: &[Pending],
    mut results: Vec<Vec<Option<OpReply>>>,
    out: &mut Vec<u8>,
) {
    let shards = results.len() as u64;
    let mut take = |(s, i): (usize, usize)| {
        results[s][i]
            .take()
            .unwrap_or(OpReply::Error("ERR internal: reply missing".into()))
    };
    for plan in plans {
        match plan {
            Pending::Ready(bytes) => out.extend_from_slice(bytes),
            Pending::DeadLetters(_) => error_line(out, "ERR internal: command not run"),
            Pending::Sender(refs, status) => {
                let mut states = Vec::new();
                let mut failed = None;
                for &r in refs {
                    match take(r) {
                        OpReply::Sender(st) => states.push(st.name()),
                        OpReply::Error(e) => failed = Some(e),
                        _ => failed = Some("ERR internal: unexpected reply".into()),
                    }
                }
                match failed {
                    Some(e) => error_line(out, &e),
                    None if !*status => resp::encode_simple(out, b"OK"),
                    // Shards agree unless a change is in progress; then each is named.
                    None if states.iter().all(|s| Some(s) == states.first()) => {
                        resp::encode_simple(out, states.first().unwrap_or(&"").as_bytes())
                    }
                    None => resp::encode_simple(out, states.join(",").as_bytes()),
                }
            }
            Pending::Receiver(refs, status) => {
                let mut running = Vec::new();
                let mut failed = None;
                for &r in refs {
                    match take(r) {
                        OpReply::Receiver(on) => running.push(on),
                        OpReply::Error(e) => failed = Some(e),
                        _ => failed = Some("ERR internal: unexpected reply".into()),
                    }
                }
                let name = |on: bool| if on { "running" } else { "not running" };
                match failed {
                    Some(e) => error_line(out, &e),
                    None if !*status => resp::encode_simple(out, b"OK"),
                    None if running.iter().all(|&r| r == running[0]) => {
                        resp::encode_simple(out, name(running[0]).as_bytes())
                    }
                    None => {
                        let each: Vec<&str> = running.iter().map(|&r| name(r)).collect();
                        resp::encode_simple(out, each.join(",").as_bytes())
                    }
                }
            }
            Pending::Value(s, i, resp3) => match take((*s, *i)) {
                OpReply::Value(Some(v)) => resp::encode_bulk(out, &v),
                OpReply::Value(None) if *resp3 => resp::encode_null3(out),
                OpReply::Value(None) => resp::encode_null_bulk(out),
                OpReply::Error(e) => error_line(out, &e),
                _ => error_line(out, "ERR internal: unexpected reply"),
            },
            Pending::Done(s, i) => match take((*s, *i)) {
                OpReply::Error(e) => error_line(out, &e),
                _ => resp::encode_simple(out, b"OK"),
            },
            Pending::Values(refs, resp3) => {
                let replies: Vec<OpReply> = refs.iter().map(|&r| take(r)).collect();
                if let Some(OpReply::Error(e)) =
                    replies.iter().find(|r| matches!(r, OpReply::Error(_)))
                {
                    error_line(out, e);
                    continue;
                }
                resp::encode_array_header(out, replies.len());
                for r in replies {
                    match r {
                        OpReply::Value(Some(v)) => resp::encode_bulk(out, &v),
                        _ if *resp3 => resp::encode_null3(out),
                        _ => resp::encode_null_bulk(out),
                    }
                }
            }
            Pending::AllDone(refs) => {
                let replies: Vec<OpReply> = refs.iter().map(|&r| take(r)).collect();
                match replies.iter().find(|r| matches!(r, OpReply::Error(_))) {
                    Some(OpReply::Error(e)) => error_line(out, e),
                    _ => resp::encode_simple(out, b"OK"),
                }
            }
            Pending::Sum(refs) => {
                let mut sum = 0i64;
                let mut failed = None;
                for &r in refs {
                    match take(r) {
                        OpReply::Flag(true) => sum += 1,
                        OpReply::Count(c) => sum += c as i64,
                        OpReply::Error(e) => failed = Some(e),
                        _ => {}
                    }
                }
                match failed {
                    Some(e) => error_line(out, &e),
                    None => resp::encode_integer(out, sum),
                }
            }
            Pending::Info(header, refs) => {
                let mut total = ShardStats::default();
                for &r in refs {
                    if let OpReply::Stats(st) = take(r) {
                        total.add(&st);
                    }
                }
                let text = info_body(shard, header, &total);
                resp::encode_bulk(out, text.as_bytes());
            }
            Pending::Stats(refs) => {
                let mut total = ShardStats::default();
                for &r in refs {
                    if let OpReply::Stats(st) = take(r) {
                        total.add(&st);
                    }
                }
                resp::encode_bulk(out, stats_json(shard, &total).to_string().as_bytes());
            }
            Pending::Scan(s, i) => match take((*s, *i)) {
                OpReply::Page { next, keys } => {
                    let cursor = match next {
                        0 if (*s as u64) + 1 < shards => ((*s as u64) + 1) << SCAN_SHARD_SHIFT,
                        0 => 0,
                        c => ((*s as u64) << SCAN_SHARD_SHIFT) | c,
                    };
                    resp::encode_array_header(out, 2);
                    resp::encode_bulk(out, cursor.to_string().as_bytes());
                    resp::encode_array_header(out, keys.len());
                    for k in keys {
                        resp::encode_bulk(out, &k);
                    }
                }
                OpReply::Error(e) => error_line(out, &e),
                _ => error_line(out, "ERR internal: unexpected reply"),
            },
        }
    }
}

/// A SCAN cursor holds the shard in its top bits and that shard's store cursor below.
pub const SCAN_SHARD_SHIFT: u32 = 48;

fn plan(
    shard: &Shard,
    session: &mut Session,
    args: &[&[u8]],
    batches: &mut [Vec<ShardOp>],
) -> (Pending, bool) {
    let ready = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        Pending::Ready(v)
    };
    let cmd = match command::parse(args) {
        Ok(c) => c,
        Err(e) => return (ready(&|o| error_line(o, &e.to_string())), false),
    };
    let needs_region = !matches!(
        cmd,
        Command::Ping(_)
            | Command::Echo(_)
            | Command::Select(_)
            | Command::Region(_)
            | Command::Info(_)
            | Command::Quit
            | Command::ConfigGet(_)
            | Command::ClientNoop
            | Command::CommandInfo
            | Command::Hello(_)
            | Command::DeadLetters(_)
            | Command::Sender(..)
            | Command::Receiver(..)
            | Command::Stats
            | Command::Layout { .. }
    );
    let region = session.region.or_else(|| shard.default_region.get());
    let region = match region {
        Some(r) => r,
        None if needs_region => {
            return (
                ready(&|o| error_line(o, "ERR no region is configured on this server")),
                false,
            );
        }
        None => 0,
    };
    let mut push = |to: usize, op: ShardOp| {
        batches[to].push(op);
        (to, batches[to].len() - 1)
    };
    let key = |k: &[u8]| Bytes::copy_from_slice(k);
    let plan = match cmd {
        Command::Ping(None) => ready(&|o| resp::encode_simple(o, b"PONG")),
        Command::Ping(Some(m)) | Command::Echo(m) => ready(&|o| resp::encode_bulk(o, m)),
        Command::Quit => return (ready(&|o| resp::encode_simple(o, b"OK")), true),
        Command::Get(k) => {
            let (s, i) = push(
                shard.owner(region, k),
                ShardOp::Get {
                    region,
                    key: key(k),
                },
            );
            Pending::Value(s, i, session.resp3)
        }
        Command::Set(k, v) => {
            let (s, i) = push(
                shard.owner(region, k),
                ShardOp::Set {
                    region,
                    key: key(k),
                    value: key(v),
                },
            );
            Pending::Done(s, i)
        }
        Command::Del(keys) => Pending::Sum(
            keys.iter()
                .map(|k| {
                    push(
                        shard.owner(region, k),
                        ShardOp::Del {
                            region,
                            key: key(k),
                        },
                    )
                })
                .collect(),
        ),
        Command::Exists(keys) => Pending::Sum(
            keys.iter()
                .map(|k| {
                    push(
                        shard.owner(region, k),
                        ShardOp::Exists {
                            region,
                            key: key(k),
                        },
                    )
                })
                .collect(),
        ),
        Command::MGet(keys) => Pending::Values(
            keys.iter()
                .map(|k| {
                    push(
                        shard.owner(region, k),
                        ShardOp::Get {
                            region,
                            key: key(k),
                        },
                    )
                })
                .collect(),
            session.resp3,
        ),
        Command::MSet(pairs) => Pending::AllDone(
            pairs
                .iter()
                .map(|(k, v)| {
                    push(
                        shard.owner(region, k),
                        ShardOp::Set {
                            region,
                            key: key(k),
                            value: key(v),
                        },
                    )
                })
                .collect(),
        ),
        Command::DbSize => Pending::Sum(
            (0..shard.shards)
                .map(|s| push(s, ShardOp::Count { region }))
                .collect(),
        ),
        Command::Scan {
            cursor,
            count,
            pattern,
        } => {
            let to = (cursor >> SCAN_SHARD_SHIFT) as usize;
            if to >= shard.shards {
                return (
                    ready(&|o| error_line(o, &CommandError::Cursor.to_string())),
                    false,
                );
            }
            let store_cursor = cursor & ((1 << SCAN_SHARD_SHIFT) - 1);
            let (s, i) = push(
                to,
                ShardOp::Scan {
                    region,
                    cursor: store_cursor,
                    count,
                    pattern: pattern.map(key),
                },
            );
            Pending::Scan(s, i)
        }
        Command::Select(n) => match shard.live_region_ids().get(n as usize) {
            Some(&id) => {
                session.region = Some(id);
                ready(&|o| resp::encode_simple(o, b"OK"))
            }
            None => ready(&|o| error_line(o, "ERR DB index is out of range")),
        },
        Command::Region(name) => match shard.region_named(name) {
            Some(i) => {
                session.region = Some(i);
                ready(&|o| resp::encode_simple(o, b"OK"))
            }
            None => {
                let msg = format!("ERR unknown region '{}'", String::from_utf8_lossy(name));
                ready(&|o| error_line(o, &msg))
            }
        },
        Command::Stats => {
            Pending::Stats((0..shard.shards).map(|s| push(s, ShardOp::Stats)).collect())
        }
        Command::Info(_) => Pending::Info(
            info_header(shard),
            (0..shard.shards).map(|s| push(s, ShardOp::Stats)).collect(),
        ),
        Command::ConfigGet(_) if session.resp3 => ready(&|o| resp::encode_map_header(o, 0)),
        Command::ConfigGet(_) => ready(&|o| resp::encode_array_header(o, 0)),
        Command::Hello(Some(v)) if v != 2 && v != 3 => {
            ready(&|o| error_line(o, "NOPROTO unsupported protocol version"))
        }
        Command::Hello(v) => {
            if let Some(v) = v {
                session.resp3 = v == 3;
            }
            let resp3 = session.resp3;
            ready(&|o| hello(o, resp3))
        }
        Command::ClientNoop => ready(&|o| resp::encode_simple(o, b"OK")),
        Command::CommandInfo => ready(&|o| resp::encode_array_header(o, 0)),
        Command::DeadLetters(c) => Pending::DeadLetters(c),
        Command::Receiver(op) => Pending::Receiver(
            (0..shard.shards)
                .map(|s| push(s, ShardOp::Receiver(op)))
                .collect(),
            op.is_none(),
        ),
        Command::Layout {
            commit,
            config,
            ids,
            ports,
        } => match layout_args(config, ids, ports) {
            Ok((config, ids, receiver_ports)) => Pending::AllDone(
                (0..shard.shards)
                    .map(|s| {
                        push(
                            s,
                            ShardOp::Layout {
                                config: config.clone(),
                                ids: ids.clone(),
                                receiver_ports: receiver_ports.clone(),
                                commit,
                            },
                        )
                    })
                    .collect(),
            ),
            Err(e) => ready(&|o| error_line(o, &format!("ERR STRAIT.LAYOUT: {e}"))),
        },
        Command::Sender(id, action) => match shard.sender_index(id) {
            Some(index) => {
                let op = match action {
                    command::SenderAction::Op(op) => Some(op),
                    command::SenderAction::Status => None,
                };
                Pending::Sender(
                    (0..shard.shards)
                        .map(|s| push(s, ShardOp::Sender { index, op }))
                        .collect(),
                    op.is_none(),
                )
            }
            None => {
                let msg = format!(
                    "ERR unknown gateway sender '{}'",
                    String::from_utf8_lossy(id)
                );
                ready(&|o| error_line(o, &msg))
            }
        },
    };
    (plan, false)
}

type LayoutArgs = (
    Arc<SiteConfig>,
    Arc<crate::runtime::RegionIds>,
    Arc<Vec<u16>>,
);

/// The arguments of `STRAIT.LAYOUT`: the configuration as a `site.toml`, the region ids as a
/// JSON list of names, the receiver's ports (one per shard, comma-separated, or empty).
fn layout_args(config: &[u8], ids: &[u8], ports: &[u8]) -> Result<LayoutArgs, String> {
    let text = std::str::from_utf8(config).map_err(|e| e.to_string())?;
    let config =
        crate::config::parse(Path::new("(STRAIT.LAYOUT)"), text).map_err(|e| e.to_string())?;
    let names: Vec<String> = serde_json::from_slice(ids).map_err(|e| e.to_string())?;
    let ports = std::str::from_utf8(ports)
        .map_err(|e| e.to_string())?
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u16>().map_err(|e| format!("port `{p}`: {e}")))
        .collect::<Result<Vec<u16>, String>>()?;
    Ok((
        Arc::new(config),
        Arc::new(crate::runtime::RegionIds { names }),
        Arc::new(ports),
    ))
}

/// The HELLO reply: who this server is, as Redis 7 words it (a map in RESP3).
fn hello(out: &mut Vec<u8>, resp3: bool) {
    let text = [
        ("server", "redis"),
        ("version", "7.0.0"),
        ("mode", "standalone"),
        ("role", "master"),
    ];
    if resp3 {
        resp::encode_map_header(out, 7);
    } else {
        resp::encode_array_header(out, 14);
    }
    for (k, v) in &text[..2] {
        resp::encode_bulk(out, k.as_bytes());
        resp::encode_bulk(out, v.as_bytes());
    }
    resp::encode_bulk(out, b"proto");
    resp::encode_integer(out, if resp3 { 3 } else { 2 });
    resp::encode_bulk(out, b"id");
    resp::encode_integer(out, 1);
    for (k, v) in &text[2..] {
        resp::encode_bulk(out, k.as_bytes());
        resp::encode_bulk(out, v.as_bytes());
    }
    resp::encode_bulk(out, b"modules");
    resp::encode_array_header(out, 0);
}

/// INFO's first sections, which every shard knows alike.
fn info_header(shard: &Shard) -> String {
    let mut s = String::new();
    s.push_str("# Server\r\nredis_version:7.0.0\r\nstrait_version:");
    s.push_str(env!("CARGO_PKG_VERSION"));
    s.push_str(&format!(
        "\r\nmember:{}\r\nshards:{}\r\nshard:{}\r\n",
        shard.config().server.name,
        shard.shards,
        shard.id.0
    ));
    if let Some(site) = shard.config().server.distributed_system_id {
        s.push_str(&format!("distributed_system_id:{site}\r\n"));
    }
    s
}

/// INFO's figures, summed over every shard.
/// The `STRAIT.STATS` document (docs/admin-api.md, "GET /v1/member").
fn stats_json(shard: &Shard, total: &ShardStats) -> serde_json::Value {
    use serde_json::json;
    let config = shard.config();
    let regions: Vec<_> = shard
        .regions()
        .iter()
        .enumerate()
        .filter(|(_, slot)| slot.state.get() == RegionState::Live)
        .map(|(i, slot)| {
            let def = config.regions.iter().find(|r| r.name == slot.rc.name);
            json!({
                "name": slot.rc.name,
                "buckets": slot.rc.total_buckets,
                "keys": total.entries.get(i).copied().unwrap_or(0),
                "persistent": slot.persistent,
                "gateway_sender_ids": def.map(|d| d.gateway_sender_ids.clone()).unwrap_or_default(),
            })
        })
        .collect();
    let senders: Vec<_> = shard
        .senders()
        .iter()
        .enumerate()
        .filter(|(_, sender)| sender.live.get())
        .map(|(i, sender)| {
            let st = total.senders.get(i).cloned().unwrap_or_default();
            let def = sender.def.borrow();
            let f = total.wan.senders.get(i).copied().unwrap_or_default();
            json!({
                "id": sender.id,
                "remote_site": def.remote_distributed_system_id.0,
                "parallel": def.parallel,
                "persistent": def.enable_persistence,
                "state": f.state.map_or("changing", |st| st.name()),
                "connected_shards": f.connected,
                "shards": shard.shards,
                "queued_events": st.events_queued,
                "queued_bytes": st.bytes_queued,
                "memory_events": st.events_in_memory,
                "memory_bytes": st.bytes_in_memory,
                "disk_events": st.events_on_disk,
                "disk_bytes": st.bytes_on_disk,
                "segments": st.segments,
                "events_queued_total": f.queued_total,
                "distributed": f.events,
                "batches": f.batches,
                "conflated": st.conflated,
                "possible_duplicates": st.possible_duplicates,
                "dead_lettered": f.dead_lettered,
                "dropped_not_running": f.dropped,
                "over_alert_threshold": f.late,
                "oldest_event_age_ms": st.oldest_event_age_us.map(|us| us / 1000),
                "batch_rtt_us": total.wan.batch_rtt.get(i).map(crate::wan::histogram_json),
            })
        })
        .collect();
    let receiver = config.receiver.as_ref().map(|def| {
        let w = &total.wan;
        json!({
            "state": if shard.receiver_advertised.load(Ordering::SeqCst) { "running" } else { "not running" },
            "bind_address": def.bind_address.to_string(),
            "hostname_for_senders": def.hostname_for_senders,
            "start_port": def.start_port,
            "end_port": def.end_port,
            "applied": w.applied,
            "duplicates": w.duplicates,
            "conflicts": w.conflicts,
            "dead_lettered": w.dead_lettered,
            "cross_shard_events": w.cross_shard_events,
            "connections": w.connections,
            "queue_refusals": w.queue_refusals,
            "apply_lag_us": crate::wan::histogram_json(&w.apply_lag),
        })
    });
    json!({
        "member": config.server.name,
        "site": config.server.distributed_system_id.map(|s| s.0),
        "version": env!("CARGO_PKG_VERSION"),
        "shards": shard.shards,
        "clients": total.connections,
        "regions": regions,
        "senders": senders,
        "receiver": receiver,
    })
}

fn info_body(shard: &Shard, header: &str, total: &ShardStats) -> String {
    let mut s = header.to_string();
    s.push_str(&format!(
        "\r\n# Clients\r\nconnected_clients:{}\r\n",
        total.connections
    ));
    s.push_str("\r\n# Regions\r\n");
    for (n, id) in shard.live_region_ids().into_iter().enumerate() {
        let Some(slot) = shard.region(id) else {
            continue;
        };
        s.push_str(&format!(
            "region{n}:name={},buckets={},keys={}\r\n",
            slot.rc.name,
            slot.rc.total_buckets,
            total.entries.get(usize::from(id)).copied().unwrap_or(0)
        ));
    }
    s.push_str("\r\n# Gateway senders (all shards)\r\n");
    for (i, sender) in shard.senders().iter().enumerate() {
        if !sender.live.get() {
            continue;
        }
        let st = total.senders.get(i).cloned().unwrap_or_default();
        let f = total.wan.senders.get(i).copied().unwrap_or_default();
        let state = f.state.map_or("changing", |st| st.name());
        s.push_str(&format!(
            "{}:queued={},bytes={},in_memory={},on_disk={},segments={},distributed={},batches={},possible_duplicates={},dropped_not_running={},over_alert_threshold={},connected={}/{},state={state}\r\n",
            sender.id,
            st.events_queued,
            st.bytes_queued,
            st.events_in_memory,
            st.events_on_disk,
            st.segments,
            f.events,
            f.batches,
            st.possible_duplicates,
            f.dropped,
            f.late,
            f.connected,
            shard.shards,
        ));
    }
    if shard.config().receiver.is_some() {
        let w = &total.wan;
        s.push_str(&format!(
            "\r\n# Gateway receiver (all shards)\r\nreceiver:applied={},duplicates={},conflicts={},dead_lettered={},cross_shard_events={},connections={},queue_refusals={},state={}\r\n",
            w.applied,
            w.duplicates,
            w.conflicts,
            w.dead_lettered,
            w.cross_shard_events,
            w.connections,
            w.queue_refusals,
            if shard.receiver_advertised.load(Ordering::SeqCst) {
                "running"
            } else {
                "not running"
            }
        ));
    }
    s
}
