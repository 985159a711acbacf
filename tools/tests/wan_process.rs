//! The WAN link between real `strait` processes on loopback: a locator and a server per site,
//! the locators exchanging their maps, senders finding the other site's receivers through
//! them. Every wait is a deadline loop.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(30);
/// Receiver ports per server: a small range, so the range logic is exercised.
const RECEIVER_PORTS: u16 = 8;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free range of `RECEIVER_PORTS` ports, each proved free by a bind.
fn free_range() -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base > u16::MAX - RECEIVER_PORTS {
            continue;
        }
        if (base..base + RECEIVER_PORTS)
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range");
}

/// A `strait` process, killed if the test ends first; its stderr lines are kept.
struct Proc {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(args: &[String], ready: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            child,
            stderr: rx,
            seen: Vec::new(),
        };
        p.wait_line(ready);
        p
    }

    /// Waits for a stderr line containing `text`; returns it.
    fn wait_line(&mut self, text: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("no line with `{text}`; saw:\n{}", self.seen.join("\n"))
                });
            self.seen.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One site: its locator and its server's configuration.
struct Site {
    id: u8,
    dir: PathBuf,
    locator_port: u16,
    client_port: u16,
    receiver_base: u16,
    locator: Option<Proc>,
    server: Option<Proc>,
}

impl Site {
    fn new(root: &Path, id: u8) -> Site {
        let dir = root.join(format!("site{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Site {
            id,
            dir,
            locator_port: free_port(),
            client_port: free_port(),
            receiver_base: free_range(),
            locator: None,
            server: None,
        }
    }

    fn start_locator(&mut self, remote: &[u16]) {
        let mut args: Vec<String> = [
            "start",
            "locator",
            "--bind-address",
            "127.0.0.1",
            "--exchange-interval-ms",
            "200",
            "--remote-entry-timeout-ms",
            "10000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--name".into(),
            format!("locator{}", self.id),
            "--port".into(),
            self.locator_port.to_string(),
            "--distributed-system-id".into(),
            self.id.to_string(),
            "--dir".into(),
            self.dir.join("locator").display().to_string(),
        ]);
        std::fs::create_dir_all(self.dir.join("locator")).unwrap();
        if !remote.is_empty() {
            args.push("--remote-locators".into());
            args.push(
                remote
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        self.locator = Some(Proc::start(&args, "listening on"));
    }

    /// Writes site.toml: region `orders` sent to each of `targets` by a parallel sender, and
    /// the regions of `extra` (no sender), and starts the server.
    fn start_server(&mut self, targets: &[u8], persistent: bool, receiver: bool, extra: &[&str]) {
        // A fresh client port each start: sockets of a killed server can hold the old one.
        self.client_port = free_port();
        let mut cfg = format!(
            "[server]\nname = \"server{id}\"\ndistributed-system-id = {id}\nbind-address = \"127.0.0.1\"\nclient-port = {port}\nshards = 2\ndirectory = \"{dir}\"\nlocators = [\"127.0.0.1:{loc}\"]\n",
            id = self.id,
            port = self.client_port,
            dir = self.dir.display(),
            loc = self.locator_port
        );
        let ids: Vec<String> = targets.iter().map(|t| format!("\"to{t}\"")).collect();
        cfg.push_str(&format!(
            "[[region]]\nname = \"orders\"\ntype = \"partition\"\ngateway-sender-ids = [{}]\n",
            ids.join(", ")
        ));
        for r in extra {
            cfg.push_str(&format!(
                "[[region]]\nname = \"{r}\"\ntype = \"partition\"\ngateway-sender-ids = [{}]\n",
                ids.join(", ")
            ));
        }
        for t in targets {
            cfg.push_str(&format!(
                "[[gateway-sender]]\nid = \"to{t}\"\nremote-distributed-system-id = {t}\nparallel = true\nenable-persistence = {persistent}\n"
            ));
        }
        if receiver {
            cfg.push_str(&format!(
                "[gateway-receiver]\nstart-port = {}\nend-port = {}\nbind-address = \"127.0.0.1\"\n",
                self.receiver_base,
                self.receiver_base + RECEIVER_PORTS - 1
            ));
        }
        let path = self.dir.join("site.toml");
        std::fs::write(&path, cfg).unwrap();
        let args: Vec<String> = vec![
            "start".into(),
            "server".into(),
            "--config".into(),
            path.display().to_string(),
        ];
        self.server = Some(Proc::start(&args, "listening on"));
    }

    fn call(&self, args: &[&str]) -> Reply {
        call(
            self.client_port,
            &[args.iter().map(|s| s.as_bytes().to_vec()).collect()],
        )
        .pop()
        .unwrap()
    }

    fn info_field(&self, line_prefix: &str, field: &str) -> u64 {
        let Reply::Bulk(Some(text)) = self.call(&["INFO"]) else {
            panic!("INFO did not answer a bulk string");
        };
        let text = String::from_utf8(text).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .unwrap_or_else(|| panic!("no `{line_prefix}` in INFO:\n{text}"));
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in `{line}`"))
    }

    fn applied(&self) -> u64 {
        self.info_field("receiver:", "applied")
    }

    fn queued(&self, sender: &str) -> u64 {
        self.info_field(&format!("{sender}:"), "queued")
    }
}

#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// Sends `commands` pipelined on one connection and reads their replies.
fn call(port: u16, commands: &[Vec<Vec<u8>>]) -> Vec<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    for args in commands {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }
    s.write_all(&out).unwrap();
    let mut r = BufReader::new(s);
    commands.iter().map(|_| read_reply(&mut r)).collect()
}

fn read_reply(r: &mut impl BufRead) -> Reply {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().unwrap()),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                return Reply::Bulk(None);
            }
            let mut b = vec![0; n as usize + 2];
            r.read_exact(&mut b).unwrap();
            b.truncate(n as usize);
            Reply::Bulk(Some(b))
        }
        "*" => {
            let n: usize = rest.parse().unwrap();
            Reply::Array((0..n).map(|_| read_reply(r)).collect())
        }
        other => panic!("unexpected reply type {other}"),
    }
}

/// Waits until `f` holds, polling; panics with `what` at the deadline.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

fn value(site: u8, i: usize) -> String {
    format!("value-{site}-{i}-{}", "x".repeat(i % 50))
}

/// Writes keys `range` at `site` (pipelined SETs) in region `region`.
fn write(site: &Site, region: &str, range: std::ops::Range<usize>) {
    let mut cmds = vec![vec![b"REGION".to_vec(), region.as_bytes().to_vec()]];
    for i in range.clone() {
        cmds.push(vec![
            b"SET".to_vec(),
            key(i).into_bytes(),
            value(site.id, i).into_bytes(),
        ]);
    }
    let replies = call(site.client_port, &cmds);
    assert!(
        replies.iter().all(|r| *r == Reply::Simple("OK".into())),
        "a write failed: {:?}",
        replies.iter().find(|r| **r != Reply::Simple("OK".into()))
    );
}

/// The values of `keys` at `site` in region `region`.
fn values(site: &Site, region: &str, keys: &[String]) -> Vec<Reply> {
    let mut cmds = vec![vec![b"REGION".to_vec(), region.as_bytes().to_vec()]];
    cmds.extend(
        keys.iter()
            .map(|k| vec![b"GET".to_vec(), k.clone().into_bytes()]),
    );
    let mut r = call(site.client_port, &cmds);
    r.remove(0);
    r
}

fn dbsize(site: &Site, region: &str) -> i64 {
    let r = call(
        site.client_port,
        &[
            vec![b"REGION".to_vec(), region.as_bytes().to_vec()],
            vec![b"DBSIZE".to_vec()],
        ],
    );
    match r[1] {
        Reply::Int(n) => n,
        ref other => panic!("DBSIZE answered {other:?}"),
    }
}

/// Asserts equal replies, naming the first difference (not printing thousands of values).
fn same(a: &[Reply], b: &[Reply]) {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).position(|(x, y)| x != y);
    let count = a.iter().zip(b).filter(|(x, y)| x != y).count();
    if let Some(i) = diff {
        panic!(
            "{count} values differ; first at {i}: {:?} vs {:?}",
            a[i], b[i]
        );
    }
}

/// Two sites whose locators know each other; servers not started.
fn two_sites(root: &Path) -> (Site, Site) {
    let mut s1 = Site::new(root, 1);
    let mut s2 = Site::new(root, 2);
    s1.start_locator(&[]);
    s2.start_locator(&[s1.locator_port]);
    (s1, s2)
}

#[test]
fn two_sites_one_way_replicate_every_write_and_drain_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    const N: usize = 500;
    write(&s1, "orders", 0..N);
    wait_for("site 2 to apply every write", || s2.applied() == N as u64);
    let keys: Vec<String> = (0..N).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    assert_eq!(dbsize(&s2, "orders"), N as i64);
    wait_for("site 1's queue to drain", || s1.queued("to2") == 0);
    assert_eq!(s1.info_field("to2:", "distributed"), N as u64);
    assert_eq!(s2.info_field("receiver:", "duplicates"), 0);
}

#[test]
fn two_sites_both_ways_end_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s1.start_server(&[2], false, true, &[]);
    s2.start_server(&[1], false, true, &[]);
    write(&s1, "orders", 0..200);
    write(&s2, "orders", 200..400);
    wait_for("site 2 to apply site 1's writes", || s2.applied() == 200);
    wait_for("site 1 to apply site 2's writes", || s1.applied() == 200);
    let keys: Vec<String> = (0..400).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    assert_eq!(dbsize(&s1, "orders"), 400);
    wait_for("both queues to drain", || {
        s1.queued("to2") == 0 && s2.queued("to1") == 0
    });
    // Nothing came back: an event is never sent to its origin.
    assert_eq!(s1.info_field("receiver:", "duplicates"), 0);
    assert_eq!(s2.info_field("receiver:", "duplicates"), 0);
}

#[test]
fn a_missing_region_is_dead_lettered_and_replayed_once_it_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &["customers"]);
    write(&s1, "customers", 0..50);
    wait_for("site 2 to dead-letter the events", || {
        s2.info_field("receiver:", "dead_lettered") == 50
    });
    let Reply::Bulk(Some(list)) = s2.call(&["STRAIT.DEADLETTERS", "LIST"]) else {
        panic!("LIST did not answer a bulk string");
    };
    let list = String::from_utf8(list).unwrap();
    assert!(list.contains("region=customers count=50"), "{list}");
    assert!(list.contains("reason=unknown region"), "{list}");
    s2.server
        .as_mut()
        .unwrap()
        .wait_line("events of region `customers` from site 1 cannot be applied here");
    wait_for("site 1's queue to drain", || s1.queued("to2") == 0);
    // Site 2 restarts with the region.
    s2.server.take().unwrap().kill9();
    s2.start_server(&[], false, true, &["customers"]);
    let Reply::Bulk(Some(done)) = s2.call(&["STRAIT.DEADLETTERS", "REPLAY"]) else {
        panic!("REPLAY did not answer a bulk string");
    };
    let done = String::from_utf8(done).unwrap();
    assert!(
        done.contains("region=customers replayed=50 kept=0"),
        "{done}"
    );
    let keys: Vec<String> = (0..50).map(key).collect();
    same(
        &values(&s1, "customers", &keys),
        &values(&s2, "customers", &keys),
    );
    let Reply::Bulk(Some(list)) = s2.call(&["STRAIT.DEADLETTERS", "LIST"]) else {
        panic!("LIST did not answer a bulk string");
    };
    assert!(!String::from_utf8(list).unwrap().contains("customers"));
}

#[test]
fn a_sender_killed_mid_stream_resends_and_nothing_is_applied_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    const N: usize = 3000;
    // Writes in rounds; kill -9 the sending server while site 2 is still applying.
    for round in 0..3 {
        write(&s1, "orders", round * 1000..(round + 1) * 1000);
    }
    wait_for("site 2 to start applying", || s2.applied() > 0);
    s1.server.take().unwrap().kill9();
    s1.start_server(&[2], true, false, &[]);
    wait_for("site 2 to apply every write", || {
        dbsize(&s2, "orders") == N as i64 && s1.queued("to2") == 0
    });
    assert_eq!(s2.applied(), N as u64, "an event was applied twice");
    // Site 1's store lives in memory (only its queues persist): compare with what was written.
    let keys: Vec<String> = (0..N).map(key).collect();
    let want: Vec<Reply> = (0..N)
        .map(|i| Reply::Bulk(Some(value(1, i).into_bytes())))
        .collect();
    same(&want, &values(&s2, "orders", &keys));
}

#[test]
fn a_sender_whose_locators_lead_to_its_own_site_says_so() {
    // Site 2's locator is reached, but the receiver registered there runs at site 1: the
    // hello reply names site 1, the sender's own site.
    let tmp = tempfile::tempdir().unwrap();
    let mut s1 = Site::new(tmp.path(), 1);
    let mut s2 = Site::new(tmp.path(), 2);
    s1.start_locator(&[]);
    s2.start_locator(&[s1.locator_port]);
    // A second server of site 1 runs the receiver, registered with site 2's locator.
    let mut rogue = Site::new(tmp.path(), 1);
    rogue.locator_port = s2.locator_port;
    rogue.dir = tmp.path().join("rogue");
    std::fs::create_dir_all(&rogue.dir).unwrap();
    rogue.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    let line = s1
        .server
        .as_mut()
        .unwrap()
        .wait_line("cannot connect to its own distributed system");
    assert!(line.contains("gateway sender `to2`"), "{line}");
}
