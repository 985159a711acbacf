//! `strait-load` against real `strait` servers on loopback: counts and rates it reports, the
//! JSON it prints, and the end-to-end mode across two sites. The harness is `common/mod.rs`.

mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait-load"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `strait-load ... --json --quiet` and parses its JSON line.
fn load_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--quiet"]);
    let out = load(&all);
    assert!(
        out.status.success(),
        "strait-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn one_site(root: &std::path::Path) -> Site {
    let mut s = Site::new(root, 1);
    s.start_locator(&[]);
    s.start_server(&[], false, false, &[]);
    s
}

#[test]
fn a_counted_run_at_full_speed_does_every_operation_and_prints_json() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let site = one_site(tmp.path());
    let server = format!("127.0.0.1:{}", site.client_port);
    let j = load_json(&[
        "--server",
        &server,
        "--requests",
        "3001",
        "--connections",
        "3",
        "--threads",
        "2",
        "--pipeline",
        "8",
        "--keys",
        "500",
        "--reads",
        "0.3",
        "--value-size",
        "50-150",
    ]);
    assert_eq!(j["ops"], 3001);
    assert_eq!(
        j["sets"].as_u64().unwrap() + j["gets"].as_u64().unwrap(),
        3001
    );
    assert_eq!(j["errors"], 0);
    assert!(j["get_hits"].as_u64().unwrap() <= j["gets"].as_u64().unwrap());
    assert!(j["rate"].is_null());
    let l = &j["latency_us"];
    assert_eq!(l["count"], 3001);
    for (a, b) in [
        ("min", "p50"),
        ("p50", "p90"),
        ("p90", "p99"),
        ("p99", "p999"),
        ("p999", "max"),
    ] {
        assert!(
            l[a].as_u64().unwrap() <= l[b].as_u64().unwrap(),
            "{a} > {b}: {l}"
        );
    }
    let ladder = l["ladder"].as_array().unwrap();
    assert_eq!(ladder.len(), 12);
    let us: Vec<u64> = ladder.iter().map(|p| p[1].as_u64().unwrap()).collect();
    assert!(us.windows(2).all(|w| w[0] <= w[1]), "{us:?}");
    assert_eq!(us[11], l["max"].as_u64().unwrap());
    assert!(j["ops_per_s"].as_f64().unwrap() > 0.0);
    // The generator's own CPU: some, and no more than its threads (2 load threads and the
    // main one) could use over the run.
    let cpu = j["cpu_s"].as_f64().unwrap();
    assert!(
        cpu > 0.0 && cpu <= 3.0 * j["seconds"].as_f64().unwrap() + 0.05,
        "cpu_s {cpu}"
    );
    assert!(j["e2e"].is_null());
    // The writes landed: keys written, at most the key space.
    let keys = dbsize(&site, "orders");
    assert!((1..=500).contains(&keys), "{keys} keys");
}

#[test]
fn an_open_loop_run_sends_at_the_rate_asked_for() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let site = one_site(tmp.path());
    let server = format!("127.0.0.1:{}", site.client_port);
    let t = Instant::now();
    let j = load_json(&[
        "--server",
        &server,
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--connections",
        "2",
        "--reads",
        "0.5",
        "--key-dist",
        "zipf:0.9",
    ]);
    // Open loop: the operations scheduled in the second, however the server answers.
    assert_eq!(j["ops"], 2000);
    let gets = j["gets"].as_u64().unwrap();
    assert!((850..=1150).contains(&gets), "{gets} GETs of 2000 at 50%");
    assert!(t.elapsed().as_secs_f64() >= 1.0);
    assert_eq!(j["rate"], 2000.0);
}

#[test]
fn the_table_names_the_figures() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let site = one_site(tmp.path());
    let out = load(&[
        "--server",
        &format!("127.0.0.1:{}", site.client_port),
        "--requests",
        "100",
        "--quiet",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in ["ops 100", "ops/s", "p99", "request -> reply"] {
        assert!(text.contains(word), "no `{word}` in:\n{text}");
    }
}

#[test]
fn end_to_end_mode_measures_each_sampled_write_until_it_is_seen_at_the_other_site() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    let j = load_json(&[
        "--server",
        &format!("127.0.0.1:{}", s1.client_port),
        "--e2e",
        &format!("127.0.0.1:{}", s2.client_port),
        "--e2e-sample-every",
        "10",
        "--requests",
        "2000",
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--value-size",
        "64",
    ]);
    assert_eq!(j["ops"], 2000);
    let e = &j["e2e"];
    assert_eq!(e["sampled"], 200, "{e}");
    assert_eq!(e["seen"], 200, "{e}");
    assert_eq!(e["missing"], 0);
    assert_eq!(e["wrong_value"], 0);
    assert_eq!(e["latency_us"]["count"], 200);
    assert!(e["latency_us"]["min"].as_u64().unwrap() > 0);
    // Every write, sampled or not, reached site 2.
    wait_for("site 2 to apply every write", || s2.applied() == 2000);
}

#[test]
fn bad_arguments_and_an_absent_server_are_refused_with_a_reason() {
    let port = free_port().to_string();
    let server = format!("127.0.0.1:{port}");
    for (args, code, says) in [
        (vec!["--reads", "1.5"], 2, "--reads"),
        (vec!["--key-dist", "zipf:x"], 2, "zipf exponent"),
        (vec!["--pipeline", "0"], 2, "--pipeline"),
        (vec!["--threads", "5"], 2, "at most one a connection"),
        (
            vec!["--e2e", "127.0.0.1:1", "--value-size", "8"],
            2,
            "at least 19 bytes",
        ),
        (vec!["--requests", "10"], 1, "connecting to"),
    ] {
        let mut all = vec!["--server", server.as_str()];
        all.extend(&args);
        let out = load(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Two RESP servers on one connection each, site A and site B for the end-to-end mode: A
/// stores every SET and answers `+OK`, except that after the `stall_after`-th command it stops
/// reading and answering for `stall` (the server stall a load generator must charge to every
/// request scheduled meanwhile); B answers each GET from what A stored.
fn stalling_site_pair(
    stall_after: usize,
    stall: Duration,
) -> (u16, u16, std::thread::JoinHandle<usize>) {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use strait_net::resp::{Limits, Parsed, parse_command};
    let stored: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let serve = |stored: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>, stall_after: usize| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (mut buf, mut chunk, mut answered) = (Vec::new(), vec![0u8; 64 << 10], 0usize);
            loop {
                let n = match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return answered,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                let mut out = Vec::new();
                while let Ok(Parsed::Command(c)) = parse_command(&buf[at..], &Limits::default()) {
                    let args: Vec<Vec<u8>> = c.args(&buf[at..]).map(<[u8]>::to_vec).collect();
                    at += c.consumed;
                    answered += 1;
                    let mut map = stored.lock().unwrap();
                    match args.first().map(Vec::as_slice) {
                        Some(b"SET") => {
                            map.insert(args[1].clone(), args[2].clone());
                            out.extend_from_slice(b"+OK\r\n");
                        }
                        Some(b"GET") => match map.get(&args[1]) {
                            Some(v) => {
                                out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
                                out.extend_from_slice(v);
                                out.extend_from_slice(b"\r\n");
                            }
                            None => out.extend_from_slice(b"$-1\r\n"),
                        },
                        _ => out.extend_from_slice(b"+OK\r\n"),
                    }
                    drop(map);
                    if answered == stall_after {
                        s.write_all(&out).unwrap();
                        out.clear();
                        // The behaviour under test: the server goes quiet for a while.
                        std::thread::sleep(stall);
                    }
                }
                buf.drain(..at);
                if s.write_all(&out).is_err() {
                    return answered;
                }
            }
        });
        (port, server)
    };
    let (a, server) = serve(stored.clone(), stall_after);
    let (b, _) = serve(stored, usize::MAX);
    (a, b, server)
}

#[test]
fn a_server_stall_is_charged_to_every_request_and_sampled_write_scheduled_during_it() {
    const STALL: Duration = Duration::from_millis(300);
    let (a, b, server) = stalling_site_pair(200, STALL);
    // 1000 writes over 1 s, one outstanding at a time, every 10th sampled: while site A is
    // quiet, the generator cannot send the ~300 writes (~30 samples) scheduled meanwhile.
    // Timed from their intended send times they waited 0-300 ms, for the reply and for the
    // sample to be seen at site B alike; timed from when they were sent they would not have.
    let j = load_json(&[
        "--server",
        &format!("127.0.0.1:{a}"),
        "--e2e",
        &format!("127.0.0.1:{b}"),
        "--e2e-sample-every",
        "10",
        "--rate",
        "1000",
        "--duration",
        "1s",
        "--connections",
        "1",
        "--pipeline",
        "1",
        "--value-size",
        "32",
    ]);
    assert_eq!(server.join().unwrap(), 1000);
    assert_eq!(j["ops"], 1000);
    assert_eq!(j["e2e"]["seen"], 100, "{}", j["e2e"]);
    for (what, l) in [
        ("request -> reply", &j["latency_us"]),
        ("write -> seen at B", &j["e2e"]["latency_us"]),
    ] {
        let us = |q: &str| l[q].as_u64().unwrap();
        assert!(us("max") >= 280_000, "{what}: the stall itself: {l}");
        // About 30% waited 0-300 ms, evenly: the slowest 10% waited 200 ms or more.
        assert!(
            us("p90") >= 150_000,
            "{what}: those scheduled during the stall: {l}"
        );
        assert!(us("p50") < 50_000, "{what}: most were not delayed: {l}");
    }
}
