//! Members in the background: `strait start server|locator --background`, `strait status
//! server|locator --dir`, `strait stop server|locator --dir`, on loopback.

mod common;

use common::*;
use std::process::{Command, Output};

fn strait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stops whatever a test started in `dir`, also when it fails half-way.
struct StopOnDrop(Vec<(&'static str, String)>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for (kind, dir) in &self.0 {
            let _ = strait(&["stop", kind, "--dir", dir]);
        }
    }
}

#[test]
fn a_locator_and_a_server_run_in_the_background_until_stopped() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let loc_dir = tmp.path().join("loc").display().to_string();
    let mut site = Site::new(tmp.path(), 1);
    let srv_dir = site.dir.display().to_string();
    let _guard = StopOnDrop(vec![
        ("server", srv_dir.clone()),
        ("locator", loc_dir.clone()),
    ]);
    let port = site.locator_port.to_string();
    let out = strait(&[
        "start",
        "locator",
        "--background",
        "--bind-address",
        "127.0.0.1",
        "--port",
        &port,
        "--distributed-system-id",
        "1",
        "--dir",
        &loc_dir,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("listening on") && said.contains("in the background"),
        "{said}"
    );
    let status = strait(&["status", "locator", "--dir", &loc_dir]);
    assert!(status.status.success());
    assert!(text(&status.stdout).contains("running, pid"));
    // A second one on the same directory is refused while the first runs.
    let again = strait(&[
        "start",
        "locator",
        "--background",
        "--port",
        &port,
        "--dir",
        &loc_dir,
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already runs"),
        "{}",
        text(&again.stderr)
    );

    let mut args = site.write_config(&[], false, true, &[]);
    args.push("--background".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = strait(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("strait server server1 listening on"));
    let pid: i32 = std::fs::read_to_string(site.dir.join("server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The server works: writes and INFO over its client port.
    write(&site, "orders", 0..10);
    assert_eq!(dbsize(&site, "orders"), 10);
    let status = strait(&["status", "server", "--dir", &srv_dir]);
    assert!(text(&status.stdout).contains(&format!("running, pid {pid}")));

    let stopped = strait(&["stop", "server", "--dir", &srv_dir]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    assert!(text(&stopped.stdout).contains("stopped the server"));
    // Gone, or a zombie waiting for whoever adopted it to reap it.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty()
            || state
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        "{state}"
    );
    assert!(!site.dir.join("server.pid").exists());
    let log = std::fs::read_to_string(site.dir.join("server.log")).unwrap();
    assert!(log.contains("strait server server1 stopped"), "{log}");
    let status = strait(&["status", "server", "--dir", &srv_dir]);
    assert!(!status.status.success());
    assert!(text(&status.stderr).contains("not running"));
    let stopped = strait(&["stop", "locator", "--dir", &loc_dir]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    let again = strait(&["stop", "locator", "--dir", &loc_dir]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("no locator was started in the background"));
    site.server.take();
}

#[test]
fn a_server_that_cannot_start_in_the_background_says_why() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut site = Site::new(tmp.path(), 1);
    let mut args = site.write_config(&[], false, false, &[]);
    // The client port is taken.
    let _held = std::net::TcpListener::bind(("127.0.0.1", site.client_port)).unwrap();
    args.push("--background".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = strait(&args);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("the server did not start"), "{e}");
    assert!(e.contains("in use"), "{e}");
    assert!(!site.dir.join("server.pid").exists());
}
