//! `strait-bench queue`: append, peek + ack and reopen throughput of the gateway-sender queue
//! on one glommio shard, against the memcpy and disk bounds of the same machine and against
//! glommio's DMA stream writer.

use crate::bounds::{self, DISK_CHUNK_BYTES, Ring};
use crate::report::{self, Reporter, Row, Stopwatch, Verdict};
use crate::size::ByteSize;
use anyhow::{Context as _, anyhow, ensure};
use clap::{Args, ValueEnum};
use futures_lite::AsyncWriteExt as _;
use glommio::io::{DmaStreamWriterBuilder, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strait_queue::ids::{
    BucketId, EventId, MemberId, QueueId, RegionId, Seq, SiteId, StreamId, VersionTag,
};
use strait_queue::queue::{
    MEMORY_BYTES_MAX_DEFAULT, QueueConfig, SEGMENT_BYTES_MIN, SPARE_SEGMENTS_DEFAULT, SenderQueue,
    SyncPolicy,
};
use strait_queue::record::{self, Event, Op};
use strait_queue::shard::ShardQueue;

/// Record bytes appended per case when `--bytes` is not given: overflow and persistent.
const DEFAULT_BYTES_DISK: u64 = 512 << 20;
/// Record bytes appended per case when `--bytes` is not given: memory.
const DEFAULT_BYTES_MEMORY: u64 = 256 << 20;
/// The memory case's budget is twice its data plus this, so it never overflows (and stays
/// under the three-quarters mark where the queue starts creating spare segments).
const MEMORY_HEADROOM_BYTES: u64 = 64 << 20;
/// Value size of the records written for the reopen measurement.
const REOPEN_VALUE_BYTES: u64 = 1 << 10;
/// A peek hands out at most this many events...
const PEEK_EVENTS_MAX: u32 = 1000;
/// ...and this many bytes.
const PEEK_BYTES_MAX: u64 = 1 << 20;
/// Every event carries a key of this many bytes (the event number, then padding)...
const KEY_BYTES: usize = 16;
/// ...and one recipient site.
const RECIPIENTS: [SiteId; 1] = [SiteId(2)];
/// How long a fresh queue may take to create its spare segments before the timer starts.
const SPARES_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffer size of the DMA writer comparison...
const DMA_BUFFER_BYTES: usize = 1 << 20;
/// ...and how many of its buffers may be written at once.
const DMA_WRITE_BEHIND: usize = 8;
const GIB: f64 = (1u64 << 30) as f64;

/// Options of `strait-bench queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Value sizes to measure, comma-separated (suffixes KiB, MiB, GiB).
    #[arg(long, value_delimiter = ',', default_value = "100,1KiB,16KiB")]
    sizes: Vec<ByteSize>,
    /// Queue modes to measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,overflow,persistent"
    )]
    modes: Vec<Mode>,
    /// Sync policies of the persistent cases, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "never,interval-100ms,every-batch"
    )]
    syncs: Vec<SyncMode>,
    /// Numbers of queues the events are spread over, round-robin, comma-separated: every
    /// queue case runs once per number (the reopen measurement uses the first).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    queues: Vec<u16>,
    /// Record bytes appended per case, and written by the DMA writer comparison and the disk
    /// write and segment creation bounds (the memcpy bound copies at least 512MiB)
    /// [default: 512MiB for overflow and persistent cases and the bounds, 256MiB for memory]
    #[arg(long)]
    bytes: Option<ByteSize>,
    /// Memory budget of the overflow cases: everything beyond it goes to segment files.
    #[arg(long, default_value = "8MiB")]
    overflow_memory: ByteSize,
    /// Size of each segment file.
    #[arg(long, default_value = "4MiB")]
    segment_bytes: ByteSize,
    /// Record bytes (1 KiB values) written to a persistent queue that is then closed and
    /// reopened, timing the recovery; 0 skips the reopen measurement and the disk read bound.
    #[arg(long, default_value = "1GiB")]
    reopen_bytes: ByteSize,
    /// Skip the comparison with glommio's DMA stream writer (`dma_write`) [default: run it]
    #[arg(long, default_value_t = false)]
    no_dma_write: bool,
    /// The writer lets other tasks (the queue's driver, finished file work) run after every
    /// this many appended bytes, as a writer fed by a socket would; 0 = only when the queue
    /// makes it wait for a segment.
    #[arg(long, default_value = "1MiB")]
    yield_bytes: ByteSize,
    /// Directory in which the working directory (segment files, the disk write file) is
    /// created: it must be on the disk to measure, not a tmpfs.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Keep the working directory at the end instead of deleting it [default: off]
    #[arg(long, default_value_t = false)]
    keep: bool,
    /// Print only the JSON lines on stdout: no progress, table or verdicts on stderr
    /// [default: off]
    #[arg(long, default_value_t = false)]
    json_only: bool,
}

/// Where a case keeps its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Not persistent, with a memory budget that holds every event.
    Memory,
    /// Not persistent, with a small memory budget (`--overflow-memory`): most events go to
    /// segment files.
    Overflow,
    /// Persistent: every event goes to a segment file.
    Persistent,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Overflow => "overflow",
            Mode::Persistent => "persistent",
        }
    }
}

/// The sync policy of a persistent case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SyncMode {
    /// `SyncPolicy::Never`.
    Never,
    /// `SyncPolicy::IntervalMs(100)`.
    #[value(name = "interval-100ms")]
    Interval100Ms,
    /// `SyncPolicy::EveryBatch`, and the writer waits for the last append of every queue to
    /// be durable.
    EveryBatch,
}

impl SyncMode {
    fn label(self) -> &'static str {
        match self {
            SyncMode::Never => "never",
            SyncMode::Interval100Ms => "interval-100ms",
            SyncMode::EveryBatch => "every-batch",
        }
    }

    fn policy(self) -> SyncPolicy {
        match self {
            SyncMode::Never => SyncPolicy::Never,
            SyncMode::Interval100Ms => SyncPolicy::IntervalMs(100),
            SyncMode::EveryBatch => SyncPolicy::EveryBatch,
        }
    }
}

/// One queue case: a mode, a sync policy when persistent, a value size, a number of queues.
#[derive(Clone, Copy, Debug)]
struct Case {
    mode: Mode,
    sync: Option<SyncMode>,
    value_bytes: u64,
    queues: u16,
}

/// What every case needs: the options and the bounds.
#[derive(Debug)]
struct Ctx<'a> {
    args: &'a QueueArgs,
    work: &'a Path,
    /// memcpy MB/s by value size.
    memcpy: BTreeMap<u64, f64>,
    /// Disk write MB/s.
    disk: f64,
}

impl Ctx<'_> {
    /// `mode/sync/size`, followed by `/<n>q` when `--queues` gives several numbers.
    fn label(&self, case: &Case) -> String {
        let mut label = case.mode.label().to_string();
        if let Some(s) = case.sync {
            label = format!("{label}/{}", s.label());
        }
        label = format!("{label}/{}", ByteSize(case.value_bytes));
        if self.args.queues.len() > 1 {
            label = format!("{label}/{}q", case.queues);
        }
        label
    }

    fn bytes(&self, mode: Mode) -> u64 {
        match (self.args.bytes, mode) {
            (Some(b), _) => b.0,
            (None, Mode::Memory) => DEFAULT_BYTES_MEMORY,
            (None, _) => DEFAULT_BYTES_DISK,
        }
    }

    fn config(
        &self,
        mode: Mode,
        sync: Option<SyncMode>,
        queues: u16,
        total_bytes: u64,
    ) -> QueueConfig {
        QueueConfig {
            queue_count: queues,
            memory_bytes_max: match mode {
                Mode::Memory => total_bytes * 2 + MEMORY_HEADROOM_BYTES,
                Mode::Overflow => self.args.overflow_memory.0,
                Mode::Persistent => MEMORY_BYTES_MAX_DEFAULT,
            },
            persistent: mode == Mode::Persistent,
            sync: sync.map_or(SyncPolicy::Never, SyncMode::policy),
            segment_bytes: self.args.segment_bytes.0 as u32,
            ..QueueConfig::default()
        }
    }

    /// Fills in the ratios of a row to the bounds.
    fn ratios(&self, mut row: Row, writes_files: bool) -> Row {
        row.ratio_to_memcpy = row
            .value_bytes
            .and_then(|v| self.memcpy.get(&v))
            .map(|m| row.mb_per_s / m);
        row.ratio_to_disk_write = writes_files.then(|| row.mb_per_s / self.disk);
        row
    }
}

/// The events a case appends: one value, a key carrying the event number.
#[derive(Debug)]
struct Workload {
    key: [u8; KEY_BYTES],
    value: Vec<u8>,
}

impl Workload {
    fn new(value_bytes: u64) -> Workload {
        // Arbitrary non-zero bytes (xorshift), so nothing is compressible or all zeros.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let value = (0..value_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Workload {
            key: [b'k'; KEY_BYTES],
            value,
        }
    }

    /// Event number `n`.
    fn event(&mut self, n: u64) -> Event<'_> {
        self.key[..8].copy_from_slice(&n.to_le_bytes());
        Event {
            op: Op::Create,
            region: RegionId(1),
            bucket: BucketId((n % 113) as u16),
            id: EventId {
                origin_site: SiteId(1),
                origin_member: MemberId(1),
                stream: StreamId(0),
                seq: n,
            },
            version: VersionTag {
                timestamp_us: 1_700_000_000_000_000 + n,
                site: SiteId(1),
            },
            recipients: &RECIPIENTS,
            key: &self.key,
            value: &self.value,
        }
    }

    /// Encoded bytes of every record of this workload.
    fn record_bytes(&mut self) -> anyhow::Result<u64> {
        Ok(record::encoded_len(&self.event(0))? as u64)
    }
}

/// Runs `strait-bench queue`.
pub fn run(args: QueueArgs) -> anyhow::Result<()> {
    check(&args)?;
    let parent =
        fs::canonicalize(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("strait-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a working directory in {}", parent.display()))?;
    let mut out = Reporter::new(args.json_only);
    environment(&mut out, work.path())?;
    // One shard pinned to CPU 0 when the machine allows it, and one helper thread for file work.
    let executor = [Placement::Fixed(0), Placement::Unbound]
        .into_iter()
        .find_map(|placement| {
            LocalExecutorBuilder::new(placement)
                .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
                .make()
                .ok()
        })
        .ok_or_else(|| anyhow!("cannot start a glommio executor (io_uring unavailable?)"))?;
    let result = executor.run(bench(&args, work.path(), &mut out));
    out.finish();
    if args.keep {
        let kept = work.keep();
        out.progress(&format!("kept the working directory {}", kept.display()));
    }
    result
}

/// Refuses options the queue cannot run with.
fn check(args: &QueueArgs) -> anyhow::Result<()> {
    ensure!(
        !args.queues.is_empty() && args.queues.iter().all(|&q| q > 0),
        "--queues must be at least 1"
    );
    ensure!(
        !args.sizes.is_empty(),
        "--sizes needs at least one value size"
    );
    for s in &args.sizes {
        ensure!(
            s.0 as usize <= record::VALUE_BYTES_MAX,
            "value size {s} is over the queue's limit of {}",
            ByteSize(record::VALUE_BYTES_MAX as u64)
        );
    }
    let segment = args.segment_bytes.0;
    ensure!(
        (SEGMENT_BYTES_MIN as u64..=u32::MAX as u64).contains(&segment),
        "--segment-bytes must be between {} and 4GiB",
        ByteSize(SEGMENT_BYTES_MIN as u64)
    );
    Ok(())
}

/// Prints where the benchmark runs; warns when segment files would live in memory.
fn environment(out: &mut Reporter, work: &Path) -> anyhow::Result<()> {
    let filesystem = filesystem(work);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let disk_stat = report::watch_disk(work);
    out.json(&serde_json::json!({
        "bench": "env",
        "dir": work,
        "filesystem": filesystem,
        "nproc": nproc,
        "kernel": kernel,
        "disk_stat": disk_stat,
    }))?;
    out.progress(&format!(
        "strait-bench queue: {nproc} CPUs, kernel {kernel}, working directory {} ({filesystem})",
        work.display()
    ));
    match disk_stat {
        Some(stat) => out.progress(&format!("disk flushes counted from {}", stat.display())),
        None => out.note(format!(
            "disk flushes not counted: no flush count for the block device of {}",
            work.display()
        )),
    }
    if filesystem == "tmpfs" {
        out.note(format!(
            "{} is on a tmpfs: segment files live in memory, the disk figures mean nothing; use --dir",
            work.display()
        ));
    }
    Ok(())
}

/// The type of the filesystem holding `dir`, from its `statfs` magic number.
fn filesystem(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(st) => match i128::from(st.f_type) {
            0xEF53 => "ext2/3/4".into(),
            0x0102_1994 => "tmpfs".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x794C_7630 => "overlayfs".into(),
            other => format!("statfs type {other:#x}"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

async fn bench(args: &QueueArgs, work: &Path, out: &mut Reporter) -> anyhow::Result<()> {
    let mut ctx = Ctx {
        args,
        work,
        memcpy: BTreeMap::new(),
        disk: 0.0,
    };
    let bound_bytes = args.bytes.map_or(DEFAULT_BYTES_DISK, |b| b.0);
    out.progress(&format!("bounds ({} each):", ByteSize(bound_bytes)));
    let mut values: BTreeSet<u64> = args.sizes.iter().map(|s| s.0).collect();
    if args.reopen_bytes.0 > 0 {
        values.insert(REOPEN_VALUE_BYTES);
    }
    let mut ring = Ring::new();
    for v in values {
        let record = Workload::new(v).record_bytes()?;
        let (chunks, timing) = bounds::memcpy(&mut ring, record as usize, bound_bytes);
        let row = Row::new(
            "memcpy",
            format!("{} records", ByteSize(v)),
            Some(v),
            record,
        )
        .timed(chunks, timing);
        ctx.memcpy.insert(v, row.mb_per_s);
        out.row(row)?;
    }
    drop(ring);
    let disk_bytes = (bound_bytes / DISK_CHUNK_BYTES as u64).max(1) * DISK_CHUNK_BYTES as u64;
    rustix::fs::sync();
    let (chunks, timing) = bounds::disk_write(work, disk_bytes)?;
    let row = Row::new(
        "disk_write",
        "1MiB writes + fdatasync".into(),
        None,
        DISK_CHUNK_BYTES as u64,
    )
    .timed(chunks, timing);
    ctx.disk = row.mb_per_s;
    out.row(row)?;
    let segment = args.segment_bytes.0;
    let count = (bound_bytes / segment).max(1);
    rustix::fs::sync();
    let timing = bounds::segment_create(&work.join("segment-create"), segment as u32, count)?;
    let case = format!("{} segments", args.segment_bytes);
    let row = Row::new("seg_create", case, None, segment).timed(count, timing);
    out.row(row)?;

    for &mode in &args.modes {
        let syncs: Vec<Option<SyncMode>> = match mode {
            Mode::Persistent => args.syncs.iter().copied().map(Some).collect(),
            Mode::Memory | Mode::Overflow => vec![None],
        };
        for sync in syncs {
            for size in &args.sizes {
                for &queues in &args.queues {
                    let case = Case {
                        mode,
                        sync,
                        value_bytes: size.0,
                        queues,
                    };
                    queue_case(&ctx, case, out)
                        .await
                        .with_context(|| format!("case {}", ctx.label(&case)))?;
                }
            }
        }
    }
    if !args.no_dma_write {
        for size in &args.sizes {
            dma_write(&ctx, size.0, out)
                .await
                .with_context(|| format!("dma_write of {size} values"))?;
        }
    }
    if args.reopen_bytes.0 > 0 {
        reopen(&ctx, out).await.context("reopen")?;
    }
    verdicts(out)
}

/// Appends a case's events, then drains them with peek + ack.
async fn queue_case(ctx: &Ctx<'_>, case: Case, out: &mut Reporter) -> anyhow::Result<()> {
    let mut work = Workload::new(case.value_bytes);
    let record = work.record_bytes()?;
    let total = ctx.bytes(case.mode);
    let events = (total / record).max(1);
    let label = ctx.label(&case);
    let dir = ctx.work.join(label.replace('/', "-"));
    let config = ctx.config(case.mode, case.sync, case.queues, events * record);
    out.progress(&format!("{label} ({events} events):"));
    // Start from a clean page cache: no writeback left over from the previous case.
    rustix::fs::sync();
    let (sq, report) = ShardQueue::open(dir.clone(), config).await?;
    ensure!(
        report.events == 0,
        "a fresh queue recovered {} events",
        report.events
    );
    if case.mode == Mode::Persistent {
        wait_for_spares(&sq).await?;
    }

    let clock = Stopwatch::start();
    let last = append(&sq, &mut work, events, case.queues, ctx.args.yield_bytes.0).await?;
    for (q, &seq) in last.iter().enumerate() {
        if seq > Seq(0) {
            sq.wait_durable(QueueId(q as u16), seq).await?;
        }
    }
    let timing = clock.stop();
    let stats = sq.with(|q| q.stats(0));
    ensure!(
        stats.events_queued == events && stats.bytes_queued == events * record,
        "appended {events} events of {record} bytes but the queue holds {} events, {} bytes",
        stats.events_queued,
        stats.bytes_queued
    );
    if case.mode == Mode::Memory {
        ensure!(
            stats.bytes_on_disk == 0,
            "the memory case overflowed {} bytes to segment files",
            stats.bytes_on_disk
        );
    }
    let mut row = Row::new("append", label.clone(), Some(case.value_bytes), record);
    row = row.timed(events, timing);
    row.mode = Some(case.mode.label());
    row.sync = case.sync.map(SyncMode::label);
    row.queues = Some(case.queues);
    row.bytes_on_disk = Some(stats.bytes_on_disk);
    out.row(ctx.ratios(row, case.mode != Mode::Memory))?;

    let clock = Stopwatch::start();
    let (drained, bytes) = drain(&sq, case.queues).await?;
    let timing = clock.stop();
    ensure!(
        drained == events && bytes == events * record,
        "appended {events} events of {record} bytes but peeked {drained} events, {bytes} bytes"
    );
    let mut row = Row::new("peek_ack", label, Some(case.value_bytes), record);
    row = row.timed(events, timing);
    row.mode = Some(case.mode.label());
    row.sync = case.sync.map(SyncMode::label);
    row.queues = Some(case.queues);
    out.row(ctx.ratios(row, false))?;

    sq.close().await?;
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// Waits until a fresh persistent queue has created its spare segments, so that the timed
/// part measures the steady state rather than the queue's first file creation.
async fn wait_for_spares(sq: &ShardQueue) -> anyhow::Result<()> {
    let deadline = Instant::now() + SPARES_TIMEOUT;
    while sq.with(|q| q.stats(0).segments) < SPARE_SEGMENTS_DEFAULT as u64 {
        ensure!(
            Instant::now() < deadline,
            "the queue created no spare segment in {SPARES_TIMEOUT:?} (last error: {:?})",
            sq.last_error()
        );
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Appends events `0..events` round-robin over `queues` queues without waiting for
/// durability, yielding after every `yield_bytes` bytes. Returns the last sequence number
/// of each queue.
async fn append(
    sq: &ShardQueue,
    work: &mut Workload,
    events: u64,
    queues: u16,
    yield_bytes: u64,
) -> anyhow::Result<Vec<Seq>> {
    let record = work.record_bytes()?;
    let mut last = vec![Seq(0); queues as usize];
    let mut since_yield = 0u64;
    for n in 0..events {
        let q = (n % queues as u64) as usize;
        last[q] = sq.append_nowait(QueueId(q as u16), &work.event(n)).await?;
        since_yield += record;
        if yield_bytes > 0 && since_yield >= yield_bytes {
            since_yield = 0;
            glommio::executor().yield_now().await;
        }
    }
    Ok(last)
}

/// Drains every queue in peek batches, round-robin, reading every byte of each batch (a
/// CRC-32 over it, as a sender would checksum or copy it) and acknowledging it, and yielding
/// after each batch as a sender waiting on its socket would. Returns the events and bytes
/// drained.
async fn drain(sq: &ShardQueue, queues: u16) -> anyhow::Result<(u64, u64)> {
    let mut crc = crc32fast::Hasher::new();
    let (mut events, mut bytes) = (0u64, 0u64);
    loop {
        let mut progressed = false;
        for q in 0..queues {
            if let Some((e, b)) = sq.with(|sq| send_batch(sq, QueueId(q), &mut crc))? {
                events += e;
                bytes += b;
                progressed = true;
                glommio::executor().yield_now().await;
            }
        }
        if !progressed {
            break;
        }
    }
    std::hint::black_box(crc.finalize());
    Ok((events, bytes))
}

/// Peeks one batch of queue `q`, reads its bytes into `crc` and acknowledges it.
fn send_batch(
    sq: &mut SenderQueue,
    q: QueueId,
    crc: &mut crc32fast::Hasher,
) -> anyhow::Result<Option<(u64, u64)>> {
    let Some(batch) = sq.peek(q, PEEK_EVENTS_MAX, PEEK_BYTES_MAX)? else {
        return Ok(None);
    };
    let mut seen = 0u64;
    for slice in sq.batch_slices(&batch) {
        crc.update(slice);
        seen += slice.len() as u64;
    }
    ensure!(
        seen == batch.bytes,
        "queue {q}: a batch of {} bytes has slices of {seen} bytes",
        batch.bytes
    );
    sq.ack(q, batch.last_seq)?;
    Ok(Some((batch.events as u64, batch.bytes)))
}

/// The alternative to writing segments through the mapping: encodes the records a persistent
/// case of `value_bytes` values appends, one at a time into a record-sized staging buffer,
/// and writes each with glommio's `DmaStreamWriter` (O_DIRECT, [`DMA_BUFFER_BYTES`] buffers,
/// [`DMA_WRITE_BEHIND`] in flight) to one file preallocated with `pre_allocate`, yielding as
/// the appends do. Timed until `close` returns, which fdatasyncs.
async fn dma_write(ctx: &Ctx<'_>, value_bytes: u64, out: &mut Reporter) -> anyhow::Result<()> {
    let mut work = Workload::new(value_bytes);
    let record = work.record_bytes()?;
    let events = (ctx.bytes(Mode::Persistent) / record).max(1);
    let total = events * record;
    let path = ctx
        .work
        .join(format!("dma-write-{}.dat", ByteSize(value_bytes)));
    let what = || format!("DMA stream writer on {}", path.display());
    out.progress(&format!(
        "dma_write/{} ({events} events):",
        ByteSize(value_bytes)
    ));
    rustix::fs::sync();
    // Read and write: a write-only DmaFile makes glommio's poll-ring probe fail and turn
    // polling off for the device (glommio issue #670).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await
        .map_err(std::io::Error::from)
        .with_context(what)?;
    file.pre_allocate(total, false)
        .await
        .map_err(std::io::Error::from)
        .with_context(what)?;
    let mut writer = DmaStreamWriterBuilder::new(file)
        .with_buffer_size(DMA_BUFFER_BYTES)
        .with_write_behind(DMA_WRITE_BEHIND)
        .build();
    let mut staging = vec![0u8; record as usize];
    let yield_bytes = ctx.args.yield_bytes.0;
    let mut since_yield = 0u64;
    let clock = Stopwatch::start();
    for n in 0..events {
        let len = record::encode_into(&mut staging, &work.event(n), Seq(n + 1));
        writer.write_all(&staging[..len]).await.with_context(what)?;
        since_yield += record;
        if yield_bytes > 0 && since_yield >= yield_bytes {
            since_yield = 0;
            glommio::executor().yield_now().await;
        }
    }
    writer.close().await.with_context(what)?;
    let timing = clock.stop();
    let written = fs::metadata(&path).with_context(what)?.len();
    ensure!(
        written == total,
        "the DMA writer left {written} bytes in {} instead of {total}",
        path.display()
    );
    fs::remove_file(&path).with_context(what)?;
    let case = format!("{} records", ByteSize(value_bytes));
    let row = Row::new("dma_write", case, Some(value_bytes), record).timed(events, timing);
    out.row(ctx.ratios(row, true))
}

/// Writes `--reopen-bytes` of 1 KiB records to a persistent queue, closes it, and times
/// `ShardQueue::open` (recovery reads and CRC-checks every record) with the page cache warm.
/// Then, if the page cache can be dropped, measures the disk read bound on a file of the same
/// size and times the open again with the cache cold.
async fn reopen(ctx: &Ctx<'_>, out: &mut Reporter) -> anyhow::Result<()> {
    let mut work = Workload::new(REOPEN_VALUE_BYTES);
    let record = work.record_bytes()?;
    let events = (ctx.args.reopen_bytes.0 / record).max(1);
    let queues = ctx.args.queues[0];
    let dir = ctx.work.join("reopen");
    // The files recovery reads are the same under every sync policy once the queue is closed
    // (close syncs everything), so fill it the fastest way.
    let config = ctx.config(Mode::Persistent, Some(SyncMode::Never), queues, 0);
    out.progress(&format!(
        "reopen: writing {} ({events} events of {} values)",
        ctx.args.reopen_bytes,
        ByteSize(REOPEN_VALUE_BYTES)
    ));
    rustix::fs::sync();
    let (sq, _) = ShardQueue::open(dir.clone(), config.clone()).await?;
    wait_for_spares(&sq).await?;
    append(&sq, &mut work, events, queues, ctx.args.yield_bytes.0).await?;
    sq.close().await?;
    rustix::fs::sync();
    let reopen = Reopen {
        dir: &dir,
        config: &config,
        queues,
        events,
        record,
    };
    reopen.time(ctx, out, "warm", None).await?;

    // The read bound: a file as large as the records, written and synced untimed, read back
    // from the disk.
    let read_bytes = (events * record).div_ceil(DISK_CHUNK_BYTES as u64) * DISK_CHUNK_BYTES as u64;
    let read_file = bounds::disk_read_file(ctx.work, read_bytes)?;
    if let Err(e) = bounds::drop_page_cache() {
        out.note(format!(
            "cold-cache reopen and disk read bound skipped: cannot drop the page cache ({e}); run as root"
        ));
        fs::remove_file(&read_file).with_context(|| format!("removing {}", read_file.display()))?;
    } else {
        let (bytes, timing) = bounds::disk_read(&read_file)?;
        ensure!(
            bytes == read_bytes,
            "read {bytes} bytes of {}, which holds {read_bytes}",
            read_file.display()
        );
        let chunks = bytes / DISK_CHUNK_BYTES as u64;
        let mut row = Row::new(
            "disk_read",
            "1MiB reads, cold cache".into(),
            None,
            DISK_CHUNK_BYTES as u64,
        )
        .timed(chunks, timing);
        row.cache = Some("cold");
        let read_mb_per_s = row.mb_per_s;
        out.row(row)?;
        bounds::drop_page_cache().context("dropping the page cache")?;
        reopen.time(ctx, out, "cold", Some(read_mb_per_s)).await?;
    }
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// A closed persistent queue to reopen, and what it holds.
#[derive(Debug)]
struct Reopen<'a> {
    dir: &'a Path,
    config: &'a QueueConfig,
    queues: u16,
    events: u64,
    record: u64,
}

impl Reopen<'_> {
    /// Times `ShardQueue::open`, checks that it recovered every event, reports a `reopen` row
    /// (with its ratio to `disk_read`, the disk read bound in MB/s, when given) and closes
    /// the queue again.
    async fn time(
        &self,
        ctx: &Ctx<'_>,
        out: &mut Reporter,
        cache: &'static str,
        disk_read: Option<f64>,
    ) -> anyhow::Result<()> {
        let (events, record) = (self.events, self.record);
        let clock = Stopwatch::start();
        let (sq, report) = ShardQueue::open(self.dir.to_path_buf(), self.config.clone()).await?;
        let timing = clock.stop();
        ensure!(
            report.is_clean() && report.events == events && report.bytes == events * record,
            "recovered {} events, {} bytes of {events} events, {} bytes: {report:?}",
            report.events,
            report.bytes,
            events * record
        );
        let case = format!("persistent/{}/{cache}", ByteSize(REOPEN_VALUE_BYTES));
        let mut row = Row::new("reopen", case, Some(REOPEN_VALUE_BYTES), record);
        row = row.timed(events, timing);
        row.mode = Some(Mode::Persistent.label());
        row.cache = Some(cache);
        row.queues = Some(self.queues);
        let mut row = ctx.ratios(row, false);
        row.ratio_to_disk_read = disk_read.map(|bound| row.mb_per_s / bound);
        out.row(row)?;
        sq.close().await?;
        Ok(())
    }
}

/// Checks the measurements against the targets.
fn verdicts(out: &mut Reporter) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for r in out.rows() {
        let checked = format!("{} {}", r.bench, r.case);
        let persistent_append = r.bench == "append" && r.mode == Some(Mode::Persistent.label());
        if persistent_append && r.value_bytes == Some(1 << 10) {
            let ratio = r.ratio_to_memcpy.unwrap_or(0.0);
            found.push(Verdict {
                bench: "target",
                target: "persistent append of 1KiB records at >= 25% of memcpy".into(),
                checked,
                measured: ratio * 100.0,
                threshold: 25.0,
                kind: "min",
                unit: "% of memcpy",
                pass: ratio >= 0.25,
            });
        } else if persistent_append && r.value_bytes == Some(100) {
            let rate = r.events_per_s / 1e6;
            found.push(Verdict {
                bench: "target",
                target: "persistent append of 100B records at >= 5M events/s".into(),
                checked,
                measured: rate,
                threshold: 5.0,
                kind: "min",
                unit: "Mevents/s",
                pass: rate >= 5.0,
            });
        } else if r.bench == "reopen" {
            if let Some(ratio) = r.ratio_to_disk_read {
                notes.push(format!(
                    "{checked}: {:.0} MB/s, {ratio:.2} of the disk read bound \
                     (near 1: the disk is the limit)",
                    r.mb_per_s
                ));
            }
            // 1 s for 1 GiB; scaled when --reopen-bytes asks for another size.
            let limit = r.bytes as f64 / GIB;
            found.push(Verdict {
                bench: "target",
                target: format!(
                    "reopen of a persistent queue ({} cache) in < 1 s per GiB",
                    r.cache.unwrap_or("warm")
                ),
                checked,
                measured: r.seconds,
                threshold: limit,
                kind: "max",
                unit: "s",
                pass: r.seconds < limit,
            });
        }
    }
    let missing: Vec<&str> = [
        ("1KiB persistent append", "% of memcpy"),
        ("100B persistent append", "Mevents/s"),
        ("reopen", "s"),
    ]
    .into_iter()
    .filter(|(_, unit)| !found.iter().any(|v| v.unit == *unit))
    .map(|(what, _)| what)
    .collect();
    for v in found {
        out.verdict(v)?;
    }
    for note in notes {
        out.note(note);
    }
    for what in missing {
        out.note(format!(
            "target not checked: this run did not measure {what}"
        ));
    }
    Ok(())
}
