//! `site.toml`: what a server runs. Parsed low (serde structs that mirror the file, unknown
//! keys refused), then validated high into [`SiteConfig`], whose every field has a value:
//! defaults are the named constants below, and `docs/configuration.md` lists them all.
//!
//! Errors name the file, the line of the table involved, the key and the reason.

use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use strait_queue::ids::SiteId;
use strait_queue::queue::SyncPolicy;
use toml::Spanned;

/// Default client (RESP) port, Geode's cache-server port.
pub const CLIENT_PORT_DEFAULT: u16 = 40404;
/// Default locator port (Geode's).
pub const LOCATOR_PORT_DEFAULT: u16 = 10334;
/// Default `total-num-buckets` of a partitioned region (Geode's).
pub const TOTAL_NUM_BUCKETS_DEFAULT: u16 = strait_engine::bucket::TOTAL_BUCKETS_DEFAULT;
/// Most buckets a region may have.
pub const TOTAL_NUM_BUCKETS_MAX: u16 = strait_engine::bucket::BUCKETS_MAX;
/// Sender defaults (Geode's, `geode-wan.md` §13).
pub const BATCH_SIZE_DEFAULT: u32 = 100;
pub const BATCH_TIME_INTERVAL_MS_DEFAULT: u32 = 1000;
pub const MAXIMUM_QUEUE_MEMORY_MB_DEFAULT: u32 = 100;
pub const DISPATCHER_THREADS_DEFAULT: u16 = 5;
/// `socket-buffer-size` default: 0, the kernel sizes the buffers (Linux's autotuning). Geode's
/// default is 524 288 bytes; a fixed buffer turns autotuning off and, with Linux's default
/// `net.core.wmem_max` of 208 KiB, caps a connection at about 416 KiB in flight, a tenth of
/// a 1 Gbit/s × 25 ms path. A value set in the file is applied.
pub const SOCKET_BUFFER_SIZE_DEFAULT: u32 = 0;
/// The smallest non-zero `socket-buffer-size`.
pub const SOCKET_BUFFER_SIZE_MIN: u32 = 4096;
/// Default `batches-in-flight`: batches a dispatcher sends before the first is acknowledged.
/// Over a WAN the window, not the link, bounds throughput: a parallel sender serves about
/// `total-num-buckets / shards` queues per dispatcher, so a window of 8 gave each bucket a
/// batch only every few round trips (docs/benchmarks.md, `strait-bench e2e`).
pub const BATCHES_IN_FLIGHT_DEFAULT: u16 = 64;
/// A non-zero `socket-read-timeout` below this is refused (Geode's minimum).
pub const SOCKET_READ_TIMEOUT_MS_MIN: u32 = 30_000;
/// Receiver defaults (Geode's).
pub const RECEIVER_START_PORT_DEFAULT: u16 = 5000;
pub const RECEIVER_END_PORT_DEFAULT: u16 = 5500;
pub const MAXIMUM_TIME_BETWEEN_PINGS_MS_DEFAULT: u32 = 60_000;
/// Longest region or sender name.
pub const NAME_BYTES_MAX: usize = strait_engine::region::REGION_NAME_BYTES_MAX;
const _: () = assert!(strait_engine::region::SENDER_ID_BYTES_MAX == NAME_BYTES_MAX);

/// A configuration problem, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the table (or value) involved, when known.
    pub line: Option<usize>,
    /// The key, as a path: `gateway-sender[2].batch-size`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.key, self.reason)
        }
    }
}

/// A `host:port` or Geode's `host[port]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`, `host[port]` or `[v6addr]:port`.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let s = s.trim();
        let (host, port) = if let Some(open) = s
            .find('[')
            .filter(|_| s.ends_with(']') && !s.starts_with('['))
        {
            (&s[..open], &s[open + 1..s.len() - 1])
        } else if let Some(rest) = s.strip_prefix('[') {
            let close = rest
                .find("]:")
                .ok_or_else(|| format!("`{s}` is not [address]:port"))?;
            (&rest[..close], &rest[close + 2..])
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| format!("`{s}` has no port: write host:port or host[port]"))?
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{s}` is not a port number"))?;
        if port == 0 {
            return Err(format!("port 0 in `{s}` is not a port one can connect to"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `partition` or `replicate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionType {
    Partition,
    Replicate,
}

/// How a serial sender splits its queue among dispatchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderPolicy {
    Key,
    Thread,
    Partition,
}

/// The validated configuration of one server.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteConfig {
    pub server: ServerSettings,
    pub regions: Vec<RegionDef>,
    pub senders: Vec<SenderDef>,
    pub receiver: Option<ReceiverDef>,
    /// Named directories for senders' queues (`[[disk-store]]`, Geode's `<disk-store>`).
    pub disk_stores: Vec<DiskStoreDef>,
}

/// A disk store: a name for a directory that persistent senders' queues go in (a sender made
/// with `disk-store-name` at run time keeps its queues in `<directory>/<sender id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStoreDef {
    pub name: String,
    /// As written; a relative one is inside the server's `directory` ([`DiskStoreDef::path`]).
    pub directory: PathBuf,
}

impl DiskStoreDef {
    /// The store's directory for a server whose `directory` is `server_dir`.
    pub fn path(&self, server_dir: &Path) -> PathBuf {
        server_dir.join(&self.directory)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Member name; default: `server-<client-port>`.
    pub name: String,
    /// `distributed-system-id`; required once a gateway sender or receiver is configured.
    pub distributed_system_id: Option<SiteId>,
    pub locators: Vec<HostPort>,
    /// `start-locator`: run a locator inside the server, bound to this host's address and
    /// port, and register with it (Geode's `start-locator` property).
    pub start_locator: Option<HostPort>,
    pub bind_address: IpAddr,
    pub client_port: u16,
    /// Shards (executors); `None`: one per CPU this process may run on.
    pub shards: Option<u16>,
    /// Working directory: queue segments, pid and log files. Default `.`.
    pub directory: PathBuf,
    /// `http-service-port`: the admin API and `/metrics` (docs/admin-api.md); 0 turns them
    /// off. Default [`crate::admin::HTTP_SERVICE_PORT_DEFAULT`] (7070, Geode's).
    pub http_service_port: u16,
    /// `http-service-bind-address`; default: `bind-address`.
    pub http_service_bind_address: IpAddr,
    /// `transparent-huge-pages`: let the kernel back the server's memory with transparent huge
    /// pages where the system setting allows. Default false: the server turns them off for
    /// itself at start (`prctl(PR_SET_THP_DISABLE)`), because a huge page fault zeroes 2 MiB on
    /// the shard that takes it, a stall of milliseconds while a store grows
    /// (docs/benchmarks.md, "Fourth round").
    pub transparent_huge_pages: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDef {
    pub name: String,
    pub kind: RegionType,
    pub total_num_buckets: u16,
    pub gateway_sender_ids: Vec<String>,
    /// Every write the region applies, local or from another site, is logged to disk
    /// (`<directory>/regions/<name>/shard-<i>/`) before it is acknowledged, and restored at
    /// start (Geode's `PARTITION_PERSISTENT` and `REPLICATE_PERSISTENT` data policies).
    pub persistent: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SenderDef {
    pub id: String,
    pub remote_distributed_system_id: SiteId,
    pub parallel: bool,
    pub batch_size: u32,
    pub batch_time_interval_ms: u32,
    pub maximum_queue_memory_bytes: u64,
    pub enable_persistence: bool,
    pub disk_synchronous: bool,
    pub sync: SyncPolicy,
    pub enable_batch_conflation: bool,
    pub dispatcher_threads: u16,
    pub order_policy: OrderPolicy,
    pub alert_threshold_ms: u32,
    pub socket_buffer_size: u32,
    /// 0: no timeout.
    pub socket_read_timeout_ms: u32,
    /// `batches-in-flight`: the window per dispatcher, as full batches: `batches-in-flight` ×
    /// `batch-size` events sent and not yet acknowledged, in up to 1024 batches.
    pub batches_in_flight: u16,
    pub manual_start: bool,
    /// Where this sender's queues keep their segments: `<directory>/queues/<id>` by default.
    pub disk_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverDef {
    pub start_port: u16,
    pub end_port: u16,
    pub bind_address: IpAddr,
    /// The name advertised to senders; default: the bind address, else the host name.
    pub hostname_for_senders: Option<String>,
    pub maximum_time_between_pings_ms: u32,
    pub socket_buffer_size: u32,
    pub manual_start: bool,
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawFile {
    pub(crate) server: Option<Spanned<RawServer>>,
    #[serde(default)]
    pub(crate) region: Vec<Spanned<RawRegion>>,
    #[serde(default)]
    pub(crate) gateway_sender: Vec<Spanned<RawSender>>,
    pub(crate) gateway_receiver: Option<Spanned<RawReceiver>>,
    #[serde(default)]
    pub(crate) disk_store: Vec<Spanned<RawDiskStore>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawDiskStore {
    pub(crate) name: String,
    pub(crate) directory: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawServer {
    pub(crate) name: Option<String>,
    pub(crate) distributed_system_id: Option<i64>,
    #[serde(default)]
    pub(crate) locators: Vec<String>,
    pub(crate) start_locator: Option<String>,
    pub(crate) bind_address: Option<String>,
    pub(crate) client_port: Option<i64>,
    pub(crate) shards: Option<i64>,
    pub(crate) directory: Option<PathBuf>,
    pub(crate) http_service_port: Option<i64>,
    pub(crate) http_service_bind_address: Option<String>,
    pub(crate) transparent_huge_pages: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRegion {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) kind: RegionType,
    pub(crate) total_num_buckets: Option<i64>,
    #[serde(default)]
    pub(crate) gateway_sender_ids: Vec<String>,
    #[serde(default)]
    pub(crate) persistent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSender {
    pub(crate) id: String,
    pub(crate) remote_distributed_system_id: i64,
    pub(crate) parallel: Option<bool>,
    pub(crate) batch_size: Option<i64>,
    pub(crate) batch_time_interval: Option<i64>,
    pub(crate) maximum_queue_memory: Option<i64>,
    pub(crate) enable_persistence: Option<bool>,
    pub(crate) disk_synchronous: Option<bool>,
    pub(crate) sync_policy: Option<String>,
    pub(crate) enable_batch_conflation: Option<bool>,
    pub(crate) dispatcher_threads: Option<i64>,
    pub(crate) order_policy: Option<OrderPolicy>,
    pub(crate) alert_threshold: Option<i64>,
    pub(crate) socket_buffer_size: Option<i64>,
    pub(crate) socket_read_timeout: Option<i64>,
    pub(crate) batches_in_flight: Option<i64>,
    pub(crate) manual_start: Option<bool>,
    pub(crate) disk_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawReceiver {
    pub(crate) start_port: Option<i64>,
    pub(crate) end_port: Option<i64>,
    pub(crate) bind_address: Option<String>,
    pub(crate) hostname_for_senders: Option<String>,
    pub(crate) maximum_time_between_pings: Option<i64>,
    pub(crate) socket_buffer_size: Option<i64>,
    pub(crate) manual_start: Option<bool>,
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: String::new(),
        reason: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates the text of a `site.toml`; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<SiteConfig, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        ConfigError {
            file: path.to_path_buf(),
            line,
            key: String::new(),
            reason: e.message().trim().to_string(),
        }
    })?;
    validate(path, text, raw)
}

/// Validates a file already parsed into its raw form; spans are byte ranges of `text`, which
/// `path` names in errors. Geode's `cache.xml` comes here too (`crate::geode`).
pub(crate) fn validate(path: &Path, text: &str, raw: RawFile) -> Result<SiteConfig, ConfigError> {
    Validator { path, text }.validate(raw)
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: span.map(|s| line_of(self.text, s.start)),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn int<T: TryFrom<i64>>(
        &self,
        span: Option<&std::ops::Range<usize>>,
        key: &str,
        v: Option<i64>,
        default: T,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<T, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        if !range.contains(&v) {
            return Err(self.err(
                span.cloned(),
                key,
                format!("{v} is out of range ({}..={})", range.start(), range.end()),
            ));
        }
        T::try_from(v).map_err(|_| self.err(span.cloned(), key, format!("{v} is out of range")))
    }

    /// A `socket-buffer-size`: 0 (the kernel's autotuning), or [`SOCKET_BUFFER_SIZE_MIN`]
    /// bytes and up.
    fn buffer_size(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        v: Option<i64>,
    ) -> Result<u32, ConfigError> {
        let n: u32 = self.int(
            Some(span),
            key,
            v,
            SOCKET_BUFFER_SIZE_DEFAULT,
            0..=i64::from(i32::MAX),
        )?;
        if n != 0 && n < SOCKET_BUFFER_SIZE_MIN {
            return Err(self.err(
                Some(span.clone()),
                key,
                format!("{n} bytes is below the minimum of {SOCKET_BUFFER_SIZE_MIN} (0 lets the kernel size the buffers)"),
            ));
        }
        Ok(n)
    }

    fn ip(
        &self,
        span: Option<&std::ops::Range<usize>>,
        key: &str,
        v: Option<&str>,
    ) -> Result<IpAddr, ConfigError> {
        match v {
            None | Some("") => Ok(IpAddr::from([0, 0, 0, 0])),
            Some(s) => s
                .parse()
                .map_err(|_| self.err(span.cloned(), key, format!("`{s}` is not an IP address"))),
        }
    }

    fn name(&self, span: &std::ops::Range<usize>, key: &str, s: &str) -> Result<(), ConfigError> {
        if s.is_empty()
            || s.len() > NAME_BYTES_MAX
            || s.contains('/')
            || s.chars().any(char::is_control)
        {
            return Err(self.err(
                Some(span.clone()),
                key,
                format!("`{s}` is not a valid name (1 to {NAME_BYTES_MAX} bytes, no '/', no control characters)"),
            ));
        }
        Ok(())
    }

    fn validate(&self, raw: RawFile) -> Result<SiteConfig, ConfigError> {
        let (server_span, rs) = match raw.server {
            Some(s) => (Some(s.span()), s.into_inner()),
            None => (None, RawServer::default()),
        };
        let client_port: u16 = self.int(
            server_span.as_ref(),
            "server.client-port",
            rs.client_port,
            CLIENT_PORT_DEFAULT,
            1..=65535,
        )?;
        let ds_id = match rs.distributed_system_id {
            None => None,
            Some(v) => Some(SiteId(self.int(
                server_span.as_ref(),
                "server.distributed-system-id",
                Some(v),
                0u8,
                1..=255,
            )?)),
        };
        let mut locators = Vec::new();
        for (i, l) in rs.locators.iter().enumerate() {
            locators.push(
                HostPort::parse(l).map_err(|r| {
                    self.err(server_span.clone(), format!("server.locators[{i}]"), r)
                })?,
            );
        }
        let start_locator = match &rs.start_locator {
            None => None,
            Some(l) => Some(
                HostPort::parse(l)
                    .map_err(|r| self.err(server_span.clone(), "server.start-locator", r))?,
            ),
        };
        let shards = match rs.shards {
            None => None,
            Some(v) => Some(self.int(
                server_span.as_ref(),
                "server.shards",
                Some(v),
                1u16,
                1..=i64::from(strait_engine::bucket::SHARDS_MAX),
            )?),
        };
        let directory = rs.directory.unwrap_or_else(|| PathBuf::from("."));
        let bind_address = self.ip(
            server_span.as_ref(),
            "server.bind-address",
            rs.bind_address.as_deref(),
        )?;
        let http_service_port: u16 = self.int(
            server_span.as_ref(),
            "server.http-service-port",
            rs.http_service_port,
            crate::admin::HTTP_SERVICE_PORT_DEFAULT,
            0..=65535,
        )?;
        let http_service_bind_address = match rs.http_service_bind_address.as_deref() {
            None | Some("") => bind_address,
            Some(a) => self.ip(
                server_span.as_ref(),
                "server.http-service-bind-address",
                Some(a),
            )?,
        };
        let server = ServerSettings {
            name: rs.name.unwrap_or_else(|| format!("server-{client_port}")),
            distributed_system_id: ds_id,
            locators,
            start_locator,
            bind_address,
            client_port,
            shards,
            directory: directory.clone(),
            http_service_port,
            http_service_bind_address,
            transparent_huge_pages: rs.transparent_huge_pages.unwrap_or(false),
        };

        let mut senders = Vec::new();
        let mut sender_ids = HashSet::new();
        // The first table that needs a distributed-system-id, to point at if there is none.
        let mut needs_site_id: Option<std::ops::Range<usize>> = None;
        for (i, s) in raw.gateway_sender.into_iter().enumerate() {
            let span = s.span();
            needs_site_id.get_or_insert(span.clone());
            let s = s.into_inner();
            let key = |k: &str| format!("gateway-sender[{i}].{k}");
            self.name(&span, &key("id"), &s.id)?;
            if !sender_ids.insert(s.id.clone()) {
                return Err(self.err(
                    Some(span),
                    key("id"),
                    format!("gateway sender id `{}` is used twice", s.id),
                ));
            }
            let remote: u8 = self.int(
                Some(&span),
                &key("remote-distributed-system-id"),
                Some(s.remote_distributed_system_id),
                0,
                0..=255,
            )?;
            if ds_id == Some(SiteId(remote)) {
                return Err(self.err(
                    Some(span),
                    key("remote-distributed-system-id"),
                    format!("{remote} is this site's own distributed-system-id: a sender cannot target its own site"),
                ));
            }
            let parallel = s.parallel.unwrap_or(false);
            let order_policy = s.order_policy.unwrap_or(OrderPolicy::Key);
            if parallel && order_policy == OrderPolicy::Thread {
                return Err(self.err(
                    Some(span),
                    key("order-policy"),
                    "a parallel sender cannot use the `thread` order policy",
                ));
            }
            let read_timeout: u32 = self.int(
                Some(&span),
                &key("socket-read-timeout"),
                s.socket_read_timeout,
                0,
                0..=i64::from(u32::MAX),
            )?;
            if read_timeout != 0 && read_timeout < SOCKET_READ_TIMEOUT_MS_MIN {
                return Err(self.err(
                    Some(span),
                    key("socket-read-timeout"),
                    format!("{read_timeout} ms is below the minimum of {SOCKET_READ_TIMEOUT_MS_MIN} ms (0 means no timeout)"),
                ));
            }
            let sync = match s.sync_policy.as_deref() {
                None | Some("every-batch") => SyncPolicy::EveryBatch,
                Some("never") => SyncPolicy::Never,
                Some(other) => match other
                    .strip_prefix("interval-")
                    .and_then(|r| r.strip_suffix("ms"))
                    .map(str::parse::<u32>)
                {
                    Some(Ok(ms)) if ms > 0 => SyncPolicy::IntervalMs(ms),
                    _ => {
                        return Err(self.err(
                            Some(span),
                            key("sync-policy"),
                            format!("`{other}` is not a sync policy: use `never`, `every-batch` or `interval-<N>ms` (N ≥ 1)"),
                        ));
                    }
                },
            };
            let memory_mb: u32 = self.int(
                Some(&span),
                &key("maximum-queue-memory"),
                s.maximum_queue_memory,
                MAXIMUM_QUEUE_MEMORY_MB_DEFAULT,
                1..=1_048_576,
            )?;
            senders.push(SenderDef {
                remote_distributed_system_id: SiteId(remote),
                parallel,
                batch_size: self.int(
                    Some(&span),
                    &key("batch-size"),
                    s.batch_size,
                    BATCH_SIZE_DEFAULT,
                    1..=1_000_000,
                )?,
                batch_time_interval_ms: self.int(
                    Some(&span),
                    &key("batch-time-interval"),
                    s.batch_time_interval,
                    BATCH_TIME_INTERVAL_MS_DEFAULT,
                    0..=3_600_000,
                )?,
                maximum_queue_memory_bytes: u64::from(memory_mb) << 20,
                enable_persistence: s.enable_persistence.unwrap_or(false),
                disk_synchronous: s.disk_synchronous.unwrap_or(true),
                sync,
                enable_batch_conflation: s.enable_batch_conflation.unwrap_or(false),
                dispatcher_threads: self.int(
                    Some(&span),
                    &key("dispatcher-threads"),
                    s.dispatcher_threads,
                    DISPATCHER_THREADS_DEFAULT,
                    1..=1024,
                )?,
                order_policy,
                alert_threshold_ms: self.int(
                    Some(&span),
                    &key("alert-threshold"),
                    s.alert_threshold,
                    0,
                    0..=i64::from(u32::MAX),
                )?,
                socket_buffer_size: self.buffer_size(
                    &span,
                    &key("socket-buffer-size"),
                    s.socket_buffer_size,
                )?,
                socket_read_timeout_ms: read_timeout,
                batches_in_flight: self.int(
                    Some(&span),
                    &key("batches-in-flight"),
                    s.batches_in_flight,
                    BATCHES_IN_FLIGHT_DEFAULT,
                    1..=strait_net::wire::sender::INFLIGHT_BATCHES_MAX as i64,
                )?,
                manual_start: s.manual_start.unwrap_or(false),
                disk_dir: s
                    .disk_dir
                    .unwrap_or_else(|| directory.join("queues").join(&s.id)),
                id: s.id,
            });
        }

        let mut regions = Vec::new();
        let mut region_names = HashSet::new();
        for (i, r) in raw.region.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("region[{i}].{k}");
            self.name(&span, &key("name"), &r.name)?;
            if !region_names.insert(r.name.clone()) {
                return Err(self.err(
                    Some(span),
                    key("name"),
                    format!("region `{}` is defined twice", r.name),
                ));
            }
            if r.kind == RegionType::Replicate && r.total_num_buckets.is_some() {
                return Err(self.err(
                    Some(span),
                    key("total-num-buckets"),
                    "applies to partitioned regions only",
                ));
            }
            let buckets = self.int(
                Some(&span),
                &key("total-num-buckets"),
                r.total_num_buckets,
                TOTAL_NUM_BUCKETS_DEFAULT,
                1..=i64::from(TOTAL_NUM_BUCKETS_MAX),
            )?;
            for (j, id) in r.gateway_sender_ids.iter().enumerate() {
                let Some(sender) = senders.iter().find(|s| &s.id == id) else {
                    return Err(self.err(
                        Some(span),
                        format!("region[{i}].gateway-sender-ids[{j}]"),
                        format!("no gateway sender has id `{id}`"),
                    ));
                };
                if sender.parallel && r.kind == RegionType::Replicate {
                    return Err(self.err(
                        Some(span),
                        format!("region[{i}].gateway-sender-ids[{j}]"),
                        format!("parallel gateway sender `{id}` cannot be used with replicated region `{}`", r.name),
                    ));
                }
            }
            regions.push(RegionDef {
                name: r.name,
                kind: r.kind,
                total_num_buckets: buckets,
                gateway_sender_ids: r.gateway_sender_ids,
                persistent: r.persistent,
            });
        }

        let receiver = match raw.gateway_receiver {
            None => None,
            Some(r) => {
                let span = r.span();
                needs_site_id.get_or_insert(span.clone());
                let r = r.into_inner();
                let start: u16 = self.int(
                    Some(&span),
                    "gateway-receiver.start-port",
                    r.start_port,
                    RECEIVER_START_PORT_DEFAULT,
                    1..=65535,
                )?;
                let end: u16 = self.int(
                    Some(&span),
                    "gateway-receiver.end-port",
                    r.end_port,
                    RECEIVER_END_PORT_DEFAULT,
                    1..=65535,
                )?;
                if end < start {
                    return Err(self.err(
                        Some(span),
                        "gateway-receiver.end-port",
                        format!("end-port {end} is below start-port {start}"),
                    ));
                }
                Some(ReceiverDef {
                    start_port: start,
                    end_port: end,
                    bind_address: self.ip(
                        Some(&span),
                        "gateway-receiver.bind-address",
                        r.bind_address.as_deref(),
                    )?,
                    hostname_for_senders: r.hostname_for_senders.filter(|h| !h.is_empty()),
                    maximum_time_between_pings_ms: self.int(
                        Some(&span),
                        "gateway-receiver.maximum-time-between-pings",
                        r.maximum_time_between_pings,
                        MAXIMUM_TIME_BETWEEN_PINGS_MS_DEFAULT,
                        1..=i64::from(u32::MAX),
                    )?,
                    socket_buffer_size: self.buffer_size(
                        &span,
                        "gateway-receiver.socket-buffer-size",
                        r.socket_buffer_size,
                    )?,
                    manual_start: r.manual_start.unwrap_or(false),
                })
            }
        };
        let mut disk_stores: Vec<DiskStoreDef> = Vec::new();
        for (i, d) in raw.disk_store.into_iter().enumerate() {
            let span = d.span();
            let d = d.into_inner();
            self.name(&span, &format!("disk-store[{i}].name"), &d.name)?;
            if disk_stores.iter().any(|o| o.name == d.name) {
                return Err(self.err(
                    Some(span),
                    format!("disk-store[{i}].name"),
                    format!("disk store `{}` is defined twice", d.name),
                ));
            }
            if d.directory.as_os_str().is_empty() {
                return Err(self.err(
                    Some(span),
                    format!("disk-store[{i}].directory"),
                    "is empty; give the directory the queues go in",
                ));
            }
            disk_stores.push(DiskStoreDef {
                name: d.name,
                directory: d.directory,
            });
        }
        if ds_id.is_none() && needs_site_id.is_some() {
            return Err(self.err(
                server_span.or(needs_site_id),
                "server.distributed-system-id",
                "is required (1..=255) when a gateway sender or receiver is configured",
            ));
        }
        Ok(SiteConfig {
            server,
            regions,
            senders,
            receiver,
            disk_stores,
        })
    }
}

// ---- the configuration as a file -----------------------------------------------------------

/// `cfg` as a `site.toml` that [`parse`] reads back to the same configuration, every option
/// written out, defaults included (`strait describe config`; also how Geode's files read
/// into Strait's form).
pub fn to_toml(cfg: &SiteConfig) -> String {
    use toml::{Table, Value};
    let text = |s: &str| Value::String(s.to_string());
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let list = |v: &[String]| Value::Array(v.iter().map(|s| text(s)).collect());
    let path = |p: &Path| text(&p.display().to_string());
    let s = &cfg.server;
    let mut server = Table::new();
    server.insert("name".into(), text(&s.name));
    if let Some(id) = s.distributed_system_id {
        server.insert("distributed-system-id".into(), int(u64::from(id.0)));
    }
    let locators: Vec<String> = s.locators.iter().map(HostPort::to_string).collect();
    server.insert("locators".into(), list(&locators));
    if let Some(at) = &s.start_locator {
        server.insert("start-locator".into(), text(&at.to_string()));
    }
    server.insert("bind-address".into(), text(&s.bind_address.to_string()));
    server.insert("client-port".into(), int(u64::from(s.client_port)));
    if let Some(n) = s.shards {
        server.insert("shards".into(), int(u64::from(n)));
    }
    server.insert("directory".into(), path(&s.directory));
    server.insert(
        "http-service-port".into(),
        int(u64::from(s.http_service_port)),
    );
    server.insert(
        "http-service-bind-address".into(),
        text(&s.http_service_bind_address.to_string()),
    );
    if s.transparent_huge_pages {
        server.insert("transparent-huge-pages".into(), Value::Boolean(true));
    }
    let senders: Vec<Value> = cfg
        .senders
        .iter()
        .map(|d| {
            let mut t = Table::new();
            t.insert("id".into(), text(&d.id));
            t.insert(
                "remote-distributed-system-id".into(),
                int(u64::from(d.remote_distributed_system_id.0)),
            );
            t.insert("parallel".into(), Value::Boolean(d.parallel));
            t.insert("batch-size".into(), int(u64::from(d.batch_size)));
            t.insert(
                "batch-time-interval".into(),
                int(u64::from(d.batch_time_interval_ms)),
            );
            t.insert(
                "maximum-queue-memory".into(),
                int(d.maximum_queue_memory_bytes >> 20),
            );
            t.insert(
                "enable-persistence".into(),
                Value::Boolean(d.enable_persistence),
            );
            t.insert(
                "disk-synchronous".into(),
                Value::Boolean(d.disk_synchronous),
            );
            let sync = match d.sync {
                SyncPolicy::Never => "never".to_string(),
                SyncPolicy::EveryBatch => "every-batch".to_string(),
                SyncPolicy::IntervalMs(ms) => format!("interval-{ms}ms"),
            };
            t.insert("sync-policy".into(), text(&sync));
            t.insert(
                "enable-batch-conflation".into(),
                Value::Boolean(d.enable_batch_conflation),
            );
            t.insert(
                "dispatcher-threads".into(),
                int(u64::from(d.dispatcher_threads)),
            );
            let order = match d.order_policy {
                OrderPolicy::Key => "key",
                OrderPolicy::Thread => "thread",
                OrderPolicy::Partition => "partition",
            };
            t.insert("order-policy".into(), text(order));
            t.insert(
                "alert-threshold".into(),
                int(u64::from(d.alert_threshold_ms)),
            );
            t.insert(
                "socket-buffer-size".into(),
                int(u64::from(d.socket_buffer_size)),
            );
            t.insert(
                "socket-read-timeout".into(),
                int(u64::from(d.socket_read_timeout_ms)),
            );
            t.insert(
                "batches-in-flight".into(),
                int(u64::from(d.batches_in_flight)),
            );
            t.insert("manual-start".into(), Value::Boolean(d.manual_start));
            t.insert("disk-dir".into(), path(&d.disk_dir));
            Value::Table(t)
        })
        .collect();
    let regions: Vec<Value> = cfg
        .regions
        .iter()
        .map(|r| {
            let mut t = Table::new();
            t.insert("name".into(), text(&r.name));
            let kind = match r.kind {
                RegionType::Partition => "partition",
                RegionType::Replicate => "replicate",
            };
            t.insert("type".into(), text(kind));
            if r.kind == RegionType::Partition {
                t.insert(
                    "total-num-buckets".into(),
                    int(u64::from(r.total_num_buckets)),
                );
            }
            t.insert("gateway-sender-ids".into(), list(&r.gateway_sender_ids));
            t.insert("persistent".into(), Value::Boolean(r.persistent));
            Value::Table(t)
        })
        .collect();
    let mut file = Table::new();
    file.insert("server".into(), Value::Table(server));
    if !cfg.disk_stores.is_empty() {
        let stores = cfg
            .disk_stores
            .iter()
            .map(|d| {
                let mut t = Table::new();
                t.insert("name".into(), text(&d.name));
                t.insert("directory".into(), path(&d.directory));
                Value::Table(t)
            })
            .collect();
        file.insert("disk-store".into(), Value::Array(stores));
    }
    if !senders.is_empty() {
        file.insert("gateway-sender".into(), Value::Array(senders));
    }
    if !regions.is_empty() {
        file.insert("region".into(), Value::Array(regions));
    }
    if let Some(r) = &cfg.receiver {
        let mut t = Table::new();
        t.insert("start-port".into(), int(u64::from(r.start_port)));
        t.insert("end-port".into(), int(u64::from(r.end_port)));
        t.insert("bind-address".into(), text(&r.bind_address.to_string()));
        if let Some(h) = &r.hostname_for_senders {
            t.insert("hostname-for-senders".into(), text(h));
        }
        t.insert(
            "maximum-time-between-pings".into(),
            int(u64::from(r.maximum_time_between_pings_ms)),
        );
        t.insert(
            "socket-buffer-size".into(),
            int(u64::from(r.socket_buffer_size)),
        );
        t.insert("manual-start".into(), Value::Boolean(r.manual_start));
        file.insert("gateway-receiver".into(), Value::Table(t));
    }
    toml::to_string(&file).unwrap_or_else(|e| format!("# cannot write the configuration: {e}\n"))
}
