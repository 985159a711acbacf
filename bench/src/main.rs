//! `strait-bench`: Strait's benchmark tool.
//!
//! `strait-bench queue` measures the gateway-sender queue (`strait-queue`) on one glommio
//! shard against bounds taken in the same run: memcpy bandwidth, raw disk write bandwidth and
//! cold disk read bandwidth. It appends, drains (peek + ack) and reopens queues in memory,
//! overflowing to segment files, and persistent under each sync policy, for several value
//! sizes, and writes the same records with glommio's DMA stream writer for comparison.
//!
//! Results go to stdout as one JSON object per line; a readable table and the PASS/MISS
//! verdicts against the performance targets follow on stderr. Build and run it in release
//! mode, from a directory on the disk to measure:
//!
//! ```text
//! cargo build --release -p strait-bench
//! target/release/strait-bench queue                 # every case, default sizes
//! target/release/strait-bench queue --bytes 128MiB --reopen-bytes 256MiB   # a quick pass
//! target/release/strait-bench queue --modes persistent --syncs never,every-batch \
//!     --sizes 1KiB --queues 1,57 --reopen-bytes 0 --no-dma-write     # segment layout
//! ```
//!
//! `strait-bench site` compares a Strait server with redis-server under redis-benchmark, and
//! `strait-bench e2e` replicates between two sites run as `strait` processes (needs
//! `cargo build --release -p strait-tools` for `strait`, `strait-load` and `strait-wanem`).
//!
//! `docs/benchmarks.md` describes each case and records figures.

#![forbid(unsafe_code)]

mod bounds;
mod e2e;
mod queue;
mod report;
mod site;
mod size;
mod svg;

/// mimalloc: shards allocate buffers that other shards free (a write's key and value cross to
/// the shard that owns the key), which glibc's per-thread arenas serve through a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Strait benchmarks.
#[derive(Debug, Parser)]
#[command(name = "strait-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Queue throughput (append, peek + ack, reopen) against memcpy and disk bounds and
    /// glommio's DMA stream writer.
    Queue(queue::QueueArgs),
    /// redis-benchmark SET against a Strait server whose writes are all queued for a gateway
    /// sender, and against redis-server in the same run.
    Site(site::SiteArgs),
    /// Two sites as separate processes: replicated events/s, MB/s and write → visible-at-the-
    /// other-site latency, directly and through `strait-wanem`, against loopback TCP.
    E2e(Box<e2e::E2eArgs>),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args),
        Command::Site(args) => site::run(args),
        Command::E2e(args) => e2e::run(*args),
    }
}
