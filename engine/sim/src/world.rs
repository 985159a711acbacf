//! The simulated world: sites, shards, connections, faults (crashes, partitions, resets, full
//! disks, sender and receiver operations), the workload and the checkers; discovery (locators,
//! registrations, lookups) is the `locators` module.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

use bytes::Bytes;
use strait_engine::apply::{
    ApplyOutcome, SenderIndex, apply_record, forward_targets, restore_logged,
};
use strait_engine::bucket::BucketTable;
use strait_engine::link::{self, LinkStep};
use strait_engine::receive::{ack_outcome, forward_event};
use strait_engine::region::{EntryValue, RegionConfig, RegionKind, RegionStore};
use strait_engine::sender::{QueueLayout, SenderOp, SenderState, discard_all};
use strait_engine::write::{LocalWrite, WriteError, local_write};
use strait_net::wire::{
    ReceiverConfig, ReceiverConn, ReceiverEvent, RegionSpec, SenderConfig, SenderConn,
};
use strait_queue::ids::{EventId, MemberId, QueueId, RegionId, Seq, SiteId, VersionTag};
use strait_queue::mem::{Crash, MemDisk, run_actions};
use strait_queue::queue::{Durability, QueueConfig, SEGMENT_BYTES_MIN, SenderQueue, SyncPolicy};
use strait_queue::record::{self, Event, Op};
use strait_queue::store::recover;

use crate::rng::Rng;

/// The one region every site has.
const REGION: RegionId = RegionId(0);
const REGION_NAME: &str = "r";
/// A sender's ack timeout, and how long a receiver waits for a silent sender.
const ACK_TIMEOUT_MS: u64 = 2_000;
const PINGS_MS: u32 = 6_000;
const BACKOFF_MIN_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 2_000;
/// The simulation's clock advances 1 to this many ms a step.
const STEP_MS_MAX: u64 = 10;
/// How long the heal phase may take before the queues are declared stuck.
const QUIESCE_MS_MAX: u64 = 300_000;
/// Trace lines kept (the last ones).
const TRACE_LINES_MAX: usize = 4_000;

/// How the sites' senders are wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every site sends to every other site.
    Mesh,
    /// 1 → 2 → … → n → 1.
    Ring,
    /// Both ways round the ring.
    TwoWayRing,
    /// A ring with a chord 1 → 3.
    RingChord,
    /// 1 → 2, 1 → 3, 2 → 4, 3 → 4, 4 → 1: two paths meet at 4.
    Converging,
    /// Site 1 and every other site send to each other.
    Star,
}

impl Topology {
    const ALL: [Topology; 6] = [
        Topology::Mesh,
        Topology::Ring,
        Topology::TwoWayRing,
        Topology::RingChord,
        Topology::Converging,
        Topology::Star,
    ];

    /// The (from, to) sender pairs among `n` sites numbered from 1.
    fn edges(self, n: u8) -> Vec<(u8, u8)> {
        let ring: Vec<(u8, u8)> = (1..=n).map(|i| (i, i % n + 1)).collect();
        let mut e = match self {
            Topology::Mesh => (1..=n)
                .flat_map(|a| (1..=n).filter(move |&b| b != a).map(move |b| (a, b)))
                .collect(),
            Topology::Ring => ring,
            Topology::TwoWayRing => ring.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect(),
            Topology::RingChord => {
                let mut e = ring;
                if n >= 4 {
                    e.push((1, 3));
                }
                e
            }
            Topology::Converging if n >= 4 => {
                let mut e = vec![(1, 2), (1, 3), (2, 4), (3, 4), (4, 1)];
                for extra in 5..=n {
                    e.push((4, extra));
                    e.push((extra, 1));
                }
                e
            }
            Topology::Converging => ring,
            Topology::Star => (2..=n).flat_map(|b| [(1, b), (b, 1)]).collect(),
        };
        e.sort_unstable();
        e.dedup();
        e
    }
}

/// A write a client saw acknowledged.
#[derive(Clone, Debug)]
struct Acked {
    key: Vec<u8>,
    /// `None`: a destroy.
    value: Option<Vec<u8>>,
    tag: VersionTag,
    seq: u64,
    id: EventId,
}

/// One direction of a connection: bytes in order, each piece due at a time.
#[derive(Debug, Default)]
struct Pipe {
    chunks: VecDeque<(u64, Vec<u8>)>,
    last_at: u64,
    /// The writer closed its end: the reader sees the end once the chunks are read.
    closed: bool,
    /// What the reader has read and not consumed.
    buf: Vec<u8>,
}

impl Pipe {
    fn push(&mut self, rng: &mut Rng, now: u64, latency: u64, bytes: Vec<u8>) {
        if self.closed || bytes.is_empty() {
            return;
        }
        // A write may reach the reader in several pieces.
        let mut rest = bytes;
        while !rest.is_empty() {
            let cut = if rest.len() > 1 && rng.chance(300) {
                1 + rng.below(rest.len() - 1)
            } else {
                rest.len()
            };
            let tail = rest.split_off(cut);
            let at = (now + latency + rng.range(0, latency / 2 + 1)).max(self.last_at);
            self.last_at = at;
            self.chunks.push_back((at, rest));
            rest = tail;
        }
    }

    /// Moves the due chunks into the read buffer; true if any moved.
    fn deliver(&mut self, now: u64) -> bool {
        let mut moved = false;
        while let Some((at, _)) = self.chunks.front() {
            if *at > now {
                break;
            }
            let (_, bytes) = self.chunks.pop_front().expect("front exists");
            self.buf.extend_from_slice(&bytes);
            moved = true;
        }
        moved
    }

    fn at_end(&self) -> bool {
        self.closed && self.chunks.is_empty()
    }
}

#[derive(Debug)]
struct Conn {
    from_site: usize,
    from_shard: usize,
    to_site: usize,
    latency: u64,
    sconn: SenderConn,
    rconn: ReceiverConn,
    up: Pipe,
    down: Pipe,
    sender_open: bool,
    receiver_open: bool,
    /// The sender's region table as its hello gave it: region id → name.
    regions: Option<Vec<RegionSpec>>,
}

#[derive(Debug, Default)]
struct Dispatcher {
    conn: Option<usize>,
    retry_at: u64,
    backoff: u64,
    cursor: u16,
    /// Connections tried: the receivers the locator gave are tried in turn.
    attempt: usize,
}

#[derive(Debug)]
struct Shard {
    store: RegionStore,
    /// One queue set per sender of the site.
    queues: Vec<SenderQueue>,
    dispatchers: Vec<Dispatcher>,
    /// The last stream sequence number given per bucket (lost at a crash).
    streams: HashMap<u16, u64>,
}

#[derive(Debug)]
struct Site {
    id: SiteId,
    table: BucketTable,
    /// How far this site's clock is ahead of the simulation's, in microseconds.
    skew_us: u64,
    last_us: u64,
    /// Each sender's target site.
    targets: Vec<SiteId>,
    /// Each sender's state (the same on every shard: an operation runs on all of them).
    senders: Vec<SenderState>,
    /// Each sender's next operation and when it is due (the end of a pause or a stop).
    sender_next: Vec<Option<(u64, SenderOp)>>,
    /// The gateway receiver listens (`STRAIT.RECEIVER START`; STOP until `receiver_start_at`).
    receiver_running: bool,
    receiver_start_at: u64,
    /// A local write's recipient set: every target.
    recipients: Vec<SiteId>,
    persistent: bool,
    /// Every sender's layout and queue settings (`parallel`, `dispatcher-threads`,
    /// `enable-batch-conflation`, ...).
    layout: QueueLayout,
    queue_config: QueueConfig,
    inflight_max: usize,
    batch_size: u32,
    shards: Vec<Shard>,
    /// Per shard, per sender: the disk its queue's segments live on (survives a crash).
    disks: Vec<Vec<MemDisk>>,
    /// The region log: every write the site made or applied, in order (survives a crash).
    log: Vec<Vec<u8>>,
    up: bool,
    restart_at: u64,
    /// The site's disks refuse new segment files until then (a full disk).
    disk_full_until: Option<u64>,
}

/// What a passing seed did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub topology: String,
    pub sites: usize,
    pub shards: usize,
    pub writes_acked: u64,
    pub writes_refused: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub batches: u64,
    pub connections: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub resets: u64,
    /// Times a site's disk filled up (new segment files refused until it healed).
    pub disk_full: u64,
    /// Batches a receiver refused because a queue it had to forward to was full.
    pub forward_refusals: u64,
    /// Most events one in-memory queue set held in overflow segments at once.
    pub overflow_events_max: u64,
    /// Locator processes that crashed (their directory lost), on their own or with their site.
    pub locator_crashes: u64,
    /// Times a site's server was cut off from its locator (its calls lost for a while).
    pub blackouts: u64,
    /// Times two sites' locators were cut off from each other while their data still flowed.
    pub locator_cuts: u64,
    /// Sites with two locators (their servers register with both, their senders ask both).
    pub two_locator_sites: u64,
    /// Times a site's gateway receiver was stopped (then started again).
    pub receiver_stops: u64,
    /// Servers a locator dropped after its member timeout (`poll_expired`).
    pub servers_expired: u64,
    /// Remote locators and servers a locator aged out (`poll_aged_out`).
    pub remote_aged_out: u64,
    /// Registrations a locator took (first ones and again after a restart or a drop).
    pub registrations: u64,
    /// Heartbeats a locator answered "unknown server" (it had restarted or dropped the server).
    pub forgotten: u64,
    /// Site maps merged (exchange requests and answers).
    pub exchanges: u64,
    /// A sender's lookups that found no receiver (locator down, site unknown, no receiver).
    pub lookups_failed: u64,
    /// New clients a locator sent to a server (`least_loaded`).
    pub clients_placed: u64,
    /// Sender operations: pauses (each resumed later), stops (each started again later), and
    /// starts that discarded the queues (START CLEAN).
    pub pauses: u64,
    pub stops: u64,
    pub clean_starts: u64,
    /// Events not queued for a sender because it was not running, or discarded by START CLEAN.
    pub events_dropped: u64,
    /// Keys whose winning write was dropped for a stopped sender: their sites may rightly
    /// differ, so the final check only asks that each holds one of the key's writes.
    pub keys_exempt: u64,
    /// Keys checked for the same winner at every site.
    pub keys_checked: u64,
    /// Sites whose senders are serial (a queue per dispatcher), and whose senders conflate.
    pub serial_sites: u64,
    pub conflating_sites: u64,
    /// Queued updates superseded by a later update of their key (`enable-batch-conflation`).
    pub conflated: u64,
    /// Events recoveries took back from commit journals (written after the last checkpoint,
    /// missing from their queues' segments after a power loss).
    pub journal_replayed: u64,
    pub sim_ms: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} sites x {} shards, {}; {} writes acked ({} refused), {} applied, {} duplicates, {} conflicts, {} batches, {} connections, {} crashes, {} partitions, {} resets, {} full disks ({} batches refused), {} events overflowed at most; locators: {} sites with two, {} crashes, {} blackouts, {} cuts, {} servers expired, {} remote entries aged out, {} registrations ({} after being forgotten), {} maps merged, {} lookups failed, {} clients placed; senders: {} pauses, {} stops, {} clean starts, {} events dropped, {} keys exempt, {} checked; {} serial sites, {} conflating sites, {} updates conflated; {} events replayed from commit journals; {} receiver stops; {} ms simulated",
            self.seed,
            self.sites,
            self.shards,
            self.topology,
            self.writes_acked,
            self.writes_refused,
            self.applied,
            self.duplicates,
            self.conflicts,
            self.batches,
            self.connections,
            self.crashes,
            self.partitions,
            self.resets,
            self.disk_full,
            self.forward_refusals,
            self.overflow_events_max,
            self.two_locator_sites,
            self.locator_crashes,
            self.blackouts,
            self.locator_cuts,
            self.servers_expired,
            self.remote_aged_out,
            self.registrations,
            self.forgotten,
            self.exchanges,
            self.lookups_failed,
            self.clients_placed,
            self.pauses,
            self.stops,
            self.clean_starts,
            self.events_dropped,
            self.keys_exempt,
            self.keys_checked,
            self.serial_sites,
            self.conflating_sites,
            self.conflated,
            self.journal_replayed,
            self.receiver_stops,
            self.sim_ms
        )
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub why: String,
    /// The last 4 000 things that happened (`TRACE_LINES_MAX`), oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} FAILED: {}\n(replay: cargo run -p strait-sim -- --seed {} --trace)",
            self.seed, self.why, self.seed
        )
    }
}

struct World {
    rng: Rng,
    now: u64,
    sites: Vec<Site>,
    conns: Vec<Option<Conn>>,
    /// Site pairs (lower index first) cut off from each other until a time.
    partitions: BTreeMap<(usize, usize), u64>,
    keys: Vec<Vec<u8>>,
    acked: Vec<(usize, Acked)>,
    /// Per site, per event: how many times it was applied off the wire.
    applied: HashMap<(usize, EventId), u32>,
    report: Report,
    trace: VecDeque<String>,
    echo: bool,
    region_config: RegionConfig,
    /// The locators and the servers' registration agents.
    disc: Discovery,
    /// Events some site did not queue for a sender because it was stopped, or discarded at a
    /// START CLEAN (docs/wan.md "Sender operations"): they may rightly miss some sites.
    dropped: HashSet<EventId>,
}

macro_rules! trace {
    ($w:expr, $($arg:tt)*) => {{
        let line = format!("{:>7} {}", $w.now, format!($($arg)*));
        if $w.echo {
            println!("{line}");
        }
        if $w.trace.len() == $crate::world::TRACE_LINES_MAX {
            $w.trace.pop_front();
        }
        $w.trace.push_back(line);
    }};
}

// After `trace!`, which it uses.
mod locators;
use locators::{Discovery, LOOKUP_RETRY_MS};

/// Runs one seed; `echo` prints the trace as it happens.
pub fn run(seed: u64, echo: bool) -> Result<Report, Failure> {
    let mut w = World::new(seed, echo);
    let result = w.simulate();
    w.report.sim_ms = w.now;
    match result {
        Ok(()) => Ok(w.report),
        Err(why) => Err(Failure {
            seed,
            why,
            trace: w.trace.into_iter().collect(),
        }),
    }
}

impl World {
    fn new(seed: u64, echo: bool) -> World {
        let mut rng = Rng(seed);
        let n = rng.range(2, 4) as u8;
        let topology = Topology::ALL[rng.below(Topology::ALL.len())];
        let edges = topology.edges(n);
        let buckets = *[3u16, 7, 13].get(rng.below(3)).expect("in range");
        let mut region_config = RegionConfig::new(REGION_NAME, RegionKind::Partition);
        region_config.total_buckets = buckets;
        let shards = rng.range(1, 3) as u16;
        let mut sites = Vec::new();
        for id in 1..=n {
            let targets: Vec<SiteId> = edges
                .iter()
                .filter(|(a, _)| *a == id)
                .map(|&(_, b)| SiteId(b))
                .collect();
            let mut recipients = targets.clone();
            recipients.sort_unstable();
            let persistent = rng.chance(500);
            // A parallel sender (a queue per bucket) or a serial one (a queue per dispatcher).
            let layout = if rng.chance(600) {
                QueueLayout::Parallel { queues: buckets }
            } else {
                QueueLayout::Serial {
                    dispatchers: rng.range(1, 5) as u16,
                }
            };
            let queue_config = QueueConfig {
                queue_count: layout.queue_count(),
                memory_bytes_max: rng.range(8, 48) << 10,
                persistent,
                disk_synchronous: true,
                sync: SyncPolicy::EveryBatch,
                conflation: rng.chance(300),
                segment_bytes: SEGMENT_BYTES_MIN,
                spare_segments: 1,
                journal_recycle_segments: rng.range(0, 8) as u8,
            };
            let table = BucketTable::new(buckets, shards).expect("valid bucket table");
            let disks = (0..shards)
                .map(|_| targets.iter().map(|_| MemDisk::new()).collect())
                .collect();
            let mut site = Site {
                id: SiteId(id),
                table,
                skew_us: rng.range(0, 50_000),
                last_us: 0,
                senders: vec![SenderState::Running; targets.len()],
                sender_next: vec![None; targets.len()],
                receiver_running: true,
                receiver_start_at: 0,
                targets,
                recipients,
                persistent,
                layout,
                queue_config,
                inflight_max: rng.range(1, 8) as usize,
                batch_size: rng.range(1, 50) as u32,
                shards: Vec::new(),
                disks,
                log: Vec::new(),
                up: true,
                restart_at: 0,
                disk_full_until: None,
            };
            site.shards = (0..shards)
                .map(|_| new_shard(&site, &region_config))
                .collect();
            sites.push(site);
        }
        let disc = Discovery::new(&mut rng, &sites);
        let keys = (0..rng.range(3, 24))
            .map(|k| format!("k{k}").into_bytes())
            .collect();
        let report = Report {
            two_locator_sites: disc.sites_with_two_locators(),
            serial_sites: sites
                .iter()
                .filter(|s| matches!(s.layout, QueueLayout::Serial { .. }))
                .count() as u64,
            conflating_sites: sites.iter().filter(|s| s.queue_config.conflation).count() as u64,
            seed,
            topology: format!("{topology:?}"),
            sites: n as usize,
            shards: shards as usize,
            ..Report::default()
        };
        let mut w = World {
            rng,
            now: 0,
            sites,
            conns: Vec::new(),
            partitions: BTreeMap::new(),
            keys,
            acked: Vec::new(),
            applied: HashMap::new(),
            report,
            trace: VecDeque::new(),
            echo,
            region_config,
            disc,
            dropped: HashSet::new(),
        };
        trace!(
            w,
            "world: {} sites x {} shards, {topology:?} {:?}, {buckets} buckets, persistent {:?}, senders {:?}, conflation {:?}",
            n,
            shards,
            edges,
            w.sites.iter().map(|s| s.persistent).collect::<Vec<_>>(),
            w.sites.iter().map(|s| s.layout).collect::<Vec<_>>(),
            w.sites
                .iter()
                .map(|s| s.queue_config.conflation)
                .collect::<Vec<_>>()
        );
        let line = w.disc.describe();
        trace!(w, "{line}");
        w
    }

    fn simulate(&mut self) -> Result<(), String> {
        let load_ms = self.rng.range(2_000, 8_000);
        let write_rate = self.rng.range(50, 600);
        let fault_rate = self.rng.range(0, 30);
        while self.now < load_ms {
            self.now += self.rng.range(1, STEP_MS_MAX);
            if self.rng.chance(write_rate) {
                for _ in 0..self.rng.range(1, 3) {
                    self.client_write()?;
                }
            }
            if self.rng.chance(fault_rate) {
                self.fault()?;
            }
            self.step()?;
        }
        trace!(self, "load ends; healing");
        self.partitions.clear();
        self.heal_discovery();
        // The operator starts every receiver, and starts and resumes every sender.
        for site in &mut self.sites {
            site.receiver_start_at = site.receiver_start_at.min(self.now);
        }
        for s in 0..self.sites.len() {
            for i in 0..self.sites[s].targets.len() {
                self.sites[s].sender_next[i] = None;
                if self.sites[s].up {
                    let op = match self.sites[s].senders[i] {
                        SenderState::NotRunning => SenderOp::Start { clean: false },
                        _ => SenderOp::Resume,
                    };
                    self.sender_op(s, i, op)?;
                }
            }
        }
        for s in 0..self.sites.len() {
            if self.sites[s].disk_full_until.take().is_some() {
                self.set_disk_full(s, false);
            }
        }
        let deadline = self.now + QUIESCE_MS_MAX;
        while self.now < deadline {
            self.now += self.rng.range(1, STEP_MS_MAX);
            for s in 0..self.sites.len() {
                if !self.sites[s].up {
                    self.sites[s].restart_at = self.sites[s].restart_at.min(self.now);
                }
            }
            self.step()?;
            if self.quiet() {
                trace!(self, "quiet");
                return self.check();
            }
        }
        Err(format!(
            "the queues did not drain within {QUIESCE_MS_MAX} ms of healing: {}",
            self.backlog()
        ))
    }

    fn backlog(&self) -> String {
        let mut out = Vec::new();
        for site in &self.sites {
            for (i, shard) in site.shards.iter().enumerate() {
                for (s, q) in shard.queues.iter().enumerate() {
                    let n = q.stats(0).events_queued;
                    if n > 0 {
                        out.push(format!(
                            "site {} shard {i} sender to {}: {n} events",
                            site.id, site.targets[s]
                        ));
                    }
                }
            }
        }
        out.join("; ")
    }

    /// Nothing queued anywhere and nothing on the wire.
    fn quiet(&self) -> bool {
        self.sites.iter().all(|s| {
            s.up && s
                .shards
                .iter()
                .all(|sh| sh.queues.iter().all(|q| q.stats(0).events_queued == 0))
        }) && self.conns.iter().flatten().all(|c| {
            c.up.chunks.is_empty()
                && c.down.chunks.is_empty()
                && c.up.buf.is_empty()
                && c.down.buf.is_empty()
                && c.sconn.inflight().len() == 0
        })
    }

    fn now_us(&mut self, s: usize) -> u64 {
        let site = &mut self.sites[s];
        let t = (self.now * 1000 + site.skew_us).max(site.last_us + 1);
        site.last_us = t;
        t
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        let key = (a.min(b), a.max(b));
        self.partitions
            .get(&key)
            .is_some_and(|&until| until > self.now)
    }

    // ---- the workload ----------------------------------------------------------------

    fn client_write(&mut self) -> Result<(), String> {
        let s = self.rng.below(self.sites.len());
        if !self.sites[s].up {
            return Ok(());
        }
        // A new client asks the site's locator for a server; without an answer it keeps to
        // the server its pool already knows.
        if self.rng.chance(100) {
            self.find_server(s)?;
        }
        let key = self.keys[self.rng.below(self.keys.len())].clone();
        let value = (!self.rng.chance(250)).then(|| {
            let len = self.rng.range(0, 300) as usize;
            let tag = self.rng.next_u64();
            let mut v = tag.to_le_bytes().to_vec();
            v.resize(len.max(8), b'v');
            v
        });
        let now_us = self.now_us(s);
        let site = &mut self.sites[s];
        let bucket = site.table.bucket_of(&key);
        let shard = site.table.shard_of(bucket).expect("bucket in table").0 as usize;
        let (id, recipients, layout) = (site.id, site.recipients.clone(), site.layout);
        // A sender that is not running does not queue the write (Geode drops it too).
        let running: Vec<usize> = (0..site.targets.len())
            .filter(|&i| site.senders[i] != SenderState::NotRunning)
            .collect();
        let stopped = site.targets.len() - running.len();
        let sh = &mut site.shards[shard];
        let mut last = sh.streams.get(&bucket.0).copied();
        let write = LocalWrite {
            site: id,
            member: MemberId(1),
            region: REGION,
            bucket,
            key: &key,
            value: value.as_deref(),
            now_us,
            recipients: &recipients,
        };
        let mut attempt = 0;
        let result = loop {
            let mut queues: Vec<(&mut SenderQueue, QueueId)> = sh
                .queues
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| running.contains(i))
                .map(|(_, q)| (q, layout.queue_of(bucket)))
                .collect();
            match local_write(&mut sh.store, &mut queues, &mut last, &write) {
                Err(WriteError::WouldBlock(k)) if attempt == 0 => {
                    // A segment is being made: let the disk make it, then plan again.
                    let i = running[k];
                    run_actions(&mut sh.queues[i], &site.disks[shard][i], self.now);
                    attempt += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(None) => Ok(()),
            Err(e) => {
                self.report.writes_refused += 1;
                trace!(
                    self,
                    "site {id} write {:?} refused: {e}",
                    String::from_utf8_lossy(&key)
                );
                Ok(())
            }
            Ok(Some(written)) => {
                if let Some(l) = last {
                    sh.streams.insert(bucket.0, l);
                }
                for (i, q) in sh.queues.iter_mut().enumerate() {
                    run_actions(q, &site.disks[shard][i], self.now);
                }
                for (&i, seq) in running.iter().zip(&written.seqs) {
                    if sh.queues[i].durability(layout.queue_of(bucket), *seq) != Durability::Done {
                        return Err(format!(
                            "site {id}: a write's queue is not durable after its group commit"
                        ));
                    }
                }
                // The region log, as the node keeps it for a persistent region.
                let event = Event {
                    op: written.outcome.op,
                    region: REGION,
                    bucket,
                    id: written.id,
                    version: written.outcome.tag,
                    recipients: &recipients,
                    key: &key,
                    value: if written.outcome.op == Op::Destroy {
                        &[]
                    } else {
                        value.as_deref().unwrap_or(&[])
                    },
                };
                site.log.push(encode(&event));
                self.report.writes_acked += 1;
                if stopped > 0 {
                    self.dropped.insert(written.id);
                    self.report.events_dropped += stopped as u64;
                }
                let tag = written.outcome.tag;
                trace!(
                    self,
                    "site {id} {:?} {:?} ts {} seq {} acked",
                    written.outcome.op,
                    String::from_utf8_lossy(&key),
                    tag.timestamp_us,
                    written.id.seq
                );
                self.acked.push((
                    s,
                    Acked {
                        key,
                        value: if written.outcome.op == Op::Destroy {
                            None
                        } else {
                            value
                        },
                        tag,
                        seq: written.id.seq,
                        id: written.id,
                    },
                ));
                Ok(())
            }
        }
    }

    // ---- faults ----------------------------------------------------------------------

    fn fault(&mut self) -> Result<(), String> {
        match self.rng.below(9) {
            8 => {
                // An operator stops a site's gateway receiver for a while.
                let s = self.rng.below(self.sites.len());
                if self.sites[s].up && self.sites[s].receiver_running {
                    let until = self.now + self.rng.range(20, 2_000);
                    self.stop_receiver(s);
                    self.sites[s].receiver_start_at = until;
                }
            }
            7 => {
                // An operator pauses a sender, or stops it, for a while (docs/wan.md).
                let s = self.rng.below(self.sites.len());
                if !self.sites[s].up || self.sites[s].targets.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.sites[s].targets.len());
                if self.sites[s].sender_next[i].is_some() {
                    return Ok(());
                }
                let (op, then) = if self.rng.chance(750) {
                    (SenderOp::Pause, SenderOp::Resume)
                } else {
                    let clean = self.rng.chance(333);
                    (SenderOp::Stop, SenderOp::Start { clean })
                };
                let until = self.now + self.rng.range(20, 2_000);
                self.sender_op(s, i, op)?;
                self.sites[s].sender_next[i] = Some((until, then));
            }
            5 => {
                // A locator process of its own crashes (an embedded one goes with its site).
                let l = self.rng.below(self.disc.locators.len());
                if !self.disc.locators[l].embedded {
                    let down = self.rng.range(100, 5_000);
                    self.crash_locator(l, down);
                }
            }
            6 => {
                // A site's server stops reaching its locator: its heartbeats are lost, often
                // for longer than the member timeout.
                let s = self.rng.below(self.sites.len());
                let t = self.disc.member_timeout_ms();
                let until = self.now + self.rng.range(t / 2, t * 3);
                self.disc.silent_until[s] = until;
                self.report.blackouts += 1;
                trace!(
                    self,
                    "server{}: calls to its locator lost until {until}",
                    s + 1
                );
            }
            4 => {
                // A site's disk fills up: every queue of it is refused new segment files.
                let s = self.rng.below(self.sites.len());
                if self.sites[s].disk_full_until.is_none() {
                    let until = self.now + self.rng.range(50, 3_000);
                    self.set_disk_full(s, true);
                    self.sites[s].disk_full_until = Some(until);
                    self.report.disk_full += 1;
                    trace!(self, "site {}: disk full until {until}", s + 1);
                }
            }
            0 => {
                // A crash of a site whose queues and region survive one.
                let s = self.rng.below(self.sites.len());
                if self.sites[s].persistent && self.sites[s].up {
                    let down = self.rng.range(100, 3_000);
                    self.crash(s, down);
                }
            }
            1 => {
                let a = self.rng.below(self.sites.len());
                let b = self.rng.below(self.sites.len());
                if a != b && self.rng.chance(250) {
                    let until = self.now + self.rng.range(50, 6_000);
                    self.cut_locators(a, b, until);
                } else if a != b {
                    let until = self.now + self.rng.range(50, 6_000);
                    self.partitions.insert((a.min(b), a.max(b)), until);
                    self.report.partitions += 1;
                    trace!(self, "partition sites {} | {} until {until}", a + 1, b + 1);
                }
            }
            _ => {
                let open: Vec<usize> = (0..self.conns.len())
                    .filter(|&i| {
                        self.conns[i]
                            .as_ref()
                            .is_some_and(|c| c.sender_open && c.receiver_open)
                    })
                    .collect();
                if !open.is_empty() {
                    let i = open[self.rng.below(open.len())];
                    self.reset_conn(i);
                }
            }
        }
        Ok(())
    }

    /// `STRAIT.RECEIVER STOP` at site `s`, as the node: the listeners close and so does every
    /// sender connection (their unacknowledged batches are resent after the next start); the
    /// server registers again without the receiver's endpoints.
    fn stop_receiver(&mut self, s: usize) {
        self.sites[s].receiver_running = false;
        self.report.receiver_stops += 1;
        for c in self.conns.iter_mut().flatten() {
            if c.to_site == s && c.receiver_open {
                c.receiver_open = false;
                c.down.closed = true;
            }
        }
        trace!(self, "site {}: gateway receiver stopped", s + 1);
    }

    /// `STRAIT.SENDER <id> <op>` on every shard of site `s` for sender `i`, as the node runs it
    /// (`strait_engine::sender`): STOP disconnects (what was peeked is resent after the next
    /// start), START CLEAN first discards everything queued, PAUSE keeps the connection and
    /// sends no new batch.
    fn sender_op(&mut self, s: usize, i: usize, op: SenderOp) -> Result<(), String> {
        let now = self.now;
        let site = &mut self.sites[s];
        let next = match site.senders[i].after(op) {
            Ok(next) => next,
            Err(why) => {
                let id = site.id;
                trace!(self, "site {id} sender {i}: {op:?} refused: {why}");
                return Ok(());
            }
        };
        let mut discarded = Vec::new();
        let mut unreadable = None;
        for (h, sh) in site.shards.iter_mut().enumerate() {
            let d = &mut sh.dispatchers[i];
            let queue = &mut sh.queues[i];
            if next == SenderState::NotRunning
                && let Some(ci) = d.conn.take()
            {
                if let Some(c) = self.conns[ci].as_mut() {
                    c.sender_open = false;
                    c.up.closed = true;
                }
                link::reset_all(queue);
                d.retry_at = now;
            }
            if op == (SenderOp::Start { clean: true }) {
                let mut bytes = Vec::new();
                discard_all(queue, |q, batch| {
                    bytes.clear();
                    for slice in q.batch_slices(batch) {
                        bytes.extend_from_slice(slice);
                    }
                    let mut at = 0;
                    while at < bytes.len() {
                        match record::decode(&bytes[at..]) {
                            Ok(r) => {
                                discarded.push(r.event_id());
                                at += r.len();
                            }
                            Err(e) => {
                                unreadable = Some(e);
                                at = bytes.len();
                            }
                        }
                    }
                })
                .map_err(|e| format!("site {}: START CLEAN: {e}", site.id))?;
                run_actions(queue, &site.disks[h][i], now);
            }
        }
        if let Some(e) = unreadable {
            return Err(format!(
                "site {}: START CLEAN read a queued record that does not decode: {e}",
                site.id
            ));
        }
        site.senders[i] = next;
        let id = site.id;
        match op {
            SenderOp::Pause => self.report.pauses += 1,
            SenderOp::Stop => self.report.stops += 1,
            SenderOp::Start { clean: true } => self.report.clean_starts += 1,
            _ => {}
        }
        self.report.events_dropped += discarded.len() as u64;
        trace!(
            self,
            "site {id} sender {i}: {op:?}, now {}{}",
            next.name(),
            if discarded.is_empty() {
                String::new()
            } else {
                format!(", {} events discarded", discarded.len())
            }
        );
        self.dropped.extend(discarded);
        Ok(())
    }

    fn set_disk_full(&mut self, s: usize, full: bool) {
        for disks in &self.sites[s].disks {
            for d in disks {
                d.set_full(full);
            }
        }
    }

    /// The connection breaks: whatever is in flight either way may be lost.
    fn reset_conn(&mut self, i: usize) {
        self.report.resets += 1;
        let drop_up = self.rng.chance(500);
        let drop_down = self.rng.chance(500);
        let c = self.conns[i].as_mut().expect("open connection");
        if drop_up {
            c.up.chunks.clear();
        }
        if drop_down {
            c.down.chunks.clear();
        }
        c.up.closed = true;
        c.down.closed = true;
        let (fs, fh, to) = (c.from_site, c.from_shard, c.to_site);
        trace!(
            self,
            "reset connection {i} site {} shard {fh} -> site {}",
            fs + 1,
            to + 1
        );
    }

    fn crash(&mut self, s: usize, down_ms: u64) {
        self.report.crashes += 1;
        let power = self.rng.chance(300);
        trace!(
            self,
            "crash site {} ({}) for {down_ms} ms",
            s + 1,
            if power { "power loss" } else { "process" }
        );
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if c.from_site == s {
                c.sender_open = false;
                c.up.closed = true;
                c.down.chunks.clear();
                c.down.closed = true;
            }
            if c.to_site == s {
                c.receiver_open = false;
                c.down.closed = true;
                c.up.chunks.clear();
                c.up.closed = true;
            }
        }
        self.server_down(s, down_ms);
        self.report.conflated += conflated(&self.sites[s]);
        let seed = self.rng.next_u64();
        let site = &mut self.sites[s];
        site.up = false;
        site.restart_at = self.now + down_ms;
        let shards = std::mem::take(&mut site.shards);
        for (h, shard) in shards.into_iter().enumerate() {
            for (i, q) in shard.queues.into_iter().enumerate() {
                let crash = if power {
                    Crash::PowerLoss {
                        seed: seed ^ (h * 64 + i) as u64,
                    }
                } else {
                    Crash::Process
                };
                site.disks[h][i].crash(q, crash);
            }
        }
    }

    fn restart(&mut self, s: usize) -> Result<(), String> {
        let rc = self.region_config.clone();
        let site = &mut self.sites[s];
        let mut shards = Vec::new();
        for h in 0..site.table.shards() as usize {
            let mut queues = Vec::new();
            for i in 0..site.targets.len() {
                let (q, report) = match recover(site.queue_config.clone(), &site.disks[h][i]) {
                    Ok(r) => r,
                    // Putting the commit journal back into the queues needs segments: with the
                    // disk full, the server is started again once it has room.
                    Err(e) if e.is_disk_full() && site.disk_full_until.is_some() => {
                        site.restart_at = site.disk_full_until.expect("checked");
                        let id = site.id;
                        trace!(self, "site {id}: recovery waits for disk room: {e}");
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(format!("site {} shard {h}: recovery refused: {e}", site.id));
                    }
                };
                self.report.journal_replayed += report.journal_events_replayed;
                if !report.corrupt.is_empty() {
                    return Err(format!(
                        "site {} shard {h}: recovery found corruption after a crash: {:?}",
                        site.id, report.corrupt
                    ));
                }
                queues.push(q);
            }
            shards.push(Shard {
                store: RegionStore::new(&rc).expect("valid region"),
                queues,
                dispatchers: site.targets.iter().map(|_| Dispatcher::default()).collect(),
                streams: HashMap::new(),
            });
        }
        for bytes in &site.log {
            let r = record::decode(bytes).map_err(|e| format!("region log record: {e}"))?;
            let owner = site
                .table
                .shard_of(site.table.bucket_of(r.key()))
                .expect("bucket")
                .0;
            restore_logged(&mut shards[owner as usize].store, &r, site.id)
                .map_err(|e| format!("site {}: restoring the region log: {e}", site.id))?;
        }
        site.shards = shards;
        site.up = true;
        // Sender and receiver states are not persisted: a restarted server starts them running.
        site.receiver_running = true;
        site.senders
            .iter_mut()
            .for_each(|st| *st = SenderState::Running);
        site.sender_next.iter_mut().for_each(|n| *n = None);
        let id = site.id;
        trace!(self, "restart site {id}");
        self.server_up(s);
        Ok(())
    }

    // ---- one step of every shell ------------------------------------------------------

    fn step(&mut self) -> Result<(), String> {
        for s in 0..self.sites.len() {
            if self.sites[s].disk_full_until.is_some_and(|t| self.now >= t) {
                self.sites[s].disk_full_until = None;
                self.set_disk_full(s, false);
                trace!(self, "site {}: disk has room again", s + 1);
            }
        }
        for s in 0..self.sites.len() {
            if !self.sites[s].up && self.now >= self.sites[s].restart_at {
                self.restart(s)?;
            }
        }
        for s in 0..self.sites.len() {
            let site = &mut self.sites[s];
            if !site.receiver_running && site.receiver_start_at <= self.now {
                site.receiver_running = true;
                trace!(self, "site {}: gateway receiver started", s + 1);
            }
        }
        self.discovery_step()?;
        for s in 0..self.sites.len() {
            for i in 0..self.sites[s].targets.len() {
                if let Some((at, op)) = self.sites[s].sender_next[i]
                    && at <= self.now
                {
                    self.sites[s].sender_next[i] = None;
                    if self.sites[s].up {
                        self.sender_op(s, i, op)?;
                    }
                }
            }
        }
        // As the node's queue driver, which wakes at each queue's deadline: time-based work
        // (interval syncs, a segment creation retried after a full disk) happens as time
        // passes, whether or not anything is written.
        for site in &mut self.sites {
            if !site.up {
                continue;
            }
            for (h, sh) in site.shards.iter_mut().enumerate() {
                for (i, q) in sh.queues.iter_mut().enumerate() {
                    if q.next_deadline_ms().is_some_and(|d| d <= self.now) {
                        run_actions(q, &site.disks[h][i], self.now);
                    }
                }
            }
        }
        for s in 0..self.sites.len() {
            if !self.sites[s].up {
                continue;
            }
            for h in 0..self.sites[s].shards.len() {
                for i in 0..self.sites[s].targets.len() {
                    self.dispatch(s, h, i)?;
                }
            }
        }
        for i in 0..self.conns.len() {
            self.carry(i)?;
        }
        for site in &self.sites {
            for shard in &site.shards {
                for q in &shard.queues {
                    let stats = q.stats(0);
                    if !q.config().persistent {
                        self.report.overflow_events_max =
                            self.report.overflow_events_max.max(stats.events_on_disk);
                    }
                    let held = stats.memory_bytes;
                    if held > q.config().memory_bytes_max {
                        return Err(format!(
                            "site {}: a sender's queues hold {held} bytes of memory, over the budget of {}",
                            site.id,
                            q.config().memory_bytes_max
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The dispatcher of sender `i` on shard `h` of site `s`.
    fn dispatch(&mut self, s: usize, h: usize, i: usize) -> Result<(), String> {
        let now = self.now;
        let state = self.sites[s].senders[i];
        if state == SenderState::NotRunning {
            return Ok(());
        }
        let d = &self.sites[s].shards[h].dispatchers[i];
        let Some(ci) = d.conn else {
            if now < d.retry_at {
                return Ok(());
            }
            return self.connect(s, h, i);
        };
        let site = &mut self.sites[s];
        let (batch_size, site_id) = (site.batch_size, site.id);
        let shard = &mut site.shards[h];
        let queue = &mut shard.queues[i];
        let d = &mut shard.dispatchers[i];
        let Some(c) = self.conns[ci].as_mut() else {
            return Err("a dispatcher holds a connection that is gone".into());
        };
        let used = c.sconn.handle_bytes(&c.down.buf, now);
        c.down.buf.drain(..used);
        c.sconn.handle_timer(now);
        let mut failed = None;
        while let Some(event) = c.sconn.poll_event() {
            match link::handle_event(queue, event) {
                LinkStep::Write(bytes) => c.up.push(&mut self.rng, now, c.latency, bytes),
                LinkStep::Connected => d.backoff = BACKOFF_MIN_MS,
                LinkStep::Acked { .. } => {}
                LinkStep::Refused(e) => return Err(format!("site {site_id}: refused: {e}")),
                LinkStep::Failed(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() && c.down.at_end() && c.down.buf.is_empty() {
            failed = Some("the receiver closed the connection".to_string());
        }
        if let Some(why) = failed {
            c.sender_open = false;
            c.up.closed = true;
            d.conn = None;
            d.backoff = (d.backoff * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
            d.retry_at = now + d.backoff;
            link::reset_all(queue);
            trace!(
                self,
                "site {site_id} shard {h} sender {i}: connection {ci} ends: {why}"
            );
            return Ok(());
        }
        // Paused: connected, acks still taken, no new batch.
        while state == SenderState::Running && c.sconn.can_send() {
            let (batch, errors) = link::next_batch(queue, &mut d.cursor, batch_size);
            if let Some(e) = errors.first() {
                return Err(format!(
                    "site {site_id}: a queued record does not read back: {e}"
                ));
            }
            let Some(batch) = batch else { break };
            let bytes = link::send_batch(&mut c.sconn, queue, &batch, now)
                .map_err(|e| format!("site {site_id}: sending a batch: {e}"))?;
            c.up.push(&mut self.rng, now, c.latency, bytes);
            self.report.batches += 1;
        }
        Ok(())
    }

    fn connect(&mut self, s: usize, h: usize, i: usize) -> Result<(), String> {
        let now = self.now;
        let target = self.sites[s].targets[i];
        // The receivers of the target site, as this site's locator knows them.
        let attempt = self.sites[s].shards[h].dispatchers[i].attempt;
        let (t, to_shard) = match self.lookup(s, h, target, attempt) {
            Ok(found) => found,
            Err(why) => {
                self.report.lookups_failed += 1;
                self.sites[s].shards[h].dispatchers[i].retry_at = now + LOOKUP_RETRY_MS;
                trace!(
                    self,
                    "site {} shard {h} sender {i}: no receiver of site {target}: {why:?}",
                    s + 1
                );
                return Ok(());
            }
        };
        self.sites[s].shards[h].dispatchers[i].attempt += 1;
        if t != usize::from(target.0) - 1 || to_shard >= self.sites[t].table.shards() as usize {
            return Err(format!(
                "site {}: its locator gave a receiver that is not site {target}'s",
                s + 1
            ));
        }
        if !self.sites[t].up || !self.sites[t].receiver_running || self.partitioned(s, t) {
            let d = &mut self.sites[s].shards[h].dispatchers[i];
            d.backoff = (d.backoff * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
            d.retry_at = now + d.backoff;
            return Ok(());
        }
        let site = &self.sites[s];
        let mut config = SenderConfig::new(
            site.id,
            target,
            format!("site{}-shard{h}", site.id),
            format!("to-{target}"),
            vec![RegionSpec {
                id: REGION,
                name: REGION_NAME.into(),
                total_num_buckets: u32::from(site.table.total_buckets()),
            }],
        );
        config.inflight_batches_max = site.inflight_max;
        config.ack_timeout_ms = ACK_TIMEOUT_MS;
        let sconn = SenderConn::new(config, now).map_err(|e| e.to_string())?;
        let mut rc = ReceiverConfig::new(target, format!("site{target}"));
        rc.maximum_time_between_pings_ms = PINGS_MS;
        let latency = self.rng.range(1, 80);
        self.conns.push(Some(Conn {
            from_site: s,
            from_shard: h,
            to_site: t,
            latency,
            sconn,
            rconn: ReceiverConn::new(rc, now),
            up: Pipe::default(),
            down: Pipe::default(),
            sender_open: true,
            receiver_open: true,
            regions: None,
        }));
        let ci = self.conns.len() - 1;
        self.sites[s].shards[h].dispatchers[i].conn = Some(ci);
        self.report.connections += 1;
        trace!(
            self,
            "site {} shard {h} sender {i}: connection {ci} to site {target} shard {to_shard}",
            s + 1
        );
        Ok(())
    }

    /// Moves the due bytes of connection `i` and runs its receiver.
    fn carry(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let Some(c) = self.conns[i].as_mut() else {
            return Ok(());
        };
        let (a, b) = (c.from_site, c.to_site);
        let cut = {
            let key = (a.min(b), a.max(b));
            self.partitions.get(&key).is_some_and(|&until| until > now)
        };
        if !cut {
            c.up.deliver(now);
            c.down.deliver(now);
        }
        if !c.sender_open {
            c.down.buf.clear();
        }
        if c.receiver_open {
            c.rconn.handle_timer(now);
            self.receive(i)?;
        } else {
            let c = self.conns[i].as_mut().expect("present");
            c.up.buf.clear();
        }
        let c = self.conns[i].as_mut().expect("present");
        if !c.sender_open && !c.receiver_open {
            self.conns[i] = None;
        } else if !c.sender_open && c.up.at_end() && c.up.buf.is_empty() && c.receiver_open {
            c.receiver_open = false;
            c.down.closed = true;
        }
        Ok(())
    }

    fn receive(&mut self, ci: usize) -> Result<(), String> {
        let now = self.now;
        loop {
            let c = self.conns[ci].as_mut().expect("present");
            let buf = std::mem::take(&mut c.up.buf);
            let handled = c.rconn.handle_bytes(&buf, now);
            let consumed = handled.consumed;
            let batch = handled.batch.map(|b| {
                let records: Vec<Vec<u8>> = b.records().map(|r| r.bytes().to_vec()).collect();
                (b.id, b.possible_duplicate, b.events, records)
            });
            let c = self.conns[ci].as_mut().expect("present");
            c.up.buf = buf[consumed..].to_vec();
            let mut closed = false;
            while let Some(event) = c.rconn.poll_event() {
                match event {
                    ReceiverEvent::Transmit(bytes) => {
                        c.down.push(&mut self.rng, now, c.latency, bytes)
                    }
                    ReceiverEvent::Connected(hello) => c.regions = Some(hello.regions),
                    ReceiverEvent::Closed(e) => {
                        closed = true;
                        let line = format!("receiver of connection {ci} closes: {e}");
                        trace!(self, "{line}");
                        break;
                    }
                }
            }
            if closed {
                let c = self.conns[ci].as_mut().expect("present");
                c.receiver_open = false;
                c.down.closed = true;
                return Ok(());
            }
            let Some((id, possible_duplicate, events, records)) = batch else {
                return Ok(());
            };
            if records.len() != events as usize {
                return Err(format!(
                    "a checked batch of {events} events yields {}",
                    records.len()
                ));
            }
            let outcomes = match self.apply_batch(ci, &records)? {
                Ok(outcomes) => outcomes,
                Err(why) => {
                    // As the node: no ack, the connection closes, the sender resends later.
                    self.report.forward_refusals += 1;
                    trace!(self, "receiver of connection {ci} refuses a batch: {why}");
                    let c = self.conns[ci].as_mut().expect("present");
                    c.receiver_open = false;
                    c.down.closed = true;
                    return Ok(());
                }
            };
            let ack = ack_outcome(&outcomes);
            if !ack.dead_letters.is_empty() {
                return Err(format!("dead letters: {:?}", ack.dead_letters));
            }
            let c = self.conns[ci].as_mut().expect("present");
            c.rconn
                .handle_applied(id, &ack)
                .map_err(|e| format!("acknowledging a batch: {e}"))?;
            let (to, from) = (c.to_site, c.from_site);
            trace!(
                self,
                "site {} applies batch {id} from site {}{}: {} applied, {} duplicates, {} conflicts",
                to + 1,
                from + 1,
                if possible_duplicate {
                    " (possible duplicate)"
                } else {
                    ""
                },
                ack.applied,
                ack.duplicates,
                ack.conflicts
            );
            if consumed == 0 {
                return Ok(());
            }
        }
    }

    /// Applies a batch's records at the connection's receiving site: each on the shard
    /// owning its bucket, forwarded under the loop rule, logged, and every queue synced
    /// before the ack, as the node does.
    ///
    /// As the node, a record changes nothing unless every queue it is forwarded to has room
    /// (`check_room`, then apply and append with nothing in between); a queue that refuses
    /// ends the batch unacknowledged (`Ok(Err(why))`), the records before it applied.
    fn apply_batch(
        &mut self,
        ci: usize,
        records: &[Vec<u8>],
    ) -> Result<Result<Vec<ApplyOutcome>, String>, String> {
        let c = self.conns[ci].as_ref().expect("present");
        let t = c.to_site;
        let known = c
            .regions
            .as_ref()
            .is_some_and(|r| r.iter().any(|s| s.id == REGION && s.name == REGION_NAME));
        if !known {
            return Err("a batch for a region the hello did not name".into());
        }
        let mut outcomes = Vec::with_capacity(records.len());
        let site = &mut self.sites[t];
        let senders: Vec<(SenderIndex, SiteId)> = site
            .targets
            .iter()
            .enumerate()
            .map(|(i, &target)| (SenderIndex(i), target))
            .collect();
        let stopped: Vec<bool> = site
            .senders
            .iter()
            .map(|&st| st == SenderState::NotRunning)
            .collect();
        for bytes in records {
            let r = record::decode(bytes).map_err(|e| format!("a checked record: {e}"))?;
            let bucket = site.table.bucket_of(r.key());
            let owner = site.table.shard_of(bucket).expect("bucket").0 as usize;
            let sh = &mut site.shards[owner];
            let (mut chosen, recipients) = forward_targets(site.id, &r, &senders, &site.recipients);
            // Chosen senders that are not running do not queue it (the node's ForwardPlan).
            let before = chosen.len();
            chosen.retain(|&SenderIndex(i)| !stopped[i]);
            let not_running = (before - chosen.len()) as u64;
            for &SenderIndex(i) in &chosen {
                let event = forward_event(&r, REGION, bucket, &recipients);
                let q = &mut sh.queues[i];
                let qid = site.layout.queue_of(bucket);
                let mut room = q.check_room(qid, &event);
                if matches!(room, Err(strait_queue::queue::AppendError::WouldBlock)) {
                    run_actions(q, &site.disks[owner][i], self.now);
                    room = q.check_room(qid, &event);
                }
                match room {
                    Ok(()) => {}
                    // Still making a segment, or out of room: the batch waits for a resend.
                    Err(e) => {
                        return Ok(Err(format!("forwarding to site {}: {e}", site.targets[i])));
                    }
                }
            }
            let outcome = apply_record(&mut sh.store, &r, site.id);
            match &outcome {
                ApplyOutcome::Applied { .. } => {
                    self.report.applied += 1;
                    let n = self.applied.entry((t, r.event_id())).or_insert(0);
                    *n += 1;
                    if *n > 1 {
                        return Err(format!(
                            "site {} applied event {:?} {} times",
                            site.id,
                            r.event_id(),
                            n
                        ));
                    }
                    site.log.push(bytes.clone());
                    if not_running > 0 {
                        self.dropped.insert(r.event_id());
                        self.report.events_dropped += not_running;
                    }
                    for SenderIndex(i) in chosen {
                        let event = forward_event(&r, REGION, bucket, &recipients);
                        // It had room a moment ago, with nothing in between.
                        let qid = site.layout.queue_of(bucket);
                        if let Err(e) = sh.queues[i].append(qid, &event) {
                            return Err(format!(
                                "site {}: forwarding to site {} refused after check_room said yes: {e}",
                                site.id, site.targets[i]
                            ));
                        }
                    }
                }
                ApplyOutcome::Duplicate(_) => self.report.duplicates += 1,
                ApplyOutcome::Rejected { .. } => self.report.conflicts += 1,
                ApplyOutcome::DeadLetter(_) => {}
            }
            outcomes.push(outcome);
        }
        for (h, sh) in site.shards.iter_mut().enumerate() {
            for (i, q) in sh.queues.iter_mut().enumerate() {
                run_actions(q, &site.disks[h][i], self.now);
            }
        }
        Ok(Ok(outcomes))
    }

    // ---- the checkers ------------------------------------------------------------------

    fn check(&mut self) -> Result<(), String> {
        self.report.conflated += self.sites.iter().map(conflated).sum::<u64>();
        // The winner every site must hold per key: the greatest acknowledged version by the
        // conflict rule's order (timestamp, then site; a later write of the same site wins a tie).
        let mut winners: BTreeMap<Vec<u8>, &Acked> = BTreeMap::new();
        for (_, a) in &self.acked {
            let better = winners.get(&a.key).is_none_or(|w| {
                (a.tag.timestamp_us, a.tag.site, a.seq) > (w.tag.timestamp_us, w.tag.site, w.seq)
            });
            if better {
                winners.insert(a.key.clone(), a);
            }
        }
        // A key whose winning write was dropped for a stopped sender somewhere (not queued, or
        // discarded by START CLEAN) may rightly differ between sites: each site must hold one
        // of its acknowledged writes (or nothing), and it is left out of the digests.
        let exempt: Vec<bool> = self
            .keys
            .iter()
            .map(|k| winners.get(k).is_some_and(|w| self.dropped.contains(&w.id)))
            .collect();
        let exempt_count = exempt.iter().filter(|&&e| e).count() as u64;
        let mut digests: Vec<BTreeMap<u16, u64>> = Vec::new();
        for site in &self.sites {
            let mut per_bucket: BTreeMap<u16, u64> = BTreeMap::new();
            for (k, key) in self.keys.iter().enumerate() {
                let bucket = site.table.bucket_of(key);
                let owner = site.table.shard_of(bucket).expect("bucket").0 as usize;
                let entry = site.shards[owner].store.entry(key);
                let state = entry.map(|e| (e.live_value().cloned(), e.version.tag()));
                if exempt[k] {
                    let written = |a: &Acked| {
                        a.key == *key
                            && state.as_ref()
                                == Some(&(a.value.clone().map(Bytes::from), Some(a.tag)))
                    };
                    if state.is_some() && !self.acked.iter().any(|(_, a)| written(a)) {
                        return Err(format!(
                            "site {} holds {:?} at {:?}, which no acknowledged write made",
                            site.id,
                            String::from_utf8_lossy(key),
                            state.map(|(_, t)| t)
                        ));
                    }
                    continue;
                }
                if let Some(w) = winners.get(key) {
                    let want = (w.value.clone().map(Bytes::from), Some(w.tag));
                    if state.as_ref() != Some(&want) {
                        return Err(format!(
                            "site {} holds {:?} = {:?}, the acknowledged winner is {:?} (lost write or another winner)",
                            site.id,
                            String::from_utf8_lossy(key),
                            state.map(|(v, t)| (v.map(|v| v.len()), t)),
                            (w.value.as_ref().map(Vec::len), w.tag)
                        ));
                    }
                } else if entry.is_some_and(|e| matches!(e.value, EntryValue::Live(_))) {
                    return Err(format!(
                        "site {} holds {:?}, which no acknowledged write made",
                        site.id,
                        String::from_utf8_lossy(key)
                    ));
                }
                let h = entry_digest(key, state.as_ref());
                let d = per_bucket.entry(bucket.0).or_insert(0);
                *d = d.wrapping_add(h);
            }
            // Every live entry is one of the keys.
            for shard in &site.shards {
                let page = shard
                    .store
                    .scan(strait_engine::region::ScanCursor::START, 1024);
                for (k, _) in page.entries {
                    if !self.keys.iter().any(|key| key[..] == k[..]) {
                        return Err(format!("site {} holds a key no client wrote", site.id));
                    }
                }
            }
            digests.push(per_bucket);
        }
        self.report.keys_exempt = exempt_count;
        self.report.keys_checked = self.keys.len() as u64 - exempt_count;
        for (i, d) in digests.iter().enumerate().skip(1) {
            if *d != digests[0] {
                let bucket = d
                    .iter()
                    .find(|(b, h)| digests[0].get(b) != Some(h))
                    .map(|(b, _)| *b);
                return Err(format!(
                    "sites {} and {} differ in bucket {bucket:?}",
                    self.sites[0].id, self.sites[i].id
                ));
            }
        }
        for site in &self.sites {
            for shard in &site.shards {
                for q in &shard.queues {
                    let st = q.stats(0);
                    if st.events_queued != 0 || st.events_on_disk != 0 {
                        return Err(format!("site {}: a queue did not drain: {st:?}", site.id));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Updates the site's queues conflated since they were opened.
fn conflated(site: &Site) -> u64 {
    site.shards
        .iter()
        .flat_map(|sh| sh.queues.iter())
        .map(|q| q.stats(0).conflated)
        .sum()
}

fn new_shard(site: &Site, rc: &RegionConfig) -> Shard {
    Shard {
        store: RegionStore::new(rc).expect("valid region"),
        queues: site
            .targets
            .iter()
            .map(|_| SenderQueue::new(site.queue_config.clone()))
            .collect(),
        dispatchers: site.targets.iter().map(|_| Dispatcher::default()).collect(),
        streams: HashMap::new(),
    }
}

fn encode(event: &Event<'_>) -> Vec<u8> {
    let len = record::encoded_len(event).expect("a valid event");
    let mut out = vec![0; len];
    record::encode_into(&mut out, event, Seq(1));
    out
}

/// An order-independent contribution of one key's state to its bucket's digest.
fn entry_digest(key: &[u8], state: Option<&(Option<Bytes>, Option<VersionTag>)>) -> u64 {
    let mut h = crc32fast_like(key);
    if let Some((value, tag)) = state {
        h = h
            .wrapping_mul(31)
            .wrapping_add(value.as_ref().map_or(1, |v| crc32fast_like(v)));
        if let Some(t) = tag {
            h = h
                .wrapping_mul(31)
                .wrapping_add(t.timestamp_us ^ u64::from(t.site.0) << 56);
        }
    }
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// FNV-1a, 64-bit.
fn crc32fast_like(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
