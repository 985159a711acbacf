//! A locator and servers in one process, on loopback: registration, heartbeats carrying the
//! connection count, least-loaded, deregistration at stop, registering again after a locator
//! restart, a server that starts before its locator, the embedded locator, refusals (bad
//! JSON, a port in use, a directory in use), and clients that stall mid-request.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use strait_net::locator::{Endpoint, ErrorKind, ErrorReply, RegisterRequest, ServerView};
use strait_node::config::HostPort;
use strait_node::locator::{
    ClientError, LocatorClient, LocatorConfig, LocatorError, LocatorHandle, start_locator,
};
use strait_node::server;
use strait_queue::ids::SiteId;

const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const MEMBER_TIMEOUT_MS: u64 = 1_500;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn locator_config(dir: &Path, port: u16) -> LocatorConfig {
    let mut c = LocatorConfig::new("loc-1", dir);
    c.bind_address = [127, 0, 0, 1].into();
    c.port = port;
    c.distributed_system_id = Some(SiteId(1));
    c.member_timeout_ms = MEMBER_TIMEOUT_MS;
    c.remote_locators = vec![HostPort::parse("london[10334]").unwrap()];
    c
}

fn locator(dir: &Path) -> LocatorHandle {
    start_locator(locator_config(dir, 0)).unwrap()
}

fn client(addr: SocketAddr) -> LocatorClient {
    let at = HostPort {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    LocatorClient::new(&at, Duration::from_secs(5))
}

fn server(dir: &Path, extra: &str) -> server::ServerHandle {
    let text = format!(
        "[server]\nname = \"s1\"\ndistributed-system-id = 1\nbind-address = \"127.0.0.1\"\nclient-port = {}\nhttp-service-port = 0\nshards = 1\ndirectory = \"{}\"\n{extra}",
        free_port(),
        dir.display()
    );
    let cfg = strait_node::config::parse(Path::new("test.toml"), &text).unwrap();
    server::start(cfg).unwrap()
}

fn locators(addr: SocketAddr) -> String {
    format!("locators = [\"127.0.0.1[{}]\"]\n", addr.port())
}

/// Polls the locator's directory until `want` holds for its servers.
fn wait_for(
    c: &LocatorClient,
    what: &str,
    want: impl Fn(&[ServerView]) -> bool,
) -> Vec<ServerView> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(reply) = c.servers()
            && want(&reply.servers)
        {
            return reply.servers;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

#[test]
fn a_server_registers_reports_its_connections_and_deregisters_at_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = locator(&tmp.path().join("locator"));
    let c = client(loc.addr);
    let srv = server(&tmp.path().join("server"), &locators(loc.addr));
    let servers = wait_for(&c, "the server to register", |s| s.len() == 1);
    assert_eq!(servers[0].name, "s1");
    assert_eq!(servers[0].client.host, "127.0.0.1");
    assert_eq!(servers[0].client.port, srv.client_addr.port());

    let best = c.least_loaded().unwrap();
    assert_eq!((best.name.as_str(), best.load), ("s1", 1));

    // Two open client connections: the next heartbeats report them.
    let _a = TcpStream::connect(srv.client_addr).unwrap();
    let _b = TcpStream::connect(srv.client_addr).unwrap();
    wait_for(&c, "a heartbeat with load 2", |s| {
        s.len() == 1 && s[0].load == 2
    });

    let status = c.status().unwrap();
    assert_eq!(status.name, "loc-1");
    assert_eq!(status.distributed_system_id, Some(1));
    assert_eq!(status.address.port, loc.addr.port());
    assert_eq!(status.remote_locators[0].host, "london");
    assert_eq!(status.member_timeout_ms, MEMBER_TIMEOUT_MS);

    drop((_a, _b));
    srv.stop().unwrap();
    // The agent deregisters before stop returns.
    assert!(c.servers().unwrap().servers.is_empty());
    loc.stop().unwrap();
}

#[test]
fn clients_that_stall_mid_body_do_not_hold_up_the_locator() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = locator(tmp.path());
    // One announces 5000 bytes and sends a few; one sends part of a chunk. Both stay open.
    let mut by_length = TcpStream::connect(loc.addr).unwrap();
    by_length
        .write_all(b"POST /v1/servers HTTP/1.1\r\nHost: locator\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"name\":")
        .unwrap();
    let mut chunked = TcpStream::connect(loc.addr).unwrap();
    chunked
        .write_all(b"POST /v1/exchange HTTP/1.1\r\nHost: locator\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{\"sites\":")
        .unwrap();
    let at = HostPort {
        host: loc.addr.ip().to_string(),
        port: loc.addr.port(),
    };
    let c = LocatorClient::new(&at, Duration::from_secs(2));
    let started = Instant::now();
    for i in 0..5 {
        let name = format!("s{i}");
        c.register(&RegisterRequest {
            name: name.clone(),
            client: Endpoint {
                host: "127.0.0.1".into(),
                port: 40_000 + i,
            },
            receivers: Vec::new(),
            load: 0,
            admin: None,
        })
        .unwrap_or_else(|e| panic!("registering {name} while two clients stall: {e}"));
        let listed = c.servers().unwrap();
        assert_eq!(listed.servers.len(), usize::from(i) + 1);
    }
    assert!(started.elapsed() < DEADLINE);
    // Stopping does not wait for them either.
    let stopping = Instant::now();
    loc.stop().unwrap();
    assert!(stopping.elapsed() < DEADLINE);
    drop((by_length, chunked));
}

#[test]
fn least_loaded_without_servers_is_a_clear_404() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = locator(tmp.path());
    match client(loc.addr).least_loaded() {
        Err(ClientError::Refused { status, reply, .. }) => {
            assert_eq!((status, reply.error), (404, ErrorKind::NoServers));
            assert!(reply.message.contains("no server"), "{}", reply.message);
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    loc.stop().unwrap();
}

#[test]
fn malformed_json_gets_400_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = locator(tmp.path());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{}/v1/servers", loc.addr);
    for (body, words) in [
        ("{\"name\": ", "RegisterRequest"),
        (
            "{\"name\":\"a\",\"client\":{\"host\":\"h\"}}",
            "missing field `port`",
        ),
        ("{\"nam\":\"a\"}", "unknown field `nam`"),
    ] {
        let mut r = agent.post(&url).send(body).unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let e: ErrorReply = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(e.error, ErrorKind::BadRequest);
        assert!(e.message.contains(words), "{body}: {}", e.message);
    }
    let r = agent.post(&url).send(vec![b' '; 100_000]).unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // The locator still serves after all that.
    assert!(client(loc.addr).servers().unwrap().servers.is_empty());
    loc.stop().unwrap();
}

#[test]
fn a_port_in_use_is_refused_with_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = start_locator(locator_config(tmp.path(), port)).unwrap_err();
    assert!(
        matches!(e, LocatorError::PortInUse { addr } if addr.port() == port),
        "{e}"
    );
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn a_second_locator_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = locator(tmp.path());
    let e = start_locator(locator_config(tmp.path(), 0)).unwrap_err();
    assert!(matches!(e, LocatorError::DirectoryInUse { .. }), "{e}");
    first.stop().unwrap();
    // Released at stop.
    locator(tmp.path()).stop().unwrap();
}

#[test]
fn invalid_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = locator_config(tmp.path(), 0);
    c.member_timeout_ms = 10;
    let e = start_locator(c).unwrap_err();
    assert!(e.to_string().starts_with("member-timeout: 10 ms"), "{e}");
}

/// Starts a locator on `port`, which a stopped locator may hold for a moment longer.
fn restart_on(dir: &Path, port: u16) -> LocatorHandle {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match start_locator(locator_config(dir, port)) {
            Ok(l) => return l,
            Err(LocatorError::PortInUse { .. } | LocatorError::DirectoryInUse { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(POLL)
            }
            Err(e) => panic!("restarting the locator: {e}"),
        }
    }
}

#[test]
fn a_server_started_before_its_locator_registers_once_it_is_up_and_again_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let at: SocketAddr = ([127, 0, 0, 1], port).into();
    let srv = server(&tmp.path().join("server"), &locators(at));

    let loc = restart_on(&tmp.path().join("locator"), port);
    wait_for(&client(loc.addr), "the server to register", |s| {
        s.len() == 1
    });
    loc.stop().unwrap();

    // A new locator knows nothing: the next heartbeat is refused and the server registers again.
    let loc = restart_on(&tmp.path().join("locator"), port);
    wait_for(&client(loc.addr), "the server to register again", |s| {
        s.len() == 1
    });
    srv.stop().unwrap();
    loc.stop().unwrap();
}

#[test]
fn an_embedded_locator_serves_its_own_server() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let srv = server(
        tmp.path(),
        &format!("start-locator = \"127.0.0.1[{port}]\"\n"),
    );
    let addr = srv.locator_addr().unwrap();
    assert_eq!(addr.port(), port);
    let c = client(addr);
    let servers = wait_for(&c, "the server to register", |s| s.len() == 1);
    assert_eq!(servers[0].client.port, srv.client_addr.port());
    assert_eq!(c.status().unwrap().name, "s1-locator");
    srv.stop().unwrap();
    // The embedded locator stops with the server.
    assert!(matches!(c.servers(), Err(ClientError::Unreachable { .. })));
}

#[test]
fn an_embedded_locator_on_a_port_in_use_stops_the_server_from_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!(
        "[server]\nbind-address = \"127.0.0.1\"\nclient-port = {}\nhttp-service-port = 0\nshards = 1\ndirectory = \"{}\"\nstart-locator = \"127.0.0.1[{port}]\"\n",
        free_port(),
        tmp.path().display()
    );
    let cfg = strait_node::config::parse(Path::new("test.toml"), &text).unwrap();
    let e = server::start(cfg).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
}
