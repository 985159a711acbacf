//! `site.toml`: defaults, every refusal with its file, line, key and reason.

use std::path::Path;
use strait_node::config::*;
use strait_queue::ids::SiteId;
use strait_queue::queue::SyncPolicy;

fn parse(text: &str) -> Result<SiteConfig, ConfigError> {
    strait_node::config::parse(Path::new("site.toml"), text)
}

fn refusal(text: &str) -> ConfigError {
    parse(text).expect_err("this configuration must be refused")
}

const FULL: &str = r#"
[server]
name = "ny-1"
distributed-system-id = 1
locators = ["localhost[10334]", "10.0.0.2:10335"]
start-locator = "localhost[10336]"
client-port = 40405
shards = 2
directory = "/var/lib/strait"

[[disk-store]]
name = "fast"
directory = "nvme"

[[gateway-sender]]
id = "to-london"
remote-distributed-system-id = 2
parallel = true
enable-persistence = true
sync-policy = "interval-100ms"
maximum-queue-memory = 200

[[gateway-sender]]
id = "to-tokyo"
remote-distributed-system-id = 3

[[region]]
name = "orders"
type = "partition"
gateway-sender-ids = ["to-london", "to-tokyo"]

[[region]]
name = "customers"
type = "replicate"
gateway-sender-ids = ["to-tokyo"]

[gateway-receiver]
start-port = 5100
end-port = 5110
hostname-for-senders = "ny.example.net"
"#;

#[test]
fn a_full_file_parses_with_defaults_filled_in() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.server.name, "ny-1");
    assert_eq!(c.server.distributed_system_id, Some(SiteId(1)));
    assert_eq!(
        c.server.locators[0],
        HostPort {
            host: "localhost".into(),
            port: 10334
        }
    );
    assert_eq!(
        c.server.locators[1],
        HostPort {
            host: "10.0.0.2".into(),
            port: 10335
        }
    );
    assert_eq!(
        c.server.start_locator,
        Some(HostPort {
            host: "localhost".into(),
            port: 10336
        })
    );
    let london = &c.senders[0];
    assert!(london.parallel && london.enable_persistence);
    assert_eq!(london.sync, SyncPolicy::IntervalMs(100));
    assert_eq!(london.maximum_queue_memory_bytes, 200 << 20);
    assert_eq!(
        london.disk_dir,
        Path::new("/var/lib/strait/queues/to-london")
    );
    let tokyo = &c.senders[1];
    assert_eq!(tokyo.batch_size, BATCH_SIZE_DEFAULT);
    assert_eq!(tokyo.batch_time_interval_ms, BATCH_TIME_INTERVAL_MS_DEFAULT);
    assert_eq!(tokyo.dispatcher_threads, DISPATCHER_THREADS_DEFAULT);
    assert_eq!(tokyo.sync, SyncPolicy::EveryBatch);
    assert!(tokyo.disk_synchronous && !tokyo.parallel && !tokyo.enable_batch_conflation);
    assert_eq!(c.regions[0].total_num_buckets, TOTAL_NUM_BUCKETS_DEFAULT);
    let r = c.receiver.unwrap();
    assert_eq!((r.start_port, r.end_port), (5100, 5110));
    assert_eq!(
        r.maximum_time_between_pings_ms,
        MAXIMUM_TIME_BETWEEN_PINGS_MS_DEFAULT
    );
}

#[test]
fn an_empty_file_is_a_server_with_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.server.client_port, CLIENT_PORT_DEFAULT);
    assert_eq!(c.server.name, "server-40404");
    assert!(c.regions.is_empty() && c.senders.is_empty() && c.receiver.is_none());
    assert_eq!(c.server.start_locator, None);
    assert!(!c.server.transparent_huge_pages);
}

#[test]
fn transparent_huge_pages_take_a_boolean() {
    let c = parse("[server]\ntransparent-huge-pages = true\n").unwrap();
    assert!(c.server.transparent_huge_pages);
    let e = refusal("[server]\ntransparent-huge-pages = \"yes\"\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.reason.contains("expected a boolean"), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let e = refusal("[server]\nclient-port = 1\ncliant-port = 2\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.reason.contains("unknown field `cliant-port`"), "{e}");
    assert!(e.to_string().starts_with("site.toml:3:"), "{e}");
}

#[test]
fn each_invalid_value_is_refused_with_key_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[server]\nclient-port = 70000\n",
            "server.client-port",
            "out of range",
        ),
        (
            "[server]\ndistributed-system-id = 0\n",
            "server.distributed-system-id",
            "out of range",
        ),
        (
            "[server]\nlocators = [\"nohost\"]\n",
            "server.locators[0]",
            "has no port",
        ),
        (
            "[server]\nstart-locator = \"localhost[0]\"\n",
            "server.start-locator",
            "port 0",
        ),
        (
            "[server]\nstart-locator = \"localhost\"\n",
            "server.start-locator",
            "has no port",
        ),
        (
            "[server]\nbind-address = \"not-an-ip\"\n",
            "server.bind-address",
            "not an IP address",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 2\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 3\n",
            "gateway-sender[1].id",
            "used twice",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 1\n",
            "gateway-sender[0].remote-distributed-system-id",
            "own distributed-system-id",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 2\nsocket-read-timeout = 5000\n",
            "gateway-sender[0].socket-read-timeout",
            "below the minimum",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 2\nbatches-in-flight = 0\n",
            "gateway-sender[0].batches-in-flight",
            "out of range",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 2\nbatches-in-flight = 1025\n",
            "gateway-sender[0].batches-in-flight",
            "out of range",
        ),
        (
            "[server]\nhttp-service-port = 70000\n",
            "server.http-service-port",
            "out of range",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 2\nsync-policy = \"sometimes\"\n",
            "gateway-sender[0].sync-policy",
            "not a sync policy",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"a\"\nremote-distributed-system-id = 2\nparallel = true\norder-policy = \"thread\"\n",
            "gateway-sender[0].order-policy",
            "parallel sender",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[[gateway-sender]]\nid = \"p\"\nremote-distributed-system-id = 2\nparallel = true\n[[region]]\nname = \"r\"\ntype = \"replicate\"\ngateway-sender-ids = [\"p\"]\n",
            "region[0].gateway-sender-ids[0]",
            "cannot be used with replicated region",
        ),
        (
            "[[region]]\nname = \"r\"\ntype = \"partition\"\ngateway-sender-ids = [\"nope\"]\n",
            "region[0].gateway-sender-ids[0]",
            "no gateway sender",
        ),
        (
            "[[region]]\nname = \"r\"\ntype = \"partition\"\n[[region]]\nname = \"r\"\ntype = \"replicate\"\n",
            "region[1].name",
            "defined twice",
        ),
        (
            "[[region]]\nname = \"a/b\"\ntype = \"partition\"\n",
            "region[0].name",
            "not a valid name",
        ),
        (
            "[[region]]\nname = \"r\"\ntype = \"partition\"\ntotal-num-buckets = 0\n",
            "region[0].total-num-buckets",
            "out of range",
        ),
        (
            "[server]\ndistributed-system-id = 1\n[gateway-receiver]\nstart-port = 6000\nend-port = 5000\n",
            "gateway-receiver.end-port",
            "below start-port",
        ),
        (
            "[gateway-receiver]\n",
            "server.distributed-system-id",
            "is required",
        ),
    ];
    for (text, key, reason) in cases {
        let e = refusal(text);
        assert_eq!(&e.key, key, "{text}\n{e}");
        assert!(e.reason.contains(reason), "{text}\n{e}");
        assert!(e.line.is_some(), "{text}\n{e}");
    }
}

#[test]
fn an_invalid_region_type_names_the_accepted_ones() {
    let e = refusal("[[region]]\nname = \"r\"\ntype = \"partitioned\"\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(
        e.reason.contains("partition") && e.reason.contains("replicate"),
        "{e}"
    );
}

#[test]
fn host_ports_take_both_spellings() {
    assert_eq!(
        HostPort::parse("ny[10334]").unwrap(),
        HostPort {
            host: "ny".into(),
            port: 10334
        }
    );
    assert_eq!(
        HostPort::parse("ny:10334").unwrap(),
        HostPort {
            host: "ny".into(),
            port: 10334
        }
    );
    assert_eq!(
        HostPort::parse("[::1]:10334").unwrap(),
        HostPort {
            host: "::1".into(),
            port: 10334
        }
    );
    assert_eq!(
        HostPort::parse("[::1]:10334").unwrap().to_string(),
        "[::1]:10334"
    );
    assert!(HostPort::parse("ny[0]").is_err());
    assert!(HostPort::parse("ny:abc").is_err());
    assert!(HostPort::parse(":10334").is_err());
}

#[test]
fn a_missing_file_is_named() {
    let e = load(Path::new("/nonexistent/site.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("/nonexistent/site.toml: cannot read the file"),
        "{e}"
    );
}

#[test]
fn a_configuration_written_out_reads_back_the_same() {
    let full = parse(FULL).unwrap();
    let text = to_toml(&full);
    assert!(text.contains("[[gateway-sender]]"), "{text}");
    assert!(text.contains("[[disk-store]]"), "{text}");
    assert_eq!(parse(&text).unwrap(), full, "{text}");
    // Every default is written out, so the file says what the server does.
    let minimal = parse(
        "[server]\ndistributed-system-id = 3\n[[region]]\nname = \"r\"\ntype = \"replicate\"\n",
    )
    .unwrap();
    let text = to_toml(&minimal);
    for key in [
        "client-port = 40404",
        "http-service-port = 7070",
        "directory = \".\"",
    ] {
        assert!(text.contains(key), "{key} missing from\n{text}");
    }
    assert_eq!(parse(&text).unwrap(), minimal, "{text}");
}

#[test]
fn disk_stores_are_named_directories_inside_the_servers_directory() {
    let c = parse(FULL).unwrap();
    assert_eq!(
        c.disk_stores,
        vec![DiskStoreDef {
            name: "fast".into(),
            directory: "nvme".into(),
        }]
    );
    assert_eq!(
        c.disk_stores[0].path(&c.server.directory),
        Path::new("/var/lib/strait/nvme")
    );
    let twice = "[[disk-store]]\nname = \"a\"\ndirectory = \"x\"\n[[disk-store]]\nname = \"a\"\ndirectory = \"y\"\n";
    let e = refusal(twice);
    assert_eq!((e.key.as_str(), e.line), ("disk-store[1].name", Some(4)));
    assert!(e.reason.contains("defined twice"), "{e}");
    let e = refusal("[[disk-store]]\nname = \"a\"\ndirectory = \"\"\n");
    assert_eq!(e.key, "disk-store[0].directory");
}
