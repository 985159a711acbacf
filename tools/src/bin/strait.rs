//! `strait`: runs Strait.
//!
//! `strait start server --config site.toml` runs a server in the foreground until SIGTERM or
//! SIGINT, then stops accepting, finishes in-flight work, closes the sender queues and exits
//! 0. Flags override the file's `[server]` table. `--cache-xml` and `--properties-file` read
//! Geode's own files instead of `site.toml` (`strait_node::geode`), printing a warning for
//! each thing in them that Strait does not act on. `strait start locator` runs a locator the
//! same way (`docs/locator.md`). `docs/configuration.md` lists every option. `strait demo`
//! runs several sites replicating on loopback (`docs/demo.md`).

#![forbid(unsafe_code)]

/// mimalloc: shards allocate buffers that other shards free (a write's key and value cross to
/// the shard that owns the key), which glibc's per-thread arenas serve through a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../cli/admin.rs"]
mod admin;
#[path = "../cli/background.rs"]
mod background;

use admin::{Op, Target};
/// `strait demo` (its own folder: the rest of this file is shared by the CLI's commands).
#[path = "../demo/mod.rs"]
mod demo;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use strait_node::config::{self, HostPort, SiteConfig};
use strait_node::geode;
use strait_node::locator::LocatorConfig;
use strait_queue::ids::SiteId;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "Strait: multi-site replication for in-memory data"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
    /// How log lines are written on stderr: `text` (one human-readable line each) or `json`
    /// (one JSON object per line).
    #[arg(long, global = true, value_enum, env = "STRAIT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Which log lines are written: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// `RUST_LOG`-style directives (`warn,strait_node::wan=debug`).
    #[arg(long, global = true, env = "STRAIT_LOG", default_value = "info", value_parser = log_filter)]
    log_level: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Checks a `--log-level` value; the filter itself is built in [`init_logs`].
fn log_filter(directives: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(directives)
        .map(|_| directives.to_string())
        .map_err(|e| format!("not a level or a list of `target=level` directives: {e}"))
}

/// Log lines (the server's, the locator's, and this command's own start and stop lines) go
/// to stderr as `tracing` events: a timestamp, the level and the message (then its fields),
/// or one JSON object per line.
///
/// A shard that logs does not write: lines go through a queue of up to [`LOG_LINES_QUEUED_MAX`]
/// to a writer thread (tracing-appender), so a slow or blocked stderr cannot stall the data
/// plane. A full queue blocks the logging thread rather than drop a line. The returned guard
/// flushes the queue when dropped, at the end of `main`.
fn init_logs(format: LogFormat, directives: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_QUEUED_MAX)
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(directives))
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false);
    match format {
        LogFormat::Text => logs.compact().init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_target(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    guard
}

/// Log lines waiting for the writer thread, at most.
const LOG_LINES_QUEUED_MAX: usize = 65_536;

#[derive(Subcommand)]
enum Top {
    /// Start a member in the foreground, or a gateway sender or receiver of a running server.
    Start {
        #[command(subcommand)]
        what: Start,
    },
    /// Stop a member started in the background, or a gateway sender or the gateway receiver
    /// of a running server.
    Stop {
        #[command(subcommand)]
        what: Member,
    },
    /// Pause a gateway sender: it keeps queueing and sends nothing new.
    Pause {
        #[command(subcommand)]
        what: SenderOnly,
    },
    /// Resume a paused gateway sender.
    Resume {
        #[command(subcommand)]
        what: SenderOnly,
    },
    /// Whether a member started in the background runs, or the state of a gateway sender or
    /// of the gateway receiver.
    Status {
        #[command(subcommand)]
        what: Member,
    },
    /// List a server's gateways or regions, or a site's members.
    List {
        #[command(subcommand)]
        what: List,
    },
    /// Everything a server reports about itself (its regions, senders, receiver, figures), as JSON.
    Describe {
        #[command(subcommand)]
        what: Describe,
    },
    /// Put an entry into a region.
    Put {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        region: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        value: String,
    },
    /// Get an entry's value from a region.
    Get {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        region: String,
        #[arg(long)]
        key: String,
    },
    /// Remove an entry from a region.
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        region: String,
        #[arg(long)]
        key: String,
    },
    /// Create a disk store, gateway sender, gateway receiver or region on a running server;
    /// kept in the server's directory, it comes back after a restart.
    Create {
        #[command(subcommand)]
        what: Create,
    },
    /// Change a running server's gateway sender or region.
    Alter {
        #[command(subcommand)]
        what: Alter,
    },
    /// Destroy a running server's disk store, gateway sender, gateway receiver or region.
    Destroy {
        #[command(subcommand)]
        what: Destroy,
    },
    /// The gateway receiver's dead-letter logs: events it could not apply.
    DeadLetters {
        #[command(subcommand)]
        what: DeadLetters,
    },
    /// Three sites replicating to each other on loopback: writes, live throughput, a check
    /// that every site holds the same data, and a summary. Needs no configuration.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum Start {
    /// A server: regions, gateway senders and receiver, Redis-protocol clients.
    Server(ServerArgs),
    /// A locator: the site's directory of servers, for servers, clients and other sites.
    Locator(LocatorArgs),
    /// Start a gateway sender of a running server (`--clean-queues` first discards its queues).
    GatewaySender {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: String,
        #[arg(long)]
        clean_queues: bool,
    },
    /// Start the gateway receiver of a running server.
    GatewayReceiver {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum Member {
    /// The server started in the background in `--dir` (`start server --background`).
    Server {
        /// The server's directory (its `server.pid`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The locator started in the background in `--dir` (`start locator --background`).
    Locator {
        /// The locator's directory (its `locator.pid`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    GatewaySender {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: String,
    },
    GatewayReceiver {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum SenderOnly {
    GatewaySender {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum List {
    /// Geode's `list gateways`: each sender's id, member, remote site, type, status and queued
    /// events, and the receiver.
    Gateways {
        #[command(flatten)]
        target: Target,
    },
    /// The server's regions and their entry counts.
    Regions {
        #[command(flatten)]
        target: Target,
    },
    /// The server's disk stores (`create disk-store`) and the senders in each.
    DiskStores {
        #[command(flatten)]
        target: Target,
    },
    /// The servers a locator knows (its site's directory).
    Members {
        /// The locator, `host[port]` or `host:port`.
        #[arg(long, default_value = "localhost[10334]")]
        locator: String,
    },
}

#[derive(Subcommand)]
enum Describe {
    /// The server's own report (`GET /v1/member`).
    Member {
        #[command(flatten)]
        target: Target,
    },
    /// The configuration the server runs with, as a site.toml with every default written out
    /// (also what a server started from Geode's cache.xml reads it as).
    Config {
        #[command(flatten)]
        target: Target,
    },
}

/// `start|stop|pause|resume gateway-sender`.
fn sender_action(target: &Target, id: String, op: &'static str, clean: bool) -> anyhow::Result<()> {
    admin::run(target, Op::SenderAction { id, op, clean })
}

/// `--if-not-exists`: an existing one is no failure (gfsh's flag).
#[derive(Args, Clone, Copy)]
struct IfNotExists {
    /// Succeed, doing nothing, when it already exists.
    #[arg(long)]
    if_not_exists: bool,
}

/// `--if-exists`: a missing one is no failure (gfsh's flag).
#[derive(Args, Clone, Copy)]
struct IfExists {
    /// Succeed, doing nothing, when it does not exist.
    #[arg(long)]
    if_exists: bool,
}

#[derive(Subcommand)]
enum Create {
    /// A named directory for persistent gateway senders' queues (`--disk-store-name`).
    DiskStore {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        /// The directory; a relative one is inside the server's directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        guard: IfNotExists,
    },
    /// A gateway sender; attach it to regions with `create region` or `alter region`.
    GatewaySender {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: SenderOptions,
        #[command(flatten)]
        fixed: SenderCreateOptions,
        #[command(flatten)]
        guard: IfNotExists,
    },
    /// The server's gateway receiver (one per server).
    GatewayReceiver {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: ReceiverOptions,
        #[command(flatten)]
        guard: IfNotExists,
    },
    /// A region.
    Region {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: RegionOptions,
        #[command(flatten)]
        guard: IfNotExists,
    },
}

/// The options of `create gateway-sender` that are fixed once the sender exists (site.toml's
/// `[[gateway-sender]]` keys; docs/configuration.md has their defaults).
#[derive(Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct SenderCreateOptions {
    /// The site this sender replicates to (required).
    #[arg(long)]
    remote_distributed_system_id: u8,
    /// A queue per bucket (true) or per dispatcher (default false).
    #[arg(long)]
    parallel: Option<bool>,
    /// Queue memory before overflow to disk, MiB, split among shards (default 100).
    #[arg(long)]
    maximum_queue_memory: Option<u32>,
    /// Queues survive a restart (default false).
    #[arg(long)]
    enable_persistence: Option<bool>,
    /// A disk store made with `create disk-store`; the queues go to `<its dir>/<id>`.
    #[arg(long, conflicts_with = "disk_dir")]
    disk_store_name: Option<String>,
    /// The queues' directory, instead of a disk store (default `<directory>/queues/<id>`).
    #[arg(long)]
    disk_dir: Option<PathBuf>,
    /// With `every-batch`, an append completes once synced (default true).
    #[arg(long)]
    disk_synchronous: Option<bool>,
    /// When persistent queues fdatasync: `never`, `every-batch` (default) or `interval-<ms>ms`.
    #[arg(long)]
    sync_policy: Option<String>,
    /// Default false.
    #[arg(long)]
    enable_batch_conflation: Option<bool>,
    /// Serial senders' dispatchers (default 5).
    #[arg(long)]
    dispatcher_threads: Option<u16>,
    /// `key` (default), `thread` or `partition`.
    #[arg(long)]
    order_policy: Option<String>,
    /// Kernel send and receive buffers, bytes (default 0: the kernel autotunes).
    #[arg(long)]
    socket_buffer_size: Option<u32>,
    /// Start not running, queueing nothing, until `start gateway-sender` (default false).
    #[arg(long)]
    manual_start: Option<bool>,
}

/// The options of `create gateway-receiver` (site.toml's `[gateway-receiver]` keys).
#[derive(Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct ReceiverOptions {
    /// First port of the range, one port per shard (default 5000).
    #[arg(long)]
    start_port: Option<u16>,
    /// Last port of the range, inclusive (default 5500).
    #[arg(long)]
    end_port: Option<u16>,
    /// Default 0.0.0.0.
    #[arg(long)]
    bind_address: Option<String>,
    /// The name advertised to other sites (default: the bind address, else the host name);
    /// across NAT, the public address.
    #[arg(long)]
    hostname_for_senders: Option<String>,
    /// Milliseconds a sender connection may stay silent (default 60000).
    #[arg(long)]
    maximum_time_between_pings: Option<u32>,
    /// Kernel send and receive buffers, bytes (default 0: the kernel autotunes).
    #[arg(long)]
    socket_buffer_size: Option<u32>,
    /// Start not listening until `start gateway-receiver` (default false).
    #[arg(long)]
    manual_start: Option<bool>,
}

/// The options of `create region` (site.toml's `[[region]]` keys).
#[derive(Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct RegionOptions {
    /// The region's name, the same at every site.
    #[arg(long)]
    name: String,
    /// `partition`, `replicate`, or Geode's PARTITION, PARTITION_REDUNDANT,
    /// PARTITION_PERSISTENT, PARTITION_REDUNDANT_PERSISTENT, REPLICATE, REPLICATE_PERSISTENT.
    #[arg(long = "type")]
    #[serde(rename = "type")]
    kind: String,
    /// Buckets of a partitioned region, the same at every site (default 113).
    #[arg(long)]
    total_num_buckets: Option<u16>,
    /// Gateway senders the region's writes are queued for (comma-separated or repeated).
    #[arg(long = "gateway-sender-id", value_delimiter = ',')]
    gateway_sender_ids: Vec<String>,
    /// Log every write to disk and restore it at start (default false; the *_PERSISTENT
    /// types set it).
    #[arg(long)]
    persistent: Option<bool>,
}

/// Options as a JSON object of site.toml keys, without those not given.
fn options_json(
    options: &impl serde::Serialize,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(mut o) = serde_json::to_value(options)? else {
        anyhow::bail!("internal: options are not an object");
    };
    o.retain(|_, v| !v.is_null());
    if let Some(serde_json::Value::Array(ids)) = o.get_mut("gateway-sender-ids") {
        ids.retain(|v| v.as_str() != Some(""));
    }
    Ok(o)
}

/// A sender's id and the options `alter gateway-sender` may also change.
#[derive(Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct SenderOptions {
    /// The sender's id.
    #[arg(long)]
    id: String,
    /// Events per batch at most (default 100).
    #[arg(long)]
    batch_size: Option<u32>,
    /// Longest wait to fill a batch, ms (default 1000).
    #[arg(long)]
    batch_time_interval: Option<u32>,
    /// Warn about events older than this when sent, ms (default 0: off).
    #[arg(long)]
    alert_threshold: Option<u32>,
    /// Batches sent and not yet acknowledged, per dispatcher (default 64).
    #[arg(long)]
    batches_in_flight: Option<u16>,
    /// How long to wait for an ack before reconnecting, ms (0 or ≥ 30000; default 0: 30000).
    #[arg(long)]
    socket_read_timeout: Option<u32>,
}

#[derive(Subcommand)]
enum Alter {
    /// Change a gateway sender's batch size, batch time interval, alert threshold,
    /// batches in flight or socket read timeout; its dispatchers reconnect with them.
    GatewaySender {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: SenderOptions,
    },
    /// Change which gateway senders a region's writes are queued for.
    Region {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        /// The senders (comma-separated or repeated); `--gateway-sender-id ""` detaches all.
        #[arg(long = "gateway-sender-id", value_delimiter = ',', required = true)]
        gateway_sender_ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Destroy {
    /// A disk store no gateway sender uses.
    DiskStore {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        guard: IfExists,
    },
    /// A gateway sender no region uses; its queues and their files are deleted.
    GatewaySender {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: String,
        #[command(flatten)]
        guard: IfExists,
    },
    /// The gateway receiver: its ports close and the locators stop advertising it.
    GatewayReceiver {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        guard: IfExists,
    },
    /// A region: its entries (and, when persistent, its log) are deleted.
    Region {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        guard: IfExists,
    },
}

fn create(what: Create) -> anyhow::Result<()> {
    let tolerate = |g: IfNotExists| g.if_not_exists.then_some(409);
    let (target, path, body, what, guard) = match what {
        Create::DiskStore {
            target,
            name,
            dir,
            guard,
        } => {
            let body = serde_json::json!({ "name": name, "directory": dir.display().to_string() });
            let what = format!("create disk-store {name}");
            (target, "disk-stores", body, what, guard)
        }
        Create::GatewaySender {
            target,
            options,
            fixed,
            guard,
        } => {
            let mut body = options_json(&options)?;
            body.extend(options_json(&fixed)?);
            let what = format!("create gateway-sender {}", options.id);
            (target, "gateway-senders", body.into(), what, guard)
        }
        Create::GatewayReceiver {
            target,
            options,
            guard,
        } => {
            let body = options_json(&options)?.into();
            let what = "create gateway-receiver".to_string();
            (target, "gateway-receiver", body, what, guard)
        }
        Create::Region {
            target,
            options,
            guard,
        } => {
            let body = options_json(&options)?.into();
            let what = format!("create region {}", options.name);
            (target, "regions", body, what, guard)
        }
    };
    let op = Op::Change {
        method: "POST",
        path: format!("/v1/{path}"),
        body: Some(body),
        what,
        tolerate: tolerate(guard),
    };
    admin::run(&target, op)
}

fn alter(what: Alter) -> anyhow::Result<()> {
    let (target, path, body, what) = match what {
        Alter::GatewaySender { target, options } => {
            let mut body = options_json(&options)?;
            body.remove("id");
            let path = format!("/v1/gateway-senders/{}", admin::segment(&options.id));
            (
                target,
                path,
                body,
                format!("alter gateway-sender {}", options.id),
            )
        }
        Alter::Region {
            target,
            name,
            gateway_sender_ids,
        } => {
            let ids: Vec<&String> = gateway_sender_ids
                .iter()
                .filter(|s| !s.is_empty())
                .collect();
            let body = serde_json::json!({ "gateway-sender-ids": ids });
            let body = body.as_object().cloned().unwrap_or_default();
            let path = format!("/v1/regions/{}", admin::segment(&name));
            (target, path, body, format!("alter region {name}"))
        }
    };
    let op = Op::Change {
        method: "PATCH",
        path,
        body: Some(body.into()),
        what,
        tolerate: None,
    };
    admin::run(&target, op)
}

fn destroy(what: Destroy) -> anyhow::Result<()> {
    let tolerate = |g: IfExists| g.if_exists.then_some(404);
    let (target, path, what, guard) = match what {
        Destroy::DiskStore {
            target,
            name,
            guard,
        } => (
            target,
            format!("/v1/disk-stores/{}", admin::segment(&name)),
            format!("destroy disk-store {name}"),
            guard,
        ),
        Destroy::GatewaySender { target, id, guard } => (
            target,
            format!("/v1/gateway-senders/{}", admin::segment(&id)),
            format!("destroy gateway-sender {id}"),
            guard,
        ),
        Destroy::GatewayReceiver { target, guard } => (
            target,
            "/v1/gateway-receiver".to_string(),
            "destroy gateway-receiver".to_string(),
            guard,
        ),
        Destroy::Region {
            target,
            name,
            guard,
        } => (
            target,
            format!("/v1/regions/{}", admin::segment(&name)),
            format!("destroy region {name}"),
            guard,
        ),
    };
    let op = Op::Change {
        method: "DELETE",
        path,
        body: None,
        what,
        tolerate: tolerate(guard),
    };
    admin::run(&target, op)
}

#[derive(Subcommand)]
enum DeadLetters {
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Apply the dead letters again (of one region, or all); those still refused stay.
    Replay {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// Run in the background: the pid in `<directory>/server.pid`, stdout and stderr appended
    /// to `<directory>/server.log`; returns once the server listens.
    #[arg(long)]
    background: bool,
    /// The site configuration (site.toml); without it, a server with no regions.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Geode's cache.xml: disk stores, gateway senders and receiver, regions (instead of
    /// --config; docs/configuration.md, "Geode's files").
    #[arg(long, conflicts_with = "config")]
    cache_xml: Option<PathBuf>,
    /// Geode's gemfire.properties: distributed-system-id, locators, name, ... (instead of
    /// --config).
    #[arg(long, conflicts_with = "config")]
    properties_file: Option<PathBuf>,
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
    /// Run a locator in this process at `host[port]` and register with it (overrides
    /// server.start-locator; without a value: `localhost[10334]`).
    #[arg(long, num_args = 0..=1, default_missing_value = "localhost[10334]")]
    start_locator: Option<String>,
}

#[derive(Args)]
struct LocatorArgs {
    /// Run in the background: the pid in `<dir>/locator.pid`, stdout and stderr appended to
    /// `<dir>/locator.log`; returns once the locator listens.
    #[arg(long)]
    background: bool,
    /// Geode's gemfire.properties: name, distributed-system-id, remote-locators,
    /// hostname-for-clients, bind-address, member-timeout; the flags below override it.
    #[arg(long)]
    properties_file: Option<PathBuf>,
    /// Member name [default: locator].
    #[arg(long)]
    name: Option<String>,
    /// The locator port.
    #[arg(long, default_value_t = strait_node::locator::LOCATOR_PORT_DEFAULT)]
    port: u16,
    /// Address the locator port listens on [default: 0.0.0.0].
    #[arg(long)]
    bind_address: Option<std::net::IpAddr>,
    /// Working directory (holds the lock file that keeps a second locator away).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The site's distributed-system-id.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=255))]
    distributed_system_id: Option<u8>,
    /// Locators of other sites to exchange the map of sites with, `host[port]` or `host:port`,
    /// comma-separated; one is enough, the rest is learned.
    #[arg(long, value_delimiter = ',')]
    remote_locators: Vec<String>,
    /// The host name this locator advertises to servers, clients and other sites (default: the
    /// bind address, else the host name).
    #[arg(long)]
    hostname_for_clients: Option<String>,
    /// Milliseconds of silence after which a server is dropped [default: 15000].
    #[arg(
        long,
        value_parser = clap::value_parser!(u64).range(
            strait_engine::locator::MEMBER_TIMEOUT_MS_MIN..=strait_engine::locator::MEMBER_TIMEOUT_MS_MAX
        )
    )]
    member_timeout: Option<u64>,
    /// Milliseconds between exchanges with remote locators.
    #[arg(long, default_value_t = strait_node::locator::LOCATOR_EXCHANGE_INTERVAL_MS,
        value_parser = clap::value_parser!(u64).range(1..))]
    exchange_interval_ms: u64,
    /// Milliseconds after which a remote site's entry its own site stopped vouching for is
    /// dropped.
    #[arg(long, default_value_t = strait_engine::locator::REMOTE_ENTRY_TIMEOUT_MS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..))]
    remote_entry_timeout_ms: u64,
}

fn locator_config(args: LocatorArgs) -> anyhow::Result<LocatorConfig> {
    let mut c = LocatorConfig::new("locator", args.dir);
    if let Some(path) = &args.properties_file {
        for w in geode::load_locator(path, &mut c)? {
            eprintln!("strait: warning: {w}");
        }
    }
    c.port = args.port;
    if let Some(name) = args.name {
        c.name = name;
    }
    if let Some(ip) = args.bind_address {
        c.bind_address = ip;
    }
    if let Some(id) = args.distributed_system_id {
        c.distributed_system_id = Some(SiteId(id));
    }
    if !args.remote_locators.is_empty() {
        c.remote_locators = args
            .remote_locators
            .iter()
            .map(|l| HostPort::parse(l).map_err(|e| anyhow::anyhow!("--remote-locators: {e}")))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(h) = args.hostname_for_clients {
        c.hostname_for_clients = Some(h).filter(|h| !h.is_empty());
    }
    if let Some(ms) = args.member_timeout {
        c.member_timeout_ms = ms;
    }
    c.exchange_interval_ms = args.exchange_interval_ms;
    c.remote_entry_timeout_ms = args.remote_entry_timeout_ms;
    Ok(c)
}

/// This command line without `--background`: what the background child runs.
fn foreground_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--background")
        .collect()
}

fn run_locator(args: LocatorArgs) -> anyhow::Result<()> {
    if args.background {
        return background::start(background::Kind::Locator, &args.dir, foreground_args());
    }
    let cfg = locator_config(args)?;
    let name = cfg.name.clone();
    let handle = strait_node::locator::start_locator(cfg).context("the locator did not start")?;
    let stop = handle.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    tracing::info!("strait locator {name} listening on {}", handle.addr);
    handle.join().map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!("strait locator {name} stopped");
    Ok(())
}

fn site_config(args: &ServerArgs) -> anyhow::Result<SiteConfig> {
    let mut cfg = match (&args.config, &args.cache_xml, &args.properties_file) {
        (Some(path), _, _) => config::load(path)?,
        (None, None, None) => config::parse("(no --config)".as_ref(), "")?,
        (None, xml, props) => {
            let loaded = geode::load_server(xml.as_deref(), props.as_deref())?;
            for w in &loaded.warnings {
                eprintln!("strait: warning: {w}");
            }
            loaded.config
        }
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
    if let Some(at) = &args.start_locator {
        s.start_locator =
            Some(HostPort::parse(at).map_err(|e| anyhow::anyhow!("--start-locator: {e}"))?);
    }
    Ok(cfg)
}

fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let cfg = site_config(&args)?;
    if args.background {
        return background::start(
            background::Kind::Server,
            &cfg.server.directory,
            foreground_args(),
        );
    }
    let name = cfg.server.name.clone();
    let regions = cfg.regions.len();
    let handle = strait_node::server::start(cfg).context("the server did not start")?;
    let stop = handle.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    if let Some(at) = handle.locator_addr() {
        tracing::info!("strait server {name}: embedded locator listening on {at}");
    }
    tracing::info!(
        "strait server {name} listening on {} ({regions} regions)",
        handle.client_addr
    );
    handle.join().map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!("strait server {name} stopped");
    Ok(())
}

/// A member started by `strait demo` (which sets [`demo::EXIT_WITH_PARENT_ENV`] to
/// its pid) gets SIGTERM, and stops cleanly, when the demo ends however it ends: no member
/// outlives a demo killed with SIGKILL.
fn exit_with_parent() {
    let Some(parent) = std::env::var(demo::EXIT_WITH_PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The demo may have ended before the request took effect.
    if rustix::process::getppid().map(|p| p.as_raw_pid()) != Some(parent) {
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    exit_with_parent();
    let cli = Cli::parse();
    let _logs = init_logs(cli.log_format, &cli.log_level);
    // A member's failure to start is a log line like its others; a command's is its answer.
    let member = matches!(
        cli.command,
        Top::Start {
            what: Start::Server(_) | Start::Locator(_)
        }
    );
    let result = match cli.command {
        Top::Start {
            what: Start::Server(args),
        } => run_server(args),
        Top::Start {
            what: Start::Locator(args),
        } => run_locator(args),
        Top::Start {
            what:
                Start::GatewaySender {
                    target,
                    id,
                    clean_queues,
                },
        } => sender_action(&target, id, "start", clean_queues),
        Top::Start {
            what: Start::GatewayReceiver { target },
        } => admin::run(&target, Op::ReceiverAction { op: "start" }),
        Top::Stop {
            what: Member::GatewaySender { target, id },
        } => sender_action(&target, id, "stop", false),
        Top::Stop {
            what: Member::GatewayReceiver { target },
        } => admin::run(&target, Op::ReceiverAction { op: "stop" }),
        Top::Pause {
            what: SenderOnly::GatewaySender { target, id },
        } => sender_action(&target, id, "pause", false),
        Top::Resume {
            what: SenderOnly::GatewaySender { target, id },
        } => sender_action(&target, id, "resume", false),
        Top::Status {
            what: Member::GatewaySender { target, id },
        } => admin::run(&target, Op::SenderStatus { id }),
        Top::Status {
            what: Member::GatewayReceiver { target },
        } => admin::run(&target, Op::ReceiverStatus),
        Top::Stop {
            what: Member::Server { dir },
        } => background::stop(background::Kind::Server, &dir),
        Top::Stop {
            what: Member::Locator { dir },
        } => background::stop(background::Kind::Locator, &dir),
        Top::Status {
            what: Member::Server { dir },
        } => background::status(background::Kind::Server, &dir),
        Top::Status {
            what: Member::Locator { dir },
        } => background::status(background::Kind::Locator, &dir),
        Top::List {
            what: List::Gateways { target },
        } => admin::run(&target, Op::ListGateways),
        Top::List {
            what: List::Regions { target },
        } => admin::run(&target, Op::ListRegions),
        Top::List {
            what: List::DiskStores { target },
        } => admin::run(&target, Op::ListDiskStores),
        Top::Create { what } => create(what),
        Top::Alter { what } => alter(what),
        Top::Destroy { what } => destroy(what),
        Top::List {
            what: List::Members { locator },
        } => admin::run(
            &Target {
                url: String::new(),
                locator: None,
            },
            Op::ListMembers { locator },
        ),
        Top::Describe {
            what: Describe::Member { target },
        } => admin::run(&target, Op::DescribeMember),
        Top::Describe {
            what: Describe::Config { target },
        } => admin::run(&target, Op::DescribeConfig),
        Top::Put {
            target,
            region,
            key,
            value,
        } => admin::run(&target, Op::Put { region, key, value }),
        Top::Get {
            target,
            region,
            key,
        } => admin::run(&target, Op::Get { region, key }),
        Top::Remove {
            target,
            region,
            key,
        } => admin::run(&target, Op::Remove { region, key }),
        Top::DeadLetters {
            what: DeadLetters::List { target },
        } => admin::run(&target, Op::DeadLettersList),
        Top::DeadLetters {
            what: DeadLetters::Replay { target, region },
        } => admin::run(&target, Op::DeadLettersReplay { region }),
        Top::Demo(args) => return demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if member => {
            tracing::error!("strait: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("strait: {e:#}");
            ExitCode::FAILURE
        }
    }
}
