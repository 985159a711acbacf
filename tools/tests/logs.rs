//! The log of `strait start server` and `strait start locator` on stderr: human-readable lines
//! by default (timestamp, level, message, fields), one JSON object per line with
//! `--log-format json`, and the events `--log-level` (or `STRAIT_LOG`) leaves out.
//!
//! Each test runs a site 1 whose server has a gateway sender `to2` to a site 2 that no locator
//! knows: the sender's lookup warns (Geode's "Remote locator host port information … is not
//! available"), so every run has an `info` and a `warn` event from the server.

mod common;
use common::{DEADLINE, POLL, Proc, Site, one_at_a_time};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use std::time::Instant;

const SITE_UNKNOWN: &str =
    "Remote locator host port information for remote site 2 is not available in local locator";

/// Site 1's locator (default log options) and server (`log_args` added), the server's sender
/// warning about site 2 seen.
fn site(root: &std::path::Path, log_args: &[&str]) -> Site {
    let mut s = Site::new(root, 1);
    s.start_locator(&[]);
    let mut args = s.write_config(&[2], false, false, &[]);
    args.extend(log_args.iter().map(|a| a.to_string()));
    let mut server = Proc::start(&args, "strait server server1 listening on");
    server.wait_line(SITE_UNKNOWN);
    s.server = Some(server);
    s
}

/// SIGTERM to site 1's server; waits for its last line (`strait server server1 stopped`) and
/// its exit, so that `seen` holds everything it wrote.
fn stop_server(s: &mut Site) -> Vec<String> {
    let server = s.server.as_mut().unwrap();
    kill_process(Pid::from_child(&server.child), Signal::TERM).unwrap();
    server.wait_line("strait server server1 stopped");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return server.seen.clone();
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(POLL);
    }
}

/// `2025-06-02T09:14:03.120391Z  INFO …`: the timestamp, then the level; returns the level
/// and the rest of the line.
fn text_line(line: &str) -> (&str, &str) {
    let (stamp, rest) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("no timestamp: {line}"));
    let b = stamp.as_bytes();
    assert!(
        stamp.len() >= 20
            && stamp.ends_with('Z')
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && stamp[..4].bytes().all(|c| c.is_ascii_digit()),
        "not an RFC 3339 UTC timestamp: {line}"
    );
    let (level, message) = rest
        .trim_start()
        .split_once(' ')
        .unwrap_or_else(|| panic!("no level: {line}"));
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
        "no level after the timestamp: {line}"
    );
    (level, message)
}

#[test]
fn the_default_log_is_one_readable_line_per_event_with_its_level() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut s = site(tmp.path(), &[]);
    s.server
        .as_mut()
        .unwrap()
        .wait_line("server server1: registered with locator");
    let lines = stop_server(&mut s);
    for line in &lines {
        assert!(!line.starts_with('{'), "JSON by default: {line}");
        text_line(line);
    }
    let find = |text: &str| {
        let line = lines.iter().find(|l| l.contains(text)).unwrap();
        text_line(line)
    };
    let (level, message) = find("listening on");
    assert_eq!(level, "INFO");
    assert!(
        message.starts_with("strait server server1 listening on 127.0.0.1:"),
        "{message}"
    );
    let (level, message) = find("registered with locator");
    assert_eq!(level, "INFO");
    assert!(
        message.starts_with("server server1: registered with locator 127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains(" server=server1 "), "{message}");
    let (level, message) = find(SITE_UNKNOWN);
    assert_eq!(level, "WARN");
    assert!(
        message.starts_with(&format!("gateway sender to site 2: {SITE_UNKNOWN}")),
        "{message}"
    );
    assert!(message.ends_with(" site=2"), "{message}");
    // The locator's lines are the same kind.
    let locator = s.locator.as_mut().unwrap();
    let line = locator.wait_line("server server1 registered at");
    let (level, message) = text_line(&line);
    assert_eq!(level, "INFO");
    assert!(message.starts_with("locator locator1: server server1 registered at"));
}

#[test]
fn log_format_json_gives_one_json_object_per_line() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut s = site(tmp.path(), &["--log-format", "json"]);
    s.server
        .as_mut()
        .unwrap()
        .wait_line("server server1: registered with locator");
    let lines = stop_server(&mut s);
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&e["level"].as_str().unwrap()),
            "{e}"
        );
        assert!(e["message"].is_string(), "{e}");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let find = |text: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("no event with `{text}`: {lines:#?}"))
    };
    let ready = find("listening on");
    assert_eq!(ready["level"], "INFO");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("strait server server1 listening on 127.0.0.1:")
    );
    let registered = find("registered with locator");
    assert_eq!(registered["level"], "INFO");
    assert_eq!(registered["server"], "server1");
    assert_eq!(registered["target"], "strait_node::registration");
    let warning = find(SITE_UNKNOWN);
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["site"], 2);
    assert_eq!(find("stopped")["level"], "INFO");
}

#[test]
fn log_level_directives_leave_out_the_other_events() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    // The server's library (`strait_node`) at warn; this command's own start and stop lines
    // (target `strait`) at info.
    let mut s = site(tmp.path(), &["--log-level", "info,strait_node=warn"]);
    // The server registered: the info line it would have written is due before it stops.
    s.locator
        .as_mut()
        .unwrap()
        .wait_line("server server1 registered at");
    let lines = stop_server(&mut s);
    for line in &lines {
        let (level, message) = text_line(line);
        assert!(
            level == "WARN" || level == "ERROR" || message.starts_with("strait server server1 "),
            "an event --log-level leaves out: {line}"
        );
    }
    assert!(lines.iter().any(|l| l.contains(SITE_UNKNOWN)), "{lines:#?}");
}

#[test]
fn a_bad_log_option_is_refused_with_the_reason() {
    for (args, says) in [
        (
            ["--log-format", "xml"],
            "invalid value 'xml' for '--log-format",
        ),
        (["--log-level", "info=loud"], "not a level or a list of"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["start", "locator"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
