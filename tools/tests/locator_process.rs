//! `strait start locator` and `strait start server --locators` as processes: the server
//! registers, kill -9 makes the locator drop it after the member timeout (not before), SIGTERM
//! stops the locator with exit 0; and `--start-locator` runs one inside the server.

mod common;
use common::{free_port, stderr_lines};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
const MEMBER_TIMEOUT_MS: u64 = 1_500;

/// A `strait` process, killed if the test ends first.
struct Proc {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `strait args…` and waits until it prints a line containing `ready`.
    fn start(args: &[&str], ready: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("`strait {}` did not print `{ready}`", args.join(" ")));
            if line.contains(ready) {
                break;
            }
        }
        Proc { child, stderr: rx }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait(mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit in time"
            );
            // The exit itself is what is awaited; the stderr reader sees it close.
            let _ = self.stderr.recv_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The member names in the directory of the locator on `port`, or `None` if it is not
/// answering.
fn servers(port: u16) -> Option<Vec<String>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let text = agent
        .get(format!("http://127.0.0.1:{port}/v1/servers"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(
        v["servers"]
            .as_array()?
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect(),
    )
}

/// Polls until the directory on `port` lists exactly `want`; returns when it did.
fn wait_for_servers(port: u16, want: &[&str]) -> Instant {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if servers(port).is_some_and(|s| s == want) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the locator on {port} never listed {want:?} (last: {:?})",
            servers(port)
        );
        std::thread::sleep(POLL);
    }
}

fn server_config(dir: &Path) -> String {
    let config = dir.join("site.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nname = \"s1\"\ndistributed-system-id = 1\nbind-address = \"127.0.0.1\"\nclient-port = {}\nhttp-service-port = 0\nshards = 1\ndirectory = \"{}\"\n",
            free_port(),
            dir.display()
        ),
    )
    .unwrap();
    config.display().to_string()
}

#[test]
fn a_killed_server_is_dropped_after_the_member_timeout_and_sigterm_stops_the_locator() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_arg = port.to_string();
    let loc_dir = tmp.path().join("locator");
    let timeout = MEMBER_TIMEOUT_MS.to_string();
    let locator = Proc::start(
        &[
            "start",
            "locator",
            "--name",
            "loc-1",
            "--port",
            &port_arg,
            "--bind-address",
            "127.0.0.1",
            "--dir",
            loc_dir.to_str().unwrap(),
            "--distributed-system-id",
            "1",
            "--remote-locators",
            "127.0.0.1[10999],london:10334",
            "--member-timeout",
            &timeout,
        ],
        &format!("strait locator loc-1 listening on 127.0.0.1:{port}"),
    );
    let config = server_config(tmp.path());
    let mut server = Proc::start(
        &[
            "start",
            "server",
            "--config",
            &config,
            "--locators",
            &format!("127.0.0.1[{port}]"),
        ],
        "listening on",
    );
    wait_for_servers(port, &["s1"]);

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let killed = Instant::now();
    let dropped = wait_for_servers(port, &[]);
    // Heartbeats come every member-timeout / 3, so the last one was at most that long before
    // the kill: the server cannot have been dropped sooner than the rest of the timeout.
    let least = Duration::from_millis(MEMBER_TIMEOUT_MS - MEMBER_TIMEOUT_MS / 3);
    assert!(
        dropped - killed >= least,
        "dropped {:?} after the kill, before the member timeout",
        dropped - killed
    );

    locator.signal("-TERM");
    let status = locator.wait();
    assert!(status.success(), "locator exit status {status}");
}

#[test]
fn a_second_locator_on_the_same_directory_fails_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let (first_port, second_port) = (free_port().to_string(), free_port().to_string());
    let first = Proc::start(
        &[
            "start",
            "locator",
            "--port",
            &first_port,
            "--bind-address",
            "127.0.0.1",
            "--dir",
            dir,
        ],
        "listening on",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args([
            "start",
            "locator",
            "--port",
            &second_port,
            "--bind-address",
            "127.0.0.1",
            "--dir",
            dir,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another locator"), "{err}");
    first.signal("-INT");
    assert!(first.wait().success());
}

#[test]
fn start_locator_runs_one_inside_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = server_config(tmp.path());
    let server = Proc::start(
        &[
            "start",
            "server",
            "--config",
            &config,
            "--start-locator",
            &format!("127.0.0.1[{port}]"),
        ],
        "listening on 127.0.0.1",
    );
    wait_for_servers(port, &["s1"]);
    server.signal("-TERM");
    let status = server.wait();
    assert!(status.success(), "server exit status {status}");
}
