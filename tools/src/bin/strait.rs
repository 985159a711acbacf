//! `strait`: runs Strait.
//!
//! `strait start server --config site.toml` runs a server in the foreground until SIGTERM or
//! SIGINT, then stops accepting, finishes in-flight work, closes the sender queues and exits
//! 0. Flags override the file's `[server]` table. `docs/configuration.md` lists every option.

#![forbid(unsafe_code)]

/// mimalloc: shards allocate buffers that other shards free (a write's key and value cross to
/// the shard that owns the key), which glibc's per-thread arenas serve through a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use strait_node::config::{self, HostPort, SiteConfig};

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "Strait: multi-site replication for in-memory data"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Start a member in the foreground.
    Start {
        #[command(subcommand)]
        what: Start,
    },
}

#[derive(Subcommand)]
enum Start {
    /// A server: regions, gateway senders and receiver, Redis-protocol clients.
    Server(ServerArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// The site configuration (site.toml); without it, a server with no regions.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Member name (overrides server.name).
    #[arg(long)]
    name: Option<String>,
    /// Working directory for queues (overrides server.directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Locators, `host:port` or `host[port]`, comma-separated (overrides server.locators).
    #[arg(long, value_delimiter = ',')]
    locators: Vec<String>,
    /// Client (RESP) port (overrides server.client-port; default 40404).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    client_port: Option<u16>,
    /// Shards (overrides server.shards; default: the CPUs this process may run on).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards: Option<u16>,
}

fn site_config(args: &ServerArgs) -> anyhow::Result<SiteConfig> {
    let mut cfg = match &args.config {
        Some(path) => config::load(path)?,
        None => config::parse("(no --config)".as_ref(), "")?,
    };
    let s = &mut cfg.server;
    if let Some(name) = &args.name {
        s.name = name.clone();
    }
    if let Some(dir) = &args.dir {
        for sender in &mut cfg.senders {
            if let Ok(rest) = sender.disk_dir.strip_prefix(&s.directory) {
                sender.disk_dir = dir.join(rest);
            }
        }
        s.directory = dir.clone();
    }
    if !args.locators.is_empty() {
        s.locators = args
            .locators
            .iter()
            .map(|l| HostPort::parse(l).map_err(|e| anyhow::anyhow!("--locators: {e}")))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(port) = args.client_port {
        s.client_port = port;
    }
    if let Some(shards) = args.shards {
        s.shards = Some(shards);
    }
    Ok(cfg)
}

fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let cfg = site_config(&args)?;
    let name = cfg.server.name.clone();
    let regions = cfg.regions.len();
    let handle = strait_node::server::start(cfg).context("the server did not start")?;
    let stop = handle.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    eprintln!(
        "strait server {name} listening on {} ({regions} regions)",
        handle.client_addr
    );
    handle.join().map_err(|e| anyhow::anyhow!(e))?;
    eprintln!("strait server {name} stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Top::Start {
            what: Start::Server(args),
        } => run_server(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait: {e:#}");
            ExitCode::FAILURE
        }
    }
}
