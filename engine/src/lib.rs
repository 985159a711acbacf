//! # strait-engine: what a site is
//!
//! The pure core of a Strait site: where a key lives, how an entry is versioned, which write
//! wins across sites, and which sites an event goes to next. Nothing here reads a clock or
//! does I/O; time comes in as microseconds since the Unix epoch (the locator directory takes
//! milliseconds from its shell's monotonic clock).
//!
//! | type or function | what it is | where it lives |
//! |---|---|---|
//! | [`bucket::BucketTable`] | `key → bucket` (CRC-32 of the key, the same at every site) and `bucket → shard` (one table) | one per node, read by every shard |
//! | [`bucket::ShardId`] | a shard: one core's executor | — |
//! | [`region::RegionConfig`], [`region::RegionKind`] | a region as configured: name, kind, bucket count, gateway senders | site configuration |
//! | [`region::RegionStore`] | one region's entries (values and tombstones) on one shard; local writes, remote writes, SCAN, tombstone GC | owned by one shard, never shared |
//! | [`version::EntryVersion`] | an entry's stamp: timestamp, site, write count | inside each entry |
//! | [`version::local_write_tag`], [`version::resolve_remote`] | Geode's WAN conflict rule (geode-wan.md §4.1, §4.2) | called by `RegionStore` |
//! | [`loop_rule::should_forward`], [`loop_rule::recipients_after_forward`] | Geode's loop prevention (geode-wan.md §3) | called by the senders |
//! | [`apply::apply_record`], [`apply::ApplyOutcome`] | apply of one record from another site: dedupe, then the conflict rule; applied, duplicate, rejected or dead letter ([`apply::DeadLetterReason`]) | called by the receiver on the shard owning the record's bucket |
//! | [`apply::forward_targets`] | which local senders forward an applied remote event, and its new recipient set | called by the receiver |
//! | [`region::RegionStore::last_applied`] | the dedupe table: per (origin site, member, stream), the highest stream sequence number processed, kept beside the entries | inside each `RegionStore` |
//! | [`deadletter::encode_entry`], [`deadletter::scan`], [`deadletter::DeadLetterLog`] | the dead-letter log format (docs/formats.md): entries, torn tail, corruption; list and replay | the node's dead-letter files |
//! | [`alert::batch_ages`], [`alert::AlertLog`] | Geode's `alert-threshold`: events that waited too long in a sender's queue, counted per batch, a warning at most every 10 s | called by the dispatchers |
//! | [`write::local_write`] | a local write: plan, room in every sender's queue, queue everywhere, then the store | the shard owning the key |
//! | [`link::next_batch`], [`link::send_batch`], [`link::handle_event`] | the sender end of a link: peek round-robin, write a batch, carry out acks and failures on the queue | the dispatcher's shard |
//! | [`receive::ack_outcome`], [`receive::forward_event`] | the receiving end: a batch's ack from its outcomes, the event an applied record is forwarded as | the receiver's shard |
//! | [`locator::Directory`] | a locator's directory: per site, its locators and its servers ([`locator::ServerInfo`]: client address, receiver endpoints, load, last heard); register, heartbeat, expiry, least-loaded; the exchange of site maps ([`locator::ExchangeRounds`]) | owned by the locator's control-plane thread, never a shard |
//! | [`sender::SenderState`], [`sender::SenderOp`], [`sender::discard_all`] | a gateway sender's operations: start (clean), stop, pause, resume, and what START CLEAN discards | applied on every shard by the node |
//! | [`registration::RegistrationLink`] | a server's standing with one locator: register, heartbeat, register again when forgotten, retry when unreachable | the node's registration agent (a plain thread); the simulator |
//!
//! A client write goes: the node finds the key's bucket and its shard in the `BucketTable` →
//! that shard's `RegionStore::put_local` stamps it and returns a `WriteOutcome` → each sender
//! of the region for which `should_forward` holds queues the event with the recipients from
//! `recipients_after_forward`. At the other site the receiver calls `apply_record`: a
//! duplicate by the store's dedupe table is dropped, otherwise `apply_remote` applies the
//! event or rejects it by the conflict rule; a store refusal is written to the dead-letter
//! log, and an applied event goes on to the senders `forward_targets` names.
//!
//! ```
//! use bytes::Bytes;
//! use strait_engine::bucket::{BucketTable, ShardId};
//! use strait_engine::loop_rule::{recipients_after_forward, should_forward};
//! use strait_engine::region::{RegionConfig, RegionKind, RegionStore};
//! use strait_queue::ids::{SiteId, VersionTag};
//! use strait_queue::record::Op;
//!
//! let (ny, london) = (SiteId(1), SiteId(2));
//! let table = BucketTable::new(113, 2).unwrap();
//! let bucket = table.bucket_of(b"order:17");
//! assert_eq!(table.shard_of(bucket), Some(ShardId(bucket.0 % 2)));
//!
//! let config = RegionConfig::new("orders", RegionKind::Partition);
//! let mut at_ny = RegionStore::new(&config).unwrap();
//! let mut at_london = RegionStore::new(&config).unwrap();
//!
//! // London writes first; New York's clock is behind, yet its later write wins everywhere.
//! let london_tag = VersionTag { timestamp_us: 2_000, site: london };
//! at_london.apply_remote(Op::Create, b"order:17", Bytes::from_static(b"old"), london_tag).unwrap();
//! at_ny.apply_remote(Op::Create, b"order:17", Bytes::from_static(b"old"), london_tag).unwrap();
//! let write = at_ny.put_local(b"order:17", Bytes::from_static(b"new"), 1_000, ny).unwrap();
//! assert_eq!((write.op, write.tag.timestamp_us), (Op::Update, 2_001));
//!
//! assert!(should_forward(ny, None, &[], london));
//! assert_eq!(recipients_after_forward(ny, None, &[], &[london]), vec![london]);
//! let applied = at_london.apply_remote(write.op, b"order:17", Bytes::from_static(b"new"), write.tag);
//! assert!(applied.unwrap().is_apply());
//! assert_eq!(at_london.get(b"order:17"), at_ny.get(b"order:17"));
//! ```
#![forbid(unsafe_code)]

pub mod alert;
pub mod apply;
pub mod bucket;
pub mod deadletter;
pub mod link;
pub mod locator;
pub mod loop_rule;
pub mod receive;
pub mod region;
pub mod registration;
pub mod sender;
pub mod version;
pub mod write;
