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
//! The directory is keyed by site so that the exchange with remote sites' locators (geode-wan.md
//! §2.2) adds entries next to the local one instead of a second structure.

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
const _: () = assert!(
    HEARTBEAT_INTERVAL_MS_DEFAULT * HEARTBEATS_PER_TIMEOUT_MIN <= MEMBER_TIMEOUT_MS_DEFAULT
);
const _: () = assert!(MEMBER_TIMEOUT_MS_MIN / HEARTBEATS_PER_TIMEOUT_MIN >= 100);
const _: () = assert!(MEMBER_TIMEOUT_MS_MIN <= MEMBER_TIMEOUT_MS_DEFAULT);
const _: () = assert!(MEMBER_TIMEOUT_MS_DEFAULT <= MEMBER_TIMEOUT_MS_MAX);

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
        "member name `{0}` is invalid: 1 to {MEMBER_NAME_BYTES_MAX} bytes, no control characters, no '/'"
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
    #[error("the directory already holds {SERVERS_PER_SITE_MAX} servers for this site")]
    Full,
}

/// A locator's directory.
#[derive(Clone, Debug)]
pub struct Directory {
    site: Option<SiteId>,
    remote_locators: Vec<Address>,
    member_timeout_ms: u64,
    sites: BTreeMap<SiteId, SiteEntry>,
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
        }
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

    /// Any site's entry (only the local one, until the exchange with remote locators).
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

fn validate(info: &ServerInfo) -> Result<(), DirectoryError> {
    let name = &info.name.0;
    if name.is_empty()
        || name.len() > MEMBER_NAME_BYTES_MAX
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(DirectoryError::InvalidName(name.clone()));
    }
    if info.receivers.len() > RECEIVERS_PER_SERVER_MAX {
        return Err(DirectoryError::TooManyReceivers {
            count: info.receivers.len(),
        });
    }
    for a in std::iter::once(&info.client).chain(info.receivers.iter().map(|r| &r.address)) {
        if !valid_address(a) {
            return Err(DirectoryError::InvalidAddress(a.to_string()));
        }
    }
    Ok(())
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
        }
    }

    fn names(d: &Directory) -> Vec<&str> {
        d.local().servers.keys().map(|n| n.0.as_str()).collect()
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
}
