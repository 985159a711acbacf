//! `strait-wanem`: a WAN emulator for loopback tests and benchmarks (`docs/wanem.md`).
//!
//! ```text
//! strait-wanem proxy --map 127.0.0.2:21500-21509=127.0.0.1:21500-21509 \
//!     --link 'latency=25ms bandwidth=1Gbit' --control 127.0.0.1:7070
//! echo 'partition on' | nc -q1 127.0.0.1 7070
//! strait-wanem overhead --bytes 1GiB          # its own cost on loopback
//! ```
//!
//! Exit status: 0 at a clean end, 2 on a usage error or a port that cannot be bound.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;
use strait_tools::wanem::link::LinkParams;
use strait_tools::wanem::overhead;
use strait_tools::wanem::proxy::{Emulator, PortMap, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "strait-wanem",
    version,
    about = "A WAN emulator: a TCP proxy with latency, bandwidth caps, stalls, resets and partitions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Proxies each LISTEN port to its TARGET through the emulated link, until killed.
    Proxy(ProxyArgs),
    /// Measures the emulator's own cost on loopback: throughput and round trip through it
    /// with no impairment, against a direct connection, in the same run.
    Overhead(OverheadArgs),
}

#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// LISTEN=TARGET, each IP:PORT or IP:FIRST-LAST (ranges of the same length); repeatable.
    #[arg(long = "map", required = true)]
    maps: Vec<PortMap>,
    /// Both directions: space-separated key=value words (latency, jitter, bandwidth,
    /// stall-rate, stall, reset-rate), e.g. 'latency=25ms bandwidth=1Gbit'.
    #[arg(long, default_value = "")]
    link: String,
    /// Listener → target only, applied after --link.
    #[arg(long, default_value = "")]
    up: String,
    /// Target → listener only, applied after --link.
    #[arg(long, default_value = "")]
    down: String,
    /// Start partitioned.
    #[arg(long)]
    partitioned: bool,
    /// IP:PORT of the line-based control port (none by default).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Seed of every random choice (jitter, stalls, resets).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct OverheadArgs {
    /// Bytes per throughput transfer (suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    bytes: u64,
    /// Direct-then-emulator rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let (n, scale) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find_map(|(s, k)| text.strip_suffix(s).map(|n| (n, *k)))
        .unwrap_or((text, 1));
    n.parse::<u64>()
        .map(|n| n * scale)
        .map_err(|_| format!("`{text}` is not a size (e.g. 1GiB, 64MiB, 4096)"))
}

fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let both = LinkParams::default()
        .apply(&args.link)
        .map_err(|e| anyhow::anyhow!("--link {e}"))?;
    let settings = Settings {
        up: both
            .apply(&args.up)
            .map_err(|e| anyhow::anyhow!("--up {e}"))?,
        down: both
            .apply(&args.down)
            .map_err(|e| anyhow::anyhow!("--down {e}"))?,
        partitioned: args.partitioned,
        seed: args.seed,
    };
    let emulator = Emulator::start(&args.maps, settings, args.control)?;
    for (l, t) in &emulator.listening {
        eprintln!("strait-wanem: {l} -> {t}");
    }
    if let Some(c) = emulator.control {
        eprintln!("strait-wanem: control on {c}");
    }
    eprintln!("strait-wanem: ready; {}", emulator.status());
    loop {
        std::thread::park();
    }
}

fn overhead(args: OverheadArgs) -> anyhow::Result<()> {
    let rows = overhead::measure(args.bytes, args.rounds)?;
    for r in &rows {
        println!("{}", serde_json::to_string(r)?);
    }
    eprintln!(
        "{:<7} {:>5} {:>12} {:>8} {:>9} {:>11} {:>9}",
        "path", "round", "bytes", "seconds", "MB/s", "rtt p50 us", "x direct"
    );
    for r in &rows {
        eprintln!(
            "{:<7} {:>5} {:>12} {:>8.3} {:>9.0} {:>11.1} {:>9.2}",
            r.path, r.round, r.bytes, r.seconds, r.mb_per_s, r.rtt_p50_us, r.ratio_to_direct
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Proxy(args) => proxy(args),
        Command::Overhead(args) => overhead(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-wanem: {e:#}");
            ExitCode::from(2)
        }
    }
}
