//! Discovery between sites, in one process on loopback: three locators of sites 1, 2 and 3
//! where 1 knows 2 and 2 knows 3 learn of all three sites; a receiver registered at site 3 is
//! visible from site 1; site 3's entries age out at site 1 once it stops; a sender's lookup of
//! an unknown site names the site and the local locator.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use strait_engine::locator::{Address, ReceiverEndpoint};
use strait_net::locator::{self as proto, Endpoint, ErrorKind, RegisterRequest, SitesReply};
use strait_node::config::HostPort;
use strait_node::locator::{
    ClientError, LocatorClient, LocatorConfig, LocatorHandle, LookupError, RemoteSiteLookup,
    start_locator,
};
use strait_queue::ids::{BucketId, SiteId};

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
const EXCHANGE_INTERVAL_MS: u64 = 100;
const REMOTE_ENTRY_TIMEOUT_MS: u64 = 1_500;

fn at(addr: SocketAddr) -> HostPort {
    HostPort {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

fn locator(dir: &Path, site: u8, remote: Option<SocketAddr>) -> LocatorHandle {
    let mut c = LocatorConfig::new(format!("loc-{site}"), dir.join(format!("loc-{site}")));
    c.bind_address = [127, 0, 0, 1].into();
    c.port = 0;
    c.hostname_for_clients = Some("127.0.0.1".into());
    c.distributed_system_id = Some(SiteId(site));
    c.remote_locators = remote.map(at).into_iter().collect();
    c.exchange_interval_ms = EXCHANGE_INTERVAL_MS;
    c.remote_entry_timeout_ms = REMOTE_ENTRY_TIMEOUT_MS;
    start_locator(c).unwrap()
}

fn client(addr: SocketAddr) -> LocatorClient {
    LocatorClient::new(&at(addr), Duration::from_secs(5))
}

fn site_ids(reply: &SitesReply) -> Vec<u8> {
    reply
        .sites
        .iter()
        .map(|s| s.distributed_system_id)
        .collect()
}

/// Polls `probe` every 20 ms until it gives a value, or fails the test at the deadline.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

#[test]
fn three_sites_each_knowing_one_other_learn_all_then_a_stopped_site_ages_out() {
    let tmp = tempfile::tempdir().unwrap();
    let l3 = locator(tmp.path(), 3, None);
    let l2 = locator(tmp.path(), 2, Some(l3.addr));
    let l1 = locator(tmp.path(), 1, Some(l2.addr));
    let clients = [client(l1.addr), client(l2.addr), client(l3.addr)];

    for (i, c) in clients.iter().enumerate() {
        wait_for(&format!("locator {} to learn sites 1, 2, 3", i + 1), || {
            c.sites()
                .ok()
                .filter(|r| site_ids(r) == [1, 2, 3])
                .map(drop)
        });
    }
    // Site 1 knows site 3's locator by its advertised address, learned through site 2.
    let sites = clients[0].sites().unwrap();
    let site3 = &sites.sites[2];
    assert_eq!(site3.locators.len(), 1);
    assert_eq!(site3.locators[0].name, "loc-3");
    assert_eq!(
        site3.locators[0].address,
        clients[2].status().unwrap().address
    );

    // A server of site 3 registers its gateway receiver: site 1 learns where it is.
    let receiver = proto::ReceiverEndpoint {
        host: "127.0.0.1".into(),
        port: 5003,
        buckets: vec![0, 1, 2],
    };
    clients[2]
        .register(&RegisterRequest {
            name: "s3".into(),
            client: Endpoint {
                host: "127.0.0.1".into(),
                port: 40403,
            },
            receivers: vec![receiver.clone()],
            load: 0,
            admin: None,
        })
        .unwrap();
    let reply = wait_for("site 1 to learn site 3's receiver", || {
        clients[0]
            .receivers_of(SiteId(3))
            .ok()
            .filter(|r| !r.receivers.is_empty())
    });
    assert_eq!(reply.distributed_system_id, 3);
    assert_eq!(reply.receivers, vec![receiver]);
    assert_eq!(reply.locators, vec![site3.locators[0].address.clone()]);

    // The sender's lookup through locator 1 finds it.
    let mut lookup = RemoteSiteLookup::new(&[at(l1.addr)], SiteId(3), 1_000);
    assert_eq!(
        lookup.lookup(Instant::now()).unwrap(),
        vec![ReceiverEndpoint {
            address: Address {
                host: "127.0.0.1".into(),
                port: 5003
            },
            buckets: vec![BucketId(0), BucketId(1), BucketId(2)],
        }]
    );

    // Site 3 goes away (its server first, then its locator): sites 1 and 2 keep relaying what
    // they know of it to each other, yet it ages out at both.
    clients[2].deregister("s3").unwrap();
    l3.stop().unwrap();
    for (i, c) in clients[..2].iter().enumerate() {
        wait_for(
            &format!("site 3 to age out at locator {}", i + 1),
            || match c.receivers_of(SiteId(3)) {
                Err(ClientError::Refused { status, reply, .. }) => {
                    assert_eq!((status, reply.error), (404, ErrorKind::SiteUnknown));
                    Some(())
                }
                _ => None,
            },
        );
    }
    assert_eq!(site_ids(&clients[0].sites().unwrap()), [1, 2]);
    assert!(matches!(
        lookup.lookup(Instant::now()),
        Err(LookupError::SiteUnknown { .. })
    ));
    l2.stop().unwrap();
    l1.stop().unwrap();
}

#[test]
fn a_sender_looking_up_an_unknown_site_is_told_which_site_and_which_locator() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = locator(tmp.path(), 1, None);
    let local = at(l1.addr);
    let mut lookup = RemoteSiteLookup::new(std::slice::from_ref(&local), SiteId(9), 1_000);
    let e = lookup.lookup(Instant::now()).unwrap_err();
    assert!(
        matches!(
            e,
            LookupError::SiteUnknown {
                site: SiteId(9),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "Remote locator host port information for remote site 9 is not available in local locator {local}; retrying every 1000 ms"
        )
    );
    // The locator's own answer, for operators.
    match client(l1.addr).receivers_of(SiteId(9)) {
        Err(ClientError::Refused { status, reply, .. }) => {
            assert_eq!((status, reply.error), (404, ErrorKind::SiteUnknown));
            assert!(reply.message.contains("site 9"), "{}", reply.message);
        }
        other => panic!("expected a 404 site-unknown, got {other:?}"),
    }
    l1.stop().unwrap();
    // A local locator that is down is a different error, still retried.
    let e = lookup.lookup(Instant::now()).unwrap_err();
    assert!(matches!(e, LookupError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("retrying every 1000 ms"), "{e}");
}
