//! `strait demo` as a user runs it: the whole run with a small `--entries`, and a run stopped
//! by SIGINT. Each demo gets a `TMPDIR` of its own, so "the directory is gone" is checked on a
//! folder nothing else writes to. Every wait is bounded by [`DEADLINE`].

mod common;
use common::stderr_lines;
use rustix::process::{Pid, Signal, kill_process};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(55);
const POLL: Duration = Duration::from_millis(20);

/// The demos run one at a time: each starts six processes, and two at once on a 2-core
/// machine would only slow each other down.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running `strait demo`: its stderr lines arrive on a channel, stdout is read at the end.
struct Demo {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    started: Instant,
}

impl Demo {
    fn start(tmp: &Path, args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
            .arg("demo")
            .args(args)
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        Demo {
            child,
            stderr: rx,
            seen: Vec::new(),
            started: Instant::now(),
        }
    }

    fn left(&self) -> Duration {
        DEADLINE.saturating_sub(self.started.elapsed())
    }

    /// Waits for a stderr line that `want` accepts; `what` names it in a failure.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        loop {
            if let Some(l) = self.seen.iter().find(|l| want(l)) {
                return l.clone();
            }
            match self.stderr.recv_timeout(self.left()) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line {what}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn wait_line(&mut self, text: &str) -> String {
        self.wait_for(&format!("with `{text}`"), |l| l.contains(text))
    }

    /// Waits for the demo to exit: its status, stdout and whole stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if self.left().is_zero() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the demo did not finish; stderr:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(POLL);
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        // The stderr reader ends at EOF, which came with the exit.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, out, self.seen.join("\n"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids the demo lists for its sites (`(pid N)`).
fn pids(stderr: &str) -> Vec<u32> {
    stderr
        .split("(pid ")
        .skip(1)
        .filter_map(|rest| rest.split(')').next()?.parse().ok())
        .collect()
}

/// Whether `pid` is a live `strait` process (a pid reused by another program does not count).
fn strait_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("strait"))
}

/// What is left in `tmp`.
fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn three_sites_replicate_and_verify_identical_data() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path(), &["--entries", "2000"]);
    let (status, out, err) = demo.finish();
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    // Site 1 writes 2000, sites 2 and 3 20 each; every site ends with all 2040.
    assert!(
        out.contains("written      2000 entries at site 1, 20 at site 2, 20 at site 3"),
        "{out}"
    );
    assert!(
        out.contains("verified     identical: every site holds the 2040 entries written"),
        "{out}"
    );
    for (link, events) in [
        ("1 -> 2", 2000),
        ("1 -> 3", 2000),
        ("2 -> 1", 20),
        ("2 -> 3", 20),
        ("3 -> 1", 20),
        ("3 -> 2", 20),
    ] {
        assert!(
            out.contains(&format!("link {link}  {events} events sent")),
            "{link}: {out}"
        );
    }
    for (site, applied) in [(1, 40), (2, 2020), (3, 2020)] {
        assert!(
            out.contains(&format!(
                "site {site}       applied {applied} (duplicates 0, conflicts 0, dead letters 0)"
            )),
            "site {site}: {out}"
        );
    }
    // The live table was shown, with every link.
    assert!(err.contains("link         sent/s"), "{err}");
    let listed = pids(&err);
    assert_eq!(listed.len(), 6, "a locator and a server per site: {err}");
    assert!(out.contains("stopped      6 processes; removed "), "{out}");
    assert!(listed.iter().all(|&p| !strait_alive(p)), "{listed:?}");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn sigint_mid_run_stops_every_process_and_removes_the_directory() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    // Paced so that it is still writing when the signal comes.
    let mut demo = Demo::start(
        tmp.path(),
        &["--entries", "1000000", "--rate", "1000", "--sites", "2"],
    );
    let header = demo.wait_line("strait demo: 2 sites");
    demo.wait_line("links connected");
    let listed = pids(&demo.seen.join("\n"));
    assert_eq!(listed.len(), 4, "{:?}", demo.seen);
    assert!(listed.iter().all(|&p| strait_alive(p)));
    // Mid-run: once the live table's row of site 1 shows entries written.
    demo.wait_for("showing writes at site 1", |l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() == 5 && cols[0] == "1" && cols[2].parse::<u64>().is_ok_and(|w| w > 0)
    });
    let pid = Pid::from_raw(demo.child.id() as i32).unwrap();
    kill_process(pid, Signal::INT).unwrap();
    let (status, out, err) = demo.finish();
    assert_eq!(status.code(), Some(130), "{status}\n{out}\n{err}");
    assert!(
        err.contains("strait demo: interrupted; every process stopped, removed"),
        "{err}"
    );
    assert!(
        !out.contains("verified"),
        "no summary after an interrupt: {out}"
    );
    assert!(listed.iter().all(|&p| !strait_alive(p)), "{listed:?}");
    let dir = header.rsplit(" in ").next().unwrap();
    assert!(!Path::new(dir).exists(), "{dir} is still there");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_demo_killed_with_sigkill_takes_its_sites_with_it() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(
        tmp.path(),
        &["--entries", "1000000", "--rate", "1000", "--sites", "2"],
    );
    demo.wait_line("links connected");
    let listed = pids(&demo.seen.join("\n"));
    assert_eq!(listed.len(), 4, "{:?}", demo.seen);
    // SIGKILL: the demo cannot stop anything itself.
    let pid = Pid::from_raw(demo.child.id() as i32).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    let (status, _, _) = demo.finish();
    assert_eq!(status.code(), None, "killed by a signal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while listed.iter().any(|&p| strait_alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "sites outlived the demo: {:?}",
            listed
                .iter()
                .filter(|&&p| strait_alive(p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bad_options_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--sites", "6"][..], "--sites"),
        (&["--sites", "1"][..], "--sites"),
        (&["--entries", "0"][..], "--entries"),
        (&["--value-size", "0"][..], "--value-size"),
        (
            &["--entries", "10000000", "--value-size", "1048576"][..],
            "more than the demo's limit",
        ),
    ] {
        let (status, out, err) = Demo::start(tmp.path(), args).finish();
        assert!(!status.success(), "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}
