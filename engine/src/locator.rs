//! The locator's directory: which servers a site has, where their clients and gateway
//! receivers connect, and how loaded each is. A plain state machine: the locator's shell reads
//! the clock and the sockets and passes time in as milliseconds; nothing here blocks.
//!
//! Inputs: [`Directory::handle_register`], [`Directory::handle_heartbeat`],
//! [`Directory::handle_deregister`]. Outputs: [`Directory::poll_expired`] (servers silent for
//! longer than the member timeout, now dropped) and [`Directory::least_loaded`] (the server a
//! new client should use, whose load is counted up in advance, as Geode's
//! `LocatorLoadSnapshot` does).
//!
//! Discovery between sites (geode-wan.md §2.2, `docs/wan.md`): beside the local site, the
//! directory holds what it knows of remote sites ([`RemoteSite`]: their locators and their
//! servers' gateway-receiver endpoints). [`Directory::export`] is the [`SiteMap`] a locator
//! sends to, and answers, another site's locator; [`Directory::handle_exchange`] merges one it
//! receives. Knowledge spreads transitively. Each entry carries how long ago its own site last
//! vouched for it as a relative age (clocks differ between machines), so relaying never makes an
//! entry younger: the freshest report wins, and [`Directory::poll_aged_out`] drops an entry its
//! own site has not vouched for within the remote-entry timeout, wherever the report came from.
//! [`ExchangeRounds`] says when a locator starts a round of exchanges and with whom.

use crate::bucket::BUCKETS_MAX;
use std::collections::BTreeMap;
use std::fmt;
use strait_queue::ids::{BucketId, SiteId};

/// How long a server may stay silent before it is dropped. Servers heartbeat every
/// [`HEARTBEAT_INTERVAL_MS_DEFAULT`], so a server is dropped only after seven heartbeats in a
/// row are lost or late: a slow request or a brief network stall never drops a live server,
/// and a dead one stops receiving clients within 15 s.
pub const MEMBER_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// How often a server heartbeats when the member timeout allows it.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 2_000;
/// A server gets at least this many heartbeats into one member timeout, so one lost
/// heartbeat never drops it.
pub const HEARTBEATS_PER_TIMEOUT_MIN: u64 = 3;
/// The shortest member timeout a locator accepts (heartbeats then come every 100 ms).
pub const MEMBER_TIMEOUT_MS_MIN: u64 = 300;
/// The longest member timeout a locator accepts (one hour).
pub const MEMBER_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Most servers one site's entry holds; a register beyond it is refused.
pub const SERVERS_PER_SITE_MAX: usize = 4096;
/// Most gateway-receiver endpoints one server advertises.
pub const RECEIVERS_PER_SERVER_MAX: usize = 16;
/// Longest member name, in bytes.
pub const MEMBER_NAME_BYTES_MAX: usize = 255;
/// Longest host name, in bytes (DNS's limit).
pub const HOST_BYTES_MAX: usize = 253;
/// Member names a locator refuses because its HTTP paths could not carry them: `.` and `..`
/// are rewritten by URL normalisation, and `least-loaded` is the route
/// `GET /v1/servers/least-loaded`.
pub const RESERVED_MEMBER_NAMES: [&str; 3] = [".", "..", "least-loaded"];
const _: () = assert!(
    HEARTBEAT_INTERVAL_MS_DEFAULT * HEARTBEATS_PER_TIMEOUT_MIN <= MEMBER_TIMEOUT_MS_DEFAULT
);
const _: () = assert!(MEMBER_TIMEOUT_MS_MIN / HEARTBEATS_PER_TIMEOUT_MIN >= 100);
const _: () = assert!(MEMBER_TIMEOUT_MS_MIN <= MEMBER_TIMEOUT_MS_DEFAULT);
const _: () = assert!(MEMBER_TIMEOUT_MS_DEFAULT <= MEMBER_TIMEOUT_MS_MAX);

/// A remote entry (locator or server) its own site has not vouched for within this long is
/// dropped: six exchange intervals, so a few lost exchanges never drop a live site. The merged
/// state of one remote site is held to [`LOCATORS_PER_SITE_MAX`] locators and
/// [`SERVERS_PER_SITE_MAX`] servers: beyond them, the oldest are evicted.
pub const REMOTE_ENTRY_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Most locators one remote site's entry holds.
pub const LOCATORS_PER_SITE_MAX: usize = 64;
/// The name a directory gives its own locator until [`Directory::with_locator_name`].
pub const LOCATOR_NAME_DEFAULT: &str = "locator";
const _: () = assert!(REMOTE_ENTRY_TIMEOUT_MS_DEFAULT >= MEMBER_TIMEOUT_MS_DEFAULT);

/// The directory's key for a site whose locator has no `distributed-system-id` (real ids are
/// 1–255).
pub const SITE_UNSET: SiteId = SiteId(0);

/// A member's name, unique within a site (Geode's member name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberName(pub String);

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name or address and a port, as advertised (never resolved here).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a server's gateway receiver accepts senders, and the buckets it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverEndpoint {
    pub address: Address,
    pub buckets: Vec<BucketId>,
}

/// What a server tells the locator about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub name: MemberName,
    /// Where Redis-protocol clients connect.
    pub client: Address,
    pub receivers: Vec<ReceiverEndpoint>,
    /// Client connections open on the server.
    pub load: u32,
    /// Where its admin API listens (`http-service-port`), when it has one.
    pub admin: Option<Address>,
}

/// A server in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    pub info: ServerInfo,
    /// When the locator last heard from it (register or heartbeat), in the shell's ms.
    pub last_heard_ms: u64,
}

/// One site: its locators and its servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteEntry {
    pub locators: Vec<Address>,
    pub servers: BTreeMap<MemberName, ServerEntry>,
}

/// What a register did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A member the directory did not hold.
    New,
    /// The same member again, at the same addresses (a locator that lost a heartbeat reply).
    Refreshed,
    /// The same member name at a changed address: the old entry is gone.
    Replaced { previous: Address },
}

/// Why an input was refused; every case is the server's (the peer's) doing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error(
        "server `{0}` is not registered (dropped after its member timeout, or the locator restarted): register again"
    )]
    UnknownServer(MemberName),
    #[error(
        "member name `{0}` is invalid: 1 to {MEMBER_NAME_BYTES_MAX} bytes, no control characters, no '/', not `.`, `..` or `least-loaded`"
    )]
    InvalidName(String),
    #[error(
        "address `{0}` is invalid: a host of 1 to {HOST_BYTES_MAX} bytes and a port of 1 to 65535"
    )]
    InvalidAddress(String),
    #[error(
        "{count} receiver endpoints is more than the {RECEIVERS_PER_SERVER_MAX} a server may advertise"
    )]
    TooManyReceivers { count: usize },
    #[error(
        "receiver endpoint {endpoint}: field `buckets` is invalid: {reason} (at most {BUCKETS_MAX} distinct bucket ids, each below {BUCKETS_MAX})"
    )]
    InvalidBuckets { endpoint: String, reason: String },
    #[error("the directory already holds {SERVERS_PER_SITE_MAX} servers for this site")]
    Full,
    #[error("site id {0} is invalid: a distributed-system-id is 1 to 255")]
    InvalidSite(SiteId),
    #[error(
        "site {site} reports {count} locators, more than the {LOCATORS_PER_SITE_MAX} a site may have"
    )]
    TooManyLocators { site: SiteId, count: usize },
    #[error(
        "site {site} reports {count} servers, more than the {SERVERS_PER_SITE_MAX} a site may have"
    )]
    TooManyServers { site: SiteId, count: usize },
    #[error(
        "this locator has no distributed-system-id: it takes no part in the exchange between sites"
    )]
    NoSite,
}

/// A remote site's locator, as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteLocator {
    /// Its advertised address (`hostname-for-clients`, else bind address, else host name).
    pub address: Address,
    /// When its own site last vouched for it, in this directory's ms (now minus the reported
    /// age when the report arrived). Negative when that was before the shell's clock started:
    /// a report older than the locator keeps its whole age.
    pub vouched_ms: i64,
}

/// A remote site's server, as last reported: only servers with gateway receivers are exchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteServer {
    pub receivers: Vec<ReceiverEndpoint>,
    /// When its own site last vouched for it, in this directory's ms (may be negative, as
    /// [`RemoteLocator::vouched_ms`]).
    pub vouched_ms: i64,
}

/// What the directory knows of another site, keyed by member name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteSite {
    pub locators: BTreeMap<MemberName, RemoteLocator>,
    pub servers: BTreeMap<MemberName, RemoteServer>,
}

/// One locator in a [`SiteMap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatorReport {
    pub name: MemberName,
    pub address: Address,
    /// How long ago its own site vouched for it, when the map was made.
    pub age_ms: u64,
}

/// One server and its gateway-receiver endpoints in a [`SiteMap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReport {
    pub name: MemberName,
    pub receivers: Vec<ReceiverEndpoint>,
    /// How long ago its own site vouched for it, when the map was made.
    pub age_ms: u64,
}

/// One site in a [`SiteMap`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteReport {
    pub locators: Vec<LocatorReport>,
    pub servers: Vec<ServerReport>,
}

/// What one locator knows of every site, as exchanged between sites: site → its locators and
/// its servers' receiver endpoints, each with an age.
pub type SiteMap = BTreeMap<SiteId, SiteReport>;

/// What merging a [`SiteMap`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Sites the directory did not know before.
    pub new_sites: Vec<SiteId>,
    /// Locators or servers added, or moved to another address (a fresher report of the same
    /// addresses is not a change).
    pub changed: usize,
    /// Locators or servers evicted, the oldest first, because a site held more than
    /// [`LOCATORS_PER_SITE_MAX`] or [`SERVERS_PER_SITE_MAX`].
    pub evicted: usize,
}

/// What [`Directory::poll_aged_out`] dropped from one remote site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgedOut {
    pub site: SiteId,
    pub locators: Vec<(MemberName, Address)>,
    pub servers: Vec<MemberName>,
    /// Nothing is left of the site: it is unknown now.
    pub site_gone: bool,
}

/// A locator's directory.
#[derive(Clone, Debug)]
pub struct Directory {
    site: Option<SiteId>,
    remote_locators: Vec<Address>,
    member_timeout_ms: u64,
    sites: BTreeMap<SiteId, SiteEntry>,
    locator_name: MemberName,
    remote_entry_timeout_ms: u64,
    remote: BTreeMap<SiteId, RemoteSite>,
}

impl Directory {
    /// A directory for the site `site` (`None`: no `distributed-system-id`), served by the
    /// locator at `own`. `member_timeout_ms` is clamped to
    /// [`MEMBER_TIMEOUT_MS_MIN`]..=[`MEMBER_TIMEOUT_MS_MAX`].
    pub fn new(
        site: Option<SiteId>,
        own: Address,
        remote_locators: Vec<Address>,
        member_timeout_ms: u64,
    ) -> Directory {
        let mut sites = BTreeMap::new();
        sites.insert(
            site.unwrap_or(SITE_UNSET),
            SiteEntry {
                locators: vec![own],
                servers: BTreeMap::new(),
            },
        );
        Directory {
            site,
            remote_locators,
            member_timeout_ms: member_timeout_ms
                .clamp(MEMBER_TIMEOUT_MS_MIN, MEMBER_TIMEOUT_MS_MAX),
            sites,
            locator_name: MemberName(LOCATOR_NAME_DEFAULT.into()),
            remote_entry_timeout_ms: REMOTE_ENTRY_TIMEOUT_MS_DEFAULT,
            remote: BTreeMap::new(),
        }
    }

    /// The name this directory's locator goes by in other sites' maps (its member name).
    pub fn with_locator_name(mut self, name: MemberName) -> Directory {
        self.locator_name = name;
        self
    }

    /// How long a remote entry lives without its own site vouching for it (default
    /// [`REMOTE_ENTRY_TIMEOUT_MS_DEFAULT`]; at least 1 ms).
    pub fn with_remote_entry_timeout_ms(mut self, ms: u64) -> Directory {
        self.remote_entry_timeout_ms = ms.max(1);
        self
    }

    pub fn remote_entry_timeout_ms(&self) -> u64 {
        self.remote_entry_timeout_ms
    }

    pub fn locator_name(&self) -> &MemberName {
        &self.locator_name
    }

    /// The site's `distributed-system-id`.
    pub fn site(&self) -> Option<SiteId> {
        self.site
    }

    /// The `remote-locators` setting: locators of other sites.
    pub fn remote_locators(&self) -> &[Address] {
        &self.remote_locators
    }

    pub fn member_timeout_ms(&self) -> u64 {
        self.member_timeout_ms
    }

    /// How often servers should heartbeat so that [`HEARTBEATS_PER_TIMEOUT_MIN`] heartbeats
    /// fit into one member timeout; never more often than needed.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        HEARTBEAT_INTERVAL_MS_DEFAULT.min(self.member_timeout_ms / HEARTBEATS_PER_TIMEOUT_MIN)
    }

    /// This site's entry.
    pub fn local(&self) -> &SiteEntry {
        self.sites
            .get(&self.site.unwrap_or(SITE_UNSET))
            .unwrap_or(&EMPTY_SITE)
    }

    /// The local site's entry (remote sites are [`Directory::remote_site`]).
    pub fn site_entry(&self, site: SiteId) -> Option<&SiteEntry> {
        self.sites.get(&site)
    }

    fn local_mut(&mut self) -> &mut SiteEntry {
        self.sites
            .entry(self.site.unwrap_or(SITE_UNSET))
            .or_default()
    }

    /// A server starts, or registers again. A changed address under the same name replaces
    /// the old entry.
    pub fn handle_register(
        &mut self,
        now_ms: u64,
        info: ServerInfo,
    ) -> Result<Registered, DirectoryError> {
        validate(&info)?;
        let servers = &mut self.local_mut().servers;
        let outcome = match servers.get(&info.name) {
            None if servers.len() >= SERVERS_PER_SITE_MAX => return Err(DirectoryError::Full),
            None => Registered::New,
            Some(old) if old.info.client == info.client && old.info.receivers == info.receivers => {
                Registered::Refreshed
            }
            Some(old) => Registered::Replaced {
                previous: old.info.client.clone(),
            },
        };
        servers.insert(
            info.name.clone(),
            ServerEntry {
                info,
                last_heard_ms: now_ms,
            },
        );
        Ok(outcome)
    }

    /// A server is alive and has `load` client connections.
    pub fn handle_heartbeat(
        &mut self,
        now_ms: u64,
        name: &MemberName,
        load: u32,
    ) -> Result<(), DirectoryError> {
        let entry = self
            .local_mut()
            .servers
            .get_mut(name)
            .ok_or_else(|| DirectoryError::UnknownServer(name.clone()))?;
        entry.info.load = load;
        entry.last_heard_ms = entry.last_heard_ms.max(now_ms);
        Ok(())
    }

    /// A server stops.
    pub fn handle_deregister(&mut self, name: &MemberName) -> Result<ServerInfo, DirectoryError> {
        self.local_mut()
            .servers
            .remove(name)
            .map(|e| e.info)
            .ok_or_else(|| DirectoryError::UnknownServer(name.clone()))
    }

    /// Drops the servers not heard from for longer than the member timeout (a server heard
    /// exactly `member_timeout_ms` ago stays) and returns their names.
    pub fn poll_expired(&mut self, now_ms: u64) -> Vec<MemberName> {
        let timeout = self.member_timeout_ms;
        let servers = &mut self.local_mut().servers;
        let expired: Vec<MemberName> = servers
            .values()
            .filter(|e| now_ms.saturating_sub(e.last_heard_ms) > timeout)
            .map(|e| e.info.name.clone())
            .collect();
        for name in &expired {
            servers.remove(name);
        }
        expired
    }

    /// The server with the lowest load (the first by name among equals), its load counted up
    /// by one for the client about to connect; its next heartbeat reports the real count.
    pub fn least_loaded(&mut self) -> Option<ServerInfo> {
        let entry = self
            .local_mut()
            .servers
            .values_mut()
            .min_by(|a, b| (a.info.load, &a.info.name).cmp(&(b.info.load, &b.info.name)))?;
        entry.info.load = entry.info.load.saturating_add(1);
        Some(entry.info.clone())
    }

    /// What another site's entry holds, if this directory knows the site.
    pub fn remote_site(&self, site: SiteId) -> Option<&RemoteSite> {
        self.remote.get(&site)
    }

    /// Every remote site this directory knows, by id.
    pub fn remote_sites(&self) -> &BTreeMap<SiteId, RemoteSite> {
        &self.remote
    }

    /// Whether `site` is this directory's own site.
    fn is_own(&self, site: SiteId) -> bool {
        site == self.site.unwrap_or(SITE_UNSET)
    }

    /// The locators to exchange with: the `remote-locators` setting, then every locator learned
    /// of other sites, each address once, never this locator itself.
    pub fn exchange_targets(&self) -> Vec<Address> {
        let own = &self.local().locators;
        let mut out: Vec<Address> = Vec::new();
        let learned = self
            .remote
            .values()
            .flat_map(|s| s.locators.values().map(|l| &l.address));
        for a in self.remote_locators.iter().chain(learned) {
            if !own.contains(a) && !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The map this locator sends and answers with: its own site fresh (its own locator and
    /// every local server with receiver endpoints, age 0), then every remote entry with its age.
    /// Entries already past the remote-entry timeout are left out.
    pub fn export(&self, now_ms: u64) -> SiteMap {
        let mut map = SiteMap::new();
        let Some(site) = self.site else {
            return map;
        };
        let own = SiteReport {
            locators: self
                .local()
                .locators
                .iter()
                .map(|a| LocatorReport {
                    name: self.locator_name.clone(),
                    address: a.clone(),
                    age_ms: 0,
                })
                .collect(),
            servers: self
                .local()
                .servers
                .values()
                .filter(|e| !e.info.receivers.is_empty())
                .map(|e| ServerReport {
                    name: e.info.name.clone(),
                    receivers: e.info.receivers.clone(),
                    age_ms: 0,
                })
                .collect(),
        };
        map.insert(site, own);
        let timeout = self.remote_entry_timeout_ms;
        for (id, remote) in &self.remote {
            let age = |vouched: i64| age_at(now_ms, vouched);
            let report = SiteReport {
                locators: remote
                    .locators
                    .iter()
                    .filter(|(_, l)| age(l.vouched_ms) <= timeout)
                    .map(|(name, l)| LocatorReport {
                        name: name.clone(),
                        address: l.address.clone(),
                        age_ms: age(l.vouched_ms),
                    })
                    .collect(),
                servers: remote
                    .servers
                    .iter()
                    .filter(|(_, s)| age(s.vouched_ms) <= timeout)
                    .map(|(name, s)| ServerReport {
                        name: name.clone(),
                        receivers: s.receivers.clone(),
                        age_ms: age(s.vouched_ms),
                    })
                    .collect(),
            };
            if !report.locators.is_empty() || !report.servers.is_empty() {
                map.insert(*id, report);
            }
        }
        map
    }

    /// Merges the map a locator of site `from` answered with, `now_ms` being when this
    /// directory's call left: the answer's ages count from then, so the round trip only ever
    /// makes entries older. (A map that comes with another locator's request goes to
    /// [`Directory::handle_exchange_request`].) Entries about this
    /// directory's own site are ignored: only its own servers and locator speak for it. For every
    /// other entry the freshest report wins, so an older relayed report never overwrites a newer
    /// one, and a fresher report of a changed address replaces the old address. Reports older
    /// than the remote-entry timeout are ignored; a report older than `now_ms` keeps its whole
    /// age. A site left with more than [`LOCATORS_PER_SITE_MAX`] locators or
    /// [`SERVERS_PER_SITE_MAX`] servers loses its oldest ([`Merged::evicted`]). A map that breaks the limits (a site id of 0,
    /// an invalid name or address, too many entries) is refused whole: nothing is merged.
    pub fn handle_exchange(
        &mut self,
        now_ms: u64,
        from: SiteId,
        map: &SiteMap,
    ) -> Result<Merged, DirectoryError> {
        self.check_map(from, map)?;
        Ok(self.merge_map(now_ms, map))
    }

    /// Whether a map from site `from` may be merged: this directory has a site, and the map
    /// keeps to the limits.
    fn check_map(&self, from: SiteId, map: &SiteMap) -> Result<(), DirectoryError> {
        if self.site.is_none() {
            return Err(DirectoryError::NoSite);
        }
        validate_map(from, map)
    }

    fn merge_map(&mut self, now_ms: u64, map: &SiteMap) -> Merged {
        let timeout = self.remote_entry_timeout_ms;
        let mut merged = Merged::default();
        for (&id, report) in map {
            if self.is_own(id) {
                continue;
            }
            let fresh = |age: u64| age <= timeout;
            if !report
                .locators
                .iter()
                .map(|l| l.age_ms)
                .chain(report.servers.iter().map(|s| s.age_ms))
                .any(fresh)
            {
                continue;
            }
            if !self.remote.contains_key(&id) {
                merged.new_sites.push(id);
            }
            let site = self.remote.entry(id).or_default();
            for l in report.locators.iter().filter(|l| fresh(l.age_ms)) {
                let vouched_ms = vouched_at(now_ms, l.age_ms);
                match site.locators.get_mut(&l.name) {
                    Some(old) if old.vouched_ms >= vouched_ms => {}
                    Some(old) => {
                        if old.address != l.address {
                            merged.changed += 1;
                            old.address = l.address.clone();
                        }
                        old.vouched_ms = vouched_ms;
                    }
                    None => {
                        merged.changed += 1;
                        site.locators.insert(
                            l.name.clone(),
                            RemoteLocator {
                                address: l.address.clone(),
                                vouched_ms,
                            },
                        );
                    }
                }
            }
            for s in report.servers.iter().filter(|s| fresh(s.age_ms)) {
                let vouched_ms = vouched_at(now_ms, s.age_ms);
                match site.servers.get_mut(&s.name) {
                    Some(old) if old.vouched_ms >= vouched_ms => {}
                    Some(old) => {
                        if old.receivers != s.receivers {
                            merged.changed += 1;
                            old.receivers = s.receivers.clone();
                        }
                        old.vouched_ms = vouched_ms;
                    }
                    None => {
                        merged.changed += 1;
                        site.servers.insert(
                            s.name.clone(),
                            RemoteServer {
                                receivers: s.receivers.clone(),
                                vouched_ms,
                            },
                        );
                    }
                }
            }
            merged.evicted +=
                evict_oldest(&mut site.locators, LOCATORS_PER_SITE_MAX, |l| l.vouched_ms);
            merged.evicted +=
                evict_oldest(&mut site.servers, SERVERS_PER_SITE_MAX, |s| s.vouched_ms);
        }
        merged
    }

    /// Merges the map a locator of site `from` sent with its exchange request, arriving at
    /// `now_ms`, as [`Directory::handle_exchange`] does, but only the requester's own site: the
    /// request's ages do not count the time it spent on the wire, so each relay by request would
    /// make an entry younger, and entries passed round a cycle of locators could outlive the
    /// remote-entry timeout for good (found by `strait-sim`). The requester's own entries are
    /// vouched for by it directly, so they are at most one transit too young; everything it
    /// relays comes later in answers, whose ages only ever grow. The whole map is still
    /// checked: one that breaks the limits is refused.
    pub fn handle_exchange_request(
        &mut self,
        now_ms: u64,
        from: SiteId,
        map: &SiteMap,
    ) -> Result<Merged, DirectoryError> {
        self.check_map(from, map)?;
        let own: SiteMap = map
            .get(&from)
            .map(|report| (from, report.clone()))
            .into_iter()
            .collect();
        Ok(self.merge_map(now_ms, &own))
    }

    /// Drops the remote locators and servers their own site has not vouched for within the
    /// remote-entry timeout (one vouched for exactly that long ago stays), and the sites left
    /// empty; returns what went, by site.
    pub fn poll_aged_out(&mut self, now_ms: u64) -> Vec<AgedOut> {
        let timeout = self.remote_entry_timeout_ms;
        let stale = |vouched: i64| age_at(now_ms, vouched) > timeout;
        let mut out = Vec::new();
        for (&site, remote) in &mut self.remote {
            let locators: Vec<(MemberName, Address)> = remote
                .locators
                .iter()
                .filter(|(_, l)| stale(l.vouched_ms))
                .map(|(n, l)| (n.clone(), l.address.clone()))
                .collect();
            let servers: Vec<MemberName> = remote
                .servers
                .iter()
                .filter(|(_, s)| stale(s.vouched_ms))
                .map(|(n, _)| n.clone())
                .collect();
            if locators.is_empty() && servers.is_empty() {
                continue;
            }
            for (n, _) in &locators {
                remote.locators.remove(n);
            }
            for n in &servers {
                remote.servers.remove(n);
            }
            out.push(AgedOut {
                site,
                locators,
                servers,
                site_gone: remote.locators.is_empty() && remote.servers.is_empty(),
            });
        }
        self.remote
            .retain(|_, r| !r.locators.is_empty() || !r.servers.is_empty());
        out
    }

    /// The gateway-receiver endpoints of `site`'s servers (ordered by server name), or `None`
    /// when the directory does not know the site. The own site answers with its local servers'.
    pub fn receivers_of(&self, site: SiteId) -> Option<Vec<ReceiverEndpoint>> {
        if self.is_own(site) {
            return Some(
                self.local()
                    .servers
                    .values()
                    .flat_map(|e| e.info.receivers.iter().cloned())
                    .collect(),
            );
        }
        self.remote.get(&site).map(|r| {
            r.servers
                .values()
                .flat_map(|s| s.receivers.iter().cloned())
                .collect()
        })
    }

    /// The locators of `site` (ordered by name), or `None` when the directory does not know it.
    pub fn locators_of(&self, site: SiteId) -> Option<Vec<Address>> {
        if self.is_own(site) {
            return Some(self.local().locators.clone());
        }
        self.remote
            .get(&site)
            .map(|r| r.locators.values().map(|l| l.address.clone()).collect())
    }
}

/// When a locator exchanges its map with the locators of other sites: a round at start, then
/// one every interval, never two at once (a round calls its targets one after another, and an
/// unreachable one may hold it up to the shell's call timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRounds {
    interval_ms: u64,
    next_ms: u64,
    busy: bool,
}

/// A round to make: send `map` to each of `targets` and merge each answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRound {
    pub targets: Vec<Address>,
    pub map: SiteMap,
}

impl ExchangeRounds {
    /// Rounds every `interval_ms` (at least 1 ms), the first due at once.
    pub fn new(interval_ms: u64) -> ExchangeRounds {
        ExchangeRounds {
            interval_ms: interval_ms.max(1),
            next_ms: 0,
            busy: false,
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Whether a round is under way.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// The round to start at `now_ms`, if one is due, none is under way, and the directory has
    /// a site and someone to exchange with ([`Directory::exchange_targets`]); the map is
    /// [`Directory::export`] at `now_ms`. The round is under way until
    /// [`ExchangeRounds::handle_round_done`].
    pub fn poll_round(&mut self, now_ms: u64, directory: &Directory) -> Option<ExchangeRound> {
        directory.site()?;
        if self.busy || now_ms < self.next_ms {
            return None;
        }
        self.next_ms = now_ms.saturating_add(self.interval_ms);
        let targets = directory.exchange_targets();
        if targets.is_empty() {
            return None;
        }
        self.busy = true;
        Some(ExchangeRound {
            targets,
            map: directory.export(now_ms),
        })
    }

    /// The round is over (every target answered or failed, or it could not start); the next
    /// starts when due.
    pub fn handle_round_done(&mut self) {
        self.busy = false;
    }
}

/// `map` as it is `waited_ms` after it was made: every entry that much older (saturating). A
/// round's map waits while the calls before it in the round are made.
pub fn round_map_aged(map: &SiteMap, waited_ms: u64) -> SiteMap {
    let mut map = map.clone();
    for site in map.values_mut() {
        for l in &mut site.locators {
            l.age_ms = l.age_ms.saturating_add(waited_ms);
        }
        for s in &mut site.servers {
            s.age_ms = s.age_ms.saturating_add(waited_ms);
        }
    }
    map
}

/// What one of its site's locators answered a gateway sender asking for a remote site's
/// receivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocatorAnswer {
    /// The site's receiver endpoints (possibly none yet).
    Receivers(Vec<ReceiverEndpoint>),
    /// The locator does not know the site.
    SiteUnknown,
    /// No answer, and why.
    Failed(String),
}

/// Why a sender's lookup found no receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoReceiver {
    /// The first locator that knows the site, which has no receiver yet.
    NoReceivers { locator: String },
    /// The locators that do not know the site (none knew it; some may have failed).
    SiteUnknown { locators: Vec<String> },
    /// Why each locator failed (empty: there was no locator to ask).
    Unreachable { reasons: Vec<String> },
}

/// A sender's lookup through its site's locators, asked in turn (`answers` is lazy: the
/// locators after the first that gives receivers are not asked). Without receivers, a locator
/// that knows the site says most, then the locators that do not know it, then the failures.
pub fn first_receivers(
    answers: impl IntoIterator<Item = (String, LocatorAnswer)>,
) -> Result<Vec<ReceiverEndpoint>, NoReceiver> {
    let (mut empty, mut unknown, mut reasons) = (None, Vec::new(), Vec::new());
    for (locator, answer) in answers {
        match answer {
            LocatorAnswer::Receivers(r) if !r.is_empty() => return Ok(r),
            LocatorAnswer::Receivers(_) => empty = empty.or(Some(locator)),
            LocatorAnswer::SiteUnknown => unknown.push(locator),
            LocatorAnswer::Failed(why) => reasons.push(why),
        }
    }
    Err(match empty {
        Some(locator) => NoReceiver::NoReceivers { locator },
        None if !unknown.is_empty() => NoReceiver::SiteUnknown { locators: unknown },
        None => NoReceiver::Unreachable { reasons },
    })
}

/// The receiver a gateway sender's shard tries at its `attempt`-th connection (from 0), among
/// the `endpoints` its locator gave: those serving most of the shard's buckets (`mine`) first,
/// in the locator's order among equals, then round the others as attempts go on. `None` when
/// there is no endpoint.
pub fn choose_receiver(
    endpoints: &[ReceiverEndpoint],
    mine: impl Fn(BucketId) -> bool,
    attempt: usize,
) -> Option<&ReceiverEndpoint> {
    let mut ranked: Vec<&ReceiverEndpoint> = endpoints.iter().collect();
    ranked.sort_by_key(|e| std::cmp::Reverse(e.buckets.iter().filter(|&&b| mine(b)).count()));
    ranked.get(attempt.checked_rem(ranked.len())?).copied()
}

/// A time in this directory's ms as a signed number (the shell's clock never nears `i64::MAX`).
fn signed_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// When an entry `age_ms` old at `now_ms` was vouched for: before the clock started when the
/// age is larger than `now_ms`.
fn vouched_at(now_ms: u64, age_ms: u64) -> i64 {
    signed_ms(now_ms).saturating_sub(signed_ms(age_ms))
}

/// How old at `now_ms` an entry vouched for at `vouched_ms` is (0 for a time after `now_ms`).
fn age_at(now_ms: u64, vouched_ms: i64) -> u64 {
    u64::try_from(signed_ms(now_ms).saturating_sub(vouched_ms)).unwrap_or(0)
}

/// Removes the entries with the oldest `vouched` (the last by name among equals goes first)
/// until at most `max` are left; returns how many went.
fn evict_oldest<V>(
    entries: &mut BTreeMap<MemberName, V>,
    max: usize,
    vouched: impl Fn(&V) -> i64,
) -> usize {
    let over = entries.len().saturating_sub(max);
    if over == 0 {
        return 0;
    }
    let mut by_age: Vec<(i64, std::cmp::Reverse<MemberName>)> = entries
        .iter()
        .map(|(name, v)| (vouched(v), std::cmp::Reverse(name.clone())))
        .collect();
    by_age.sort_unstable();
    for (_, std::cmp::Reverse(name)) in by_age.into_iter().take(over) {
        entries.remove(&name);
    }
    over
}

fn validate_map(from: SiteId, map: &SiteMap) -> Result<(), DirectoryError> {
    if from == SITE_UNSET {
        return Err(DirectoryError::InvalidSite(from));
    }
    for (&site, report) in map {
        if site == SITE_UNSET {
            return Err(DirectoryError::InvalidSite(site));
        }
        if report.locators.len() > LOCATORS_PER_SITE_MAX {
            return Err(DirectoryError::TooManyLocators {
                site,
                count: report.locators.len(),
            });
        }
        if report.servers.len() > SERVERS_PER_SITE_MAX {
            return Err(DirectoryError::TooManyServers {
                site,
                count: report.servers.len(),
            });
        }
        for l in &report.locators {
            validate_name(&l.name)?;
            if !valid_address(&l.address) {
                return Err(DirectoryError::InvalidAddress(l.address.to_string()));
            }
        }
        for s in &report.servers {
            validate_name(&s.name)?;
            validate_receivers(&s.receivers)?;
        }
    }
    Ok(())
}

static EMPTY_SITE: SiteEntry = SiteEntry {
    locators: Vec::new(),
    servers: BTreeMap::new(),
};

fn valid_address(a: &Address) -> bool {
    !a.host.is_empty()
        && a.host.len() <= HOST_BYTES_MAX
        && !a.host.chars().any(|c| c.is_control() || c.is_whitespace())
        && a.port != 0
}

fn validate_name(name: &MemberName) -> Result<(), DirectoryError> {
    let name = &name.0;
    if name.is_empty()
        || name.len() > MEMBER_NAME_BYTES_MAX
        || name.contains('/')
        || RESERVED_MEMBER_NAMES.contains(&name.as_str())
        || name.chars().any(char::is_control)
    {
        return Err(DirectoryError::InvalidName(name.clone()));
    }
    Ok(())
}

fn validate_receivers(receivers: &[ReceiverEndpoint]) -> Result<(), DirectoryError> {
    if receivers.len() > RECEIVERS_PER_SERVER_MAX {
        return Err(DirectoryError::TooManyReceivers {
            count: receivers.len(),
        });
    }
    for r in receivers {
        if !valid_address(&r.address) {
            return Err(DirectoryError::InvalidAddress(r.address.to_string()));
        }
        validate_buckets(r)?;
    }
    Ok(())
}

const _: () = assert!(BUCKETS_MAX.is_multiple_of(64));

/// At most [`BUCKETS_MAX`] bucket ids, each below it, none twice.
fn validate_buckets(r: &ReceiverEndpoint) -> Result<(), DirectoryError> {
    let invalid = |reason: String| DirectoryError::InvalidBuckets {
        endpoint: r.address.to_string(),
        reason,
    };
    if r.buckets.len() > usize::from(BUCKETS_MAX) {
        return Err(invalid(format!("{} entries", r.buckets.len())));
    }
    let mut seen = [0u64; BUCKETS_MAX as usize / 64];
    for b in &r.buckets {
        let (word, bit) = (usize::from(b.0 / 64), 1u64 << (b.0 % 64));
        let Some(slot) = seen.get_mut(word) else {
            return Err(invalid(format!("bucket {} is out of range", b.0)));
        };
        if *slot & bit != 0 {
            return Err(invalid(format!("bucket {} appears twice", b.0)));
        }
        *slot |= bit;
    }
    Ok(())
}

fn validate(info: &ServerInfo) -> Result<(), DirectoryError> {
    validate_name(&info.name)?;
    if !valid_address(&info.client) {
        return Err(DirectoryError::InvalidAddress(info.client.to_string()));
    }
    validate_receivers(&info.receivers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: u64 = 1_000;

    fn dir() -> Directory {
        Directory::new(Some(SiteId(1)), addr("loc", 10334), Vec::new(), TIMEOUT)
    }

    fn addr(host: &str, port: u16) -> Address {
        Address {
            host: host.into(),
            port,
        }
    }

    fn server(name: &str, port: u16, load: u32) -> ServerInfo {
        ServerInfo {
            name: MemberName(name.into()),
            client: addr("127.0.0.1", port),
            receivers: Vec::new(),
            load,
            admin: None,
        }
    }

    fn names(d: &Directory) -> Vec<&str> {
        d.local().servers.keys().map(|n| n.0.as_str()).collect()
    }

    #[test]
    fn exchange_rounds_start_at_once_then_every_interval_one_at_a_time() {
        let mut rounds = ExchangeRounds::new(100);
        // No remote locator known: nothing to do, and the next try waits for the interval.
        assert_eq!(rounds.poll_round(0, &dir()), None);
        let d = Directory::new(
            Some(SiteId(1)),
            addr("loc", 1),
            vec![addr("far", 2)],
            TIMEOUT,
        );
        assert_eq!(rounds.poll_round(99, &d), None);
        let round = rounds.poll_round(100, &d).expect("due");
        assert_eq!(round.targets, vec![addr("far", 2)]);
        assert_eq!(round.map, d.export(100));
        assert!(rounds.busy());
        // Due again, but the last round is still under way.
        assert_eq!(rounds.poll_round(250, &d), None);
        rounds.handle_round_done();
        assert!(rounds.poll_round(250, &d).is_some());
        // A directory without a site takes no part.
        let mut rounds = ExchangeRounds::new(100);
        let none = Directory::new(None, addr("loc", 1), vec![addr("far", 2)], TIMEOUT);
        assert_eq!(rounds.poll_round(0, &none), None);
    }

    #[test]
    fn a_round_map_ages_while_it_waits() {
        let map = dir().export(0);
        let own = |m: &SiteMap| m[&SiteId(1)].locators[0].age_ms;
        assert_eq!(own(&round_map_aged(&map, 40)), 40);
        assert_eq!(
            own(&round_map_aged(&round_map_aged(&map, 40), u64::MAX)),
            u64::MAX
        );
    }

    #[test]
    fn a_lookup_takes_the_first_locator_with_receivers_else_says_the_most_it_knows() {
        let found = vec![receiver(5003)];
        let answer = |at: &str, a: LocatorAnswer| (at.to_string(), a);
        let mut asked = 0;
        let lazy = [
            answer("a", LocatorAnswer::Failed("refused".into())),
            answer("b", LocatorAnswer::Receivers(found.clone())),
            answer("c", LocatorAnswer::SiteUnknown),
        ]
        .into_iter()
        .inspect(|_| asked += 1);
        assert_eq!(first_receivers(lazy), Ok(found));
        assert_eq!(asked, 2, "the locator after the first answer is not asked");
        let empty = || answer("e", LocatorAnswer::Receivers(Vec::new()));
        let unknown = || answer("u", LocatorAnswer::SiteUnknown);
        let failed = || answer("f", LocatorAnswer::Failed("timed out".into()));
        assert_eq!(
            first_receivers([unknown(), empty(), failed()]),
            Err(NoReceiver::NoReceivers {
                locator: "e".into()
            })
        );
        assert_eq!(
            first_receivers([failed(), unknown()]),
            Err(NoReceiver::SiteUnknown {
                locators: vec!["u".into()]
            })
        );
        assert_eq!(
            first_receivers([failed()]),
            Err(NoReceiver::Unreachable {
                reasons: vec!["timed out".into()]
            })
        );
        assert_eq!(
            first_receivers([]),
            Err(NoReceiver::Unreachable {
                reasons: Vec::new()
            })
        );
    }

    #[test]
    fn a_sender_tries_the_receiver_serving_most_of_its_buckets_first_then_rotates() {
        let ep = |port: u16, buckets: &[u16]| ReceiverEndpoint {
            address: addr("r", port),
            buckets: buckets.iter().map(|&b| BucketId(b)).collect(),
        };
        let endpoints = [ep(1, &[0, 2]), ep(2, &[1, 3, 5]), ep(3, &[4])];
        let odd = |b: BucketId| b.0 % 2 == 1;
        let port = |attempt| choose_receiver(&endpoints, odd, attempt).map(|e| e.address.port);
        assert_eq!(
            (0..4).map(port).collect::<Vec<_>>(),
            [Some(2), Some(1), Some(3), Some(2)]
        );
        assert_eq!(choose_receiver(&[], odd, 0), None);
    }

    #[test]
    fn a_new_directory_holds_its_own_locator_and_settings() {
        let remote = vec![addr("london", 10334)];
        let d = Directory::new(Some(SiteId(7)), addr("ny", 10334), remote.clone(), 5_000);
        assert_eq!(d.site(), Some(SiteId(7)));
        assert_eq!(d.remote_locators(), &remote[..]);
        assert_eq!(d.local().locators, vec![addr("ny", 10334)]);
        assert!(d.local().servers.is_empty());
        assert!(d.site_entry(SiteId(7)).is_some());
        assert!(d.site_entry(SiteId(2)).is_none());
        let unset = Directory::new(None, addr("ny", 10334), Vec::new(), 5_000);
        assert!(unset.site_entry(SITE_UNSET).is_some());
    }

    #[test]
    fn member_timeout_is_clamped_and_sets_the_heartbeat_interval() {
        assert_eq!(dir().heartbeat_interval_ms(), TIMEOUT / 3);
        let d = Directory::new(None, addr("l", 1), Vec::new(), MEMBER_TIMEOUT_MS_DEFAULT);
        assert_eq!(d.heartbeat_interval_ms(), HEARTBEAT_INTERVAL_MS_DEFAULT);
        let d = Directory::new(None, addr("l", 1), Vec::new(), 1);
        assert_eq!(d.member_timeout_ms(), MEMBER_TIMEOUT_MS_MIN);
        let d = Directory::new(None, addr("l", 1), Vec::new(), u64::MAX);
        assert_eq!(d.member_timeout_ms(), MEMBER_TIMEOUT_MS_MAX);
    }

    #[test]
    fn register_adds_a_server() {
        let mut d = dir();
        assert_eq!(
            d.handle_register(5, server("a", 40404, 0)),
            Ok(Registered::New)
        );
        let e = &d.local().servers[&MemberName("a".into())];
        assert_eq!(e.last_heard_ms, 5);
        assert_eq!(e.info, server("a", 40404, 0));
    }

    #[test]
    fn register_again_at_the_same_address_refreshes() {
        let mut d = dir();
        d.handle_register(5, server("a", 40404, 3)).unwrap();
        assert_eq!(
            d.handle_register(9, server("a", 40404, 1)),
            Ok(Registered::Refreshed)
        );
        let e = &d.local().servers[&MemberName("a".into())];
        assert_eq!((e.last_heard_ms, e.info.load), (9, 1));
        assert_eq!(names(&d), ["a"]);
    }

    #[test]
    fn register_at_a_changed_address_replaces_the_old_entry() {
        let mut d = dir();
        d.handle_register(5, server("a", 40404, 3)).unwrap();
        assert_eq!(
            d.handle_register(6, server("a", 40405, 0)),
            Ok(Registered::Replaced {
                previous: addr("127.0.0.1", 40404)
            })
        );
        assert_eq!(names(&d), ["a"]);
        assert_eq!(
            d.local().servers[&MemberName("a".into())].info.client.port,
            40405
        );
        // A changed receiver list is a replacement too.
        let mut with_receiver = server("a", 40405, 0);
        with_receiver.receivers.push(ReceiverEndpoint {
            address: addr("127.0.0.1", 5000),
            buckets: Vec::new(),
        });
        assert!(matches!(
            d.handle_register(7, with_receiver),
            Ok(Registered::Replaced { .. })
        ));
    }

    #[test]
    fn names_the_locator_paths_cannot_carry_are_refused() {
        let mut d = dir();
        for bad in [".", "..", "least-loaded", "/", "a/"] {
            let err = d.handle_register(0, server(bad, 1, 0)).unwrap_err();
            assert_eq!(err, DirectoryError::InvalidName(bad.into()));
            assert!(err.to_string().contains("least-loaded"), "{err}");
        }
        for good in ["...", ".a", "least-loaded-2", "Least-Loaded"] {
            assert!(d.handle_register(0, server(good, 1, 0)).is_ok(), "{good}");
        }
    }

    #[test]
    fn receiver_buckets_are_bounded_in_range_and_distinct() {
        let mut d = dir();
        let with_buckets = |buckets: Vec<u16>| {
            let mut s = server("a", 1, 0);
            s.receivers.push(ReceiverEndpoint {
                address: addr("r", 5000),
                buckets: buckets.into_iter().map(BucketId).collect(),
            });
            s
        };
        for (buckets, words) in [
            (vec![1, 2, 1], "bucket 1 appears twice"),
            (vec![0, BUCKETS_MAX], "bucket 4096 is out of range"),
            (vec![u16::MAX], "bucket 65535 is out of range"),
            ((0..=BUCKETS_MAX).collect(), "4097 entries"),
        ] {
            let err = d.handle_register(0, with_buckets(buckets)).unwrap_err();
            assert!(
                matches!(&err, DirectoryError::InvalidBuckets { endpoint, .. } if endpoint == "r:5000"),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains(words) && text.contains("`buckets`"), "{text}");
        }
        assert!(d.local().servers.is_empty());
        let all = with_buckets((0..BUCKETS_MAX).rev().collect());
        assert_eq!(d.handle_register(0, all), Ok(Registered::New));
        // The same limits hold for a relayed map.
        let mut a = site_dir(1, &[]);
        let mut map = site_dir(2, &[]).export(0);
        map.get_mut(&SiteId(2)).unwrap().servers.push(ServerReport {
            name: MemberName("s2".into()),
            receivers: with_buckets(vec![7, 7]).receivers,
            age_ms: 0,
        });
        assert!(matches!(
            a.handle_exchange(0, SiteId(2), &map),
            Err(DirectoryError::InvalidBuckets { .. })
        ));
        assert!(a.remote_sites().is_empty());
    }

    #[test]
    fn register_refuses_invalid_servers() {
        let mut d = dir();
        for bad in [
            "",
            "a/b",
            "tab\there",
            &"n".repeat(MEMBER_NAME_BYTES_MAX + 1),
        ] {
            assert!(matches!(
                d.handle_register(0, server(bad, 1, 0)),
                Err(DirectoryError::InvalidName(_))
            ));
        }
        assert!(matches!(
            d.handle_register(0, server("a", 0, 0)),
            Err(DirectoryError::InvalidAddress(_))
        ));
        let mut s = server("a", 1, 0);
        s.client.host = String::new();
        assert!(matches!(
            d.handle_register(0, s),
            Err(DirectoryError::InvalidAddress(_))
        ));
        let mut s = server("a", 1, 0);
        s.receivers = vec![
            ReceiverEndpoint {
                address: addr("r", 5000),
                buckets: Vec::new()
            };
            RECEIVERS_PER_SERVER_MAX + 1
        ];
        assert_eq!(
            d.handle_register(0, s),
            Err(DirectoryError::TooManyReceivers {
                count: RECEIVERS_PER_SERVER_MAX + 1
            })
        );
        let mut s = server("a", 1, 0);
        s.receivers.push(ReceiverEndpoint {
            address: addr("r", 0),
            buckets: Vec::new(),
        });
        assert!(matches!(
            d.handle_register(0, s),
            Err(DirectoryError::InvalidAddress(_))
        ));
        assert!(d.local().servers.is_empty());
    }

    #[test]
    fn a_full_directory_refuses_new_servers_but_not_known_ones() {
        let mut d = dir();
        for i in 0..SERVERS_PER_SITE_MAX {
            d.handle_register(0, server(&format!("s{i}"), 1, 0))
                .unwrap();
        }
        assert_eq!(
            d.handle_register(0, server("one-more", 1, 0)),
            Err(DirectoryError::Full)
        );
        assert_eq!(
            d.handle_register(1, server("s0", 2, 0)),
            Ok(Registered::Replaced {
                previous: addr("127.0.0.1", 1)
            })
        );
    }

    #[test]
    fn heartbeat_updates_load_and_keeps_the_server() {
        let mut d = dir();
        d.handle_register(0, server("a", 1, 0)).unwrap();
        d.handle_heartbeat(900, &MemberName("a".into()), 7).unwrap();
        let e = &d.local().servers[&MemberName("a".into())];
        assert_eq!((e.info.load, e.last_heard_ms), (7, 900));
        assert!(d.poll_expired(900 + TIMEOUT).is_empty());
        // A heartbeat stamped earlier than the last one never moves the time back.
        d.handle_heartbeat(100, &MemberName("a".into()), 2).unwrap();
        assert_eq!(
            d.local().servers[&MemberName("a".into())].last_heard_ms,
            900
        );
    }

    #[test]
    fn heartbeat_from_an_unknown_server_asks_it_to_register() {
        let mut d = dir();
        let err = d
            .handle_heartbeat(0, &MemberName("ghost".into()), 1)
            .unwrap_err();
        assert_eq!(
            err,
            DirectoryError::UnknownServer(MemberName("ghost".into()))
        );
        assert!(err.to_string().contains("register again"));
        assert!(d.local().servers.is_empty());
    }

    #[test]
    fn deregister_removes_and_unknown_deregister_is_an_error() {
        let mut d = dir();
        d.handle_register(0, server("a", 1, 0)).unwrap();
        assert_eq!(
            d.handle_deregister(&MemberName("a".into())),
            Ok(server("a", 1, 0))
        );
        assert!(d.local().servers.is_empty());
        assert_eq!(
            d.handle_deregister(&MemberName("a".into())),
            Err(DirectoryError::UnknownServer(MemberName("a".into())))
        );
    }

    #[test]
    fn expiry_drops_a_server_just_after_the_timeout_not_at_it() {
        let mut d = dir();
        d.handle_register(100, server("a", 1, 0)).unwrap();
        d.handle_register(300, server("b", 2, 0)).unwrap();
        assert!(d.poll_expired(100 + TIMEOUT).is_empty());
        assert_eq!(names(&d), ["a", "b"]);
        assert_eq!(
            d.poll_expired(100 + TIMEOUT + 1),
            vec![MemberName("a".into())]
        );
        assert_eq!(names(&d), ["b"]);
        assert!(d.poll_expired(300 + TIMEOUT).is_empty());
        assert_eq!(
            d.poll_expired(300 + TIMEOUT + 1),
            vec![MemberName("b".into())]
        );
        assert!(d.local().servers.is_empty());
        // A clock behind the last heartbeat expires nothing.
        d.handle_register(5_000, server("c", 3, 0)).unwrap();
        assert!(d.poll_expired(0).is_empty());
    }

    #[test]
    fn least_loaded_picks_the_lowest_load_and_counts_it_up() {
        let mut d = dir();
        assert_eq!(d.least_loaded(), None);
        d.handle_register(0, server("a", 1, 5)).unwrap();
        d.handle_register(0, server("b", 2, 2)).unwrap();
        d.handle_register(0, server("c", 3, 3)).unwrap();
        let first = d.least_loaded().unwrap();
        assert_eq!((first.name.0.as_str(), first.load), ("b", 3));
        // b (3) and c (3) tie: the first by name wins.
        assert_eq!(d.least_loaded().unwrap().name.0, "b");
        // b is at 4 now; c (3) is lowest.
        assert_eq!(d.least_loaded().unwrap().name.0, "c");
        // b 4, c 4, a 5: a tie between b and c again, b first.
        assert_eq!(d.least_loaded().unwrap().name.0, "b");
        // A heartbeat replaces the estimate with the real count.
        d.handle_heartbeat(1, &MemberName("a".into()), 0).unwrap();
        assert_eq!(d.least_loaded().unwrap().name.0, "a");
    }

    #[test]
    fn least_loaded_saturates_rather_than_wrapping() {
        let mut d = dir();
        d.handle_register(0, server("a", 1, u32::MAX)).unwrap();
        assert_eq!(d.least_loaded().unwrap().load, u32::MAX);
    }

    // Discovery between sites.

    const REMOTE_TIMEOUT: u64 = 500;

    fn site_dir(site: u8, remote: &[u16]) -> Directory {
        Directory::new(
            Some(SiteId(site)),
            addr("127.0.0.1", 10_000 + u16::from(site)),
            remote.iter().map(|&p| addr("127.0.0.1", p)).collect(),
            TIMEOUT,
        )
        .with_locator_name(MemberName(format!("loc-{site}")))
        .with_remote_entry_timeout_ms(REMOTE_TIMEOUT)
    }

    fn receiver(port: u16) -> ReceiverEndpoint {
        ReceiverEndpoint {
            address: addr("127.0.0.1", port),
            buckets: vec![BucketId(0), BucketId(1)],
        }
    }

    fn with_receiver(name: &str, port: u16) -> ServerInfo {
        let mut s = server(name, 40_000 + port, 0);
        s.receivers.push(receiver(port));
        s
    }

    /// `a` calls `b` at `now`: `b` merges `a`'s map and answers with its own, which `a` merges.
    fn exchange(now: u64, a: &mut Directory, b: &mut Directory) -> (Merged, Merged) {
        let at_b = b
            .handle_exchange(now, a.site().unwrap(), &a.export(now))
            .unwrap();
        let at_a = a
            .handle_exchange(now, b.site().unwrap(), &b.export(now))
            .unwrap();
        (at_b, at_a)
    }

    /// Calls every target a directory has, as a locator's exchange round does.
    fn round(now: u64, dirs: &mut [Directory]) {
        for i in 0..dirs.len() {
            for target in dirs[i].exchange_targets() {
                let Some(j) = dirs.iter().position(|d| d.local().locators[0] == target) else {
                    continue;
                };
                let (left, right) = dirs.split_at_mut(i.max(j));
                let (a, b) = if i < j {
                    (&mut left[i], &mut right[0])
                } else {
                    (&mut right[0], &mut left[j])
                };
                exchange(now, a, b);
            }
        }
    }

    #[test]
    fn three_sites_each_knowing_one_other_converge() {
        // 1 knows 2, 2 knows 3, 3 knows nobody.
        let mut dirs = vec![
            site_dir(1, &[10_002]),
            site_dir(2, &[10_003]),
            site_dir(3, &[]),
        ];
        dirs[2]
            .handle_register(0, with_receiver("s3", 5003))
            .unwrap();
        let mut rounds = 0;
        while !dirs.iter().all(|d| {
            (1..=3).all(|s| d.locators_of(SiteId(s)).is_some_and(|l| l.len() == 1))
                && d.receivers_of(SiteId(3)) == Some(vec![receiver(5003)])
        }) {
            rounds += 1;
            assert!(rounds <= 3, "no convergence after 3 rounds");
            round(rounds * 10, &mut dirs);
        }
        assert_eq!(
            dirs[0].locators_of(SiteId(3)),
            Some(vec![addr("127.0.0.1", 10_003)])
        );
        // Site 1 now calls 3 directly, having learned of it.
        assert_eq!(
            dirs[0].exchange_targets(),
            vec![addr("127.0.0.1", 10_002), addr("127.0.0.1", 10_003)]
        );
        assert_eq!(dirs[0].receivers_of(SiteId(9)), None);
        assert_eq!(dirs[0].locators_of(SiteId(9)), None);
    }

    #[test]
    fn an_exchange_reports_what_changed() {
        let (mut a, mut b) = (site_dir(1, &[10_002]), site_dir(2, &[]));
        let (at_b, at_a) = exchange(0, &mut a, &mut b);
        assert_eq!(
            (at_b.new_sites, at_b.changed, at_a.new_sites, at_a.changed),
            (vec![SiteId(1)], 1, vec![SiteId(2)], 1)
        );
        // The same again only refreshes.
        let (at_b, at_a) = exchange(10, &mut a, &mut b);
        assert_eq!((at_b, at_a), (Merged::default(), Merged::default()));
        assert_eq!(
            a.remote_site(SiteId(2)).unwrap().locators[&MemberName("loc-2".into())].vouched_ms,
            10
        );
    }

    #[test]
    fn remote_entries_age_out_even_while_relayed() {
        let (mut a, mut b, mut c) = (site_dir(1, &[]), site_dir(2, &[]), site_dir(3, &[]));
        c.handle_register(0, with_receiver("s3", 5003)).unwrap();
        exchange(0, &mut b, &mut c);
        exchange(0, &mut a, &mut b);
        assert!(a.receivers_of(SiteId(3)).is_some());
        // Site 3 falls silent; 1 and 2 keep relaying what they know of it to each other.
        let mut now = 0;
        while now < REMOTE_TIMEOUT {
            now += 100;
            exchange(now, &mut a, &mut b);
            assert!(a.poll_aged_out(now).is_empty() && b.poll_aged_out(now).is_empty());
            let age = a.export(now)[&SiteId(3)].servers[0].age_ms;
            assert_eq!(age, now, "relaying never makes an entry younger");
        }
        exchange(now + 1, &mut a, &mut b);
        let gone = a.poll_aged_out(now + 1);
        assert_eq!(
            gone,
            vec![AgedOut {
                site: SiteId(3),
                locators: vec![(MemberName("loc-3".into()), addr("127.0.0.1", 10_003))],
                servers: vec![MemberName("s3".into())],
                site_gone: true,
            }]
        );
        assert_eq!(a.receivers_of(SiteId(3)), None);
        assert!(!a.exchange_targets().contains(&addr("127.0.0.1", 10_003)));
        // Site 2 still sees 1, refreshed by the exchanges.
        assert!(a.locators_of(SiteId(2)).is_some());
        // A report already older than the timeout is not taken in.
        let mut stale = SiteMap::new();
        stale.insert(
            SiteId(3),
            SiteReport {
                locators: vec![LocatorReport {
                    name: MemberName("loc-3".into()),
                    address: addr("127.0.0.1", 10_003),
                    age_ms: REMOTE_TIMEOUT + 1,
                }],
                servers: Vec::new(),
            },
        );
        assert_eq!(
            a.handle_exchange(now, SiteId(2), &stale),
            Ok(Merged::default())
        );
        assert_eq!(a.locators_of(SiteId(3)), None);
    }

    #[test]
    fn requests_passed_round_a_cycle_never_keep_a_dead_server_alive() {
        // Site 3's server was last vouched for at 0, in an answer both sites 1 and 2 took.
        let map3 = |age_ms: u64| {
            let mut map = SiteMap::new();
            map.insert(
                SiteId(3),
                SiteReport {
                    locators: Vec::new(),
                    servers: vec![ServerReport {
                        name: MemberName("s3".into()),
                        receivers: vec![receiver(5003)],
                        age_ms,
                    }],
                },
            );
            map
        };
        let (mut a, mut b) = (site_dir(1, &[]), site_dir(2, &[]));
        a.handle_exchange(0, SiteId(3), &map3(0)).unwrap();
        b.handle_exchange(0, SiteId(3), &map3(0)).unwrap();
        // Sites 1 and 2 then send each other requests every 10 ms, each 40 ms on the wire. Were
        // a request's relayed entries merged, each transit would make s3 40 ms younger and it
        // would live for ever; only the requester's own site is taken from a request.
        let transit = 40;
        let mut now = 0;
        while now <= 3 * REMOTE_TIMEOUT {
            let (from_a, from_b) = (a.export(now), b.export(now));
            now += 10;
            a.handle_exchange_request(now + transit, SiteId(2), &from_b)
                .unwrap();
            b.handle_exchange_request(now + transit, SiteId(1), &from_a)
                .unwrap();
            a.poll_aged_out(now);
            b.poll_aged_out(now);
            if now > REMOTE_TIMEOUT {
                assert_eq!(a.receivers_of(SiteId(3)), None, "at {now}");
                assert_eq!(b.receivers_of(SiteId(3)), None, "at {now}");
            }
        }
        // The requester's own site is taken in.
        assert!(a.locators_of(SiteId(2)).is_some());
        // Answers (dated when the call left) still carry relayed sites.
        let mut c = site_dir(4, &[]);
        c.handle_exchange(now, SiteId(1), &map3(5)).unwrap();
        assert!(c.receivers_of(SiteId(3)).is_some());
        assert_eq!(
            c.handle_exchange_request(now, SiteId(0), &map3(5)),
            Err(DirectoryError::InvalidSite(SiteId(0)))
        );
    }

    #[test]
    fn a_report_older_than_the_locator_keeps_its_whole_age() {
        let timeout = 60_000;
        let mut a = site_dir(1, &[]).with_remote_entry_timeout_ms(timeout);
        let report = |age_ms: u64| {
            let mut map = SiteMap::new();
            map.insert(
                SiteId(3),
                SiteReport {
                    locators: vec![LocatorReport {
                        name: MemberName("loc-3".into()),
                        address: addr("127.0.0.1", 10_003),
                        age_ms,
                    }],
                    servers: vec![ServerReport {
                        name: MemberName("s3".into()),
                        receivers: vec![receiver(5003)],
                        age_ms,
                    }],
                },
            );
            map
        };
        // A locator up for one second hears of an entry last vouched for 55 s ago.
        a.handle_exchange(1_000, SiteId(2), &report(55_000))
            .unwrap();
        let out = a.export(1_000);
        assert_eq!(out[&SiteId(3)].locators[0].age_ms, 55_000);
        assert_eq!(out[&SiteId(3)].servers[0].age_ms, 55_000);
        assert_eq!(a.export(2_000)[&SiteId(3)].servers[0].age_ms, 56_000);
        // So it ages out when its own site's silence passes the timeout, not 55 s later.
        assert!(a.poll_aged_out(1_000 + timeout - 55_000).is_empty());
        assert_eq!(a.poll_aged_out(1_000 + timeout - 55_000 + 1).len(), 1);
        assert_eq!(a.locators_of(SiteId(3)), None);
        // A report already past the timeout is not merged at all.
        assert_eq!(
            a.handle_exchange(1_000, SiteId(2), &report(timeout + 1)),
            Ok(Merged::default())
        );
        assert!(a.remote_sites().is_empty());
    }

    #[test]
    fn a_remote_site_keeps_at_most_its_caps_the_oldest_evicted() {
        let mut a = site_dir(1, &[]);
        let map = |prefix: &str, count: usize, age_ms: u64| {
            let mut map = SiteMap::new();
            map.insert(
                SiteId(3),
                SiteReport {
                    locators: (0..count.min(LOCATORS_PER_SITE_MAX))
                        .map(|i| LocatorReport {
                            name: MemberName(format!("{prefix}-loc-{i}")),
                            address: addr("127.0.0.1", 1 + i as u16),
                            age_ms,
                        })
                        .collect(),
                    servers: (0..count)
                        .map(|i| ServerReport {
                            name: MemberName(format!("{prefix}-s-{i}")),
                            receivers: vec![receiver(5000)],
                            age_ms,
                        })
                        .collect(),
                },
            );
            map
        };
        let first = a
            .handle_exchange(100, SiteId(2), &map("old", SERVERS_PER_SITE_MAX, 10))
            .unwrap();
        assert_eq!(first.evicted, 0);
        // Another relay names as many other members, more freshly: the old ones go.
        let second = a
            .handle_exchange(100, SiteId(4), &map("new", SERVERS_PER_SITE_MAX, 0))
            .unwrap();
        assert_eq!(second.evicted, LOCATORS_PER_SITE_MAX + SERVERS_PER_SITE_MAX);
        let site = a.remote_site(SiteId(3)).unwrap();
        assert_eq!(
            (site.locators.len(), site.servers.len()),
            (LOCATORS_PER_SITE_MAX, SERVERS_PER_SITE_MAX)
        );
        assert!(site.locators.keys().all(|n| n.0.starts_with("new-")));
        assert!(site.servers.keys().all(|n| n.0.starts_with("new-")));
        // A few older newcomers are the ones evicted; the fresher holders stay.
        let third = a
            .handle_exchange(100, SiteId(2), &map("late", 3, 50))
            .unwrap();
        assert_eq!((third.changed, third.evicted), (6, 6));
        let site = a.remote_site(SiteId(3)).unwrap();
        assert!(site.servers.keys().all(|n| n.0.starts_with("new-")));
        assert!(site.locators.keys().all(|n| n.0.starts_with("new-")));
    }

    #[test]
    fn a_fresher_report_of_a_changed_address_replaces_the_old_one_an_older_does_not() {
        let (mut a, mut b) = (site_dir(1, &[]), site_dir(2, &[]));
        b.handle_register(0, with_receiver("s2", 5002)).unwrap();
        exchange(0, &mut a, &mut b);
        // s2 restarts with another receiver port.
        b.handle_register(50, with_receiver("s2", 5012)).unwrap();
        let older = b.export(50);
        let (_, at_a) = exchange(100, &mut a, &mut b);
        assert_eq!(at_a.changed, 1);
        assert_eq!(a.receivers_of(SiteId(2)), Some(vec![receiver(5012)]));
        // The map sent at 50 arrives late, relayed with the old age: it loses.
        let mut late = older.clone();
        late.get_mut(&SiteId(2)).unwrap().servers[0].receivers = vec![receiver(5002)];
        late.get_mut(&SiteId(2)).unwrap().servers[0].age_ms = 60;
        assert_eq!(
            a.handle_exchange(100, SiteId(3), &late),
            Ok(Merged::default())
        );
        assert_eq!(a.receivers_of(SiteId(2)), Some(vec![receiver(5012)]));
        // A locator that moved: the same name at a new address.
        let mut moved = older;
        let l = &mut moved.get_mut(&SiteId(2)).unwrap().locators[0];
        l.address = addr("10.0.0.2", 10_334);
        l.age_ms = 0;
        assert_eq!(
            a.handle_exchange(200, SiteId(2), &moved).unwrap().changed,
            1
        );
        assert_eq!(
            a.locators_of(SiteId(2)),
            Some(vec![addr("10.0.0.2", 10_334)])
        );
    }

    #[test]
    fn the_own_site_is_never_overwritten_by_relayed_reports() {
        let mut a = site_dir(1, &[]);
        a.handle_register(0, with_receiver("s1", 5001)).unwrap();
        let mut forged = SiteMap::new();
        forged.insert(
            SiteId(1),
            SiteReport {
                locators: vec![LocatorReport {
                    name: MemberName("loc-1".into()),
                    address: addr("evil", 1),
                    age_ms: 0,
                }],
                servers: vec![ServerReport {
                    name: MemberName("s1".into()),
                    receivers: vec![receiver(6666)],
                    age_ms: 0,
                }],
            },
        );
        assert_eq!(
            a.handle_exchange(5, SiteId(2), &forged),
            Ok(Merged::default())
        );
        assert_eq!(
            a.locators_of(SiteId(1)),
            Some(vec![addr("127.0.0.1", 10_001)])
        );
        assert_eq!(a.receivers_of(SiteId(1)), Some(vec![receiver(5001)]));
        assert!(a.remote_sites().is_empty());
        let own = &a.export(5)[&SiteId(1)];
        assert_eq!(own.locators[0].name, MemberName("loc-1".into()));
        assert_eq!(own.servers[0].receivers, vec![receiver(5001)]);
    }

    #[test]
    fn only_servers_with_receivers_are_exported() {
        let mut a = site_dir(1, &[]);
        a.handle_register(0, server("plain", 1, 0)).unwrap();
        assert!(a.export(0)[&SiteId(1)].servers.is_empty());
        assert_eq!(a.receivers_of(SiteId(1)), Some(Vec::new()));
    }

    #[test]
    fn invalid_maps_are_refused_whole() {
        let mut a = site_dir(1, &[]);
        let good = site_dir(2, &[]).export(0);
        assert_eq!(
            a.handle_exchange(0, SITE_UNSET, &good),
            Err(DirectoryError::InvalidSite(SITE_UNSET))
        );
        let mut bad = good.clone();
        bad.get_mut(&SiteId(2)).unwrap().locators[0].address.port = 0;
        bad.insert(SiteId(3), site_dir(3, &[]).export(0)[&SiteId(3)].clone());
        assert!(matches!(
            a.handle_exchange(0, SiteId(2), &bad),
            Err(DirectoryError::InvalidAddress(_))
        ));
        assert!(a.remote_sites().is_empty());
        let mut bad = good.clone();
        bad.insert(SITE_UNSET, SiteReport::default());
        assert!(a.handle_exchange(0, SiteId(2), &bad).is_err());
        let mut bad = good.clone();
        bad.get_mut(&SiteId(2)).unwrap().locators = vec![
            LocatorReport {
                name: MemberName("l".into()),
                address: addr("h", 1),
                age_ms: 0
            };
            LOCATORS_PER_SITE_MAX + 1
        ];
        assert!(matches!(
            a.handle_exchange(0, SiteId(2), &bad),
            Err(DirectoryError::TooManyLocators { .. })
        ));
        let mut unset = Directory::new(None, addr("l", 1), Vec::new(), TIMEOUT);
        assert_eq!(
            unset.handle_exchange(0, SiteId(2), &good),
            Err(DirectoryError::NoSite)
        );
        assert!(unset.export(0).is_empty());
    }
}
