//! Members in the background, as gfsh starts them: `strait start server|locator --background`
//! runs the same command again as a child in its own process group, its stdout and stderr
//! appended to `<dir>/<kind>.log` and its pid in `<dir>/<kind>.pid`, and returns once the
//! child says it listens (or with the end of its log if it stops first). `strait stop
//! server|locator --dir` sends SIGTERM to the pid in the file and waits for the exit;
//! `strait status server|locator --dir` says whether it runs and where it listens.
//!
//! | item | what it is |
//! |---|---|
//! | [`Kind`] | server or locator: names the pid and log files |
//! | [`start`], [`stop`], [`status`] | the three commands |

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start --background` waits for the member to listen.
pub const START_WAIT_MS: u64 = 60_000;
/// How long `stop` waits for the member to exit after SIGTERM (a server finishes in-flight
/// work and closes its queues first).
pub const STOP_WAIT_MS: u64 = 60_000;
/// How often the waits look again.
const POLL_MS: u64 = 50;
/// Lines of the log shown when a member does not start.
const LOG_TAIL_LINES: usize = 20;

/// Which member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Locator,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Locator => "locator",
        }
    }

    pub fn pid_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.pid", self.name()))
    }

    pub fn log_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.log", self.name()))
    }
}

/// The pid in `dir`'s pid file, if the file exists.
fn read_pid(kind: Kind, dir: &Path) -> anyhow::Result<Option<i32>> {
    let path = kind.pid_file(dir);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
            format!("{} does not hold a process id", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Whether `pid` is a live `strait` process (a pid reused by another program is not).
fn alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|&b| b == 0)
            .next()
            .is_some_and(|exe| exe.ends_with(b"strait"))
    }) && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// The last line of the log that says where the member listens.
fn listening_line(kind: Kind, dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(kind.log_file(dir)).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains(&format!("strait {} ", kind.name())) && l.contains("listening on"))
        .map(str::to_string)
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Runs this program again with `args` (the command line without `--background`) as a
/// member in the background; returns once it listens.
pub fn start(kind: Kind, dir: &Path, args: Vec<String>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(pid) = read_pid(kind, dir)?
        && alive(pid)
    {
        bail!(
            "a {} already runs in {} (pid {pid}); `strait stop {} --dir {}` stops it",
            kind.name(),
            dir.display(),
            kind.name(),
            dir.display()
        );
    }
    let log_path = kind.log_file(dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("opening the log")?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the member")?;
    let pid = child.id();
    let pid_path = kind.pid_file(dir);
    std::fs::write(&pid_path, format!("{pid}\n"))
        .with_context(|| format!("writing {}", pid_path.display()))?;
    let deadline = Instant::now() + Duration::from_millis(START_WAIT_MS);
    let ready = format!("strait {} ", kind.name());
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log_path) {
            let _ = f.seek(SeekFrom::Start(from));
            let _ = f.read_to_string(&mut text);
        }
        if let Some(line) = text
            .lines()
            .find(|l| l.contains(&ready) && l.contains("listening on"))
        {
            println!(
                "{line}\n  pid {pid}, in the background; log {}; `strait stop {} --dir {}` stops it",
                log_path.display(),
                kind.name(),
                dir.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("waiting for the member")? {
            let _ = std::fs::remove_file(&pid_path);
            bail!(
                "the {} did not start ({status}); the end of {}:\n{}",
                kind.name(),
                log_path.display(),
                log_tail(&log_path, from)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the {} (pid {pid}) has not said it listens after {} s; it still runs; see {}",
                kind.name(),
                START_WAIT_MS / 1000,
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// Stops the member whose pid file is in `dir`.
pub fn stop(kind: Kind, dir: &Path) -> anyhow::Result<()> {
    let pid_path = kind.pid_file(dir);
    let Some(pid) = read_pid(kind, dir)? else {
        bail!(
            "no {} was started in the background in {} (no {})",
            kind.name(),
            dir.display(),
            pid_path.display()
        );
    };
    if !alive(pid) {
        let _ = std::fs::remove_file(&pid_path);
        println!(
            "the {} of {} (pid {pid}) was not running; removed its pid file",
            kind.name(),
            dir.display()
        );
        return Ok(());
    }
    let p = Pid::from_raw(pid).context("a pid of 0")?;
    kill_process(p, Signal::TERM).with_context(|| format!("signalling pid {pid}"))?;
    let deadline = Instant::now() + Duration::from_millis(STOP_WAIT_MS);
    while alive(pid) {
        if Instant::now() >= deadline {
            bail!(
                "the {} (pid {pid}) still runs {} s after SIGTERM; see {}",
                kind.name(),
                STOP_WAIT_MS / 1000,
                kind.log_file(dir).display()
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    let _ = std::fs::remove_file(&pid_path);
    println!(
        "stopped the {} of {} (pid {pid})",
        kind.name(),
        dir.display()
    );
    Ok(())
}

/// Says whether the member of `dir` runs, and where it listens. An error when it does not.
pub fn status(kind: Kind, dir: &Path) -> anyhow::Result<()> {
    match read_pid(kind, dir)? {
        Some(pid) if alive(pid) => {
            let at = listening_line(kind, dir).unwrap_or_default();
            println!(
                "{} of {}: running, pid {pid}; {at}",
                kind.name(),
                dir.display()
            );
            Ok(())
        }
        Some(pid) => bail!(
            "{} of {}: not running (pid {pid} in {} has exited)",
            kind.name(),
            dir.display(),
            kind.pid_file(dir).display()
        ),
        None => bail!(
            "{} of {}: not running (no {})",
            kind.name(),
            dir.display(),
            kind.pid_file(dir).display()
        ),
    }
}
