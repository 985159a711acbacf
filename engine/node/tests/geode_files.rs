//! Geode's own files (`strait_node::geode`): a realistic cache.xml and gemfire.properties map
//! to the SiteConfig a user expects, every unsupported piece is warned about by file and line,
//! and every bad value is refused by file and line.

use std::path::{Path, PathBuf};
use strait_node::config::{
    HostPort, OrderPolicy, ReceiverDef, RegionDef, RegionType, SenderDef, ServerSettings,
};
use strait_node::geode::{self, Source};
use strait_node::locator::LocatorConfig;
use strait_queue::ids::SiteId;
use strait_queue::queue::SyncPolicy;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/geode")
        .join(name)
}

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}

#[test]
fn a_realistic_cache_xml_and_gemfire_properties_give_the_expected_site() {
    let loaded = geode::load_server(
        Some(&testdata("cache.xml")),
        Some(&testdata("gemfire.properties")),
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(
        c.server,
        ServerSettings {
            name: "ny-1".into(),
            distributed_system_id: Some(SiteId(1)),
            locators: vec![hp("ny-locator-1", 10334), hp("ny-locator-2", 10334)],
            start_locator: None,
            bind_address: [0, 0, 0, 0].into(),
            client_port: 40404,
            shards: None,
            directory: ".".into(),
            http_service_port: 7070,
            http_service_bind_address: [0, 0, 0, 0].into(),
            transparent_huge_pages: false,
        }
    );
    assert_eq!(
        c.senders,
        vec![
            SenderDef {
                id: "to-london".into(),
                remote_distributed_system_id: SiteId(2),
                parallel: true,
                batch_size: 500,
                batch_time_interval_ms: 500,
                maximum_queue_memory_bytes: 200 << 20,
                enable_persistence: true,
                disk_synchronous: true,
                sync: SyncPolicy::EveryBatch,
                enable_batch_conflation: false,
                dispatcher_threads: 2,
                order_policy: OrderPolicy::Partition,
                alert_threshold_ms: 0,
                socket_buffer_size: 0,
                socket_read_timeout_ms: 60_000,
                batches_in_flight: 64,
                manual_start: false,
                // The disk store's directory, one directory per sender inside it.
                disk_dir: "/var/geode/wan-queues/to-london".into(),
            },
            SenderDef {
                id: "to-tokyo".into(),
                remote_distributed_system_id: SiteId(3),
                parallel: false,
                batch_size: 100,
                batch_time_interval_ms: 1000,
                maximum_queue_memory_bytes: 100 << 20,
                enable_persistence: false,
                disk_synchronous: true,
                sync: SyncPolicy::EveryBatch,
                enable_batch_conflation: true,
                dispatcher_threads: 4,
                order_policy: OrderPolicy::Key,
                alert_threshold_ms: 5000,
                socket_buffer_size: 0,
                socket_read_timeout_ms: 0,
                batches_in_flight: 64,
                manual_start: false,
                disk_dir: Path::new(".").join("queues").join("to-tokyo"),
            },
        ]
    );
    assert_eq!(
        c.receiver,
        Some(ReceiverDef {
            start_port: 1530,
            end_port: 1551,
            bind_address: [10, 0, 0, 5].into(),
            hostname_for_senders: Some("gateway.ny.example.com".into()),
            maximum_time_between_pings_ms: 60_000,
            socket_buffer_size: 524_288,
            manual_start: false,
        })
    );
    let both = vec!["to-london".to_string(), "to-tokyo".to_string()];
    assert_eq!(
        c.regions,
        vec![
            RegionDef {
                name: "customers".into(),
                kind: RegionType::Partition,
                total_num_buckets: 113,
                gateway_sender_ids: both.clone(),
                persistent: true,
            },
            // From the named region attributes `wan-partition`.
            RegionDef {
                name: "orders".into(),
                kind: RegionType::Partition,
                total_num_buckets: 227,
                gateway_sender_ids: both,
                persistent: false,
            },
            RegionDef {
                name: "products".into(),
                kind: RegionType::Replicate,
                total_num_buckets: 113,
                gateway_sender_ids: vec!["to-tokyo".into()],
                persistent: false,
            },
        ]
    );
}

#[test]
fn what_strait_does_not_act_on_is_warned_about_by_file_and_line() {
    let loaded = geode::load_server(
        Some(&testdata("cache.xml")),
        Some(&testdata("gemfire.properties")),
    )
    .unwrap();
    let got: Vec<String> = loaded
        .warnings
        .iter()
        .map(|w| {
            format!(
                "{}:{}: {}",
                w.file.file_name().unwrap().to_string_lossy(),
                w.line.unwrap(),
                w.message
            )
        })
        .collect();
    let want = [
        "cache.xml:7: attribute `auto-compact` of <disk-store> is not supported; ignored",
        "cache.xml:7: attribute `max-oplog-size` of <disk-store> is not supported; ignored",
        "cache.xml:9: attribute `dir-size` of <disk-dir> is not supported; ignored",
        "cache.xml:19: <gateway-event-filter> of gateway sender `to-tokyo` is not supported (Strait runs no Java classes): events are sent unfiltered",
        "cache.xml:27: element <pdx> in <cache> is not supported; ignored",
        "cache.xml:28: PARTITION_REDUNDANT: redundant copies are not supported (a Strait site keeps one copy of each bucket); ignored",
        "cache.xml:30: redundant-copies is not supported (a Strait site keeps one copy of each bucket); ignored",
        "cache.xml:39: attribute `scope` of <region-attributes> is not supported; ignored",
        "gemfire.properties:6: property `log-level` is not supported; ignored",
        "gemfire.properties:7: property `statistic-sampling-enabled` is not supported; ignored",
    ];
    assert_eq!(got, want);
}

fn server(
    xml: &str,
    props: &str,
) -> Result<geode::Loaded<strait_node::config::SiteConfig>, String> {
    geode::parse_server(
        Some(Source {
            path: "cache.xml".as_ref(),
            text: xml,
        }),
        Some(Source {
            path: "gemfire.properties".as_ref(),
            text: props,
        }),
    )
    .map_err(|e| e.to_string())
}

const SITE1: &str = "distributed-system-id=1\n";

/// A cache.xml: `body` inside Geode's `<cache>`, from line 3 on.
fn cache(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<cache xmlns=\"http://geode.apache.org/schema/cache\" version=\"1.0\">\n{body}\n</cache>\n"
    )
}

#[test]
fn unknown_elements_and_attributes_are_warned_about_and_the_rest_is_used() {
    let xml = cache(
        "<async-event-queue id=\"q\"/>\n\
         <gateway-sender id=\"to2\" remote-distributed-system-id=\"2\" group-transaction-events=\"true\"/>\n\
         <lucene:index xmlns:lucene=\"http://geode.apache.org/schema/lucene\" name=\"i\"/>\n\
         <region name=\"a\" refid=\"REPLICATE_PERSISTENT_OVERFLOW\">\n\
           <region-attributes gateway-sender-ids=\"to2\"><cache-listener/></region-attributes>\n\
           <region name=\"child\" refid=\"REPLICATE\"/>\n\
         </region>",
    );
    let loaded = server(&xml, SITE1).unwrap();
    let got: Vec<(usize, &str)> = loaded
        .warnings
        .iter()
        .map(|w| (w.line.unwrap(), w.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                3,
                "element <async-event-queue> in <cache> is not supported; ignored"
            ),
            (
                4,
                "attribute `group-transaction-events` of <gateway-sender> is not supported; ignored"
            ),
            (
                5,
                "element <index> (namespace http://geode.apache.org/schema/lucene) in <cache> is not supported; ignored"
            ),
            (
                6,
                "REPLICATE_PERSISTENT_OVERFLOW: eviction (overflow to disk, heap LRU) is not supported; the region is kept in memory"
            ),
            (
                7,
                "element <cache-listener> in <region-attributes> is not supported; ignored"
            ),
            (
                8,
                "subregion `child` of region `a` is not supported (Strait regions are flat); ignored"
            ),
        ]
    );
    let c = loaded.config;
    assert_eq!(c.senders.len(), 1);
    assert_eq!(c.regions.len(), 1);
    assert_eq!(c.regions[0].kind, RegionType::Replicate);
    assert!(c.regions[0].persistent);
    assert_eq!(c.regions[0].gateway_sender_ids, ["to2"]);
}

#[test]
fn bad_values_are_refused_with_the_file_and_the_line() {
    let cases: [(&str, &str, &str); 14] = [
        (
            "<gateway-sender id=\"to2\"\n remote-distributed-system-id=\"2\"\n batch-size=\"lots\"/>",
            SITE1,
            "cache.xml:5: gateway-sender.batch-size: `lots` is not a whole number",
        ),
        // Ranges are checked by the same rules as site.toml, at the element's line.
        (
            "\n<gateway-sender id=\"to2\" remote-distributed-system-id=\"2\" batch-size=\"0\"/>",
            SITE1,
            "cache.xml:4: gateway-sender[0].batch-size: 0 is out of range (1..=1000000)",
        ),
        (
            "<gateway-sender id=\"to2\" remote-distributed-system-id=\"2\" parallel=\"yes\"/>",
            SITE1,
            "cache.xml:3: gateway-sender.parallel: `yes` is not a boolean (true or false)",
        ),
        (
            "<gateway-sender id=\"to2\" remote-distributed-system-id=\"2\" order-policy=\"fifo\"/>",
            SITE1,
            "cache.xml:3: gateway-sender.order-policy: `fifo` is not an order policy: KEY, THREAD or PARTITION",
        ),
        (
            "<gateway-sender id=\"to2\" remote-distributed-system-id=\"2\" enable-persistence=\"true\" disk-store-name=\"nope\"/>",
            SITE1,
            "cache.xml:3: gateway-sender.disk-store-name: no <disk-store> is named `nope`",
        ),
        (
            "<gateway-sender remote-distributed-system-id=\"2\"/>",
            SITE1,
            "cache.xml:3: gateway-sender.id: <gateway-sender> has no `id`",
        ),
        (
            "<region name=\"orders\" refid=\"PARTITON\"/>",
            SITE1,
            "cache.xml:3: refid: `PARTITON` is neither a region shortcut (PARTITION, REPLICATE_PERSISTENT, ...) nor the id of a <region-attributes>",
        ),
        (
            "<region-attributes id=\"a\" refid=\"b\"/>\n<region-attributes id=\"b\" refid=\"a\"/>",
            SITE1,
            "circular or longer than 16",
        ),
        (
            "<region name=\"orders\" refid=\"LOCAL\"/>",
            SITE1,
            "cache.xml:3: refid: LOCAL: local regions are not supported (Strait regions are distributed); use PARTITION or REPLICATE",
        ),
        (
            "<region name=\"orders\"><region-attributes data-policy=\"empty\"/></region>",
            SITE1,
            "cache.xml:3: region-attributes.data-policy: data policy `empty` is not supported",
        ),
        (
            "\n\n<region name=\"orders\" refid=\"PARTITION\">\n<region-attributes gateway-sender-ids=\"to9\"/></region>",
            SITE1,
            "cache.xml:5: region[0].gateway-sender-ids[0]: no gateway sender has id `to9`",
        ),
        (
            "<gateway-receiver start-port=\"5000\"/>",
            "name=x\n",
            "cache.xml:3: distributed-system-id: the gateway receiver needs the site's distributed-system-id: set `distributed-system-id` (1..=255) in gemfire.properties (--properties-file)",
        ),
        (
            "<region name=\"orders\" refid=\"PARTITION\"/>",
            "# site\n\ndistributed-system-id=300\n",
            "gemfire.properties:3: distributed-system-id: 300 is out of range (-1 for none, or 1..=255)",
        ),
        (
            "<region name=\"orders\" refid=\"PARTITION\"/>",
            "distributed-system-id=1\nlocators=ny-locator[10334],ny-locator-2\n",
            "gemfire.properties:2: locators: `ny-locator-2` has no port",
        ),
    ];
    for (body, props, want) in cases {
        let err = match server(&cache(body), props) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        };
        assert!(err.contains(want), "{body}\n got: {err}\nwant: {want}");
    }
    // Not XML at all.
    let err = server("<cache>\n<region name=\"a\">\n</cache>", SITE1).unwrap_err();
    assert!(err.starts_with("cache.xml:3: not well-formed XML"), "{err}");
    let err = server("<client-cache/>", SITE1).unwrap_err();
    assert!(err.contains("a client's cache.xml"), "{err}");
}

#[test]
fn a_named_disk_store_and_the_default_one_give_each_sender_its_own_directory() {
    let xml = cache(
        "<disk-store name=\"DEFAULT\"><disk-dirs><disk-dir>default-store</disk-dir></disk-dirs></disk-store>\n\
         <disk-store name=\"wan\"><disk-dirs><disk-dir>wan-store</disk-dir><disk-dir>/elsewhere</disk-dir></disk-dirs></disk-store>\n\
         <gateway-sender id=\"a\" remote-distributed-system-id=\"2\" enable-persistence=\"true\" disk-store-name=\"wan\"/>\n\
         <gateway-sender id=\"b\" remote-distributed-system-id=\"2\" enable-persistence=\"true\" disk-store-name=\"wan\"/>\n\
         <gateway-sender id=\"c\" remote-distributed-system-id=\"2\" enable-persistence=\"true\"/>",
    );
    let loaded = server(&xml, SITE1).unwrap();
    let dirs: Vec<&Path> = loaded
        .config
        .senders
        .iter()
        .map(|s| s.disk_dir.as_path())
        .collect();
    // Relative directories are inside the server's directory (`.` until --dir changes it).
    assert_eq!(
        dirs,
        [
            Path::new("./wan-store/a"),
            Path::new("./wan-store/b"),
            Path::new("./default-store/c")
        ]
    );
    // The stores are in the configuration too, for senders created at run time; their
    // senders are found by directory.
    let stores: Vec<(&str, &Path)> = loaded
        .config
        .disk_stores
        .iter()
        .map(|d| (d.name.as_str(), d.directory.as_path()))
        .collect();
    assert_eq!(
        stores,
        [
            ("DEFAULT", Path::new("default-store")),
            ("wan", Path::new("wan-store"))
        ]
    );
    let state = strait_node::runtime::State::new(loaded.config.clone());
    assert_eq!(state.senders_in("wan"), ["a", "b"]);
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .message
            .contains("only its first directory is used (wan-store)"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn a_locators_gemfire_properties_fill_its_config() {
    let mut c = LocatorConfig::new("locator", "/tmp/unused");
    let warnings = geode::load_locator(&testdata("locator.properties"), &mut c).unwrap();
    let mut want = LocatorConfig::new("london-locator", "/tmp/unused");
    want.distributed_system_id = Some(SiteId(2));
    // A value continued over two lines with `\`, as Java reads it.
    want.remote_locators = vec![hp("ny-locator-1", 10334), hp("tokyo-locator", 10334)];
    want.hostname_for_clients = Some("203.0.113.7".into());
    want.bind_address = [10, 1, 0, 4].into();
    want.member_timeout_ms = 20_000;
    assert_eq!(c, want);
    let got: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].ends_with("locator.properties:10: property `jmx-manager` is not supported; ignored"),
        "{got:?}"
    );

    let src = |text| Source {
        path: "gemfire.properties".as_ref(),
        text,
    };
    let err = geode::parse_locator(src("name=l\nmember-timeout=10\n"), &mut c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "gemfire.properties:2: member-timeout: 10 ms is out of range (300..=3600000)"
    );
    let err = geode::parse_locator(src("remote-locators=a[1],b\n"), &mut c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "gemfire.properties:1: remote-locators: `b` has no port: write host:port or host[port]"
    );
    // A server's gemfire.properties may hold locator settings: a server says it ignores them.
    let loaded = server(
        "<cache/>",
        "distributed-system-id=1\nremote-locators=x[1]\n",
    )
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains("applies to a locator"));
}

#[test]
fn geodes_files_written_out_as_site_toml_read_back_the_same() {
    let loaded = geode::load_server(
        Some(&testdata("cache.xml")),
        Some(&testdata("gemfire.properties")),
    )
    .unwrap();
    let text = strait_node::config::to_toml(&loaded.config);
    let back = strait_node::config::parse(Path::new("site.toml"), &text).unwrap();
    assert_eq!(back, loaded.config, "{text}");
}
