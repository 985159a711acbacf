//! Regions: their configuration, and the entries of one region on one shard.
//!
//! A [`RegionStore`] holds the entries of the buckets its shard owns (the node routes each key
//! to the shard that [`crate::bucket::BucketTable::shard_of`] names). An entry is a value or a
//! tombstone, with its [`EntryVersion`]. Local writes are stamped with [`local_write_tag`];
//! writes from other sites go through [`resolve_remote`], destroys included. A destroy leaves a
//! tombstone that keeps the destroy's version, so an older update that arrives late is rejected
//! instead of bringing the entry back; [`RegionStore::gc`] drops tombstones once they are
//! [`TOMBSTONE_TTL_US`] old.
//!
//! Every entry has a *position*: the key's bucket in the high 32 bits, the key's CRC-32 in the
//! low 32 bits ([`ScanCursor`]). Lookups go through a hash map keyed by position; SCAN walks
//! an ordered set of the positions in use. The order depends on the key alone, so a SCAN
//! cursor stays valid however the store changes between calls, every site and shard agrees on
//! it, and a bucket's entries are contiguous. Only a write that adds a position (a new key)
//! touches the ordered set; updates and reads cost one hash lookup.
//!
//! The store also keeps the WAN dedupe table: per stream of events from another site (origin
//! site, origin member, stream), the highest stream sequence number it has processed
//! ([`RegionStore::last_applied`]). It lives beside the entries so that it lives and dies with
//! the data it protects: a store rebuilt empty also forgets which events it has seen.
//! [`RegionStore::apply_remote_event`] checks it, applies through the conflict rule and
//! records the event, in one call; [`crate::apply`] is its caller.

use crate::bucket::{BUCKETS_MAX, TOTAL_BUCKETS_DEFAULT, bucket_of_hash, key_hash};
use crate::version::{EntryVersion, Resolution, local_write_tag, resolve_remote};
use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use strait_queue::ids::{EventId, SiteId, VersionTag};
use strait_queue::record::{KEY_BYTES_MAX, Op, VALUE_BYTES_MAX};

/// Longest region name, in bytes.
pub const REGION_NAME_BYTES_MAX: usize = 255;
/// Most gateway senders one region may list. Every write is queued once per sender, so this
/// bounds a write's fan-out; one or two senders per remote site is usual.
pub const REGION_SENDERS_MAX: usize = 64;
/// Longest gateway sender id, in bytes.
pub const SENDER_ID_BYTES_MAX: usize = 255;
/// Most entries, tombstones included, one region may hold on one shard, unless the store is
/// built with a lower limit ([`RegionStore::with_entries_max`]). A guard until entries have a
/// memory budget: past it, writes that would add a key are refused.
pub const ENTRIES_MAX: usize = 1 << 24;
/// How long a tombstone is kept: 10 minutes, Geode's `tombstone-timeout` for replicated
/// regions. A tombstone is aged by its version timestamp, as in Geode. Once it is dropped, an
/// update older than the destroy that arrives later is applied as a new entry (rule 1) and
/// brings the key back at this site only. A longer TTL tolerates longer WAN delays (a queue
/// backlog, a partition) and costs memory for every destroyed key.
pub const TOMBSTONE_TTL_US: u64 = 600_000_000;
/// Most event streams one region's dedupe table holds on one shard: a stream is one origin
/// member's bucket (parallel sender) or dispatcher (serial sender), so this is room for 16
/// members of other sites each sending all of [`BUCKETS_MAX`] (4096) buckets, in about 2 MiB
/// (16 bytes and a control byte per stream, at the map's load factor). Past it, an event of a stream the table does not hold is refused
/// ([`StoreError::StreamsFull`], dead-lettered as "store full") rather than applied without
/// being recorded: forgetting a stream would let its duplicates through.
pub const STREAMS_MAX: usize = 1 << 16;
/// Most tombstones one [`RegionStore::gc`] call drops, bounding the work of one call.
pub const TOMBSTONE_GC_BATCH_MAX: usize = 1024;
/// Most entries one [`RegionStore::scan`] call visits (Redis's `COUNT`, clamped to this).
pub const SCAN_COUNT_MAX: usize = 1024;

/// How a region is laid out in Geode's terms. In Strait both kinds are split into buckets,
/// which is how keys are spread over a node's shards; the kind matters for which senders may
/// be attached (a parallel sender may not serve a `Replicate` region, geode-wan.md §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    Partition,
    Replicate,
}

/// A region's configuration, as `site.toml` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionConfig {
    /// Unique within a site and the same at every site: 1..=[`REGION_NAME_BYTES_MAX`] bytes,
    /// no `/`.
    pub name: String,
    pub kind: RegionKind,
    /// `total-num-buckets`, 1..=[`BUCKETS_MAX`]; default [`TOTAL_BUCKETS_DEFAULT`]. Must be the
    /// same at every site. For a `Replicate` region it only sets the shard placement.
    pub total_buckets: u16,
    /// The gateway senders every create, update and destroy is queued for.
    pub gateway_sender_ids: Vec<String>,
}

/// Why a region configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionConfigError {
    #[error("region name is empty")]
    EmptyName,
    #[error("region name of {0} bytes is longer than the limit of {REGION_NAME_BYTES_MAX} bytes")]
    NameTooLong(usize),
    #[error("region name {0:?} contains '/'")]
    NameHasSlash(String),
    #[error("region {region}: total-num-buckets {total} is out of range 1..={BUCKETS_MAX}")]
    TotalBuckets { region: String, total: u16 },
    #[error(
        "region {region}: {count} gateway senders is more than the limit of {REGION_SENDERS_MAX}"
    )]
    TooManySenders { region: String, count: usize },
    #[error("region {region}: a gateway sender id is empty")]
    EmptySenderId { region: String },
    #[error(
        "region {region}: gateway sender id of {len} bytes is longer than the limit of {SENDER_ID_BYTES_MAX} bytes"
    )]
    SenderIdTooLong { region: String, len: usize },
    #[error("region {region}: gateway sender id {id:?} is listed twice")]
    DuplicateSenderId { region: String, id: String },
}

impl RegionConfig {
    /// A region with the default bucket count and no gateway senders.
    pub fn new(name: impl Into<String>, kind: RegionKind) -> RegionConfig {
        RegionConfig {
            name: name.into(),
            kind,
            total_buckets: TOTAL_BUCKETS_DEFAULT,
            gateway_sender_ids: Vec::new(),
        }
    }

    /// Checks every rule on the fields.
    pub fn validate(&self) -> Result<(), RegionConfigError> {
        let name = &self.name;
        if name.is_empty() {
            return Err(RegionConfigError::EmptyName);
        }
        if name.len() > REGION_NAME_BYTES_MAX {
            return Err(RegionConfigError::NameTooLong(name.len()));
        }
        if name.contains('/') {
            return Err(RegionConfigError::NameHasSlash(name.clone()));
        }
        if !(1..=BUCKETS_MAX).contains(&self.total_buckets) {
            return Err(RegionConfigError::TotalBuckets {
                region: name.clone(),
                total: self.total_buckets,
            });
        }
        let ids = &self.gateway_sender_ids;
        if ids.len() > REGION_SENDERS_MAX {
            return Err(RegionConfigError::TooManySenders {
                region: name.clone(),
                count: ids.len(),
            });
        }
        for (i, id) in ids.iter().enumerate() {
            if id.is_empty() {
                return Err(RegionConfigError::EmptySenderId {
                    region: name.clone(),
                });
            }
            if id.len() > SENDER_ID_BYTES_MAX {
                return Err(RegionConfigError::SenderIdTooLong {
                    region: name.clone(),
                    len: id.len(),
                });
            }
            if ids[..i].contains(id) {
                return Err(RegionConfigError::DuplicateSenderId {
                    region: name.clone(),
                    id: id.clone(),
                });
            }
        }
        Ok(())
    }
}

/// What an entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryValue {
    Live(Bytes),
    /// Destroyed; kept for its version until [`RegionStore::gc`] drops it.
    Tombstone,
}

/// One entry: its value or tombstone, and its version stamp.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub value: EntryValue,
    pub version: EntryVersion,
}

impl Entry {
    /// The value, unless the entry is a tombstone.
    pub fn live_value(&self) -> Option<&Bytes> {
        match &self.value {
            EntryValue::Live(v) => Some(v),
            EntryValue::Tombstone => None,
        }
    }
}

/// A local write that happened: the event each attached sender queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteOutcome {
    /// `Create` if the key was absent or a tombstone, `Update` if it was live, or `Destroy`.
    pub op: Op,
    /// The entry's new version.
    pub version: EntryVersion,
    /// The version tag the event carries (the new version's timestamp and the local site).
    pub tag: VersionTag,
}

/// A SCAN cursor: the position (bucket << 32 | CRC-32 of the key) to resume from. `0` starts
/// a scan and, returned, ends it. An entry present for a whole scan is returned exactly once;
/// one added or destroyed meanwhile may or may not be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScanCursor(pub u64);

impl ScanCursor {
    /// Where a scan starts, and what the last page returns.
    pub const START: ScanCursor = ScanCursor(0);
}

/// One page of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage<'a> {
    /// The live entries visited (tombstones are visited but not returned), in position order.
    pub entries: Vec<(&'a Bytes, &'a Bytes)>,
    /// The cursor of the next page; [`ScanCursor::START`] when the scan is complete.
    pub next: ScanCursor,
}

/// Why a write was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key of {0} bytes is longer than the limit of {KEY_BYTES_MAX} bytes")]
    KeyTooLong(usize),
    #[error("value of {0} bytes is longer than the limit of {VALUE_BYTES_MAX} bytes")]
    ValueTooLong(usize),
    #[error("a {0:?} write carries no value, but {1} value bytes were given")]
    UnexpectedValue(Op, usize),
    #[error("the region holds {entries_max} entries on this shard, its limit; no key can be added")]
    Full { entries_max: usize },
    #[error("a version-only update names a key this site does not hold")]
    NoEntryToStamp,
    #[error(
        "the region's dedupe table holds {streams_max} event streams on this shard, its limit; no stream can be added"
    )]
    StreamsFull { streams_max: usize },
}

/// What [`RegionStore::apply_remote_event`] did with an event from another site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemoteApply {
    /// The event's stream sequence number is at or below the highest this store has processed
    /// for its stream: the event was seen before. Nothing changed.
    Duplicate { last_applied: u64 },
    /// The conflict rule judged the event (applied or rejected); either way the stream's
    /// high-water mark now covers it.
    Resolved(Resolution),
}

/// The entries at one position, sorted by key: one almost always (two keys share a position
/// only when bucket and CRC-32 both collide), so one is held inline.
type Group = SmallVec<[(Bytes, Entry); 1]>;

/// Hashes a position, or a packed stream key, for the store's maps. A position's low half is
/// already a CRC-32 of the key, a stream key is three small ids side by side; one
/// multiplication by a 64-bit odd constant (Fibonacci hashing) spreads either over the high
/// bits too, which the map's control bytes are taken from. Positions come from the store's
/// own hashing and stream keys from the trusted peer sites, both bounded in number
/// ([`ENTRIES_MAX`], [`STREAMS_MAX`]), so a keyed hash buys nothing here.
#[derive(Clone, Copy, Debug, Default)]
struct PositionHasher(u64);

type FastMap<V> = HashMap<u64, V, BuildHasherDefault<PositionHasher>>;

/// The bucket of a position (its high half), as an index into the store's per-bucket maps.
fn bucket_index(pos: u64) -> usize {
    (pos >> 32) as usize
}

/// A stream's key in the dedupe table: origin site (bits 48..56), origin member (bits
/// 32..48) and stream (bits 0..32), packed without loss.
fn stream_key(id: &EventId) -> u64 {
    (u64::from(id.origin_site.0) << 48)
        | (u64::from(id.origin_member.0) << 32)
        | u64::from(id.stream.0)
}

impl Hasher for PositionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, pos: u64) {
        self.0 = pos.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The entries of one region on one shard.
#[derive(Clone, Debug)]
pub struct RegionStore {
    total_buckets: u16,
    entries_max: usize,
    /// Per bucket (a position's high half): position → the entries at that position, sorted
    /// by key (almost always one, held inline). One map per bucket, not one per store, so a
    /// map that must grow rehashes one bucket's entries, not the shard's: a store of a million
    /// keys otherwise stops its shard for hundreds of milliseconds each time it doubles.
    groups: Vec<FastMap<Group>>,
    /// Every position in `groups`, in order: what SCAN walks.
    positions: BTreeSet<u64>,
    /// Entries, tombstones included.
    entries: usize,
    live: usize,
    /// (version timestamp, position, key) of every tombstone, oldest first.
    tombstones: BTreeSet<(u64, u64, Bytes)>,
    /// The dedupe table: [`stream_key`] → the highest stream sequence number processed.
    streams: FastMap<u64>,
}

impl RegionStore {
    /// An empty store for the region `config` describes, holding up to [`ENTRIES_MAX`] entries.
    pub fn new(config: &RegionConfig) -> Result<RegionStore, RegionConfigError> {
        RegionStore::with_entries_max(config, ENTRIES_MAX)
    }

    /// An empty store holding up to `entries_max` entries (at most [`ENTRIES_MAX`]).
    pub fn with_entries_max(
        config: &RegionConfig,
        entries_max: usize,
    ) -> Result<RegionStore, RegionConfigError> {
        config.validate()?;
        Ok(RegionStore {
            total_buckets: config.total_buckets,
            entries_max: entries_max.min(ENTRIES_MAX),
            groups: (0..config.total_buckets)
                .map(|_| FastMap::default())
                .collect(),
            positions: BTreeSet::new(),
            entries: 0,
            live: 0,
            tombstones: BTreeSet::new(),
            streams: FastMap::default(),
        })
    }

    /// Live entries (tombstones are not counted).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there is no live entry.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Event streams in the dedupe table (at most [`STREAMS_MAX`]).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// The highest stream sequence number processed (applied or rejected by the conflict
    /// rule) from the stream `id` belongs to; `None` if none was. `id.seq` is not looked at.
    pub fn last_applied(&self, id: &EventId) -> Option<u64> {
        self.streams.get(&stream_key(id)).copied()
    }

    /// The value of `key`, unless it is absent or destroyed.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.entry(key).and_then(Entry::live_value)
    }

    /// The entry of `key`, tombstone included.
    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.find(self.position(key), key)
    }

    /// What [`RegionStore::put_local`] (`value` is `Some`) or [`RegionStore::destroy_local`]
    /// (`None`) would do with the same arguments, without doing it: the operation and version
    /// the write would get, `Ok(None)` for a destroy that would do nothing, or the refusal. The
    /// same call followed by the write, with no other write to the store in between, gives the
    /// same outcome: a writer queues the event first and updates the store only once every
    /// queue has taken it.
    pub fn plan_local(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        now_us: u64,
        local_site: SiteId,
    ) -> Result<Option<WriteOutcome>, StoreError> {
        let existing = self.find(self.position(key), key);
        let op = match (value, existing.map(|e| &e.value)) {
            (Some(value), found) => {
                check_sizes(key.len(), value.len())?;
                if found.is_none() {
                    self.check_room()?;
                }
                match found {
                    Some(EntryValue::Live(_)) => Op::Update,
                    Some(EntryValue::Tombstone) | None => Op::Create,
                }
            }
            (None, Some(EntryValue::Live(_))) => Op::Destroy,
            (None, _) => return Ok(None),
        };
        let version = local_write_tag(existing.map(|e| &e.version), now_us, local_site);
        Ok(Some(local_outcome(op, version, local_site)))
    }

    /// Writes `value` to `key` at this site, stamped at `now_us` (§4.1).
    pub fn put_local(
        &mut self,
        key: &[u8],
        value: Bytes,
        now_us: u64,
        local_site: SiteId,
    ) -> Result<WriteOutcome, StoreError> {
        check_sizes(key.len(), value.len())?;
        let pos = self.position(key);
        let existing = self.find(pos, key);
        let op = match existing.map(|e| &e.value) {
            Some(EntryValue::Live(_)) => Op::Update,
            Some(EntryValue::Tombstone) | None => Op::Create,
        };
        if existing.is_none() {
            self.check_room()?;
        }
        let version = local_write_tag(existing.map(|e| &e.version), now_us, local_site);
        self.write(
            pos,
            key,
            Entry {
                value: EntryValue::Live(value),
                version,
            },
        );
        Ok(local_outcome(op, version, local_site))
    }

    /// Destroys `key` at this site, stamped at `now_us`, leaving a tombstone. `None`, and no
    /// event, if the key is absent or already destroyed.
    pub fn destroy_local(
        &mut self,
        key: &[u8],
        now_us: u64,
        local_site: SiteId,
    ) -> Option<WriteOutcome> {
        let pos = self.position(key);
        let existing = self.find(pos, key)?;
        existing.live_value()?;
        let version = local_write_tag(Some(&existing.version), now_us, local_site);
        self.write(
            pos,
            key,
            Entry {
                value: EntryValue::Tombstone,
                version,
            },
        );
        Some(local_outcome(Op::Destroy, version, local_site))
    }

    /// Applies a write from another site if [`resolve_remote`] lets it in. `Create` and
    /// `Update` both store `value`; `Destroy` leaves a tombstone with the incoming version,
    /// even for a key this site does not hold, so an older create arriving later is rejected;
    /// `VersionOnly` changes the version of an existing entry or tombstone and nothing else.
    pub fn apply_remote(
        &mut self,
        op: Op,
        key: &[u8],
        value: Bytes,
        tag: VersionTag,
    ) -> Result<Resolution, StoreError> {
        let len = value.len();
        self.resolve_and_write(op, key, len, move || value, tag)
    }

    /// Applies event `id` from another site, unless the store has processed it before: a
    /// `stream_seq` at or below [`RegionStore::last_applied`] for its stream is a
    /// [`RemoteApply::Duplicate`] and changes nothing. Otherwise the write goes through
    /// [`RegionStore::apply_remote`] and, whether the conflict rule applies or rejects it, the
    /// stream's high-water mark becomes `id.seq`. A refused write (`Err`) records nothing, so
    /// the event is not taken for seen when it comes again. A stream the table does not hold
    /// yet is refused with [`StoreError::StreamsFull`] once it holds [`STREAMS_MAX`].
    ///
    /// "Highest processed" is an exact dedupe because each path delivers a stream in order
    /// (docs/wan.md, "Receiver side"). `value` is copied only if the write is applied.
    pub fn apply_remote_event(
        &mut self,
        id: &EventId,
        op: Op,
        key: &[u8],
        value: &[u8],
        tag: VersionTag,
    ) -> Result<RemoteApply, StoreError> {
        let last = self.last_applied(id);
        if let Some(last_applied) = last
            && id.seq <= last_applied
        {
            return Ok(RemoteApply::Duplicate { last_applied });
        }
        self.resolve_and_record(id, last, op, key, value, tag)
            .map(RemoteApply::Resolved)
    }

    /// Applies event `id` through the conflict rule without the duplicate check, and raises
    /// its stream's high-water mark to `id.seq` if it was lower. For the replay of a
    /// dead-lettered event: later events of its stream were processed since, so the check
    /// would call it a duplicate, yet it never was applied. Replaying an event twice is
    /// harmless: the second copy carries the same version tag and value as the stored one.
    pub fn replay_remote_event(
        &mut self,
        id: &EventId,
        op: Op,
        key: &[u8],
        value: &[u8],
        tag: VersionTag,
    ) -> Result<Resolution, StoreError> {
        let last = self.last_applied(id);
        self.resolve_and_record(id, last, op, key, value, tag)
    }

    fn resolve_and_record(
        &mut self,
        id: &EventId,
        last: Option<u64>,
        op: Op,
        key: &[u8],
        value: &[u8],
        tag: VersionTag,
    ) -> Result<Resolution, StoreError> {
        if last.is_none() && self.streams.len() >= STREAMS_MAX {
            return Err(StoreError::StreamsFull {
                streams_max: STREAMS_MAX,
            });
        }
        let resolution =
            self.resolve_and_write(op, key, value.len(), || Bytes::copy_from_slice(value), tag)?;
        let high = last.map_or(id.seq, |last| last.max(id.seq));
        self.streams.insert(stream_key(id), high);
        Ok(resolution)
    }

    /// [`RegionStore::apply_remote`] with the value made only once the write is let in.
    fn resolve_and_write(
        &mut self,
        op: Op,
        key: &[u8],
        value_len: usize,
        value: impl FnOnce() -> Bytes,
        tag: VersionTag,
    ) -> Result<Resolution, StoreError> {
        check_sizes(key.len(), value_len)?;
        if !op.has_value() && value_len != 0 {
            return Err(StoreError::UnexpectedValue(op, value_len));
        }
        let pos = self.position(key);
        let existing = self.find(pos, key);
        let resolution = resolve_remote(existing.map(|e| &e.version), tag);
        if !resolution.is_apply() {
            return Ok(resolution);
        }
        let new_value = match (op, existing) {
            (Op::Create | Op::Update, _) => EntryValue::Live(value()),
            (Op::Destroy, _) => EntryValue::Tombstone,
            (Op::VersionOnly, Some(e)) => e.value.clone(),
            (Op::VersionOnly, None) => return Err(StoreError::NoEntryToStamp),
        };
        if existing.is_none() {
            self.check_room()?;
        }
        let version = EntryVersion::applied(existing.map(|e| &e.version), tag);
        self.write(
            pos,
            key,
            Entry {
                value: new_value,
                version,
            },
        );
        Ok(resolution)
    }

    /// Visits up to `count` entries (clamped to 1..=[`SCAN_COUNT_MAX`]; more when several keys
    /// share the last position, which they almost never do) from `cursor` on, and returns the
    /// live ones with the cursor to continue from.
    pub fn scan(&self, cursor: ScanCursor, count: usize) -> ScanPage<'_> {
        let count = count.clamp(1, SCAN_COUNT_MAX);
        let mut visited = 0;
        let mut entries = Vec::new();
        for &pos in self.positions.range(cursor.0..) {
            let Some(group) = self.groups_of(pos).get(&pos) else {
                continue;
            };
            if visited >= count {
                return ScanPage {
                    entries,
                    next: ScanCursor(pos),
                };
            }
            visited += group.len();
            entries.extend(group.iter().filter_map(|(k, e)| Some((k, e.live_value()?))));
        }
        ScanPage {
            entries,
            next: ScanCursor::START,
        }
    }

    /// Drops up to [`TOMBSTONE_GC_BATCH_MAX`] tombstones whose version timestamp is at least
    /// [`TOMBSTONE_TTL_US`] before `now_us`, oldest first, and returns how many it dropped.
    pub fn gc(&mut self, now_us: u64) -> usize {
        let mut dropped = 0;
        while dropped < TOMBSTONE_GC_BATCH_MAX {
            let Some(&(ts, _, _)) = self.tombstones.first() else {
                break;
            };
            if ts.saturating_add(TOMBSTONE_TTL_US) > now_us {
                break;
            }
            let Some((_, pos, key)) = self.tombstones.pop_first() else {
                break;
            };
            let groups = self.groups_of_mut(pos);
            if let Some(group) = groups.get_mut(&pos)
                && let Ok(i) = group.binary_search_by(|(k, _)| k.as_ref().cmp(key.as_ref()))
            {
                group.remove(i);
                if group.is_empty() {
                    groups.remove(&pos);
                    self.positions.remove(&pos);
                }
                self.entries -= 1;
            }
            dropped += 1;
        }
        dropped
    }

    fn position(&self, key: &[u8]) -> u64 {
        let hash = key_hash(key);
        (u64::from(bucket_of_hash(hash, self.total_buckets).0) << 32) | u64::from(hash)
    }

    /// The map of the bucket a position is in.
    fn groups_of(&self, pos: u64) -> &FastMap<Group> {
        &self.groups[bucket_index(pos)]
    }

    fn groups_of_mut(&mut self, pos: u64) -> &mut FastMap<Group> {
        &mut self.groups[bucket_index(pos)]
    }

    fn find(&self, pos: u64, key: &[u8]) -> Option<&Entry> {
        let group = self.groups_of(pos).get(&pos)?;
        let i = group.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
        group.get(i).map(|(_, e)| e)
    }

    fn check_room(&self) -> Result<(), StoreError> {
        if self.entries >= self.entries_max {
            return Err(StoreError::Full {
                entries_max: self.entries_max,
            });
        }
        Ok(())
    }

    /// Stores `entry` at `key`, keeping the counts and the tombstone index in step.
    fn write(&mut self, pos: u64, key: &[u8], entry: Entry) {
        let new_tombstone =
            matches!(entry.value, EntryValue::Tombstone).then_some(entry.version.timestamp_us);
        let group = self.groups[bucket_index(pos)]
            .entry(pos)
            .or_insert_with(|| {
                self.positions.insert(pos);
                Group::new()
            });
        let (key, old) = match group.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
            Ok(i) => {
                let (k, slot) = &mut group[i];
                (k.clone(), Some(std::mem::replace(slot, entry)))
            }
            Err(i) => {
                let k = Bytes::copy_from_slice(key);
                group.insert(i, (k.clone(), entry));
                self.entries += 1;
                (k, None)
            }
        };
        match old.map(|e| (e.value, e.version.timestamp_us)) {
            Some((EntryValue::Live(_), _)) => self.live -= 1,
            Some((EntryValue::Tombstone, ts)) => {
                self.tombstones.remove(&(ts, pos, key.clone()));
            }
            None => {}
        }
        match new_tombstone {
            None => self.live += 1,
            Some(ts) => {
                self.tombstones.insert((ts, pos, key));
            }
        }
    }
}

fn check_sizes(key_len: usize, value_len: usize) -> Result<(), StoreError> {
    if key_len > KEY_BYTES_MAX {
        return Err(StoreError::KeyTooLong(key_len));
    }
    if value_len > VALUE_BYTES_MAX {
        return Err(StoreError::ValueTooLong(value_len));
    }
    Ok(())
}

fn local_outcome(op: Op, version: EntryVersion, local_site: SiteId) -> WriteOutcome {
    WriteOutcome {
        op,
        version,
        tag: VersionTag {
            timestamp_us: version.timestamp_us,
            site: local_site,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{ApplyRule, RejectReason};
    use proptest::prelude::*;

    const NY: SiteId = SiteId(1);
    const LDN: SiteId = SiteId(2);

    fn store() -> RegionStore {
        RegionStore::new(&RegionConfig::new("orders", RegionKind::Partition)).unwrap()
    }

    fn tag(timestamp_us: u64, site: SiteId) -> VersionTag {
        VersionTag { timestamp_us, site }
    }

    fn val(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn default_config_is_valid() {
        let c = RegionConfig::new("orders", RegionKind::Replicate);
        assert_eq!(c.total_buckets, TOTAL_BUCKETS_DEFAULT);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn invalid_configs_are_refused() {
        let base = RegionConfig::new("orders", RegionKind::Partition);
        let with = |f: &dyn Fn(&mut RegionConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate()
        };
        assert_eq!(with(&|c| c.name.clear()), Err(RegionConfigError::EmptyName));
        assert_eq!(
            with(&|c| c.name = "x".repeat(256)),
            Err(RegionConfigError::NameTooLong(256))
        );
        assert_eq!(with(&|c| c.name = "x".repeat(255)), Ok(()));
        assert_eq!(
            with(&|c| c.name = "a/b".into()),
            Err(RegionConfigError::NameHasSlash("a/b".into()))
        );
        for total in [0, BUCKETS_MAX + 1] {
            assert_eq!(
                with(&|c| c.total_buckets = total),
                Err(RegionConfigError::TotalBuckets {
                    region: "orders".into(),
                    total
                })
            );
        }
        assert_eq!(
            with(&|c| c.gateway_sender_ids = vec!["to-ldn".into(); REGION_SENDERS_MAX + 1]),
            Err(RegionConfigError::TooManySenders {
                region: "orders".into(),
                count: REGION_SENDERS_MAX + 1
            })
        );
        assert_eq!(
            with(&|c| c.gateway_sender_ids = vec![String::new()]),
            Err(RegionConfigError::EmptySenderId {
                region: "orders".into()
            })
        );
        assert_eq!(
            with(&|c| c.gateway_sender_ids = vec!["s".repeat(256)]),
            Err(RegionConfigError::SenderIdTooLong {
                region: "orders".into(),
                len: 256
            })
        );
        assert_eq!(
            with(&|c| c.gateway_sender_ids = vec!["a".into(), "b".into(), "a".into()]),
            Err(RegionConfigError::DuplicateSenderId {
                region: "orders".into(),
                id: "a".into()
            })
        );
        let mut bad = base.clone();
        bad.total_buckets = 0;
        assert!(RegionStore::new(&bad).is_err());
    }

    #[test]
    fn put_creates_then_updates() {
        let mut s = store();
        let w = s.put_local(b"k", val("v1"), 100, NY).unwrap();
        assert_eq!(w.op, Op::Create);
        assert_eq!(w.tag, tag(100, NY));
        assert_eq!(w.version.entry_version, 1);
        let w = s.put_local(b"k", val("v2"), 200, NY).unwrap();
        assert_eq!(w.op, Op::Update);
        assert_eq!((w.version.timestamp_us, w.version.entry_version), (200, 2));
        assert_eq!(s.get(b"k"), Some(&val("v2")));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn destroy_leaves_a_tombstone_that_len_does_not_count() {
        let mut s = store();
        assert_eq!(s.destroy_local(b"k", 100, NY), None);
        s.put_local(b"k", val("v"), 100, NY).unwrap();
        let w = s.destroy_local(b"k", 200, NY).unwrap();
        assert_eq!((w.op, w.tag), (Op::Destroy, tag(200, NY)));
        assert_eq!(s.get(b"k"), None);
        assert_eq!(s.entry(b"k").unwrap().value, EntryValue::Tombstone);
        assert_eq!((s.len(), s.tombstones(), s.is_empty()), (0, 1, true));
        assert_eq!(s.destroy_local(b"k", 300, NY), None, "already destroyed");
        let w = s.put_local(b"k", val("again"), 50, NY).unwrap();
        assert_eq!(w.op, Op::Create, "a put over a tombstone is a create");
        assert_eq!(w.version.entry_version, 3);
        assert_eq!((s.len(), s.tombstones()), (1, 0));
    }

    #[test]
    fn local_put_over_a_remote_value_beats_it() {
        let mut s = store();
        s.apply_remote(Op::Create, b"k", val("ldn"), tag(5_000, LDN))
            .unwrap();
        let w = s.put_local(b"k", val("ny"), 4_000, NY).unwrap();
        assert_eq!(w.tag, tag(5_001, NY));
        let mut ldn = store();
        ldn.apply_remote(Op::Create, b"k", val("ldn"), tag(5_000, LDN))
            .unwrap();
        assert!(
            ldn.apply_remote(w.op, b"k", val("ny"), w.tag)
                .unwrap()
                .is_apply()
        );
        assert_eq!(ldn.get(b"k"), Some(&val("ny")));
    }

    #[test]
    fn remote_writes_follow_the_conflict_rule() {
        let mut s = store();
        assert_eq!(
            s.apply_remote(Op::Create, b"k", val("a"), tag(100, LDN)),
            Ok(Resolution::Apply {
                rule: ApplyRule::NewEntry
            })
        );
        assert_eq!(
            s.apply_remote(Op::Update, b"k", val("old"), tag(99, SiteId(3))),
            Ok(Resolution::Reject {
                reason: RejectReason::OlderTimestamp {
                    incoming_us: 99,
                    stored_us: 100
                }
            })
        );
        assert_eq!(s.get(b"k"), Some(&val("a")));
        assert_eq!(
            s.apply_remote(Op::Update, b"k", val("b"), tag(100, SiteId(3))),
            Ok(Resolution::Apply {
                rule: ApplyRule::HigherSiteOnTie
            })
        );
        let e = s.entry(b"k").unwrap();
        assert_eq!(e.live_value(), Some(&val("b")));
        assert_eq!(
            e.version,
            EntryVersion {
                timestamp_us: 100,
                site: Some(SiteId(3)),
                entry_version: 2
            }
        );
    }

    #[test]
    fn a_late_older_update_cannot_resurrect_a_destroyed_entry() {
        let mut s = store();
        s.apply_remote(Op::Create, b"k", val("a"), tag(100, LDN))
            .unwrap();
        s.apply_remote(Op::Destroy, b"k", Bytes::new(), tag(300, LDN))
            .unwrap();
        let late = s.apply_remote(Op::Update, b"k", val("late"), tag(200, SiteId(3)));
        assert!(!late.unwrap().is_apply());
        assert_eq!(s.get(b"k"), None);
        // A newer update does bring it back.
        assert!(
            s.apply_remote(Op::Update, b"k", val("new"), tag(301, SiteId(3)))
                .unwrap()
                .is_apply()
        );
        assert_eq!(s.get(b"k"), Some(&val("new")));
    }

    #[test]
    fn a_remote_destroy_of_an_unknown_key_leaves_a_tombstone() {
        let mut s = store();
        let r = s.apply_remote(Op::Destroy, b"k", Bytes::new(), tag(300, LDN));
        assert!(r.unwrap().is_apply());
        assert_eq!((s.len(), s.tombstones()), (0, 1));
        let late = s.apply_remote(Op::Create, b"k", val("late"), tag(200, LDN));
        assert!(!late.unwrap().is_apply());
        assert_eq!(s.get(b"k"), None);
    }

    #[test]
    fn version_only_updates_change_the_stamp_alone() {
        let mut s = store();
        assert_eq!(
            s.apply_remote(Op::VersionOnly, b"k", Bytes::new(), tag(100, LDN)),
            Err(StoreError::NoEntryToStamp)
        );
        s.apply_remote(Op::Create, b"k", val("a"), tag(100, LDN))
            .unwrap();
        assert!(
            s.apply_remote(Op::VersionOnly, b"k", Bytes::new(), tag(150, LDN))
                .unwrap()
                .is_apply()
        );
        let e = s.entry(b"k").unwrap();
        assert_eq!(e.live_value(), Some(&val("a")));
        assert_eq!(e.version.timestamp_us, 150);
        s.apply_remote(Op::Destroy, b"k", Bytes::new(), tag(200, LDN))
            .unwrap();
        s.apply_remote(Op::VersionOnly, b"k", Bytes::new(), tag(250, LDN))
            .unwrap();
        assert_eq!(s.entry(b"k").unwrap().value, EntryValue::Tombstone);
        assert_eq!(s.tombstones(), 1);
        assert_eq!(s.gc(250 + TOMBSTONE_TTL_US - 1), 0, "aged by the new stamp");
        assert_eq!(s.gc(250 + TOMBSTONE_TTL_US), 1);
    }

    #[test]
    fn malformed_writes_are_refused() {
        let mut s = store();
        let long_key = vec![0u8; KEY_BYTES_MAX + 1];
        let big_value = Bytes::from(vec![0u8; VALUE_BYTES_MAX + 1]);
        assert_eq!(
            s.put_local(&long_key, val("v"), 1, NY),
            Err(StoreError::KeyTooLong(KEY_BYTES_MAX + 1))
        );
        assert_eq!(
            s.put_local(b"k", big_value.clone(), 1, NY),
            Err(StoreError::ValueTooLong(VALUE_BYTES_MAX + 1))
        );
        assert_eq!(
            s.apply_remote(Op::Create, &long_key, val("v"), tag(1, LDN)),
            Err(StoreError::KeyTooLong(KEY_BYTES_MAX + 1))
        );
        assert_eq!(
            s.apply_remote(Op::Update, b"k", big_value, tag(1, LDN)),
            Err(StoreError::ValueTooLong(VALUE_BYTES_MAX + 1))
        );
        assert_eq!(
            s.apply_remote(Op::Destroy, b"k", val("v"), tag(1, LDN)),
            Err(StoreError::UnexpectedValue(Op::Destroy, 1))
        );
        assert_eq!(s.destroy_local(&long_key, 1, NY), None);
        assert!(s.is_empty() && s.tombstones() == 0);
    }

    #[test]
    fn a_full_store_refuses_new_keys_only() {
        let config = RegionConfig::new("orders", RegionKind::Partition);
        let mut s = RegionStore::with_entries_max(&config, 2).unwrap();
        s.put_local(b"a", val("1"), 1, NY).unwrap();
        s.put_local(b"b", val("1"), 1, NY).unwrap();
        let full = StoreError::Full { entries_max: 2 };
        assert_eq!(s.put_local(b"c", val("1"), 1, NY).unwrap_err(), full);
        assert_eq!(
            s.apply_remote(Op::Destroy, b"c", Bytes::new(), tag(1, LDN))
                .unwrap_err(),
            full
        );
        assert_eq!(s.put_local(b"a", val("2"), 2, NY).unwrap().op, Op::Update);
        assert!(s.destroy_local(b"b", 2, NY).is_some());
        assert_eq!(
            s.put_local(b"c", val("1"), 1, NY).unwrap_err(),
            full,
            "a tombstone takes a slot"
        );
        assert_eq!(s.gc(2 + TOMBSTONE_TTL_US), 1);
        assert!(s.put_local(b"c", val("1"), 1, NY).is_ok());
    }

    #[test]
    fn gc_drops_only_old_tombstones_in_bounded_batches() {
        let mut s = store();
        let n = TOMBSTONE_GC_BATCH_MAX + 10;
        for i in 0..n {
            let key = format!("k{i}");
            s.put_local(key.as_bytes(), val("v"), 1, NY).unwrap();
            s.destroy_local(key.as_bytes(), 1_000 + i as u64, NY)
                .unwrap();
        }
        s.put_local(b"live", val("v"), 1, NY).unwrap();
        assert_eq!(s.gc(1_000 + TOMBSTONE_TTL_US - 1), 0);
        assert_eq!(s.gc(u64::MAX), TOMBSTONE_GC_BATCH_MAX);
        assert_eq!(s.gc(u64::MAX), 10);
        assert_eq!(s.gc(u64::MAX), 0);
        assert_eq!((s.len(), s.tombstones()), (1, 0));
        assert_eq!(s.entry(b"k0"), None);
        assert_eq!(s.get(b"live"), Some(&val("v")));
    }

    #[test]
    fn gc_drops_oldest_first_and_keeps_young_ones() {
        let mut s = store();
        for (key, ts) in [("young", 5_000), ("old", 1_000)] {
            s.apply_remote(Op::Destroy, key.as_bytes(), Bytes::new(), tag(ts, LDN))
                .unwrap();
        }
        assert_eq!(s.gc(1_000 + TOMBSTONE_TTL_US), 1);
        assert_eq!(s.entry(b"old"), None);
        assert!(s.entry(b"young").is_some());
    }

    #[test]
    fn after_gc_a_late_older_update_brings_the_key_back() {
        // The trade-off of a bounded tombstone life.
        let mut s = store();
        s.apply_remote(Op::Destroy, b"k", Bytes::new(), tag(1_000, LDN))
            .unwrap();
        assert_eq!(s.gc(1_000 + TOMBSTONE_TTL_US), 1);
        let late = s.apply_remote(Op::Update, b"k", val("late"), tag(500, SiteId(3)));
        assert_eq!(
            late,
            Ok(Resolution::Apply {
                rule: ApplyRule::NewEntry
            })
        );
        assert_eq!(s.get(b"k"), Some(&val("late")));
    }

    fn scan_all(s: &RegionStore, count: usize) -> (Vec<Bytes>, usize) {
        let mut keys = Vec::new();
        let mut cursor = ScanCursor::START;
        let mut pages = 0;
        loop {
            let page = s.scan(cursor, count);
            pages += 1;
            keys.extend(page.entries.iter().map(|(k, _)| (*k).clone()));
            cursor = page.next;
            if cursor == ScanCursor::START {
                return (keys, pages);
            }
            assert!(pages < 100_000, "scan does not end");
        }
    }

    #[test]
    fn scan_returns_every_live_key_once_in_pages() {
        let mut s = store();
        assert_eq!(s.scan(ScanCursor::START, 10).entries.len(), 0);
        for i in 0..1_000 {
            s.put_local(format!("k{i}").as_bytes(), val("v"), 1, NY)
                .unwrap();
        }
        for i in 0..100 {
            s.destroy_local(format!("k{i}").as_bytes(), 2, NY).unwrap();
        }
        let page = s.scan(ScanCursor::START, 10);
        assert!(page.entries.len() <= 10 && page.next != ScanCursor::START);
        let (mut keys, pages) = scan_all(&s, 10);
        assert_eq!(
            pages, 100,
            "tombstones are visited, so 1000 entries make 100 pages"
        );
        keys.sort();
        let mut expected: Vec<Bytes> = (100..1_000).map(|i| Bytes::from(format!("k{i}"))).collect();
        expected.sort();
        assert_eq!(keys, expected);
        let (_, pages) = scan_all(&s, usize::MAX);
        assert_eq!(pages, 1, "count is clamped to {SCAN_COUNT_MAX}");
        assert_eq!(
            s.scan(ScanCursor::START, 0).entries.len(),
            1,
            "count 0 visits one"
        );
        assert_eq!(s.scan(ScanCursor(u64::MAX), 10).next, ScanCursor::START);
    }

    #[test]
    fn scan_order_is_by_bucket_then_hash() {
        let mut s = store();
        for i in 0..200 {
            s.put_local(format!("k{i}").as_bytes(), val("v"), 1, NY)
                .unwrap();
        }
        let (keys, _) = scan_all(&s, 7);
        let positions: Vec<u64> = keys.iter().map(|k| s.position(k)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        let table = crate::bucket::BucketTable::new(TOTAL_BUCKETS_DEFAULT, 1).unwrap();
        for k in &keys {
            assert_eq!(u64::from(table.bucket_of(k).0), s.position(k) >> 32);
        }
    }

    #[test]
    fn a_cursor_survives_writes_between_pages() {
        let mut s = store();
        for i in 0..300 {
            s.put_local(format!("k{i}").as_bytes(), val("v"), 1, NY)
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = ScanCursor::START;
        let mut round = 0;
        loop {
            let page = s.scan(cursor, 16);
            seen.extend(page.entries.iter().map(|(k, _)| (*k).clone()));
            cursor = page.next;
            if cursor == ScanCursor::START {
                break;
            }
            // Churn: add new keys and destroy keys 200.. between pages.
            round += 1;
            s.put_local(format!("new{round}").as_bytes(), val("v"), 2, NY)
                .unwrap();
            s.destroy_local(format!("k{}", 200 + round).as_bytes(), 2, NY);
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "no key twice");
        for i in 0..200 {
            assert!(
                seen.contains(&Bytes::from(format!("k{i}"))),
                "k{i} was there throughout"
            );
        }
    }

    fn event(site: u8, member: u16, stream: u32, seq: u64) -> EventId {
        EventId {
            origin_site: SiteId(site),
            origin_member: strait_queue::ids::MemberId(member),
            stream: strait_queue::ids::StreamId(stream),
            seq,
        }
    }

    #[test]
    fn remote_events_are_recorded_per_stream_and_seen_once() {
        let mut s = store();
        let e1 = event(2, 7, 3, 1);
        assert_eq!(s.last_applied(&e1), None);
        let r = s.apply_remote_event(&e1, Op::Create, b"k", b"a", tag(100, LDN));
        assert_eq!(
            r,
            Ok(RemoteApply::Resolved(Resolution::Apply {
                rule: ApplyRule::NewEntry
            }))
        );
        assert_eq!(s.last_applied(&event(2, 7, 3, 99)), Some(1));
        let again = s.apply_remote_event(&e1, Op::Create, b"k", b"b", tag(200, LDN));
        assert_eq!(again, Ok(RemoteApply::Duplicate { last_applied: 1 }));
        assert_eq!(s.get(b"k"), Some(&val("a")), "a duplicate changes nothing");
        // Other members, streams and sites are streams of their own.
        for other in [event(2, 8, 3, 1), event(2, 7, 4, 1), event(3, 7, 3, 1)] {
            assert_eq!(s.last_applied(&other), None);
        }
        // A lost conflict still advances the mark.
        let older = s.apply_remote_event(&event(2, 7, 3, 2), Op::Update, b"k", b"c", tag(50, LDN));
        assert!(matches!(
            older,
            Ok(RemoteApply::Resolved(Resolution::Reject { .. }))
        ));
        assert_eq!(s.last_applied(&e1), Some(2));
        assert_eq!(s.streams(), 1);
    }

    #[test]
    fn a_refused_event_is_not_recorded() {
        let mut s = store();
        let e = event(2, 1, 1, 5);
        let r = s.apply_remote_event(&e, Op::VersionOnly, b"k", b"", tag(1, LDN));
        assert_eq!(r, Err(StoreError::NoEntryToStamp));
        assert_eq!((s.last_applied(&e), s.streams()), (None, 0));
    }

    #[test]
    fn replay_skips_the_duplicate_check_and_never_lowers_the_mark() {
        let mut s = store();
        s.apply_remote_event(&event(2, 1, 1, 9), Op::Create, b"a", b"1", tag(9, LDN))
            .unwrap();
        let late = event(2, 1, 1, 4);
        assert_eq!(
            s.apply_remote_event(&late, Op::Create, b"b", b"2", tag(4, LDN)),
            Ok(RemoteApply::Duplicate { last_applied: 9 })
        );
        assert!(
            s.replay_remote_event(&late, Op::Create, b"b", b"2", tag(4, LDN))
                .unwrap()
                .is_apply()
        );
        assert_eq!(s.get(b"b"), Some(&val("2")));
        assert_eq!(s.last_applied(&late), Some(9));
        s.replay_remote_event(&event(2, 1, 1, 12), Op::Create, b"c", b"3", tag(12, LDN))
            .unwrap();
        assert_eq!(s.last_applied(&late), Some(12));
    }

    #[test]
    fn the_dedupe_table_refuses_new_streams_past_its_limit() {
        let mut s = store();
        let limit = u32::try_from(STREAMS_MAX).unwrap();
        for stream in 0..limit {
            let e = event(2, 1, stream, 1);
            s.apply_remote_event(&e, Op::Destroy, b"k", b"", tag(1, LDN))
                .unwrap();
        }
        assert_eq!(s.streams(), STREAMS_MAX);
        let full = StoreError::StreamsFull {
            streams_max: STREAMS_MAX,
        };
        let new_stream = event(2, 1, limit, 1);
        assert_eq!(
            s.apply_remote_event(&new_stream, Op::Create, b"x", b"v", tag(5, LDN)),
            Err(full)
        );
        assert_eq!(s.get(b"x"), None, "refused before it is applied");
        // Known streams go on, duplicates are still caught.
        let next = event(2, 1, 0, 2);
        assert!(matches!(
            s.apply_remote_event(&next, Op::Create, b"x", b"v", tag(5, LDN)),
            Ok(RemoteApply::Resolved(_))
        ));
        assert_eq!(
            s.apply_remote_event(&next, Op::Create, b"x", b"v", tag(5, LDN)),
            Ok(RemoteApply::Duplicate { last_applied: 2 })
        );
    }

    #[derive(Clone, Debug)]
    enum RemoteOp {
        Put(u8),
        Destroy,
    }

    /// Up to 24 remote writes over 4 keys, with distinct tags per key.
    fn remote_writes() -> impl Strategy<Value = Vec<(u8, RemoteOp, VersionTag)>> {
        prop::collection::btree_map((0u8..4, 0u64..6, 0u8..4), any::<Option<u8>>(), 1..24).prop_map(
            |m| {
                m.into_iter()
                    .map(|((key, ts, site), v)| {
                        let op = v.map_or(RemoteOp::Destroy, RemoteOp::Put);
                        (key, op, tag(ts, SiteId(site)))
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn replicas_converge_whatever_the_arrival_order(
            writes in remote_writes(),
            order in any::<Vec<prop::sample::Index>>(),
        ) {
            let mut shuffled = writes.clone();
            for (i, idx) in order.iter().enumerate() {
                let len = shuffled.len();
                shuffled.swap(i % len, idx.index(len));
            }
            let mut a = store();
            let mut b = store();
            for (replica, list) in [(&mut a, &writes), (&mut b, &shuffled)] {
                for (key, op, t) in list {
                    let (op, value) = match op {
                        RemoteOp::Put(v) => (Op::Update, Bytes::from(vec![*v])),
                        RemoteOp::Destroy => (Op::Destroy, Bytes::new()),
                    };
                    replica.apply_remote(op, &[*key], value, *t).unwrap();
                }
            }
            for key in 0u8..4 {
                let (ea, eb) = (a.entry(&[key]), b.entry(&[key]));
                prop_assert_eq!(ea.map(|e| (&e.value, e.version.tag())), eb.map(|e| (&e.value, e.version.tag())));
                let winner = writes
                    .iter()
                    .filter(|(k, _, _)| *k == key)
                    .map(|(_, _, t)| (t.timestamp_us, t.site))
                    .max();
                prop_assert_eq!(ea.and_then(|e| e.version.tag()).map(|t| (t.timestamp_us, t.site)), winner);
            }
            prop_assert_eq!((a.len(), a.tombstones()), (b.len(), b.tombstones()));
        }
    }
}
