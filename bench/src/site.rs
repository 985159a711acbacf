//! `strait-bench site`: redis-benchmark SET throughput against a Strait server whose region
//! feeds a parallel gateway sender with no receiver connected (so every write is queued), and,
//! in the same run with the same command, against `redis-server`: without persistence, and
//! with `appendonly yes` and `appendfsync everysec`. Reports each figure and the ratios the
//! targets are stated in.
//!
//! Needs `redis-server` and `redis-benchmark` (Debian: `apt-get install redis-server
//! redis-tools`). Strait runs inside this process, on its own shards; redis-server and
//! redis-benchmark are child processes. All on loopback.

use anyhow::{Context, bail};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct SiteArgs {
    /// Value sizes in bytes (redis-benchmark -d).
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    sizes: Vec<usize>,
    /// SET requests per run (-n).
    #[arg(long, default_value_t = 400_000)]
    requests: u64,
    /// Pipeline depth (-P).
    #[arg(long, default_value_t = 16)]
    pipeline: u32,
    /// Client connections (-c).
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Random key space (-r).
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// Strait shards (default: the CPUs this process may run on).
    #[arg(long)]
    shards: Option<u16>,
    /// Parent of the fresh directory holding queues and redis's AOF (removed at the end).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The redis-server to compare with.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// The load generator.
    #[arg(long, default_value = "redis-benchmark")]
    redis_benchmark: PathBuf,
}

#[derive(Debug, Serialize)]
struct Result_ {
    bench: &'static str,
    server: String,
    value_bytes: usize,
    requests: u64,
    pipeline: u32,
    clients: u32,
    requests_per_s: f64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something on `port` answers PING with PONG.
pub(crate) fn wait_ready(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
            let mut buf = [0u8; 7];
            if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("nothing answered PING on port {port} within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `redis_server` on `port` (no snapshots; an AOF with `appendfsync everysec` when
/// `aof`), with its files in `dir`, and waits until it answers; it is killed when dropped.
pub(crate) fn start_redis(
    redis_server: &Path,
    port: u16,
    dir: &Path,
    aof: bool,
) -> anyhow::Result<Redis> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new(redis_server);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--daemonize",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if aof {
        cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", redis_server.display()))?;
    let redis = Redis(child);
    wait_ready(port)?;
    Ok(redis)
}

fn start_strait(
    args: &SiteArgs,
    port: u16,
    dir: &Path,
    persistence: Option<&str>,
    value: usize,
) -> anyhow::Result<strait_node::server::ServerHandle> {
    // An in-memory queue large enough to hold the whole run, so the memory path is measured.
    let memory_mb = ((args.requests * (value as u64 + 128)) >> 20) + 64;
    let sender = match persistence {
        None => format!("maximum-queue-memory = {memory_mb}\n"),
        Some(policy) => format!("enable-persistence = true\nsync-policy = \"{policy}\"\n"),
    };
    let shards = args
        .shards
        .map_or(String::new(), |s| format!("shards = {s}\n"));
    let text = format!(
        "[server]\nname = \"bench\"\ndistributed-system-id = 1\nbind-address = \"127.0.0.1\"\nclient-port = {port}\nhttp-service-port = 0\n{shards}directory = \"{}\"\n\
         [[gateway-sender]]\nid = \"to-2\"\nremote-distributed-system-id = 2\nparallel = true\n{sender}\
         [[region]]\nname = \"bench\"\ntype = \"partition\"\ngateway-sender-ids = [\"to-2\"]\n",
        dir.display()
    );
    let config = strait_node::config::parse(Path::new("(strait-bench site)"), &text)?;
    let handle = strait_node::server::start(config)?;
    wait_ready(port)?;
    Ok(handle)
}

/// Runs redis-benchmark SET against `port`; returns requests per second.
fn benchmark(args: &SiteArgs, port: u16, value: usize) -> anyhow::Result<f64> {
    let out = Command::new(&args.redis_benchmark)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "--csv",
        ])
        .args([
            "-n",
            &args.requests.to_string(),
            "-P",
            &args.pipeline.to_string(),
        ])
        .args([
            "-c",
            &args.clients.to_string(),
            "-r",
            &args.keyspace.to_string(),
            "-d",
            &value.to_string(),
        ])
        .output()
        .with_context(|| format!("running {}", args.redis_benchmark.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // --csv: "test","rps",... then "SET","123456.78",...
    let line = text
        .lines()
        .find(|l| l.starts_with("\"SET\""))
        .with_context(|| format!("no SET line in: {text}"))?;
    let rps = line
        .split(',')
        .nth(1)
        .map(|f| f.trim_matches('"'))
        .context("no rps field")?;
    rps.parse()
        .with_context(|| format!("rps `{rps}` is not a number"))
}

pub fn run(args: SiteArgs) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("strait-bench-site-")
        .tempdir_in(&args.dir)?;
    let mut results: Vec<Result_> = Vec::new();
    for &value in &args.sizes {
        let cases: [(&str, Option<&str>, Option<bool>); 5] = [
            ("redis-server (no persistence)", None, Some(false)),
            ("redis-server (appendonly everysec)", None, Some(true)),
            ("strait (in-memory queue)", None, None),
            (
                "strait (persistent queue, interval-1000ms)",
                Some("interval-1000ms"),
                None,
            ),
            (
                "strait (persistent queue, every-batch)",
                Some("every-batch"),
                None,
            ),
        ];
        for (i, (name, persistence, redis)) in cases.into_iter().enumerate() {
            let port = free_port()?;
            let dir = tmp.path().join(format!("{value}-{i}"));
            eprintln!("site: {name}, {value}-byte values ...");
            let rps = match redis {
                Some(aof) => {
                    let _redis = start_redis(&args.redis_server, port, &dir, aof)?;
                    benchmark(&args, port, value)?
                }
                None => {
                    let handle = start_strait(&args, port, &dir, persistence, value)?;
                    let rps = benchmark(&args, port, value);
                    handle.stop().map_err(|e| anyhow::anyhow!(e))?;
                    rps?
                }
            };
            let r = Result_ {
                bench: "site",
                server: name.to_string(),
                value_bytes: value,
                requests: args.requests,
                pipeline: args.pipeline,
                clients: args.clients,
                requests_per_s: rps,
            };
            println!("{}", serde_json::to_string(&r)?);
            results.push(r);
        }
    }
    eprintln!("\n{:<44} {:>7} {:>14}", "server", "value", "SET/s");
    for r in &results {
        eprintln!(
            "{:<44} {:>6}B {:>14.0}",
            r.server, r.value_bytes, r.requests_per_s
        );
    }
    eprintln!();
    for &value in &args.sizes {
        let rps = |name: &str| {
            results
                .iter()
                .find(|r| r.value_bytes == value && r.server == name)
                .map_or(0.0, |r| r.requests_per_s)
        };
        let checks = [
            (
                "strait (in-memory queue)",
                "redis-server (no persistence)",
                1.5,
            ),
            (
                "strait (persistent queue, interval-1000ms)",
                "redis-server (appendonly everysec)",
                1.0,
            ),
            (
                "strait (persistent queue, every-batch)",
                "redis-server (appendonly everysec)",
                1.0,
            ),
        ];
        for (ours, theirs, target) in checks {
            let ratio = rps(ours) / rps(theirs);
            let verdict = if ratio >= target { "PASS" } else { "MISS" };
            eprintln!("{verdict} {value}B: {ours} / {theirs} = {ratio:.2} (target >= {target})");
        }
    }
    Ok(())
}
