//! Entry version stamps and Geode's WAN conflict rule (geode-wan.md §4.1, §4.2).
//!
//! Every entry carries an [`EntryVersion`]: the timestamp and site of its last write, and a
//! count of writes. A local write is stamped by [`local_write_tag`]; an event arriving from
//! another site is judged by [`resolve_remote`], which compares its [`VersionTag`] with the
//! entry's stamp. Taken together, rules 4 and 6 keep the version that is greatest by
//! `(timestamp_us, site)`, so every site that sees the same set of versions keeps the same one,
//! whatever order they arrive in.
//!
//! A destroy is judged by the same rule as a create or an update. A destroyed entry stays as a
//! tombstone that keeps its version (see [`crate::region`]), so an older update arriving late
//! is rejected instead of bringing the entry back.

use strait_queue::ids::{SiteId, VersionTag};

/// The version stamp of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryVersion {
    /// Microseconds since the Unix epoch: the writing site's clock for a local write, the
    /// incoming tag's timestamp for a write applied from another site.
    pub timestamp_us: u64,
    /// The site of the last write. `None` is an entry never stamped with a site (Geode's DSID
    /// −1: written before its site had an id, or imported); rule 3 lets any remote write
    /// replace it. Nothing in this crate writes `None`.
    pub site: Option<SiteId>,
    /// How many writes (local or applied from another site, destroys included) this site has
    /// made to the entry: 1 for the first. It is local to the site, not sent, and not part of
    /// the conflict rule; it saturates at `u64::MAX`.
    pub entry_version: u64,
}

impl EntryVersion {
    /// The tag to send with an event carrying this version; `None` for an unstamped version.
    pub fn tag(&self) -> Option<VersionTag> {
        self.site.map(|site| VersionTag {
            timestamp_us: self.timestamp_us,
            site,
        })
    }

    /// The version an entry takes when `tag` from another site is applied over `existing`.
    pub fn applied(existing: Option<&EntryVersion>, tag: VersionTag) -> EntryVersion {
        EntryVersion {
            timestamp_us: tag.timestamp_us,
            site: Some(tag.site),
            entry_version: next_entry_version(existing),
        }
    }
}

fn next_entry_version(existing: Option<&EntryVersion>) -> u64 {
    existing.map_or(1, |v| v.entry_version.saturating_add(1))
}

/// The stamp of a local write at `local_site` and time `now_us` over `existing` (§4.1).
///
/// The timestamp is `now_us`, except when `now_us` is not after the stored timestamp: over
/// another site's write (or an unstamped one) it is the stored timestamp + 1, so the local
/// write beats, at every site, the remote value it overwrites; over this site's own write it
/// is the stored timestamp, never less, so other sites apply it too (rule 4 applies a
/// same-site write that is not older). Geode stamps the clock reading there, and a local
/// write made after a bump (whose timestamp runs ahead of the clock) then carried an older
/// timestamp than the entry it replaced: this site kept the new value and every other site
/// rejected it, and the sites diverged for good (found by `strait-sim`, seed 716). At
/// `u64::MAX` the bump saturates (and no longer wins on the timestamp).
pub fn local_write_tag(
    existing: Option<&EntryVersion>,
    now_us: u64,
    local_site: SiteId,
) -> EntryVersion {
    let timestamp_us = match existing {
        Some(v) if v.site != Some(local_site) && now_us <= v.timestamp_us => {
            v.timestamp_us.saturating_add(1)
        }
        Some(v) if v.site == Some(local_site) => now_us.max(v.timestamp_us),
        _ => now_us,
    };
    EntryVersion {
        timestamp_us,
        site: Some(local_site),
        entry_version: next_entry_version(existing),
    }
}

/// What to do with a write arriving from another site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Apply it, for this reason.
    Apply { rule: ApplyRule },
    /// Drop it (Geode's `ConcurrentCacheModificationException`); the event still counts as
    /// processed, it is not an error of the sender.
    Reject { reason: RejectReason },
}

impl Resolution {
    /// Whether the write is applied.
    pub fn is_apply(self) -> bool {
        matches!(self, Resolution::Apply { .. })
    }
}

/// Which rule of §4.2 let a remote write in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApplyRule {
    /// Rule 1: no entry, not even a tombstone.
    NewEntry,
    /// Rule 3: the entry was never stamped with a site.
    Unstamped,
    /// Rule 4: same site as the last writer, timestamp not older.
    SameSiteNotOlder,
    /// Rule 6: another site, newer timestamp.
    NewerTimestamp,
    /// Rule 6: another site, same timestamp, higher site id.
    HigherSiteOnTie,
}

/// Which rule of §4.2 turned a remote write away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Rule 4: same site as the last writer, older timestamp.
    SameSiteOlder { incoming_us: u64, stored_us: u64 },
    /// Rule 6: another site, older timestamp.
    OlderTimestamp { incoming_us: u64, stored_us: u64 },
    /// Rule 6: another site, same timestamp, lower site id.
    LowerSiteOnTie { incoming: SiteId, stored: SiteId },
}

/// Geode's rule for a write arriving from another site (`processGatewayTag`, §4.2), judged
/// against the stamp of the existing entry or tombstone.
///
/// 1. no entry → apply;
/// 2. (a missing incoming timestamp → apply) does not arise: every Strait tag carries one;
/// 3. an entry stamped with no site → apply;
/// 4. same site as the last writer → apply iff the incoming timestamp is not older;
/// 5. (a custom `GatewayConflictResolver`) is not supported;
/// 6. otherwise apply iff the incoming timestamp is newer, or equal with a higher site id.
pub fn resolve_remote(existing: Option<&EntryVersion>, incoming: VersionTag) -> Resolution {
    let Some(stored) = existing else {
        return Resolution::Apply {
            rule: ApplyRule::NewEntry,
        };
    };
    let Some(stored_site) = stored.site else {
        return Resolution::Apply {
            rule: ApplyRule::Unstamped,
        };
    };
    let (incoming_us, stored_us) = (incoming.timestamp_us, stored.timestamp_us);
    if incoming.site == stored_site {
        return if incoming_us >= stored_us {
            Resolution::Apply {
                rule: ApplyRule::SameSiteNotOlder,
            }
        } else {
            Resolution::Reject {
                reason: RejectReason::SameSiteOlder {
                    incoming_us,
                    stored_us,
                },
            }
        };
    }
    if incoming_us > stored_us {
        Resolution::Apply {
            rule: ApplyRule::NewerTimestamp,
        }
    } else if incoming_us < stored_us {
        Resolution::Reject {
            reason: RejectReason::OlderTimestamp {
                incoming_us,
                stored_us,
            },
        }
    } else if incoming.site > stored_site {
        Resolution::Apply {
            rule: ApplyRule::HigherSiteOnTie,
        }
    } else {
        Resolution::Reject {
            reason: RejectReason::LowerSiteOnTie {
                incoming: incoming.site,
                stored: stored_site,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag(timestamp_us: u64, site: u8) -> VersionTag {
        VersionTag {
            timestamp_us,
            site: SiteId(site),
        }
    }

    fn stamp(timestamp_us: u64, site: u8) -> EntryVersion {
        EntryVersion {
            timestamp_us,
            site: Some(SiteId(site)),
            entry_version: 7,
        }
    }

    fn apply(rule: ApplyRule) -> Resolution {
        Resolution::Apply { rule }
    }

    fn reject(reason: RejectReason) -> Resolution {
        Resolution::Reject { reason }
    }

    #[test]
    fn rule1_new_entry_applies() {
        assert_eq!(resolve_remote(None, tag(0, 0)), apply(ApplyRule::NewEntry));
        assert_eq!(
            resolve_remote(None, tag(u64::MAX, 255)),
            apply(ApplyRule::NewEntry)
        );
    }

    #[test]
    fn rule3_unstamped_entry_applies_whatever_the_timestamp() {
        let stored = EntryVersion {
            timestamp_us: 1_000,
            site: None,
            entry_version: 1,
        };
        for t in [0, 999, 1_000, 1_001] {
            assert_eq!(
                resolve_remote(Some(&stored), tag(t, 3)),
                apply(ApplyRule::Unstamped)
            );
        }
    }

    #[test]
    fn rule4_same_site_applies_iff_not_older() {
        let stored = stamp(1_000, 2);
        assert_eq!(
            resolve_remote(Some(&stored), tag(1_001, 2)),
            apply(ApplyRule::SameSiteNotOlder)
        );
        assert_eq!(
            resolve_remote(Some(&stored), tag(1_000, 2)),
            apply(ApplyRule::SameSiteNotOlder)
        );
        assert_eq!(
            resolve_remote(Some(&stored), tag(999, 2)),
            reject(RejectReason::SameSiteOlder {
                incoming_us: 999,
                stored_us: 1_000
            })
        );
    }

    #[test]
    fn rule6_other_site_newer_timestamp_applies() {
        let stored = stamp(1_000, 2);
        for site in [0, 1, 3, 255] {
            assert_eq!(
                resolve_remote(Some(&stored), tag(1_001, site)),
                apply(ApplyRule::NewerTimestamp)
            );
        }
    }

    #[test]
    fn rule6_other_site_older_timestamp_is_rejected() {
        let stored = stamp(1_000, 2);
        for site in [0, 1, 3, 255] {
            assert_eq!(
                resolve_remote(Some(&stored), tag(999, site)),
                reject(RejectReason::OlderTimestamp {
                    incoming_us: 999,
                    stored_us: 1_000
                })
            );
        }
    }

    #[test]
    fn rule6_tie_goes_to_the_higher_site() {
        let stored = stamp(1_000, 2);
        assert_eq!(
            resolve_remote(Some(&stored), tag(1_000, 3)),
            apply(ApplyRule::HigherSiteOnTie)
        );
        assert_eq!(
            resolve_remote(Some(&stored), tag(1_000, 255)),
            apply(ApplyRule::HigherSiteOnTie)
        );
        assert_eq!(
            resolve_remote(Some(&stored), tag(1_000, 1)),
            reject(RejectReason::LowerSiteOnTie {
                incoming: SiteId(1),
                stored: SiteId(2)
            })
        );
        assert_eq!(
            resolve_remote(Some(&stamp(1_000, 0)), tag(1_000, 0)),
            apply(ApplyRule::SameSiteNotOlder),
            "equal sites are rule 4"
        );
    }

    #[test]
    fn local_write_on_a_new_entry_takes_the_clock() {
        let v = local_write_tag(None, 5_000, SiteId(1));
        assert_eq!(
            v,
            EntryVersion {
                timestamp_us: 5_000,
                site: Some(SiteId(1)),
                entry_version: 1
            }
        );
        assert_eq!(v.tag(), Some(tag(5_000, 1)));
    }

    #[test]
    fn local_write_over_another_site_is_bumped_past_it() {
        let stored = stamp(5_000, 2);
        for now in [0, 4_999, 5_000] {
            let v = local_write_tag(Some(&stored), now, SiteId(1));
            assert_eq!((v.timestamp_us, v.site), (5_001, Some(SiteId(1))));
            assert_eq!(v.entry_version, 8);
        }
        let v = local_write_tag(Some(&stored), 5_001, SiteId(1));
        assert_eq!(v.timestamp_us, 5_001);
        let v = local_write_tag(Some(&stored), 9_000, SiteId(1));
        assert_eq!(v.timestamp_us, 9_000);
    }

    #[test]
    fn local_write_over_an_unstamped_entry_is_bumped_past_it() {
        let stored = EntryVersion {
            timestamp_us: 5_000,
            site: None,
            entry_version: 1,
        };
        assert_eq!(
            local_write_tag(Some(&stored), 10, SiteId(1)).timestamp_us,
            5_001
        );
    }

    #[test]
    fn local_write_over_the_same_site_never_goes_back_in_time() {
        // The stored write of this site is ahead of the clock (it was bumped over another
        // site's write, or the clock stepped back): the new write keeps its timestamp, so
        // every other site applies it as this site did.
        let stored = stamp(5_000, 1);
        let v = local_write_tag(Some(&stored), 4_000, SiteId(1));
        assert_eq!(v.timestamp_us, 5_000);
        assert!(resolve_remote(Some(&stored), v.tag().unwrap()).is_apply());
        let later = local_write_tag(Some(&stored), 6_000, SiteId(1));
        assert_eq!(later.timestamp_us, 6_000);
    }

    #[test]
    fn a_write_after_a_bump_wins_at_every_site() {
        // strait-sim seed 716: site 3's clock is behind site 2's. Site 3 overwrites site 2's
        // value (bumped to 7_000_795), then writes again at its clock, 6_998_129.
        let from_2 = stamp(7_000_794, 2);
        let first = local_write_tag(Some(&from_2), 6_980_129, SiteId(3));
        assert_eq!(first.timestamp_us, 7_000_795);
        let second = local_write_tag(Some(&first), 6_998_129, SiteId(3));
        // Elsewhere the entry holds the first write; the second must replace it there too.
        assert!(resolve_remote(Some(&first), second.tag().unwrap()).is_apply());
    }

    #[test]
    fn local_write_saturates_instead_of_overflowing() {
        let stored = EntryVersion {
            timestamp_us: u64::MAX,
            site: Some(SiteId(2)),
            entry_version: u64::MAX,
        };
        let v = local_write_tag(Some(&stored), 0, SiteId(1));
        assert_eq!((v.timestamp_us, v.entry_version), (u64::MAX, u64::MAX));
        assert_eq!(
            EntryVersion::applied(Some(&stored), tag(1, 3)).entry_version,
            u64::MAX
        );
    }

    #[test]
    fn applied_version_takes_the_tag_and_counts_the_write() {
        let v = EntryVersion::applied(Some(&stamp(1, 1)), tag(9, 4));
        assert_eq!(
            v,
            EntryVersion {
                timestamp_us: 9,
                site: Some(SiteId(4)),
                entry_version: 8
            }
        );
        assert_eq!(EntryVersion::applied(None, tag(9, 4)).entry_version, 1);
    }

    /// Applies `tags` in order to an entry (starting as `start`) and returns the final stamp.
    fn replay(start: Option<EntryVersion>, tags: &[VersionTag]) -> Option<EntryVersion> {
        let mut entry = start;
        for &t in tags {
            if resolve_remote(entry.as_ref(), t).is_apply() {
                entry = Some(EntryVersion::applied(entry.as_ref(), t));
            }
        }
        entry
    }

    /// Up to 12 versions with distinct `(timestamp, site)`, from a small range so that ties
    /// on the timestamp and repeats of a site are common.
    fn concurrent_tags() -> impl Strategy<Value = Vec<VersionTag>> {
        prop::collection::btree_set((0u64..8, 0u8..5), 1..12)
            .prop_map(|set| set.into_iter().map(|(t, s)| tag(t, s)).collect())
    }

    proptest! {
        #[test]
        fn every_arrival_order_keeps_the_same_winner(
            tags in concurrent_tags(),
            seed_a in any::<u64>(),
            seed_b in any::<u64>(),
            unstamped_start in any::<bool>(),
        ) {
            let start = unstamped_start.then_some(EntryVersion {
                timestamp_us: 100,
                site: None,
                entry_version: 1,
            });
            let shuffle = |seed: u64| {
                let mut order = tags.clone();
                // Fisher-Yates driven by a small LCG, so the test needs no rng crate.
                let mut x = seed;
                for i in (1..order.len()).rev() {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    order.swap(i, (x >> 33) as usize % (i + 1));
                }
                order
            };
            let a = replay(start, &shuffle(seed_a)).unwrap();
            let b = replay(start, &shuffle(seed_b)).unwrap();
            let winner = *tags.iter().max_by_key(|t| (t.timestamp_us, t.site)).unwrap();
            prop_assert_eq!(a.tag(), Some(winner));
            prop_assert_eq!(b.tag(), Some(winner));
        }

        #[test]
        fn the_rule_is_a_total_order_on_distinct_tags(
            a in (any::<u64>(), any::<u8>()),
            b in (any::<u64>(), any::<u8>()),
        ) {
            prop_assume!(a != b);
            let (ta, tb) = (tag(a.0, a.1), tag(b.0, b.1));
            let a_over_b = resolve_remote(Some(&EntryVersion::applied(None, tb)), ta).is_apply();
            let b_over_a = resolve_remote(Some(&EntryVersion::applied(None, ta)), tb).is_apply();
            prop_assert!(a_over_b != b_over_a, "exactly one of two distinct tags wins");
            prop_assert_eq!(a_over_b, a > b);
        }

        #[test]
        fn a_local_write_beats_the_remote_value_it_overwrites(
            stored_us in 0u64..u64::MAX,
            stored_site in any::<u8>(),
            local_site in any::<u8>(),
            now_us in any::<u64>(),
        ) {
            prop_assume!(stored_site != local_site);
            let stored = stamp(stored_us, stored_site);
            let local = local_write_tag(Some(&stored), now_us, SiteId(local_site));
            prop_assert!(resolve_remote(Some(&stored), local.tag().unwrap()).is_apply());
            prop_assert!(!resolve_remote(Some(&local), tag(stored_us, stored_site)).is_apply());
        }
    }
}
