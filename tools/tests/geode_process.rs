//! Real `strait` processes started from Geode's own files: site 1's locator from its
//! gemfire.properties, site 1's server from cache.xml and gemfire.properties, replicating to a
//! site 2 configured with site.toml. The harness is in `common/mod.rs`.

mod common;

use common::*;

#[test]
fn a_server_started_from_cache_xml_replicates_to_another_site() {
    let _serial = common::one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut s1 = Site::new(tmp.path(), 1);
    let mut s2 = Site::new(tmp.path(), 2);

    let locator_props = s1.dir.join("locator.properties");
    std::fs::write(
        &locator_props,
        "name=locator1\ndistributed-system-id=1\nbind-address=127.0.0.1\nmcast-port=0\n",
    )
    .unwrap();
    std::fs::create_dir_all(s1.dir.join("locator")).unwrap();
    let locator_args: Vec<String> = [
        "start",
        "locator",
        "--properties-file",
        &locator_props.display().to_string(),
        "--port",
        &s1.locator_port.to_string(),
        "--dir",
        &s1.dir.join("locator").display().to_string(),
        "--exchange-interval-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    s1.locator = Some(Proc::start(&locator_args, "listening on"));
    s2.start_locator(&[s1.locator_port]);
    s2.start_server(&[], false, true, &[]);

    let cache_xml = s1.dir.join("cache.xml");
    std::fs::write(
        &cache_xml,
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<cache xmlns="http://geode.apache.org/schema/cache"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://geode.apache.org/schema/cache http://geode.apache.org/schema/cache/cache-1.0.xsd"
       version="1.0">
  <disk-store name="wan">
    <disk-dirs><disk-dir>wan-queues</disk-dir></disk-dirs>
  </disk-store>
  <gateway-sender id="to2" remote-distributed-system-id="2" parallel="true"
                  enable-persistence="true" disk-store-name="wan"/>
  <cache-server port="{port}" bind-address="127.0.0.1"/>
  <pdx read-serialized="true"/>
  <region name="orders" refid="PARTITION_PERSISTENT">
    <region-attributes gateway-sender-ids="to2"/>
  </region>
</cache>
"#,
            port = s1.client_port
        ),
    )
    .unwrap();
    let props = s1.dir.join("gemfire.properties");
    std::fs::write(
        &props,
        format!(
            "name=server1\ndistributed-system-id=1\nlocators=127.0.0.1[{}]\nmcast-port=0\nlog-level=config\nhttp-service-port=0\n",
            s1.locator_port
        ),
    )
    .unwrap();
    let server_args: Vec<String> = [
        "start",
        "server",
        "--cache-xml",
        &cache_xml.display().to_string(),
        "--properties-file",
        &props.display().to_string(),
        "--dir",
        &s1.dir.display().to_string(),
        "--shards",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Proc::start(&server_args, "listening on");
    // The operator is told what the files say that Strait does not act on.
    let pdx = server.wait_line("element <pdx> in <cache> is not supported");
    assert!(pdx.contains("cache.xml:12:"), "{pdx}");
    server.wait_line("gemfire.properties:5: property `log-level` is not supported");
    s1.server = Some(server);

    write(&s1, "orders", 0..500);
    wait_for(
        "site 2 to hold every write and site 1's queue to drain",
        || dbsize(&s2, "orders") == 500 && s1.queued("to2") == 0,
    );
    let keys: Vec<String> = (0..500).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    // The persistent sender's queue is in the disk store's directory, inside --dir.
    assert!(
        s1.dir
            .join("wan-queues")
            .join("to2")
            .join("shards")
            .exists(),
        "no queue files under the disk store's directory"
    );
    // The region is persistent (PARTITION_PERSISTENT): its log is in the server's directory.
    assert!(s1.dir.join("regions").join("orders").exists());
}

fn strait(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn geode_files_replace_site_toml_and_their_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = tmp.path().join("cache.xml");
    std::fs::write(
        &xml,
        "<cache>\n  <gateway-sender id=\"to2\" remote-distributed-system-id=\"2\"\n    batch-size=\"0\"/>\n</cache>\n",
    )
    .unwrap();
    let props = tmp.path().join("gemfire.properties");
    std::fs::write(&props, "distributed-system-id=1\n").unwrap();
    let xml = xml.display().to_string();
    let props = props.display().to_string();
    // One source of configuration: site.toml, or Geode's files.
    let (ok, err) = strait(&[
        "start",
        "server",
        "--config",
        "site.toml",
        "--cache-xml",
        &xml,
    ]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
    let (ok, err) = strait(&[
        "start",
        "server",
        "--cache-xml",
        &xml,
        "--properties-file",
        &props,
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{xml}:2: gateway-sender[0].batch-size: 0 is out of range (1..=1000000)"
        )),
        "{err}"
    );
    std::fs::write(&props, "# locator\ndistributed-system-id=none\n").unwrap();
    let (ok, err) = strait(&["start", "locator", "--properties-file", &props]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{props}:2: distributed-system-id: `none` is not a number"
        )),
        "{err}"
    );
}
