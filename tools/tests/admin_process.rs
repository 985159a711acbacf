//! The admin API and the `strait` commands that use it, against real processes on loopback:
//! gateway operations, entries, metrics, and the errors a user sees.

mod common;

use common::*;
use std::process::Command;

fn metrics(site: &Site) -> String {
    let mut r = ureq::get(&format!("http://127.0.0.1:{}/metrics", site.admin_port))
        .call()
        .unwrap();
    r.body_mut().read_to_string().unwrap()
}

/// The value of the metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
}

fn admin_sites(root: &std::path::Path) -> (Site, Site) {
    let (mut s1, mut s2) = two_sites(root);
    s1.admin_port = free_port();
    s2.admin_port = free_port();
    s2.start_server(&[], false, true, &[]);
    s1.start_server(&[2], false, false, &[]);
    (s1, s2)
}

#[test]
fn gateways_are_listed_and_operated_like_gfsh() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2) = admin_sites(tmp.path());
    wait_for("site 1's sender to connect", || {
        ok_at(&s1, &["list", "gateways"]).contains("Running and Connected")
    });
    let list = ok_at(&s1, &["list", "gateways"]);
    assert!(list.contains("GatewaySender Id"), "{list}");
    let row = list.lines().find(|l| l.starts_with("to2")).unwrap();
    assert!(
        row.contains("server1") && row.contains("| 2 ") && row.contains("Parallel"),
        "{row}"
    );
    assert!(
        !list.contains("GatewayReceiver Section"),
        "site 1 has no receiver"
    );
    let list2 = ok_at(&s2, &["list", "gateways"]);
    assert!(list2.contains("No gateway senders."), "{list2}");
    assert!(list2.contains("GatewayReceiver Section"), "{list2}");

    assert!(ok_at(&s1, &["pause", "gateway-sender", "--id", "to2"]).contains("now paused"));
    assert!(
        ok_at(&s1, &["status", "gateway-sender", "--id", "to2"]).contains(": Paused;"),
        "paused sender"
    );
    ok_at(
        &s1,
        &["put", "--region", "orders", "--key", "k1", "--value", "v1"],
    );
    assert_eq!(
        s1.queued("to2"),
        1,
        "a paused sender keeps the event queued"
    );
    assert!(ok_at(&s1, &["resume", "gateway-sender", "--id", "to2"]).contains("now running"));
    wait_for("site 2 to apply the entry", || s2.applied() == 1);
    assert_eq!(
        ok_at(&s2, &["get", "--region", "orders", "--key", "k1"]),
        "v1\n"
    );

    assert!(ok_at(&s2, &["stop", "gateway-receiver"]).contains("now not running"));
    assert!(ok_at(&s2, &["status", "gateway-receiver"]).contains("not running"));
    assert!(ok_at(&s2, &["start", "gateway-receiver"]).contains("now running"));

    assert!(ok_at(&s1, &["stop", "gateway-sender", "--id", "to2"]).contains("not-running"));
    assert!(
        ok_at(&s1, &["list", "gateways"]).contains("Not Running"),
        "a stopped sender"
    );
    assert!(
        ok_at(
            &s1,
            &["start", "gateway-sender", "--id", "to2", "--clean-queues"]
        )
        .contains("now running")
    );
    let config = ok_at(&s1, &["describe", "config"]);
    let back = strait_node::config::parse("site.toml".as_ref(), &config).unwrap();
    assert_eq!(back.senders[0].id, "to2");
    assert_eq!(back.server.http_service_port, s1.admin_port);
    assert_eq!(back.regions[0].name, "orders");
    let members = strait(&[
        "list",
        "members",
        "--locator",
        &format!("127.0.0.1[{}]", s1.locator_port),
    ]);
    let members = String::from_utf8(members.stdout).unwrap();
    assert!(
        members.contains("server1") && members.contains("Site 1"),
        "{members}"
    );
}

#[test]
fn entries_replicate_and_metrics_count_them() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2) = admin_sites(tmp.path());
    write(&s1, "orders", 0..100);
    ok_at(
        &s1,
        &[
            "put", "--region", "orders", "--key", "a b/é", "--value", "x",
        ],
    );
    wait_for("site 2 to apply every write", || s2.applied() == 101);
    assert_eq!(
        ok_at(&s2, &["get", "--region", "orders", "--key", "a b/é"]),
        "x\n"
    );
    assert!(ok_at(&s1, &["remove", "--region", "orders", "--key", "a b/é"]).contains("removed"));
    assert!(ok_at(&s1, &["remove", "--region", "orders", "--key", "a b/é"]).contains("no entry"));
    wait_for("site 2 to apply the remove", || s2.applied() == 102);
    let m1 = metrics(&s1);
    let labels = "{member=\"server1\",site=\"1\",sender=\"to2\",remote_site=\"2\"}";
    assert_eq!(
        metric(&m1, &format!("strait_sender_events_queued_total{labels}")),
        102.0
    );
    wait_for("site 1 to count every event sent", || {
        metric(
            &metrics(&s1),
            &format!("strait_sender_events_distributed_total{labels}"),
        ) == 102.0
    });
    assert!(m1.contains("# TYPE strait_sender_batch_rtt_seconds summary"));
    let m2 = metrics(&s2);
    assert_eq!(
        metric(
            &m2,
            "strait_receiver_events_applied_total{member=\"server2\",site=\"2\"}"
        ),
        102.0
    );
    assert_eq!(
        metric(
            &m2,
            "strait_receiver_apply_lag_seconds_count{member=\"server2\",site=\"2\"}"
        ),
        102.0
    );
    assert_eq!(
        metric(
            &m2,
            "strait_region_entries{member=\"server2\",site=\"2\",region=\"orders\"}"
        ),
        100.0
    );
    let regions = ok_at(&s2, &["list", "regions"]);
    assert!(
        regions
            .lines()
            .any(|l| l.starts_with("orders") && l.contains("| 100")),
        "{regions}"
    );
}

#[test]
fn errors_name_what_went_wrong_and_what_to_do() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (mut s1, s2) = admin_sites(tmp.path());
    let e = err_at(&s1, &["pause", "gateway-sender", "--id", "nope"]);
    assert!(e.contains("unknown gateway sender 'nope'"), "{e}");
    assert!(e.contains("GET /v1/gateways"), "{e}");
    let e = err_at(&s1, &["status", "gateway-receiver"]);
    assert!(e.contains("no gateway receiver"), "{e}");
    let e = err_at(&s2, &["get", "--region", "orders", "--key", "missing"]);
    assert!(e.contains("no entry `missing` in region `orders`"), "{e}");
    let e = err_at(&s2, &["get", "--region", "nowhere", "--key", "k"]);
    assert!(e.contains("unknown region 'nowhere'"), "{e}");
    let e = err_at(&s2, &["resume", "gateway-sender", "--id", "to2"]);
    assert!(e.contains("unknown gateway sender"), "{e}");
    // Nothing listens on a fresh port.
    let out = strait(&[
        "list",
        "gateways",
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("cannot reach the server's admin API"), "{e}");
    // A second server on a taken http-service-port does not start, and says which option.
    let mut other = Site::new(tmp.path(), 3);
    other.locator_port = s1.locator_port;
    other.admin_port = s1.admin_port;
    let args = other.write_config(&[], false, false, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains("http-service-port") && e.contains("in use"),
        "{e}"
    );
    s1.server.take();
}

#[test]
fn commands_reach_servers_through_their_locator() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2) = admin_sites(tmp.path());
    let at = format!("127.0.0.1[{}]", s1.locator_port);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--locator", &at]);
        let out = strait(&all);
        assert!(
            out.status.success(),
            "strait {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    wait_for("site 1's server to register its admin API", || {
        strait(&["list", "members", "--locator", &at])
            .stdout
            .windows(7)
            .any(|w| w == b"http://")
    });
    let list = run(&["list", "gateways"]);
    assert!(list.contains("Member server1 (http://"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("to2")), "{list}");
    assert!(run(&["pause", "gateway-sender", "--id", "to2"]).contains("now paused"));
    assert_eq!(
        s1.call(&["STRAIT.SENDER", "to2", "STATUS"]),
        Reply::Simple("paused".into())
    );
    run(&["resume", "gateway-sender", "--id", "to2"]);
    run(&[
        "put",
        "--region",
        "orders",
        "--key",
        "via-locator",
        "--value",
        "yes",
    ]);
    assert_eq!(
        run(&["get", "--region", "orders", "--key", "via-locator"]),
        "yes\n"
    );
    wait_for("site 2 to apply it", || s2.applied() == 1);
    // Every member failing is an error that names each.
    let out = strait(&["pause", "gateway-sender", "--id", "nope", "--locator", &at]);
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains("every member failed") && e.contains("server1"),
        "{e}"
    );
    // Servers without an admin API cannot be reached this way, and it says so.
    let mut s3 = Site::new(tmp.path(), 3);
    s3.start_locator(&[]);
    s3.start_server(&[], false, false, &[]);
    let bare = format!("127.0.0.1[{}]", s3.locator_port);
    wait_for("site 3's server to register", || {
        String::from_utf8_lossy(&strait(&["list", "members", "--locator", &bare]).stdout)
            .contains("server3")
    });
    let out = strait(&["list", "gateways", "--locator", &bare]);
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains("none of the 1 servers") && e.contains("admin API"),
        "{e}"
    );
}
