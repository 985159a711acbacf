//! The I/O shell of `strait-load`: connections, the open-loop writers, the readers that time
//! each reply, the end-to-end poller, live progress, and the [`Summary`].
//!
//! - [`LoadConfig`]: a checked description of the run ([`LoadConfig::check`]).
//! - [`run`]: carries it out and returns the [`Summary`].
//!
//! `threads` load threads (1 by default) share the connections. Each drives its connections
//! with non-blocking sockets and one `poll` (no thread per connection, no hand-off between
//! threads per request): it sends every operation when its [`Schedule`] says, whether or not
//! earlier replies came (open loop), gathering what is due on a connection into one write,
//! except that at most `pipeline` requests are outstanding on a connection (a full pipeline
//! holds the next ones back, and they go out late). Each reply is timed from its request's
//! *intended* send time, so a server that stalls is charged for every request that should have
//! gone out meanwhile (no coordinated omission).
//!
//! - [`Sender`]: one connection's operations, schedule and stop; [`Conn`]: the connection's
//!   socket, write and read buffers and requests in flight; [`drive`]: one load thread.
//!
//! End to end: every `sample_every`-th write of a connection goes to a key of its own
//! (`<prefix>e2e:<connection>:<n>`) with a value that starts `t=<µs since the Unix epoch>;`,
//! the write's intended send time (as for request → reply, so that a write that waited for a
//! pipeline slot is charged for the wait). Once site A acknowledged it, a poller GETs the key at
//! site B until it appears; the latency is the time of that GET's reply minus the time in the
//! value.

use super::workload::{KeyDist, Op, OpGen, Schedule, ValueSize};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::time::{ClockId, clock_gettime};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strait_net::resp::{Limits, Reply, encode_command, parse_reply};

/// Most connections of one run.
pub const CONNECTIONS_MAX: u32 = 1024;
/// Most load threads of one run.
pub const THREADS_MAX: u32 = 64;
/// Most requests outstanding on one connection.
pub const PIPELINE_MAX: u32 = 65_536;
/// Bytes of requests a connection gathers before it writes them out.
const WRITE_BATCH_BYTES_MAX: usize = 256 << 10;
/// A load thread's shortest sleep when no reply can be read: operations that fall due
/// meanwhile go out together in one write per connection, at most this late (the lateness is
/// part of their measured latency, since each is timed from its intended send time).
const POLL_WAIT_MIN: Duration = Duration::from_micros(100);
/// Bytes a load thread asks a socket for at once.
const READ_BYTES: usize = 256 << 10;
/// How long a reply may take before the connection counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Samples waiting for the poller at most; more are skipped (counted in `skipped`).
pub const E2E_PENDING_MAX: usize = 100_000;
/// GETs in one poll round at site B.
const E2E_POLL_BATCH_MAX: usize = 512;
/// Pause after a poll round that found nothing new: the resolution of the end-to-end latency.
const E2E_IDLE_POLL: Duration = Duration::from_micros(500);
/// Bytes of the `t=<16 digits>;` prefix of a sampled value: the smallest value size in e2e mode.
pub const E2E_VALUE_BYTES_MIN: usize = 19;
/// Progress lines on stderr, this often (on runs that last longer than one interval).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Highest latency the histograms hold, in microseconds (an hour); above it values are clamped.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// When the run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long (in rate mode: the operations scheduled within it).
    Duration(Duration),
    /// After this many operations over all connections.
    Requests(u64),
}

/// The end-to-end mode: where to look for the writes.
#[derive(Clone, Debug)]
pub struct E2eConfig {
    /// Site B's client port.
    pub server: SocketAddr,
    /// Every n-th write of each connection is sampled.
    pub sample_every: u64,
    /// How long to wait, after the last write was acknowledged, for samples to appear at B.
    pub wait: Duration,
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub server: SocketAddr,
    /// Sent as `REGION <name>` on every connection first (Strait only).
    pub region: Option<String>,
    /// Operations per second over all connections; `None`: as fast as possible.
    pub rate: Option<f64>,
    pub stop: Stop,
    pub keys: u64,
    pub key_dist: KeyDist,
    pub key_prefix: String,
    pub values: ValueSize,
    /// Share of GETs, 0 to 1.
    pub reads: f64,
    pub connections: u32,
    /// Load threads sharing the connections (connection `c` on thread `c % threads`).
    pub threads: u32,
    pub pipeline: u32,
    pub seed: u64,
    /// Progress lines on stderr.
    pub progress: bool,
    pub e2e: Option<E2eConfig>,
}

impl LoadConfig {
    /// Refuses a run that cannot be carried out, saying why.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(format!("--connections must be 1 to {CONNECTIONS_MAX}"));
        }
        if !(1..=THREADS_MAX.min(self.connections)).contains(&self.threads) {
            return Err(format!(
                "--threads must be 1 to {} (at most one a connection)",
                THREADS_MAX.min(self.connections)
            ));
        }
        if !(1..=PIPELINE_MAX).contains(&self.pipeline) {
            return Err(format!("--pipeline must be 1 to {PIPELINE_MAX}"));
        }
        if !(0.0..=1.0).contains(&self.reads) {
            return Err(format!(
                "--reads is a share of GETs from 0 to 1, not {}",
                self.reads
            ));
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if let Some(r) = self.rate
            && !(r > 0.0 && r.is_finite())
        {
            return Err(format!(
                "--rate must be above 0 operations per second, not {r}"
            ));
        }
        match self.stop {
            Stop::Requests(0) => return Err("--requests must be at least 1".into()),
            Stop::Duration(d) if d.is_zero() => return Err("--duration must be above 0".into()),
            _ => {}
        }
        if let Some(e) = &self.e2e {
            if e.sample_every == 0 {
                return Err("--e2e-sample-every must be at least 1".into());
            }
            if self.reads >= 1.0 {
                return Err("--e2e needs writes: --reads must be below 1".into());
            }
            if let ValueSize::Fixed(n) | ValueSize::Uniform(n, _) = self.values
                && n < E2E_VALUE_BYTES_MIN
            {
                return Err(format!(
                    "--e2e writes the send time into each sampled value: values must be at least {E2E_VALUE_BYTES_MIN} bytes"
                ));
            }
        }
        Ok(())
    }
}

/// Latencies in microseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// The distribution for plots: `[quantile, µs]` at each of [`LADDER_QUANTILES`].
    pub ladder: Vec<(f64, u64)>,
}

/// Quantiles of [`Latency::ladder`].
pub const LADDER_QUANTILES: [f64; 12] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
];

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            ladder: LADDER_QUANTILES
                .iter()
                .map(|&q| (q, h.value_at_quantile(q)))
                .collect(),
        }
    }
}

/// The end-to-end results.
#[derive(Clone, Debug, Serialize)]
pub struct E2eSummary {
    pub server: String,
    /// Writes sampled and acknowledged by site A.
    pub sampled: u64,
    /// Samples seen at site B with the value written.
    pub seen: u64,
    /// Samples not seen at B within the wait.
    pub missing: u64,
    /// Samples seen at B with another value (should be 0: each sample has a key of its own).
    pub wrong_value: u64,
    /// Samples not taken because [`E2E_PENDING_MAX`] were already waiting.
    pub skipped: u64,
    /// Write sent at A → value seen at B, µs.
    pub latency_us: Latency,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub server: String,
    pub connections: u32,
    pub pipeline: u32,
    /// Target operations per second; null: as fast as possible.
    pub rate: Option<f64>,
    pub seconds: f64,
    pub ops: u64,
    pub sets: u64,
    pub gets: u64,
    pub get_hits: u64,
    /// Error replies (`-ERR ...`).
    pub errors: u64,
    pub ops_per_s: f64,
    /// Value bytes written per second, MB (10⁶ bytes).
    pub set_mb_per_s: f64,
    /// CPU time the generator itself used over the run (all its threads), seconds: what it
    /// took from the machine it shares with the servers it measures.
    pub cpu_s: f64,
    /// Intended send time → reply, µs (from the actual send time when running at max rate).
    pub latency_us: Latency,
    pub e2e: Option<E2eSummary>,
}

/// A request in flight, as the reader needs to know it.
#[derive(Debug)]
struct Meta {
    intended: Instant,
    get: bool,
    /// Value bytes of a SET.
    value_bytes: usize,
    sample: Option<Sample>,
}

/// A sampled write: its key and the time in its value.
#[derive(Debug)]
struct Sample {
    key: Vec<u8>,
    written_unix_us: u64,
}

/// What one connection's reader counted.
#[derive(Debug)]
struct ConnResult {
    hist: Histogram<u64>,
    sets: u64,
    gets: u64,
    get_hits: u64,
    errors: u64,
    set_bytes: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// CPU time of this process so far (every thread), seconds.
fn process_cpu_s() -> f64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Connects, and selects the region when there is one.
fn connect(addr: SocketAddr, region: Option<&str>) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    if let Some(region) = region {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"REGION".as_slice(), region.as_bytes()]);
        s.write_all(&out)?;
        match ReplyReader::new(s.try_clone()?).next()? {
            Reply::Simple(_) => {}
            other => bail!("{addr} answered REGION {region} with {other:?}"),
        }
    }
    Ok(s)
}

/// Replies from a blocking socket (the poller's, and `REGION` at connect): bytes read and
/// not yet parsed, and a read buffer zeroed once.
#[derive(Debug)]
struct ReplyReader {
    s: TcpStream,
    buf: Vec<u8>,
    at: usize,
    chunk: Vec<u8>,
}

impl ReplyReader {
    fn new(s: TcpStream) -> ReplyReader {
        ReplyReader {
            s,
            buf: Vec::new(),
            at: 0,
            chunk: vec![0; READ_BYTES],
        }
    }

    /// The next reply.
    fn next(&mut self) -> anyhow::Result<Reply> {
        let limits = Limits::default();
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf[self.at..], &limits)? {
                self.at += used;
                if self.at == self.buf.len() {
                    self.buf.clear();
                    self.at = 0;
                }
                return Ok(reply);
            }
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            let n = self.s.read(&mut self.chunk).context("reading a reply")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

/// What one connection sends: its operations, their schedule and when it stops.
#[derive(Debug)]
struct Sender {
    conn: u32,
    ops: OpGen,
    schedule: Schedule,
    stop: Stop,
    /// This connection's share of `Stop::Requests`.
    requests: u64,
    key_prefix: String,
    sample_every: Option<u64>,
    /// Operations made so far (the next one's index).
    made: u64,
    /// SETs made so far (samples are every `sample_every`-th of them).
    writes: u64,
    /// No operation is left to make.
    finished: bool,
    /// Padding of values, as long as the largest value.
    filler: Vec<u8>,
}

impl Sender {
    /// When the next operation is meant to go (`start` + its offset), `now` at max rate, or
    /// `None` when the connection has made its last operation.
    fn next_due(&mut self, start: Instant, now: Instant) -> Option<Instant> {
        if self.finished {
            return None;
        }
        if matches!(self.stop, Stop::Requests(_)) && self.made >= self.requests {
            self.finished = true;
            return None;
        }
        match self.schedule.intended(self.made) {
            Some(at) if matches!(self.stop, Stop::Duration(d) if at >= d) => {
                self.finished = true;
                None
            }
            Some(at) => Some(start + at),
            None if matches!(self.stop, Stop::Duration(d) if now.duration_since(start) >= d) => {
                self.finished = true;
                None
            }
            None => Some(now),
        }
    }

    /// Encodes the next operation into `out`, meant to go at `intended`.
    fn make(&mut self, intended: Instant, out: &mut Vec<u8>) -> Meta {
        self.made += 1;
        let mut key = Vec::new();
        let mut value = Vec::new();
        let mut sample = None;
        let get = match self.ops.next_op() {
            Op::Get { key: k } => {
                key.extend_from_slice(format!("{}{k}", self.key_prefix).as_bytes());
                encode_command(out, &[b"GET".as_slice(), &key]);
                true
            }
            Op::Set {
                key: k,
                value_bytes,
            } => {
                self.writes += 1;
                match self.sample_every {
                    Some(every) if self.writes.is_multiple_of(every) => {
                        key.extend_from_slice(
                            format!("{}e2e:{}:{}", self.key_prefix, self.conn, self.writes)
                                .as_bytes(),
                        );
                        // The time the write was due, as for request -> reply: a write that
                        // waited for a pipeline slot behind a slow server is charged for it.
                        let late = Instant::now().saturating_duration_since(intended);
                        let written_unix_us = unix_us().saturating_sub(late.as_micros() as u64);
                        value.extend_from_slice(format!("t={written_unix_us:016};").as_bytes());
                        sample = Some(Sample {
                            key: key.clone(),
                            written_unix_us,
                        });
                    }
                    _ => key.extend_from_slice(format!("{}{k}", self.key_prefix).as_bytes()),
                }
                let pad = value_bytes.saturating_sub(value.len());
                value.extend_from_slice(&self.filler[..pad]);
                encode_command(out, &[b"SET".as_slice(), &key, &value]);
                false
            }
        };
        Meta {
            intended,
            get,
            value_bytes: value.len(),
            sample,
        }
    }
}

/// One connection as its load thread drives it: a non-blocking socket, requests encoded and
/// not yet written, requests in flight (oldest first: replies come in request order), reply
/// bytes not yet parsed, and what the replies counted.
#[derive(Debug)]
struct Conn {
    s: TcpStream,
    sender: Sender,
    /// Encoded requests; `out[out_at..]` is not written yet.
    out: Vec<u8>,
    out_at: usize,
    inflight: VecDeque<Meta>,
    /// Reply bytes; `input[in_at..]` is not parsed yet.
    input: Vec<u8>,
    in_at: usize,
    /// When a reply last came (or the run started): a connection silent for
    /// [`REPLY_TIMEOUT`] with requests in flight fails.
    last_reply: Instant,
    result: ConnResult,
}

impl Conn {
    fn finished(&self) -> bool {
        self.sender.finished && self.inflight.is_empty() && self.out_at == self.out.len()
    }

    /// Encodes every operation that is due by `now` while the pipeline has room, writing out
    /// what it gathers (at most [`WRITE_BATCH_BYTES_MAX`] at a time) without blocking. Returns
    /// when the next operation is due (`None`: none is left, the pipeline is full, or the
    /// socket takes no more for now).
    fn send_due(
        &mut self,
        start: Instant,
        now: Instant,
        pipeline: usize,
    ) -> anyhow::Result<Option<Instant>> {
        let mut next = None;
        while self.inflight.len() < pipeline {
            if self.out.len() - self.out_at >= WRITE_BATCH_BYTES_MAX {
                self.flush()?;
                if self.out_at < self.out.len() {
                    break;
                }
            }
            let Some(due) = self.sender.next_due(start, now) else {
                break;
            };
            if due > now {
                next = Some(due);
                break;
            }
            let meta = self.sender.make(due, &mut self.out);
            self.inflight.push_back(meta);
        }
        self.flush()?;
        Ok(next)
    }

    /// Writes what it can without blocking.
    fn flush(&mut self) -> anyhow::Result<()> {
        while self.out_at < self.out.len() {
            match self.s.write(&self.out[self.out_at..]) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("sending requests"),
            }
        }
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        Ok(())
    }

    /// Reads what has come without blocking and charges each reply to its request.
    fn receive(
        &mut self,
        chunk: &mut [u8],
        samples: Option<&(SyncSender<Sample>, Arc<AtomicU64>)>,
    ) -> anyhow::Result<u64> {
        loop {
            match self.s.read(chunk) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading replies"),
            }
        }
        // Every reply of this read arrived now.
        let now = Instant::now();
        let limits = Limits::default();
        let mut replies = 0;
        while let Some((reply, used)) = parse_reply(&self.input[self.in_at..], &limits)? {
            self.in_at += used;
            let Some(meta) = self.inflight.pop_front() else {
                bail!("the server sent a reply to no request: {reply:?}");
            };
            replies += 1;
            self.last_reply = now;
            self.result.charge(&meta, &reply, now);
            if let (Some(sample), Some((tx, skipped)), Reply::Simple(_)) =
                (meta.sample, samples, &reply)
                && tx.try_send(sample).is_err()
            {
                skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.in_at == self.input.len() {
            self.input.clear();
            self.in_at = 0;
        } else if self.in_at > READ_BYTES {
            self.input.drain(..self.in_at);
            self.in_at = 0;
        }
        Ok(replies)
    }
}

impl ConnResult {
    fn charge(&mut self, meta: &Meta, reply: &Reply, now: Instant) {
        self.hist
            .saturating_record((now - meta.intended).as_micros().max(1) as u64);
        match reply {
            Reply::Error(_) => self.errors += 1,
            Reply::Bulk(Some(_)) if meta.get => self.get_hits += 1,
            _ => {}
        }
        if meta.get {
            self.gets += 1;
        } else {
            self.sets += 1;
            self.set_bytes += meta.value_bytes as u64;
        }
    }
}

/// A load thread: drives its connections until each has made its last operation and has
/// every reply, sleeping in `poll` until a reply can be read, a write can go on, or the next
/// operation is due.
fn drive(
    mut conns: Vec<Conn>,
    start: Instant,
    pipeline: usize,
    done: &AtomicU64,
    samples: Option<(SyncSender<Sample>, Arc<AtomicU64>)>,
) -> anyhow::Result<Vec<ConnResult>> {
    let mut chunk = vec![0; READ_BYTES];
    // Which connections the last poll said are readable.
    let mut readable = vec![true; conns.len()];
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (c, ready) in conns.iter_mut().zip(&mut readable) {
            if std::mem::take(ready) && !c.inflight.is_empty() {
                let n = c.receive(&mut chunk, samples.as_ref())?;
                done.fetch_add(n, Ordering::Relaxed);
            }
            if let Some(due) = c.send_due(start, now, pipeline)? {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
            if !c.inflight.is_empty() && now.duration_since(c.last_reply) > REPLY_TIMEOUT {
                bail!("no reply for {} s", REPLY_TIMEOUT.as_secs());
            }
        }
        if conns.iter().all(Conn::finished) {
            break;
        }
        // Finished connections are left out: a socket the server closed would wake every poll.
        let polled: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].finished()).collect();
        let mut fds: Vec<PollFd> = polled
            .iter()
            .map(|&i| {
                let c = &conns[i];
                let mut flags = PollFlags::empty();
                if !c.inflight.is_empty() {
                    flags |= PollFlags::IN;
                }
                if c.out_at < c.out.len() {
                    flags |= PollFlags::OUT;
                }
                PollFd::new(&c.s, flags)
            })
            .collect();
        // At least POLL_WAIT_MIN when nothing can be read: operations due meanwhile go out
        // together, up to that late (and charged for it). At most a second: the reply timeout
        // is checked between polls.
        let wait = next
            .map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .clamp(POLL_WAIT_MIN, Duration::from_secs(1));
        let timeout = Timespec::try_from(wait).context("a poll timeout")?;
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).context("waiting for the connections"),
        }
        for (fd, &i) in fds.iter().zip(&polled) {
            readable[i] = !fd.revents().is_empty();
        }
    }
    Ok(conns.into_iter().map(|c| c.result).collect())
}

/// What the poller at site B found.
#[derive(Debug)]
struct E2eResult {
    hist: Histogram<u64>,
    sampled: u64,
    seen: u64,
    wrong_value: u64,
    missing: u64,
}

fn poller(s: TcpStream, rx: Receiver<Sample>, wait: Duration) -> anyhow::Result<E2eResult> {
    let mut r = E2eResult {
        hist: histogram(),
        sampled: 0,
        seen: 0,
        wrong_value: 0,
        missing: 0,
    };
    let mut pending: VecDeque<Sample> = VecDeque::new();
    let mut closed_at: Option<Instant> = None;
    let mut out = Vec::new();
    let mut replies = ReplyReader::new(s);
    loop {
        loop {
            match rx.try_recv() {
                Ok(sample) => {
                    r.sampled += 1;
                    pending.push_back(sample);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if pending.is_empty() {
            if closed_at.is_some() {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(sample) => {
                    r.sampled += 1;
                    pending.push_back(sample);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                }
            }
            continue;
        }
        if closed_at.is_some_and(|t| t.elapsed() > wait) {
            break;
        }
        let n = pending.len().min(E2E_POLL_BATCH_MAX);
        out.clear();
        for sample in pending.iter().take(n) {
            encode_command(&mut out, &[b"GET".as_slice(), &sample.key]);
        }
        replies.s.write_all(&out)?;
        let mut kept = Vec::new();
        let mut found = 0;
        for sample in pending.drain(..n).collect::<Vec<_>>() {
            let reply = replies.next()?;
            let now = unix_us();
            match reply {
                Reply::Bulk(Some(v)) => {
                    found += 1;
                    let expected = format!("t={:016};", sample.written_unix_us);
                    if v.starts_with(expected.as_bytes()) {
                        r.seen += 1;
                        r.hist
                            .saturating_record(now.saturating_sub(sample.written_unix_us).max(1));
                    } else {
                        r.wrong_value += 1;
                    }
                }
                Reply::Bulk(None) => kept.push(sample),
                other => bail!("site B answered GET with {other:?}"),
            }
        }
        for sample in kept.into_iter().rev() {
            pending.push_front(sample);
        }
        if found == 0 {
            std::thread::sleep(E2E_IDLE_POLL);
        }
    }
    r.missing = pending.len() as u64;
    Ok(r)
}

/// Runs the load described by `config` (checked first).
pub fn run(config: &LoadConfig) -> anyhow::Result<Summary> {
    config.check().map_err(anyhow::Error::msg)?;
    let cpu_start = process_cpu_s();
    let mut streams = Vec::new();
    for _ in 0..config.connections {
        streams.push(connect(config.server, config.region.as_deref())?);
    }
    let e2e = match &config.e2e {
        Some(e) => {
            let s = connect(e.server, config.region.as_deref())?;
            let (tx, rx) = mpsc::sync_channel::<Sample>(E2E_PENDING_MAX);
            let wait = e.wait;
            let handle = std::thread::spawn(move || poller(s, rx, wait));
            Some((tx, handle, Arc::new(AtomicU64::new(0))))
        }
        None => None,
    };
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut groups: Vec<Vec<Conn>> = (0..config.threads).map(|_| Vec::new()).collect();
    for (conn, s) in (0u32..).zip(streams) {
        s.set_nonblocking(true)?;
        let requests = match config.stop {
            Stop::Requests(n) => {
                n / config.connections as u64
                    + u64::from((conn as u64) < n % config.connections as u64)
            }
            Stop::Duration(_) => u64::MAX,
        };
        let ops = OpGen::new(
            config.keys,
            config.key_dist,
            config.values,
            config.reads,
            config.seed.wrapping_add(conn as u64),
        );
        let filler = vec![b'v'; ops.values().max()];
        groups[(conn % config.threads) as usize].push(Conn {
            s,
            sender: Sender {
                conn,
                ops,
                schedule: Schedule::for_connection(config.rate, conn, config.connections),
                stop: config.stop,
                requests,
                key_prefix: config.key_prefix.clone(),
                sample_every: config.e2e.as_ref().map(|e| e.sample_every),
                made: 0,
                writes: 0,
                finished: false,
                filler,
            },
            out: Vec::with_capacity(WRITE_BATCH_BYTES_MAX),
            out_at: 0,
            inflight: VecDeque::with_capacity(config.pipeline as usize),
            input: Vec::with_capacity(READ_BYTES),
            in_at: 0,
            last_reply: start,
            result: ConnResult {
                hist: histogram(),
                sets: 0,
                gets: 0,
                get_hits: 0,
                errors: 0,
                set_bytes: 0,
            },
        });
    }
    let pipeline = config.pipeline as usize;
    let threads: Vec<_> = groups
        .into_iter()
        .map(|conns| {
            let done = done.clone();
            let samples = e2e
                .as_ref()
                .map(|(tx, _, skipped)| (tx.clone(), skipped.clone()));
            std::thread::spawn(move || drive(conns, start, pipeline, &done, samples))
        })
        .collect();
    let (sample_tx, poll_handle, skipped) = match e2e {
        Some((tx, h, skipped)) => (Some(tx), Some(h), Some(skipped)),
        None => (None, None, None),
    };
    drop(sample_tx);
    let mut last = (start, 0u64);
    while !threads.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if config.progress && last.0.elapsed() >= PROGRESS_INTERVAL {
            let now = Instant::now();
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "strait-load: {:>6.1}s {:>12} ops {:>12.0} ops/s",
                (now - start).as_secs_f64(),
                n,
                (n - last.1) as f64 / (now - last.0).as_secs_f64()
            );
            last = (now, n);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    let mut hist = histogram();
    let (mut sets, mut gets, mut get_hits, mut errors, mut set_bytes) = (0, 0, 0, 0, 0u64);
    for t in threads {
        match t.join() {
            Ok(Ok(results)) => {
                for c in results {
                    hist.add(&c.hist).expect("same histogram bounds");
                    sets += c.sets;
                    gets += c.gets;
                    get_hits += c.get_hits;
                    errors += c.errors;
                    set_bytes += c.set_bytes;
                }
            }
            Ok(Err(e)) => failures.push(format!("a connection to {}: {e:#}", config.server)),
            Err(_) => failures.push("a load thread panicked".into()),
        }
    }
    let e2e = match (poll_handle, skipped, &config.e2e) {
        (Some(h), Some(skipped), Some(cfg)) => match h.join() {
            Ok(Ok(p)) => Some(E2eSummary {
                server: cfg.server.to_string(),
                sampled: p.sampled,
                seen: p.seen,
                missing: p.missing,
                wrong_value: p.wrong_value,
                skipped: skipped.load(Ordering::Relaxed),
                latency_us: Latency::of(&p.hist),
            }),
            Ok(Err(e)) => bail!("polling site B at {}: {e:#}", cfg.server),
            Err(_) => bail!("the poller panicked"),
        },
        _ => None,
    };
    if let Some(f) = failures.first() {
        bail!("{f} ({} failures)", failures.len());
    }
    let ops = sets + gets;
    Ok(Summary {
        server: config.server.to_string(),
        connections: config.connections,
        pipeline: config.pipeline,
        rate: config.rate,
        seconds,
        ops,
        sets,
        gets,
        get_hits,
        errors,
        ops_per_s: ops as f64 / seconds,
        set_mb_per_s: set_bytes as f64 / seconds / 1e6,
        cpu_s: process_cpu_s() - cpu_start,
        latency_us: Latency::of(&hist),
        e2e,
    })
}

/// The summary as a readable table.
pub fn table(s: &Summary) -> String {
    let mut t = format!(
        "server {}  connections {}  pipeline {}  rate {}\n\
         ops {}  (SET {}, GET {}, hits {}, errors {})  in {:.3} s\n\
         {:.0} ops/s  {:.1} MB/s of values written  (generator CPU {:.2} s)\n",
        s.server,
        s.connections,
        s.pipeline,
        s.rate.map_or("max".to_string(), |r| format!("{r:.0}/s")),
        s.ops,
        s.sets,
        s.gets,
        s.get_hits,
        s.errors,
        s.seconds,
        s.ops_per_s,
        s.set_mb_per_s,
        s.cpu_s
    );
    let row = |name: &str, l: &Latency| {
        format!(
            "{name:<26} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9.0}\n",
            l.min, l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )
    };
    t.push_str(&format!(
        "{:<26} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}\n",
        "latency (us)", "min", "p50", "p90", "p99", "p99.9", "max", "mean"
    ));
    t.push_str(&row("request -> reply", &s.latency_us));
    if let Some(e) = &s.e2e {
        t.push_str(&row("write at A -> seen at B", &e.latency_us));
        t.push_str(&format!(
            "e2e: {} sampled, {} seen at {}, {} missing, {} wrong value, {} skipped\n",
            e.sampled, e.seen, e.server, e.missing, e.wrong_value, e.skipped
        ));
    }
    t
}
