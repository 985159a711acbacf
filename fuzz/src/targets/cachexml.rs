//! Geode's cache.xml and gemfire.properties (`strait_node::geode`).
//!
//! Invariants: nothing panics; a refusal names a file and has a message; parsing is
//! deterministic; a configuration that is accepted, written out as a `site.toml`
//! (`config::to_toml`), reads back to the same configuration.

use std::path::Path;

use crate::rng::Rng;
use crate::{Target, Verdict};
use strait_node::geode::{Source, parse_server};

pub const TARGET: Target = Target {
    name: "cachexml",
    generate,
    fixup,
    run,
};

/// Between the properties (first) and the cache.xml (second) in an input.
const SPLIT: &[u8] = b"\n%%%%\n";

const SENDER_ATTRS: &[&str] = &[
    "remote-distributed-system-id",
    "parallel",
    "batch-size",
    "batch-time-interval",
    "maximum-queue-memory",
    "enable-persistence",
    "disk-store-name",
    "disk-synchronous",
    "enable-batch-conflation",
    "dispatcher-threads",
    "order-policy",
    "alert-threshold",
    "socket-buffer-size",
    "socket-read-timeout",
    "manual-start",
    "batch-conflation",
];
const RECEIVER_ATTRS: &[&str] = &[
    "start-port",
    "end-port",
    "bind-address",
    "hostname-for-senders",
    "maximum-time-between-pings",
    "socket-buffer-size",
    "manual-start",
];
const REFIDS: &[&str] = &[
    "PARTITION",
    "PARTITION_PERSISTENT",
    "PARTITION_REDUNDANT",
    "PARTITION_REDUNDANT_PERSISTENT",
    "REPLICATE",
    "REPLICATE_PERSISTENT",
    "LOCAL",
    "shared",
    "nope",
];
const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "255",
    "256",
    "65535",
    "65536",
    "100",
    "1000",
    "true",
    "false",
    "KEY",
    "THREAD",
    "PARTITION",
    "partition",
    "",
    "x",
    "to-2",
    "to-3",
    "store",
    "10.0.0.1",
    "::1",
    "1.5",
    "99999999999999999999",
    "&amp;",
    "a,b",
];
const PROPERTIES: &[&str] = &[
    "name",
    "distributed-system-id",
    "locators",
    "start-locator",
    "bind-address",
    "remote-locators",
    "hostname-for-clients",
    "http-service-port",
    "mcast-port",
    "log-level",
];
const PROPERTY_VALUES: &[&str] = &[
    "1",
    "2",
    "-1",
    "0",
    "256",
    "s1",
    "localhost[10334]",
    "h[1],h:2",
    "127.0.0.1",
    "nohost",
    "7070",
    "70000",
    "",
];

fn attrs(rng: &mut Rng, names: &[&str]) -> String {
    let mut out = String::new();
    for n in names {
        if rng.one_in(2) {
            out.push_str(&format!(" {n}=\"{}\"", rng.pick(VALUES)));
        }
    }
    out
}

fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut props = String::new();
    for p in PROPERTIES {
        if rng.one_in(2) {
            props.push_str(&format!("{p}={}\n", rng.pick(PROPERTY_VALUES)));
        }
    }
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<cache>\n");
    if rng.one_in(2) {
        xml.push_str(
            "  <disk-store name=\"store\"><disk-dirs><disk-dir>/tmp/q</disk-dir></disk-dirs></disk-store>\n",
        );
    }
    for i in 0..rng.small_len(3) {
        xml.push_str(&format!(
            "  <gateway-sender id=\"to-{}\"{}/>\n",
            i + 2,
            attrs(rng, SENDER_ATTRS)
        ));
    }
    if rng.one_in(2) {
        xml.push_str(&format!(
            "  <gateway-receiver{}/>\n",
            attrs(rng, RECEIVER_ATTRS)
        ));
    }
    if rng.one_in(3) {
        xml.push_str(&format!(
            "  <region-attributes id=\"shared\" refid=\"{}\" gateway-sender-ids=\"{}\"/>\n",
            rng.pick(REFIDS),
            rng.pick(VALUES)
        ));
    }
    for i in 0..rng.small_len(3) {
        xml.push_str(&format!(
            "  <region name=\"r{i}\" refid=\"{}\">\n    <region-attributes gateway-sender-ids=\"{}\" data-policy=\"{}\">\n      <partition-attributes total-num-buckets=\"{}\"/>\n    </region-attributes>\n  </region>\n",
            rng.pick(REFIDS),
            rng.pick(VALUES),
            rng.pick(&["partition", "replicate", "persistent-partition", "empty"]),
            rng.pick(VALUES),
        ));
    }
    if rng.one_in(4) {
        xml.push_str("  <unknown-element a=\"1\"/>\n");
    }
    xml.push_str("</cache>\n");
    let mut out = props.into_bytes();
    out.extend_from_slice(SPLIT);
    out.extend_from_slice(xml.as_bytes());
    out
}

/// Sometimes puts a grammar value into one attribute, so mutated files stay XML.
fn fixup(rng: &mut Rng, data: &mut Vec<u8>) {
    if !rng.one_in(2) {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let quotes: Vec<usize> = text.match_indices("=\"").map(|(i, _)| i + 2).collect();
    if quotes.is_empty() {
        return;
    }
    let start = quotes[rng.below(quotes.len())];
    let Some(len) = text[start..].find('"') else {
        return;
    };
    let mut s = text[..start].to_string();
    let value: &&str = rng.pick(VALUES);
    s.push_str(value);
    s.push_str(&text[start + len..]);
    *data = s.into_bytes();
}

fn run(data: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(data);
    let (props, xml) = match text.split_once(std::str::from_utf8(SPLIT).unwrap_or("\n")) {
        Some((p, x)) => (p.to_string(), x.to_string()),
        None => (String::new(), text.to_string()),
    };
    let parse = || {
        parse_server(
            Some(Source {
                path: Path::new("cache.xml"),
                text: &xml,
            }),
            Some(Source {
                path: Path::new("gemfire.properties"),
                text: &props,
            }),
        )
    };
    let (first, second) = (parse(), parse());
    if format!("{first:?}") != format!("{second:?}") {
        return Err("the same files parsed twice give two answers".into());
    }
    match first {
        Ok(loaded) => {
            super::config::reads_back(&loaded.config)?;
            Ok(format!(
                "ok s{} r{} recv{} w{}",
                loaded.config.senders.len().min(2),
                loaded.config.regions.len().min(2),
                u8::from(loaded.config.receiver.is_some()),
                loaded.warnings.len().min(3)
            ))
        }
        Err(e) => {
            let message = e.to_string();
            if message.is_empty()
                || !(message.contains("cache.xml") || message.contains("gemfire.properties"))
            {
                return Err(format!("a refusal that names no file: `{message}`"));
            }
            Ok(super::config::error_label(&message))
        }
    }
}
