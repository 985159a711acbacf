//! One gateway receiver connection, as a pure state machine (`docs/wan.md` "Frames" and
//! "Receiver side").
//!
//! ```text
//! new ──Hello ok──▶ Connected ──Batch──▶ BatchIn to the shell ──handle_applied──▶ Ack
//!  │                   │  └──Ping──▶ Pong
//!  └─bad hello─▶ HelloReply(refused), Closed      └──bad frame / out-of-order batch / silence──▶ Closed
//! ```
//!
//! The shell passes the unconsumed front of its read buffer to
//! [`ReceiverConn::handle_bytes`], which consumes frames until it meets a batch (returned as a
//! [`BatchIn`] borrowing the records from the buffer) or the buffer ends inside a frame. The
//! shell applies the batch, reports the outcome with [`ReceiverConn::handle_applied`] and
//! writes every [`ReceiverEvent::Transmit`] (HelloReply, Ack, Pong) in order. On
//! [`ReceiverEvent::Closed`] it writes what is left to write and closes the socket.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};

use strait_queue::ids::SiteId;
use strait_queue::record::Record;

use super::frame::{
    self, Ack, DEAD_LETTER_TEXT_BYTES_MAX, DeadLetter, DeadLetters, EncodeError, Frame, FrameError,
    FrameKind, Hello, HelloReply, Refusal, RefuseReason,
};
use super::{BatchId, RegionSpec};

/// The largest `total_num_buckets` a Hello's region may announce. It must equal
/// `strait_engine::bucket::BUCKETS_MAX` (net does not depend on the engine; the node, which
/// depends on both, asserts the two are equal at compile time).
pub const BUCKETS_MAX: u32 = 4096;

/// Default of [`ReceiverConfig::maximum_time_between_pings_ms`] (Geode's default).
pub const MAXIMUM_TIME_BETWEEN_PINGS_MS_DEFAULT: u32 = 60_000;
/// Default of [`ReceiverConfig::pending_batches_max`].
pub const PENDING_BATCHES_MAX_DEFAULT: usize = 64;

/// What a receiver connection needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// This receiver's site.
    pub site: SiteId,
    /// This member's name.
    pub member: String,
    /// Close a connection that sent nothing for this long.
    pub maximum_time_between_pings_ms: u32,
    /// Most batches handed out and not yet acknowledged; beyond it
    /// [`ReceiverConn::handle_bytes`] leaves the next batch in the buffer.
    pub pending_batches_max: usize,
}

impl ReceiverConfig {
    /// A configuration with the default ping timeout and pending limit.
    pub fn new(site: SiteId, member: impl Into<String>) -> Self {
        ReceiverConfig {
            site,
            member: member.into(),
            maximum_time_between_pings_ms: MAXIMUM_TIME_BETWEEN_PINGS_MS_DEFAULT,
            pending_batches_max: PENDING_BATCHES_MAX_DEFAULT,
        }
    }
}

/// What an accepted Hello said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloInfo {
    pub sender_site: SiteId,
    pub member: String,
    pub sender_id: String,
    /// The region table: names and bucket counts of the region indexes in the records.
    pub regions: Vec<RegionSpec>,
}

/// A batch to apply, its records still in the read buffer. Its records were all checked
/// (CRC and count) before it was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchIn<'a> {
    pub id: BatchId,
    pub possible_duplicate: bool,
    pub events: u32,
    /// The records, back to back.
    pub records: &'a [u8],
}

impl<'a> BatchIn<'a> {
    /// The records, in order; the index of each in this walk is the index a dead letter
    /// names. Each record is decoded again in place (its CRC included): the check in
    /// [`ReceiverConn::handle_bytes`] passed, so this walk yields every record.
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + use<'a> {
        frame::Batch {
            id: self.id,
            possible_duplicate: self.possible_duplicate,
            events: self.events,
            records: self.records,
        }
        .records()
        .map_while(Result::ok)
    }
}

/// What [`ReceiverConn::handle_bytes`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handled<'a> {
    /// Bytes consumed from the front of the buffer. 0 with no batch: read more (or the
    /// connection is closed, see [`ReceiverConn::is_closed`]).
    pub consumed: usize,
    /// The batch the last consumed frame carried.
    pub batch: Option<BatchIn<'a>>,
}

/// The outcome of applying one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    pub applied: u32,
    pub duplicates: u32,
    pub conflicts: u32,
    /// Events written to the dead-letter log; texts longer than
    /// [`DEAD_LETTER_TEXT_BYTES_MAX`] are cut.
    pub dead_letters: Vec<DeadLetter<'static>>,
}

/// What the shell should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Write these bytes (a HelloReply, an Ack or a Pong).
    Transmit(Vec<u8>),
    /// The Hello was accepted.
    Connected(HelloInfo),
    /// The connection is over: write what is left, then close the socket.
    Closed(ReceiverError),
}

/// Why a receiver connection ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    #[error("refused the sender's hello ({reason:?}): {text}")]
    Refused { reason: RefuseReason, text: String },
    #[error("the sender was silent for {silent_ms} ms")]
    TimedOut { silent_ms: u64 },
    #[error("the sender sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("the sender sent a {kind} frame after the handshake")]
    UnexpectedFrame { kind: FrameKind },
    #[error("the sender sent batch {got}, expected batch {expected}")]
    BatchOutOfOrder { expected: BatchId, got: BatchId },
}

/// Why [`ReceiverConn::handle_applied`] refused an outcome: the shell's mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("batch {got} is not the oldest pending batch ({expected:?})")]
    NotPending {
        expected: Option<BatchId>,
        got: BatchId,
    },
    #[error("the outcome of batch {batch} accounts for {accounted} events, the batch has {events}")]
    CountMismatch {
        batch: BatchId,
        events: u32,
        accounted: u64,
    },
    #[error("the outcome of batch {batch} dead-letters event {index}, the batch has {events}")]
    DeadLetterIndex {
        batch: BatchId,
        index: u32,
        events: u32,
    },
    #[error("the ack cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Connected,
    Closed,
}

/// One receiver connection. See the module docs.
#[derive(Debug)]
pub struct ReceiverConn {
    config: ReceiverConfig,
    state: State,
    events: VecDeque<ReceiverEvent>,
    /// Batches handed out and not yet acknowledged: id and event count.
    pending: VecDeque<(BatchId, u32)>,
    next_batch: BatchId,
    last_heard_ms: u64,
    /// Bytes left unconsumed at the end of the last `handle_bytes`: a longer buffer next time
    /// means new bytes arrived.
    unconsumed: usize,
}

impl ReceiverConn {
    /// A connection just accepted at `now_ms`.
    pub fn new(config: ReceiverConfig, now_ms: u64) -> Self {
        ReceiverConn {
            pending: VecDeque::with_capacity(config.pending_batches_max),
            config,
            state: State::AwaitingHello,
            events: VecDeque::new(),
            next_batch: BatchId::FIRST,
            last_heard_ms: now_ms,
            unconsumed: 0,
        }
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Takes in the unconsumed front of the read buffer (what was left last time, then what
    /// the socket read since). Consumes frames until one carries a batch, which is returned,
    /// or the buffer ends inside a frame. Call again with the rest until it consumes nothing.
    pub fn handle_bytes<'a>(&mut self, buf: &'a [u8], now_ms: u64) -> Handled<'a> {
        if buf.len() > self.unconsumed {
            self.last_heard_ms = now_ms;
        }
        let mut at = 0;
        let mut batch = None;
        while self.state != State::Closed && batch.is_none() {
            let rest = &buf[at..];
            match frame::decode_frame(rest) {
                Ok(None) => break,
                Ok(Some((Frame::Batch(_), _)))
                    if self.pending.len() >= self.config.pending_batches_max =>
                {
                    break;
                }
                Ok(Some((frame, consumed))) => {
                    at += consumed;
                    match self.handle_frame(frame) {
                        Ok(b) => batch = b,
                        Err(error) => self.close(error),
                    }
                }
                Err(error) => {
                    if self.state == State::AwaitingHello {
                        let reason = match error {
                            FrameError::UnsupportedVersion(_) => RefuseReason::WrongVersion,
                            _ => RefuseReason::MalformedHello,
                        };
                        self.refuse(reason, error.to_string());
                    } else {
                        self.close(error.into());
                    }
                }
            }
        }
        self.unconsumed = buf.len() - at;
        Handled {
            consumed: at,
            batch,
        }
    }

    /// Reports the outcome of the oldest pending batch; queues its Ack.
    pub fn handle_applied(&mut self, batch: BatchId, outcome: &AckOutcome) -> Result<(), AckError> {
        let Some(&(expected, events)) = self.pending.front() else {
            return Err(AckError::NotPending {
                expected: None,
                got: batch,
            });
        };
        if batch != expected {
            return Err(AckError::NotPending {
                expected: Some(expected),
                got: batch,
            });
        }
        let accounted = u64::from(outcome.applied)
            + u64::from(outcome.duplicates)
            + u64::from(outcome.conflicts)
            + outcome.dead_letters.len() as u64;
        if accounted != u64::from(events) {
            return Err(AckError::CountMismatch {
                batch,
                events,
                accounted,
            });
        }
        if let Some(d) = outcome.dead_letters.iter().find(|d| d.index >= events) {
            return Err(AckError::DeadLetterIndex {
                batch,
                index: d.index,
                events,
            });
        }
        // The count check bounds the dead letters by `events`, itself at most
        // `BATCH_EVENTS_MAX` = `DEAD_LETTERS_PER_ACK_MAX`, so the Ack stays within its limits.
        let dead_letters: Vec<DeadLetter<'_>> = outcome
            .dead_letters
            .iter()
            .map(|d| DeadLetter {
                index: d.index,
                reason: d.reason,
                text: Cow::Borrowed(cut(&d.text, DEAD_LETTER_TEXT_BYTES_MAX)),
            })
            .collect();
        let mut out = Vec::new();
        Frame::Ack(Ack {
            batch,
            applied: outcome.applied,
            duplicates: outcome.duplicates,
            conflicts: outcome.conflicts,
            dead_letters: DeadLetters::List(&dead_letters),
        })
        .encode(&mut out)?;
        self.pending.pop_front();
        if self.state != State::Closed {
            self.events.push_back(ReceiverEvent::Transmit(out));
        }
        Ok(())
    }

    /// Takes in the passing of time: closes a connection silent for
    /// `maximum_time_between_pings_ms`.
    pub fn handle_timer(&mut self, now_ms: u64) {
        if self.state == State::Closed {
            return;
        }
        if let Some(deadline) = self.next_deadline_ms()
            && now_ms >= deadline
        {
            self.close(ReceiverError::TimedOut {
                silent_ms: now_ms - self.last_heard_ms,
            });
        }
    }

    /// When [`ReceiverConn::handle_timer`] next has something to do; `None` once closed.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        (self.state != State::Closed).then(|| {
            self.last_heard_ms
                .saturating_add(u64::from(self.config.maximum_time_between_pings_ms))
        })
    }

    /// The next thing for the shell to do.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    fn handle_frame<'a>(&mut self, frame: Frame<'a>) -> Result<Option<BatchIn<'a>>, ReceiverError> {
        match (self.state, frame) {
            (State::AwaitingHello, Frame::Hello(hello)) => {
                self.handle_hello(&hello);
                Ok(None)
            }
            (State::AwaitingHello, other) => {
                self.refuse(
                    RefuseReason::MalformedHello,
                    format!("the first frame was a {} frame, not a Hello", other.kind()),
                );
                Ok(None)
            }
            (State::Connected, Frame::Batch(batch)) => {
                if batch.id != self.next_batch {
                    return Err(ReceiverError::BatchOutOfOrder {
                        expected: self.next_batch,
                        got: batch.id,
                    });
                }
                batch.check()?;
                self.next_batch = batch.id.next();
                self.pending.push_back((batch.id, batch.events));
                Ok(Some(BatchIn {
                    id: batch.id,
                    possible_duplicate: batch.possible_duplicate,
                    events: batch.events,
                    records: batch.records,
                }))
            }
            (State::Connected, Frame::Ping(nonce)) => {
                self.events
                    .push_back(ReceiverEvent::Transmit(frame::pong_frame(nonce).to_vec()));
                Ok(None)
            }
            (_, other) => Err(ReceiverError::UnexpectedFrame { kind: other.kind() }),
        }
    }

    fn handle_hello(&mut self, hello: &Hello<'_>) {
        let own = self.config.site;
        if hello.sender_site == own {
            return self.refuse(
                RefuseReason::SameSite,
                format!(
                    "a gateway sender cannot connect to its own distributed system: sender {} of site {} reached a receiver of the same site",
                    hello.member, hello.sender_site
                ),
            );
        }
        if hello.receiver_site != own {
            return self.refuse(
                RefuseReason::WrongSite,
                format!(
                    "sender {} of site {} asked for site {}; this receiver is of site {own}",
                    hello.member, hello.sender_site, hello.receiver_site
                ),
            );
        }
        if let Err(text) = check_regions(hello) {
            return self.refuse(RefuseReason::MalformedHello, text);
        }
        let mut out = Vec::new();
        let reply = Frame::HelloReply(HelloReply {
            receiver_site: own,
            member: &self.config.member,
            maximum_time_between_pings_ms: self.config.maximum_time_between_pings_ms,
            refusal: None,
        });
        if let Err(error) = reply.encode(&mut out) {
            return self.refuse(RefuseReason::MalformedHello, error.to_string());
        }
        self.state = State::Connected;
        self.events.push_back(ReceiverEvent::Transmit(out));
        self.events.push_back(ReceiverEvent::Connected(HelloInfo {
            sender_site: hello.sender_site,
            member: hello.member.to_owned(),
            sender_id: hello.sender_id.to_owned(),
            regions: hello.regions.iter().map(RegionSpec::from).collect(),
        }));
    }

    /// Queues a refusing HelloReply and closes.
    fn refuse(&mut self, reason: RefuseReason, text: String) {
        let text = cut(&text, frame::REFUSAL_TEXT_BYTES_MAX).to_owned();
        let mut out = Vec::new();
        let reply = Frame::HelloReply(HelloReply {
            receiver_site: self.config.site,
            member: cut(&self.config.member, frame::NAME_BYTES_MAX),
            maximum_time_between_pings_ms: self.config.maximum_time_between_pings_ms,
            refusal: Some(Refusal {
                reason,
                text: &text,
            }),
        });
        // Both strings were cut to their limits, so encoding cannot fail.
        if reply.encode(&mut out).is_ok() {
            self.events.push_back(ReceiverEvent::Transmit(out));
        }
        self.close(ReceiverError::Refused { reason, text });
    }

    fn close(&mut self, error: ReceiverError) {
        self.state = State::Closed;
        self.events.push_back(ReceiverEvent::Closed(error));
    }
}

/// Checks a Hello's region table: every `total_num_buckets` in 1..=[`BUCKETS_MAX`], no region
/// id or name twice. The error names the field and the region.
fn check_regions(hello: &Hello<'_>) -> Result<(), String> {
    let (mut ids, mut names) = (BTreeSet::new(), BTreeSet::new());
    for r in hello.regions.iter() {
        if !(1..=BUCKETS_MAX).contains(&r.total_num_buckets) {
            return Err(format!(
                "sender {}: region {} (id {}) has total_num_buckets {}, out of range 1..={BUCKETS_MAX}",
                hello.member, r.name, r.id.0, r.total_num_buckets
            ));
        }
        if !ids.insert(r.id) {
            return Err(format!(
                "sender {}: region id {} appears twice in the region table",
                hello.member, r.id.0
            ));
        }
        if !names.insert(r.name) {
            return Err(format!(
                "sender {}: region name {} appears twice in the region table",
                hello.member, r.name
            ));
        }
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
