//! `strait-wanem` as a process on loopback: latency added per direction, the bandwidth cap,
//! partitions switched through the control port, resets, port ranges and bad arguments.

mod common;

use common::free_port;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

/// A running `strait-wanem proxy`, killed when dropped.
struct Wanem {
    child: Child,
    /// Listening address → target, as it printed them.
    listening: Vec<(SocketAddr, SocketAddr)>,
    control: Option<SocketAddr>,
}

impl Drop for Wanem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wanem(args: &[&str]) -> Wanem {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait-wanem"))
        .arg("proxy")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut w = Wanem {
        child,
        listening: Vec::new(),
        control: None,
    };
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("strait-wanem ended before `ready`")
            .unwrap();
        if let Some(rest) = line.strip_prefix("strait-wanem: control on ") {
            w.control = Some(rest.parse().unwrap());
        } else if let Some((l, t)) = line
            .strip_prefix("strait-wanem: ")
            .and_then(|r| r.split_once(" -> "))
        {
            w.listening.push((l.parse().unwrap(), t.parse().unwrap()));
        } else if line.starts_with("strait-wanem: ready") {
            break;
        }
    }
    // Keep draining stderr so the process never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    w
}

impl Wanem {
    fn control(&self, command: &str) -> String {
        let mut s = TcpStream::connect(self.control.unwrap()).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        writeln!(s, "{command}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with("ok"), "`{command}` answered `{line}`");
        line
    }
}

/// A target on a free port that echoes every byte.
fn echo_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut b) {
                    if s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Round trip of one byte through `s` (an echo behind it).
fn rtt(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    s.write_all(b"x").unwrap();
    let mut b = [0u8];
    s.read_exact(&mut b).unwrap();
    t.elapsed()
}

#[test]
fn latency_is_added_in_each_direction_and_can_be_changed_while_running() {
    let target = echo_target();
    let w = wanem(&[
        "--map",
        &format!("127.0.0.1:0={target}"),
        "--link",
        "latency=40ms",
        "--control",
        "127.0.0.1:0",
    ]);
    let mut s = connect(w.listening[0].0);
    for _ in 0..3 {
        let r = rtt(&mut s);
        assert!(
            r >= Duration::from_millis(80),
            "round trip {r:?} under 2 × 40 ms"
        );
    }
    w.control("set down latency=150ms");
    let r = rtt(&mut s);
    assert!(
        r >= Duration::from_millis(190),
        "round trip {r:?} under 40 + 150 ms"
    );
    assert!(w.control("status").contains("latency=150000us"));
}

#[test]
fn the_bandwidth_cap_holds_for_the_link_as_a_whole() {
    // A sink that counts, and answers one byte at the end of each stream.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = vec![0u8; 65536];
                while let Ok(1..) = s.read(&mut b) {}
                let _ = s.write_all(b"d");
            });
        }
    });
    // 40 Mbit/s = 5 MB/s; 2 × 2 MB over two connections at once take 0.8 s.
    let w = wanem(&[
        "--map",
        &format!("127.0.0.1:0={target}"),
        "--up",
        "bandwidth=40Mbit",
    ]);
    let bytes = 2_000_000usize;
    let t = Instant::now();
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let mut s = connect(w.listening[0].0);
            std::thread::spawn(move || {
                s.write_all(&vec![1u8; bytes]).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut d = [0u8];
                s.read_exact(&mut d).unwrap();
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let rate = 2.0 * bytes as f64 / t.elapsed().as_secs_f64();
    let ratio = rate / 5e6;
    assert!(
        (0.8..=1.05).contains(&ratio),
        "{rate:.0} B/s is {ratio:.3} of the 5 MB/s cap"
    );
}

#[test]
fn a_partition_stops_traffic_and_the_heal_restores_it() {
    let target = echo_target();
    let w = wanem(&[
        "--map",
        &format!("127.0.0.1:0={target}"),
        "--control",
        "127.0.0.1:0",
    ]);
    let mut s = connect(w.listening[0].0);
    rtt(&mut s);
    assert!(w.control("partition on").contains("partitioned=true"));
    s.write_all(b"held").unwrap();
    // Nothing crosses for 300 ms: reads with a short timeout find nothing.
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 4];
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(300) {
        match s.read(&mut b) {
            Ok(n) => panic!("{n} bytes crossed a partition"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ),
                "{e}"
            ),
        }
    }
    w.control("partition off");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"held");
}

#[test]
fn reset_closes_connections_on_command_and_at_a_rate() {
    let target = echo_target();
    let w = wanem(&[
        "--map",
        &format!("127.0.0.1:0={target}"),
        "--control",
        "127.0.0.1:0",
    ]);
    let mut s = connect(w.listening[0].0);
    rtt(&mut s);
    assert!(w.control("reset").contains("reset=1"));
    let mut b = [0u8];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "the connection survived a reset"
    );

    // 20 resets a second: a connection lasts 50 ms on average.
    w.control("set up reset-rate=20");
    let mut s = connect(w.listening[0].0);
    let t = Instant::now();
    let closed = loop {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let _ = s.write_all(b"x");
        match s.read(&mut b) {
            Ok(0) => break true,
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true;
            }
            _ if t.elapsed() > DEADLINE => break false,
            _ => {}
        }
    };
    assert!(closed, "no reset within {DEADLINE:?} at 20 per second");
}

#[test]
fn a_port_range_maps_each_port_to_its_counterpart() {
    // Two consecutive free ports for the targets, two for the listeners.
    let pair = || loop {
        let p = free_port();
        if let (Ok(a), Ok(b)) = (
            TcpListener::bind(("127.0.0.1", p)),
            TcpListener::bind(("127.0.0.1", p + 1)),
        ) {
            return (p, a, b);
        }
    };
    let (tp, a, b) = pair();
    for l in [a, b] {
        std::thread::spawn(move || {
            let port = l.local_addr().unwrap().port();
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(port.to_string().as_bytes());
            }
        });
    }
    let (lp, la, lb) = pair();
    drop((la, lb));
    let w = wanem(&[
        "--map",
        &format!("127.0.0.1:{lp}-{}=127.0.0.1:{tp}-{}", lp + 1, tp + 1),
    ]);
    assert_eq!(w.listening.len(), 2);
    for i in 0..2u16 {
        let mut s = connect(SocketAddr::from(([127, 0, 0, 1], lp + i)));
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, (tp + i).to_string());
    }
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (args, says) in [
        (
            vec!["--map", "127.0.0.1:1000-1002=127.0.0.1:2000-2001"],
            "3 ports",
        ),
        (
            vec!["--map", "127.0.0.1:0=127.0.0.1:1", "--link", "latency=soon"],
            "not a duration",
        ),
        (
            vec!["--map", "localhost:1=127.0.0.1:1"],
            "not an IP address",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_strait-wanem"))
            .arg("proxy")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
