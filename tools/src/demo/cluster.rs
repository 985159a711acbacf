//! The demo's sites as child processes: [`Cluster`] starts, for each site, a locator and a
//! server by running this same `strait` binary again (`start locator`, `start server --config
//! site.toml`), each logging to a file in the site's folder, and stops them: SIGTERM, then
//! SIGKILL after [`STOP_GRACE`], every child reaped. Dropping a [`Cluster`] stops it, so no
//! error path leaves a process behind.
//!
//! Ports: locators take a free port themselves (`--port 0`) and the demo reads it from the
//! locator's log line; a server's client port and receiver range are picked by
//! [`PortPicker`] (proved free by a bind, below the kernel's usual ephemeral range so no
//! outgoing connection takes them meanwhile), and a server that still finds one taken is
//! started again on fresh ports, up to [`START_ATTEMPTS`] times.
//!
//! Layout of the demo's directory: `site<N>/site.toml`, `site<N>/server/` (the server's
//! directory), `site<N>/locator/`, `site<N>/server.log`, `site<N>/locator.log`.

use super::stats::sender_id;
use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use std::collections::HashSet;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a process may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process gets to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Times a server is started on fresh ports when another process took one of its ports.
pub const START_ATTEMPTS: u32 = 3;
/// What a server's log says when another process took one of its ports after the demo
/// picked them: it is then started again on fresh ones.
const PORT_TAKEN: [&str; 3] = ["in use", "free ports", "cannot listen"];
/// Lines of a failed process's log that an error shows.
pub const LOG_TAIL_LINES: usize = 15;
/// How often a wait for a process looks again.
const POLL: Duration = Duration::from_millis(20);
/// Where picked ports come from: below Linux's default ephemeral range (32768–60999).
const PORTS: std::ops::Range<u16> = 20_000..32_000;
/// How often locators exchange their maps of sites: fast, so the mesh forms in a second.
const EXCHANGE_INTERVAL_MS: u64 = 200;

/// Picks free loopback ports, never the same one twice.
#[derive(Debug)]
pub struct PortPicker {
    next: u64,
    given: HashSet<u16>,
}

impl PortPicker {
    /// Tries ports from `PORTS.start + start` on (wrapping); a start taken from the process
    /// id keeps demos running side by side from all trying the same ports first.
    pub fn new(start: u64) -> PortPicker {
        PortPicker {
            next: start,
            given: HashSet::new(),
        }
    }

    /// `len` consecutive ports, each free now.
    pub fn range(&mut self, len: u16) -> anyhow::Result<u16> {
        let span = u64::from(PORTS.end - PORTS.start - len);
        for _ in 0..span {
            let base = PORTS.start + (self.next % span) as u16;
            self.next += u64::from(len);
            let ports = base..base + len;
            if ports
                .clone()
                .all(|p| !self.given.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok())
            {
                self.given.extend(ports);
                return Ok(base);
            }
        }
        bail!(
            "no {len} free consecutive ports on 127.0.0.1 between {} and {}",
            PORTS.start,
            PORTS.end
        )
    }
}

/// One child process.
#[derive(Debug)]
pub struct Member {
    /// `site 2's server`.
    pub what: String,
    child: Child,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

/// Set by the demo on the members it starts, to its own pid: such a member asks the kernel for
/// SIGTERM when the demo (the thread that started it, the demo's main thread) exits.
pub const EXIT_WITH_PARENT_ENV: &str = "STRAIT_EXIT_WITH_PARENT";

impl Member {
    fn spawn(what: String, exe: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Member> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        // The demo reads the members' start lines in the default log format and level.
        let child = Command::new(exe)
            .args(args)
            .env_remove("STRAIT_LOG_FORMAT")
            .env_remove("STRAIT_LOG")
            // It ends with the demo, even a demo killed with SIGKILL (see `strait`'s main).
            .env(EXIT_WITH_PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {what} ({})", exe.display()))?;
        Ok(Member {
            what,
            child,
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (reaped then).
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[from..].iter().map(|l| format!("    {l}\n")).collect()
    }

    fn died(&self, status: ExitStatus) -> anyhow::Error {
        anyhow::anyhow!(
            "{} exited ({status}); the end of {}:\n{}",
            self.what,
            self.log.display(),
            self.log_tail()
        )
    }

    /// Waits until its log has a line containing `marker`; returns the line.
    fn wait_line(&mut self, marker: &str, stop: &AtomicBool) -> anyhow::Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.exited() {
                return Err(self.died(status));
            }
            if stop.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not start within {} s; the end of {}:\n{}",
                    self.what,
                    START_TIMEOUT.as_secs(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn signal(&mut self, signal: Signal) {
        if self.exited().is_none() {
            // The child is not reaped yet, so its pid cannot have been reused.
            if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
                let _ = kill_process(pid, signal);
            }
        }
    }
}

/// One site's ports and folder.
#[derive(Clone, Debug)]
pub struct Site {
    pub id: u8,
    pub dir: PathBuf,
    pub locator_port: u16,
    pub client_port: u16,
    /// The server's admin API (`http-service-port`): `strait list gateways --url
    /// http://127.0.0.1:<port>` works while the demo runs.
    pub admin_port: u16,
    /// The receiver's ports: `receiver_base..receiver_base + receiver_ports`.
    pub receiver_base: u16,
    pub receiver_ports: u16,
}

/// A string as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Site {
    /// The site's `site.toml`: region `demo` sent by a parallel gateway sender to each of the
    /// other `sites`, and a gateway receiver, everything on 127.0.0.1.
    pub fn config(&self, sites: u8, shards: u16) -> String {
        let id = self.id;
        let others: Vec<u8> = (1..=sites).filter(|&s| s != id).collect();
        let mut c = format!(
            "# strait demo: site {id} of {sites}\n\
             [server]\n\
             name = \"server{id}\"\n\
             distributed-system-id = {id}\n\
             bind-address = \"127.0.0.1\"\n\
             client-port = {port}\n\
             http-service-port = {admin}\n\
             shards = {shards}\n\
             directory = {dir}\n\
             locators = [\"127.0.0.1:{loc}\"]\n",
            port = self.client_port,
            admin = self.admin_port,
            dir = toml_string(&self.dir.join("server").display().to_string()),
            loc = self.locator_port,
        );
        for &to in &others {
            c.push_str(&format!(
                "\n[[gateway-sender]]\nid = \"{}\"\nremote-distributed-system-id = {to}\nparallel = true\n",
                sender_id(to)
            ));
        }
        let ids: Vec<String> = others
            .iter()
            .map(|&to| format!("\"{}\"", sender_id(to)))
            .collect();
        c.push_str(&format!(
            "\n[[region]]\nname = \"{}\"\ntype = \"partition\"\ngateway-sender-ids = [{}]\n",
            super::data::REGION,
            ids.join(", ")
        ));
        c.push_str(&format!(
            "\n[gateway-receiver]\nstart-port = {}\nend-port = {}\nbind-address = \"127.0.0.1\"\n",
            self.receiver_base,
            self.receiver_base + self.receiver_ports - 1
        ));
        c
    }
}

/// The running sites.
#[derive(Debug)]
pub struct Cluster {
    exe: PathBuf,
    shards: u16,
    pub sites: Vec<Site>,
    /// Site `i + 1`'s locator and server (the server pushed once started).
    pub locators: Vec<Member>,
    pub servers: Vec<Member>,
    ports: PortPicker,
    stopped: bool,
}

/// How stopping went.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Processes stopped (all of them reaped).
    pub stopped: usize,
    /// Those that had to be killed after [`STOP_GRACE`].
    pub killed: Vec<String>,
    /// Those that exited with a failure status on their own.
    pub failed: Vec<String>,
}

impl Cluster {
    /// Starts `sites` sites under `root` (which exists) with `exe`; `say` gets a line per
    /// started site. Returns once every server listens; the links may still be connecting.
    pub fn start(
        exe: PathBuf,
        root: &Path,
        sites: u8,
        shards: u16,
        stop: &AtomicBool,
        say: &mut dyn FnMut(String),
    ) -> anyhow::Result<Cluster> {
        let receiver_ports = (2 * shards).max(8);
        let mut c = Cluster {
            exe,
            shards,
            sites: Vec::new(),
            locators: Vec::new(),
            servers: Vec::new(),
            ports: PortPicker::new(u64::from(std::process::id()).wrapping_mul(7919)),
            stopped: false,
        };
        for id in 1..=sites {
            let dir = root.join(format!("site{id}"));
            std::fs::create_dir_all(dir.join("locator"))
                .with_context(|| format!("creating {}", dir.display()))?;
            let locator_port = c.start_locator(id, &dir, stop)?;
            c.sites.push(Site {
                id,
                dir,
                locator_port,
                client_port: 0,
                admin_port: 0,
                receiver_base: 0,
                receiver_ports,
            });
        }
        // Every server at once (they start in parallel), then wait for each.
        for i in 0..c.sites.len() {
            let server = c.spawn_server(i)?;
            c.servers.push(server);
        }
        for i in 0..c.sites.len() {
            c.wait_server(i, stop)?;
            let s = &c.sites[i];
            say(format!(
                "  site {}: locator 127.0.0.1:{} (pid {}), server 127.0.0.1:{} (pid {}), receiver ports {}-{}, admin API http://127.0.0.1:{}",
                s.id,
                s.locator_port,
                c.locators[i].pid(),
                s.client_port,
                c.servers[i].pid(),
                s.receiver_base,
                s.receiver_base + s.receiver_ports - 1,
                s.admin_port
            ));
        }
        Ok(c)
    }

    /// Starts site `id`'s locator on a port of its choosing, told of every earlier site's
    /// locator; returns its port.
    fn start_locator(&mut self, id: u8, dir: &Path, stop: &AtomicBool) -> anyhow::Result<u16> {
        let mut args: Vec<String> = vec![
            "start".into(),
            "locator".into(),
            "--name".into(),
            format!("locator{id}"),
            "--port".into(),
            "0".into(),
            "--bind-address".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.join("locator").display().to_string(),
            "--distributed-system-id".into(),
            id.to_string(),
            "--exchange-interval-ms".into(),
            EXCHANGE_INTERVAL_MS.to_string(),
        ];
        if !self.sites.is_empty() {
            args.push("--remote-locators".into());
            let known: Vec<String> = self
                .sites
                .iter()
                .map(|s| format!("127.0.0.1:{}", s.locator_port))
                .collect();
            args.push(known.join(","));
        }
        let mut m = Member::spawn(
            format!("site {id}'s locator"),
            &self.exe,
            &args,
            dir.join("locator.log"),
        )?;
        let line = m.wait_line(&format!("locator locator{id} listening on"), stop);
        self.locators.push(m);
        let line = line?;
        line.rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("no port in the locator's line `{line}`"))
    }

    /// Picks site `i`'s ports, writes its `site.toml` and starts its server.
    fn spawn_server(&mut self, i: usize) -> anyhow::Result<Member> {
        let (sites, shards) = (self.sites.len() as u8, self.shards);
        let client_port = self.ports.range(1)?;
        let admin_port = self.ports.range(1)?;
        let receiver_base = self.ports.range(self.sites[i].receiver_ports)?;
        let site = &mut self.sites[i];
        site.client_port = client_port;
        site.admin_port = admin_port;
        site.receiver_base = receiver_base;
        let config = site.dir.join("site.toml");
        std::fs::write(&config, site.config(sites, shards))
            .with_context(|| format!("writing {}", config.display()))?;
        let args = [
            "start".to_string(),
            "server".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        Member::spawn(
            format!("site {}'s server", site.id),
            &self.exe,
            &args,
            site.dir.join("server.log"),
        )
    }

    /// Waits until site `i`'s server listens, starting it again on fresh ports when another
    /// process took one of them.
    fn wait_server(&mut self, i: usize, stop: &AtomicBool) -> anyhow::Result<()> {
        let marker = format!("server server{} listening on", self.sites[i].id);
        let mut attempt = 1;
        loop {
            match self.servers[i].wait_line(&marker, stop) {
                Ok(_) => return Ok(()),
                Err(e)
                    if attempt < START_ATTEMPTS
                        && PORT_TAKEN.iter().any(|m| e.to_string().contains(m)) =>
                {
                    attempt += 1;
                    self.servers[i] = self.spawn_server(i)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After `error` talking to a server: the error of a process that exits within
    /// `within` (a crash is what usually closes a connection), else `error`.
    pub fn explain(&mut self, error: anyhow::Error, within: Duration) -> anyhow::Error {
        let deadline = Instant::now() + within;
        loop {
            if let Err(died) = self.check_alive() {
                return died.context(error.to_string());
            }
            if Instant::now() >= deadline {
                return error;
            }
            std::thread::sleep(POLL);
        }
    }

    /// An error naming the first process that exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for m in self.servers.iter_mut().chain(self.locators.iter_mut()) {
            if let Some(status) = m.exited() {
                return Err(m.died(status));
            }
        }
        Ok(())
    }

    /// Stops the servers, then the locators (so the servers can deregister): SIGTERM, a grace
    /// of [`STOP_GRACE`], then SIGKILL; every child is reaped.
    pub fn stop(&mut self) -> StopReport {
        let mut report = StopReport::default();
        if self.stopped {
            return report;
        }
        self.stopped = true;
        for group in [&mut self.servers, &mut self.locators] {
            for m in group.iter_mut() {
                m.signal(Signal::TERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while group.iter_mut().any(|m| m.exited().is_none()) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            for m in group.iter_mut() {
                let status = match m.exited() {
                    Some(status) => status,
                    None => {
                        m.signal(Signal::KILL);
                        report.killed.push(m.what.clone());
                        match m.child.wait() {
                            Ok(status) => status,
                            Err(_) => continue,
                        }
                    }
                };
                m.exited = Some(status);
                report.stopped += 1;
                // A child stopped by a signal it got from the terminal's Ctrl-C is fine too.
                if status.code().is_some_and(|c| c != 0) {
                    report.failed.push(format!("{} ({status})", m.what));
                }
            }
        }
        report
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ranges_are_free_and_never_given_twice() {
        let mut p = PortPicker::new(1);
        let a = p.range(8).unwrap();
        let b = p.range(8).unwrap();
        assert!(PORTS.contains(&a) && PORTS.contains(&(a + 7)));
        assert!(b >= a + 8 || b + 8 <= a, "{a} and {b} overlap");
        // A port in use is never picked: a picker starting where this one did skips it.
        let first = PortPicker::new(1).range(1).unwrap();
        let _held = TcpListener::bind(("127.0.0.1", first)).unwrap();
        assert_ne!(PortPicker::new(1).range(1).unwrap(), first);
    }

    #[test]
    fn config_meshes_the_site_with_every_other() {
        let site = Site {
            id: 2,
            dir: PathBuf::from("/tmp/a \"quoted\" dir"),
            locator_port: 20001,
            client_port: 20002,
            admin_port: 20003,
            receiver_base: 20010,
            receiver_ports: 8,
        };
        let c = site.config(3, 2);
        assert!(c.contains("distributed-system-id = 2\n"));
        assert!(c.contains("http-service-port = 20003\n"));
        assert!(c.contains("directory = \"/tmp/a \\\"quoted\\\" dir/server\"\n"));
        assert!(c.contains("id = \"to-site-1\"\nremote-distributed-system-id = 1\n"));
        assert!(c.contains("id = \"to-site-3\"\nremote-distributed-system-id = 3\n"));
        assert!(!c.contains("to-site-2"));
        assert!(c.contains("gateway-sender-ids = [\"to-site-1\", \"to-site-3\"]"));
        assert!(c.contains("start-port = 20010\nend-port = 20017\n"));
        // What the server reads: the real parser takes it.
        let cfg = strait_node::config::parse(Path::new("site.toml"), &c).unwrap();
        assert_eq!(cfg.senders.len(), 2);
        assert_eq!(
            cfg.regions[0].gateway_sender_ids,
            ["to-site-1", "to-site-3"]
        );
        assert_eq!(cfg.server.directory, site.dir.join("server"));
    }
}
