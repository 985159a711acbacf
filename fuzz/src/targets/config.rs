//! The `site.toml` parser.
//!
//! Invariants: nothing panics; a refusal has a message; parsing is deterministic (the same
//! text gives the same configuration or the same error); an accepted configuration written
//! out (`config::to_toml`) reads back to the same configuration.

use std::path::Path;

use crate::rng::Rng;
use crate::{Target, Verdict};

pub const TARGET: Target = Target {
    name: "config",
    generate,
    fixup,
    run,
};

const SERVER: &[&str] = &[
    "name",
    "distributed-system-id",
    "locators",
    "start-locator",
    "bind-address",
    "client-port",
    "shards",
    "directory",
    "http-service-port",
    "http-service-bind-address",
];
const SENDER: &[&str] = &[
    "id",
    "remote-distributed-system-id",
    "parallel",
    "batch-size",
    "batch-time-interval",
    "maximum-queue-memory",
    "enable-persistence",
    "disk-synchronous",
    "sync-policy",
    "enable-batch-conflation",
    "dispatcher-threads",
    "order-policy",
    "alert-threshold",
    "socket-buffer-size",
    "socket-read-timeout",
    "batches-in-flight",
    "manual-start",
    "disk-dir",
];
const REGION: &[&str] = &[
    "name",
    "type",
    "total-num-buckets",
    "gateway-sender-ids",
    "persistent",
];
const RECEIVER: &[&str] = &[
    "start-port",
    "end-port",
    "bind-address",
    "hostname-for-senders",
    "maximum-time-between-pings",
    "socket-buffer-size",
    "manual-start",
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
    "4096",
    "4097",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "\"to-2\"",
    "\"orders\"",
    "\"partition\"",
    "\"replicate\"",
    "\"thread\"",
    "\"key\"",
    "\"partition-key\"",
    "\"never\"",
    "\"every-batch\"",
    "\"interval-0ms\"",
    "\"interval-100ms\"",
    "\"interval-99999999999999999999ms\"",
    "\"localhost[10334]\"",
    "\"127.0.0.1:5\"",
    "\"[::1]:70000\"",
    "\"host[\"",
    "\"/tmp/strait\"",
    "\"a/b\"",
    "\"é€\\u0000\"",
    "[]",
    "[\"to-2\"]",
    "[\"to-2\", \"to-2\"]",
    "[\"localhost[1]\", \"h:2\"]",
    "[1, 2]",
    "{}",
];

fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    let section = |out: &mut String, header: &str, keys: &[&str], rng: &mut Rng| {
        out.push_str(header);
        out.push('\n');
        for key in keys {
            if rng.one_in(3) {
                continue;
            }
            out.push_str(&format!("{key} = {}\n", rng.pick(VALUES)));
        }
        out.push('\n');
    };
    if !rng.one_in(8) {
        section(&mut out, "[server]", SERVER, rng);
    }
    for _ in 0..rng.small_len(3) {
        section(&mut out, "[[gateway-sender]]", SENDER, rng);
    }
    for _ in 0..rng.small_len(3) {
        section(&mut out, "[[region]]", REGION, rng);
    }
    if rng.one_in(2) {
        section(&mut out, "[gateway-receiver]", RECEIVER, rng);
    }
    out.into_bytes()
}

/// Sometimes swaps one value for a value of the grammar, so mutated files stay TOML.
fn fixup(rng: &mut Rng, data: &mut Vec<u8>) {
    if !rng.one_in(2) {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return;
    }
    let i = rng.below(lines.len());
    if let Some(eq) = lines[i].find(" = ") {
        let key = lines[i][..eq].to_string();
        lines[i] = format!("{key} = {}", rng.pick(VALUES));
    }
    *data = (lines.join("\n") + "\n").into_bytes();
}

fn run(data: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("site.toml");
    let first = strait_node::config::parse(path, &text);
    let second = strait_node::config::parse(path, &text);
    if format!("{first:?}") != format!("{second:?}") {
        return Err("the same text parsed twice gives two answers".into());
    }
    match first {
        Ok(c) => {
            reads_back(&c)?;
            Ok(format!(
                "ok s{} r{} recv{}",
                c.senders.len().min(2),
                c.regions.len().min(2),
                u8::from(c.receiver.is_some())
            ))
        }
        Err(e) => {
            let text = e.to_string();
            if text.is_empty() {
                return Err("a refusal with no message".into());
            }
            Ok(error_label(&text))
        }
    }
}

/// An accepted configuration written out as a `site.toml` (`config::to_toml`) must read back
/// to the same configuration (shared with the `cachexml` target).
pub fn reads_back(c: &strait_node::config::SiteConfig) -> Result<(), String> {
    let site_toml = strait_node::config::to_toml(c);
    match strait_node::config::parse(Path::new("site.toml"), &site_toml) {
        Ok(back) if back == *c => Ok(()),
        Ok(_) => Err(format!(
            "written out and read back, it differs:\n{site_toml}"
        )),
        Err(e) => Err(format!("written out, it is refused: {e}\n{site_toml}")),
    }
}

/// A refusal's outcome label: its message with numbers and quoted parts dropped, so one kind
/// of error is one outcome (shared with the `cachexml` target).
pub fn error_label(message: &str) -> String {
    message
        .split(['"', '\'', '`'])
        .step_by(2)
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(60)
        .collect()
}
