//! `strait demo`: several sites replicating on loopback, in one command and with no
//! configuration (`docs/demo.md`).
//!
//! - `cluster`: the sites as child processes of this binary (a locator and a server each,
//!   a full mesh of gateway senders, free ports, a temporary directory), and their stop.
//! - `client`: a blocking RESP client for the writer, the INFO polls and the verification.
//! - `data`: what each site writes (keys and values are functions of site and index), and
//!   the check of what a site holds: an order-independent digest and per-entry comparison.
//! - `stats`: INFO parsed, the live table, the drain condition (pure).
//!
//! The run: start the sites, wait until every link is connected, write at every site (site 1
//! most) on a writer thread while the main thread polls every server's INFO and redraws the
//! table, wait until every queue is empty and every site has applied what it should (giving
//! up when nothing moves for `STALL_TIMEOUT`), read every site's entries and compare them,
//! stop the processes, remove the directory, print the summary on stdout. SIGINT or SIGTERM
//! stops everything the same way and exits 130; a second one exits at once.

mod client;
mod cluster;
mod data;
mod stats;

use anyhow::{Context, bail};
use clap::Args;
use client::Client;
use cluster::Cluster;
pub use cluster::EXIT_WITH_PARENT_ENV;
use data::{Check, Plan, REGION};
use stats::Sample;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strait_net::resp::Reply;

/// Most sites a demo runs.
pub const SITES_MAX: u8 = 5;
/// Most bytes of values one site may be asked to hold (`--entries` × `--value-size`).
pub const DATA_BYTES_MAX: u64 = 4 << 30;
/// Largest `--value-size`.
pub const VALUE_BYTES_MAX: u32 = 1 << 20;
/// Most entries per pipelined round trip of the writer.
pub const WRITE_BATCH_ENTRIES: u64 = 256;
/// Most request bytes per round trip: half the server's read size (`CLIENT_READ_BYTES`), so
/// a batch is normally read, and answered, in one go.
pub const WRITE_BATCH_BYTES: u64 = (strait_node::server::CLIENT_READ_BYTES / 2) as u64;
/// A SET's bytes besides its value: the command, the key and the RESP framing.
const SET_OVERHEAD_BYTES: u64 = 48;
/// Keys per SCAN page and per MGET of the verification.
pub const VERIFY_BATCH_KEYS: usize = 1000;
/// How long the gateway links may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the replication may go without any progress before the demo gives up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server that stopped answering gets to show that it exited.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// How often the servers' INFO is read.
const POLL: Duration = Duration::from_millis(100);
/// How often the live table is redrawn on a terminal; appended when stderr is not one.
const REFRESH_TTY: Duration = Duration::from_millis(500);
const REFRESH_LOG: Duration = Duration::from_secs(2);
/// The exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report).
const EXIT_INTERRUPTED: u8 = 130;

/// `strait demo`'s options.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Entries written at site 1; every other site writes 1 % of that (at least one).
    #[arg(long, default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    entries: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(VALUE_BYTES_MAX)))]
    value_size: u32,
    /// Entries per second written at site 1 (0: as fast as the site takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Number of sites, each a locator and a server, all replicating to each other.
    #[arg(long, default_value_t = 3,
        value_parser = clap::value_parser!(u8).range(2..=i64::from(SITES_MAX)))]
    sites: u8,
    /// Shards per server.
    #[arg(long, default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Keep the demo's directory (configurations, logs, queues) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// The run was stopped by SIGINT or SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// Fails with [`Interrupted`] once a signal came.
fn interrupted(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!(Interrupted);
    }
    Ok(())
}

/// Sleeps `d`, in slices, unless a signal comes.
fn pause(d: Duration, stop: &AtomicBool) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    loop {
        interrupted(stop)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Runs the demo; the process's exit code: 0 when every site holds what was written, 1 when
/// not or on an error, 130 when interrupted.
pub fn run(args: DemoArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal sets the flag; a second one, with the flag set, exits at once.
        let installed = signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(EXIT_INTERRUPTED),
            stop.clone(),
        )
        .and_then(|_| signal_hook::flag::register(signal, stop.clone()));
        if let Err(e) = installed {
            eprintln!("strait demo: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut dir = None;
    let result = demo(&args, &stop, &mut dir);
    // Everything is stopped and removed by now (the cluster and the directory are dropped).
    let dir_fate = match &dir {
        Some(d) if d.exists() => format!("kept {}", d.display()),
        Some(d) => format!("removed {}", d.display()),
        None => String::new(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(_) if stop.load(Ordering::SeqCst) => {
            eprintln!("strait demo: interrupted; every process stopped, {dir_fate}");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("strait demo: {e:#}");
            if !dir_fate.is_empty() {
                eprintln!("strait demo: every process stopped, {dir_fate}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Writes the live table on stderr: redrawn in place on a terminal, appended otherwise.
struct Display {
    tty: bool,
    /// Lines of the last drawing.
    drawn: usize,
    /// When the last drawing was made (or the display created).
    last: Instant,
}

impl Display {
    fn new() -> Display {
        Display {
            tty: std::io::stderr().is_terminal(),
            drawn: 0,
            last: Instant::now(),
        }
    }

    /// Whether a refresh is due.
    fn due(&self) -> bool {
        let every = if self.tty { REFRESH_TTY } else { REFRESH_LOG };
        self.last.elapsed() >= every
    }

    /// Shows `lines`.
    fn show(&mut self, lines: &[String]) {
        self.last = Instant::now();
        let mut err = std::io::stderr().lock();
        let mut text = String::new();
        if self.tty && self.drawn > 0 {
            // Back to the first line of the last drawing, and clear from there.
            text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        self.drawn = lines.len();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }
}

/// Connections to every server for INFO, and the samples they give.
struct Monitor {
    clients: Vec<Client>,
    ports: Vec<u16>,
    started: Instant,
}

impl Monitor {
    fn sample(&mut self, written: &[AtomicU64]) -> anyhow::Result<Sample> {
        let mut servers = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let text = c
                .info()
                .with_context(|| format!("reading site {}'s INFO", i + 1))?;
            servers.push(stats::parse_info(&text).map_err(|e| {
                anyhow::anyhow!("site {}'s INFO (port {}): {e}", i + 1, self.ports[i])
            })?);
        }
        Ok(Sample {
            at_ms: self.started.elapsed().as_millis() as u64,
            written: written.iter().map(|w| w.load(Ordering::SeqCst)).collect(),
            servers,
        })
    }
}

/// Writes site `site`'s entries `from..to` in one pipelined round trip.
fn write_range(
    c: &mut Client,
    plan: &Plan,
    site: u8,
    from: u64,
    to: u64,
    value: &mut Vec<u8>,
) -> anyhow::Result<()> {
    for i in from..to {
        data::value(site, i, plan.value_size, value);
        c.push(&[b"SET", data::key(site, i).as_bytes(), value.as_slice()]);
    }
    let replies = c
        .replies()
        .with_context(|| format!("writing at site {site}"))?;
    if let Some((i, r)) = replies
        .iter()
        .enumerate()
        .find(|(_, r)| **r != Reply::Simple(b"OK".to_vec()))
    {
        bail!(
            "site {site} answered SET {} with {r:?}",
            data::key(site, from + i as u64)
        );
    }
    Ok(())
}

/// The writer thread: site 1's entries in pipelined batches, paced to `rate` per second
/// when not 0, each other site's share after each batch. Returns how long it took.
fn write_all(
    plan: &Plan,
    ports: &[u16],
    rate: u64,
    stop: &AtomicBool,
    written: &[AtomicU64],
) -> anyhow::Result<Duration> {
    let mut clients = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let mut c = Client::connect(port).with_context(|| format!("site {}", i + 1))?;
        c.call(&["REGION", REGION])?;
        clients.push(c);
    }
    // Paced writes go in bursts of at most a twentieth of a second's worth.
    let fits = WRITE_BATCH_BYTES / (plan.value_size as u64 + SET_OVERHEAD_BYTES);
    let mut batch = fits.clamp(1, WRITE_BATCH_ENTRIES);
    if rate > 0 {
        batch = batch.min((rate / 20).max(1));
    }
    let started = Instant::now();
    let mut done = vec![0u64; ports.len()];
    let mut value = Vec::with_capacity(plan.value_size);
    while done[0] < plan.per_site[0] {
        interrupted(stop)?;
        if rate > 0 {
            let due = Duration::from_secs_f64(done[0] as f64 / rate as f64);
            pause(due.saturating_sub(started.elapsed()), stop)?;
        }
        let to = (done[0] + batch).min(plan.per_site[0]);
        write_range(&mut clients[0], plan, 1, done[0], to, &mut value)?;
        done[0] = to;
        written[0].store(to, Ordering::SeqCst);
        for (i, c) in clients.iter_mut().enumerate().skip(1) {
            let site = i as u8 + 1;
            let due = plan.due(site, done[0]);
            if due > done[i] {
                write_range(c, plan, site, done[i], due, &mut value)?;
                done[i] = due;
                written[i].store(due, Ordering::SeqCst);
            }
        }
    }
    Ok(started.elapsed())
}

/// Reads every entry of region `demo` at `port` (SCAN, then MGET of each page) into `check`;
/// returns DBSIZE as the server counts it.
fn read_site(port: u16, check: &mut Check<'_>, stop: &AtomicBool) -> anyhow::Result<u64> {
    let mut c = Client::connect(port)?;
    c.call(&["REGION", REGION])?;
    let mut cursor = b"0".to_vec();
    let count = VERIFY_BATCH_KEYS.to_string();
    loop {
        interrupted(stop)?;
        let reply = c.call(&[&b"SCAN"[..], &cursor, b"COUNT", count.as_bytes()])?;
        let Reply::Array(Some(mut parts)) = reply else {
            bail!("port {port} answered SCAN with {reply:?}");
        };
        let (Some(Reply::Array(Some(keys))), Some(Reply::Bulk(Some(next)))) =
            (parts.pop(), parts.pop())
        else {
            bail!("port {port} answered SCAN with something other than [cursor, keys]");
        };
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter_map(|k| match k {
                Reply::Bulk(Some(k)) => Some(k),
                _ => None,
            })
            .collect();
        if !keys.is_empty() {
            let mut mget: Vec<&[u8]> = vec![b"MGET"];
            mget.extend(keys.iter().map(Vec::as_slice));
            let Reply::Array(Some(values)) = c.call(&mget)? else {
                bail!("port {port} answered MGET with something other than an array");
            };
            for (k, v) in keys.iter().zip(values) {
                // A key destroyed between SCAN and MGET is not held any more.
                if let Reply::Bulk(Some(v)) = v {
                    check.entry(k, &v);
                }
            }
        }
        if next == b"0" {
            break;
        }
        cursor = next;
    }
    match c.call(&["DBSIZE"])? {
        Reply::Integer(n) => Ok(n.max(0) as u64),
        other => bail!("port {port} answered DBSIZE with {other:?}"),
    }
}

/// The demo; `Ok(true)` when every site holds exactly what was written. `dir` gets the
/// demo's directory once it exists.
fn demo(
    args: &DemoArgs,
    stop: &Arc<AtomicBool>,
    dir: &mut Option<PathBuf>,
) -> anyhow::Result<bool> {
    let value_size = args.value_size as usize;
    let plan = Plan::new(args.sites, args.entries, value_size);
    let bytes = plan.total().saturating_mul(u64::from(args.value_size));
    if bytes > DATA_BYTES_MAX {
        bail!(
            "--entries {} × --value-size {} is {} MiB per site, more than the demo's limit of {} MiB",
            args.entries,
            args.value_size,
            bytes >> 20,
            DATA_BYTES_MAX >> 20
        );
    }
    let exe = std::env::current_exe().context("finding the strait binary to start the sites")?;
    let mut root = tempfile::Builder::new()
        .prefix("strait-demo-")
        .tempdir()
        .context("creating the demo's directory")?;
    root.disable_cleanup(args.keep);
    *dir = Some(root.path().to_path_buf());
    let n = usize::from(args.sites);
    eprintln!(
        "strait demo: {n} sites replicating to each other on loopback (a locator and a server with {} shards each), in {}",
        args.shards,
        root.path().display()
    );
    let mut cluster = Cluster::start(
        exe,
        root.path(),
        args.sites,
        args.shards,
        stop,
        &mut |line| eprintln!("{line}"),
    )?;
    let ports: Vec<u16> = cluster.sites.iter().map(|s| s.client_port).collect();
    let started = Instant::now();
    let mut monitor = Monitor {
        clients: ports
            .iter()
            .map(|&p| Client::connect(p))
            .collect::<anyhow::Result<_>>()?,
        ports: ports.clone(),
        started,
    };
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());

    // Until every sender's dispatchers are connected.
    let links = n * (n - 1);
    eprintln!("  waiting for the {links} gateway links to connect");
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        interrupted(stop)?;
        cluster.check_alive()?;
        let s = monitor
            .sample(&written)
            .map_err(|e| cluster.explain(e, EXIT_WAIT))?;
        if s.connected() {
            break;
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = s
                .links()
                .into_iter()
                .filter(|&(f, t)| s.link(f, t).connected < s.link(f, t).dispatchers.max(1))
                .map(|(f, t)| format!("{f} -> {t}"))
                .collect();
            bail!(
                "links {} did not connect within {} s; the logs are in {}",
                waiting.join(", "),
                CONNECT_TIMEOUT.as_secs(),
                root.path().display()
            );
        }
        pause(POLL, stop)?;
    }
    eprintln!(
        "  all {links} links connected after {:.1} s; writing {} entries of {} bytes at site 1{}, {} at each other site",
        started.elapsed().as_secs_f64(),
        plan.per_site[0],
        value_size,
        if args.rate > 0 {
            format!(" ({} per second)", args.rate)
        } else {
            String::new()
        },
        plan.per_site[1]
    );

    // Write on a thread of its own; show the table here until everything is applied.
    let first = monitor.sample(&written)?;
    let writer = {
        let (plan, ports, written, rate) =
            (plan.clone(), ports.clone(), written.clone(), args.rate);
        let stop = stop.clone();
        std::thread::spawn(move || write_all(&plan, &ports, rate, &stop, &written))
    };
    // On an error the writer is left to fail on its own once the servers are stopped.
    let outcome = replicate(
        &mut cluster,
        &mut monitor,
        &plan,
        &written,
        first,
        writer,
        stop,
    )?;

    eprintln!("  verifying: reading every entry at every site");
    let mut checks = Vec::new();
    let mut dbsizes = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let mut c = Check::new(&plan);
        let read = read_site(port, &mut c, stop)
            .with_context(|| format!("reading site {}'s entries", i + 1));
        dbsizes.push(read.map_err(|e| cluster.explain(e, EXIT_WAIT))?);
        checks.push(c);
    }
    let stopped = cluster.stop();
    drop(cluster);
    let kept = args.keep;
    let path = root.path().to_path_buf();
    if !kept {
        root.close()
            .with_context(|| format!("removing {}", path.display()))?;
    }
    let (text, identical) = summary(&Summary {
        plan: &plan,
        checks: &checks,
        dbsizes: &dbsizes,
        outcome: &outcome,
        stopped: &stopped,
        dir: &path,
        kept,
    });
    print!("{text}");
    let _ = std::io::stdout().flush();
    Ok(identical)
}

/// How the replication went.
struct Outcome {
    /// The writer's time.
    writing: Duration,
    /// From the first write until every site had applied everything.
    elapsed: Duration,
    /// The last sample.
    last: Sample,
}

/// Shows the table while the writer writes and until every queue is drained.
fn replicate(
    cluster: &mut Cluster,
    monitor: &mut Monitor,
    plan: &Plan,
    written: &[AtomicU64],
    first: Sample,
    writer: std::thread::JoinHandle<anyhow::Result<Duration>>,
    stop: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let expected = plan.expected_applied();
    let mut display = Display::new();
    let mut shown = first.clone();
    let mut writer = Some(writer);
    let mut writing = None;
    let (mut progress, mut moved) = (first.progress(), Instant::now());
    let title = |w: &Option<Duration>| if w.is_some() { "draining" } else { "writing" };
    loop {
        interrupted(stop)?;
        cluster.check_alive()?;
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            let w = writer.take().map(|w| w.join());
            match w {
                Some(Ok(Ok(took))) => writing = Some(took),
                Some(Ok(Err(e))) => return Err(cluster.explain(e, EXIT_WAIT)),
                _ => bail!("the writer thread panicked"),
            }
        }
        let now = monitor
            .sample(written)
            .map_err(|e| cluster.explain(e, EXIT_WAIT))?;
        let done = writing.is_some() && now.drained(&expected);
        if display.due() || done {
            display.show(&stats::render(&shown, &now, title(&writing)));
            shown = now.clone();
        }
        if done {
            return Ok(Outcome {
                writing: writing.unwrap_or_default(),
                elapsed: Duration::from_millis(now.at_ms - first.at_ms),
                last: now,
            });
        }
        if now.progress() != progress {
            (progress, moved) = (now.progress(), Instant::now());
        } else if moved.elapsed() >= STALL_TIMEOUT {
            bail!(
                "nothing moved for {} s and the queues are not drained (see the table above)",
                STALL_TIMEOUT.as_secs()
            );
        }
        pause(POLL, stop)?;
    }
}

struct Summary<'a> {
    plan: &'a Plan,
    checks: &'a [Check<'a>],
    dbsizes: &'a [u64],
    outcome: &'a Outcome,
    stopped: &'a cluster::StopReport,
    dir: &'a std::path::Path,
    kept: bool,
}

/// The summary, and whether every site holds exactly what was written.
fn summary(s: &Summary<'_>) -> (String, bool) {
    let plan = s.plan;
    let last = &s.outcome.last;
    let mut out = String::from("\nstrait demo: summary\n");
    let others = plan.per_site[1..]
        .iter()
        .enumerate()
        .map(|(i, n)| format!(", {n} at site {}", i + 2))
        .collect::<String>();
    let secs = |d: Duration| d.as_secs_f64().max(1e-3);
    out.push_str(&format!(
        "  written      {} entries at site 1{others} ({}-byte values) in {:.2} s: {:.0} entries/s\n",
        plan.per_site[0],
        plan.value_size,
        secs(s.outcome.writing),
        plan.total() as f64 / secs(s.outcome.writing),
    ));
    let sent = last.sent();
    out.push_str(&format!(
        "  replicated   {sent} events over {} links, all applied {:.2} s after the first write: {:.0} events/s\n",
        last.links().len(),
        secs(s.outcome.elapsed),
        sent as f64 / secs(s.outcome.elapsed),
    ));
    for (from, to) in last.links() {
        out.push_str(&format!(
            "  link {from} -> {to}  {} events sent\n",
            last.link(from, to).distributed
        ));
    }
    for (i, server) in last.servers.iter().enumerate() {
        let r = server.receiver.unwrap_or_default();
        out.push_str(&format!(
            "  site {}       applied {} (duplicates {}, conflicts {}, dead letters {})\n",
            i + 1,
            r.applied,
            r.duplicates,
            r.conflicts,
            r.dead_lettered
        ));
    }
    let total = plan.total();
    let want = plan.digest();
    let all_right = s
        .checks
        .iter()
        .zip(s.dbsizes)
        .all(|(c, &n)| c.complete() && c.digest == want && n == total);
    if all_right {
        out.push_str(&format!(
            "  verified     identical: every site holds the {total} entries written (digest {want})\n"
        ));
    } else {
        out.push_str(&format!(
            "  verified     DIFFERENT: the sites do not all hold the {total} entries written (digest {want})\n"
        ));
        for (i, (c, n)) in s.checks.iter().zip(s.dbsizes).enumerate() {
            out.push_str(&format!(
                "    site {}: {} entries (DBSIZE {n}), digest {}: {} missing, {} with another value, {} not written{}{}\n",
                i + 1,
                c.digest.entries,
                c.digest,
                c.missing(),
                c.wrong_value,
                c.unexpected,
                if c.repeated > 0 {
                    format!(", {} keys scanned twice", c.repeated)
                } else {
                    String::new()
                },
                if c.examples.is_empty() {
                    String::new()
                } else {
                    format!("; e.g. {}", c.examples.join(", "))
                }
            ));
        }
    }
    let fate = if s.kept { "kept" } else { "removed" };
    out.push_str(&format!(
        "  stopped      {} processes; {fate} {}\n",
        s.stopped.stopped,
        s.dir.display()
    ));
    for what in &s.stopped.killed {
        out.push_str(&format!(
            "  warning      {what} did not stop on SIGTERM and was killed\n"
        ));
    }
    for what in &s.stopped.failed {
        out.push_str(&format!("  warning      {what} exited with a failure\n"));
    }
    (out, all_right)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a site holds: every planned entry but those `skip` names.
    fn site<'a>(plan: &'a Plan, skip: &[(u8, u64)]) -> Check<'a> {
        let mut c = Check::new(plan);
        let mut v = Vec::new();
        for (s, &n) in plan.per_site.iter().enumerate() {
            let site = s as u8 + 1;
            for i in (0..n).filter(|i| !skip.contains(&(site, *i))) {
                data::value(site, i, plan.value_size, &mut v);
                c.entry(data::key(site, i).as_bytes(), &v);
            }
        }
        c
    }

    fn text(plan: &Plan, checks: &[Check<'_>], dbsizes: &[u64]) -> (String, bool) {
        let outcome = Outcome {
            writing: Duration::from_millis(500),
            elapsed: Duration::from_millis(800),
            last: Sample {
                at_ms: 800,
                written: plan.per_site.clone(),
                servers: vec![Default::default(); plan.per_site.len()],
            },
        };
        summary(&Summary {
            plan,
            checks,
            dbsizes,
            outcome: &outcome,
            stopped: &cluster::StopReport::default(),
            dir: std::path::Path::new("/tmp/x"),
            kept: false,
        })
    }

    #[test]
    fn sites_holding_everything_written_are_identical() {
        let plan = Plan::new(2, 100, 8);
        let (out, ok) = text(&plan, &[site(&plan, &[]), site(&plan, &[])], &[101, 101]);
        assert!(ok, "{out}");
        assert!(
            out.contains("identical: every site holds the 101 entries written"),
            "{out}"
        );
        assert!(out.contains("written      100 entries at site 1, 1 at site 2"));
    }

    #[test]
    fn a_missing_entry_or_a_wrong_count_is_a_failure_naming_the_site() {
        let plan = Plan::new(2, 100, 8);
        let (out, ok) = text(
            &plan,
            &[site(&plan, &[]), site(&plan, &[(1, 7)])],
            &[101, 100],
        );
        assert!(!ok);
        assert!(out.contains("DIFFERENT"), "{out}");
        assert!(
            out.contains("site 2: 100 entries (DBSIZE 100)") && out.contains("1 missing"),
            "{out}"
        );
        // The same entries but a server counting otherwise is not identical either.
        let (out, ok) = text(&plan, &[site(&plan, &[]), site(&plan, &[])], &[101, 102]);
        assert!(!ok, "{out}");
    }
}
