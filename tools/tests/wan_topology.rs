//! WAN topologies between real `strait` processes on loopback (geode-wan.md §3): a full mesh,
//! a ring and a hybrid of three sites, and the converging shape of four that Geode cannot
//! handle; concurrent writes of one key at two sites; and bad input on a receiver's port.
//! Every site runs a locator that knows one other site's (discovery is transitive) and a
//! server with a receiver and parallel senders. Every wait is a deadline loop.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use strait_net::wire::{Frame, Hello, HelloReply, RefuseReason, Regions, decode_frame};
use strait_queue::ids::SiteId;

/// Keys written at each site.
const N: usize = 300;

/// The sites a site's events reach, following the senders (`(from, to)` pairs).
fn reached_from(origin: u8, senders: &[(u8, u8)]) -> BTreeSet<u8> {
    let mut seen = BTreeSet::from([origin]);
    let mut todo = vec![origin];
    while let Some(at) = todo.pop() {
        for &(from, to) in senders {
            if from == at && seen.insert(to) {
                todo.push(to);
            }
        }
    }
    seen.remove(&origin);
    seen
}

/// Sites `1..=n`, each locator knowing the previous site's (site 1's knows none), each server
/// with a receiver and a parallel sender per `(from, to)` pair of `senders` leaving it.
fn start_sites(root: &Path, n: u8, senders: &[(u8, u8)]) -> Vec<Site> {
    let mut sites: Vec<Site> = Vec::new();
    for id in 1..=n {
        let mut s = Site::new(root, id);
        let known: Vec<u16> = sites.last().map(|p| p.locator_port).into_iter().collect();
        s.start_locator(&known);
        sites.push(s);
    }
    for s in &mut sites {
        let targets: Vec<u8> = senders
            .iter()
            .filter(|&&(from, _)| from == s.id)
            .map(|&(_, to)| to)
            .collect();
        s.start_server(&targets, false, true, &[]);
    }
    sites
}

/// Site `id`'s keys: `N` of its own, apart from every other site's.
fn keys_of(id: u8) -> std::ops::Range<usize> {
    let first = usize::from(id - 1) * N;
    first..first + N
}

/// Writes `N` keys at every site, then waits until every queue is drained and every site has
/// applied what reaches it; checks contents, applied counts and duplicates. `converging`: the
/// site that gets some events twice (it must count them as duplicates); elsewhere none.
fn replicate_and_check(sites: &[Site], senders: &[(u8, u8)], converging: Option<u8>) {
    for s in sites {
        write(s, "orders", keys_of(s.id));
    }
    // What each site must end with: its own keys and those of every site that reaches it.
    let origins_of = |id: u8| -> Vec<u8> {
        sites
            .iter()
            .map(|s| s.id)
            .filter(|&o| o != id && reached_from(o, senders).contains(&id))
            .collect()
    };
    let drained = || {
        senders
            .iter()
            .all(|&(from, to)| sites[usize::from(from - 1)].queued(&format!("to{to}")) == 0)
    };
    wait_for(
        "every site to apply what reaches it and every queue to drain",
        || {
            sites
                .iter()
                .all(|s| s.applied() >= (origins_of(s.id).len() * N) as u64)
                && drained()
        },
    );
    let all_keys: Vec<String> = (0..sites.len() * N).map(key).collect();
    for s in sites {
        let origins = origins_of(s.id);
        assert_eq!(
            s.applied(),
            (origins.len() * N) as u64,
            "site {}: each event from sites {origins:?} applied exactly once",
            s.id
        );
        let want: Vec<Reply> = (0..sites.len() * N)
            .map(|i| {
                let origin = (i / N) as u8 + 1;
                if origin == s.id || origins.contains(&origin) {
                    Reply::Bulk(Some(value(origin, i).into_bytes()))
                } else {
                    Reply::Bulk(None)
                }
            })
            .collect();
        same(&want, &values(s, "orders", &all_keys));
        assert_eq!(
            dbsize(s, "orders"),
            ((origins.len() + 1) * N) as i64,
            "site {}",
            s.id
        );
        let duplicates = s.info_field("receiver:", "duplicates");
        if converging == Some(s.id) {
            // Every event of site 1 comes along two paths; the second copy is a duplicate.
            assert!(
                duplicates >= N as u64,
                "site {}: {duplicates} duplicates",
                s.id
            );
        } else {
            assert_eq!(duplicates, 0, "site {}", s.id);
        }
        assert_eq!(
            s.info_field("receiver:", "dead_lettered"),
            0,
            "site {}",
            s.id
        );
    }
}

#[test]
fn a_full_mesh_of_three_sites_ends_identical() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let senders = [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)];
    let sites = start_sites(tmp.path(), 3, &senders);
    replicate_and_check(&sites, &senders, None);
}

#[test]
fn a_ring_of_three_sites_forwards_every_event_once() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    // 1→2→3→1: each site forwards what it receives; the sender back to the origin drops it.
    let senders = [(1, 2), (2, 3), (3, 1)];
    let sites = start_sites(tmp.path(), 3, &senders);
    replicate_and_check(&sites, &senders, None);
}

#[test]
fn a_ring_with_a_chord_delivers_every_event_once() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    // geode-wan.md §3's hybrid: the ring 1→2→3→1 plus a 1→3 chord (so 1↔3 both ways). An event
    // of site 1 leaves with recipients {2,3}: site 2 does not forward it to 3, site 3 not back
    // to 1. One of site 2 reaches 1 through 3 with {1,3}, and 1 sends it neither back to 2
    // (the origin) nor to 3 (a recipient).
    let senders = [(1, 2), (2, 3), (3, 1), (1, 3)];
    let sites = start_sites(tmp.path(), 3, &senders);
    replicate_and_check(&sites, &senders, None);
}

#[test]
fn converging_paths_deliver_twice_and_apply_once() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    // 1→2, 1→3, 2→4, 3→4: site 1 sends with recipients {2,3}; sites 2 and 3 both forward to 4,
    // which drops the second copy by event id. Site 4 sends nowhere, so its own keys stay
    // there, and sites 2 and 3 see only site 1's.
    let senders = [(1, 2), (1, 3), (2, 4), (3, 4)];
    let sites = start_sites(tmp.path(), 4, &senders);
    replicate_and_check(&sites, &senders, Some(4));
}

#[test]
fn concurrent_writes_of_the_same_keys_at_two_sites_end_with_one_winner() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s1.start_server(&[2], false, true, &[]);
    s2.start_server(&[1], false, true, &[]);
    const KEYS: usize = 200;
    // The same keys, each site's own values, pipelined from two threads at once.
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        for (port, id) in [(s1.client_port, s1.id), (s2.client_port, s2.id)] {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut cmds = vec![vec![b"REGION".to_vec(), b"orders".to_vec()]];
                cmds.extend((0..KEYS).map(|i| {
                    vec![
                        b"SET".to_vec(),
                        key(i).into_bytes(),
                        value(id, i).into_bytes(),
                    ]
                }));
                barrier.wait();
                let replies = call(port, &cmds);
                assert!(replies.iter().all(|r| *r == Reply::Simple("OK".into())));
            });
        }
    });
    // Each site gets the other's 200 events once: applied, or rejected by the conflict rule.
    let settled = |s: &Site| {
        s.info_field("receiver:", "applied") + s.info_field("receiver:", "conflicts") == KEYS as u64
    };
    wait_for("both sites to settle and both queues to drain", || {
        settled(&s1) && settled(&s2) && s1.queued("to2") == 0 && s2.queued("to1") == 0
    });
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let (v1, v2) = (values(&s1, "orders", &keys), values(&s2, "orders", &keys));
    same(&v1, &v2);
    for (i, v) in v1.iter().enumerate() {
        let from = |site| Reply::Bulk(Some(value(site, i).into_bytes()));
        assert!(*v == from(1) || *v == from(2), "key {i}: {v:?}");
    }
    assert_eq!(dbsize(&s1, "orders"), KEYS as i64);
    assert_eq!(dbsize(&s2, "orders"), KEYS as i64);
    for s in [&s1, &s2] {
        assert_eq!(s.info_field("receiver:", "duplicates"), 0, "site {}", s.id);
    }
}

// ---- bad input on a receiver's port ------------------------------------------------------

/// The receiver ports of site `site`'s servers, as its locator lists them (waits until it
/// lists `want`).
fn receiver_ports(site: &Site, want: usize) -> Vec<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!(
        "http://127.0.0.1:{}/v1/sites/{}/receivers",
        site.locator_port, site.id
    );
    let lookup = || -> Option<Vec<u16>> {
        let text = agent
            .get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["receivers"]
            .as_array()?
            .iter()
            .map(|r| r["port"].as_u64().map(|p| p as u16))
            .collect()
    };
    let mut ports = Vec::new();
    wait_for("the locator to list the receivers", || {
        ports = lookup().unwrap_or_default();
        ports.len() == want
    });
    ports
}

/// Sends `bytes` to `port`, then reads until the receiver closes the connection; returns what
/// it wrote back and the local port.
fn send_and_read_to_close(port: u16, bytes: &[u8]) -> (Vec<u8>, u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "the receiver on {port} kept the connection open"
        );
        match s.read(&mut buf) {
            Ok(0) => return (got, local),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, local),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading from the receiver on {port}: {e}"),
        }
    }
}

/// The refusal in the HelloReply `bytes` hold (the whole of them).
fn refusal(bytes: &[u8]) -> (RefuseReason, String) {
    let (frame, consumed) = decode_frame(bytes)
        .unwrap_or_else(|e| panic!("the reply is not a frame: {e}"))
        .unwrap_or_else(|| panic!("a truncated reply: {bytes:02x?}"));
    assert_eq!(consumed, bytes.len(), "bytes after the HelloReply");
    let Frame::HelloReply(HelloReply {
        refusal: Some(r), ..
    }) = frame
    else {
        panic!("not a refusing HelloReply: {frame:?}");
    };
    (r.reason, r.text.to_string())
}

/// Starts site 1's server sending to site 2, writes 100 keys there, and waits until site 2
/// (which has applied nothing before) applied them.
fn replication_still_works(s1: &mut Site, s2: &Site) {
    s1.start_server(&[2], false, false, &[]);
    write(s1, "orders", 0..100);
    wait_for("site 2 to apply site 1's writes", || s2.applied() == 100);
    let keys: Vec<String> = (0..100).map(key).collect();
    same(&values(s1, "orders", &keys), &values(s2, "orders", &keys));
}

#[test]
fn garbage_on_a_receiver_port_closes_that_connection_only() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    for port in receiver_ports(&s2, 2) {
        let (reply, local) =
            send_and_read_to_close(port, b"this is not a Strait frame, only garbage\r\n");
        let (reason, text) = refusal(&reply);
        assert_eq!(reason, RefuseReason::MalformedHello, "{text}");
        assert!(text.contains("bad frame magic"), "{text}");
        let line = s2
            .server
            .as_mut()
            .unwrap()
            .wait_line(&format!("connection from 127.0.0.1:{local}:"));
        assert!(line.contains("bad frame magic"), "{line}");
    }
    replication_still_works(&mut s1, &s2);
}

#[test]
fn a_hello_of_protocol_version_2_is_refused_as_the_wrong_version() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    let mut hello = Vec::new();
    Frame::Hello(Hello {
        sender_site: SiteId(1),
        receiver_site: SiteId(2),
        member: "probe",
        sender_id: "to2",
        regions: Regions::List(&[]),
    })
    .encode(&mut hello)
    .unwrap();
    // Version byte 2, and the header CRC over bytes 0..12 made right again.
    hello[4] = 2;
    let crc = crc32fast::hash(&hello[..12]);
    hello[12..16].copy_from_slice(&crc.to_le_bytes());
    let port = receiver_ports(&s2, 2)[0];
    let (reply, _) = send_and_read_to_close(port, &hello);
    let (reason, text) = refusal(&reply);
    assert_eq!(reason, RefuseReason::WrongVersion, "{text}");
    assert!(text.contains("protocol version 2"), "{text}");
    replication_still_works(&mut s1, &s2);
}

#[test]
fn a_receiver_port_range_fully_taken_stops_the_server_with_the_range_named() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Site::new(tmp.path(), 1);
    s.start_locator(&[]);
    s.receiver_ports = 2;
    let base = s.receiver_base;
    let _held: Vec<std::net::TcpListener> = (base..base + 2)
        .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).unwrap())
        .collect();
    let args = s.write_config(&[], false, true, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit although its port range is taken");
        }
        std::thread::sleep(POLL);
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    let range = format!("port range {base}..={}", base + 1);
    assert!(stderr.contains(&range), "no `{range}` in:\n{stderr}");
}
