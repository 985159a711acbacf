//! The WAN link between real `strait` processes on loopback: a locator and a server per site,
//! the locators exchanging their maps, senders finding the other site's receivers through
//! them. Every wait is a deadline loop. The harness is in `common/mod.rs`.

mod common;

use common::*;

/// Kills the process with SIGKILL and reaps it.
fn kill9(mut p: Proc) {
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[test]
fn two_sites_one_way_replicate_every_write_and_drain_the_queue() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    const N: usize = 500;
    write(&s1, "orders", 0..N);
    wait_for("site 2 to apply every write", || s2.applied() == N as u64);
    let keys: Vec<String> = (0..N).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    assert_eq!(dbsize(&s2, "orders"), N as i64);
    wait_for("site 1's queue to drain", || s1.queued("to2") == 0);
    assert_eq!(s1.info_field("to2:", "distributed"), N as u64);
    assert_eq!(s2.info_field("receiver:", "duplicates"), 0);
}

#[test]
fn two_sites_both_ways_end_identical() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s1.start_server(&[2], false, true, &[]);
    s2.start_server(&[1], false, true, &[]);
    write(&s1, "orders", 0..200);
    write(&s2, "orders", 200..400);
    wait_for("site 2 to apply site 1's writes", || s2.applied() == 200);
    wait_for("site 1 to apply site 2's writes", || s1.applied() == 200);
    let keys: Vec<String> = (0..400).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    assert_eq!(dbsize(&s1, "orders"), 400);
    wait_for("both queues to drain", || {
        s1.queued("to2") == 0 && s2.queued("to1") == 0
    });
    // Nothing came back: an event is never sent to its origin.
    assert_eq!(s1.info_field("receiver:", "duplicates"), 0);
    assert_eq!(s2.info_field("receiver:", "duplicates"), 0);
}

#[test]
fn a_missing_region_is_dead_lettered_and_replayed_once_it_exists() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &["customers"]);
    write(&s1, "customers", 0..50);
    wait_for("site 2 to dead-letter the events", || {
        s2.info_field("receiver:", "dead_lettered") == 50
    });
    let Reply::Bulk(Some(list)) = s2.call(&["STRAIT.DEADLETTERS", "LIST"]) else {
        panic!("LIST did not answer a bulk string");
    };
    let list = String::from_utf8(list).unwrap();
    assert!(list.contains("region=customers count=50"), "{list}");
    assert!(list.contains("reason=unknown region"), "{list}");
    s2.server
        .as_mut()
        .unwrap()
        .wait_line("events of region `customers` from site 1 cannot be applied here");
    wait_for("site 1's queue to drain", || s1.queued("to2") == 0);
    // Site 2 restarts with the region.
    kill9(s2.server.take().unwrap());
    s2.start_server(&[], false, true, &["customers"]);
    let Reply::Bulk(Some(done)) = s2.call(&["STRAIT.DEADLETTERS", "REPLAY"]) else {
        panic!("REPLAY did not answer a bulk string");
    };
    let done = String::from_utf8(done).unwrap();
    assert!(
        done.contains("region=customers replayed=50 kept=0"),
        "{done}"
    );
    let keys: Vec<String> = (0..50).map(key).collect();
    same(
        &values(&s1, "customers", &keys),
        &values(&s2, "customers", &keys),
    );
    let Reply::Bulk(Some(list)) = s2.call(&["STRAIT.DEADLETTERS", "LIST"]) else {
        panic!("LIST did not answer a bulk string");
    };
    assert!(!String::from_utf8(list).unwrap().contains("customers"));
}

#[test]
fn a_sender_killed_mid_stream_resends_and_nothing_is_applied_twice() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    const N: usize = 3000;
    // Writes in rounds; kill -9 the sending server while site 2 is still applying.
    for round in 0..3 {
        write(&s1, "orders", round * 1000..(round + 1) * 1000);
    }
    wait_for("site 2 to start applying", || s2.applied() > 0);
    kill9(s1.server.take().unwrap());
    s1.start_server(&[2], true, false, &[]);
    wait_for("site 2 to apply every write", || {
        dbsize(&s2, "orders") == N as i64 && s1.queued("to2") == 0
    });
    assert_eq!(s2.applied(), N as u64, "an event was applied twice");
    // Site 1's store lives in memory (only its queues persist): compare with what was written.
    let keys: Vec<String> = (0..N).map(key).collect();
    let want: Vec<Reply> = (0..N)
        .map(|i| Reply::Bulk(Some(value(1, i).into_bytes())))
        .collect();
    same(&want, &values(&s2, "orders", &keys));
}

#[test]
fn a_receiver_killed_mid_stream_keeps_what_it_acknowledged_and_applies_nothing_twice() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.persistent_regions = true;
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    const N: usize = 3000;
    for round in 0..3 {
        write(&s1, "orders", round * 1000..(round + 1) * 1000);
    }
    wait_for("site 2 to start applying", || s2.applied() > 0);
    kill9(s2.server.take().unwrap());
    s2.start_server(&[], false, true, &[]);
    // What the killed receiver had logged comes back from its region log.
    let server = s2.server.as_ref().unwrap();
    let restored: u64 = server
        .seen
        .iter()
        .filter_map(|l| {
            l.split("restored ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    wait_for("site 2 to hold every write", || {
        dbsize(&s2, "orders") == N as i64 && s1.queued("to2") == 0
    });
    // Every write is applied exactly once: before the kill (and restored from the log), or
    // after it; a resend of one already logged is a duplicate.
    assert_eq!(
        restored + s2.applied(),
        N as u64,
        "restored {restored}, applied since the restart {}",
        s2.applied()
    );
    let keys: Vec<String> = (0..N).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
}

#[test]
fn a_sender_whose_locators_lead_to_its_own_site_says_so() {
    let _serial = common::one_at_a_time();
    // Site 2's locator is reached, but the receiver registered there runs at site 1: the
    // hello reply names site 1, the sender's own site.
    let tmp = tempfile::tempdir().unwrap();
    let mut s1 = Site::new(tmp.path(), 1);
    let mut s2 = Site::new(tmp.path(), 2);
    s1.start_locator(&[]);
    s2.start_locator(&[s1.locator_port]);
    // A second server of site 1 runs the receiver, registered with site 2's locator.
    let mut rogue = Site::new(tmp.path(), 1);
    rogue.locator_port = s2.locator_port;
    rogue.dir = tmp.path().join("rogue");
    std::fs::create_dir_all(&rogue.dir).unwrap();
    rogue.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    let line = s1
        .server
        .as_mut()
        .unwrap()
        .wait_line("cannot connect to its own distributed system");
    assert!(line.contains("gateway sender `to2`"), "{line}");
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn status(site: &Site) -> Reply {
    site.call(&["STRAIT.SENDER", "to2", "STATUS"])
}

#[test]
fn a_paused_sender_keeps_queueing_and_sends_it_all_once_resumed() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    write(&s1, "orders", 0..100);
    wait_for("site 2 to apply the first writes", || {
        s2.applied() == 100 && s1.queued("to2") == 0
    });
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "PAUSE"]), ok());
    assert_eq!(status(&s1), Reply::Simple("paused".into()));
    write(&s1, "orders", 100..300);
    wait_for("the paused sender to queue the new writes", || {
        s1.queued("to2") == 200
    });
    assert_eq!(s2.applied(), 100, "a paused sender sent events");
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "RESUME"]), ok());
    assert_eq!(status(&s1), Reply::Simple("running".into()));
    wait_for("site 2 to apply everything and the queue to drain", || {
        s2.applied() == 300 && s1.queued("to2") == 0
    });
    let keys: Vec<String> = (0..300).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
}

#[test]
fn a_stopped_sender_queues_nothing_and_start_clean_discards_its_queue() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    write(&s1, "orders", 0..100);
    wait_for("site 2 to apply the first writes", || {
        s2.applied() == 100 && s1.queued("to2") == 0
    });
    let Reply::Error(e) = s1.call(&["STRAIT.SENDER", "to2", "START", "CLEAN"]) else {
        panic!("START CLEAN of a running sender was accepted");
    };
    assert!(e.contains("STOP it before START CLEAN"), "{e}");
    // Writes while stopped are not queued for the sender (Geode drops them too).
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "STOP"]), ok());
    assert_eq!(status(&s1), Reply::Simple("not-running".into()));
    wait_for("the dispatchers to disconnect", || {
        s1.info_field("to2:", "connected") == 0
    });
    write(&s1, "orders", 100..150);
    assert_eq!(s1.queued("to2"), 0);
    assert_eq!(s1.info_field("to2:", "dropped_not_running"), 50);
    let Reply::Error(e) = s1.call(&["STRAIT.SENDER", "to2", "PAUSE"]) else {
        panic!("PAUSE of a stopped sender was accepted");
    };
    assert_eq!(e, "ERR gateway sender 'to2' is not running");
    // Events queued while paused stay queued through a stop; START CLEAN discards them.
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "START"]), ok());
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "PAUSE"]), ok());
    write(&s1, "orders", 150..200);
    assert_eq!(s1.queued("to2"), 50);
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "STOP"]), ok());
    assert_eq!(s1.queued("to2"), 50);
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "START", "CLEAN"]), ok());
    assert_eq!(s1.queued("to2"), 0);
    assert_eq!(status(&s1), Reply::Simple("running".into()));
    write(&s1, "orders", 200..250);
    wait_for(
        "site 2 to apply the writes made after the clean start",
        || s2.applied() == 150 && s1.queued("to2") == 0,
    );
    assert_eq!(dbsize(&s2, "orders"), 150);
    let keys: Vec<String> = (200..250).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
}

#[test]
fn a_manual_start_sender_sends_nothing_until_started() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.start_server(&[], false, true, &[]);
    s1.sender_options = "manual-start = true\n".into();
    s1.start_server(&[2], false, false, &[]);
    assert_eq!(status(&s1), Reply::Simple("not-running".into()));
    write(&s1, "orders", 0..50);
    assert_eq!(s1.queued("to2"), 0);
    assert_eq!(s1.info_field("to2:", "dropped_not_running"), 50);
    assert_eq!(s1.info_field("to2:", "connected"), 0);
    assert_eq!(s1.call(&["STRAIT.SENDER", "to2", "START"]), ok());
    write(&s1, "orders", 50..100);
    wait_for("site 2 to apply the writes made after START", || {
        s2.applied() == 50 && s1.queued("to2") == 0
    });
    assert_eq!(dbsize(&s2, "orders"), 50);
}

#[test]
fn sender_operations_name_what_is_wrong() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, _s2) = two_sites(tmp.path());
    s1.start_server(&[2], false, false, &[]);
    assert_eq!(
        s1.call(&["STRAIT.SENDER", "nope", "STATUS"]),
        Reply::Error("ERR unknown gateway sender 'nope'".into())
    );
    assert_eq!(
        s1.call(&["STRAIT.SENDER", "to2"]),
        Reply::Error("ERR wrong number of arguments for 'strait.sender' command".into())
    );
    let Reply::Error(e) = s1.call(&["STRAIT.SENDER", "to2", "RESTART"]) else {
        panic!("an unknown operation was accepted");
    };
    assert!(
        e.starts_with("ERR unknown gateway sender operation 'restart'"),
        "{e}"
    );
}

#[test]
fn a_forward_refused_by_a_full_queue_disk_holds_the_link_back_and_loses_nothing() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = small_disk(
        tmp.path(),
        "64m",
        "a_forward_refused_by_a_full_queue_disk_holds_the_link_back_and_loses_nothing",
    ) else {
        return;
    };
    let small = disk.0.clone();
    // A chain 1 → 2 → 3: site 2 forwards what it receives to site 3 through a persistent queue
    // on a 64 MiB disk. Site 3 is down, so that disk fills up. Four buckets: a persistent
    // queue keeps the last segment of each bucket it has seen (4 MiB), which must fit.
    let (mut s1, mut s2) = two_sites(tmp.path());
    let mut s3 = Site::new(tmp.path(), 3);
    s3.start_locator(&[s2.locator_port]);
    for s in [&mut s1, &mut s2, &mut s3] {
        s.region_options = "total-num-buckets = 4\n".into();
    }
    s2.sender_options = format!("disk-dir = \"{}\"\n", small.join("to3").display());
    s2.start_server(&[3], true, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    const N: usize = 1200;
    let big = "v".repeat(64 << 10);
    let mut cmds = vec![vec![b"REGION".to_vec(), b"orders".to_vec()]];
    for i in 0..N {
        cmds.push(vec![
            b"SET".to_vec(),
            key(i).into_bytes(),
            format!("{i}-{big}").into_bytes(),
        ]);
    }
    let replies = call(s1.client_port, &cmds);
    assert!(
        replies.iter().all(|r| *r == ok()),
        "a write at site 1 failed"
    );
    wait_for("site 2 to refuse a batch it cannot forward", || {
        s2.info_field("receiver:", "queue_refusals") > 0
    });
    s2.server.as_mut().unwrap().wait_line(
        "forwarding to gateway sender `to3`: persistent queue cannot create a segment file",
    );
    assert!(
        s1.queued("to2") > 0,
        "site 1 no longer holds the refused events"
    );
    assert!(
        s2.applied() < N as u64,
        "site 2 applied every event although it could not forward them all"
    );
    assert_eq!(s2.info_field("to3:", "dropped_not_running"), 0);
    // Site 3 comes up: site 2's queue drains, which makes room, and site 1's resends go through.
    s3.start_server(&[], false, true, &[]);
    wait_for("every write to reach site 3", || {
        dbsize(&s3, "orders") == N as i64
    });
    wait_for("both queues to drain", || {
        s1.queued("to2") == 0 && s2.queued("to3") == 0
    });
    assert_eq!(s2.applied(), N as u64, "site 2 applied an event twice");
    assert_eq!(s3.applied(), N as u64, "site 3 applied an event twice");
    let keys: Vec<String> = (0..N).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s3, "orders", &keys));
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
}

/// The `receiver:` line of INFO.
fn receiver_line(site: &Site) -> String {
    let Reply::Bulk(Some(text)) = site.call(&["INFO"]) else {
        panic!("INFO did not answer a bulk string");
    };
    String::from_utf8(text)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("receiver:"))
        .expect("no receiver line in INFO")
        .to_string()
}

#[test]
fn a_manual_start_receiver_takes_nothing_until_started_and_nothing_once_stopped() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s2.receiver_options = "manual-start = true\n".into();
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    let simple = |s: &str| Reply::Simple(s.into());
    assert_eq!(
        s2.call(&["STRAIT.RECEIVER", "STATUS"]),
        simple("not running")
    );
    assert!(receiver_line(&s2).ends_with("state=not running"));
    write(&s1, "orders", 0..100);
    // Not advertised: site 1's sender finds no receiver of site 2.
    s1.server
        .as_mut()
        .unwrap()
        .wait_line("remote site 2 is known to local locator");
    assert_eq!(s1.queued("to2"), 100);
    assert_eq!(s2.applied(), 0);

    assert_eq!(s2.call(&["STRAIT.RECEIVER", "START"]), ok());
    assert_eq!(s2.call(&["STRAIT.RECEIVER", "status"]), simple("running"));
    wait_for("site 2 to apply the writes", || s2.applied() == 100);
    wait_for("site 1's queue to drain", || s1.queued("to2") == 0);

    assert_eq!(s2.call(&["STRAIT.RECEIVER", "STOP"]), ok());
    assert_eq!(
        s2.call(&["STRAIT.RECEIVER", "STATUS"]),
        simple("not running")
    );
    wait_for("site 2 to close the senders' connections", || {
        s2.info_field("receiver:", "connections") == 0
    });
    wait_for("site 1 to see the link down", || {
        s1.info_field("to2:", "connected") == 0
    });
    write(&s1, "orders", 100..200);
    assert_eq!(s1.queued("to2"), 100);
    assert_eq!(s2.applied(), 100);

    assert_eq!(s2.call(&["STRAIT.RECEIVER", "START"]), ok());
    wait_for("site 2 to apply the rest", || s2.applied() == 200);
    let keys: Vec<String> = (0..200).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    assert_eq!(
        s1.call(&["STRAIT.RECEIVER", "START"]),
        Reply::Error("ERR this server has no gateway receiver".into())
    );
    assert_eq!(
        s2.call(&["STRAIT.RECEIVER", "RESTART"]),
        Reply::Error(
            "ERR unknown gateway receiver operation 'restart' (START, STOP or STATUS)".into()
        )
    );
}

#[test]
fn events_older_than_the_alert_threshold_are_counted_and_reported() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s1.sender_options = "alert-threshold = 1000\n".into();
    s1.start_server(&[2], false, false, &[]);
    write(&s1, "orders", 0..50);
    // The events must age past the threshold while site 2 is down: the passing of time is
    // what is tested here, not a stand-in for synchronisation.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s2.start_server(&[], false, true, &[]);
    wait_for("site 2 to apply the writes", || s2.applied() == 50);
    assert_eq!(s1.info_field("to2:", "over_alert_threshold"), 50);
    let line = s1
        .server
        .as_mut()
        .unwrap()
        .wait_line("waited longer than alert-threshold 1000 ms");
    assert!(line.contains("gateway sender"), "{line}");
    // Sent at once over an idle link, new writes are not late.
    write(&s1, "orders", 50..60);
    wait_for("site 2 to apply the new writes", || s2.applied() == 60);
    assert_eq!(s1.info_field("to2:", "over_alert_threshold"), 50);
}
