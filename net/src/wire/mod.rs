//! The WAN link between sites, protocol version 1 (`docs/wan.md`; bytes in
//! `docs/formats.md` "Wire frames, protocol version 1").
//!
//! | item | what it is |
//! |---|---|
//! | [`frame`] | the codec: [`decode_frame`] → [`Frame`] borrowing from the read buffer; [`Frame::encode`], [`batch_prefix`], [`ping_frame`] |
//! | [`SenderConn`] | one sender connection: handshake, window of in-flight batches, acks, ack and ping timeouts |
//! | [`ReceiverConn`] | one receiver connection: handshake checks, batch checks, acks, pongs, silence timeout |
//!
//! Both connection types are pure state machines: the shell (a glommio dispatcher or
//! listener) passes in what the socket read and the time in milliseconds, and carries out
//! what `poll_event` returns. Neither reads a clock or touches a socket.

pub mod frame;
pub mod receiver;
pub mod sender;

use std::fmt;

use strait_queue::ids::RegionId;

pub use frame::{
    Ack, BATCH_EVENTS_MAX, BATCH_PREFIX_BYTES, Batch, BatchRecords, DEAD_LETTERS_PER_ACK_MAX,
    DeadLetter, DeadLetterReason, DeadLetters, EncodeError, FRAME_BODY_BYTES_MAX,
    FRAME_HEADER_BYTES, Frame, FrameError, FrameKind, Hello, HelloReply, NAME_BYTES_MAX,
    PING_FRAME_BYTES, PROTOCOL_VERSION, REGIONS_PER_HELLO_MAX, Refusal, RefuseReason, RegionEntry,
    Regions, batch_prefix, decode_frame, ping_frame, pong_frame,
};
pub use receiver::{
    AckError, AckOutcome, BatchIn, Handled, HelloInfo, ReceiverConfig, ReceiverConn, ReceiverError,
    ReceiverEvent,
};
pub use sender::{
    AckedBatch, BatchOut, InflightBatch, SendError, SenderConfig, SenderConfigError, SenderConn,
    SenderError, SenderEvent,
};

/// A batch's id: per connection, from 1, consecutive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

impl BatchId {
    /// The first batch of a connection.
    pub const FIRST: BatchId = BatchId(1);

    /// The batch id after this one.
    pub const fn next(self) -> BatchId {
        BatchId(self.0.wrapping_add(1))
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A Hello's region-table entry, owned: what a sender announces and a receiver keeps for
/// the connection's lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegionSpec {
    /// The index in the records' `region` field.
    pub id: RegionId,
    /// The region's name.
    pub name: String,
    /// The region's `total-num-buckets` at the sending site.
    pub total_num_buckets: u32,
}

impl RegionSpec {
    /// The entry as the frame codec takes it.
    pub fn entry(&self) -> RegionEntry<'_> {
        RegionEntry {
            id: self.id,
            total_num_buckets: self.total_num_buckets,
            name: &self.name,
        }
    }
}

impl From<RegionEntry<'_>> for RegionSpec {
    fn from(e: RegionEntry<'_>) -> Self {
        RegionSpec {
            id: e.id,
            name: e.name.to_owned(),
            total_num_buckets: e.total_num_buckets,
        }
    }
}

/// A Ping's nonce, echoed by its Pong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PingNonce(pub u64);

impl fmt::Display for PingNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
