//! `strait start server` as a process: real Redis clients (redis-cli, redis-benchmark, the
//! Python client), SIGTERM, and kill -9 with persistent sender queues.
//!
//! The real-client tests need `redis-cli`, `redis-benchmark` and Python's `redis` package;
//! `.ci/run` installs them. Where one is missing, its test says so and passes nothing off as
//! checked: it prints SKIPPED with the reason.

mod common;
use common::{free_port, stderr_lines};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    port: u16,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn start(dir: &Path, extra: &str) -> Server {
        let port = free_port();
        let config = dir.join("site.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\ndistributed-system-id = 1\nbind-address = \"127.0.0.1\"\nclient-port = {port}\nhttp-service-port = 0\nshards = 2\ndirectory = \"{}\"\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["start", "server", "--config"])
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        // Ready when it says it listens.
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                panic!(
                    "server did not start within {START_TIMEOUT:?}; it said:\n{}",
                    seen.join("\n")
                );
            };
            if line.contains("listening on") {
                break;
            }
            seen.push(line);
        }
        Server {
            child,
            port,
            stderr: rx,
        }
    }

    fn call(&self, args: &[&str]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = Vec::new();
        strait_net_encode(&mut out, args);
        s.write_all(&out).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit in time");
            // The exit itself is what is awaited; the stderr reader sees it close.
            let _ = self.stderr.recv_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strait_net_encode(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const REGION: &str = "[[region]]\nname = \"orders\"\ntype = \"partition\"\n";

#[test]
fn sigterm_stops_the_server_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), REGION);
    assert_eq!(server.call(&["SET", "k", "v"]), b"+OK\r\n");
    assert_eq!(server.call(&["GET", "k"]), b"$1\r\nv\r\n");
    server.signal("-TERM");
    let status = server.wait();
    assert!(status.success(), "exit status {status}");
}

/// `THP_enabled` of a process, as /proc shows it: whether the kernel may back its memory with
/// transparent huge pages.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn transparent_huge_pages_are_off_for_a_server_unless_its_config_allows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), REGION);
    assert_eq!(thp_enabled(server.child.id()), "0");
    drop(server);
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &format!("transparent-huge-pages = true\n{REGION}"),
    );
    assert_eq!(thp_enabled(server.child.id()), "1");
    assert_eq!(server.call(&["SET", "k", "v"]), b"+OK\r\n");
}

#[test]
fn redis_cli_and_redis_benchmark_work_against_strait() {
    if !have("redis-cli", "--version") || !have("redis-benchmark", "--version") {
        eprintln!(
            "SKIPPED redis_cli_and_redis_benchmark_work_against_strait: redis-cli/redis-benchmark not installed (apt-get install redis-tools)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), REGION);
    let port = server.port.to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(&["MSET", "a", "1", "b", "2"]), "OK\n");
    assert_eq!(cli(&["MGET", "a", "b", "c"]), "1\n2\n\n");
    assert_eq!(cli(&["DBSIZE"]), "3\n");
    let bench = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "set,get",
            "-n",
            "20000",
            "-P",
            "16",
            "-r",
            "1000",
            "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    // The benchmark's keys are there: 1000 random keys plus the three above.
    let size: u64 = cli(&["DBSIZE"]).trim().parse().unwrap();
    assert!(size > 3 && size <= 1003, "{size}");
}

#[test]
fn the_python_redis_client_works_against_strait() {
    if !Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!(
            "SKIPPED the_python_redis_client_works_against_strait: python3 with the redis package not installed (pip install redis)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), REGION);
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={})\n\
         assert r.ping()\n\
         r.set('py', b'\\x00binary\\r\\n')\n\
         assert r.get('py') == b'\\x00binary\\r\\n'\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(500): p.set(f'k{{i}}', i)\n\
         p.execute()\n\
         assert r.mget(['k1', 'k499', 'missing']) == [b'1', b'499', None]\n\
         assert r.dbsize() == 501\n\
         assert sorted(r.scan_iter(match='k49*', count=50)) == sorted([b'k49'] + [f'k49{{i}}'.encode() for i in range(10)])\n\
         print('ok')\n",
        server.port
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn kill_minus_nine_keeps_every_acknowledged_write_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "[[gateway-sender]]\nid = \"to-2\"\nremote-distributed-system-id = 2\nparallel = true\nenable-persistence = true\n\
                 [[region]]\nname = \"orders\"\ntype = \"partition\"\ngateway-sender-ids = [\"to-2\"]\n";
    let server = Server::start(tmp.path(), extra);
    // Pipelined writers on two connections; every reply read is an acknowledged write.
    let mut acked = 0u64;
    let mut conns: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    for round in 0..20 {
        for (c, conn) in conns.iter_mut().enumerate() {
            let mut out = Vec::new();
            for i in 0..50 {
                strait_net_encode(&mut out, &["SET", &format!("c{c}-r{round}-{i}"), "value"]);
            }
            conn.write_all(&out).unwrap();
        }
        for conn in &mut conns {
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut got = Vec::new();
            while got.len() < 50 * 5 {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"+OK\r\n".repeat(50));
            acked += 50;
        }
    }
    server.signal("-KILL");
    assert!(!server.wait().success());
    let mut queued = 0;
    for shard in 0..2 {
        let dir = tmp
            .path()
            .join("queues")
            .join("to-2")
            .join(format!("shard-{shard}"));
        let disk = strait_queue::mmap::MmapDisk::open(&dir).unwrap();
        let cfg = strait_queue::queue::QueueConfig {
            queue_count: 113,
            persistent: true,
            ..Default::default()
        };
        let (_, report) = strait_queue::store::recover(cfg, &disk).unwrap();
        assert!(
            report.corrupt.is_empty() && report.gaps.is_empty(),
            "{report:?}"
        );
        // A parallel sender under `every-batch` commits through its journal.
        assert_eq!(report.journal_segments, 1, "{report:?}");
        queued += report.events;
    }
    assert_eq!(
        queued, acked,
        "every acknowledged write is queued, and nothing else"
    );
}
