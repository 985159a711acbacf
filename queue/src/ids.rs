//! Identifier and position types. Every id is its own type so that a byte offset is never
//! mistaken for a sequence number, nor a bucket for a region.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// A site (`distributed-system-id`), 0–255.
    SiteId(u8)
);
id_type!(
    /// A member (server process) within a site.
    MemberId(u16)
);
id_type!(
    /// An independently ordered stream of events from one origin member (a bucket of a
    /// parallel sender, a dispatcher of a serial one).
    StreamId(u32)
);
id_type!(
    /// A region, numbered within a site; names are exchanged in the connection handshake.
    RegionId(u16)
);
id_type!(
    /// A partition bucket of a region.
    BucketId(u16)
);
id_type!(
    /// One queue of a sender on a shard: the bucket of a parallel sender, or the dispatcher
    /// index of a serial sender.
    QueueId(u16)
);
id_type!(
    /// A per-queue sequence number. The first event of a queue gets 1; 0 means "none".
    Seq(u64)
);
id_type!(
    /// A segment file within one queue set's directory.
    SegmentId(u64)
);

impl Seq {
    /// The sequence number after this one; `u64::MAX` stays `u64::MAX` (only a damaged or
    /// crafted file reaches it, and reading one must not overflow).
    pub const fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

/// The identity of an event, assigned once at its origin and kept across every site it
/// crosses: receivers remember the highest `seq` applied per (site, member, stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventId {
    /// The site where the operation happened; also the loop rule's originating site.
    pub origin_site: SiteId,
    /// The member of that site that queued it first.
    pub origin_member: MemberId,
    /// The stream within that member.
    pub stream: StreamId,
    /// The position within the stream.
    pub seq: u64,
}

/// The version tag that the WAN conflict rule compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionTag {
    /// Microseconds since the Unix epoch at the writing site.
    pub timestamp_us: u64,
    /// The site that wrote this version.
    pub site: SiteId,
}
