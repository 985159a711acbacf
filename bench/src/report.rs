//! Output: JSON lines on stdout as results arrive; progress, a table and the target verdicts
//! on stderr.

use rustix::time::{ClockId, clock_gettime};
use serde::Serialize;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bytes in a megabyte, for MB/s (decimal, as disk and memory bandwidths are quoted).
const MB: f64 = 1e6;
/// In a block device's `stat` file, the index of the count of completed flush requests
/// (`Documentation/block/stat.rst`: the 16th field, since Linux 5.5).
const STAT_FLUSHES_FIELD: usize = 15;

/// The `stat` file of the block device being measured, set once by [`watch_disk`].
static DISK_STAT: OnceLock<PathBuf> = OnceLock::new();

/// Makes every [`Stopwatch`] also count the cache flushes completed by the block device
/// holding `dir` (each `fdatasync` that reaches the disk issues at least one). Returns the
/// counter's file, or `None` when the kernel does not expose it: then no flushes are counted.
pub fn watch_disk(dir: &Path) -> Option<&'static Path> {
    let dev = rustix::fs::stat(dir).ok()?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let stat = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    read_flushes(&stat)?;
    Some(DISK_STAT.get_or_init(|| stat))
}

fn read_flushes(stat: &Path) -> Option<u64> {
    let text = fs::read_to_string(stat).ok()?;
    text.split_whitespace()
        .nth(STAT_FLUSHES_FIELD)?
        .parse()
        .ok()
}

fn disk_flushes() -> Option<u64> {
    read_flushes(DISK_STAT.get()?)
}

/// Times a measurement: wall time, the CPU time of the measuring thread (the shard) and of
/// the rest of the process (the helper thread doing file work), and the disk's cache flushes.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch {
    wall: Instant,
    thread: Duration,
    process: Duration,
    flushes: Option<u64>,
}

/// What a [`Stopwatch`] measured.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub seconds: f64,
    pub thread_cpu_s: f64,
    pub other_cpu_s: f64,
    /// Cache flushes the disk completed meanwhile, if they are counted (see [`watch_disk`]).
    pub flushes: Option<u64>,
}

fn cpu(clock: ClockId) -> Duration {
    let t = clock_gettime(clock);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            thread: cpu(ClockId::ThreadCPUTime),
            process: cpu(ClockId::ProcessCPUTime),
            flushes: disk_flushes(),
        }
    }

    pub fn stop(&self) -> Timing {
        let seconds = self.wall.elapsed().as_secs_f64();
        let thread = (cpu(ClockId::ThreadCPUTime) - self.thread).as_secs_f64();
        let process = (cpu(ClockId::ProcessCPUTime) - self.process).as_secs_f64();
        Timing {
            seconds,
            thread_cpu_s: thread,
            other_cpu_s: (process - thread).max(0.0),
            flushes: self
                .flushes
                .zip(disk_flushes())
                .map(|(before, after)| after.saturating_sub(before)),
        }
    }
}

/// One measurement: a JSON line, and a row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `memcpy`, `disk_write`, `seg_create`, `disk_read`, `append`, `peek_ack`, `dma_write`
    /// or `reopen`.
    pub bench: &'static str,
    /// A readable name of the case, unique within `bench`.
    pub case: String,
    /// `memory`, `overflow` or `persistent`; null for the bounds.
    pub mode: Option<&'static str>,
    /// The sync policy of a persistent case; null otherwise.
    pub sync: Option<&'static str>,
    /// Reopen and the disk read bound: `warm` or `cold` page cache; null otherwise.
    pub cache: Option<&'static str>,
    /// Number of queues the events were spread over; null for the bounds.
    pub queues: Option<u16>,
    /// Value bytes per event; null for the disk write bound.
    pub value_bytes: Option<u64>,
    /// Encoded bytes per record (for the bounds: per copied or written chunk).
    pub record_bytes: u64,
    /// Events (for the bounds: chunks).
    pub events: u64,
    /// Total bytes (`events * record_bytes`).
    pub bytes: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// Record bytes per second, in MB (10⁶ bytes).
    pub mb_per_s: f64,
    /// Value bytes per second, in MB; null for the disk write bound.
    pub value_mb_per_s: Option<f64>,
    /// Share of the wall time the measuring thread (the shard, for queue cases) was on a CPU:
    /// well under 1 means it waited (for segment files, syncs, the disk).
    pub thread_busy: f64,
    /// CPU seconds the process's other threads used meanwhile: the helper thread's file work.
    pub other_threads_cpu_s: f64,
    /// `mb_per_s` over the memcpy bound of the same record size.
    pub ratio_to_memcpy: Option<f64>,
    /// `mb_per_s` over the disk write bound; for cases that write files.
    pub ratio_to_disk_write: Option<f64>,
    /// `mb_per_s` over the disk read bound; for the cold-cache reopen.
    pub ratio_to_disk_read: Option<f64>,
    /// Append: record bytes held in segment files once every append returned.
    pub bytes_on_disk: Option<u64>,
    /// Cache flushes completed by the block device holding the working directory during the
    /// timed part, all processes together; null when the kernel does not expose the count.
    pub disk_flushes: Option<u64>,
}

impl Row {
    /// A row with nothing measured yet; [`Row::timed`] fills in the figures.
    pub fn new(
        bench: &'static str,
        case: String,
        value_bytes: Option<u64>,
        record_bytes: u64,
    ) -> Row {
        Row {
            bench,
            case,
            mode: None,
            sync: None,
            cache: None,
            queues: None,
            value_bytes,
            record_bytes,
            events: 0,
            bytes: 0,
            seconds: 0.0,
            events_per_s: 0.0,
            mb_per_s: 0.0,
            value_mb_per_s: None,
            thread_busy: 0.0,
            other_threads_cpu_s: 0.0,
            ratio_to_memcpy: None,
            ratio_to_disk_write: None,
            ratio_to_disk_read: None,
            bytes_on_disk: None,
            disk_flushes: None,
        }
    }

    /// Sets the count and the timing, and the rates that follow from them.
    pub fn timed(mut self, events: u64, timing: Timing) -> Row {
        let seconds = timing.seconds.max(1e-9);
        self.events = events;
        self.bytes = events * self.record_bytes;
        self.seconds = seconds;
        self.events_per_s = events as f64 / seconds;
        self.mb_per_s = self.bytes as f64 / seconds / MB;
        self.value_mb_per_s = self.value_bytes.map(|v| (events * v) as f64 / seconds / MB);
        self.thread_busy = timing.thread_cpu_s / seconds;
        self.other_threads_cpu_s = timing.other_cpu_s;
        self.disk_flushes = timing.flushes;
        self
    }
}

/// A performance target and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Always `target`.
    pub bench: &'static str,
    pub target: String,
    /// The `bench` and `case` of the row checked.
    pub checked: String,
    pub measured: f64,
    pub threshold: f64,
    /// `min`: measured must be at least the threshold; `max`: below it.
    pub kind: &'static str,
    pub unit: &'static str,
    pub pass: bool,
}

/// Where results go. Everything is printed as it arrives except the table, at the end.
#[derive(Debug)]
pub struct Reporter {
    quiet: bool,
    rows: Vec<Row>,
    verdicts: Vec<Verdict>,
    notes: Vec<String>,
}

impl Reporter {
    /// `quiet`: JSON on stdout only, nothing on stderr.
    pub fn new(quiet: bool) -> Reporter {
        Reporter {
            quiet,
            rows: Vec::new(),
            verdicts: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Prints a JSON line.
    pub fn json(&self, value: &impl Serialize) -> anyhow::Result<()> {
        let line = serde_json::to_string(value)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }

    /// A line of progress on stderr.
    pub fn progress(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// Something the reader of the table should know; printed now and repeated under the table.
    pub fn note(&mut self, line: String) {
        self.progress(&format!("note: {line}"));
        self.notes.push(line);
    }

    /// Records a measurement and prints its JSON line.
    pub fn row(&mut self, row: Row) -> anyhow::Result<()> {
        self.json(&row)?;
        self.progress(&format!(
            "  {:<10} {:<36} {:>8.3} s {:>7.0} MB/s",
            row.bench, row.case, row.seconds, row.mb_per_s
        ));
        self.rows.push(row);
        Ok(())
    }

    /// The measurements so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Records a verdict and prints its JSON line.
    pub fn verdict(&mut self, verdict: Verdict) -> anyhow::Result<()> {
        self.json(&verdict)?;
        self.verdicts.push(verdict);
        Ok(())
    }

    /// Prints the table of every measurement, the verdicts and the notes on stderr.
    pub fn finish(&self) {
        if self.quiet {
            return;
        }
        eprintln!();
        eprintln!(
            "{:<10} {:<36} {:>9} {:>7} {:>9} {:>6} {:>10} {:>7} {:>5} {:>5} {:>6} {:>7}",
            "bench",
            "case",
            "events",
            "seconds",
            "Mevents/s",
            "MB/s",
            "value MB/s",
            "xmemcpy",
            "xdisk",
            "busy",
            "other",
            "flushes"
        );
        for r in &self.rows {
            let ratio = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
            eprintln!(
                "{:<10} {:<36} {:>9} {:>7.3} {:>9.2} {:>6.0} {:>10} {:>7} {:>5} {:>4.0}% {:>5.2}s {:>7}",
                r.bench,
                r.case,
                r.events,
                r.seconds,
                r.events_per_s / 1e6,
                r.mb_per_s,
                r.value_mb_per_s
                    .map_or("-".to_string(), |v| format!("{v:.0}")),
                ratio(r.ratio_to_memcpy),
                // A row is compared with one disk bound at most: write, or read (cold reopen).
                ratio(r.ratio_to_disk_write.or(r.ratio_to_disk_read)),
                r.thread_busy * 100.0,
                r.other_threads_cpu_s,
                r.disk_flushes.map_or("-".to_string(), |n| n.to_string()),
            );
        }
        eprintln!();
        for v in &self.verdicts {
            let op = if v.kind == "min" { ">=" } else { "<" };
            eprintln!(
                "{} {}: {} = {:.3} {} (target {op} {:.3} {})",
                if v.pass { "PASS" } else { "MISS" },
                v.target,
                v.checked,
                v.measured,
                v.unit,
                v.threshold,
                v.unit
            );
        }
        for n in &self.notes {
            eprintln!("note: {n}");
        }
    }
}
