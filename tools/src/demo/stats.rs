//! What the demo shows while it runs, pure: [`parse_info`] reads a server's INFO into a
//! [`ServerInfo`]; a [`Sample`] is every server's at one moment (time passed in, in
//! milliseconds) with the writer's progress; [`render`] turns two samples into the live table
//! (per-link events sent per second and queue depth, per-receiver events applied per second);
//! `drained` says whether every queue is empty and every site has applied what it should.

use std::collections::BTreeMap;

/// The id of the sender from a site to site `to`.
pub fn sender_id(to: u8) -> String {
    format!("to-site-{to}")
}

/// One gateway sender's figures (all shards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// Events in its queues.
    pub queued: u64,
    /// Events sent to the remote site since the server started.
    pub distributed: u64,
    /// Dispatchers connected to a receiver, of `dispatchers`.
    pub connected: u64,
    pub dispatchers: u64,
}

/// The gateway receiver's figures (all shards, every incoming link).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverInfo {
    pub applied: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub dead_lettered: u64,
}

/// What one server's INFO says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// By sender id.
    pub senders: BTreeMap<String, SenderInfo>,
    pub receiver: Option<ReceiverInfo>,
    /// Entries by region name.
    pub keys: BTreeMap<String, u64>,
}

impl ServerInfo {
    /// The sender to site `to` (zeros when INFO did not list it).
    pub fn sender(&self, to: u8) -> SenderInfo {
        self.senders
            .get(&sender_id(to))
            .copied()
            .unwrap_or_default()
    }

    pub fn applied(&self) -> u64 {
        self.receiver.map_or(0, |r| r.applied)
    }
}

/// The value of `field` in `k=v,k=v` text (`connected=1/2` gives `1/2`).
fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn number(fields: &str, name: &str) -> Result<u64, String> {
    field(fields, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no number `{name}`"))
}

/// Reads INFO's regions, gateway senders and gateway receiver sections.
pub fn parse_info(text: &str) -> Result<ServerInfo, String> {
    let mut info = ServerInfo::default();
    let mut section = "";
    for line in text.lines().map(str::trim_end) {
        if let Some(title) = line.strip_prefix("# ") {
            section = title;
            continue;
        }
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let in_line = |e: String| format!("{e} in `{line}`");
        if section.starts_with("Regions") {
            let region = field(fields, "name").ok_or_else(|| in_line("no name".into()))?;
            info.keys
                .insert(region.to_string(), number(fields, "keys").map_err(in_line)?);
        } else if section.starts_with("Gateway senders") {
            let (connected, dispatchers) = field(fields, "connected")
                .and_then(|v| v.split_once('/'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| in_line("no `connected=a/b`".into()))?;
            info.senders.insert(
                name.to_string(),
                SenderInfo {
                    queued: number(fields, "queued").map_err(in_line)?,
                    distributed: number(fields, "distributed").map_err(in_line)?,
                    connected,
                    dispatchers,
                },
            );
        } else if section.starts_with("Gateway receiver") && name == "receiver" {
            let n = |name| number(fields, name).map_err(in_line);
            info.receiver = Some(ReceiverInfo {
                applied: n("applied")?,
                duplicates: n("duplicates")?,
                conflicts: n("conflicts")?,
                dead_lettered: n("dead_lettered")?,
            });
        }
    }
    Ok(info)
}

/// Every server's figures at one moment, and the writer's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds since the demo's clock started.
    pub at_ms: u64,
    /// Entries written so far at site `i + 1`.
    pub written: Vec<u64>,
    /// Site `i + 1`'s server.
    pub servers: Vec<ServerInfo>,
}

impl Sample {
    /// Site ids, 1 up.
    pub fn sites(&self) -> impl Iterator<Item = u8> + '_ {
        (1..=self.servers.len()).map(|i| i as u8)
    }

    fn server(&self, site: u8) -> &ServerInfo {
        &self.servers[usize::from(site - 1)]
    }

    /// Every link `(from, to)` of the full mesh.
    pub fn links(&self) -> Vec<(u8, u8)> {
        self.sites()
            .flat_map(|from| {
                self.sites()
                    .filter(move |&to| to != from)
                    .map(move |to| (from, to))
            })
            .collect()
    }

    /// The sender of link `(from, to)`.
    pub fn link(&self, from: u8, to: u8) -> SenderInfo {
        self.server(from).sender(to)
    }

    /// Whether every sender's dispatchers are all connected.
    pub fn connected(&self) -> bool {
        self.links().iter().all(|&(from, to)| {
            let s = self.link(from, to);
            s.dispatchers > 0 && s.connected == s.dispatchers
        })
    }

    /// Whether every queue is empty and site `i + 1` has applied `expected_applied[i]` events.
    pub fn drained(&self, expected_applied: &[u64]) -> bool {
        self.links()
            .iter()
            .all(|&(from, to)| self.link(from, to).queued == 0)
            && self
                .servers
                .iter()
                .zip(expected_applied)
                .all(|(s, &want)| s.applied() >= want)
    }

    /// A figure that grows whenever anything moves (writes, sends, applies): unchanged over a
    /// while means the demo is stuck.
    pub fn progress(&self) -> u64 {
        let written: u64 = self.written.iter().sum();
        let moved: u64 = self
            .servers
            .iter()
            .map(|s| s.applied() + s.senders.values().map(|x| x.distributed).sum::<u64>())
            .sum();
        written + moved
    }

    /// Events sent on every link, summed.
    pub fn sent(&self) -> u64 {
        self.links()
            .iter()
            .map(|&(from, to)| self.link(from, to).distributed)
            .sum()
    }
}

/// Per second, from `before` to `now`.
fn rate(before: u64, now: u64, ms: u64) -> u64 {
    if ms == 0 {
        return 0;
    }
    now.saturating_sub(before) * 1000 / ms
}

/// The live table: per link the events sent per second, in all and still queued; per site
/// the entries written per second and in all, and the events its receiver applied per second
/// and in all. Rates are from `before` to `now`; `title` heads the table.
pub fn render(before: &Sample, now: &Sample, title: &str) -> Vec<String> {
    let ms = now.at_ms.saturating_sub(before.at_ms);
    let mut lines = vec![format!("{:>7.1} s  {title}", now.at_ms as f64 / 1000.0)];
    lines.push(format!(
        "  {:<8} {:>10} {:>12} {:>10} {:>10}",
        "link", "sent/s", "sent", "queued", "connected"
    ));
    for (from, to) in now.links() {
        let (n, b) = (now.link(from, to), before.link(from, to));
        lines.push(format!(
            "  {:<8} {:>10} {:>12} {:>10} {:>10}",
            format!("{from} -> {to}"),
            rate(b.distributed, n.distributed, ms),
            n.distributed,
            n.queued,
            format!("{}/{}", n.connected, n.dispatchers)
        ));
    }
    lines.push(format!(
        "  {:<8} {:>10} {:>12} {:>10} {:>10}",
        "site", "written/s", "written", "applied/s", "applied"
    ));
    for site in now.sites() {
        let i = usize::from(site - 1);
        let (n, b) = (now.server(site).applied(), before.server(site).applied());
        lines.push(format!(
            "  {:<8} {:>10} {:>12} {:>10} {:>10}",
            site,
            rate(before.written[i], now.written[i], ms),
            now.written[i],
            rate(b, n, ms),
            n
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.0\r\nmember:server1\r\n\r\n# Clients\r\nconnected_clients:1\r\n\r\n# Regions\r\nregion0:name=demo,buckets=113,keys=42\r\n\r\n# Gateway senders (all shards)\r\nto-site-2:queued=5,bytes=900,in_memory=5,on_disk=0,segments=1,distributed=37,batches=3,possible_duplicates=0,dropped_not_running=0,connected=2/2,state=running\r\nto-site-3:queued=0,bytes=0,in_memory=0,on_disk=0,segments=1,distributed=42,batches=4,possible_duplicates=0,dropped_not_running=0,connected=1/2,state=running\r\n\r\n# Gateway receiver (all shards)\r\nreceiver:applied=7,duplicates=1,conflicts=2,dead_lettered=3,cross_shard_events=0,connections=2,forward_failures=0,log_failures=0\r\n";

    fn server(queued: u64, distributed: u64, applied: u64) -> ServerInfo {
        let s = SenderInfo {
            queued,
            distributed,
            connected: 2,
            dispatchers: 2,
        };
        ServerInfo {
            senders: [(sender_id(1), s), (sender_id(2), s)].into_iter().collect(),
            receiver: Some(ReceiverInfo {
                applied,
                ..ReceiverInfo::default()
            }),
            keys: BTreeMap::new(),
        }
    }

    #[test]
    fn reads_senders_receiver_and_regions() {
        let info = parse_info(INFO).unwrap();
        assert_eq!(info.keys.get("demo"), Some(&42));
        assert_eq!(
            info.sender(2),
            SenderInfo {
                queued: 5,
                distributed: 37,
                connected: 2,
                dispatchers: 2
            }
        );
        assert_eq!(info.sender(3).connected, 1);
        assert_eq!(
            info.receiver,
            Some(ReceiverInfo {
                applied: 7,
                duplicates: 1,
                conflicts: 2,
                dead_lettered: 3
            })
        );
    }

    #[test]
    fn a_malformed_sender_line_is_an_error_naming_it() {
        let bad = INFO.replace("queued=5,", "queued=many,");
        let e = parse_info(&bad).unwrap_err();
        assert!(e.contains("queued") && e.contains("to-site-2"), "{e}");
    }

    #[test]
    fn drained_needs_empty_queues_and_every_apply() {
        let s = |q, applied| Sample {
            at_ms: 0,
            written: vec![10, 0],
            servers: vec![server(q, 10, 0), server(0, 0, applied)],
        };
        assert!(!s(1, 10).drained(&[0, 10]));
        assert!(!s(0, 9).drained(&[0, 10]));
        assert!(s(0, 10).drained(&[0, 10]));
        assert_eq!(s(0, 10).links(), vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn rates_are_per_second_between_samples() {
        let a = Sample {
            at_ms: 1000,
            written: vec![100, 0],
            servers: vec![server(50, 50, 0), server(0, 0, 40)],
        };
        let b = Sample {
            at_ms: 1500,
            written: vec![600, 0],
            servers: vec![server(20, 580, 0), server(0, 0, 560)],
        };
        let lines = render(&a, &b, "writing");
        assert!(lines[0].contains("1.5 s  writing"), "{}", lines[0]);
        let link = lines.iter().find(|l| l.contains("1 -> 2")).unwrap();
        let cols: Vec<&str> = link.split_whitespace().collect();
        assert_eq!(cols[3..], ["1060", "580", "20", "2/2"]);
        let site = |id: &str| {
            lines
                .iter()
                .rfind(|l| l.split_whitespace().next() == Some(id))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(site("1"), ["1", "1000", "600", "0", "0"]);
        assert_eq!(site("2"), ["2", "0", "0", "1040", "560"]);
        assert!(b.progress() > a.progress());
    }
}
