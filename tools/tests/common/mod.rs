//! The harness shared by the process tests (`wan_process.rs`, `wan_topology.rs`,
//! `nat_process.rs`): real `strait` locators and servers on loopback (or in a network
//! namespace), a RESP client, INFO fields, and deadline loops.
//! Every wait is bounded by [`DEADLINE`]. `server_process.rs` and `locator_process.rs` use
//! only its [`free_port`], hence the allowance for items a test crate leaves unused.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const POLL: Duration = Duration::from_millis(30);
/// Receiver ports per server: a small range, so the range logic is exercised.
pub const RECEIVER_PORTS: u16 = 8;

/// Runs the tests of one file one at a time: each starts several sites' processes, and on a
/// 2-core machine all of them at once would starve each other past every deadline. Taken at
/// the start of each test; a test that failed does not stop the next ones.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A free port below the kernel's ephemeral range (32768 and up), so that no outgoing
/// connection can take it between this check and the process's own bind.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = u64::from(std::process::id()).wrapping_mul(7919)
        + NEXT.fetch_add(97, std::sync::atomic::Ordering::Relaxed);
    (0..12_000u64)
        .map(|i| 20_000 + ((seed + i) % 12_000) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port between 20000 and 32000")
}

/// A free range of `RECEIVER_PORTS` ports, each proved free by a bind.
pub fn free_range() -> u16 {
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
pub struct Proc {
    pub child: Child,
    stderr: mpsc::Receiver<String>,
    /// The stderr lines read so far.
    pub seen: Vec<String>,
}

impl Proc {
    pub fn start(args: &[String], ready: &str) -> Proc {
        Proc::start_in(None, args, ready)
    }

    /// Starts `strait args` inside network namespace `netns` (`ip netns exec`, which execs
    /// `strait` itself, so killing the child kills the process).
    pub fn start_in(netns: Option<&str>, args: &[String], ready: &str) -> Proc {
        let strait = env!("CARGO_BIN_EXE_strait");
        let mut cmd = match netns {
            None => Command::new(strait),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, strait]);
                c
            }
        };
        let mut child = cmd.args(args).stderr(Stdio::piped()).spawn().unwrap();
        let rx = stderr_lines(&mut child);
        let mut p = Proc {
            child,
            stderr: rx,
            seen: Vec::new(),
        };
        p.wait_line(ready);
        p
    }

    /// Waits for a stderr line containing `text`; returns it.
    pub fn wait_line(&mut self, text: &str) -> String {
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

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it exited
    /// with status 0.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {pid} failed");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop after SIGTERM"
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One site: its locator and its server's configuration.
pub struct Site {
    pub id: u8,
    pub dir: PathBuf,
    pub locator_port: u16,
    pub client_port: u16,
    /// The receiver's port range: `receiver_base..receiver_base + receiver_ports`.
    pub receiver_base: u16,
    pub receiver_ports: u16,
    /// Region `orders` logs its writes and restores them at start.
    pub persistent_regions: bool,
    /// TOML lines added to every `[[gateway-sender]]` (e.g. `manual-start = true`).
    pub sender_options: String,
    /// TOML lines added to region `orders` (e.g. `total-num-buckets = 4`).
    pub region_options: String,
    /// TOML lines added to `[gateway-receiver]` (e.g. `manual-start = true`).
    pub receiver_options: String,
    /// The server's `http-service-port` (admin API); 0, the default here, turns it off.
    pub admin_port: u16,
    pub locator: Option<Proc>,
    pub server: Option<Proc>,
    /// When the site runs in a network namespace: the namespace and the address of its client
    /// port there (else the client port is on 127.0.0.1).
    pub client_at: Option<(String, std::net::IpAddr)>,
}

impl Site {
    pub fn new(root: &Path, id: u8) -> Site {
        let dir = root.join(format!("site{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Site {
            id,
            dir,
            locator_port: free_port(),
            client_port: free_port(),
            receiver_base: free_range(),
            receiver_ports: RECEIVER_PORTS,
            persistent_regions: false,
            sender_options: String::new(),
            region_options: String::new(),
            receiver_options: String::new(),
            admin_port: 0,
            locator: None,
            server: None,
            client_at: None,
        }
    }

    /// A connection to the site's client port, made from inside its network namespace when
    /// it has one (a thread joins the namespace to connect; the socket stays in it).
    pub fn connect(&self) -> TcpStream {
        let Some((ns, ip)) = &self.client_at else {
            return TcpStream::connect(("127.0.0.1", self.client_port)).unwrap();
        };
        let addr = std::net::SocketAddr::new(*ip, self.client_port);
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let f = std::fs::File::open(&path).unwrap();
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&f),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap();
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap()
                })
                .join()
                .unwrap()
        })
    }

    pub fn start_locator(&mut self, remote: &[u16]) {
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

    /// Writes site.toml (see [`Site::write_config`]) and starts the server.
    pub fn start_server(
        &mut self,
        targets: &[u8],
        persistent: bool,
        receiver: bool,
        extra: &[&str],
    ) {
        let args = self.write_config(targets, persistent, receiver, extra);
        self.server = Some(Proc::start(&args, "listening on"));
    }

    /// Writes site.toml: region `orders` sent to each of `targets` by a parallel sender, and
    /// the regions of `extra` (sent by the same senders); a receiver on the site's port range
    /// when `receiver`. Returns the arguments of `strait` that start the server.
    pub fn write_config(
        &mut self,
        targets: &[u8],
        persistent: bool,
        receiver: bool,
        extra: &[&str],
    ) -> Vec<String> {
        // A fresh client port each start: sockets of a killed server can hold the old one.
        self.client_port = free_port();
        let mut cfg = format!(
            "[server]\nname = \"server{id}\"\ndistributed-system-id = {id}\nbind-address = \"127.0.0.1\"\nclient-port = {port}\nhttp-service-port = {admin}\nshards = 2\ndirectory = \"{dir}\"\nlocators = [\"127.0.0.1:{loc}\"]\n",
            id = self.id,
            port = self.client_port,
            admin = self.admin_port,
            dir = self.dir.display(),
            loc = self.locator_port
        );
        let ids: Vec<String> = targets.iter().map(|t| format!("\"to{t}\"")).collect();
        cfg.push_str(&format!(
            "[[region]]\nname = \"orders\"\ntype = \"partition\"\ngateway-sender-ids = [{}]\npersistent = {}\n{}",
            ids.join(", "),
            self.persistent_regions,
            self.region_options
        ));
        for r in extra {
            cfg.push_str(&format!(
                "[[region]]\nname = \"{r}\"\ntype = \"partition\"\ngateway-sender-ids = [{}]\n",
                ids.join(", ")
            ));
        }
        for t in targets {
            cfg.push_str(&format!(
                "[[gateway-sender]]\nid = \"to{t}\"\nremote-distributed-system-id = {t}\nparallel = true\nenable-persistence = {persistent}\n{}",
                self.sender_options
            ));
        }
        if receiver {
            cfg.push_str(&format!(
                "[gateway-receiver]\nstart-port = {}\nend-port = {}\nbind-address = \"127.0.0.1\"\n{}",
                self.receiver_base,
                self.receiver_base + self.receiver_ports - 1,
                self.receiver_options
            ));
        }
        let path = self.dir.join("site.toml");
        std::fs::write(&path, cfg).unwrap();
        vec![
            "start".into(),
            "server".into(),
            "--config".into(),
            path.display().to_string(),
        ]
    }

    pub fn call(&self, args: &[&str]) -> Reply {
        call_on(
            self.connect(),
            &[args.iter().map(|s| s.as_bytes().to_vec()).collect()],
        )
        .pop()
        .unwrap()
    }

    pub fn info_field(&self, line_prefix: &str, field: &str) -> u64 {
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

    pub fn applied(&self) -> u64 {
        self.info_field("receiver:", "applied")
    }

    pub fn queued(&self, sender: &str) -> u64 {
        self.info_field(&format!("{sender}:"), "queued")
    }
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// Sends `commands` pipelined on one connection to 127.0.0.1:`port` and reads their replies.
pub fn call(port: u16, commands: &[Vec<Vec<u8>>]) -> Vec<Reply> {
    call_on(TcpStream::connect(("127.0.0.1", port)).unwrap(), commands)
}

/// Sends `commands` pipelined on `s` and reads their replies.
pub fn call_on(mut s: TcpStream, commands: &[Vec<Vec<u8>>]) -> Vec<Reply> {
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

pub fn read_reply(r: &mut impl BufRead) -> Reply {
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
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

pub fn key(i: usize) -> String {
    format!("key-{i:05}")
}

pub fn value(site: u8, i: usize) -> String {
    format!("value-{site}-{i}-{}", "x".repeat(i % 50))
}

/// Writes keys `range` at `site` (pipelined SETs) in region `region`.
pub fn write(site: &Site, region: &str, range: std::ops::Range<usize>) {
    let mut cmds = vec![vec![b"REGION".to_vec(), region.as_bytes().to_vec()]];
    for i in range.clone() {
        cmds.push(vec![
            b"SET".to_vec(),
            key(i).into_bytes(),
            value(site.id, i).into_bytes(),
        ]);
    }
    let replies = call_on(site.connect(), &cmds);
    assert!(
        replies.iter().all(|r| *r == Reply::Simple("OK".into())),
        "a write failed: {:?}",
        replies.iter().find(|r| **r != Reply::Simple("OK".into()))
    );
}

/// The values of `keys` at `site` in region `region`.
pub fn values(site: &Site, region: &str, keys: &[String]) -> Vec<Reply> {
    let mut cmds = vec![vec![b"REGION".to_vec(), region.as_bytes().to_vec()]];
    cmds.extend(
        keys.iter()
            .map(|k| vec![b"GET".to_vec(), k.clone().into_bytes()]),
    );
    let mut r = call_on(site.connect(), &cmds);
    r.remove(0);
    r
}

pub fn dbsize(site: &Site, region: &str) -> i64 {
    let r = call_on(
        site.connect(),
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
pub fn same(a: &[Reply], b: &[Reply]) {
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
pub fn two_sites(root: &Path) -> (Site, Site) {
    let mut s1 = Site::new(root, 1);
    let mut s2 = Site::new(root, 2);
    s1.start_locator(&[]);
    s2.start_locator(&[s1.locator_port]);
    (s1, s2)
}

/// A tmpfs the test mounted; unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` (e.g. `64m`) at `dir`/small, for a test that needs a disk that
/// fills up; `None`, after printing why `test` is skipped, when this machine does not allow
/// it (not root).
pub fn small_disk(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
    let small = dir.join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "strait-test"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED {test}: cannot mount a tmpfs here (needs root)");
        return None;
    }
    Some(Tmpfs(small))
}

/// Runs `strait args...` and returns its output.
pub fn strait(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `strait args... --url <site's admin API>`.
pub fn strait_at(site: &Site, args: &[&str]) -> std::process::Output {
    let url = format!("http://127.0.0.1:{}", site.admin_port);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", &url]);
    strait(&all)
}

/// Runs `strait args... --url <site's admin API>`; asserts it succeeded and returns stdout.
pub fn ok_at(site: &Site, args: &[&str]) -> String {
    let out = strait_at(site, args);
    assert!(
        out.status.success(),
        "strait {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `strait args... --url <site's admin API>`; asserts it failed and returns stderr.
pub fn err_at(site: &Site, args: &[&str]) -> String {
    let out = strait_at(site, args);
    assert!(!out.status.success(), "strait {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// The lines `child` writes on its stderr (piped), read by a thread of their own.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("the child's stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
