//! Run-time changes (gfsh's create, alter, destroy) against real processes on loopback: a
//! replication built while both sites run, changed, kept over a restart, and taken apart; and
//! the errors a user sees.

mod common;

use common::*;

fn get(site: &Site, region: &str, key: &str) -> Option<String> {
    let out = strait_at(site, &["get", "--region", region, "--key", key]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

fn put(site: &Site, region: &str, key: &str, value: &str) {
    ok_at(
        site,
        &["put", "--region", region, "--key", key, "--value", value],
    );
}

#[test]
fn a_replication_is_built_changed_kept_over_a_restart_and_taken_apart_at_run_time() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s1.admin_port = free_port();
    s2.admin_port = free_port();
    // Both servers start with region `orders` only: no sender, no receiver.
    s2.start_server(&[], false, false, &[]);
    s1.start_server(&[], false, false, &[]);

    // Site 2 gets a receiver, site 1 a disk store and a persistent parallel sender in it,
    // and both a region `users` that site 1 sends.
    let (lo, hi) = (
        s2.receiver_base.to_string(),
        (s2.receiver_base + s2.receiver_ports - 1).to_string(),
    );
    ok_at(
        &s2,
        &[
            "create",
            "gateway-receiver",
            "--start-port",
            &lo,
            "--end-port",
            &hi,
            "--bind-address",
            "127.0.0.1",
        ],
    );
    assert!(ok_at(&s2, &["list", "gateways"]).contains("GatewayReceiver Section"));
    ok_at(
        &s1,
        &["create", "disk-store", "--name", "fast", "--dir", "fast"],
    );
    ok_at(
        &s1,
        &[
            "create",
            "gateway-sender",
            "--id",
            "to2",
            "--remote-distributed-system-id",
            "2",
            "--parallel",
            "true",
            "--enable-persistence",
            "true",
            "--disk-store-name",
            "fast",
        ],
    );
    assert!(
        s1.dir.join("fast/to2/shard-0").exists(),
        "the sender's queues are in the disk store's directory"
    );
    assert!(ok_at(&s1, &["list", "disk-stores"]).contains("to2"));
    ok_at(
        &s2,
        &["create", "region", "--name", "users", "--type", "PARTITION"],
    );
    ok_at(
        &s1,
        &[
            "create",
            "region",
            "--name",
            "users",
            "--type",
            "PARTITION",
            "--gateway-sender-id",
            "to2",
        ],
    );
    wait_for("site 1's new sender to connect", || {
        ok_at(&s1, &["list", "gateways"]).contains("Running and Connected")
    });
    put(&s1, "users", "u1", "ada");
    wait_for("u1 to reach site 2", || {
        get(&s2, "users", "u1").as_deref() == Some("ada")
    });

    // Region `orders`, created with the server, is attached to the sender at run time.
    ok_at(
        &s1,
        &[
            "alter",
            "region",
            "--name",
            "orders",
            "--gateway-sender-id",
            "to2",
        ],
    );
    put(&s1, "orders", "o1", "ten");
    wait_for("o1 to reach site 2", || {
        get(&s2, "orders", "o1").as_deref() == Some("ten")
    });
    ok_at(
        &s1,
        &[
            "alter",
            "gateway-sender",
            "--id",
            "to2",
            "--batch-size",
            "7",
        ],
    );
    assert!(ok_at(&s1, &["describe", "config"]).contains("batch-size = 7"));

    // What a user gets wrong is refused, naming the problem.
    let e = err_at(
        &s1,
        &["create", "region", "--name", "users", "--type", "partition"],
    );
    assert!(e.contains("region `users` already exists"), "{e}");
    let e = err_at(&s1, &["destroy", "gateway-sender", "--id", "to2"]);
    assert!(
        e.contains("used by region(s)") && e.contains("`users`"),
        "{e}"
    );
    let e = err_at(
        &s1,
        &[
            "create",
            "gateway-sender",
            "--id",
            "to3",
            "--remote-distributed-system-id",
            "3",
            "--batch-size",
            "0",
        ],
    );
    assert!(e.contains("batch-size"), "{e}");
    let file = s1.dir.join("site.toml").display().to_string();
    let e = err_at(
        &s1,
        &[
            "create",
            "gateway-sender",
            "--id",
            "to4",
            "--remote-distributed-system-id",
            "4",
            "--enable-persistence",
            "true",
            "--disk-dir",
            &format!("{file}/queues"),
        ],
    );
    assert!(e.contains("gateway sender `to4`: cannot create"), "{e}");
    assert!(!ok_at(&s1, &["list", "gateways"]).contains("to4"));
    let e = err_at(&s1, &["destroy", "region", "--name", "nope"]);
    assert!(e.contains("unknown region `nope`"), "{e}");
    assert!(
        ok_at(&s1, &["destroy", "region", "--name", "nope", "--if-exists"])
            .contains("nothing to do")
    );
    let e = err_at(
        &s1,
        &[
            "create",
            "region",
            "--name",
            "x",
            "--type",
            "LOCAL",
            "--gateway-sender-id",
            "to2",
        ],
    );
    assert!(e.contains("region type `LOCAL`"), "{e}");
    let e = err_at(&s1, &["destroy", "disk-store", "--name", "fast"]);
    assert!(
        e.contains("holds the queues of gateway sender(s) `to2`"),
        "{e}"
    );

    // A restart brings every change back from the server's directory.
    assert!(
        s1.server.as_mut().unwrap().terminate(),
        "site 1 stops cleanly"
    );
    s1.start_server(&[], false, false, &[]);
    let regions = ok_at(&s1, &["list", "regions"]);
    assert!(
        regions.contains("users") && regions.contains("to2"),
        "{regions}"
    );
    assert!(ok_at(&s1, &["describe", "config"]).contains("batch-size = 7"));
    wait_for("site 1's sender to connect after the restart", || {
        ok_at(&s1, &["list", "gateways"]).contains("Running and Connected")
    });
    put(&s1, "users", "u2", "grace");
    wait_for("u2 to reach site 2", || {
        get(&s2, "users", "u2").as_deref() == Some("grace")
    });

    // Taken apart: detach, destroy the sender (its files go), the store, a region, the
    // receiver.
    for r in ["users", "orders"] {
        ok_at(
            &s1,
            &["alter", "region", "--name", r, "--gateway-sender-id", ""],
        );
    }
    ok_at(&s1, &["destroy", "gateway-sender", "--id", "to2"]);
    assert!(ok_at(&s1, &["list", "gateways"]).contains("No gateway senders."));
    let queues = s1.dir.join("fast/to2");
    assert!(
        !queues.join("shard-0").exists() && !queues.join("shard-1").exists(),
        "the destroyed sender's queue files are gone"
    );
    ok_at(&s1, &["destroy", "disk-store", "--name", "fast"]);
    ok_at(&s1, &["destroy", "region", "--name", "users"]);
    assert!(!ok_at(&s1, &["list", "regions"]).contains("users"));
    let e = err_at(&s1, &["get", "--region", "users", "--key", "u1"]);
    assert!(e.contains("unknown region"), "{e}");
    // Writes to `orders` no longer queue anything.
    put(&s1, "orders", "o2", "eleven");
    ok_at(&s2, &["destroy", "gateway-receiver"]);
    assert!(!ok_at(&s2, &["list", "gateways"]).contains("GatewayReceiver Section"));

    // The region destroyed and created again gets its id back and starts empty.
    ok_at(
        &s1,
        &["create", "region", "--name", "users", "--type", "REPLICATE"],
    );
    assert_eq!(get(&s1, "users", "u1"), None);
    put(&s1, "users", "u3", "hopper");
    assert_eq!(get(&s1, "users", "u3").as_deref(), Some("hopper"));
}

#[test]
fn changes_made_while_writes_replicate_lose_and_double_nothing() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, mut s2) = two_sites(tmp.path());
    s1.admin_port = free_port();
    s2.admin_port = free_port();
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], true, false, &[]);
    wait_for("site 1's sender to connect", || {
        ok_at(&s1, &["list", "gateways"]).contains("Running and Connected")
    });
    const KEYS: usize = 6000;
    let writer = {
        let s1 = Site {
            client_port: s1.client_port,
            ..Site::new(tmp.path(), 1)
        };
        std::thread::spawn(move || {
            for chunk in (0..KEYS).step_by(200) {
                write(&s1, "orders", chunk..chunk + 200);
            }
        })
    };
    // Every change below makes site 1's dispatchers reconnect (new options or regions), with
    // batches in flight resent marked possible-duplicate.
    for round in 0..4 {
        let size = if round % 2 == 0 { "50" } else { "100" };
        ok_at(
            &s1,
            &[
                "alter",
                "gateway-sender",
                "--id",
                "to2",
                "--batch-size",
                size,
            ],
        );
        let name = format!("extra{round}");
        ok_at(
            &s2,
            &["create", "region", "--name", &name, "--type", "partition"],
        );
        ok_at(
            &s1,
            &[
                "create",
                "region",
                "--name",
                &name,
                "--type",
                "partition",
                "--gateway-sender-id",
                "to2",
            ],
        );
        put(&s1, &name, "k", &name);
        ok_at(&s1, &["destroy", "region", "--name", &name]);
    }
    writer.join().unwrap();
    wait_for("every write to reach site 2", || {
        dbsize(&s2, "orders") == KEYS as i64 && s1.queued("to2") == 0
    });
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    // A write to a region destroyed at site 1 after it was acknowledged still reaches site 2.
    wait_for("every extra region's write to reach site 2", || {
        (0..4).all(|r| {
            get(&s2, &format!("extra{r}"), "k").as_deref() == Some(format!("extra{r}").as_str())
        })
    });
    assert_eq!(s2.info_field("receiver:", "dead_lettered"), 0);
    assert_eq!(
        s2.applied(),
        KEYS as u64 + 4,
        "each event applied once at site 2"
    );
}
