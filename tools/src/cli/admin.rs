//! The `strait` commands that operate running members, shaped like gfsh's: they call a
//! server's admin API (`--url`, docs/admin-api.md) or a locator's directory (`--locator`).
//!
//! | type | what it is |
//! |---|---|
//! | [`Target`] | the server to talk to: `--url` |
//! | [`Admin`] | an HTTP client of one server's admin API; errors name the member and what to do |
//! | [`run`] | runs one [`Op`] and prints its answer |

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::Value;
use std::time::Duration;

/// How long one admin call may take.
pub const ADMIN_CALL_TIMEOUT_MS: u64 = 30_000;

/// The server a command talks to: one by its admin API (`--url`), or every server a locator
/// knows (`--locator`), as gfsh reaches a cluster's members through its locator.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The server's admin API (its `http-service-port`).
    #[arg(long, default_value = "http://localhost:7070", env = "STRAIT_URL")]
    pub url: String,
    /// Every server registered with this locator (`host[port]` or `host:port`) that has an
    /// admin API, instead of `--url`: entries go to the least-loaded one, anything else to
    /// each in turn.
    #[arg(long, conflicts_with = "url")]
    pub locator: Option<String>,
}

/// One operation on a running member.
#[derive(Clone, Debug)]
pub enum Op {
    ListGateways,
    ListRegions,
    ListMembers {
        locator: String,
    },
    DescribeMember,
    DescribeConfig,
    SenderStatus {
        id: String,
    },
    SenderAction {
        id: String,
        op: &'static str,
        clean: bool,
    },
    ReceiverStatus,
    ReceiverAction {
        op: &'static str,
    },
    Put {
        region: String,
        key: String,
        value: String,
    },
    Get {
        region: String,
        key: String,
    },
    Remove {
        region: String,
        key: String,
    },
    DeadLettersList,
    DeadLettersReplay {
        region: Option<String>,
    },
    ListDiskStores,
    /// A run-time change: `method path` with a JSON body (docs/admin-api.md).
    Change {
        method: &'static str,
        path: String,
        body: Option<Value>,
        /// What it does, for the line printed when it is done.
        what: String,
        /// `--if-exists` / `--if-not-exists`: an answer of 404 (or 409) is no failure.
        tolerate: Option<u16>,
    },
}

/// An HTTP client of one server's admin API.
pub struct Admin {
    base: String,
    agent: ureq::Agent,
    /// The HTTP status of the last answer.
    last_status: std::cell::Cell<u16>,
}

impl Admin {
    pub fn new(url: &str) -> Admin {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(ADMIN_CALL_TIMEOUT_MS)))
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        Admin {
            base: url.trim_end_matches('/').to_string(),
            agent,
            last_status: std::cell::Cell::new(0),
        }
    }

    /// Calls `method path`; a non-2xx answer becomes an error with the server's message and
    /// hint.
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| {
            anyhow!(
                "cannot reach the server's admin API at {}: {e}; is the server running, and is this its http-service-port?",
                self.base
            )
        };
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            ("PUT", Some(b)) => self.agent.put(&url).send(b),
            ("POST", Some(b)) => self.agent.post(&url).send(b),
            ("PATCH", Some(b)) => self.agent.patch(&url).send(b),
            ("PUT", None) => self.agent.put(&url).send_empty(),
            ("POST", None) => self.agent.post(&url).send_empty(),
            (m, _) => bail!("internal: method {m}"),
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        self.last_status.set(status);
        let bytes = response
            .into_body()
            .with_config()
            .limit(strait_node::admin::ADMIN_BODY_BYTES_MAX as u64)
            .read_to_vec()
            .map_err(unreachable)?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match (v["error"].as_str(), v["hint"].as_str()) {
            (Some(e), Some(h)) => bail!("{e} ({h})"),
            (Some(e), None) => bail!("{e}"),
            _ => bail!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    fn json(&self, method: &str, path: &str) -> anyhow::Result<Value> {
        let bytes = self.call(method, path, None)?;
        serde_json::from_slice(&bytes).context("the server's answer is not JSON")
    }
}

/// `%XX`-escapes everything but unreserved characters, for a path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prints rows as a table with a header, columns as wide as their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join(" | ").trim_end());
    };
    line(header.to_vec());
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The admin APIs of the servers `locator` knows: (member, URL), by name.
fn members_of(locator: &str) -> anyhow::Result<Vec<(String, String)>> {
    let at =
        strait_node::config::HostPort::parse(locator).map_err(|e| anyhow!("--locator: {e}"))?;
    let client =
        strait_node::locator::LocatorClient::new(&at, Duration::from_millis(ADMIN_CALL_TIMEOUT_MS));
    let dir = client
        .servers()
        .map_err(|e| anyhow!("locator {at}: {e}; is it running?"))?;
    let members: Vec<(String, String)> = dir
        .servers
        .iter()
        .filter_map(|s| {
            let a = s.admin.as_ref()?;
            let host = if a.host.contains(':') {
                format!("[{}]", a.host)
            } else {
                a.host.clone()
            };
            Some((s.name.clone(), format!("http://{host}:{}", a.port)))
        })
        .collect();
    if members.is_empty() {
        bail!(
            "none of the {} servers registered with locator {at} has an admin API (http-service-port 0?)",
            dir.servers.len()
        );
    }
    Ok(members)
}

/// Runs `op` against `target` and prints the answer; with `--locator`, against each server
/// it knows (entries: the first that answers), failing only when every one fails.
pub fn run(target: &Target, op: Op) -> anyhow::Result<()> {
    let Some(locator) = &target.locator else {
        return run_one(&target.url, op);
    };
    let members = members_of(locator)?;
    let entries = matches!(op, Op::Put { .. } | Op::Get { .. } | Op::Remove { .. });
    let mut failures = Vec::new();
    for (name, url) in &members {
        if !entries {
            println!("Member {name} ({url})");
        }
        match run_one(url, op.clone()) {
            Ok(()) if entries => return Ok(()),
            Ok(()) => {}
            Err(e) => {
                if !entries {
                    println!("  {e:#}");
                }
                failures.push(format!("{name}: {e:#}"));
            }
        }
        if !entries {
            println!();
        }
    }
    if failures.len() == members.len() {
        bail!("every member failed: {}", failures.join("; "));
    }
    Ok(())
}

fn run_one(url: &str, op: Op) -> anyhow::Result<()> {
    let admin = Admin::new(url);
    match op {
        Op::ListGateways => {
            let g = admin.json("GET", "/v1/gateways")?;
            let senders = g["senders"].as_array().cloned().unwrap_or_default();
            if senders.is_empty() {
                println!("No gateway senders.");
            } else {
                println!("GatewaySender Section");
                let rows: Vec<Vec<String>> = senders
                    .iter()
                    .map(|s| {
                        [
                            "id",
                            "member",
                            "remote_site",
                            "type",
                            "status",
                            "queued_events",
                        ]
                        .iter()
                        .map(|k| cell(&s[*k]))
                        .collect()
                    })
                    .collect();
                table(
                    &[
                        "GatewaySender Id",
                        "Member",
                        "Remote Cluster Id",
                        "Type",
                        "Status",
                        "Queued Events",
                    ],
                    &rows,
                );
            }
            let r = &g["receiver"];
            if r.is_object() {
                println!("\nGatewayReceiver Section");
                let ports = format!("{}-{}", cell(&r["start_port"]), cell(&r["end_port"]));
                let host = r["hostname_for_senders"]
                    .as_str()
                    .map_or_else(|| cell(&r["bind_address"]), str::to_string);
                table(
                    &[
                        "Status",
                        "Bind Address",
                        "Hostname for Senders",
                        "Port Range",
                        "Sender Connections",
                        "Events Applied",
                    ],
                    &[vec![
                        cell(&r["state"]),
                        cell(&r["bind_address"]),
                        host,
                        ports,
                        cell(&r["connections"]),
                        cell(&r["applied"]),
                    ]],
                );
            }
        }
        Op::ListRegions => {
            let regions = admin.json("GET", "/v1/regions")?;
            let rows: Vec<Vec<String>> = regions
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let ids = r["gateway_sender_ids"]
                        .as_array()
                        .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    vec![
                        cell(&r["name"]),
                        cell(&r["keys"]),
                        cell(&r["buckets"]),
                        cell(&r["persistent"]),
                        ids,
                    ]
                })
                .collect();
            table(
                &[
                    "Region",
                    "Entries",
                    "Buckets",
                    "Persistent",
                    "Gateway Senders",
                ],
                &rows,
            );
        }
        Op::ListMembers { locator } => {
            let at = strait_node::config::HostPort::parse(&locator)
                .map_err(|e| anyhow!("--locator: {e}"))?;
            let client = strait_node::locator::LocatorClient::new(
                &at,
                Duration::from_millis(ADMIN_CALL_TIMEOUT_MS),
            );
            let dir = client
                .servers()
                .map_err(|e| anyhow!("locator {at}: {e}; is it running?"))?;
            let rows: Vec<Vec<String>> = dir
                .servers
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        format!("{}:{}", s.client.host, s.client.port),
                        s.receivers.len().to_string(),
                        s.load.to_string(),
                        format!("{} ms ago", s.last_heard_ms_ago),
                        s.admin
                            .as_ref()
                            .map_or_else(String::new, |a| format!("http://{}:{}", a.host, a.port)),
                    ]
                })
                .collect();
            let site = dir
                .distributed_system_id
                .map_or_else(|| "none".to_string(), |s| s.to_string());
            println!("Site {site}, locator {at}");
            table(
                &[
                    "Member",
                    "Client Address",
                    "Receiver Ports",
                    "Load",
                    "Last Heard",
                    "Admin API",
                ],
                &rows,
            );
        }
        Op::DescribeConfig => {
            let c = admin.json("GET", "/v1/config")?;
            print!("{}", cell(&c["site_toml"]));
        }
        Op::DescribeMember => {
            let m = admin.json("GET", "/v1/member")?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        Op::SenderStatus { id } => {
            let s = admin.json("GET", &format!("/v1/gateway-senders/{}", segment(&id)))?;
            println!(
                "GatewaySender {} (remote site {}, {}): {}; {} events queued",
                cell(&s["id"]),
                cell(&s["remote_site"]),
                cell(&s["type"]),
                cell(&s["status"]),
                cell(&s["queued_events"])
            );
        }
        Op::SenderAction { id, op, clean } => {
            let q = if clean { "?clean-queues=true" } else { "" };
            let path = format!("/v1/gateway-senders/{}/{op}{q}", segment(&id));
            let s = admin.json("POST", &path)?;
            println!("GatewaySender {id} is now {}", cell(&s["state"]));
        }
        Op::ReceiverStatus => {
            let r = admin.json("GET", "/v1/gateway-receiver")?;
            println!(
                "GatewayReceiver: {}; ports {}-{}; {} sender connections; {} events applied",
                cell(&r["state"]),
                cell(&r["start_port"]),
                cell(&r["end_port"]),
                cell(&r["connections"]),
                cell(&r["applied"])
            );
        }
        Op::ReceiverAction { op } => {
            let r = admin.json("POST", &format!("/v1/gateway-receiver/{op}"))?;
            println!("GatewayReceiver is now {}", cell(&r["state"]));
        }
        Op::Put { region, key, value } => {
            let path = format!("/v1/regions/{}/entries/{}", segment(&region), segment(&key));
            admin.call("PUT", &path, Some(value.as_bytes()))?;
            println!("put {key} in {region}");
        }
        Op::Get { region, key } => {
            let path = format!("/v1/regions/{}/entries/{}", segment(&region), segment(&key));
            let v = admin.call("GET", &path, None)?;
            println!("{}", String::from_utf8_lossy(&v));
        }
        Op::Remove { region, key } => {
            let path = format!("/v1/regions/{}/entries/{}", segment(&region), segment(&key));
            let bytes = admin.call("DELETE", &path, None)?;
            let v: Value = serde_json::from_slice(&bytes)?;
            if v["removed"].as_bool() == Some(true) {
                println!("removed {key} from {region}");
            } else {
                println!("no entry {key} in {region}");
            }
        }
        Op::DeadLettersList => {
            let v = admin.json("GET", "/v1/dead-letters")?;
            print!("{}", cell(&v["listing"]));
        }
        Op::DeadLettersReplay { region } => {
            let q = region
                .as_deref()
                .map(|r| format!("?region={}", segment(r)))
                .unwrap_or_default();
            let v = admin.json("POST", &format!("/v1/dead-letters/replay{q}"))?;
            print!("{}", cell(&v["replayed"]));
        }
        Op::ListDiskStores => {
            let v = admin.json("GET", "/v1/disk-stores")?;
            let rows: Vec<Vec<String>> = v
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    let users = d["gateway_senders"]
                        .as_array()
                        .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    vec![cell(&d["name"]), cell(&d["directory"]), users]
                })
                .collect();
            if rows.is_empty() {
                println!("No disk stores.");
            } else {
                table(&["Disk Store", "Directory", "Gateway Senders"], &rows);
            }
        }
        Op::Change {
            method,
            path,
            body,
            what,
            tolerate,
        } => {
            let body = body.map(|b| b.to_string());
            match admin.call(method, &path, body.as_deref().map(str::as_bytes)) {
                Ok(_) => println!("{what}: done"),
                Err(e) if tolerate == Some(admin.last_status.get()) => {
                    println!("{what}: nothing to do ({e:#})")
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_escape_what_a_path_cannot_hold() {
        assert_eq!(segment("to-site_2.a~"), "to-site_2.a~");
        assert_eq!(segment("a b/c?d%"), "a%20b%2Fc%3Fd%25");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
