//! The I/O shell of `strait-wanem`: listeners, connections and the control port, on plain
//! threads (a test and benchmark tool, not the data plane). Every decision about when bytes
//! move is the [`Direction`] state machine's; this file reads sockets, passes the time in,
//! sleeps until the next release and writes.
//!
//! - [`PortMap`]: a listen address (or range) and the target address (or range) it maps to.
//! - [`Settings`]: the link's parameters per direction and whether it is partitioned.
//! - [`Emulator`]: the running proxy; [`Emulator::start`] binds everything, then the threads
//!   run until the process ends.
//!
//! Per connection four threads: for each direction a reader (socket → [`Direction`]) and a
//! writer ([`Direction`] → socket), sharing the direction under a mutex with a condition
//! variable. A reader stops reading while [`DIRECTION_BUFFER_BYTES_MAX`] bytes are held, so a
//! slow link pushes back on its sender as TCP would.

use super::link::{Direction, LinkParams, ResetClock, Wire};
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Bytes one direction of one connection holds at most (read, not yet released). Above the
/// bandwidth-delay product of every link it is meant for: 1 Gbit/s × 100 ms is 12.5 MB.
pub const DIRECTION_BUFFER_BYTES_MAX: usize = 32 << 20;
/// The largest single read from a socket.
pub const READ_BYTES_MAX: usize = 64 << 10;
/// The smallest read size the bandwidth-derived read size is clamped to.
pub const READ_BYTES_MIN: usize = 1500;
/// How long a connect to the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest sleep of a writer with nothing to do (it is woken early by new bytes).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Ports one `--map` may cover.
pub const MAP_PORTS_MAX: u16 = 1024;

/// `LISTEN=TARGET`, each `ip:port` or `ip:first-last` (ranges of the same length).
#[derive(Clone, Debug, PartialEq)]
pub struct PortMap {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    /// Ports in the range: `listen.port() + i` maps to `target.port() + i` for `i < ports`.
    pub ports: u16,
}

impl std::str::FromStr for PortMap {
    type Err = String;

    fn from_str(text: &str) -> Result<PortMap, String> {
        let (l, t) = text.split_once('=').ok_or_else(|| {
            format!(
                "`{text}`: expected LISTEN=TARGET, e.g. 127.0.0.2:5000-5009=127.0.0.1:5000-5009"
            )
        })?;
        let (listen, ln) = parse_range(l)?;
        let (target, tn) = parse_range(t)?;
        if ln != tn {
            return Err(format!(
                "`{text}`: the listen range has {ln} ports, the target range {tn}"
            ));
        }
        Ok(PortMap {
            listen,
            target,
            ports: ln,
        })
    }
}

/// `ip:port` or `ip:first-last` → the first address and the number of ports.
fn parse_range(text: &str) -> Result<(SocketAddr, u16), String> {
    let (host, ports) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}`: expected IP:PORT or IP:FIRST-LAST"))?;
    let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("`{text}`: `{p}` is not a port"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if last < first || last - first >= MAP_PORTS_MAX {
        return Err(format!(
            "`{text}`: a range runs upward and covers at most {MAP_PORTS_MAX} ports"
        ));
    }
    let addr: SocketAddr = format!("{host}:{first}")
        .parse()
        .map_err(|_| format!("`{text}`: `{host}` is not an IP address"))?;
    Ok((addr, last - first + 1))
}

/// What the link does, per direction; `up` is listener → target, `down` target → listener.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Settings {
    pub up: LinkParams,
    pub down: LinkParams,
    pub partitioned: bool,
    /// Seeds every random choice (jitter, stalls, resets), with the connection's number.
    pub seed: u64,
}

/// A direction and what its two threads need to know besides.
#[derive(Debug)]
struct PipeState {
    link: Direction,
    /// The reader saw end of stream: the writer closes its side once all is released.
    eof: bool,
    /// The connection was reset or failed: both threads stop.
    closed: bool,
    /// Only on the up direction: when this connection is reset.
    resets: Option<ResetClock>,
}

#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Conn {
    up: Pipe,
    down: Pipe,
    client: TcpStream,
    target: TcpStream,
}

impl Conn {
    /// Closes both sockets and stops the four threads.
    fn reset(&self) {
        for pipe in [&self.up, &self.down] {
            pipe.lock().closed = true;
            pipe.changed.notify_all();
        }
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    start: Instant,
    settings: Mutex<Settings>,
    conns: Mutex<Vec<Weak<Conn>>>,
    counters: Counters,
    /// The bandwidth of each direction, shared by every connection: up, down.
    wires: [Mutex<Wire>; 2],
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The wire of one direction. Locked after a pipe's state, never before.
    fn wire(&self, up: bool) -> MutexGuard<'_, Wire> {
        self.wires[usize::from(!up)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Vec<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.strong_count() > 0);
        conns.iter().filter_map(Weak::upgrade).collect()
    }

    /// Applies `settings` to the link and to every open connection.
    fn apply(&self, settings: Settings) {
        *self.settings() = settings;
        let now = self.now_ns();
        self.wire(true).restart(now);
        self.wire(false).restart(now);
        for conn in self.live() {
            for (pipe, params) in [(&conn.up, settings.up), (&conn.down, settings.down)] {
                let mut s = pipe.lock();
                s.link.set_params(params);
                s.link.set_partitioned(settings.partitioned, now);
                if let Some(r) = &mut s.resets {
                    r.set_rate(params.reset_rate_per_s, now);
                }
                drop(s);
                pipe.changed.notify_all();
            }
        }
    }
}

/// The running emulator.
#[derive(Debug, Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
    /// The control port's address, when there is one.
    pub control: Option<SocketAddr>,
    /// Every listening address with the target it forwards to.
    pub listening: Vec<(SocketAddr, SocketAddr)>,
}

impl Emulator {
    /// Binds every listen port of `maps` (and `control`, a line-based control port), then
    /// serves them on background threads.
    pub fn start(
        maps: &[PortMap],
        settings: Settings,
        control: Option<SocketAddr>,
    ) -> anyhow::Result<Emulator> {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            settings: Mutex::new(settings),
            conns: Mutex::new(Vec::new()),
            counters: Counters::default(),
            wires: Default::default(),
        });
        let mut listeners = Vec::new();
        for m in maps {
            for i in 0..m.ports {
                let mut listen = m.listen;
                listen.set_port(m.listen.port() + i);
                let mut target = m.target;
                target.set_port(m.target.port() + i);
                let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
                listeners.push((l.local_addr()?, target, l));
            }
        }
        let control_listener = match control {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("binding the control port {addr}"))?,
            ),
            None => None,
        };
        let emulator = Emulator {
            shared: shared.clone(),
            control: control_listener
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?,
            listening: listeners.iter().map(|(l, t, _)| (*l, *t)).collect(),
        };
        for (_, target, listener) in listeners {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(shared, listener, target));
        }
        if let Some(listener) = control_listener {
            let emulator = emulator.clone();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let emulator = emulator.clone();
                    std::thread::spawn(move || {
                        let _ = control_session(&emulator, client);
                    });
                }
            });
        }
        Ok(emulator)
    }

    pub fn settings(&self) -> Settings {
        *self.shared.settings()
    }

    /// Applies `settings` to the link and every open connection.
    pub fn apply(&self, settings: Settings) {
        self.shared.apply(settings);
    }

    /// Resets every open connection now; returns how many.
    pub fn reset_all(&self) -> usize {
        let live = self.shared.live();
        for c in &live {
            c.reset();
        }
        self.shared
            .counters
            .resets
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        live.len()
    }

    /// One line: the settings and the counters.
    pub fn status(&self) -> String {
        let s = self.settings();
        let c = &self.shared.counters;
        format!(
            "partitioned={} open={} connections={} resets={} bytes_up={} bytes_down={} up=[{}] down=[{}]",
            s.partitioned,
            self.shared.live().len(),
            c.connections.load(Ordering::Relaxed),
            c.resets.load(Ordering::Relaxed),
            c.bytes_up.load(Ordering::Relaxed),
            c.bytes_down.load(Ordering::Relaxed),
            s.up,
            s.down
        )
    }

    /// Carries out one control command (see `docs/wanem.md`); the answer starts `ok` or `error`.
    pub fn command(&self, line: &str) -> String {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("status"), None) => format!("ok {}", self.status()),
            (Some("partition"), Some(on @ ("on" | "off"))) if words.next().is_none() => {
                let mut s = self.settings();
                s.partitioned = on == "on";
                self.apply(s);
                format!("ok partitioned={}", s.partitioned)
            }
            (Some("reset"), None) => format!("ok reset={}", self.reset_all()),
            (Some("set"), first) => {
                let (which, rest): (&str, Vec<&str>) = match first {
                    Some(w @ ("up" | "down" | "both")) => (w, words.collect()),
                    Some(w) => ("both", std::iter::once(w).chain(words).collect()),
                    None => {
                        return "error set needs key=value words, e.g. set up latency=25ms".into();
                    }
                };
                let mut s = self.settings();
                let text = rest.join(" ");
                let result = (|| {
                    if which != "down" {
                        s.up = s.up.apply(&text)?;
                    }
                    if which != "up" {
                        s.down = s.down.apply(&text)?;
                    }
                    Ok::<_, super::link::ParamError>(())
                })();
                match result {
                    Ok(()) => {
                        self.apply(s);
                        format!("ok up=[{}] down=[{}]", s.up, s.down)
                    }
                    Err(e) => format!("error {e}"),
                }
            }
            _ => format!(
                "error unknown command `{}` (status, partition on|off, reset, set [up|down|both] key=value...)",
                line.trim()
            ),
        }
    }
}

fn control_session(emulator: &Emulator, client: TcpStream) -> std::io::Result<()> {
    let mut out = client.try_clone()?;
    for line in BufReader::new(client).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        writeln!(out, "{}", emulator.command(&line))?;
    }
    Ok(())
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener, target: SocketAddr) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("strait-wanem: accept on {target}'s listener: {e}");
                continue;
            }
        };
        let upstream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("strait-wanem: connecting to {target}: {e}; closing the client");
                continue;
            }
        };
        if let Err(e) = start_conn(&shared, client, upstream) {
            eprintln!("strait-wanem: a connection to {target}: {e}");
        }
    }
}

fn start_conn(shared: &Arc<Shared>, client: TcpStream, target: TcpStream) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    target.set_nodelay(true)?;
    let n = shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let settings = *shared.settings();
    let now = shared.now_ns();
    let seed = settings.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let pipe = |params: LinkParams, seed: u64, resets: Option<ResetClock>| {
        let mut link = Direction::new(params, seed);
        link.set_partitioned(settings.partitioned, now);
        Pipe {
            state: Mutex::new(PipeState {
                link,
                eof: false,
                closed: false,
                resets,
            }),
            changed: Condvar::new(),
        }
    };
    let conn = Arc::new(Conn {
        up: pipe(
            settings.up,
            seed,
            Some(ResetClock::new(settings.up.reset_rate_per_s, now, seed ^ 1)),
        ),
        down: pipe(settings.down, seed ^ 2, None),
        client: client.try_clone()?,
        target: target.try_clone()?,
    });
    shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&conn));
    let up_src = client.try_clone()?;
    let down_src = target.try_clone()?;
    for (up, src, dst) in [(true, up_src, target), (false, down_src, client)] {
        let (c, s) = (conn.clone(), shared.clone());
        std::thread::spawn(move || reader(&s, &c, up, src));
        let (c, s) = (conn.clone(), shared.clone());
        std::thread::spawn(move || writer(&s, &c, up, dst));
    }
    Ok(())
}

fn pipe(conn: &Conn, up: bool) -> &Pipe {
    if up { &conn.up } else { &conn.down }
}

/// Socket → direction, while there is room.
fn reader(shared: &Shared, conn: &Conn, up: bool, mut src: TcpStream) {
    let pipe = pipe(conn, up);
    let mut buf = vec![0u8; READ_BYTES_MAX];
    loop {
        let size = {
            let mut s = pipe.lock();
            while s.link.buffered_bytes() >= DIRECTION_BUFFER_BYTES_MAX && !s.closed {
                s = pipe.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.closed {
                return;
            }
            // A read about a millisecond's worth of the bandwidth, so a capped link releases
            // bytes smoothly rather than in 64 KiB bursts.
            s.link
                .params()
                .bandwidth_bytes_per_s
                .map_or(READ_BYTES_MAX, |bw| {
                    ((bw / 1000) as usize).clamp(READ_BYTES_MIN, READ_BYTES_MAX)
                })
        };
        let n = src.read(&mut buf[..size]).unwrap_or(0);
        let mut s = pipe.lock();
        if n == 0 {
            s.eof = true;
        } else {
            let mut wire = shared.wire(up);
            s.link
                .handle_bytes(buf[..n].to_vec(), &mut wire, shared.now_ns());
        }
        drop(s);
        pipe.changed.notify_all();
        if n == 0 {
            return;
        }
    }
}

/// Direction → socket, each chunk at its release time.
fn writer(shared: &Shared, conn: &Conn, up: bool, mut dst: TcpStream) {
    let pipe = pipe(conn, up);
    let counter = if up {
        &shared.counters.bytes_up
    } else {
        &shared.counters.bytes_down
    };
    let mut out = Vec::with_capacity(READ_BYTES_MAX);
    loop {
        {
            let mut s = pipe.lock();
            loop {
                if s.closed {
                    return;
                }
                let now = shared.now_ns();
                let reset_at = s.resets.as_ref().map_or(u64::MAX, ResetClock::next_ns);
                if now >= reset_at {
                    drop(s);
                    shared.counters.resets.fetch_add(1, Ordering::Relaxed);
                    conn.reset();
                    return;
                }
                if s.link.poll_release(now, &mut out) > 0 {
                    break;
                }
                if s.eof && s.link.buffered_bytes() == 0 {
                    drop(s);
                    let _ = dst.shutdown(Shutdown::Write);
                    return;
                }
                let wake = s.link.next_release_ns().unwrap_or(u64::MAX).min(reset_at);
                let wait = Duration::from_nanos(wake.saturating_sub(now)).min(IDLE_WAIT);
                s = pipe
                    .changed
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        pipe.changed.notify_all();
        if dst.write_all(&out).is_err() {
            conn.reset();
            return;
        }
        counter.fetch_add(out.len() as u64, Ordering::Relaxed);
        out.clear();
    }
}

/// Sends one control command to a running emulator's control port and returns the answer.
pub fn control_call(addr: SocketAddr, command: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)
        .with_context(|| format!("connecting to the control port {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        bail!("the control port {addr} closed without answering");
    }
    Ok(line.trim_end().to_string())
}
