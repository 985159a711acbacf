//! `strait-bench e2e`: two sites on this machine, writes at site 1, measured where they are
//! applied at site 2. Every piece is a separate process from the same build: two `strait`
//! locators, two `strait` servers, `strait-load` for the writes (and the end-to-end latency
//! mode), and for the WAN cases `strait-wanem` in front of site 2's receiver ports.
//!
//! Per case (value size × sender kind × queue kind × link):
//! 1. **Max rate**: `strait-load` writes `events` SETs as fast as it can; the bench polls
//!    site 2's `INFO` until its receiver has applied them all. Replicated events/s and MB/s
//!    (of values) are counted from the first write to the last apply.
//! 2. **Half rate**: `strait-load --rate` at half the replicated rate of step 1, with `--e2e`
//!    at site 2: the distribution of write at site 1 → value visible at site 2.
//!
//! Bounds measured in the same run by `strait-wanem overhead`: raw loopback TCP throughput
//! between two threads, and the same through the emulator with no impairment. Each case is
//! compared with the loopback bound, and a WAN case also with the emulated bandwidth.
//!
//! The WAN link: site 2's receiver binds 127.0.0.1 and advertises `hostname-for-senders =
//! 127.0.0.2`; `strait-wanem` listens on 127.0.0.2 at the same ports and forwards to 127.0.0.1,
//! so every batch and ack crosses the emulated link (the locators talk directly).

use crate::site::{start_redis, wait_ready};
use crate::svg::{Series, line_chart};
use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Receiver ports of site 2 (2 shards need 2; a few more leave room).
const RECEIVER_PORTS: u16 = 8;
/// How long site 1's dispatchers may take to connect to site 2.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often site 2's INFO is read while waiting for the applies.
const APPLIED_POLL: Duration = Duration::from_millis(5);
/// End-to-end samples aimed at in the half-rate step.
const E2E_SAMPLES: f64 = 2000.0;
/// Bytes in a megabyte (decimal).
const MB: f64 = 1e6;

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Value sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,1024,16384")]
    sizes: Vec<usize>,
    /// Writes per case in the max-rate step (fewer for large values: see --bytes-max).
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Value bytes per case at most: events = min(--events, --bytes-max / size).
    #[arg(long, default_value_t = 1 << 30)]
    bytes_max: u64,
    /// Sender kinds: parallel, serial.
    #[arg(long, value_delimiter = ',', default_value = "parallel,serial")]
    senders: Vec<String>,
    /// Queue kinds: memory, persistent.
    #[arg(long, value_delimiter = ',', default_value = "memory,persistent")]
    queues: Vec<String>,
    /// Links: direct, wan.
    #[arg(long, value_delimiter = ',', default_value = "direct,wan")]
    links: Vec<String>,
    /// The emulated link of the `wan` cases, both directions (`strait-wanem --link`).
    #[arg(long, default_value = "latency=25ms bandwidth=1Gbit")]
    wan: String,
    /// `sync-policy` of the persistent queues.
    #[arg(long, default_value = "interval-1000ms")]
    sync_policy: String,
    /// `batch-size` of the senders (Strait's default: 100).
    #[arg(long)]
    batch_size: Option<u32>,
    /// `batches-in-flight` of the senders (Strait's default: 64).
    #[arg(long)]
    batches_in_flight: Option<u16>,
    /// `shards` of each site's server (default: one per CPU the server may run on).
    #[arg(long)]
    shards: Option<u16>,
    /// The CPUs of site 1's and site 2's servers, one `taskset` CPU list each (e.g. `0,1`:
    /// site 1 on CPU 0, site 2 on CPU 1); default: both may run on every CPU.
    #[arg(long, value_delimiter = ',')]
    site_cpus: Option<Vec<String>>,
    /// Key space of the writes: each site's store grows to about `keys` × value size.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// `strait-load` connections and pipeline depth.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    #[arg(long, default_value_t = 64)]
    pipeline: u32,
    /// Seconds of the half-rate step.
    #[arg(long, default_value_t = 3.0)]
    half_rate_seconds: f64,
    /// The latency step's rate, as a share of the replicated rate of the max-rate step (the
    /// targets are stated at half).
    #[arg(long, default_value_t = 0.5)]
    latency_fraction: f64,
    /// Bytes per transfer of the loopback bound.
    #[arg(long, default_value = "512MiB")]
    bound_bytes: String,
    /// Write two SVG plots per case into this directory: site 2's applies per second during
    /// the max-rate step, and the latency step's write → visible distribution.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Where `strait`, `strait-load` and `strait-wanem` are (default: next to this binary).
    /// Its results are build `A`; the PASS/MISS lines judge build `A` only.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// A second build to compare with (build `B`): every case runs with both builds, one right
    /// after the other, `--runs` times (A first), so that both meet the same minutes of a
    /// noisy machine. Each row and JSON line says its build and run, and a summary gives each
    /// build's range per case.
    #[arg(long)]
    compare_bin_dir: Option<PathBuf>,
    /// Runs of each case (of each build, with `--compare-bin-dir`), alternated case by case.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=RUNS_MAX as i64))]
    runs: u32,
    /// Also measure, per value size, what redis-server alone (no persistence, no
    /// replication) takes from `strait-load` with the same connections, pipeline, key space and
    /// number of writes; a replicated event needs a write at each site, so half of it bounds
    /// what two sites sharing this machine can replicate. Each case's events/s is reported
    /// over that bound (`xredis`).
    #[arg(long)]
    redis_bound: bool,
    /// The redis-server of `--redis-bound`.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Parent of the fresh directory holding both sites' files (removed at the end).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// Most `--runs`.
const RUNS_MAX: u32 = 100;

/// One case's results: a JSON line and a table row.
#[derive(Debug, Serialize)]
struct CaseResult {
    bench: &'static str,
    case: String,
    /// `A` (`--bin-dir`) or `B` (`--compare-bin-dir`).
    build: &'static str,
    /// 1..=`--runs`.
    run: u32,
    value_bytes: usize,
    sender: String,
    queue: String,
    link: String,
    /// The emulated link, for `wan`.
    link_params: Option<String>,
    events: u64,
    /// First write at site 1 → last apply at site 2.
    seconds: f64,
    events_per_s: f64,
    /// Value bytes replicated per second.
    mb_per_s: f64,
    /// SETs per second site 1 accepted (strait-load's own figure).
    write_ops_per_s: f64,
    /// Events site 2 applied (should equal `events`).
    applied: u64,
    loopback_mb_per_s: f64,
    ratio_to_loopback: f64,
    /// The emulated bandwidth in MB/s, for `wan`.
    link_mb_per_s: Option<f64>,
    ratio_to_link: Option<f64>,
    /// With `--redis-bound`: redis-server's SETs/s for this value size, and events/s over half
    /// of it.
    redis_sets_per_s: Option<f64>,
    ratio_to_redis: Option<f64>,
    /// The half-rate step: the target rate, and write → seen at site 2, µs.
    half_rate_per_s: f64,
    half_rate_achieved_per_s: f64,
    e2e_seen: u64,
    e2e_missing: u64,
    e2e_p50_us: u64,
    e2e_p99_us: u64,
    e2e_p999_us: u64,
    e2e_max_us: u64,
    /// The half-rate step's request → reply at site 1, µs: what a writing client waits for
    /// (under `every-batch`, the group commit that makes its write durable).
    reply_p50_us: u64,
    reply_p99_us: u64,
    /// Bytes written to the block device holding the sites' directories over the max-rate
    /// step (`/proc/diskstats`; anything else writing to that device counts too), and that
    /// over the value bytes replicated: the write amplification of persistence. `None` when
    /// the directory is on no block device listed there (tmpfs, overlay).
    disk_written_mb: Option<f64>,
    disk_per_value_byte: Option<f64>,
    /// CPU time each part used over the max-rate step and over the half-rate step.
    cpu_max_rate: StepCpu,
    cpu_half_rate: StepCpu,
    /// For the plots: (seconds since the first write, events applied at site 2).
    #[serde(skip)]
    applied_timeline: Vec<(f64, u64)>,
    /// For the plots: (quantile, µs) of the latency step.
    #[serde(skip)]
    e2e_ladder: Vec<(f64, u64)>,
}

/// CPU time (user and system) each process used over one step, seconds, and how busy that
/// left the machine's CPUs: at a share near 1 queueing alone makes latency tails, whatever
/// the software does.
#[derive(Clone, Debug, Serialize)]
struct StepCpu {
    site1_s: f64,
    site2_s: f64,
    /// The load generator's own (its JSON's `cpu_s`).
    load_s: f64,
    /// (site1_s + site2_s + load_s) / (CPUs × the step's wall time).
    busy: f64,
}

/// CPU time a process has used so far (user and system), seconds, from `/proc/PID/stat`.
fn process_cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces; utime and stime are
    // fields 14 and 15, the 12th and 13th after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("/proc/{pid}/stat has no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {} is not a number", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Bytes written so far to the block device that holds `path`: its sectors written in
/// `/proc/diskstats`, times 512. `None` when the device is not listed there.
fn device_written_bytes(path: &Path) -> anyhow::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .dev();
    let stats = std::fs::read_to_string("/proc/diskstats").context("reading /proc/diskstats")?;
    Ok(
        sectors_written(&stats, rustix::fs::major(dev), rustix::fs::minor(dev))
            .map(|s| s * DISKSTATS_SECTOR_BYTES),
    )
}

/// Bytes in a `/proc/diskstats` sector, whatever the device's own sector size.
const DISKSTATS_SECTOR_BYTES: u64 = 512;

/// The sectors written (the 10th field) of device `major:minor` in a `/proc/diskstats` text.
fn sectors_written(diskstats: &str, major: u32, minor: u32) -> Option<u64> {
    diskstats.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let is = |i: usize, v: u32| f.get(i).and_then(|x| x.parse::<u32>().ok()) == Some(v);
        if is(0, major) && is(1, minor) {
            f.get(9).and_then(|x| x.parse().ok())
        } else {
            None
        }
    })
}

/// The two servers' CPU time so far.
fn sites_cpu_s(sites: &Sites) -> anyhow::Result<(f64, f64)> {
    Ok((
        process_cpu_s(sites.servers[0])?,
        process_cpu_s(sites.servers[1])?,
    ))
}

impl StepCpu {
    fn between(before: (f64, f64), after: (f64, f64), load_s: f64, seconds: f64) -> StepCpu {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let (site1_s, site2_s) = (after.0 - before.0, after.1 - before.1);
        StepCpu {
            site1_s,
            site2_s,
            load_s,
            busy: (site1_s + site2_s + load_s) / (cpus * seconds.max(1e-9)),
        }
    }
}

/// A child process killed and reaped when dropped, so a failing case leaves nothing running.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port below the kernel's ephemeral range, so no outgoing connection takes it before
/// the process that is given it binds it; `span` consecutive ports when more than 1.
fn free_ports(span: u16, seed: &mut u64) -> anyhow::Result<u16> {
    for _ in 0..5000 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = 20_000 + ((*seed >> 33) % 12_000) as u16;
        let free = |p: u16| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.2", p)).is_ok()
        };
        if (base..base + span).all(free) {
            return Ok(base);
        }
    }
    bail!("no {span} free consecutive ports between 20000 and 32000")
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Proc { child })
}

/// One RESP command, its reply as text (bulk or simple string).
fn call(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    match line.as_bytes().first() {
        Some(b'$') => {
            let n: usize = line[1..].trim().parse()?;
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body)?;
            body.truncate(n);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Some(b'+') => Ok(line[1..].trim().to_string()),
        _ => bail!("port {port} answered {args:?} with `{}`", line.trim()),
    }
}

/// `field` of the INFO line starting `prefix`, e.g. ("receiver:", "applied").
fn info_field(port: u16, prefix: &str, field: &str) -> anyhow::Result<u64> {
    let info = call(port, &["INFO"])?;
    let line = info
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no `{prefix}` line in INFO of port {port}"))?;
    line.split([':', ','])
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in `{line}`"))
}

/// Both sites of one case, and the emulator when there is one.
struct Sites {
    client1: u16,
    client2: u16,
    /// Process ids of site 1's and site 2's servers, for their CPU time.
    servers: [u32; 2],
    /// Killed when dropped, in reverse start order: servers, then the emulator and locators.
    _procs: Vec<Proc>,
}

struct Case<'a> {
    size: usize,
    sender: &'a str,
    queue: &'a str,
    link: &'a str,
}

fn start_sites(
    args: &E2eArgs,
    bins: &Path,
    dir: &Path,
    case: &Case,
    seed: &mut u64,
) -> anyhow::Result<Sites> {
    let strait = bins.join("strait");
    let (l1, l2) = (free_ports(1, seed)?, free_ports(1, seed)?);
    let (c1, c2) = (free_ports(1, seed)?, free_ports(1, seed)?);
    let recv = free_ports(RECEIVER_PORTS, seed)?;
    let mut procs = Vec::new();
    for (id, port, other) in [(1u8, l1, l2), (2, l2, l1)] {
        let d = dir.join(format!("site{id}"));
        std::fs::create_dir_all(d.join("locator"))?;
        let a: Vec<String> = [
            "start",
            "locator",
            "--name",
            &format!("l{id}"),
            "--port",
            &port.to_string(),
            "--bind-address",
            "127.0.0.1",
            "--dir",
            &d.join("locator").display().to_string(),
            "--distributed-system-id",
            &id.to_string(),
            "--remote-locators",
            &format!("127.0.0.1:{other}"),
            "--exchange-interval-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        procs.push(spawn(&strait, &a, &d.join("locator.log"))?);
    }
    let wan = case.link == "wan";
    if wan {
        let map = format!(
            "127.0.0.2:{recv}-{}=127.0.0.1:{recv}-{}",
            recv + RECEIVER_PORTS - 1,
            recv + RECEIVER_PORTS - 1
        );
        let a = vec![
            "proxy".into(),
            "--map".into(),
            map,
            "--link".into(),
            args.wan.clone(),
        ];
        procs.push(spawn(
            &bins.join("strait-wanem"),
            &a,
            &dir.join("wanem.log"),
        )?);
    }
    let persistent = case.queue == "persistent";
    let sender = format!(
        "[[gateway-sender]]\nid = \"to2\"\nremote-distributed-system-id = 2\nparallel = {}\nenable-persistence = {persistent}\n{}{}{}",
        case.sender == "parallel",
        if persistent {
            format!("sync-policy = \"{}\"\n", args.sync_policy)
        } else {
            String::new()
        },
        args.batch_size
            .map_or(String::new(), |b| format!("batch-size = {b}\n")),
        args.batches_in_flight
            .map_or(String::new(), |b| format!("batches-in-flight = {b}\n")),
    );
    let receiver = format!(
        "[gateway-receiver]\nstart-port = {recv}\nend-port = {}\nbind-address = \"127.0.0.1\"\n{}",
        recv + RECEIVER_PORTS - 1,
        if wan {
            "hostname-for-senders = \"127.0.0.2\"\n"
        } else {
            ""
        }
    );
    let mut servers = [0u32; 2];
    // Site 2 first, so its receiver is known when site 1's dispatchers look.
    for (id, client, locator, extra, senders) in
        [(2u8, c2, l2, receiver, ""), (1, c1, l1, sender, "\"to2\"")]
    {
        let d = dir.join(format!("site{id}"));
        let cfg = format!(
            "[server]\nname = \"s{id}\"\ndistributed-system-id = {id}\nbind-address = \"127.0.0.1\"\nclient-port = {client}\nhttp-service-port = 0\ndirectory = \"{}\"\nlocators = [\"127.0.0.1:{locator}\"]\n{}\
             [[region]]\nname = \"bench\"\ntype = \"partition\"\ngateway-sender-ids = [{senders}]\n{extra}",
            d.display(),
            args.shards
                .map_or(String::new(), |n| format!("shards = {n}\n")),
        );
        let path = d.join("site.toml");
        std::fs::write(&path, cfg)?;
        let mut a: Vec<String> = vec![
            "start".into(),
            "server".into(),
            "--config".into(),
            path.display().to_string(),
        ];
        let bin = match &args.site_cpus {
            Some(cpus) => {
                let [one, two] = cpus.as_slice() else {
                    anyhow::bail!(
                        "--site-cpus takes two CPU lists, site 1's and site 2's: e.g. 0,1"
                    );
                };
                let list = if id == 1 { one.clone() } else { two.clone() };
                a.splice(0..0, ["-c".to_string(), list, strait.display().to_string()]);
                PathBuf::from("taskset")
            }
            None => strait.clone(),
        };
        let server = spawn(&bin, &a, &d.join("server.log"))?;
        // `taskset` execs the server, so the id is the server's either way.
        servers[usize::from(id - 1)] = server.child.id();
        procs.push(server);
        wait_ready(client).with_context(|| {
            format!(
                "site {id}'s server (log: {})",
                d.join("server.log").display()
            )
        })?;
    }
    // Until every shard's dispatcher at site 1 is connected: `connected=N/N`.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let info = call(c1, &["INFO"])?;
        let connected = info.lines().find(|l| l.starts_with("to2:")).and_then(|l| {
            let c = l.split(',').find_map(|kv| kv.strip_prefix("connected="))?;
            let (a, b) = c.split_once('/')?;
            Some(a == b && a != "0")
        });
        if connected == Some(true) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "site 1's senders did not connect to site 2 within {CONNECT_TIMEOUT:?} (logs in {})",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    procs.reverse();
    Ok(Sites {
        client1: c1,
        client2: c2,
        servers,
        _procs: procs,
    })
}

/// Runs `strait-load` with `args` plus `--json --quiet`; returns its JSON.
fn load(bins: &Path, args: &[String]) -> anyhow::Result<Value> {
    let out = Command::new(bins.join("strait-load"))
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .context("running strait-load")?;
    if !out.status.success() {
        bail!(
            "strait-load {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("strait-load's JSON")
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

fn run_case(
    args: &E2eArgs,
    bins: &Path,
    dir: &Path,
    case: &Case,
    bound: (f64, Option<f64>, Option<f64>),
    seed: &mut u64,
) -> anyhow::Result<CaseResult> {
    let sites = start_sites(args, bins, dir, case, seed)?;
    let events = args.events.min(args.bytes_max / case.size as u64).max(1);
    let common = |server: u16| load_args(args, server, case.size);
    // Step 1: as fast as possible; time until site 2 applied everything.
    let mut a = common(sites.client1);
    a.extend(["--requests".to_string(), events.to_string()]);
    let cpu_before = sites_cpu_s(&sites)?;
    let disk_before = device_written_bytes(dir)?;
    let start = Instant::now();
    let writer = {
        let bins = bins.to_path_buf();
        std::thread::spawn(move || load(&bins, &a))
    };
    let deadline_per_event = Duration::from_millis(2);
    let deadline = start + Duration::from_secs(60) + deadline_per_event * events as u32;
    let mut applied = 0;
    let mut applied_timeline = Vec::new();
    let mut writer = Some(writer);
    let mut written = None;
    while applied < events && Instant::now() < deadline {
        applied = info_field(sites.client2, "receiver:", "applied")?;
        applied_timeline.push((start.elapsed().as_secs_f64(), applied));
        // A load generator that failed (site 1 stopped answering, say) fails the case now,
        // with its reason, rather than at the deadline.
        if writer.as_ref().is_some_and(|w| w.is_finished())
            && let Some(w) = writer.take()
        {
            written = Some(
                w.join()
                    .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
                    .context("the max-rate step's strait-load")?,
            );
        }
        std::thread::sleep(APPLIED_POLL);
    }
    let seconds = start.elapsed().as_secs_f64();
    let written = match (written, writer) {
        (Some(w), _) => w,
        (None, Some(w)) => w
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??,
        (None, None) => bail!("the max-rate step's strait-load gave no result"),
    };
    if applied < events {
        bail!(
            "site 2 applied {applied} of {events} events within {:?}",
            deadline - start
        );
    }
    let cpu_max_rate = StepCpu::between(
        cpu_before,
        sites_cpu_s(&sites)?,
        f(&written, &["cpu_s"]),
        seconds,
    );
    let disk_written = match (disk_before, device_written_bytes(dir)?) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let events_per_s = events as f64 / seconds;
    let mb_per_s = events_per_s * case.size as f64 / MB;
    // Step 2: half that rate, with the end-to-end latency sampled at site 2.
    let half = events_per_s * args.latency_fraction;
    let every = ((half * args.half_rate_seconds / E2E_SAMPLES) as u64).max(1);
    let mut a = common(sites.client1);
    a.extend([
        "--rate".into(),
        format!("{half:.0}"),
        "--duration".into(),
        format!("{}ms", (args.half_rate_seconds * 1000.0) as u64),
        "--e2e".into(),
        format!("127.0.0.1:{}", sites.client2),
        "--e2e-sample-every".into(),
        every.to_string(),
        "--key-prefix".into(),
        "half:".into(),
    ]);
    let cpu_before = sites_cpu_s(&sites)?;
    let half_start = Instant::now();
    let e2e = load(bins, &a)?;
    let cpu_half_rate = StepCpu::between(
        cpu_before,
        sites_cpu_s(&sites)?,
        f(&e2e, &["cpu_s"]),
        half_start.elapsed().as_secs_f64(),
    );
    let e = &e2e["e2e"]["latency_us"];
    let reply = &e2e["latency_us"];
    let link_mb_per_s = bound.1;
    Ok(CaseResult {
        bench: "e2e",
        case: format!(
            "{}/{}/{}/{}",
            size_name(case.size),
            case.sender,
            case.queue,
            case.link
        ),
        build: "A",
        run: 1,
        value_bytes: case.size,
        sender: case.sender.into(),
        queue: case.queue.into(),
        link: case.link.into(),
        link_params: (case.link == "wan").then(|| args.wan.clone()),
        events,
        seconds,
        events_per_s,
        mb_per_s,
        write_ops_per_s: f(&written, &["ops_per_s"]),
        applied,
        loopback_mb_per_s: bound.0,
        ratio_to_loopback: mb_per_s / bound.0,
        link_mb_per_s,
        ratio_to_link: link_mb_per_s.map(|l| mb_per_s / l),
        redis_sets_per_s: bound.2,
        ratio_to_redis: bound.2.map(|r| events_per_s / (r / 2.0)),
        half_rate_per_s: half,
        half_rate_achieved_per_s: f(&e2e, &["ops_per_s"]),
        e2e_seen: f(&e2e, &["e2e", "seen"]) as u64,
        e2e_missing: f(&e2e, &["e2e", "missing"]) as u64,
        e2e_p50_us: f(e, &["p50"]) as u64,
        e2e_p99_us: f(e, &["p99"]) as u64,
        e2e_p999_us: f(e, &["p999"]) as u64,
        e2e_max_us: f(e, &["max"]) as u64,
        reply_p50_us: f(reply, &["p50"]) as u64,
        reply_p99_us: f(reply, &["p99"]) as u64,
        disk_written_mb: disk_written.map(|b| b as f64 / MB),
        disk_per_value_byte: disk_written.map(|b| b as f64 / (events * case.size as u64) as f64),
        cpu_max_rate,
        cpu_half_rate,
        applied_timeline,
        e2e_ladder: e["ladder"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|p| (p[0].as_f64().unwrap_or(0.0), p[1].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Seconds over which the plotted apply rate is averaged.
const PLOT_RATE_WINDOW_S: f64 = 0.1;
/// Where "max" sits on the latency plot's x axis (quantile q sits at -log10(1 - q)).
const PLOT_MAX_X: f64 = 4.5;

/// Writes `<case>-throughput.svg` and `<case>-latency.svg` into `dir`.
fn plots(dir: &Path, r: &CaseResult) -> anyhow::Result<()> {
    let mut rate = Vec::new();
    let mut last = (0.0, 0u64);
    for &(t, n) in &r.applied_timeline {
        if t - last.0 >= PLOT_RATE_WINDOW_S {
            rate.push(((t + last.0) / 2.0, (n - last.1) as f64 / (t - last.0)));
            last = (t, n);
        }
    }
    let name = r.case.replace('/', "-");
    let throughput = line_chart(
        &format!("{}: applied at site 2, max-rate step", r.case),
        "seconds since the first write",
        "events/s",
        &[Series {
            name: "applied at site 2".into(),
            points: rate,
        }],
        None,
    );
    let ladder: Vec<(f64, f64)> = r
        .e2e_ladder
        .iter()
        .map(|&(q, us)| {
            let x = if q < 1.0 {
                -(1.0 - q).log10()
            } else {
                PLOT_MAX_X
            };
            (x, us as f64 / 1000.0)
        })
        .collect();
    let ticks = [
        (0.0, "0%"),
        (0.301, "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (PLOT_MAX_X, "max"),
    ];
    let latency = line_chart(
        &format!(
            "{}: write at site 1 -> visible at site 2, {:.0}/s",
            r.case, r.half_rate_per_s
        ),
        "percentile",
        "milliseconds",
        &[Series {
            name: "write -> visible".into(),
            points: ladder,
        }],
        Some(&ticks),
    );
    std::fs::create_dir_all(dir)?;
    for (kind, svg) in [("throughput", throughput), ("latency", latency)] {
        let path = dir.join(format!("{name}-{kind}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// The emulated bandwidth of `--wan` in MB/s; `None` when uncapped.
fn wan_mb_per_s(words: &str) -> anyhow::Result<Option<f64>> {
    for w in words.split_whitespace() {
        if let Some(bw) = w.strip_prefix("bandwidth=") {
            let lower = bw.to_ascii_lowercase();
            let (n, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
                .iter()
                .find_map(|(u, s)| lower.strip_suffix(u).map(|n| (n, *s)))
                .with_context(|| {
                    format!("--wan: bandwidth `{bw}` needs a unit (bit, kbit, Mbit, Gbit)")
                })?;
            let n: f64 = n
                .parse()
                .with_context(|| format!("--wan: bandwidth `{bw}`"))?;
            return Ok(Some(n * scale / 8.0 / MB));
        }
    }
    Ok(None)
}

pub fn run(args: E2eArgs) -> anyhow::Result<()> {
    let bins = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this binary")?
            .to_path_buf(),
    };
    let mut builds = vec![("A", bins.clone())];
    if let Some(b) = &args.compare_bin_dir {
        builds.push(("B", b.clone()));
    }
    for (_, dir) in &builds {
        for b in ["strait", "strait-load", "strait-wanem"] {
            if !dir.join(b).exists() {
                bail!(
                    "no {b} in {} (cargo build --release -p strait-tools, or --bin-dir)",
                    dir.display()
                );
            }
        }
    }
    let several = builds.len() > 1 || args.runs > 1;
    for (what, list, allowed) in [
        ("--senders", &args.senders, &["parallel", "serial"][..]),
        ("--queues", &args.queues, &["memory", "persistent"][..]),
        ("--links", &args.links, &["direct", "wan"][..]),
    ] {
        if let Some(bad) = list.iter().find(|v| !allowed.contains(&v.as_str())) {
            bail!("{what}: `{bad}` is not one of {allowed:?}");
        }
    }
    if !(args.latency_fraction > 0.0 && args.latency_fraction <= 1.0) {
        bail!("--latency-fraction must be above 0 and at most 1");
    }
    if args.sizes.contains(&0) {
        bail!("--sizes: a value size must be at least 1 byte");
    }
    let link_mb = wan_mb_per_s(&args.wan)?;
    // Bounds: loopback TCP and the emulator with no impairment.
    eprintln!(
        "e2e: loopback bound (strait-wanem overhead --bytes {}) ...",
        args.bound_bytes
    );
    let out = Command::new(bins.join("strait-wanem"))
        .args(["overhead", "--rounds", "1", "--bytes", &args.bound_bytes])
        .output()
        .context("running strait-wanem overhead")?;
    if !out.status.success() {
        bail!(
            "strait-wanem overhead failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut loopback = 0.0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line)?;
        let mut row = v.clone();
        row["bench"] = "e2e_bound".into();
        println!("{row}");
        if v["path"] == "direct" {
            loopback = f(&v, &["mb_per_s"]);
        }
        eprintln!(
            "  bound {:<7} {:>8.0} MB/s  rtt p50 {:>6.1} us",
            v["path"].as_str().unwrap_or(""),
            f(&v, &["mb_per_s"]),
            f(&v, &["rtt_p50_us"])
        );
    }
    if loopback <= 0.0 {
        bail!("the loopback bound measured nothing");
    }
    let tmp = tempfile::Builder::new()
        .prefix("strait-bench-e2e-")
        .tempdir_in(&args.dir)?;
    let mut seed = u64::from(std::process::id());
    let mut redis = std::collections::BTreeMap::new();
    if args.redis_bound {
        for &size in &args.sizes {
            let sets = redis_sets_per_s(&args, &bins, tmp.path(), size, &mut seed)?;
            println!(
                "{}",
                serde_json::json!({"bench": "e2e_redis_bound", "value_bytes": size, "sets_per_s": sets})
            );
            eprintln!(
                "  bound redis-server {:>6}: {sets:>10.0} SETs/s (half: {:.0})",
                size_name(size),
                sets / 2.0
            );
            redis.insert(size, sets);
        }
    }
    let mut results = Vec::new();
    let mut n = 0;
    let mut failed = Vec::new();
    for &size in &args.sizes {
        for sender in &args.senders {
            for queue in &args.queues {
                for link in &args.links {
                    let case = Case {
                        size,
                        sender,
                        queue,
                        link,
                    };
                    let name = format!("{}/{sender}/{queue}/{link}", size_name(size));
                    let bound = (
                        loopback,
                        if link == "wan" { link_mb } else { None },
                        redis.get(&size).copied(),
                    );
                    for run in 1..=args.runs {
                        for (build, bins) in &builds {
                            n += 1;
                            let dir = tmp.path().join(format!("case{n}"));
                            std::fs::create_dir_all(&dir)?;
                            if several {
                                eprintln!("e2e: {name} (build {build}, run {run}) ...");
                            } else {
                                eprintln!("e2e: {name} ...");
                            }
                            match run_case(&args, bins, &dir, &case, bound, &mut seed) {
                                Ok(mut r) => {
                                    r.build = build;
                                    r.run = run;
                                    println!("{}", serde_json::to_string(&r)?);
                                    eprintln!(
                                        "  {:>10.0} events/s {:>7.1} MB/s  e2e p50 {} us p99 {} us at {:.0}/s",
                                        r.events_per_s,
                                        r.mb_per_s,
                                        r.e2e_p50_us,
                                        r.e2e_p99_us,
                                        r.half_rate_per_s
                                    );
                                    if let Some(dir) = &args.svg {
                                        plots(dir, &r)?;
                                    }
                                    results.push(r);
                                }
                                Err(e) => {
                                    eprintln!("  FAILED: {e:#}");
                                    failed.push(dir);
                                    continue;
                                }
                            }
                            std::fs::remove_dir_all(&dir).ok();
                        }
                    }
                }
            }
        }
    }
    table(&results, loopback, several);
    if several {
        eprintln!("each build's range per case (min-max over its runs):");
        for line in summary(&results) {
            eprintln!("{line}");
        }
    }
    if !failed.is_empty() {
        let kept = tmp.keep();
        eprintln!(
            "{} cases failed; their processes' logs are kept in {}:",
            failed.len(),
            kept.display()
        );
        for d in &failed {
            eprintln!("  {}", d.display());
        }
        bail!("{} of {n} cases failed", failed.len());
    }
    Ok(())
}

/// `strait-load`'s arguments shared by every step: the server, connections, pipeline, value
/// size and key space.
fn load_args(args: &E2eArgs, port: u16, size: usize) -> Vec<String> {
    [
        "--server",
        &format!("127.0.0.1:{port}"),
        "--connections",
        &args.connections.to_string(),
        "--pipeline",
        &args.pipeline.to_string(),
        "--value-size",
        &size.to_string(),
        "--keys",
        &args.keys.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// SETs per second redis-server alone takes from `strait-load` with the case's connections,
/// pipeline, key space, value size and number of writes (`--redis-bound`).
fn redis_sets_per_s(
    args: &E2eArgs,
    bins: &Path,
    dir: &Path,
    size: usize,
    seed: &mut u64,
) -> anyhow::Result<f64> {
    let port = free_ports(1, seed)?;
    let _redis = start_redis(
        &args.redis_server,
        port,
        &dir.join(format!("redis-{size}")),
        false,
    )
    .context("--redis-bound needs redis-server (Debian: apt-get install redis-server)")?;
    let events = args.events.min(args.bytes_max / size as u64).max(1);
    let mut a = load_args(args, port, size);
    a.extend(["--requests".to_string(), events.to_string()]);
    let out = load(bins, &a)?;
    Ok(f(&out, &["ops_per_s"]))
}

fn table(results: &[CaseResult], loopback: f64, several: bool) {
    eprintln!("\nloopback TCP bound: {loopback:.0} MB/s");
    let label = |r: &CaseResult| {
        if several {
            format!("{} {}{}", r.case, r.build, r.run)
        } else {
            r.case.clone()
        }
    };
    eprintln!(
        "{:<34} {:>8} {:>11} {:>8} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>5} {:>6} {:>6}",
        "case",
        "events",
        "events/s",
        "MB/s",
        "xloop",
        "xlink",
        "half rate",
        "e2e p50",
        "e2e p99",
        "e2e max",
        "reply p99",
        "busy",
        "xredis",
        "xdisk"
    );
    for r in results {
        eprintln!(
            "{:<34} {:>8} {:>11.0} {:>8.1} {:>8.3} {:>7} {:>10.0} {:>7}us {:>7}us {:>7}us {:>7}us {:>4.0}% {:>6} {:>6}",
            label(r),
            r.events,
            r.events_per_s,
            r.mb_per_s,
            r.ratio_to_loopback,
            r.ratio_to_link.map_or("-".into(), |x| format!("{x:.3}")),
            r.half_rate_per_s,
            r.e2e_p50_us,
            r.e2e_p99_us,
            r.e2e_max_us,
            r.reply_p99_us,
            r.cpu_half_rate.busy * 100.0,
            r.ratio_to_redis.map_or("-".into(), |x| format!("{x:.2}")),
            r.disk_per_value_byte
                .map_or("-".into(), |x| format!("{x:.1}"))
        );
    }
    eprintln!();
    // The verdicts judge build A, the one `--bin-dir` names.
    let results: Vec<&CaseResult> = results.iter().filter(|r| r.build == "A").collect();
    let find = |size: usize, queue: &str| {
        results
            .iter()
            .filter(|r| r.value_bytes == size && r.queue == queue && r.link == "direct")
            .map(|r| r.events_per_s)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    for (size, target) in [(1024, 1_000_000.0), (100, 1_500_000.0)] {
        if let Some(x) = find(size, "persistent") {
            let v = if x >= target { "PASS" } else { "MISS" };
            eprintln!(
                "{v} replicated {size} B events/s, persistent, direct (best sender): {x:.0} (target >= {target:.0})"
            );
            if let Some(r) = results
                .iter()
                .find(|r| r.value_bytes == size)
                .and_then(|r| r.redis_sets_per_s)
            {
                eprintln!(
                    "     redis-server alone took {r:.0} SETs/s of {size} B here: two sites writing once each bound replication near {:.0}",
                    r / 2.0
                );
            }
        }
    }
    for r in results.iter().filter(|r| r.link == "direct") {
        let v = if r.e2e_p99_us <= 2000 { "PASS" } else { "MISS" };
        eprintln!(
            "{v} {}: p99 write -> seen at site 2 at half rate = {} us (target <= 2000 us)",
            r.case, r.e2e_p99_us
        );
    }
    for r in results.iter().filter(|r| r.link == "wan") {
        if let Some(x) = r.ratio_to_link {
            let v = if x >= 0.8 { "PASS" } else { "MISS" };
            eprintln!(
                "{v} {}: {:.1} MB/s of values = {x:.3} of the emulated bandwidth (target >= 0.8)",
                r.case, r.mb_per_s
            );
        }
    }
}

/// What the comparison summary reads of one run of one case.
struct RunFigures<'a> {
    case: &'a str,
    build: &'a str,
    events_per_s: f64,
    p99_us: u64,
    /// The half-rate step's request → reply p99 at site 1.
    reply_p99_us: u64,
    /// Site 1's CPU time over the max-rate step.
    site1_s: f64,
    /// Bytes written to the disk per value byte over the max-rate step, when known.
    disk_per_value_byte: Option<f64>,
}

/// One line per case and build, in the order they ran: the range of events/s, half-rate p99
/// and site 1's CPU over the build's runs of the case.
fn summary(results: &[CaseResult]) -> Vec<String> {
    let rows: Vec<RunFigures<'_>> = results
        .iter()
        .map(|r| RunFigures {
            case: &r.case,
            build: r.build,
            events_per_s: r.events_per_s,
            p99_us: r.e2e_p99_us,
            reply_p99_us: r.reply_p99_us,
            site1_s: r.cpu_max_rate.site1_s,
            disk_per_value_byte: r.disk_per_value_byte,
        })
        .collect();
    summarize(&rows)
}

fn summarize(rows: &[RunFigures<'_>]) -> Vec<String> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.case, r.build)) {
            keys.push((r.case, r.build));
        }
    }
    let range = |xs: &mut dyn Iterator<Item = f64>| {
        xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
    };
    keys.into_iter()
        .map(|(case, build)| {
            let mine: Vec<&RunFigures<'_>> = rows
                .iter()
                .filter(|r| r.case == case && r.build == build)
                .collect();
            let (e0, e1) = range(&mut mine.iter().map(|r| r.events_per_s));
            let (p0, p1) = range(&mut mine.iter().map(|r| r.p99_us as f64 / 1000.0));
            let (r0, r1) = range(&mut mine.iter().map(|r| r.reply_p99_us as f64 / 1000.0));
            let (c0, c1) = range(&mut mine.iter().map(|r| r.site1_s));
            let disk = if mine.iter().all(|r| r.disk_per_value_byte.is_some()) {
                let (d0, d1) = range(&mut mine.iter().filter_map(|r| r.disk_per_value_byte));
                format!(", disk writes {d0:.1}-{d1:.1} x the values")
            } else {
                String::new()
            };
            format!(
                "{case:<34} {build} ({} runs): {e0:.0}-{e1:.0} events/s, half-rate p99 {p0:.1}-{p1:.1} ms, reply p99 {r0:.1}-{r1:.1} ms, site 1 CPU {c0:.2}-{c1:.2} s{disk}",
                mine.len()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comparison_summary_gives_each_builds_range_per_case_in_run_order() {
        let row = |case, build, events_per_s, p99_us, reply_p99_us, site1_s, disk| RunFigures {
            case,
            build,
            events_per_s,
            p99_us,
            reply_p99_us,
            site1_s,
            disk_per_value_byte: disk,
        };
        let rows = [
            row(
                "1KiB/parallel",
                "A",
                150_000.0,
                9_500,
                12_000,
                2.1,
                Some(4.5),
            ),
            row(
                "1KiB/parallel",
                "B",
                90_000.0,
                23_000,
                30_500,
                3.7,
                Some(18.0),
            ),
            row(
                "1KiB/parallel",
                "A",
                156_000.0,
                13_200,
                10_000,
                2.0,
                Some(4.1),
            ),
            row(
                "1KiB/parallel",
                "B",
                132_000.0,
                21_000,
                25_000,
                2.7,
                Some(17.2),
            ),
            // Where the disk is unknown in any run, the summary leaves it out.
            row("100B/serial", "A", 290_000.0, 6_800, 7_000, 1.0, None),
            row("100B/serial", "B", 300_000.0, 6_100, 6_000, 0.9, None),
        ];
        assert_eq!(
            summarize(&rows),
            [
                "1KiB/parallel                      A (2 runs): 150000-156000 events/s, half-rate p99 9.5-13.2 ms, reply p99 10.0-12.0 ms, site 1 CPU 2.00-2.10 s, disk writes 4.1-4.5 x the values",
                "1KiB/parallel                      B (2 runs): 90000-132000 events/s, half-rate p99 21.0-23.0 ms, reply p99 25.0-30.5 ms, site 1 CPU 2.70-3.70 s, disk writes 17.2-18.0 x the values",
                "100B/serial                        A (1 runs): 290000-290000 events/s, half-rate p99 6.8-6.8 ms, reply p99 7.0-7.0 ms, site 1 CPU 1.00-1.00 s",
                "100B/serial                        B (1 runs): 300000-300000 events/s, half-rate p99 6.1-6.1 ms, reply p99 6.0-6.0 ms, site 1 CPU 0.90-0.90 s",
            ]
        );
    }

    #[test]
    fn a_process_cpu_time_is_read_from_proc_and_grows_with_work() {
        let me = std::process::id();
        let before = process_cpu_s(me).unwrap();
        // Work until the kernel has charged at least 50 ms more (ticks are 10 ms), bounded.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 1u64;
        // The same subtraction as `used` below: `x < before + 0.05` can stop where
        // `x - before` rounds to just under 0.05 (before = 0.04 s, x = 0.09 s).
        while process_cpu_s(me).unwrap() - before < 0.05 {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(Instant::now() < deadline, "no CPU time charged in 20 s");
        }
        let used = process_cpu_s(me).unwrap() - before;
        assert!((0.05..20.0).contains(&used), "{used} s");
        assert!(process_cpu_s(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn sectors_written_are_read_from_the_devices_diskstats_line() {
        // Two lines of a real /proc/diskstats (a disk and its partition), 20 fields each.
        let stats = " 254       0 vda 6316137 124090 397819274 71524749 21509900 1674243 10055008952 30895547 0 4342216 103439688 1617554 122 2468009928 625816 4762019 393574\n \
                      254       1 vda1 6315000 124000 397800000 71520000 21500000 1674000 10055000000 30895000 0 4342000 103439000 1617000 120 2468000000 625000 4762000 393000\n";
        assert_eq!(sectors_written(stats, 254, 0), Some(10_055_008_952));
        assert_eq!(sectors_written(stats, 254, 1), Some(10_055_000_000));
        assert_eq!(sectors_written(stats, 8, 0), None, "no such device");
        assert_eq!(
            sectors_written("254 0 vda 1 2\n", 254, 0),
            None,
            "a short line"
        );
    }

    #[test]
    fn busy_is_the_share_of_all_cpus_over_the_step() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let c = StepCpu::between((1.0, 2.0), (2.0, 2.5), 0.5, 1.0);
        assert_eq!((c.site1_s, c.site2_s, c.load_s), (1.0, 0.5, 0.5));
        assert!((c.busy - 2.0 / cpus).abs() < 1e-9, "{}", c.busy);
    }
}
