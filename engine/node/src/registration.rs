//! A server's link to its site's locators: the embedded locator (`start-locator`), and the
//! registration agent, a plain thread (never a shard) that registers the server with every
//! locator, heartbeats its client-connection count, registers again when a locator has
//! forgotten it (restarted, or dropped it after a stall), keeps retrying an unreachable locator,
//! and deregisters when the server stops. A locator that is down never delays the server's
//! start or its shards: the agent only reads the shared load counter.

use crate::config::{HostPort, ServerSettings};
use crate::locator::{
    ClientError, LocatorClient, LocatorConfig, LocatorError, LocatorHandle, advertised_host,
    start_locator,
};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strait_engine::registration::{
    AgentCall, CallOutcome, Notice, REGISTER_RETRY_MS, RegistrationLink,
};
use strait_net::locator::{Endpoint, ErrorKind, RegisterRequest};

/// How long one call to a locator may take.
pub const LOCATOR_CALL_TIMEOUT_MS: u64 = 2_000;
/// The longest the agent sleeps before it checks whether the server is stopping.
pub const AGENT_POLL_MS: u64 = 50;

/// Why the server's locator side did not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("start-locator {at}: {source}")]
    Locator { at: HostPort, source: LocatorError },
    #[error("start-locator {at}: cannot resolve the host: {reason}")]
    Resolve { at: HostPort, reason: String },
    #[error("cannot start the registration thread: {0}")]
    Thread(std::io::Error),
}

/// The embedded locator and the registration agent of a running server.
#[derive(Debug)]
pub struct Registration {
    locator: Option<LocatorHandle>,
    /// One thread per locator, so that one that does not answer (each call may wait
    /// `LOCATOR_CALL_TIMEOUT_MS`) never delays the heartbeats to the others.
    agents: Vec<JoinHandle<()>>,
}

impl Registration {
    /// The embedded locator's address, if the server runs one.
    pub fn locator_addr(&self) -> Option<SocketAddr> {
        self.locator.as_ref().map(|l| l.addr)
    }

    /// Waits for the agent to deregister (once the server's stop flag is set), then stops the
    /// embedded locator.
    pub fn finish(self) -> Result<(), String> {
        let mut agent = Ok(());
        for a in self.agents {
            if a.join().is_err() {
                agent = Err("a registration thread panicked".to_string());
            }
        }
        let locator = self.locator.map_or(Ok(()), LocatorHandle::stop);
        agent.and(locator)
    }
}

/// Starts the embedded locator (if `start-locator` is set) and the agent (if there is any
/// locator to register with). `receivers` are the gateway receiver's endpoints (one per
/// shard). `load` is the server's open client connections; the agent
/// stops when `stop` is set.
pub fn start(
    server: &ServerSettings,
    client_addr: SocketAddr,
    (receivers, advertised): (Receivers, Arc<AtomicBool>),
    admin: Option<SocketAddr>,
    load: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) -> Result<Registration, RegistrationError> {
    let mut locators = server.locators.clone();
    let locator = match &server.start_locator {
        None => None,
        Some(at) => {
            let handle = start_embedded(server, at)?;
            let own = HostPort {
                host: handle.addr.ip().to_string(),
                port: handle.addr.port(),
            };
            if !locators.contains(&own) && !locators.contains(at) {
                locators.push(own);
            }
            Some(handle)
        }
    };
    if locators.is_empty() {
        return Ok(Registration {
            locator,
            agents: Vec::new(),
        });
    }
    let request = RegisterRequest {
        name: server.name.clone(),
        client: Endpoint {
            host: advertised_host(None, client_addr.ip()),
            port: client_addr.port(),
        },
        receivers: Vec::new(),
        load: 0,
        admin: admin.map(|a| Endpoint {
            host: advertised_host(None, a.ip()),
            port: a.port(),
        }),
    };
    let mut agents = Vec::new();
    for at in locators {
        let (request, load, agent_stop) = (request.clone(), load.clone(), stop.clone());
        let receivers = (receivers.clone(), advertised.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("registration-{at}"))
            .spawn(move || run_agent(request, receivers, at, &load, &agent_stop));
        match spawned {
            Ok(agent) => agents.push(agent),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                for a in agents {
                    let _ = a.join();
                }
                if let Some(l) = locator {
                    let _ = l.stop();
                }
                return Err(RegistrationError::Thread(e));
            }
        }
    }
    Ok(Registration { locator, agents })
}

fn start_embedded(
    server: &ServerSettings,
    at: &HostPort,
) -> Result<LocatorHandle, RegistrationError> {
    let resolved: Vec<SocketAddr> = (at.host.as_str(), at.port)
        .to_socket_addrs()
        .map_err(|e| RegistrationError::Resolve {
            at: at.clone(),
            reason: e.to_string(),
        })?
        .collect();
    // IPv4 first: `localhost` resolves to ::1 and 127.0.0.1 in either order.
    let Some(bind) = resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
    else {
        return Err(RegistrationError::Resolve {
            at: at.clone(),
            reason: "no address".into(),
        });
    };
    let mut config = LocatorConfig::new(format!("{}-locator", server.name), &server.directory);
    config.bind_address = bind.ip();
    config.port = at.port;
    config.distributed_system_id = server.distributed_system_id;
    start_locator(config).map_err(|source| RegistrationError::Locator {
        at: at.clone(),
        source,
    })
}

/// One locator as the agent sees it: the client that makes the calls, and the pure
/// [`RegistrationLink`] that says which call is due and what an answer means.
struct Link {
    client: LocatorClient,
    at: HostPort,
    link: RegistrationLink,
    /// The agent's clock: milliseconds since this instant are handed to `link`.
    started: Instant,
}

/// The gateway receiver's endpoints (one per shard; none without a receiver), replaced when a
/// receiver is created or destroyed at run time.
pub type Receivers = Arc<std::sync::Mutex<Vec<strait_net::locator::ReceiverEndpoint>>>;

/// Registers with the locator `at`, heartbeats until `stop`, then deregisters.
/// The receiver's endpoints are in the registration while `advertised` holds; a change
/// registers again at once (the locator replaces the entry).
fn run_agent(
    mut request: RegisterRequest,
    (receivers, advertised): (Receivers, Arc<AtomicBool>),
    at: HostPort,
    load: &AtomicU32,
    stop: &AtomicBool,
) {
    let timeout = Duration::from_millis(LOCATOR_CALL_TIMEOUT_MS);
    let mut link = Link {
        client: LocatorClient::new(&at, timeout),
        at,
        link: RegistrationLink::new(0),
        started: Instant::now(),
    };
    while !stop.load(Ordering::SeqCst) {
        let wanted = if advertised.load(Ordering::SeqCst) {
            receivers.lock().map(|r| r.clone()).unwrap_or_default()
        } else {
            Vec::new()
        };
        if wanted != request.receivers {
            request.receivers = wanted;
            link.link.register_again(link.now_ms());
        }
        request.load = load.load(Ordering::Relaxed);
        link.step(&request);
        // Wakes at least every AGENT_POLL_MS to see the stop flag.
        let wait = link
            .link
            .next_ms()
            .saturating_sub(link.now_ms())
            .min(AGENT_POLL_MS);
        std::thread::sleep(Duration::from_millis(wait));
    }
    if link.link.registered()
        && let Err(e) = link.client.deregister(&request.name)
    {
        tracing::warn!(server = %request.name, "server {}: deregistering: {e}", request.name);
    }
}

impl Link {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Makes the call that is due, if any, and logs what its outcome changed.
    fn step(&mut self, request: &RegisterRequest) {
        let Some(call) = self.link.poll_call(self.now_ms()) else {
            return;
        };
        let name = &request.name;
        let result = match call {
            AgentCall::Register => self
                .client
                .register(request)
                .map(|r| r.heartbeat_interval_ms),
            AgentCall::Heartbeat => self
                .client
                .heartbeat(name, request.load)
                .map(|r| r.heartbeat_interval_ms),
        };
        let outcome = match &result {
            Ok(interval) => CallOutcome::Accepted {
                heartbeat_interval_ms: *interval,
            },
            Err(ClientError::Refused { reply, .. }) if reply.error == ErrorKind::UnknownServer => {
                CallOutcome::UnknownServer
            }
            Err(ClientError::Refused { .. } | ClientError::BadReply { .. }) => CallOutcome::Refused,
            Err(_) => CallOutcome::Failed,
        };
        let at = &self.at;
        match self.link.handle_outcome(self.now_ms(), call, outcome) {
            Some(Notice::Registered { interval_ms }) => tracing::info!(
                server = %name,
                locator = %at,
                "server {name}: registered with locator {at} (heartbeat every {interval_ms} ms)"
            ),
            Some(Notice::Forgotten) => tracing::warn!(
                server = %name,
                locator = %at,
                "server {name}: locator {at} does not know this server (restarted, or dropped it): registering again"
            ),
            Some(Notice::ReachableAgain) => tracing::info!(
                server = %name,
                locator = %at,
                "server {name}: locator {at} is reachable again"
            ),
            Some(Notice::Unreachable) => {
                if let Err(e) = &result {
                    tracing::warn!(server = %name, locator = %at, "server {name}: {e}; retrying every {REGISTER_RETRY_MS} ms");
                }
            }
            None => {}
        }
    }
}
