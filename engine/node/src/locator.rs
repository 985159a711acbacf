//! The locator: the site's directory ([`strait_engine::locator::Directory`]) behind HTTP/1.1 +
//! JSON (`strait_net::locator`, `docs/locator.md`) on the locator port.
//!
//! It is control plane: one plain thread owns the directory and serves requests one at a time
//! (tiny_http accepts and parses headers on its own threads), expires silent servers every
//! [`LOCATOR_POLL_MS`], and never runs on a glommio shard. Time is an `Instant` read by this
//! shell and handed to the directory in milliseconds. A lock file keeps a second locator off
//! the same directory. [`LocatorClient`] is the other side, used by the servers' registration
//! agent.

use crate::config::HostPort;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strait_engine::locator::{
    Address, Directory, DirectoryError, MEMBER_TIMEOUT_MS_DEFAULT, MEMBER_TIMEOUT_MS_MAX,
    MEMBER_TIMEOUT_MS_MIN, MemberName, ReceiverEndpoint, Registered, ServerEntry, ServerInfo,
};
use strait_net::locator::{
    self as proto, BODY_BYTES_MAX, Endpoint, ErrorKind, ErrorReply, HeartbeatReply,
    HeartbeatRequest, RegisterReply, RegisterRequest, Route, ServerView, ServersReply, StatusReply,
};
use strait_queue::ids::{BucketId, SiteId};

pub use crate::config::LOCATOR_PORT_DEFAULT;

/// How long the locator thread waits for a request before it checks for expiry and stop.
pub const LOCATOR_POLL_MS: u64 = 50;
/// The lock file in a locator's directory.
pub const LOCK_FILE: &str = "locator.lock";
/// Largest reply [`LocatorClient`] reads: a directory of thousands of servers fits.
pub const REPLY_BYTES_MAX: u64 = 16 << 20;

/// A locator's settings; [`LocatorConfig::new`] gives Geode's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatorConfig {
    /// Member name.
    pub name: String,
    /// Address the locator port listens on (default `0.0.0.0`).
    pub bind_address: IpAddr,
    /// The locator port (default 10334; 0 picks a free one).
    pub port: u16,
    /// The site's `distributed-system-id`, 1–255.
    pub distributed_system_id: Option<SiteId>,
    /// Locators of other sites (stored and reported; the exchange is issue 4).
    pub remote_locators: Vec<HostPort>,
    /// The host name this locator advertises; default: the bind address, else the host name.
    pub hostname_for_clients: Option<String>,
    /// A server silent for longer than this is dropped.
    pub member_timeout_ms: u64,
    /// Working directory: the lock file.
    pub directory: PathBuf,
}

impl LocatorConfig {
    /// `name` in `directory`, every other setting at its default.
    pub fn new(name: impl Into<String>, directory: impl Into<PathBuf>) -> LocatorConfig {
        LocatorConfig {
            name: name.into(),
            bind_address: IpAddr::from([0, 0, 0, 0]),
            port: LOCATOR_PORT_DEFAULT,
            distributed_system_id: None,
            remote_locators: Vec::new(),
            hostname_for_clients: None,
            member_timeout_ms: MEMBER_TIMEOUT_MS_DEFAULT,
            directory: directory.into(),
        }
    }
}

/// Why a locator did not start.
#[derive(Debug, thiserror::Error)]
pub enum LocatorError {
    #[error("locator port {addr} is in use by another process")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}: the directory is in use by another locator", path.display())]
    DirectoryInUse { path: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cannot start the locator thread: {0}")]
    Thread(std::io::Error),
}

/// A running locator. Dropping it does not stop it: call [`LocatorHandle::stop`].
#[derive(Debug)]
pub struct LocatorHandle {
    /// The locator port's address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LocatorHandle {
    /// A flag that stops the locator when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits until the locator stops (after the stop flag is set).
    pub fn join(self) -> Result<(), String> {
        self.thread
            .join()
            .map_err(|_| "the locator thread panicked".to_string())
    }

    /// Stops serving, releases the port and the directory, and waits.
    pub fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }
}

/// The host a member advertises: `configured`, else its bind address, else the host name.
pub fn advertised_host(configured: Option<&str>, bind: IpAddr) -> String {
    match configured {
        Some(h) if !h.is_empty() => h.to_string(),
        _ if !bind.is_unspecified() => bind.to_string(),
        _ => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    }
}

/// Starts a locator; returns once it listens.
pub fn start_locator(config: LocatorConfig) -> Result<LocatorHandle, LocatorError> {
    if !(MEMBER_TIMEOUT_MS_MIN..=MEMBER_TIMEOUT_MS_MAX).contains(&config.member_timeout_ms) {
        return Err(LocatorError::Config {
            key: "member-timeout",
            reason: format!(
                "{} ms is out of range ({MEMBER_TIMEOUT_MS_MIN}..={MEMBER_TIMEOUT_MS_MAX})",
                config.member_timeout_ms
            ),
        });
    }
    if config.distributed_system_id == Some(SiteId(0)) {
        return Err(LocatorError::Config {
            key: "distributed-system-id",
            reason: "0 is out of range (1..=255)".into(),
        });
    }
    let lock = lock_directory(&config.directory)?;
    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            LocatorError::PortInUse { addr }
        } else {
            LocatorError::Listen { addr, source: e }
        }
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| LocatorError::Listen { addr, source })?;
    let server =
        tiny_http::Server::from_listener(listener, None).map_err(|e| LocatorError::Listen {
            addr,
            source: std::io::Error::other(e.to_string()),
        })?;
    let advertised = Address {
        host: advertised_host(config.hostname_for_clients.as_deref(), addr.ip()),
        port: addr.port(),
    };
    let remote = config
        .remote_locators
        .iter()
        .map(|h| Address {
            host: h.host.clone(),
            port: h.port,
        })
        .collect();
    let mut service = Service {
        name: config.name.clone(),
        address: endpoint(&advertised),
        directory: Directory::new(
            config.distributed_system_id,
            advertised,
            remote,
            config.member_timeout_ms,
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("locator-{}", config.name))
        .spawn(move || {
            // Held for as long as the locator runs.
            let _lock = lock;
            let started = Instant::now();
            let now_ms = || started.elapsed().as_millis() as u64;
            let json =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).ok();
            while !thread_stop.load(Ordering::SeqCst) {
                match server.recv_timeout(Duration::from_millis(LOCATOR_POLL_MS)) {
                    Ok(Some(mut request)) => {
                        let body = read_body(&mut request);
                        let method = request.method().as_str().to_string();
                        let (status, text) = service.handle(now_ms(), &method, request.url(), body);
                        let mut response = tiny_http::Response::from_string(text)
                            .with_status_code(tiny_http::StatusCode(status));
                        if let Some(h) = &json {
                            response.add_header(h.clone());
                        }
                        // A client that went away is its own problem.
                        let _ = request.respond(response);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("locator {}: accepting a request failed: {e}", service.name)
                    }
                }
                for name in service.directory.poll_expired(now_ms()) {
                    eprintln!(
                        "locator {}: dropped server {name}: silent for more than {} ms",
                        service.name,
                        service.directory.member_timeout_ms()
                    );
                }
            }
        })
        .map_err(LocatorError::Thread)?;
    Ok(LocatorHandle { addr, stop, thread })
}

fn lock_directory(dir: &std::path::Path) -> Result<File, LocatorError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| LocatorError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(lock_err)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LocatorError::DirectoryInUse { path }),
        Err(TryLockError::Error(e)) => Err(lock_err(e)),
    }
}

/// A request body, at most [`BODY_BYTES_MAX`] bytes.
fn read_body(request: &mut tiny_http::Request) -> Result<Vec<u8>, ErrorReply> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(BODY_BYTES_MAX as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ErrorReply::new(ErrorKind::BadRequest, format!("reading the body: {e}")))?;
    if body.len() > BODY_BYTES_MAX {
        return Err(ErrorReply::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than {BODY_BYTES_MAX} bytes"),
        ));
    }
    Ok(body)
}

/// The directory and who serves it: requests in, status and JSON out.
struct Service {
    name: String,
    /// Where this locator says it is.
    address: Endpoint,
    directory: Directory,
}

fn to_json<T: serde::Serialize>(status: u16, value: &T) -> (u16, String) {
    match serde_json::to_string(value) {
        Ok(text) => (status, text),
        // The replies are plain structs of strings and numbers: encoding them cannot fail.
        Err(_) => (
            500,
            r#"{"error":"internal","message":"encoding the reply failed"}"#.into(),
        ),
    }
}

fn endpoint(a: &Address) -> Endpoint {
    Endpoint {
        host: a.host.clone(),
        port: a.port,
    }
}

fn view(now_ms: u64, e: &ServerEntry) -> ServerView {
    ServerView {
        name: e.info.name.0.clone(),
        client: endpoint(&e.info.client),
        receivers: e
            .info
            .receivers
            .iter()
            .map(|r| proto::ReceiverEndpoint {
                host: r.address.host.clone(),
                port: r.address.port,
                buckets: r.buckets.iter().map(|b| b.0).collect(),
            })
            .collect(),
        load: e.info.load,
        last_heard_ms_ago: now_ms.saturating_sub(e.last_heard_ms),
    }
}

fn directory_error(e: DirectoryError) -> ErrorReply {
    let kind = match e {
        DirectoryError::UnknownServer(_) => ErrorKind::UnknownServer,
        DirectoryError::Full => ErrorKind::DirectoryFull,
        DirectoryError::InvalidName(_)
        | DirectoryError::InvalidAddress(_)
        | DirectoryError::TooManyReceivers { .. } => ErrorKind::BadRequest,
    };
    ErrorReply::new(kind, e.to_string())
}

impl Service {
    fn handle(
        &mut self,
        now_ms: u64,
        method: &str,
        target: &str,
        body: Result<Vec<u8>, ErrorReply>,
    ) -> (u16, String) {
        match self.answer(now_ms, method, target, body) {
            Ok(reply) => reply,
            Err(e) => to_json(e.error.status(), &e),
        }
    }

    fn answer(
        &mut self,
        now_ms: u64,
        method: &str,
        target: &str,
        body: Result<Vec<u8>, ErrorReply>,
    ) -> Result<(u16, String), ErrorReply> {
        let route = proto::route(method, target)?;
        let body = body?;
        let site = self.directory.site().map(|s| s.0);
        let heartbeat_interval_ms = self.directory.heartbeat_interval_ms();
        Ok(match route {
            Route::Register => {
                let r: RegisterRequest = proto::parse_body(&body)?;
                let info = ServerInfo {
                    name: MemberName(r.name),
                    client: Address {
                        host: r.client.host,
                        port: r.client.port,
                    },
                    receivers: r
                        .receivers
                        .into_iter()
                        .map(|e| ReceiverEndpoint {
                            address: Address {
                                host: e.host,
                                port: e.port,
                            },
                            buckets: e.buckets.into_iter().map(BucketId).collect(),
                        })
                        .collect(),
                    load: r.load,
                };
                let (name, client) = (info.name.clone(), info.client.clone());
                match self
                    .directory
                    .handle_register(now_ms, info)
                    .map_err(directory_error)?
                {
                    Registered::New => {
                        eprintln!(
                            "locator {}: server {name} registered at {client}",
                            self.name
                        )
                    }
                    Registered::Replaced { previous } => eprintln!(
                        "locator {}: server {name} moved from {previous} to {client}",
                        self.name
                    ),
                    Registered::Refreshed => {}
                }
                to_json(
                    200,
                    &RegisterReply {
                        distributed_system_id: site,
                        member_timeout_ms: self.directory.member_timeout_ms(),
                        heartbeat_interval_ms,
                    },
                )
            }
            Route::Heartbeat { name } => {
                let h: HeartbeatRequest = proto::parse_body(&body)?;
                self.directory
                    .handle_heartbeat(now_ms, &MemberName(name), h.load)
                    .map_err(directory_error)?;
                to_json(
                    200,
                    &HeartbeatReply {
                        heartbeat_interval_ms,
                    },
                )
            }
            Route::Deregister { name } => {
                let name = MemberName(name);
                self.directory
                    .handle_deregister(&name)
                    .map_err(directory_error)?;
                eprintln!("locator {}: server {name} deregistered", self.name);
                (204, String::new())
            }
            Route::Servers => {
                let local = self.directory.local();
                to_json(
                    200,
                    &ServersReply {
                        distributed_system_id: site,
                        locators: local.locators.iter().map(endpoint).collect(),
                        servers: local.servers.values().map(|e| view(now_ms, e)).collect(),
                    },
                )
            }
            Route::LeastLoaded => {
                let info = self.directory.least_loaded().ok_or_else(|| {
                    ErrorReply::new(
                        ErrorKind::NoServers,
                        "no server is registered with this locator",
                    )
                })?;
                let entry = self.directory.local().servers.get(&info.name);
                let last_heard_ms = entry.map_or(now_ms, |e| e.last_heard_ms);
                to_json(
                    200,
                    &view(
                        now_ms,
                        &ServerEntry {
                            info,
                            last_heard_ms,
                        },
                    ),
                )
            }
            Route::Status => {
                let local = self.directory.local();
                to_json(
                    200,
                    &StatusReply {
                        name: self.name.clone(),
                        address: self.address.clone(),
                        distributed_system_id: site,
                        remote_locators: self
                            .directory
                            .remote_locators()
                            .iter()
                            .map(endpoint)
                            .collect(),
                        member_timeout_ms: self.directory.member_timeout_ms(),
                        heartbeat_interval_ms,
                        servers: local.servers.len(),
                    },
                )
            }
        })
    }
}

/// Why a call to a locator failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The network: no connection, a timeout.
    #[error("locator {locator} is unreachable: {reason}")]
    Unreachable { locator: String, reason: String },
    /// The locator answered with a refusal.
    #[error("locator {locator} refused the request ({status}): {}", reply.message)]
    Refused {
        locator: String,
        status: u16,
        reply: ErrorReply,
    },
    /// The locator answered with something that is not the protocol.
    #[error("locator {locator} sent an invalid reply: {reason}")]
    BadReply { locator: String, reason: String },
}

/// A blocking client of one locator (for plain threads, never a shard).
#[derive(Debug)]
pub struct LocatorClient {
    locator: String,
    base: String,
    agent: ureq::Agent,
}

impl LocatorClient {
    /// A client of the locator at `locator`, each call bounded by `timeout`.
    pub fn new(locator: &HostPort, timeout: Duration) -> LocatorClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // The locator is reached directly, whatever proxy the environment names.
            .proxy(None)
            // A connection per call: a pooled one to a locator that stopped inside a running
            // process (an embedded one) would wait out the timeout instead of failing at once.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        LocatorClient {
            locator: locator.to_string(),
            base: format!("http://{locator}"),
            agent,
        }
    }

    pub fn register(&self, request: &RegisterRequest) -> Result<RegisterReply, ClientError> {
        let body = self.encode(request)?;
        self.parse(self.exchange("POST", proto::SERVERS_PATH, Some(body))?)
    }

    /// Reports `load`; [`ClientError::Refused`] with [`ErrorKind::UnknownServer`] means the
    /// locator does not know this server: register again.
    pub fn heartbeat(&self, name: &str, load: u32) -> Result<HeartbeatReply, ClientError> {
        let body = self.encode(&HeartbeatRequest { load })?;
        let path = format!(
            "{}/{}/heartbeat",
            proto::SERVERS_PATH,
            proto::encode_segment(name)
        );
        self.parse(self.exchange("PUT", &path, Some(body))?)
    }

    pub fn deregister(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("{}/{}", proto::SERVERS_PATH, proto::encode_segment(name));
        self.exchange("DELETE", &path, None).map(drop)
    }

    /// The site's directory.
    pub fn servers(&self) -> Result<ServersReply, ClientError> {
        self.parse(self.exchange("GET", proto::SERVERS_PATH, None)?)
    }

    /// The server a new client should use (its load is counted up by one).
    pub fn least_loaded(&self) -> Result<ServerView, ClientError> {
        let path = format!("{}/least-loaded", proto::SERVERS_PATH);
        self.parse(self.exchange("GET", &path, None)?)
    }

    pub fn status(&self) -> Result<StatusReply, ClientError> {
        self.parse(self.exchange("GET", "/v1/status", None)?)
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<String, ClientError> {
        serde_json::to_string(value).map_err(|e| ClientError::BadReply {
            locator: self.locator.clone(),
            reason: format!("encoding the request: {e}"),
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, text: String) -> Result<T, ClientError> {
        serde_json::from_str(&text).map_err(|e| ClientError::BadReply {
            locator: self.locator.clone(),
            reason: format!("{e}: {text}"),
        })
    }

    /// The body of a 2xx reply; any other status is a refusal.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Content-Type", "application/json")
                .send(b),
            ("DELETE", _) => self.agent.delete(&url).call(),
            _ => self.agent.get(&url).call(),
        };
        let mut response = sent.map_err(|e| ClientError::Unreachable {
            locator: self.locator.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(REPLY_BYTES_MAX)
            .read_to_string()
            .map_err(|e| ClientError::Unreachable {
                locator: self.locator.clone(),
                reason: format!("reading the reply: {e}"),
            })?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let reply = serde_json::from_str::<ErrorReply>(&text)
            .unwrap_or_else(|_| ErrorReply::new(ErrorKind::BadRequest, text));
        Err(ClientError::Refused {
            locator: self.locator.clone(),
            status,
            reply,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        Service {
            name: "loc".into(),
            address: Endpoint {
                host: "127.0.0.1".into(),
                port: 10334,
            },
            directory: Directory::new(
                Some(SiteId(1)),
                Address {
                    host: "127.0.0.1".into(),
                    port: 10334,
                },
                Vec::new(),
                1_000,
            ),
        }
    }

    fn call(s: &mut Service, now: u64, method: &str, path: &str, body: &str) -> (u16, String) {
        s.handle(now, method, path, Ok(body.as_bytes().to_vec()))
    }

    const REGISTER: &str = r#"{"name":"a","client":{"host":"127.0.0.1","port":40404}}"#;

    #[test]
    fn register_heartbeat_list_and_deregister() {
        let mut s = service();
        let (status, text) = call(&mut s, 0, "POST", "/v1/servers", REGISTER);
        assert_eq!(status, 200, "{text}");
        let reply: RegisterReply = serde_json::from_str(&text).unwrap();
        assert_eq!(
            reply,
            RegisterReply {
                distributed_system_id: Some(1),
                member_timeout_ms: 1_000,
                heartbeat_interval_ms: 333
            }
        );
        let (status, _) = call(
            &mut s,
            10,
            "PUT",
            "/v1/servers/a/heartbeat",
            r#"{"load":4}"#,
        );
        assert_eq!(status, 200);
        let (status, text) = call(&mut s, 30, "GET", "/v1/servers", "");
        assert_eq!(status, 200);
        let list: ServersReply = serde_json::from_str(&text).unwrap();
        assert_eq!(list.servers.len(), 1);
        assert_eq!(
            (list.servers[0].load, list.servers[0].last_heard_ms_ago),
            (4, 20)
        );
        assert_eq!(list.locators[0].port, 10334);
        assert_eq!(call(&mut s, 40, "DELETE", "/v1/servers/a", "").0, 204);
        let (status, text) = call(&mut s, 40, "DELETE", "/v1/servers/a", "");
        assert_eq!(status, 404);
        assert!(text.contains("unknown-server"), "{text}");
    }

    #[test]
    fn an_unknown_heartbeat_is_told_to_register() {
        let mut s = service();
        let (status, text) = call(&mut s, 0, "PUT", "/v1/servers/x/heartbeat", r#"{"load":1}"#);
        assert_eq!(status, 404);
        let e: ErrorReply = serde_json::from_str(&text).unwrap();
        assert_eq!(e.error, ErrorKind::UnknownServer);
        assert!(e.message.contains("register again"), "{}", e.message);
    }

    #[test]
    fn least_loaded_and_its_absence() {
        let mut s = service();
        let (status, text) = call(&mut s, 0, "GET", "/v1/servers/least-loaded", "");
        assert_eq!(status, 404);
        assert!(text.contains("no-servers"), "{text}");
        call(&mut s, 0, "POST", "/v1/servers", REGISTER);
        let (status, text) = call(&mut s, 0, "GET", "/v1/servers/least-loaded", "");
        assert_eq!(status, 200);
        let v: ServerView = serde_json::from_str(&text).unwrap();
        assert_eq!((v.name.as_str(), v.load), ("a", 1));
    }

    #[test]
    fn bad_bodies_and_bad_requests_are_refused_with_a_reason() {
        let mut s = service();
        for (method, path, body, status, words) in [
            ("POST", "/v1/servers", "{", 400, "RegisterRequest"),
            (
                "POST",
                "/v1/servers",
                r#"{"name":"a"}"#,
                400,
                "missing field `client`",
            ),
            (
                "POST",
                "/v1/servers",
                r#"{"name":"","client":{"host":"h","port":1}}"#,
                400,
                "member name",
            ),
            (
                "POST",
                "/v1/servers",
                r#"{"name":"a","client":{"host":"h","port":0}}"#,
                400,
                "address",
            ),
            (
                "PUT",
                "/v1/servers/a/heartbeat",
                "[]",
                400,
                "HeartbeatRequest",
            ),
            ("PATCH", "/v1/servers", "", 405, "GET or POST"),
            ("GET", "/nowhere", "", 404, "no endpoint"),
        ] {
            let (got, text) = call(&mut s, 0, method, path, body);
            assert_eq!(got, status, "{method} {path} {body}: {text}");
            let e: ErrorReply = serde_json::from_str(&text).unwrap();
            assert!(e.message.contains(words), "{text}");
        }
        let big = s.handle(
            0,
            "POST",
            "/v1/servers",
            Err(ErrorReply::new(ErrorKind::PayloadTooLarge, "big")),
        );
        assert_eq!(big.0, 413);
    }

    #[test]
    fn status_reports_the_settings() {
        let mut s = service();
        call(&mut s, 0, "POST", "/v1/servers", REGISTER);
        let (status, text) = call(&mut s, 0, "GET", "/v1/status", "");
        assert_eq!(status, 200);
        let st: StatusReply = serde_json::from_str(&text).unwrap();
        assert_eq!(st.name, "loc");
        assert_eq!(st.distributed_system_id, Some(1));
        assert_eq!(st.address.port, 10334);
        assert_eq!(st.servers, 1);
    }

    #[test]
    fn advertised_host_prefers_the_configured_name_then_the_bind_address() {
        let any = IpAddr::from([0, 0, 0, 0]);
        assert_eq!(advertised_host(Some("ny.example"), any), "ny.example");
        assert_eq!(
            advertised_host(None, IpAddr::from([127, 0, 0, 1])),
            "127.0.0.1"
        );
        assert!(!advertised_host(Some(""), any).is_empty());
    }
}
