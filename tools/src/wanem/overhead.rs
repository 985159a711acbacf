//! `strait-wanem overhead`: what the emulator itself costs on loopback, measured in one run
//! against a direct connection to the same sink: bulk throughput, and the round trip of a
//! one-byte ping-pong. The emulator runs in this process with no impairment.
//!
//! - [`Row`]: one measurement (a JSON line and a table row).
//! - [`measure`]: runs direct and through the emulator, alternately, `rounds` times.

use super::link::LinkParams;
use super::proxy::{Emulator, PortMap, Settings};
use anyhow::{Context, bail};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Bytes of each write of the throughput test.
const WRITE_BYTES: usize = 256 << 10;
/// Round trips of the ping-pong test.
const PING_PONGS: u32 = 2000;

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `direct` or `wanem`.
    pub path: &'static str,
    pub round: u32,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Median one-byte round trip, microseconds.
    pub rtt_p50_us: f64,
    /// This row's MB/s over the direct path's in the same round (1 for `direct`).
    pub ratio_to_direct: f64,
}

/// The sink: a connection's first byte says what it wants. `T`: read to the end, then
/// answer one byte. `E`: echo every byte.
fn sink() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve(s);
            });
        }
    });
    Ok(addr)
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8];
    s.read_exact(&mut mode)?;
    let mut buf = vec![0u8; WRITE_BYTES];
    match mode[0] {
        b'T' => {
            while s.read(&mut buf)? > 0 {}
            s.write_all(b"d")
        }
        _ => loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        },
    }
}

/// Sends `bytes` to `addr` and waits for the sink's answer; returns the seconds taken.
fn throughput(addr: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let chunk = vec![7u8; WRITE_BYTES];
    let start = Instant::now();
    s.write_all(b"T")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WRITE_BYTES as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut done = [0u8];
    s.read_exact(&mut done)
        .context("waiting for the sink's answer")?;
    Ok(start.elapsed().as_secs_f64())
}

/// Median one-byte round trip to `addr`, in microseconds.
fn ping_pong(addr: SocketAddr) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"E")?;
    let mut rtts = Vec::with_capacity(PING_PONGS as usize);
    let mut b = [0u8];
    for _ in 0..PING_PONGS {
        let t = Instant::now();
        s.write_all(b"p")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts[rtts.len() / 2])
}

/// Direct, then through a fresh emulator with no impairment, `rounds` times.
pub fn measure(bytes: u64, rounds: u32) -> anyhow::Result<Vec<Row>> {
    if bytes == 0 || rounds == 0 {
        bail!("--bytes and --rounds must be at least 1");
    }
    let target = sink()?;
    let map = PortMap {
        listen: "127.0.0.1:0".parse()?,
        target,
        ports: 1,
    };
    let link = LinkParams::default();
    let settings = Settings {
        up: link,
        down: link,
        partitioned: false,
        seed: 1,
    };
    let emulator = Emulator::start(&[map], settings, None)?;
    let through = emulator.listening[0].0;
    let mut rows = Vec::new();
    for round in 1..=rounds {
        let mut direct_mb_per_s = 0.0;
        for (path, addr) in [("direct", target), ("wanem", through)] {
            let seconds = throughput(addr, bytes)?;
            let mb_per_s = bytes as f64 / seconds / 1e6;
            if path == "direct" {
                direct_mb_per_s = mb_per_s;
            }
            rows.push(Row {
                path,
                round,
                bytes,
                seconds,
                mb_per_s,
                rtt_p50_us: ping_pong(addr)?,
                ratio_to_direct: mb_per_s / direct_mb_per_s,
            });
        }
    }
    Ok(rows)
}
