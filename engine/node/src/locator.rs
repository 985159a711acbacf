//! The locator: the site's directory ([`strait_engine::locator::Directory`]) behind HTTP/1.1 +
//! JSON (`strait_net::locator`, `docs/locator.md`) on the locator port.
//!
//! It is control plane: one plain thread, the control thread, owns the directory and answers
//! requests one at a time, expires silent servers every [`LOCATOR_POLL_MS`], and never runs on
//! a glommio shard. It never touches a socket: tiny_http accepts and parses headers on its own
//! threads, and [`HTTP_WORKERS`] workers read each body, hand the request to the control
//! thread and write its answer, so a client that stalls mid-request holds one worker only. Time is an `Instant` read by this
//! shell and handed to the directory in milliseconds. A lock file keeps a second locator off
//! the same directory. [`LocatorClient`] is the other side, used by the servers' registration
//! agent.
//!
//! Discovery between sites: a locator with a `distributed-system-id` exchanges its map of sites
//! (`POST /v1/exchange`) at start and every [`LocatorConfig::exchange_interval_ms`] with every
//! locator of another site it knows. The calls run on a second plain thread, the exchanger, so
//! that a slow or unreachable remote locator never holds up the control thread; the control
//! thread hands it the map and the targets and merges the replies. A gateway sender finds a
//! remote site's receivers through its local locator with [`RemoteSiteLookup`].

use crate::config::HostPort;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strait_engine::locator::{
    Address, AgedOut, Directory, DirectoryError, ExchangeRounds, LocatorAnswer, LocatorReport,
    MEMBER_TIMEOUT_MS_DEFAULT, MEMBER_TIMEOUT_MS_MAX, MEMBER_TIMEOUT_MS_MIN, MemberName, Merged,
    NoReceiver, REMOTE_ENTRY_TIMEOUT_MS_DEFAULT, ReceiverEndpoint, Registered, ServerEntry,
    ServerInfo, ServerReport, SiteMap, SiteReport, first_receivers, round_map_aged,
};
use strait_net::locator::{
    self as proto, Endpoint, ErrorKind, ErrorReply, ExchangeRequest, HeartbeatReply,
    HeartbeatRequest, ReceiversReply, RegisterReply, RegisterRequest, Route, ServerView,
    ServersReply, SiteLocator, SiteServer, SiteView, SitesReply, StatusReply,
};
use strait_queue::ids::{BucketId, SiteId};

pub use crate::config::LOCATOR_PORT_DEFAULT;

/// How long the locator thread waits for a request before it checks for expiry and stop.
pub const LOCATOR_POLL_MS: u64 = 50;
/// Threads that take requests off the locator port, read their bodies and write the replies,
/// so that a slow or stalled client never holds the control thread.
pub const HTTP_WORKERS: usize = 4;
/// How long a stopping locator waits for its HTTP workers to finish.
pub const HTTP_WORKERS_STOP_MS: u64 = 1_000;
/// The lock file in a locator's directory.
pub const LOCK_FILE: &str = "locator.lock";
/// Largest reply [`LocatorClient`] reads: the largest exchange body a locator takes, so a map
/// one locator answers with is a map it could also have been sent.
pub const REPLY_BYTES_MAX: u64 = proto::EXCHANGE_BODY_BYTES_MAX as u64;
/// How often a locator exchanges its map with every remote locator it knows (Geode's
/// `WANLocator.PING_INTERVAL`).
pub const LOCATOR_EXCHANGE_INTERVAL_MS: u64 = 10_000;
/// How long one exchange call to a remote locator may take; an unreachable one is tried again
/// at the next interval.
pub const EXCHANGE_CALL_TIMEOUT_MS: u64 = 2_000;
/// How often [`RemoteSiteLookup`] repeats its warning while a remote site stays unknown.
pub const SITE_UNKNOWN_WARN_INTERVAL_MS: u64 = 10_000;
const _: () = assert!(LOCATOR_EXCHANGE_INTERVAL_MS * 3 <= REMOTE_ENTRY_TIMEOUT_MS_DEFAULT);
// The node is the one crate that sees both: a Hello's bucket limit is the engine's.
const _: () =
    assert!(strait_net::wire::receiver::BUCKETS_MAX == strait_engine::bucket::BUCKETS_MAX as u32);

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
    /// Locators of other sites to exchange with; one is enough, the rest is learned.
    pub remote_locators: Vec<HostPort>,
    /// The host name this locator advertises to servers, clients and other sites; default:
    /// the bind address, else the host name.
    pub hostname_for_clients: Option<String>,
    /// A server silent for longer than this is dropped.
    pub member_timeout_ms: u64,
    /// How often to exchange with remote locators (default [`LOCATOR_EXCHANGE_INTERVAL_MS`]).
    pub exchange_interval_ms: u64,
    /// A remote site's locator or server that its own site has not vouched for within this
    /// long is dropped (default [`REMOTE_ENTRY_TIMEOUT_MS_DEFAULT`]).
    pub remote_entry_timeout_ms: u64,
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
            exchange_interval_ms: LOCATOR_EXCHANGE_INTERVAL_MS,
            remote_entry_timeout_ms: REMOTE_ENTRY_TIMEOUT_MS_DEFAULT,
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
    if config.exchange_interval_ms == 0 || config.remote_entry_timeout_ms == 0 {
        return Err(LocatorError::Config {
            key: if config.exchange_interval_ms == 0 {
                "exchange-interval"
            } else {
                "remote-entry-timeout"
            },
            reason: "0 ms is out of range (at least 1 ms)".into(),
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
        )
        .with_locator_name(MemberName(config.name.clone()))
        .with_remote_entry_timeout_ms(config.remote_entry_timeout_ms),
    };
    if service.directory.site().is_none() && !service.directory.remote_locators().is_empty() {
        tracing::warn!(
            locator = %config.name,
            "locator {}: remote-locators is set but distributed-system-id is not: no exchange with other sites",
            config.name
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (jobs, job_rx) = mpsc::sync_channel::<ExchangeJob>(1);
    let (result_tx, results) = mpsc::channel::<ExchangeResult>();
    let exchanger_stop = stop.clone();
    let exchanger = std::thread::Builder::new()
        .name(format!("locator-exchange-{}", config.name))
        .spawn(move || run_exchanger(&job_rx, &result_tx, started, &exchanger_stop))
        .map_err(LocatorError::Thread)?;
    let mut exchange = Exchange {
        jobs,
        results,
        exchanger: Some(exchanger),
        rounds: ExchangeRounds::new(config.exchange_interval_ms),
        unreachable: BTreeSet::new(),
    };
    let server = Arc::new(server);
    let (call_tx, calls) = mpsc::sync_channel::<Call>(HTTP_WORKERS);
    let mut workers = Vec::with_capacity(HTTP_WORKERS);
    for i in 0..HTTP_WORKERS {
        let (server, call_tx, worker_stop, name) = (
            server.clone(),
            call_tx.clone(),
            stop.clone(),
            config.name.clone(),
        );
        let worker = std::thread::Builder::new()
            .name(format!("locator-http-{}-{i}", config.name))
            .spawn(move || run_http_worker(&server, &call_tx, &worker_stop, &name));
        match worker {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return Err(LocatorError::Thread(e));
            }
        }
    }
    drop((server, call_tx));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("locator-{}", config.name))
        .spawn(move || {
            // Held for as long as the locator runs.
            let _lock = lock;
            let now_ms = || started.elapsed().as_millis() as u64;
            while !thread_stop.load(Ordering::SeqCst) {
                match calls.recv_timeout(Duration::from_millis(LOCATOR_POLL_MS)) {
                    Ok(call) => {
                        let reply = service.handle(now_ms(), &call.method, &call.target, call.body);
                        // A worker that gave up on its client is its own problem.
                        let _ = call.reply.send(reply);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // The workers also end when the locator is told to stop: no news then.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if !thread_stop.swap(true, Ordering::SeqCst) {
                            tracing::error!(
                                locator = %service.name,
                                "locator {}: every HTTP worker has stopped; stopping",
                                service.name
                            );
                        }
                    }
                }
                for name in service.directory.poll_expired(now_ms()) {
                    tracing::warn!(
                        locator = %service.name,
                        server = %name,
                        "locator {}: dropped server {name}: silent for more than {} ms",
                        service.name,
                        service.directory.member_timeout_ms()
                    );
                }
                exchange.step(&mut service, now_ms());
            }
            // Calls still queued are dropped: their workers see the closed reply channel.
            drop(calls);
            exchange.finish(&service.name);
            join_http_workers(&service.name, workers);
        })
        .map_err(|e| {
            // The workers and the exchanger see the flag and end.
            stop.store(true, Ordering::SeqCst);
            LocatorError::Thread(e)
        })?;
    Ok(LocatorHandle { addr, stop, thread })
}

/// One request for the control thread: what a worker read off the socket, and where to send
/// the status and JSON back.
struct Call {
    method: String,
    target: String,
    body: Result<Vec<u8>, ErrorReply>,
    reply: mpsc::SyncSender<(u16, String)>,
}

/// An HTTP worker: takes a request, reads its body (bounded by [`proto::body_bytes_max`]),
/// hands it to the control thread, waits for the answer and writes it. A client that stalls
/// holds only its worker, never the control thread. Ends at stop, or when the control thread
/// has gone.
fn run_http_worker(
    server: &tiny_http::Server,
    calls: &mpsc::SyncSender<Call>,
    stop: &AtomicBool,
    name: &str,
) {
    let json = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).ok();
    let prometheus =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4"[..]).ok();
    while !stop.load(Ordering::SeqCst) {
        let mut request = match server.recv_timeout(Duration::from_millis(LOCATOR_POLL_MS)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(locator = %name, "locator {name}: accepting a request failed: {e}");
                continue;
            }
        };
        let body = read_body(&mut request);
        let (reply, answer) = mpsc::sync_channel(1);
        let call = Call {
            method: request.method().as_str().to_string(),
            target: request.url().to_string(),
            body,
            reply,
        };
        // When the control thread has stopped, the dropped request is answered 500 by tiny_http.
        if calls.send(call).is_err() {
            return;
        }
        let Ok((status, text)) = answer.recv() else {
            return;
        };
        let mut response =
            tiny_http::Response::from_string(text).with_status_code(tiny_http::StatusCode(status));
        let metrics = status == 200 && request.url().starts_with("/metrics");
        let header = if metrics { &prometheus } else { &json };
        if let Some(h) = header {
            response.add_header(h.clone());
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}

/// Waits up to [`HTTP_WORKERS_STOP_MS`] for the HTTP workers to see the stop. A worker still
/// held by a client that stalls mid-request is left to end on its own (it holds the port until
/// then) rather than hold up the stop.
fn join_http_workers(name: &str, workers: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_millis(HTTP_WORKERS_STOP_MS);
    while Instant::now() < deadline && !workers.iter().all(JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(LOCATOR_POLL_MS / 5));
    }
    for worker in workers {
        if !worker.is_finished() {
            tracing::warn!(
                locator = %name,
                "locator {name}: an HTTP worker is still held by a client that stalls mid-request; it ends when that client sends or goes away"
            );
        } else if worker.join().is_err() {
            tracing::error!(locator = %name, "locator {name}: an HTTP worker panicked");
        }
    }
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

/// A request body, at most [`proto::body_bytes_max`] bytes for its path.
fn read_body(request: &mut tiny_http::Request) -> Result<Vec<u8>, ErrorReply> {
    let max = proto::body_bytes_max(request.url());
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ErrorReply::new(ErrorKind::BadRequest, format!("reading the body: {e}")))?;
    if body.len() > max {
        return Err(ErrorReply::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than {max} bytes"),
        ));
    }
    Ok(body)
}

/// One exchange round for the exchanger thread: the map as it was at `made_ms`, and whom to
/// send it to.
struct ExchangeJob {
    targets: Vec<Address>,
    /// The request, its `sites` left empty: they are `map`, aged, at each send.
    request: ExchangeRequest,
    map: SiteMap,
    made_ms: u64,
}

/// What the exchanger reports back to the control thread.
enum ExchangeResult {
    Reply {
        target: Address,
        /// When the request left, in the locator's ms: the reply's ages count from then, so
        /// the round trip only ever makes entries older.
        sent_ms: u64,
        reply: SitesReply,
    },
    Failed {
        target: Address,
        error: ClientError,
    },
    /// The round is over; the next may start.
    Done,
}

/// The exchanger: sends each job's map to each target in turn and reports every outcome.
/// Ends when the control thread drops its end of the job channel, or at stop.
fn run_exchanger(
    jobs: &mpsc::Receiver<ExchangeJob>,
    results: &mpsc::Sender<ExchangeResult>,
    started: Instant,
    stop: &AtomicBool,
) {
    let timeout = Duration::from_millis(EXCHANGE_CALL_TIMEOUT_MS);
    for job in jobs {
        for target in job.targets {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let sent_ms = started.elapsed().as_millis() as u64;
            // The map has waited since it was made: its entries are that much older now.
            let mut request = job.request.clone();
            request.sites = site_views(&round_map_aged(
                &job.map,
                sent_ms.saturating_sub(job.made_ms),
            ));
            let client = LocatorClient::new(&host_port(&target), timeout);
            let result = match client.exchange(&request) {
                Ok(reply) => ExchangeResult::Reply {
                    target,
                    sent_ms,
                    reply,
                },
                Err(error) => ExchangeResult::Failed { target, error },
            };
            if results.send(result).is_err() {
                return;
            }
        }
        if results.send(ExchangeResult::Done).is_err() {
            return;
        }
    }
}

/// The control thread's side of the exchange: when the next round is due, whether the
/// exchanger is still busy with the last one, and which remote locators did not answer.
struct Exchange {
    jobs: mpsc::SyncSender<ExchangeJob>,
    results: mpsc::Receiver<ExchangeResult>,
    exchanger: Option<JoinHandle<()>>,
    rounds: ExchangeRounds,
    /// Warned about once each; cleared when they answer again.
    unreachable: BTreeSet<Address>,
}

impl Exchange {
    /// Merges what the exchanger reported, ages out remote entries, and starts a round when
    /// one is due and the last is over.
    fn step(&mut self, service: &mut Service, now_ms: u64) {
        while let Ok(result) = self.results.try_recv() {
            match result {
                ExchangeResult::Reply {
                    target,
                    sent_ms,
                    reply,
                } => self.merge_reply(service, &target, sent_ms, reply),
                ExchangeResult::Failed { target, error } => {
                    if self.unreachable.insert(target.clone()) {
                        tracing::warn!(
                            locator = %service.name,
                            remote = %target,
                            "locator {}: remote locator {target} did not take the exchange: {error}; retrying every {} ms",
                            service.name, self.rounds.interval_ms()
                        );
                    }
                }
                ExchangeResult::Done => self.rounds.handle_round_done(),
            }
        }
        for gone in service.directory.poll_aged_out(now_ms) {
            log_aged_out(service, &gone);
        }
        let (Some(site), Some(round)) = (
            service.directory.site(),
            self.rounds.poll_round(now_ms, &service.directory),
        ) else {
            return;
        };
        let job = ExchangeJob {
            targets: round.targets,
            request: ExchangeRequest {
                distributed_system_id: site.0,
                locator: SiteLocator {
                    name: service.name.clone(),
                    address: service.address.clone(),
                    age_ms: 0,
                },
                sites: Vec::new(),
            },
            map: round.map,
            made_ms: now_ms,
        };
        // The exchanger is idle (no round under way), so the one-slot channel has room; if the
        // exchanger has gone, nothing is exchanged any more and the locator serves on.
        if self.jobs.try_send(job).is_err() {
            self.rounds.handle_round_done();
        }
    }

    fn merge_reply(
        &mut self,
        service: &mut Service,
        target: &Address,
        sent_ms: u64,
        reply: SitesReply,
    ) {
        let local = service.address_text();
        let result = match reply.distributed_system_id {
            Some(from) => site_map(reply.sites).and_then(|map| {
                service
                    .directory
                    .handle_exchange(sent_ms, SiteId(from), &map)
                    .map_err(directory_error)
            }),
            None => Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "it has no distributed-system-id",
            )),
        };
        match result {
            Ok(merged) => {
                if self.unreachable.remove(target) {
                    tracing::info!(
                        locator = %service.name,
                        remote = %target,
                        "locator {}: remote locator {target} is reachable again",
                        service.name
                    );
                }
                if merged.changed > 0 {
                    tracing::info!(
                        locator = %service.name,
                        remote = %target,
                        "Locator discovery task exchanged locator information {local} with {target}: {}",
                        describe(&merged, &service.directory)
                    );
                }
            }
            Err(e) => {
                if self.unreachable.insert(target.clone()) {
                    tracing::warn!(
                        locator = %service.name,
                        remote = %target,
                        "locator {}: remote locator {target} answered the exchange with a map this locator refuses: {}; retrying every {} ms",
                        service.name, e.message, self.rounds.interval_ms()
                    );
                }
            }
        }
    }

    /// Stops the exchanger: it finishes the call under way (bounded by
    /// [`EXCHANGE_CALL_TIMEOUT_MS`]) and sees the stop flag or the closed channel.
    fn finish(mut self, name: &str) {
        let exchanger = self.exchanger.take();
        drop(self);
        if let Some(t) = exchanger
            && t.join().is_err()
        {
            tracing::error!(locator = %name, "locator {name}: the exchange thread panicked");
        }
    }
}

fn describe(merged: &Merged, directory: &Directory) -> String {
    let sites: Vec<String> = directory
        .remote_sites()
        .iter()
        .map(|(id, r)| {
            let locators: Vec<String> =
                r.locators.values().map(|l| l.address.to_string()).collect();
            format!(
                "site {id}: locators [{}], {} server(s) with receivers",
                locators.join(", "),
                r.servers.len()
            )
        })
        .collect();
    let new: Vec<String> = merged.new_sites.iter().map(|s| s.to_string()).collect();
    format!(
        "{} entries added or moved, {} evicted over a site's cap, new sites [{}]; now knows {}",
        merged.changed,
        merged.evicted,
        new.join(", "),
        sites.join("; ")
    )
}

fn log_aged_out(service: &Service, gone: &AgedOut) {
    let locators: Vec<String> = gone
        .locators
        .iter()
        .map(|(n, a)| format!("{n} at {a}"))
        .collect();
    let servers: Vec<String> = gone.servers.iter().map(|n| n.to_string()).collect();
    tracing::warn!(
        locator = %service.name,
        site = gone.site.0,
        "locator {}: site {}: dropped locators [{}] and servers [{}]: not vouched for by their site within {} ms{}",
        service.name,
        gone.site,
        locators.join(", "),
        servers.join(", "),
        service.directory.remote_entry_timeout_ms(),
        if gone.site_gone {
            "; the site is unknown now"
        } else {
            ""
        }
    );
}

fn host_port(a: &Address) -> HostPort {
    HostPort {
        host: a.host.clone(),
        port: a.port,
    }
}

fn address(e: &Endpoint) -> Address {
    Address {
        host: e.host.clone(),
        port: e.port,
    }
}

fn receiver_view(r: &ReceiverEndpoint) -> proto::ReceiverEndpoint {
    proto::ReceiverEndpoint {
        host: r.address.host.clone(),
        port: r.address.port,
        buckets: r.buckets.iter().map(|b| b.0).collect(),
    }
}

fn receiver(r: proto::ReceiverEndpoint) -> ReceiverEndpoint {
    ReceiverEndpoint {
        address: Address {
            host: r.host,
            port: r.port,
        },
        buckets: r.buckets.into_iter().map(BucketId).collect(),
    }
}

/// The directory's map in the protocol's terms, ordered by site id.
fn site_views(map: &SiteMap) -> Vec<SiteView> {
    map.iter()
        .map(|(id, r)| SiteView {
            distributed_system_id: id.0,
            locators: r
                .locators
                .iter()
                .map(|l| SiteLocator {
                    name: l.name.0.clone(),
                    address: endpoint(&l.address),
                    age_ms: l.age_ms,
                })
                .collect(),
            servers: r
                .servers
                .iter()
                .map(|s| SiteServer {
                    name: s.name.0.clone(),
                    receivers: s.receivers.iter().map(receiver_view).collect(),
                    age_ms: s.age_ms,
                })
                .collect(),
        })
        .collect()
}

/// A map received in the protocol's terms; a site listed twice is refused.
fn site_map(views: Vec<SiteView>) -> Result<SiteMap, ErrorReply> {
    let mut map = SiteMap::new();
    for v in views {
        let report = SiteReport {
            locators: v
                .locators
                .into_iter()
                .map(|l| LocatorReport {
                    name: MemberName(l.name),
                    address: address(&l.address),
                    age_ms: l.age_ms,
                })
                .collect(),
            servers: v
                .servers
                .into_iter()
                .map(|s| ServerReport {
                    name: MemberName(s.name),
                    receivers: s.receivers.into_iter().map(receiver).collect(),
                    age_ms: s.age_ms,
                })
                .collect(),
        };
        if map
            .insert(SiteId(v.distributed_system_id), report)
            .is_some()
        {
            return Err(ErrorReply::new(
                ErrorKind::BadRequest,
                format!("site {} appears twice in the map", v.distributed_system_id),
            ));
        }
    }
    Ok(map)
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
        receivers: e.info.receivers.iter().map(receiver_view).collect(),
        load: e.info.load,
        last_heard_ms_ago: now_ms.saturating_sub(e.last_heard_ms),
        admin: e.info.admin.as_ref().map(endpoint),
    }
}

fn directory_error(e: DirectoryError) -> ErrorReply {
    let kind = match e {
        DirectoryError::UnknownServer(_) => ErrorKind::UnknownServer,
        DirectoryError::Full => ErrorKind::DirectoryFull,
        DirectoryError::InvalidName(_)
        | DirectoryError::InvalidAddress(_)
        | DirectoryError::TooManyReceivers { .. }
        | DirectoryError::InvalidBuckets { .. }
        | DirectoryError::InvalidSite(_)
        | DirectoryError::TooManyLocators { .. }
        | DirectoryError::TooManyServers { .. }
        | DirectoryError::NoSite => ErrorKind::BadRequest,
    };
    ErrorReply::new(kind, e.to_string())
}

impl Service {
    /// This locator as log lines name it: `name@host:port`.
    fn address_text(&self) -> String {
        format!("{}@{}", self.name, address(&self.address))
    }

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
                    client: address(&r.client),
                    receivers: r.receivers.into_iter().map(receiver).collect(),
                    load: r.load,
                    admin: r.admin.as_ref().map(address),
                };
                let (name, client) = (info.name.clone(), info.client.clone());
                match self
                    .directory
                    .handle_register(now_ms, info)
                    .map_err(directory_error)?
                {
                    Registered::New => {
                        tracing::info!(
                            locator = %self.name,
                            server = %name,
                            "locator {}: server {name} registered at {client}",
                            self.name
                        )
                    }
                    Registered::Replaced { previous } => tracing::info!(
                        locator = %self.name,
                        server = %name,
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
                tracing::info!(
                    locator = %self.name,
                    server = %name,
                    "locator {}: server {name} deregistered",
                    self.name
                );
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
            Route::Exchange => {
                let r: ExchangeRequest = proto::parse_body(&body)?;
                let map = site_map(r.sites)?;
                let merged = self
                    .directory
                    .handle_exchange_request(now_ms, SiteId(r.distributed_system_id), &map)
                    .map_err(directory_error)?;
                if merged.changed > 0 {
                    tracing::info!(
                        locator = %self.name,
                        site = r.distributed_system_id,
                        "Locator discovery task exchanged locator information {} with {}@{} of site {}: {}",
                        self.address_text(),
                        r.locator.name,
                        address(&r.locator.address),
                        r.distributed_system_id,
                        describe(&merged, &self.directory)
                    );
                }
                to_json(200, &self.sites(now_ms))
            }
            Route::Sites => to_json(200, &self.sites(now_ms)),
            Route::Metrics => (200, self.metrics(now_ms)),
            Route::SiteReceivers { site } => {
                let id = SiteId(site);
                let (Some(receivers), Some(locators)) = (
                    self.directory.receivers_of(id),
                    self.directory.locators_of(id),
                ) else {
                    return Err(ErrorReply::new(
                        ErrorKind::SiteUnknown,
                        format!(
                            "site {site} is not known to locator {}: none of its locators has been reached or relayed yet (check remote-locators and distributed-system-id on both sites)",
                            self.address_text()
                        ),
                    ));
                };
                to_json(
                    200,
                    &ReceiversReply {
                        distributed_system_id: site,
                        locators: locators.iter().map(endpoint).collect(),
                        receivers: receivers.iter().map(receiver_view).collect(),
                    },
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

impl Service {
    /// The Prometheus text of this locator's directory (docs/admin-api.md, "Metrics").
    fn metrics(&self, now_ms: u64) -> String {
        let site = self
            .directory
            .site()
            .map_or_else(|| "none".to_string(), |s| s.0.to_string());
        let base = format!(
            "locator=\"{}\",site=\"{site}\"",
            self.name.replace('"', "'")
        );
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{{{base}{labels}}} {v}\n"));
            }
        };
        family("strait_locator_up", "gauge", "1", vec![(String::new(), 1)]);
        family(
            "strait_locator_servers",
            "gauge",
            "Servers registered with this locator",
            vec![(String::new(), self.directory.local().servers.len() as u64)],
        );
        let sites = self.sites(now_ms).sites;
        let per_site = |f: &dyn Fn(&SiteView) -> u64| -> Vec<(String, u64)> {
            sites
                .iter()
                .map(|v| {
                    (
                        format!(",remote_site=\"{}\"", v.distributed_system_id),
                        f(v),
                    )
                })
                .collect()
        };
        family(
            "strait_locator_site_locators",
            "gauge",
            "Locators known per site (this one's own included)",
            per_site(&|v| v.locators.len() as u64),
        );
        family(
            "strait_locator_site_receiver_servers",
            "gauge",
            "Servers with a gateway receiver known per site",
            per_site(&|v| v.servers.len() as u64),
        );
        family(
            "strait_locator_site_receiver_endpoints",
            "gauge",
            "Gateway-receiver endpoints known per site",
            per_site(&|v| v.servers.iter().map(|s| s.receivers.len() as u64).sum()),
        );
        family(
            "strait_locator_site_age_milliseconds",
            "gauge",
            "Since the site last vouched for its freshest entry",
            per_site(&|v| {
                v.locators
                    .iter()
                    .map(|l| l.age_ms)
                    .chain(v.servers.iter().map(|s| s.age_ms))
                    .min()
                    .unwrap_or(0)
            }),
        );
        out
    }

    /// Everything this locator knows of every site, as it would send it.
    fn sites(&self, now_ms: u64) -> SitesReply {
        SitesReply {
            distributed_system_id: self.directory.site().map(|s| s.0),
            sites: site_views(&self.directory.export(now_ms)),
        }
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
        self.parse(self.call("POST", proto::SERVERS_PATH, Some(body))?)
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
        self.parse(self.call("PUT", &path, Some(body))?)
    }

    pub fn deregister(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("{}/{}", proto::SERVERS_PATH, proto::encode_segment(name));
        self.call("DELETE", &path, None).map(drop)
    }

    /// The site's directory.
    pub fn servers(&self) -> Result<ServersReply, ClientError> {
        self.parse(self.call("GET", proto::SERVERS_PATH, None)?)
    }

    /// The server a new client should use (its load is counted up by one).
    pub fn least_loaded(&self) -> Result<ServerView, ClientError> {
        let path = format!("{}/least-loaded", proto::SERVERS_PATH);
        self.parse(self.call("GET", &path, None)?)
    }

    pub fn status(&self) -> Result<StatusReply, ClientError> {
        self.parse(self.call("GET", "/v1/status", None)?)
    }

    /// Sends this locator's map to a locator of another site; the reply is that locator's map.
    pub fn exchange(&self, request: &ExchangeRequest) -> Result<SitesReply, ClientError> {
        let body = self.encode(request)?;
        self.parse(self.call("POST", proto::EXCHANGE_PATH, Some(body))?)
    }

    /// Everything the locator knows of every site.
    pub fn sites(&self) -> Result<SitesReply, ClientError> {
        self.parse(self.call("GET", proto::SITES_PATH, None)?)
    }

    /// Where senders reach `site`: its locators and its gateway receivers.
    /// [`ClientError::Refused`] with [`ErrorKind::SiteUnknown`] means the locator does not
    /// know the site (yet).
    pub fn receivers_of(&self, site: SiteId) -> Result<ReceiversReply, ClientError> {
        let path = format!("{}/{}/receivers", proto::SITES_PATH, site.0);
        self.parse(self.call("GET", &path, None)?)
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
    fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<String, ClientError> {
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

/// Why [`RemoteSiteLookup::lookup`] found no receiver; every case is retried by the sender.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No local locator knows the site: no locator of it was reached or relayed (Geode's
    /// warning, with the same meaning).
    #[error(
        "Remote locator host port information for remote site {site} is not available in local locator {locators}; retrying every {retry_ms} ms"
    )]
    SiteUnknown {
        site: SiteId,
        /// The local locators asked, `host:port`, comma-separated.
        locators: String,
        retry_ms: u64,
    },
    /// A local locator knows the site, but none of its servers runs a gateway receiver yet.
    #[error(
        "remote site {site} is known to local locator {locator} but has no gateway receiver yet; retrying every {retry_ms} ms"
    )]
    NoReceivers {
        site: SiteId,
        locator: String,
        retry_ms: u64,
    },
    /// No local locator answered (or none is configured).
    #[error(
        "no local locator answered for remote site {site} ({reasons}); retrying every {retry_ms} ms"
    )]
    Unreachable {
        site: SiteId,
        reasons: String,
        retry_ms: u64,
    },
}

/// A gateway sender's way to a remote site's receivers: asks its local locators in turn
/// (`GET /v1/sites/{id}/receivers`) on every call, and logs a warning while the site stays
/// unknown, at most once per [`SITE_UNKNOWN_WARN_INTERVAL_MS`]. Blocking: for a plain thread,
/// never a shard.
#[derive(Debug)]
pub struct RemoteSiteLookup {
    site: SiteId,
    locators: Vec<(HostPort, LocatorClient)>,
    retry_ms: u64,
    last_warned: Option<Instant>,
}

impl RemoteSiteLookup {
    /// A lookup of `remote_site` through `local_locators`, each call bounded by
    /// [`EXCHANGE_CALL_TIMEOUT_MS`]; `retry_ms` is how often the sender will call again (it is
    /// named in the error).
    pub fn new(
        local_locators: &[HostPort],
        remote_site: SiteId,
        retry_ms: u64,
    ) -> RemoteSiteLookup {
        let timeout = Duration::from_millis(EXCHANGE_CALL_TIMEOUT_MS);
        RemoteSiteLookup {
            site: remote_site,
            locators: local_locators
                .iter()
                .map(|l| (l.clone(), LocatorClient::new(l, timeout)))
                .collect(),
            retry_ms,
            last_warned: None,
        }
    }

    /// The remote site's receiver endpoints, from the first local locator that has any. On
    /// failure the error says why and that the sender retries; it is also logged as a warning
    /// when none was logged within [`SITE_UNKNOWN_WARN_INTERVAL_MS`] before `now`.
    pub fn lookup(&mut self, now: Instant) -> Result<Vec<ReceiverEndpoint>, LookupError> {
        let result = self.ask();
        match &result {
            Ok(_) => self.last_warned = None,
            Err(e) => {
                let due = self.last_warned.is_none_or(|at| {
                    now.saturating_duration_since(at)
                        >= Duration::from_millis(SITE_UNKNOWN_WARN_INTERVAL_MS)
                });
                if due {
                    tracing::warn!(
                        site = self.site.0,
                        "gateway sender to site {}: {e}",
                        self.site
                    );
                    self.last_warned = Some(now);
                }
            }
        }
        result
    }

    fn ask(&self) -> Result<Vec<ReceiverEndpoint>, LookupError> {
        let answers = self.locators.iter().map(|(at, client)| {
            let answer = match client.receivers_of(self.site) {
                Ok(reply) => {
                    LocatorAnswer::Receivers(reply.receivers.into_iter().map(receiver).collect())
                }
                Err(ClientError::Refused { reply, .. })
                    if reply.error == ErrorKind::SiteUnknown =>
                {
                    LocatorAnswer::SiteUnknown
                }
                Err(e) => LocatorAnswer::Failed(e.to_string()),
            };
            (at.to_string(), answer)
        });
        let (site, retry_ms) = (self.site, self.retry_ms);
        first_receivers(answers).map_err(|no| match no {
            NoReceiver::NoReceivers { locator } => LookupError::NoReceivers {
                site,
                locator,
                retry_ms,
            },
            NoReceiver::SiteUnknown { locators } => LookupError::SiteUnknown {
                site,
                locators: locators.join(", "),
                retry_ms,
            },
            NoReceiver::Unreachable { mut reasons } => {
                if reasons.is_empty() {
                    reasons.push("no local locator is configured".into());
                }
                LookupError::Unreachable {
                    site,
                    reasons: reasons.join("; "),
                    retry_ms,
                }
            }
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
            )
            .with_locator_name(MemberName("loc".into())),
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
                "POST",
                "/v1/servers",
                r#"{"name":"least-loaded","client":{"host":"h","port":1}}"#,
                400,
                "member name `least-loaded`",
            ),
            (
                "POST",
                "/v1/servers",
                r#"{"name":"a","client":{"host":"h","port":1},"receivers":[{"host":"r","port":2,"buckets":[3,3]}]}"#,
                400,
                "field `buckets`",
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
    fn an_exchange_is_merged_and_answered_with_the_whole_map() {
        let mut s = service();
        let with_receiver = r#"{"name":"a","client":{"host":"127.0.0.1","port":40404},"receivers":[{"host":"ny","port":5000,"buckets":[1]}]}"#;
        assert_eq!(call(&mut s, 0, "POST", "/v1/servers", with_receiver).0, 200);
        let request = r#"{"distributed_system_id":2,"locator":{"name":"ldn","address":{"host":"ldn","port":10334},"age_ms":0},
            "sites":[{"distributed_system_id":2,"locators":[{"name":"ldn","address":{"host":"ldn","port":10334},"age_ms":0}],
                      "servers":[{"name":"l1","receivers":[{"host":"ldn-r","port":5001,"buckets":[]}],"age_ms":5}]}]}"#;
        let (status, text) = call(&mut s, 100, "POST", "/v1/exchange", request);
        assert_eq!(status, 200, "{text}");
        let reply: SitesReply = serde_json::from_str(&text).unwrap();
        assert_eq!(reply.distributed_system_id, Some(1));
        assert_eq!(reply.sites.len(), 2);
        assert_eq!(reply.sites[0].locators[0].name, "loc");
        assert_eq!(reply.sites[0].servers[0].receivers[0].port, 5000);
        assert_eq!(reply.sites[1].servers[0].age_ms, 5);
        let (_, text) = call(&mut s, 130, "GET", "/v1/sites", "");
        let sites: SitesReply = serde_json::from_str(&text).unwrap();
        assert_eq!(sites.sites[1].servers[0].age_ms, 35);
        let (status, text) = call(&mut s, 130, "GET", "/v1/sites/2/receivers", "");
        assert_eq!(status, 200, "{text}");
        let r: ReceiversReply = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (r.receivers[0].host.as_str(), r.locators[0].host.as_str()),
            ("ldn-r", "ldn")
        );
        let (status, metrics) = call(&mut s, 130, "GET", "/metrics", "");
        assert_eq!(status, 200);
        for line in [
            "strait_locator_servers{locator=\"loc\",site=\"1\"} 1\n",
            "strait_locator_site_receiver_endpoints{locator=\"loc\",site=\"1\",remote_site=\"2\"} 1\n",
            "strait_locator_site_locators{locator=\"loc\",site=\"1\",remote_site=\"1\"} 1\n",
            "strait_locator_site_age_milliseconds{locator=\"loc\",site=\"1\",remote_site=\"2\"} 30\n",
        ] {
            assert!(metrics.contains(line), "{line} not in\n{metrics}");
        }
        let (status, text) = call(&mut s, 130, "GET", "/v1/sites/9/receivers", "");
        assert_eq!(status, 404);
        let e: ErrorReply = serde_json::from_str(&text).unwrap();
        assert_eq!(e.error, ErrorKind::SiteUnknown);
        assert!(
            e.message.contains("site 9") && e.message.contains("loc@127.0.0.1:10334"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_exchanges_are_refused() {
        let mut s = service();
        let twice = r#"{"distributed_system_id":2,"locator":{"name":"l","address":{"host":"h","port":1},"age_ms":0},
            "sites":[{"distributed_system_id":2,"locators":[],"servers":[]},{"distributed_system_id":2,"locators":[],"servers":[]}]}"#;
        let zero = r#"{"distributed_system_id":0,"locator":{"name":"l","address":{"host":"h","port":1},"age_ms":0},"sites":[]}"#;
        for (body, words) in [
            (twice, "appears twice"),
            (zero, "site id 0"),
            ("{}", "ExchangeRequest"),
        ] {
            let (status, text) = call(&mut s, 0, "POST", "/v1/exchange", body);
            assert_eq!(status, 400, "{text}");
            assert!(text.contains(words), "{text}");
        }
        assert!(s.directory.remote_sites().is_empty());
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
