//! `strait-load`: open-loop RESP load against Strait or any redis-compatible server, with
//! latencies corrected for coordinated omission, and an end-to-end mode that measures when
//! writes at one site become visible at another (`docs/load.md`).
//!
//! ```text
//! strait-load --server 127.0.0.1:40401 --rate 50000 --duration 10s --reads 0.2 --value-size 1024
//! strait-load --server 127.0.0.1:40401 --requests 1000000 --connections 8 --pipeline 32 --json
//! strait-load --server 127.0.0.1:40401 --e2e 127.0.0.1:40402 --rate 20000 --duration 10s
//! ```
//!
//! Exit status: 0 when the run completed, 1 when a connection failed, 2 on a usage error.

#![forbid(unsafe_code)]

use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use strait_tools::load::run::{self, E2eConfig, LoadConfig, Stop};
use strait_tools::load::workload::{KeyDist, ValueSize};
use strait_tools::wanem::link::parse_duration_ns;

#[derive(Debug, Parser)]
#[command(
    name = "strait-load",
    version,
    about = "Open-loop RESP load generator with an end-to-end replication mode"
)]
struct Args {
    /// The server: HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:6379", value_parser = parse_addr)]
    server: SocketAddr,
    /// Send `REGION <name>` first on every connection (Strait; default: the first region).
    #[arg(long)]
    region: Option<String>,
    /// Operations per second over all connections (open loop); without it, as fast as the
    /// pipeline allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Run this long (e.g. 10s, 500ms). Default 10s unless --requests is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Run this many operations over all connections.
    #[arg(long)]
    requests: Option<u64>,
    /// Keys are `<key-prefix><n>` for n in 0..keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// uniform, zipf (exponent 0.99) or zipf:EXPONENT.
    #[arg(long, default_value = "uniform")]
    key_dist: KeyDist,
    #[arg(long, default_value = "key:")]
    key_prefix: String,
    /// Value bytes: N, or MIN-MAX (uniform).
    #[arg(long, default_value = "100")]
    value_size: ValueSize,
    /// Share of GETs, 0 to 1 (the rest are SETs).
    #[arg(long, default_value_t = 0.0)]
    reads: f64,
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Load threads sharing the connections (each drives its connections with one poll).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Requests outstanding per connection at most.
    #[arg(long, default_value_t = 1)]
    pipeline: u32,
    /// Seed of the key, value-size and read/write choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// End to end: site B's client port (HOST:PORT); sampled writes are looked for there.
    #[arg(long, value_parser = parse_addr)]
    e2e: Option<SocketAddr>,
    /// Sample every n-th write of each connection.
    #[arg(long, default_value_t = 100)]
    e2e_sample_every: u64,
    /// After the last write, how long to wait for samples to appear at B.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    e2e_wait: Duration,
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_ns(text).map(Duration::from_nanos)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let config = LoadConfig {
        server: a.server,
        region: a.region,
        rate: a.rate,
        stop: match (a.requests, a.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, d) => Stop::Duration(d.unwrap_or(Duration::from_secs(10))),
        },
        keys: a.keys,
        key_dist: a.key_dist,
        key_prefix: a.key_prefix,
        values: a.value_size,
        reads: a.reads,
        connections: a.connections,
        threads: a.threads,
        pipeline: a.pipeline,
        seed: a.seed,
        progress: !a.quiet,
        e2e: a.e2e.map(|server| E2eConfig {
            server,
            sample_every: a.e2e_sample_every,
            wait: a.e2e_wait,
        }),
    };
    if let Err(e) = config.check() {
        eprintln!("strait-load: {e}");
        return ExitCode::from(2);
    }
    match run::run(&config) {
        Ok(summary) => {
            if a.json {
                match serde_json::to_string(&summary) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("strait-load: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", run::table(&summary));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strait-load: {e:#}");
            ExitCode::from(1)
        }
    }
}
