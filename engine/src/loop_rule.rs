//! The loop rule: which senders forward an event, and the recipient set it carries
//! (geode-wan.md §3, Geode's `AbstractGatewaySender.distribute`).
//!
//! An event carries its origin site and its *recipients*: every site some site on its path
//! has sent or is sending it to. At the origin, each sender of the region queues it with the
//! recipients set to all the region's remote targets. At any other site, a sender to `T`
//!
//! 1. drops it if `T` is the origin (never send an event back where it happened);
//! 2. drops it if `T` is already a recipient (an upstream site sent or is sending it to `T`);
//! 3. otherwise queues it with recipients ∪ this site's targets for the region.
//!
//! In a full mesh, a ring, or a ring with chords or a tree, every site receives each event
//! exactly once. Paths that split and meet again (1→2, 1→3, 2→4, 3→4) deliver two copies at
//! the meeting site, because the recipient set records targets, not paths; the receiver
//! drops the second copy by event id.

use strait_queue::ids::SiteId;

/// Site ids run 0–255, so a recipient set holds at most 256 sites.
pub const SITES_MAX: usize = 256;

/// Whether a sender from `local` to `target` forwards an event that originated at `origin`
/// (`None`: a write made at this site) and carries `recipients` (ignored for a local write).
/// A sender targeting its own site never forwards (a configuration Geode refuses).
pub fn should_forward(
    local: SiteId,
    origin: Option<SiteId>,
    recipients: &[SiteId],
    target: SiteId,
) -> bool {
    if target == local {
        return false;
    }
    match origin {
        None => true,
        Some(origin) => origin != target && !recipients.contains(&target),
    }
}

/// The recipient set an event leaves `local` with, sorted and without repeats: for a local
/// write (`origin` is `None`), the targets of every sender attached to the region
/// (`all_remote`); otherwise the incoming `recipients` ∪ `all_remote`. `local` itself is never
/// added as a target. At most [`SITES_MAX`] sites.
pub fn recipients_after_forward(
    local: SiteId,
    origin: Option<SiteId>,
    recipients: &[SiteId],
    all_remote: &[SiteId],
) -> Vec<SiteId> {
    let mut set = [false; SITES_MAX];
    if origin.is_some() {
        for site in recipients {
            set[usize::from(site.0)] = true;
        }
    }
    for &site in all_remote {
        if site != local {
            set[usize::from(site.0)] = true;
        }
    }
    (0..=u8::MAX)
        .zip(set)
        .filter(|&(_, present)| present)
        .map(|(site, _)| SiteId(site))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};

    fn sites(ids: &[u8]) -> Vec<SiteId> {
        ids.iter().map(|&s| SiteId(s)).collect()
    }

    /// How many copies of one event written at `origin` each site receives, when every site
    /// runs the loop rule with one sender per `(from, to)` pair of `senders`.
    fn receipts(senders: &[(u8, u8)], origin: u8) -> BTreeMap<u8, usize> {
        let targets = |site: SiteId| -> Vec<SiteId> {
            senders
                .iter()
                .filter(|&&(from, _)| from == site.0)
                .map(|&(_, to)| SiteId(to))
                .collect()
        };
        let mut counts = BTreeMap::new();
        let mut in_flight = VecDeque::new();
        let send = |in_flight: &mut VecDeque<(SiteId, Vec<SiteId>)>,
                    at: SiteId,
                    from: Option<SiteId>,
                    recipients: &[SiteId]| {
            let all = targets(at);
            let next = recipients_after_forward(at, from, recipients, &all);
            for &target in &all {
                if should_forward(at, from, recipients, target) {
                    in_flight.push_back((target, next.clone()));
                }
            }
        };
        send(&mut in_flight, SiteId(origin), None, &[]);
        let mut steps = 0;
        while let Some((site, recipients)) = in_flight.pop_front() {
            steps += 1;
            assert!(steps < 1_000, "the event loops");
            *counts.entry(site.0).or_insert(0) += 1;
            send(&mut in_flight, site, Some(SiteId(origin)), &recipients);
        }
        counts
    }

    fn assert_each_site_once(senders: &[(u8, u8)], all_sites: &[u8]) {
        for &origin in all_sites {
            let counts = receipts(senders, origin);
            let expected: BTreeMap<u8, usize> = all_sites
                .iter()
                .filter(|&&s| s != origin)
                .map(|&s| (s, 1))
                .collect();
            assert_eq!(counts, expected, "event written at site {origin}");
        }
    }

    #[test]
    fn origin_sends_to_all_targets_with_all_targets_as_recipients() {
        let all = sites(&[3, 2, 3]);
        assert!(should_forward(SiteId(1), None, &[], SiteId(2)));
        assert!(should_forward(SiteId(1), None, &sites(&[2]), SiteId(2)));
        assert_eq!(
            recipients_after_forward(SiteId(1), None, &sites(&[9]), &all),
            sites(&[2, 3])
        );
    }

    #[test]
    fn rule1_never_sends_back_to_the_origin() {
        assert!(!should_forward(SiteId(2), Some(SiteId(1)), &[], SiteId(1)));
    }

    #[test]
    fn rule2_never_sends_to_a_recipient() {
        let r = sites(&[2, 3]);
        assert!(!should_forward(SiteId(2), Some(SiteId(1)), &r, SiteId(3)));
        assert!(should_forward(SiteId(2), Some(SiteId(1)), &r, SiteId(4)));
    }

    #[test]
    fn rule3_adds_this_sites_targets() {
        assert_eq!(
            recipients_after_forward(SiteId(2), Some(SiteId(1)), &sites(&[2]), &sites(&[3, 1])),
            sites(&[1, 2, 3])
        );
    }

    #[test]
    fn a_sender_to_its_own_site_never_forwards() {
        assert!(!should_forward(SiteId(1), None, &[], SiteId(1)));
        assert!(!should_forward(SiteId(2), Some(SiteId(1)), &[], SiteId(2)));
        assert_eq!(
            recipients_after_forward(SiteId(1), None, &[], &sites(&[1, 2])),
            sites(&[2])
        );
    }

    #[test]
    fn recipient_sets_hold_every_site_once() {
        let every: Vec<SiteId> = (0..=u8::MAX).map(SiteId).collect();
        let r = recipients_after_forward(SiteId(0), Some(SiteId(1)), &every, &every);
        assert_eq!(r.len(), SITES_MAX);
        assert_eq!(r, every);
    }

    #[test]
    fn full_mesh_delivers_each_event_once() {
        assert_each_site_once(
            &[(1, 2), (2, 1), (2, 3), (3, 2), (3, 1), (1, 3)],
            &[1, 2, 3],
        );
        let mesh4: Vec<(u8, u8)> = (1..=4)
            .flat_map(|a| (1..=4).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        assert_each_site_once(&mesh4, &[1, 2, 3, 4]);
    }

    #[test]
    fn ring_delivers_each_event_once() {
        assert_each_site_once(&[(1, 2), (2, 3), (3, 1)], &[1, 2, 3]);
        assert_each_site_once(&[(1, 2), (2, 3), (3, 4), (4, 5), (5, 1)], &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn hybrid_ring_with_chord_delivers_each_event_once() {
        // The ring 1→2→3→1 plus a 1↔3 chord (3→1 is already in the ring).
        assert_each_site_once(&[(1, 2), (2, 3), (3, 1), (1, 3)], &[1, 2, 3]);
    }

    #[test]
    fn tree_delivers_each_event_once() {
        // Rooted at 1: 1↔2, 1↔3, 2↔4, 2↔5; leaves have no sender to each other.
        let tree = [
            (1, 2),
            (2, 1),
            (1, 3),
            (3, 1),
            (2, 4),
            (4, 2),
            (2, 5),
            (5, 2),
        ];
        assert_each_site_once(&tree, &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn converging_dag_delivers_two_copies_at_the_meeting_site() {
        // Unsupported in Geode: the recipient set records targets, not paths. The receiver
        // at site 4 drops the second copy by event id.
        let counts = receipts(&[(1, 2), (1, 3), (2, 4), (3, 4)], 1);
        assert_eq!(counts, BTreeMap::from([(2, 1), (3, 1), (4, 2)]));
    }
}
