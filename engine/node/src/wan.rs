//! The WAN link's glommio shell (`docs/wan.md`): the gateway receiver (one listener per
//! shard, a [`ReceiverConn`] per sender connection, apply on the shard owning each record's
//! bucket, forward under the loop rule, dead letters) and the dispatchers (one task per
//! gateway sender per shard running a [`SenderConn`] over the sender's queues on that shard).
//!
//! Nothing here blocks a shard: locator lookups, name resolution and dead-letter files run on
//! the executor's blocking pool.

use crate::command::{DeadLettersCommand, ReceiverOp, SenderOp};
use crate::config::{ReceiverDef, SenderDef};
use crate::locator::RemoteSiteLookup;
use crate::server::{OpReply, STOP_POLL_MS, Shard, ShardOp, wait_stop};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use glommio::executor;
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strait_engine::apply::{
    ApplyOutcome, SenderIndex, apply_record, forward_targets, replay_record,
};
use strait_engine::bucket::{BucketTable, ShardId};
use strait_engine::deadletter::{DeadLetterLog, encode_entry};
use strait_engine::locator::choose_receiver;
use strait_net::wire::{
    self, AckOutcome, BatchIn, FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, ReceiverConfig,
    ReceiverConn, ReceiverEvent, RegionSpec, SenderConfig, SenderConn, SenderEvent,
};
use strait_queue::ids::{BucketId, QueueId, RegionId, SiteId};
use strait_queue::queue::Batch;
use strait_queue::record::{self, Event, Record};
use strait_queue::shard::ShardQueue;

/// Most bytes of records in one batch (with at most `batch-size` events).
pub use strait_engine::link::BATCH_BYTES_MAX;
/// How often a dispatcher asks the locators again for a remote site's receivers.
pub const LOOKUP_RETRY_MS: u64 = 1_000;
/// How long a connection attempt to a receiver may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// The first wait before reconnecting after a failed or lost connection; it doubles up to
/// [`RECONNECT_BACKOFF_MAX_MS`] and starts over once a connection has carried an
/// acknowledgement (a receiver that accepts the hello, then refuses every batch, is retried
/// at the slow pace).
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 200;
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;
/// Bytes read from a WAN socket at a time; a buffer grows only for a larger frame.
pub const WAN_READ_BYTES: usize = 256 << 10;
/// Largest read buffer: one whole frame.
const WAN_BUFFER_BYTES_MAX: usize = FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX;
/// The dead-letter logs' directory under the server's directory.
pub const DEAD_LETTER_DIR: &str = "dead-letters";
/// Most dead-letter entries `STRAIT.DEADLETTERS LIST` describes one by one per region.
pub const DEAD_LETTERS_LISTED_MAX: usize = 100;

pub use strait_engine::sender::SenderState;

/// Largest latency a histogram records (an hour, in microseconds); longer ones count as it.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of the latency histograms (1 % resolution, about 30 KiB each).
const LATENCY_SIGFIGS: u8 = 2;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub(crate) struct Hist(hdrhistogram::Histogram<u64>);

impl Default for Hist {
    fn default() -> Hist {
        Hist(
            hdrhistogram::Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIGS)
                .expect("constant bounds are valid"),
        )
    }
}

impl Hist {
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    pub fn add(&mut self, other: &Hist) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }
}

/// A histogram as the admin API shows it: count, sum and quantiles in microseconds.
pub(crate) fn histogram_json(h: &Hist) -> serde_json::Value {
    let h = &h.0;
    serde_json::json!({
        "count": h.len(),
        "sum_us": (h.mean() * h.len() as f64).round() as u64,
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// One gateway sender's state and figures on one shard.
#[derive(Debug, Default)]
pub(crate) struct SenderCounters {
    pub events: Cell<u64>,
    pub batches: Cell<u64>,
    pub connected: Cell<bool>,
    /// Local writes and forwards not queued because the sender was not running.
    pub dropped: Cell<u64>,
    /// Events queued for the sender since start (local writes and forwards).
    pub queued: Cell<u64>,
    /// Events the remote site reported as dead-lettered in its acks.
    pub dead_lettered: Cell<u64>,
    /// Batch round trips, send to ack.
    pub rtt: RefCell<Hist>,
    /// Events that waited longer than `alert-threshold` in the queue, and the warning pace.
    pub alerts: RefCell<strait_engine::alert::AlertLog>,
    pub state: Cell<SenderState>,
    /// Notified at every state change; the dispatcher waits on it.
    pub changed: strait_queue::shard::Notify,
    /// Set by a run-time change of the sender's options or regions: the dispatcher ends its
    /// connection and connects again with the new ones.
    pub relink: Cell<bool>,
    /// Set when the sender is destroyed: the dispatcher ends.
    pub retired: Cell<bool>,
}

/// One gateway sender's figures, summed over shards.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SenderFigures {
    pub events: u64,
    pub batches: u64,
    /// Dispatchers connected.
    pub connected: u64,
    pub dropped: u64,
    pub queued_total: u64,
    pub dead_lettered: u64,
    /// Events that waited longer than `alert-threshold`.
    pub late: u64,
    /// The state every shard reports; `None` while shards differ (a change in progress).
    pub state: Option<SenderState>,
}

/// The gateway receiver's figures on one shard.
#[derive(Debug, Default)]
pub(crate) struct ReceiverCounters {
    pub applied: Cell<u64>,
    pub duplicates: Cell<u64>,
    pub conflicts: Cell<u64>,
    pub dead_lettered: Cell<u64>,
    pub cross_shard_events: Cell<u64>,
    pub connections: Cell<u64>,
    /// Batches left unacknowledged because a queue an event had to go to (a forwarding
    /// sender's, a persistent region's log) was full: the sending site resends them.
    pub queue_refusals: Cell<u64>,
    /// From an applied event's write at its origin site to its apply here.
    pub apply_lag: RefCell<Hist>,
}

/// What INFO sums over shards.
#[derive(Clone, Debug, Default)]
pub(crate) struct WanStats {
    /// Per gateway sender, in configuration order.
    pub senders: Vec<SenderFigures>,
    pub applied: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub dead_lettered: u64,
    pub cross_shard_events: u64,
    pub connections: u64,
    pub queue_refusals: u64,
    /// Per gateway sender: batch round trips.
    pub batch_rtt: Vec<Hist>,
    pub apply_lag: Hist,
}

impl WanStats {
    pub fn add(&mut self, o: &WanStats) {
        self.apply_lag.add(&o.apply_lag);
        if self.batch_rtt.is_empty() {
            self.batch_rtt = o.batch_rtt.clone();
        } else {
            for (a, b) in self.batch_rtt.iter_mut().zip(&o.batch_rtt) {
                a.add(b);
            }
        }
        if self.senders.is_empty() {
            self.senders = o.senders.clone();
        } else {
            for (a, b) in self.senders.iter_mut().zip(&o.senders) {
                a.events += b.events;
                a.batches += b.batches;
                a.connected += b.connected;
                a.dropped += b.dropped;
                a.late += b.late;
                a.queued_total += b.queued_total;
                a.dead_lettered += b.dead_lettered;
                a.state = a.state.filter(|s| Some(*s) == b.state);
            }
        }
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.conflicts += o.conflicts;
        self.dead_lettered += o.dead_lettered;
        self.cross_shard_events += o.cross_shard_events;
        self.connections += o.connections;
        self.queue_refusals += o.queue_refusals;
    }
}

/// The WAN state of one shard.
#[derive(Debug, Default)]
pub(crate) struct WanShard {
    /// Per sender index (`crate::server::Shard::senders`).
    senders: RefCell<Vec<Rc<SenderCounters>>>,
    pub receiver: ReceiverCounters,
    /// Whether the gateway receiver runs on this shard (`STRAIT.RECEIVER START|STOP`).
    receiver_running: Cell<bool>,
    /// This shard's receiver listener between a start and `run_receiver` taking it.
    receiver_listener: RefCell<Option<TcpListener>>,
    /// Notified when the receiver starts or stops.
    receiver_changed: strait_queue::shard::Notify,
    /// Regions whose dead letters this shard has logged (once each).
    logged_regions: RefCell<HashSet<String>>,
}

impl WanShard {
    /// A sender with `manual-start` starts not running.
    pub fn new(senders: &[SenderDef]) -> WanShard {
        let w = WanShard::default();
        for d in senders {
            w.add_sender(d);
        }
        w
    }

    /// The counters of a sender added at the next index.
    pub fn add_sender(&self, def: &SenderDef) {
        self.senders.borrow_mut().push(Rc::new(SenderCounters {
            state: Cell::new(if def.manual_start {
                SenderState::NotRunning
            } else {
                SenderState::Running
            }),
            ..SenderCounters::default()
        }));
    }

    /// Sender `index`'s counters.
    pub fn sender(&self, index: usize) -> Rc<SenderCounters> {
        self.senders
            .borrow()
            .get(index)
            .cloned()
            .unwrap_or_default()
    }

    /// Ends sender `index`'s dispatcher for good (the sender was destroyed).
    pub fn retire_sender(&self, index: usize) {
        let c = self.sender(index);
        c.retired.set(true);
        c.state.set(SenderState::NotRunning);
        c.changed.notify();
    }

    /// Makes sender `index`'s dispatcher connect again with its new options and regions.
    pub fn relink_sender(&self, index: usize) {
        let c = self.sender(index);
        c.relink.set(true);
        c.changed.notify();
    }

    /// The receiver's listener at start: `Some` when it starts with the server.
    pub fn set_receiver(&self, listener: Option<TcpListener>) {
        self.receiver_running.set(listener.is_some());
        *self.receiver_listener.borrow_mut() = listener;
    }

    pub fn stats(&self) -> WanStats {
        let r = &self.receiver;
        WanStats {
            senders: self
                .senders
                .borrow()
                .iter()
                .map(|s| SenderFigures {
                    events: s.events.get(),
                    batches: s.batches.get(),
                    connected: u64::from(s.connected.get()),
                    dropped: s.dropped.get(),
                    late: s.alerts.borrow().late_total,
                    queued_total: s.queued.get(),
                    dead_lettered: s.dead_lettered.get(),
                    state: Some(s.state.get()),
                })
                .collect(),
            applied: r.applied.get(),
            duplicates: r.duplicates.get(),
            conflicts: r.conflicts.get(),
            dead_lettered: r.dead_lettered.get(),
            cross_shard_events: r.cross_shard_events.get(),
            connections: r.connections.get(),
            queue_refusals: r.queue_refusals.get(),
            batch_rtt: self
                .senders
                .borrow()
                .iter()
                .map(|s| s.rtt.borrow().clone())
                .collect(),
            apply_lag: r.apply_lag.borrow().clone(),
        }
    }
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps `ms`, cut short when the server stops or the sender's state changes.
async fn sleep_or_stop(ms: u64, stop: &AtomicBool, counters: &SenderCounters) {
    future::or(
        future::or(
            glommio::timer::sleep(Duration::from_millis(ms)),
            wait_stop(stop),
        ),
        counters.changed.notified(),
    )
    .await;
}

/// Waits until the sender is started (running or paused); false when the server stops or
/// the sender is destroyed first.
async fn wait_started(counters: &SenderCounters, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) || counters.retired.get() {
            return false;
        }
        if counters.state.get() != SenderState::NotRunning {
            return true;
        }
        future::or(counters.changed.notified(), wait_stop(stop)).await;
    }
}

/// Runs a `STRAIT.RECEIVER` operation on this shard (docs/wan.md "Receiver operations").
pub(crate) fn receiver_op(shard: &Shard, op: Option<ReceiverOp>) -> OpReply {
    let config = shard.config();
    let (Some(def), Some(port)) = (config.receiver.as_ref(), shard.receiver_port.get()) else {
        return OpReply::Error("ERR this server has no gateway receiver".into());
    };
    let w = &shard.wan;
    match op {
        None => {}
        Some(ReceiverOp::Start) if !w.receiver_running.get() => {
            let at = SocketAddr::new(def.bind_address, port);
            match TcpListener::bind(at) {
                Ok(l) => {
                    *w.receiver_listener.borrow_mut() = Some(l);
                    w.receiver_running.set(true);
                    shard.receiver_advertised.store(true, Ordering::SeqCst);
                    w.receiver_changed.notify();
                    tracing::info!(
                        shard = shard.id.0,
                        "gateway receiver (shard {}): started on {at}",
                        shard.id.0
                    );
                }
                Err(e) => {
                    return OpReply::Error(format!(
                        "ERR gateway receiver: cannot listen on {at}: {e}"
                    ));
                }
            }
        }
        Some(ReceiverOp::Stop) => stop_receiver(shard),
        Some(_) => {}
    }
    OpReply::Receiver(w.receiver_running.get())
}

/// Stops the receiver on this shard: its listener and connections close.
pub(crate) fn stop_receiver(shard: &Shard) {
    let w = &shard.wan;
    if !w.receiver_running.get() {
        return;
    }
    w.receiver_running.set(false);
    shard.receiver_advertised.store(false, Ordering::SeqCst);
    w.receiver_changed.notify();
    tracing::info!(
        shard = shard.id.0,
        "gateway receiver (shard {}): stopped",
        shard.id.0
    );
}

/// Runs `STRAIT.SENDER` on this shard for sender `index`: applies `op` (for START CLEAN,
/// after discarding everything queued for the sender here) and answers the new state, or
/// answers the state when `op` is `None`.
/// Waits until the receiver on this shard stops (or starts), or the server stops.
async fn receiver_change_or_stop(shard: &Shard, stop: &AtomicBool) {
    future::or(shard.wan.receiver_changed.notified(), wait_stop(stop)).await;
}

pub(crate) fn sender_op(shard: &Shard, index: usize, op: Option<SenderOp>) -> OpReply {
    let Some(sender) = shard.sender(index).filter(|s| s.live.get()) else {
        return OpReply::Error("ERR the gateway sender was destroyed".into());
    };
    let counters = shard.wan.sender(index);
    let current = counters.state.get();
    let Some(op) = op else {
        return OpReply::Sender(current);
    };
    let next = match current.after(op) {
        Ok(next) => next,
        Err(why) => {
            return OpReply::Error(format!("ERR gateway sender '{}' {why}", sender.id));
        }
    };
    if op == (SenderOp::Start { clean: true }) {
        let queue = sender.queue.borrow().clone();
        let Some(queue) = queue else {
            return OpReply::Error("ERR the server is stopping".into());
        };
        match queue.with(|q| strait_engine::sender::discard_all(q, |_, _| {})) {
            Ok(n) => tracing::info!(
                sender = %sender.id,
                shard = shard.id.0,
                "gateway sender `{}` (shard {}): START CLEAN discarded {n} queued events",
                sender.id, shard.id.0
            ),
            Err(e) => {
                return OpReply::Error(format!(
                    "ERR gateway sender '{}': cleaning its queues: {e}",
                    sender.id
                ));
            }
        }
    }
    counters.state.set(next);
    counters.changed.notify();
    OpReply::Sender(next)
}

// ---- ports and registration ------------------------------------------------------------

/// Why the receiver's ports could not be chosen.
#[derive(Debug, thiserror::Error)]
#[error(
    "gateway receiver: the port range {start}..={end} on {bind} has {found} free ports, {needed} \
     are needed (one per shard)"
)]
pub struct PortRangeError {
    pub bind: IpAddr,
    pub start: u16,
    pub end: u16,
    pub found: usize,
    pub needed: usize,
}

/// One free port per shard from `start-port..=end-port`: from a random start, walking upward
/// and wrapping. Each is proved free with an exclusive std bind (glommio's own bind sets
/// SO_REUSEPORT and cannot tell), held until all are found, then released for the shards.
pub fn pick_receiver_ports(def: &ReceiverDef, shards: usize) -> Result<Vec<u16>, PortRangeError> {
    let (start, end) = (def.start_port, def.end_port);
    let span = u32::from(end.saturating_sub(start)) + 1;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let first = seed % span;
    let mut held = Vec::new();
    for i in 0..span {
        if held.len() == shards {
            break;
        }
        let port = start + ((first + i) % span) as u16;
        if let Ok(probe) = std::net::TcpListener::bind(SocketAddr::new(def.bind_address, port)) {
            held.push((port, probe));
        }
    }
    if held.len() < shards {
        return Err(PortRangeError {
            bind: def.bind_address,
            start,
            end,
            found: held.len(),
            needed: shards,
        });
    }
    Ok(held.into_iter().map(|(port, _probe)| port).collect())
}

/// The receiver endpoints to advertise: each shard's port with the buckets it owns.
pub fn advertised_receivers(
    def: &ReceiverDef,
    ports: &[u16],
    table: &BucketTable,
) -> Vec<strait_net::locator::ReceiverEndpoint> {
    let host =
        crate::locator::advertised_host(def.hostname_for_senders.as_deref(), def.bind_address);
    ports
        .iter()
        .enumerate()
        .map(|(shard, &port)| strait_net::locator::ReceiverEndpoint {
            host: host.clone(),
            port,
            buckets: table
                .buckets_of(ShardId(shard as u16))
                .map(|b| b.0)
                .collect(),
        })
        .collect()
}

/// The bucket table receivers and dispatchers describe themselves with: the largest
/// `total-num-buckets` of the regions involved (of all regions when none is).
pub fn wan_table(totals: impl Iterator<Item = u16>, shards: u16) -> Option<BucketTable> {
    let total = totals
        .max()
        .unwrap_or(strait_engine::bucket::TOTAL_BUCKETS_DEFAULT);
    BucketTable::new(total, shards).ok()
}

// ---- receiver ----------------------------------------------------------------------------

/// Accepts sender connections on this shard's receiver port while the receiver runs, until
/// the server stops; a stopped receiver does not listen.
pub(crate) async fn run_receiver(shard: Rc<Shard>, stop: Arc<AtomicBool>) {
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let taken = shard.wan.receiver_listener.borrow_mut().take();
        let Some(listener) = taken else {
            receiver_change_or_stop(&shard, &stop).await;
            continue;
        };
        accept_senders(&shard, &listener, &stop).await;
    }
}

/// Bytes of batches a dispatcher gathers before it writes them out (a single batch larger
/// than this goes out alone).
pub const WAN_WRITE_BYTES_MAX: usize = 1 << 20;

/// Sets a WAN connection's kernel send and receive buffers to `bytes` (`socket-buffer-size`);
/// 0 leaves them to the kernel's autotuning. The kernel caps a request at
/// `net.core.wmem_max` / `rmem_max` (then doubles it, for its own bookkeeping): a smaller
/// result than asked is logged with the sysctl to raise. Returns the (send, receive) sizes the
/// kernel reports afterwards.
pub(crate) fn set_socket_buffers(
    stream: &TcpStream,
    bytes: u32,
    what: &str,
) -> Option<(usize, usize)> {
    if bytes == 0 {
        return None;
    }
    let socket = socket2::SockRef::from(stream);
    let wanted = bytes as usize;
    let set = socket
        .set_send_buffer_size(wanted)
        .and_then(|()| socket.set_recv_buffer_size(wanted))
        .and_then(|()| Ok((socket.send_buffer_size()?, socket.recv_buffer_size()?)));
    match set {
        Ok((send, recv)) => {
            if send < wanted || recv < wanted {
                tracing::warn!(
                    "{what}: socket-buffer-size {wanted} is capped by the kernel to {send} bytes (send) and {recv} (receive); raise net.core.wmem_max and net.core.rmem_max (sysctl) to allow it"
                );
            }
            Some((send, recv))
        }
        Err(e) => {
            tracing::warn!("{what}: cannot set socket-buffer-size {wanted}: {e}");
            None
        }
    }
}

/// Accepts on `listener` until the receiver stops on this shard or the server stops.
async fn accept_senders(shard: &Rc<Shard>, listener: &TcpListener, stop: &Arc<AtomicBool>) {
    loop {
        if !shard.wan.receiver_running.get() {
            return;
        }
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            receiver_change_or_stop(shard, stop).await;
            None
        })
        .await;
        match accepted {
            Some(Ok(stream)) => {
                // Acks are small writes: without this, Nagle holds an ack back until the
                // sender's delayed ACK of the previous one (up to 40 ms), and a full window
                // stalls the sender that long.
                let _ = stream.set_nodelay(true);
                if let Some(def) = &shard.config().receiver {
                    let what = format!("gateway receiver (shard {})", shard.id.0);
                    set_socket_buffers(&stream, def.socket_buffer_size, &what);
                }
                let (shard, stop) = (shard.clone(), stop.clone());
                shard.wan_connections.set(shard.wan_connections.get() + 1);
                bump(&shard.wan.receiver.connections, 1);
                glommio::spawn_local(async move {
                    let peer = stream
                        .peer_addr()
                        .map_or_else(|_| "?".to_string(), |a| a.to_string());
                    if let Err(e) = serve_sender(&shard, stream, &stop).await {
                        tracing::warn!(
                            shard = shard.id.0,
                            peer = %peer,
                            "gateway receiver (shard {}): connection from {peer}: {e}",
                            shard.id.0
                        );
                    }
                    let c = &shard.wan.receiver.connections;
                    c.set(c.get().saturating_sub(1));
                    shard.wan_connections.set(shard.wan_connections.get() - 1);
                })
                .detach();
            }
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await,
            // The receiver stopped (seen at the top of the loop) or the server is stopping.
            None if stop.load(Ordering::SeqCst) => return,
            None => {}
        }
    }
}

/// What a connection's hello said, resolved against this site's regions.
struct Peer {
    site: SiteId,
    /// Sender region id → (its name, the local region index of that name).
    regions: HashMap<u16, (String, Option<u16>)>,
}

impl Peer {
    /// The local region of the sender's region `id`: as resolved at the hello, or by name
    /// now when the region was created here since (or destroyed and created again).
    fn local_region(&self, shard: &Shard, id: u16) -> Option<u16> {
        let (name, local) = self.regions.get(&id)?;
        match local {
            Some(i) if shard.region(*i).is_some() => Some(*i),
            _ => shard.region_named(name.as_bytes()),
        }
    }
}

async fn serve_sender(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    stop: &AtomicBool,
) -> Result<(), String> {
    let site_config = shard.config();
    let Some(def) = site_config.receiver.as_ref() else {
        return Ok(());
    };
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as u64;
    let mut config = ReceiverConfig::new(shard.site, site_config.server.name.clone());
    config.maximum_time_between_pings_ms = def.maximum_time_between_pings_ms;
    let mut conn = ReceiverConn::new(config, now());
    let mut buf = vec![0u8; WAN_READ_BYTES];
    let mut filled = 0;
    let mut peer: Option<Peer> = None;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut at = 0;
        loop {
            let handled = conn.handle_bytes(&buf[at..filled], now());
            at += handled.consumed;
            let last = handled.consumed == 0;
            let io = (&mut stream, &mut out, last);
            if let Some(end) = flush_receiver(shard, &mut conn, io, &mut peer).await? {
                return end;
            }
            let Some(batch) = handled.batch else {
                if last {
                    break;
                }
                continue;
            };
            let Some(p) = peer.as_ref() else {
                return Err("a batch arrived before the hello".into());
            };
            let outcome = apply_batch(shard, p, &batch).await?;
            conn.handle_applied(batch.id, &outcome)
                .map_err(|e| format!("acknowledging batch {}: {e}", batch.id))?;
            let io = (&mut stream, &mut out, false);
            if let Some(end) = flush_receiver(shard, &mut conn, io, &mut peer).await? {
                return end;
            }
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if filled == buf.len() {
            if buf.len() >= WAN_BUFFER_BYTES_MAX {
                return Err("a frame does not fit the read buffer".into());
            }
            buf.resize((buf.len() * 2).min(WAN_BUFFER_BYTES_MAX), 0);
        }
        let wait = conn
            .next_deadline_ms()
            .map_or(STOP_POLL_MS, |d| d.saturating_sub(now()).max(1));
        let read = future::or(
            async { Some(stream.read(&mut buf[filled..]).await) },
            async {
                future::or(
                    glommio::timer::sleep(Duration::from_millis(wait)),
                    receiver_change_or_stop(shard, stop),
                )
                .await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(0)) => return Ok(()),
            Some(Ok(n)) => filled += n,
            Some(Err(e)) => return Err(e.to_string()),
            None if stop.load(Ordering::SeqCst) || !shard.wan.receiver_running.get() => {
                return Ok(());
            }
            None => conn.handle_timer(now()),
        }
    }
}

/// Writes what the connection wants written; `Some` when it is over.
///
/// What is to be transmitted (acks, pongs) is gathered in `out` and written only when
/// `write` is set, so the acks of every batch that came in one read leave in one write; the
/// caller writes before it waits for more bytes.
async fn flush_receiver(
    shard: &Shard,
    conn: &mut ReceiverConn,
    (stream, out, write): (&mut TcpStream, &mut Vec<u8>, bool),
    peer: &mut Option<Peer>,
) -> Result<Option<Result<(), String>>, String> {
    while let Some(event) = conn.poll_event() {
        match event {
            ReceiverEvent::Transmit(bytes) => out.extend_from_slice(&bytes),
            ReceiverEvent::Connected(info) => {
                let regions = info
                    .regions
                    .iter()
                    .map(|r| {
                        let local = shard.region_named(r.name.as_bytes());
                        if let Some(slot) = local.and_then(|i| shard.region(i)) {
                            let here = slot.rc.total_buckets;
                            if u32::from(here) != r.total_num_buckets {
                                tracing::warn!(
                                    region = %r.name,
                                    site = info.sender_site.0,
                                    "gateway receiver: region `{}` has {} buckets at site {} and {here} here: forwarded events keep their order only with equal bucket counts",
                                    r.name, r.total_num_buckets, info.sender_site
                                );
                            }
                        }
                        (r.id.0, (r.name.clone(), local))
                    })
                    .collect();
                tracing::info!(
                    shard = shard.id.0,
                    site = info.sender_site.0,
                    "gateway receiver (shard {}): sender {} of member {} at site {} connected",
                    shard.id.0,
                    info.sender_id,
                    info.member,
                    info.sender_site
                );
                *peer = Some(Peer {
                    site: info.sender_site,
                    regions,
                });
            }
            ReceiverEvent::Closed(e) => {
                while let Some(ReceiverEvent::Transmit(bytes)) = conn.poll_event() {
                    out.extend_from_slice(&bytes);
                }
                let _ = stream.write_all(out).await;
                out.clear();
                return Ok(Some(Err(e.to_string())));
            }
        }
    }
    if write && !out.is_empty() {
        stream.write_all(out).await.map_err(|e| e.to_string())?;
        out.clear();
    }
    Ok(None)
}

/// One record's outcome, as the shard that owns it reports it.
pub(crate) type RecordOutcome = ApplyOutcome;

/// Applies a batch: each record on the shard owning its bucket (one request per other
/// shard), dead letters written to their logs, then the ack's outcome.
async fn apply_batch(
    shard: &Rc<Shard>,
    peer: &Peer,
    batch: &BatchIn<'_>,
) -> Result<AckOutcome, String> {
    let records: Vec<Record<'_>> = batch.records().collect();
    let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; records.len()];
    let mut local: Vec<(usize, u16, Record<'_>)> = Vec::new();
    let mut remote: Vec<Vec<(usize, u16, Bytes)>> = (0..shard.shards).map(|_| Vec::new()).collect();
    for (i, r) in records.iter().enumerate() {
        match peer.local_region(shard, r.region().0) {
            Some(region) => {
                let region = &region;
                let owner = shard.owner(*region, r.key());
                if owner == usize::from(shard.id.0) {
                    local.push((i, *region, *r));
                } else {
                    remote[owner].push((i, *region, Bytes::copy_from_slice(r.bytes())));
                }
            }
            _ => {
                outcomes[i] = Some(ApplyOutcome::DeadLetter(
                    strait_engine::apply::DeadLetterCause::UnknownRegion { region: r.region() },
                ))
            }
        }
    }
    let mut tasks = Vec::new();
    for (to, items) in remote.into_iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        bump(&shard.wan.receiver.cross_shard_events, items.len() as u64);
        let indexes: Vec<usize> = items.iter().map(|(i, _, _)| *i).collect();
        let op = ShardOp::ApplyRemote {
            replay: false,
            records: items
                .into_iter()
                .map(|(_, region, b)| (region, b))
                .collect(),
        };
        let s = shard.clone();
        tasks.push((
            to,
            indexes,
            glommio::spawn_local(async move { s.remote(to, vec![op]).await }),
        ));
    }
    let here: Vec<(u16, Record<'_>)> = local.iter().map(|(_, g, r)| (*g, *r)).collect();
    let results = apply_here(shard, &here, false).await?;
    for ((i, _, _), o) in local.iter().zip(results) {
        outcomes[*i] = Some(o);
    }
    for (to, indexes, task) in tasks {
        let replies = task.await;
        // Events another shard could not take are not acknowledged: the connection ends and
        // the sender resends them.
        let list = match replies.into_iter().next() {
            Some(OpReply::Applied(list)) => list,
            Some(OpReply::Error(e)) => return Err(format!("shard {to}: {e}")),
            _ => return Err("another shard did not answer".into()),
        };
        for (i, o) in indexes.into_iter().zip(list) {
            outcomes[i] = Some(o);
        }
    }
    let mut ack = AckOutcome::default();
    let mut letters: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let time = wall_ms();
    let r = &shard.wan.receiver;
    for (i, (record, outcome)) in records.iter().zip(outcomes).enumerate() {
        match outcome {
            Some(ApplyOutcome::Applied { .. }) => ack.applied += 1,
            Some(ApplyOutcome::Duplicate(_)) => ack.duplicates += 1,
            Some(ApplyOutcome::Rejected { .. }) => ack.conflicts += 1,
            Some(ApplyOutcome::DeadLetter(cause)) => {
                let reason = cause.reason();
                let name = peer.regions.get(&record.region().0).map_or_else(
                    || format!("region-{}", record.region().0),
                    |(n, _)| n.clone(),
                );
                let text = cause.to_string();
                letters
                    .entry(name)
                    .or_default()
                    .extend_from_slice(&encode_entry(time, peer.site, reason, &text, record));
                ack.dead_letters.push(wire::DeadLetter {
                    index: i as u32,
                    reason,
                    text: text.into(),
                });
            }
            None => {}
        }
    }
    // Applied, duplicate and conflicting events are counted by the shard that judged them
    // (`apply_here`), so that a batch cut short by a refusal still counts what it applied.
    bump(&r.dead_lettered, ack.dead_letters.len() as u64);
    if !letters.is_empty() {
        for region in letters.keys() {
            if shard.wan.logged_regions.borrow_mut().insert(region.clone()) {
                tracing::warn!(
                    region = %region,
                    site = peer.site.0,
                    "gateway receiver: events of region `{region}` from site {} cannot be applied here; they are kept in {}",
                    peer.site,
                    dead_letter_path(&shard.config().server.directory, region).display()
                );
            }
        }
        let dir = shard.config().server.directory.clone();
        let written = executor()
            .spawn_blocking(move || append_dead_letters(&dir, &letters))
            .await;
        // Unwritten, they are not acknowledged: the sender resends them.
        written.map_err(|e| format!("writing dead letters: {e}"))?;
    }
    Ok(ack)
}

/// Applies records of this shard's buckets (their local region index given), forwards the
/// applied ones to this site's senders of the region, and waits for those queues'
/// durability, as a local write does.
///
/// Like a local write, a record changes nothing unless every queue it goes to (each
/// forwarding sender's, and the region's log when the region is persistent) has room: the
/// queues are asked first, then the record is applied and appended everywhere with no await
/// in between. When a queue refuses (its memory budget and its disk are both full), the
/// records before it stay applied and the error is returned: the batch is not acknowledged,
/// the sending site keeps the events in its queue and resends them, and the resend finds the
/// applied ones to be duplicates. Backpressure, not loss.
pub(crate) async fn apply_here(
    shard: &Shard,
    records: &[(u16, Record<'_>)],
    replay: bool,
) -> Result<Vec<RecordOutcome>, String> {
    let mut waits: HashMap<(usize, QueueId), (Rc<ShardQueue>, strait_queue::ids::Seq)> =
        HashMap::new();
    let mut out = Vec::with_capacity(records.len());
    for (region, record) in records {
        let Some(slot) = shard.region(*region) else {
            out.push(ApplyOutcome::DeadLetter(
                strait_engine::apply::DeadLetterCause::UnknownRegion {
                    region: RegionId(*region),
                },
            ));
            continue;
        };
        if shard.stores.borrow().get(usize::from(*region)).is_none() {
            out.push(ApplyOutcome::DeadLetter(
                strait_engine::apply::DeadLetterCause::UnknownRegion {
                    region: RegionId(*region),
                },
            ));
            continue;
        }
        let plan = ForwardPlan::new(shard, &slot, *region, record);
        loop {
            match plan.check_room(shard, *region, record) {
                Room::Ready => break,
                Room::Wait(queue) => queue.wait_progress().await,
                Room::Refused(e) => {
                    bump(&shard.wan.receiver.queue_refusals, 1);
                    return Err(e);
                }
            }
        }
        // No await from the room check to the appends.
        let outcome = {
            let mut stores = shard.stores.borrow_mut();
            let store = &mut stores[usize::from(*region)];
            if replay {
                replay_record(store, record, shard.site)
            } else {
                apply_record(store, record, shard.site)
            }
        };
        if outcome.forwards() {
            plan.append(shard, *region, record, &mut waits)?;
        }
        if !replay {
            let r = &shard.wan.receiver;
            match outcome {
                ApplyOutcome::Applied { .. } => {
                    bump(&r.applied, 1);
                    let lag = wall_us().saturating_sub(record.version().timestamp_us);
                    r.apply_lag.borrow_mut().record(lag);
                }
                ApplyOutcome::Duplicate(_) => bump(&r.duplicates, 1),
                ApplyOutcome::Rejected { .. } => bump(&r.conflicts, 1),
                ApplyOutcome::DeadLetter(_) => {}
            }
        }
        out.push(outcome);
    }
    for ((_, qid), (queue, seq)) in waits {
        queue
            .wait_durable(qid, seq)
            .await
            .map_err(|e| format!("a forwarded event is not durable: {e}"))?;
    }
    Ok(out)
}

/// Where an applied record goes on this shard: the region's log (when persistent) and the
/// senders the loop rule picks, with the recipients the forwarded copies carry.
struct ForwardPlan {
    /// The region's log, when the region is persistent.
    log: Option<Rc<ShardQueue>>,
    /// (sender index, its queue on this shard, the queue of the record's bucket).
    senders: Vec<(usize, Rc<ShardQueue>, QueueId)>,
    /// Chosen senders that are not running: the event is counted as dropped for them, as a
    /// local write's is.
    stopped: Vec<usize>,
    recipients: Vec<SiteId>,
    /// The record's bucket in this site's table.
    bucket: BucketId,
}

/// What [`ForwardPlan::check_room`] found.
enum Room {
    Ready,
    /// A queue is making a segment; ask again once it has.
    Wait(Rc<ShardQueue>),
    /// A queue refused for good (its disk is full or failing): the error to report.
    Refused(String),
}

impl ForwardPlan {
    fn new(
        shard: &Shard,
        slot: &crate::server::RegionSlot,
        region: u16,
        record: &Record<'_>,
    ) -> ForwardPlan {
        let attached = slot.attached.borrow().clone();
        let (attached, targets) = &*attached;
        let candidates: Vec<(SenderIndex, SiteId)> = attached
            .iter()
            .filter_map(|&i| {
                let s = shard.sender(i)?;
                let site = s.def.borrow().remote_distributed_system_id;
                Some((SenderIndex(i), site))
            })
            .collect();
        let (chosen, recipients) = forward_targets(shard.site, record, &candidates, targets);
        let bucket: BucketId = slot.table.bucket_of(record.key());
        let mut plan = ForwardPlan {
            log: shard
                .logs
                .borrow()
                .get(usize::from(region))
                .cloned()
                .flatten(),
            senders: Vec::new(),
            stopped: Vec::new(),
            recipients,
            bucket,
        };
        for SenderIndex(i) in chosen {
            let Some(s) = shard.sender(i) else { continue };
            if shard.wan.sender(i).state.get() == SenderState::NotRunning {
                plan.stopped.push(i);
                continue;
            }
            // A sender's queue is gone only while the server stops; its events are not
            // acknowledged then, and the sending site resends them to the next start.
            if let Some(queue) = s.queue.borrow().clone() {
                plan.senders.push((i, queue, s.queue_id(bucket)));
            }
        }
        plan
    }

    /// The record as the region's log keeps it: its own bucket and recipients.
    fn log_event<'r>(region: u16, record: &Record<'r>, recipients: &'r [SiteId]) -> Event<'r> {
        strait_engine::receive::forward_event(record, RegionId(region), record.bucket(), recipients)
    }

    /// The record as a local sender forwards it (the step the simulator runs).
    fn forward_event<'r>(&'r self, region: u16, record: &Record<'r>) -> Event<'r> {
        strait_engine::receive::forward_event(
            record,
            RegionId(region),
            self.bucket,
            &self.recipients,
        )
    }

    fn check_room(&self, shard: &Shard, region: u16, record: &Record<'_>) -> Room {
        let check =
            |queue: &Rc<ShardQueue>, qid: QueueId, event: &Event<'_>, what: String| match queue
                .with(|q| q.check_room(qid, event))
            {
                Ok(()) => None,
                Err(strait_queue::queue::AppendError::WouldBlock) => {
                    Some(Room::Wait(queue.clone()))
                }
                Err(e) => Some(Room::Refused(format!("{what}: {e}"))),
            };
        if let Some(log) = &self.log {
            let original: Vec<SiteId> = record.recipients().collect();
            let event = Self::log_event(region, record, &original);
            let what = format!(
                "region `{}`: its log",
                shard
                    .region(region)
                    .map_or(String::new(), |s| s.rc.name.clone())
            );
            if let Some(room) = check(log, crate::region_log::LOG_QUEUE, &event, what) {
                return room;
            }
        }
        let event = self.forward_event(region, record);
        for (i, queue, qid) in &self.senders {
            let what = format!(
                "forwarding to gateway sender `{}`",
                shard.sender(*i).map_or(String::new(), |s| s.id.clone())
            );
            if let Some(room) = check(queue, *qid, &event, what) {
                return room;
            }
        }
        Room::Ready
    }

    /// Appends the applied record everywhere the plan says; [`ForwardPlan::check_room`]
    /// answered `Ready` with no await since.
    fn append(
        &self,
        shard: &Shard,
        region: u16,
        record: &Record<'_>,
        waits: &mut HashMap<(usize, QueueId), (Rc<ShardQueue>, strait_queue::ids::Seq)>,
    ) -> Result<(), String> {
        let mut push = |queue: &Rc<ShardQueue>, qid: QueueId, event: &Event<'_>| {
            let seq = queue
                .append_now(qid, event)
                .map_err(|e| format!("a queue refused an event it had room for: {e}"))?;
            let e = waits
                .entry((Rc::as_ptr(queue) as usize, qid))
                .or_insert((queue.clone(), seq));
            e.1 = e.1.max(seq);
            Ok::<(), String>(())
        };
        if let Some(log) = &self.log {
            let original: Vec<SiteId> = record.recipients().collect();
            push(
                log,
                crate::region_log::LOG_QUEUE,
                &Self::log_event(region, record, &original),
            )?;
        }
        let event = self.forward_event(region, record);
        for (i, queue, qid) in &self.senders {
            push(queue, *qid, &event)?;
            bump(&shard.wan.sender(*i).queued, 1);
        }
        for &i in &self.stopped {
            bump(&shard.wan.sender(i).dropped, 1);
        }
        Ok(())
    }
}

/// Runs a [`ShardOp::ApplyRemote`] on the shard owning the records.
pub(crate) async fn apply_op(shard: &Shard, records: Vec<(u16, Bytes)>, replay: bool) -> OpReply {
    let mut decoded = Vec::with_capacity(records.len());
    for (region, bytes) in &records {
        match record::decode(bytes) {
            Ok(r) => decoded.push((*region, r)),
            Err(e) => return OpReply::Error(format!("ERR a record could not be read: {e}")),
        }
    }
    match apply_here(shard, &decoded, replay).await {
        Ok(list) => OpReply::Applied(list),
        Err(e) => OpReply::Error(format!("ERR {e}")),
    }
}

// ---- dead-letter files -------------------------------------------------------------------

/// A region name as a file name: characters outside `[A-Za-z0-9_.-]` (and a leading dot)
/// become `%XX`, so a name from another site cannot leave the directory.
fn file_name(region: &str) -> String {
    let mut s = String::new();
    for (i, b) in region.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn region_of_file(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".log")?;
    let mut out = Vec::new();
    let b = stem.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = stem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `<directory>/dead-letters/<region>.log`.
pub fn dead_letter_path(directory: &Path, region: &str) -> PathBuf {
    directory
        .join(DEAD_LETTER_DIR)
        .join(format!("{}.log", file_name(region)))
}

fn append_dead_letters(dir: &Path, letters: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join(DEAD_LETTER_DIR))?;
    for (region, entries) in letters {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dead_letter_path(dir, region))?;
        // One write: concurrent shards' appends do not interleave inside an entry.
        f.write_all(entries)?;
        f.sync_data()?;
    }
    Ok(())
}

/// Every dead-letter log: region name and bytes.
fn read_logs(dir: &Path, only: Option<&str>) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut logs = Vec::new();
    let read = match std::fs::read_dir(dir.join(DEAD_LETTER_DIR)) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(logs),
        Err(e) => return Err(e),
    };
    for entry in read {
        let entry = entry?;
        let Some(region) = entry.file_name().to_str().and_then(region_of_file) else {
            continue;
        };
        if only.is_some_and(|o| o != region) {
            continue;
        }
        logs.push((region, std::fs::read(entry.path())?));
    }
    logs.sort();
    Ok(logs)
}

/// Replaces a log by `kept` plus whatever was appended after the first `read_len` bytes were
/// read (dead letters that arrived during the replay).
fn rewrite_log(path: &Path, read_len: usize, kept: &[u8]) -> std::io::Result<()> {
    let now = std::fs::read(path)?;
    let mut bytes = kept.to_vec();
    bytes.extend_from_slice(now.get(read_len..).unwrap_or_default());
    if bytes.is_empty() {
        return std::fs::remove_file(path);
    }
    let tmp = path.with_extension("log.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// `STRAIT.DEADLETTERS LIST | REPLAY [region]`: the reply's text.
pub(crate) async fn dead_letters_command(
    shard: &Rc<Shard>,
    cmd: DeadLettersCommand,
) -> Result<String, String> {
    let dir = shard.config().server.directory.clone();
    let only = match &cmd {
        DeadLettersCommand::List => None,
        DeadLettersCommand::Replay(r) => r.clone(),
    };
    let logs = executor()
        .spawn_blocking(move || read_logs(&dir, only.as_deref()))
        .await
        .map_err(|e| format!("ERR reading the dead-letter logs: {e}"))?;
    let mut text = String::new();
    match cmd {
        DeadLettersCommand::List => {
            for (region, bytes) in &logs {
                let log = DeadLetterLog::read(bytes);
                text.push_str(&format!("region={region} count={}\n", log.entries.len()));
                for e in log.entries.iter().take(DEAD_LETTERS_LISTED_MAX) {
                    text.push_str(&format!(
                        "  site={} reason={} key={} time_ms={} text={}\n",
                        e.sending_site,
                        e.reason,
                        String::from_utf8_lossy(e.record.key()),
                        e.time_ms,
                        e.text
                    ));
                }
            }
        }
        DeadLettersCommand::Replay(_) => {
            for (region, bytes) in &logs {
                let (replayed, kept) = replay_log(shard, region, bytes).await?;
                text.push_str(&format!(
                    "region={region} replayed={replayed} kept={kept}\n"
                ));
            }
        }
    }
    Ok(text)
}

/// Replays one region's log; returns (replayed, kept).
async fn replay_log(
    shard: &Rc<Shard>,
    region: &str,
    bytes: &[u8],
) -> Result<(usize, usize), String> {
    let log = DeadLetterLog::read(bytes);
    let Some(local) = shard.region_named(region.as_bytes()) else {
        return Ok((0, log.entries.len()));
    };
    let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; log.entries.len()];
    let mut per_shard: Vec<Vec<(usize, Bytes)>> = (0..shard.shards).map(|_| Vec::new()).collect();
    for (i, e) in log.entries.iter().enumerate() {
        per_shard[shard.owner(local, e.record.key())]
            .push((i, Bytes::copy_from_slice(e.record.bytes())));
    }
    for (to, items) in per_shard.into_iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        let indexes: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
        let records = items.into_iter().map(|(_, b)| (local, b)).collect();
        let reply = if to == usize::from(shard.id.0) {
            apply_op(shard, records, true).await
        } else {
            shard
                .remote(
                    to,
                    vec![ShardOp::ApplyRemote {
                        replay: true,
                        records,
                    }],
                )
                .await
                .into_iter()
                .next()
                .unwrap_or(OpReply::Error("ERR no reply".into()))
        };
        match reply {
            OpReply::Applied(list) => {
                for (i, o) in indexes.into_iter().zip(list) {
                    outcomes[i] = Some(o);
                }
            }
            OpReply::Error(e) => return Err(e),
            _ => return Err("ERR internal: unexpected reply".into()),
        }
    }
    let mut next = outcomes.into_iter();
    let replay = log.replay(|_| {
        next.next().flatten().unwrap_or(ApplyOutcome::DeadLetter(
            strait_engine::apply::DeadLetterCause::UnknownRegion {
                region: RegionId(local),
            },
        ))
    });
    let kept = replay.kept_log();
    let path = dead_letter_path(&shard.config().server.directory, region);
    let read_len = bytes.len();
    executor()
        .spawn_blocking(move || rewrite_log(&path, read_len, &kept))
        .await
        .map_err(|e| format!("ERR rewriting the dead-letter log: {e}"))?;
    Ok((replay.replayed.len(), replay.kept.len()))
}

// ---- dispatcher --------------------------------------------------------------------------

/// How a connection ended.
enum LinkEnd {
    Stopped,
    /// The sender was stopped (`STRAIT.SENDER id STOP`) or destroyed.
    Halted,
    /// The sender's options or regions changed at run time.
    Relink,
    Refused(String),
    Failed {
        error: String,
        /// Whether a batch was acknowledged on the connection.
        progressed: bool,
    },
}

/// One gateway sender's dispatcher on this shard: while the sender is started, finds the
/// remote site's receivers, connects, sends the queues' events (none while paused), and
/// reconnects after any failure; a stop disconnects it until the next start. Runs until the
/// server stops.
pub(crate) async fn run_dispatcher(shard: Rc<Shard>, index: usize, stop: Arc<AtomicBool>) {
    let Some(sender) = shard.sender(index) else {
        return;
    };
    let Some(queue) = sender.queue.borrow().clone() else {
        return;
    };
    let site_config = shard.config();
    let mut locators = site_config.server.locators.clone();
    if let Some(own) = &site_config.server.start_locator
        && !locators.contains(own)
    {
        locators.push(own.clone());
    }
    let mut def: SenderDef = sender.def.borrow().clone();
    if locators.is_empty() {
        tracing::warn!(
            sender = %def.id,
            shard = shard.id.0,
            "gateway sender `{}` (shard {}): no locator is configured (`locators` or `start-locator`), so the receivers of site {} cannot be found; the sender only queues",
            def.id, shard.id.0, def.remote_distributed_system_id
        );
        return;
    }
    let mut lookup = Some(RemoteSiteLookup::new(
        &locators,
        def.remote_distributed_system_id,
        LOOKUP_RETRY_MS,
    ));
    // The sender's options and regions, read again after a run-time change (`relink`).
    let link_config = |def: &SenderDef| {
        let regions: Vec<RegionSpec> = shard
            .regions()
            .iter()
            .enumerate()
            // Destroyed regions too: events queued before the destroy still name them, and
            // reach the remote site's region of that name.
            .filter(|(_, slot)| {
                slot.attached.borrow().0.contains(&index)
                    || slot.state.get() == crate::server::RegionState::Destroyed
            })
            .map(|(i, slot)| RegionSpec {
                id: RegionId(i as u16),
                name: slot.rc.name.clone(),
                total_num_buckets: u32::from(slot.rc.total_buckets),
            })
            .collect();
        let mine: HashSet<u16> = wan_table(
            regions.iter().map(|r| r.total_num_buckets as u16),
            shard.shards as u16,
        )
        .map(|t| t.buckets_of(shard.id).map(|b| b.0).collect())
        .unwrap_or_default();
        let mut config = SenderConfig::new(
            shard.site,
            def.remote_distributed_system_id,
            site_config.server.name.clone(),
            def.id.clone(),
            regions,
        );
        if def.socket_read_timeout_ms > 0 {
            config.ack_timeout_ms = u64::from(def.socket_read_timeout_ms);
        }
        config.inflight_batches_max = usize::from(def.batches_in_flight);
        // The window holds `batches-in-flight` full batches' worth of events: a parallel
        // sender's batches each carry one bucket queue's records and are small, and a window
        // of whole batches held too few events to fill a long link (docs/benchmarks.md).
        config.inflight_events_max =
            Some(u64::from(def.batches_in_flight) * u64::from(def.batch_size.max(1)));
        (config, mine)
    };
    let (mut config, mut mine) = link_config(&def);
    let name = format!("gateway sender `{}` (shard {})", def.id, shard.id.0);
    let counters = shard.wan.sender(index);
    let counters = &*counters;
    let mut backoff = RECONNECT_BACKOFF_MIN_MS;
    let mut attempt = 0usize;
    let mut last_error = String::new();
    // Logged when the error changes; attempts rotate over the receivers, so the same error
    // at another receiver of the site is not a change.
    let mut report = |target: &str, error: String| {
        let kind = error.replace(target, "<receiver>");
        if kind != last_error {
            tracing::warn!(sender = %sender.id, shard = shard.id.0, "{name}: {error}");
            last_error = kind;
        }
    };
    loop {
        if !wait_started(counters, &stop).await {
            return;
        }
        if counters.relink.replace(false) {
            def = sender.def.borrow().clone();
            (config, mine) = link_config(&def);
        }
        let Some(l) = lookup.take() else { return };
        let (l, found) = executor()
            .spawn_blocking(move || {
                let mut l = l;
                let r = l.lookup(Instant::now());
                (l, r)
            })
            .await;
        lookup = Some(l);
        // Best coverage of this shard's buckets first; later attempts rotate.
        let chosen = found
            .ok()
            .and_then(|e| choose_receiver(&e, |b| mine.contains(&b.0), attempt).cloned());
        let Some(endpoint) = chosen else {
            // The lookup logs its own warning.
            sleep_or_stop(LOOKUP_RETRY_MS, &stop, counters).await;
            continue;
        };
        attempt += 1;
        let target = endpoint.address.to_string();
        let host = (endpoint.address.host.clone(), endpoint.address.port);
        let resolved = executor()
            .spawn_blocking(move || {
                host.to_socket_addrs()
                    .map(|mut a| a.next())
                    .map_err(|e| e.to_string())
            })
            .await;
        let addr = match resolved {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                report(
                    &target,
                    format!("receiver {target}: the name has no address"),
                );
                None
            }
            Err(e) => {
                report(&target, format!("receiver {target}: cannot resolve: {e}"));
                None
            }
        };
        let end = match addr {
            None => None,
            Some(addr) => match connect_or_stop(addr, &stop).await {
                Connect::Connected(stream) => {
                    let _ = stream.set_nodelay(true);
                    set_socket_buffers(&stream, def.socket_buffer_size, &name);
                    Some(run_link(counters, &queue, &def, &config, stream, &stop, &name).await)
                }
                Connect::Stopped => Some(LinkEnd::Stopped),
                Connect::Failed(e) => {
                    report(
                        &target,
                        format!(
                            "cannot connect to receiver {target} of site {}: {e}; the address the site's locator gave is not reachable from here: behind NAT, set that receiver's hostname-for-senders and its locators' hostname-for-clients to an address this site can reach (docs/nat.md)",
                            def.remote_distributed_system_id.0
                        ),
                    );
                    None
                }
            },
        };
        counters.connected.set(false);
        // Whatever was peeked and not acknowledged is sent again, marked possible-duplicate.
        queue.with(strait_engine::link::reset_all);
        match end {
            Some(LinkEnd::Stopped) => return,
            Some(LinkEnd::Relink) => {
                tracing::info!(
                    sender = %def.id,
                    shard = shard.id.0,
                    "{name}: its configuration changed; connecting again"
                );
                continue;
            }
            Some(LinkEnd::Halted) => {
                tracing::info!(
                    sender = %def.id,
                    shard = shard.id.0,
                    "{name}: stopped; disconnected from receiver {target}"
                );
                continue;
            }
            Some(LinkEnd::Refused(e)) => {
                report(
                    &target,
                    format!("receiver {target} refused the connection: {e}"),
                );
                backoff = RECONNECT_BACKOFF_MAX_MS;
            }
            Some(LinkEnd::Failed { error, progressed }) => {
                report(
                    &target,
                    format!("connection to receiver {target} lost: {error}; reconnecting"),
                );
                if progressed {
                    backoff = RECONNECT_BACKOFF_MIN_MS;
                }
            }
            None => {}
        }
        sleep_or_stop(backoff, &stop, counters).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX_MS);
    }
}

/// What became of a connection attempt.
enum Connect {
    Connected(TcpStream),
    Failed(String),
    Stopped,
}

/// Connects to `addr`, giving up after [`CONNECT_TIMEOUT_MS`] or when the server stops.
///
/// glommio 0.9 connects through io_uring on a blocking socket, which the kernel completes in
/// a worker thread that neither its linked timeout nor a cancellation interrupts: toward an
/// address that drops SYNs (a private address across NAT), the connect, and the sender's
/// stop, waited for the kernel's SYN retries (about two minutes), and a cancelled attempt
/// could leave the next one reporting success on a socket still in SYN-SENT. So the address
/// is first proved to answer by a plain non-blocking connect with a timeout, on a thread of
/// its own (not the shard's blocking thread, whose file work must not wait up to
/// [`CONNECT_TIMEOUT_MS`]), which the shard polls every [`STOP_POLL_MS`]; only then does
/// glommio connect, still raced against the timeout and the stop. The receiver sees the probe
/// as a connection closed before its hello, which it ignores.
async fn connect_or_stop(addr: SocketAddr, stop: &AtomicBool) -> Connect {
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let probe: Arc<std::sync::OnceLock<Result<(), String>>> = Arc::default();
    let answer = probe.clone();
    let spawned = std::thread::Builder::new()
        .name("connect-probe".into())
        .spawn(move || {
            let r = std::net::TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| e.to_string());
            let _ = answer.set(r);
        });
    if let Err(e) = spawned {
        return Connect::Failed(format!("cannot start a thread to connect: {e}"));
    }
    loop {
        if stop.load(Ordering::Relaxed) {
            return Connect::Stopped;
        }
        match probe.get() {
            Some(Ok(())) => break,
            Some(Err(e)) => return Connect::Failed(e.clone()),
            None => glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await,
        }
    }
    future::or(
        async {
            match TcpStream::connect(addr).await {
                Ok(stream) => Connect::Connected(stream),
                Err(e) => Connect::Failed(e.to_string()),
            }
        },
        future::or(
            async {
                glommio::timer::sleep(timeout).await;
                Connect::Failed(format!("no answer within {CONNECT_TIMEOUT_MS} ms"))
            },
            async {
                wait_stop(stop).await;
                Connect::Stopped
            },
        ),
    )
    .await
}

/// Peeks the next batch, round-robin over the sender's queues on this shard.
fn next_batch(queue: &ShardQueue, cursor: &mut u16, events_max: u32, name: &str) -> Option<Batch> {
    // The same step the simulator runs (`strait_engine::link`).
    let (batch, errors) = queue.with(|q| strait_engine::link::next_batch(q, cursor, events_max));
    for e in errors {
        tracing::warn!("{name}: cannot read a queue: {e:?}");
    }
    batch
}

#[allow(clippy::too_many_arguments)]
async fn run_link(
    counters: &SenderCounters,
    queue: &ShardQueue,
    def: &SenderDef,
    config: &SenderConfig,
    stream: TcpStream,
    stop: &AtomicBool,
    name: &str,
) -> LinkEnd {
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as u64;
    let conn = match SenderConn::new(config.clone(), now()) {
        Ok(c) => RefCell::new(c),
        Err(e) => return LinkEnd::Refused(e.to_string()),
    };
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let signal = strait_queue::shard::Notify::default();
    let closed: RefCell<Option<String>> = RefCell::new(None);
    // Batches in flight and when each was written, oldest first (at most the window).
    let sent_at: RefCell<std::collections::VecDeque<(wire::BatchId, Instant)>> =
        RefCell::new(std::collections::VecDeque::new());
    let reader = async {
        let mut buf = vec![0u8; WAN_READ_BYTES];
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                if buf.len() >= WAN_BUFFER_BYTES_MAX {
                    *closed.borrow_mut() = Some("a frame does not fit the read buffer".into());
                    break;
                }
                buf.resize((buf.len() * 2).min(WAN_BUFFER_BYTES_MAX), 0);
            }
            match rd.read(&mut buf[filled..]).await {
                Ok(0) => {
                    *closed.borrow_mut() = Some("the receiver closed the connection".into());
                    break;
                }
                Ok(n) => filled += n,
                Err(e) => {
                    *closed.borrow_mut() = Some(e.to_string());
                    break;
                }
            }
            let used = conn.borrow_mut().handle_bytes(&buf[..filled], now());
            buf.copy_within(used..filled, 0);
            filled -= used;
            signal.notify();
        }
        signal.notify();
        future::pending::<LinkEnd>().await
    };
    let writer = async {
        let mut out: Vec<u8> = Vec::new();
        let mut cursor = 0u16;
        let mut progressed = false;
        let fail = |error: String, progressed: bool| LinkEnd::Failed { error, progressed };
        loop {
            let woken = signal.notified();
            let changed = counters.changed.notified();
            let appended = queue.appended();
            loop {
                let event = conn.borrow_mut().poll_event();
                let Some(event) = event else { break };
                match event {
                    SenderEvent::SendHello(bytes) => {
                        if let Err(e) = wr.write_all(&bytes).await {
                            return fail(e.to_string(), progressed);
                        }
                    }
                    SenderEvent::SendPing(bytes) => {
                        if let Err(e) = wr.write_all(&bytes).await {
                            return fail(e.to_string(), progressed);
                        }
                    }
                    SenderEvent::Connected {
                        receiver_site,
                        member,
                        ..
                    } => {
                        counters.connected.set(true);
                        tracing::info!(
                            sender = %def.id,
                            "{name}: connected to receiver {member} of site {receiver_site}"
                        );
                    }
                    SenderEvent::Refused(e) => return LinkEnd::Refused(e.to_string()),
                    SenderEvent::Acked(a) => {
                        progressed = true;
                        bump(&counters.dead_lettered, a.dead_letters.len() as u64);
                        {
                            let mut sent = sent_at.borrow_mut();
                            while let Some(&(id, at)) = sent.front() {
                                if id > a.batch {
                                    break;
                                }
                                sent.pop_front();
                                if id == a.batch {
                                    let us = at.elapsed().as_micros() as u64;
                                    counters.rtt.borrow_mut().record(us);
                                }
                            }
                        }
                        if let Err(e) = queue.with(|q| q.ack(a.queue, a.upto_seq)) {
                            return fail(
                                format!("acknowledging queue {}: {e}", a.queue.0),
                                progressed,
                            );
                        }
                        if !a.dead_letters.is_empty() {
                            tracing::warn!(
                                sender = %def.id,
                                "{name}: the receiver kept {} events of batch {} in its dead-letter log",
                                a.dead_letters.len(),
                                a.batch
                            );
                        }
                    }
                    SenderEvent::Failed { error, .. } => {
                        return fail(error.to_string(), progressed);
                    }
                }
            }
            if let Some(error) = closed.borrow_mut().take() {
                return fail(error, progressed);
            }
            if stop.load(Ordering::SeqCst) {
                return LinkEnd::Stopped;
            }
            let state = counters.state.get();
            if state == SenderState::NotRunning {
                return LinkEnd::Halted;
            }
            if counters.relink.get() {
                return LinkEnd::Relink;
            }
            let running = state == SenderState::Running;
            let mut sent = false;
            while running && conn.borrow().can_send() {
                let Some(batch) = next_batch(queue, &mut cursor, def.batch_size.max(1), name)
                else {
                    break;
                };
                let out_batch = strait_engine::link::wire_batch(&batch);
                let prefix = match conn.borrow_mut().handle_batch(out_batch, now()) {
                    Ok((id, prefix)) => {
                        sent_at.borrow_mut().push_back((id, Instant::now()));
                        prefix
                    }
                    Err(e) => return fail(format!("sending a batch: {e}"), progressed),
                };
                // The records go out as the queue holds them; they are copied once into the
                // write buffer because the queue cannot stay borrowed across the write. The
                // batches the window lets out now share one write (up to
                // WAN_WRITE_BYTES_MAX), so small batches do not cost a system call and a
                // wake-up at the receiver each.
                out.extend_from_slice(&prefix);
                let records_at = out.len();
                queue.with(|q| {
                    for s in q.batch_slices(&batch) {
                        out.extend_from_slice(s);
                    }
                });
                let ages = strait_engine::alert::batch_ages(
                    &out[records_at..],
                    wall_ms() * 1000,
                    def.alert_threshold_ms,
                );
                if let Some(due) = counters.alerts.borrow_mut().observe(ages, wall_ms()) {
                    tracing::warn!(
                        sender = %def.id,
                        "{name}: {} events waited longer than alert-threshold {} ms in the queue (longest {} ms)",
                        due.late, def.alert_threshold_ms, due.longest_ms
                    );
                }
                bump(&counters.events, u64::from(batch.events));
                bump(&counters.batches, 1);
                sent = true;
                if out.len() >= WAN_WRITE_BYTES_MAX {
                    if let Err(e) = wr.write_all(&out).await {
                        return fail(e.to_string(), progressed);
                    }
                    out.clear();
                }
            }
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    return fail(e.to_string(), progressed);
                }
                out.clear();
            }
            if sent {
                // Appends during the writes were seen by the peek loop or wake the next wait.
                continue;
            }
            let now_ms = now();
            let wait = conn
                .borrow()
                .next_deadline_ms()
                .map_or(STOP_POLL_MS, |d| d.saturating_sub(now_ms))
                .min(STOP_POLL_MS);
            if wait > 0 {
                let can_send = running && conn.borrow().can_send();
                future::or(
                    future::or(future::or(woken, changed), async {
                        if can_send {
                            appended.await
                        } else {
                            future::pending().await
                        }
                    }),
                    glommio::timer::sleep(Duration::from_millis(wait)),
                )
                .await;
            }
            conn.borrow_mut().handle_timer(now());
        }
    };
    future::or(reader, writer).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use SenderState::*;

    #[test]
    fn socket_buffer_size_sets_both_kernel_buffers_and_zero_leaves_them_to_the_kernel() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap();
        ex.run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let at = listener.local_addr().unwrap();
            let connect = glommio::spawn_local(async move { TcpStream::connect(at).await });
            let accepted = listener.accept().await.unwrap();
            let stream = connect.await.unwrap();
            let before = socket2::SockRef::from(&stream).send_buffer_size().unwrap();
            assert_eq!(set_socket_buffers(&stream, 0, "test"), None);
            assert_eq!(
                socket2::SockRef::from(&stream).send_buffer_size().unwrap(),
                before
            );
            // Linux keeps twice the size asked for (its bookkeeping), below net.core.*mem_max.
            let n = 100_000;
            assert_eq!(
                set_socket_buffers(&stream, n, "test"),
                Some((2 * n as usize, 2 * n as usize))
            );
            let (send, recv) = set_socket_buffers(&accepted, n, "test").unwrap();
            assert_eq!((send, recv), (2 * n as usize, 2 * n as usize));
        });
    }

    #[test]
    fn sender_figures_sum_and_a_state_only_while_shards_agree() {
        let shard = |state, events| WanStats {
            senders: vec![SenderFigures {
                events,
                batches: 1,
                connected: 1,
                dropped: 2,
                late: 5,
                queued_total: 6,
                dead_lettered: 1,
                state: Some(state),
            }],
            ..WanStats::default()
        };
        let mut total = WanStats::default();
        total.add(&shard(Paused, 3));
        total.add(&shard(Paused, 4));
        let f = total.senders[0];
        assert_eq!(
            (f.events, f.batches, f.connected, f.dropped, f.late),
            (7, 2, 2, 4, 10)
        );
        assert_eq!((f.queued_total, f.dead_lettered), (12, 2));
        assert_eq!(f.state, Some(Paused));
        total.add(&shard(Running, 0));
        assert_eq!(total.senders[0].state, None);
    }
}
