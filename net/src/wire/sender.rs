//! One gateway sender connection, as a pure state machine (`docs/wan.md` "Sender connection
//! state machine").
//!
//! ```text
//! new ──SendHello──▶ Handshaking ──HelloReply(accepted)──▶ Connected ──error/timeout──▶ Closed
//!                         │                                   ▲   │ handle_batch, Ack, Ping/Pong
//!                         └──refused / wrong site──▶ Closed    └───┘
//! ```
//!
//! The shell writes what [`SenderEvent::SendHello`] and [`SenderEvent::SendPing`] carry, and
//! for each batch the prefix [`SenderConn::handle_batch`] returns followed by the records from
//! the queue; it passes what the socket reads to [`SenderConn::handle_bytes`] and wakes the
//! connection at [`SenderConn::next_deadline_ms`]. On [`SenderEvent::Failed`] it closes the
//! socket, resets every queue named in the failure's in-flight batches (they are resent marked
//! possible-duplicate) and reconnects.

use std::collections::VecDeque;

use strait_queue::ids::{QueueId, Seq, SiteId};

use super::frame::{
    self, BATCH_PREFIX_BYTES, DeadLetter, EncodeError, Frame, FrameError, FrameKind, Hello,
    PING_FRAME_BYTES, RefuseReason, Regions,
};
use super::{BatchId, PingNonce, RegionSpec};

/// Default of [`SenderConfig::inflight_batches_max`].
pub const INFLIGHT_BATCHES_MAX_DEFAULT: usize = 8;
/// Largest [`SenderConfig::inflight_batches_max`] accepted.
pub const INFLIGHT_BATCHES_MAX: usize = 1024;
/// Default of [`SenderConfig::ack_timeout_ms`] (Geode's smallest non-zero
/// `socket-read-timeout`).
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// What a sender connection needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// This sender's own site.
    pub site: SiteId,
    /// The site this connection means to reach.
    pub receiver_site: SiteId,
    /// This member's name.
    pub member: String,
    /// The gateway sender's id.
    pub sender_id: String,
    /// Every region index the sender's records use.
    pub regions: Vec<RegionSpec>,
    /// Most batches sent and not yet acknowledged; 1..=[`INFLIGHT_BATCHES_MAX`]. Ignored when
    /// [`SenderConfig::inflight_events_max`] is set.
    pub inflight_batches_max: usize,
    /// When set, the window counts events instead of batches: another batch may be sent while
    /// fewer than this many events are in flight, however many batches carry them (at most
    /// [`INFLIGHT_BATCHES_MAX`]). A sender with many queues sends small batches (each holds
    /// one queue's records), and a window of whole batches would then hold few events.
    pub inflight_events_max: Option<u64>,
    /// How long a batch, the hello or a ping may wait for its answer.
    pub ack_timeout_ms: u64,
    /// Ping after sending nothing for this long; `None`: a third of the receiver's
    /// `maximum-time-between-pings`.
    pub ping_interval_ms: Option<u64>,
}

impl SenderConfig {
    /// A configuration with the default window, ack timeout and ping interval.
    pub fn new(
        site: SiteId,
        receiver_site: SiteId,
        member: impl Into<String>,
        sender_id: impl Into<String>,
        regions: Vec<RegionSpec>,
    ) -> Self {
        SenderConfig {
            site,
            receiver_site,
            member: member.into(),
            sender_id: sender_id.into(),
            regions,
            inflight_batches_max: INFLIGHT_BATCHES_MAX_DEFAULT,
            inflight_events_max: None,
            ack_timeout_ms: ACK_TIMEOUT_MS_DEFAULT,
            ping_interval_ms: None,
        }
    }
}

/// A batch the shell is about to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOut {
    /// The queue the records come from.
    pub queue: QueueId,
    /// The sequence number of the batch's first record.
    pub first_seq: Seq,
    /// The sequence number of its last record; acknowledging the batch releases up to it.
    pub last_seq: Seq,
    /// How many records follow (superseded ones are not sent, so it can be fewer than the
    /// sequence range).
    pub events: u32,
    /// Their total length in bytes.
    pub records_len: usize,
    pub possible_duplicate: bool,
}

/// A batch sent and not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightBatch {
    pub id: BatchId,
    pub queue: QueueId,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub events: u32,
    /// When [`SenderConn::handle_batch`] was called for it.
    pub sent_ms: u64,
}

/// An acknowledged batch: the shell releases `queue` up to `upto_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedBatch {
    pub batch: BatchId,
    pub queue: QueueId,
    pub first_seq: Seq,
    pub upto_seq: Seq,
    pub events: u32,
    pub applied: u32,
    pub duplicates: u32,
    pub conflicts: u32,
    /// Events the receiver kept in its dead-letter log; delivered as far as the sender goes.
    pub dead_letters: Vec<DeadLetter<'static>>,
}

/// What the shell should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// Write the Hello frame (first event of every connection).
    SendHello(Vec<u8>),
    /// The receiver accepted: batches may be sent.
    Connected {
        receiver_site: SiteId,
        member: String,
        maximum_time_between_pings_ms: u32,
        /// The ping interval in force.
        ping_interval_ms: u64,
    },
    /// The receiver refused, or is not one this sender may talk to: a configuration problem
    /// ([`SenderError::Refused`], [`SenderError::SameSite`] or [`SenderError::WrongSite`]).
    /// Nothing was in flight. Close the socket.
    Refused(SenderError),
    /// A batch was acknowledged, in batch order.
    Acked(AckedBatch),
    /// Write this Ping frame.
    SendPing([u8; PING_FRAME_BYTES]),
    /// The connection is over: close the socket, reset the queues of `inflight` (resend
    /// them marked possible-duplicate) and reconnect.
    Failed {
        error: SenderError,
        inflight: Vec<InflightBatch>,
    },
}

/// Why a sender connection ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error(
        "a gateway sender cannot connect to its own distributed system: receiver {member} is of site {site}, this sender's own site"
    )]
    SameSite { site: SiteId, member: String },
    #[error(
        "receiver {member} is of site {actual}, not of site {expected} that this sender targets"
    )]
    WrongSite {
        expected: SiteId,
        actual: SiteId,
        member: String,
    },
    #[error("receiver {member} of site {site} refused the connection ({reason:?}): {text}")]
    Refused {
        reason: RefuseReason,
        site: SiteId,
        member: String,
        text: String,
    },
    #[error("no hello reply within {waited_ms} ms")]
    HandshakeTimeout { waited_ms: u64 },
    #[error("batch {batch} was not acknowledged within {waited_ms} ms")]
    AckTimeout { batch: BatchId, waited_ms: u64 },
    #[error("ping {nonce} was not answered within {waited_ms} ms")]
    PingTimeout { nonce: PingNonce, waited_ms: u64 },
    #[error("the receiver sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("the receiver sent a {kind} frame while the connection is {state}")]
    UnexpectedFrame {
        kind: FrameKind,
        state: &'static str,
    },
    #[error("the receiver acknowledged batch {got}, expected {expected:?} (the oldest in flight)")]
    UnexpectedAck {
        expected: Option<BatchId>,
        got: BatchId,
    },
    #[error("the ack of batch {batch} accounts for {accounted} events, the batch has {events}")]
    AckCountMismatch {
        batch: BatchId,
        events: u32,
        accounted: u64,
    },
    #[error("the ack of batch {batch} dead-letters event {index}, the batch has {events}")]
    DeadLetterIndex {
        batch: BatchId,
        index: u32,
        events: u32,
    },
    #[error("the receiver answered ping {got}, expected {expected:?}")]
    UnexpectedPong {
        expected: Option<PingNonce>,
        got: PingNonce,
    },
}

/// Why [`SenderConn::new`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SenderConfigError {
    #[error("inflight-batches-max {0} is outside 1..={INFLIGHT_BATCHES_MAX}")]
    InflightBatchesMax(usize),
    #[error("inflight-events-max must be at least 1")]
    InflightEventsMax,
    #[error("ack-timeout must be at least 1 ms")]
    AckTimeout,
    #[error("ping-interval must be at least 1 ms")]
    PingInterval,
    #[error("the hello cannot be encoded: {0}")]
    Hello(#[from] EncodeError),
}

/// Why [`SenderConn::handle_batch`] refused a batch: the shell's mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the connection is not connected")]
    NotConnected,
    #[error("{0} batches are already in flight")]
    WindowFull(usize),
    #[error("a batch must carry at least one event")]
    Empty,
    #[error("{events} events do not fit sequence numbers {first_seq}..={last_seq}")]
    BadRange {
        first_seq: Seq,
        last_seq: Seq,
        events: u32,
    },
    #[error("the batch cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Handshaking { hello_sent_ms: u64 },
    Connected { ping_interval_ms: u64 },
    Closed,
}

/// One sender connection. See the module docs.
#[derive(Debug)]
pub struct SenderConn {
    config: SenderConfig,
    state: State,
    events: VecDeque<SenderEvent>,
    inflight: VecDeque<InflightBatch>,
    /// Events of the batches in `inflight`.
    inflight_events: u64,
    next_batch: BatchId,
    /// When the last frame was handed to the shell to write.
    last_sent_ms: u64,
    /// The unanswered ping and when it was sent.
    ping: Option<(PingNonce, u64)>,
    next_nonce: PingNonce,
}

impl SenderConn {
    /// A new connection; its first event is [`SenderEvent::SendHello`].
    pub fn new(config: SenderConfig, now_ms: u64) -> Result<Self, SenderConfigError> {
        if !(1..=INFLIGHT_BATCHES_MAX).contains(&config.inflight_batches_max) {
            return Err(SenderConfigError::InflightBatchesMax(
                config.inflight_batches_max,
            ));
        }
        if config.inflight_events_max == Some(0) {
            return Err(SenderConfigError::InflightEventsMax);
        }
        if config.ack_timeout_ms == 0 {
            return Err(SenderConfigError::AckTimeout);
        }
        if config.ping_interval_ms == Some(0) {
            return Err(SenderConfigError::PingInterval);
        }
        let entries: Vec<_> = config.regions.iter().map(RegionSpec::entry).collect();
        let mut hello = Vec::new();
        Frame::Hello(Hello {
            sender_site: config.site,
            receiver_site: config.receiver_site,
            member: &config.member,
            sender_id: &config.sender_id,
            regions: Regions::List(&entries),
        })
        .encode(&mut hello)?;
        let mut events = VecDeque::new();
        events.push_back(SenderEvent::SendHello(hello));
        Ok(SenderConn {
            inflight: VecDeque::with_capacity(config.inflight_batches_max),
            inflight_events: 0,
            config,
            state: State::Handshaking {
                hello_sent_ms: now_ms,
            },
            events,
            next_batch: BatchId::FIRST,
            last_sent_ms: now_ms,
            ping: None,
            next_nonce: PingNonce(1),
        })
    }

    /// Whether the connection is accepted and the window has room for another batch.
    pub fn can_send(&self) -> bool {
        matches!(self.state, State::Connected { .. }) && !self.window_full()
    }

    /// Whether the window is full: [`SenderConfig::inflight_batches_max`] batches in flight,
    /// or with [`SenderConfig::inflight_events_max`] that many events (or
    /// [`INFLIGHT_BATCHES_MAX`] batches).
    fn window_full(&self) -> bool {
        match self.config.inflight_events_max {
            None => self.inflight.len() >= self.config.inflight_batches_max,
            Some(events) => {
                self.inflight.len() >= INFLIGHT_BATCHES_MAX || self.inflight_events >= events
            }
        }
    }

    /// Whether the connection is over (refused or failed).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The batches sent and not yet acknowledged, oldest first.
    pub fn inflight(&self) -> impl ExactSizeIterator<Item = &InflightBatch> {
        self.inflight.iter()
    }

    /// Records a batch the shell is about to write, and returns its id and the bytes to write
    /// before its records.
    pub fn handle_batch(
        &mut self,
        batch: BatchOut,
        now_ms: u64,
    ) -> Result<(BatchId, [u8; BATCH_PREFIX_BYTES]), SendError> {
        if !matches!(self.state, State::Connected { .. }) {
            return Err(SendError::NotConnected);
        }
        if self.window_full() {
            return Err(SendError::WindowFull(self.inflight.len()));
        }
        if batch.events == 0 {
            return Err(SendError::Empty);
        }
        let span = batch
            .last_seq
            .0
            .checked_sub(batch.first_seq.0)
            .and_then(|d| d.checked_add(1));
        if batch.first_seq.0 == 0 || span.is_none_or(|span| u64::from(batch.events) > span) {
            return Err(SendError::BadRange {
                first_seq: batch.first_seq,
                last_seq: batch.last_seq,
                events: batch.events,
            });
        }
        let id = self.next_batch;
        let prefix = frame::batch_prefix(
            id,
            batch.events,
            batch.records_len,
            batch.possible_duplicate,
        )?;
        self.next_batch = id.next();
        self.inflight_events += u64::from(batch.events);
        self.inflight.push_back(InflightBatch {
            id,
            queue: batch.queue,
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            events: batch.events,
            sent_ms: now_ms,
        });
        self.last_sent_ms = now_ms;
        Ok((id, prefix))
    }

    /// Takes in bytes the socket read, and returns how many were consumed: every whole frame
    /// at the front of `buf`. Keep the rest and pass it again, followed by the next read.
    pub fn handle_bytes(&mut self, buf: &[u8], now_ms: u64) -> usize {
        let mut at = 0;
        while self.state != State::Closed {
            match frame::decode_frame(&buf[at..]) {
                Ok(None) => break,
                Ok(Some((frame, consumed))) => {
                    at += consumed;
                    if let Err(error) = self.handle_frame(frame, now_ms) {
                        self.fail(error);
                    }
                }
                Err(error) => self.fail(error.into()),
            }
        }
        at
    }

    /// Takes in the passing of time: fails on an ack, hello or ping timeout, and pings when
    /// nothing was sent for the ping interval.
    pub fn handle_timer(&mut self, now_ms: u64) {
        let timeout = self.config.ack_timeout_ms;
        match self.state {
            State::Closed => {}
            State::Handshaking { hello_sent_ms } => {
                if now_ms >= hello_sent_ms.saturating_add(timeout) {
                    self.fail(SenderError::HandshakeTimeout {
                        waited_ms: now_ms - hello_sent_ms,
                    });
                }
            }
            State::Connected { ping_interval_ms } => {
                if let Some(oldest) = self.inflight.front()
                    && now_ms >= oldest.sent_ms.saturating_add(timeout)
                {
                    let error = SenderError::AckTimeout {
                        batch: oldest.id,
                        waited_ms: now_ms - oldest.sent_ms,
                    };
                    return self.fail(error);
                }
                match self.ping {
                    Some((nonce, sent_ms)) if now_ms >= sent_ms.saturating_add(timeout) => {
                        self.fail(SenderError::PingTimeout {
                            nonce,
                            waited_ms: now_ms - sent_ms,
                        });
                    }
                    Some(_) => {}
                    None => {
                        if now_ms >= self.last_sent_ms.saturating_add(ping_interval_ms) {
                            let nonce = self.next_nonce;
                            self.next_nonce = PingNonce(nonce.0.wrapping_add(1));
                            self.ping = Some((nonce, now_ms));
                            self.last_sent_ms = now_ms;
                            self.events
                                .push_back(SenderEvent::SendPing(frame::ping_frame(nonce)));
                        }
                    }
                }
            }
        }
    }

    /// When [`SenderConn::handle_timer`] next has something to do; `None` once closed.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let timeout = self.config.ack_timeout_ms;
        match self.state {
            State::Closed => None,
            State::Handshaking { hello_sent_ms } => Some(hello_sent_ms.saturating_add(timeout)),
            State::Connected { ping_interval_ms } => {
                let ack = self
                    .inflight
                    .front()
                    .map(|b| b.sent_ms.saturating_add(timeout));
                let ping = match self.ping {
                    Some((_, sent_ms)) => sent_ms.saturating_add(timeout),
                    None => self.last_sent_ms.saturating_add(ping_interval_ms),
                };
                Some(ack.map_or(ping, |ack| ack.min(ping)))
            }
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    fn handle_frame(&mut self, frame: Frame<'_>, now_ms: u64) -> Result<(), SenderError> {
        match (&self.state, frame) {
            (State::Handshaking { .. }, Frame::HelloReply(reply)) => {
                let member = reply.member.to_owned();
                let site = reply.receiver_site;
                let refused = match reply.refusal {
                    Some(r) if r.reason == RefuseReason::SameSite => {
                        Some(SenderError::SameSite { site, member })
                    }
                    Some(r) => Some(SenderError::Refused {
                        reason: r.reason,
                        site,
                        member,
                        text: r.text.to_owned(),
                    }),
                    None if site == self.config.site => {
                        Some(SenderError::SameSite { site, member })
                    }
                    None if site != self.config.receiver_site => Some(SenderError::WrongSite {
                        expected: self.config.receiver_site,
                        actual: site,
                        member,
                    }),
                    None => None,
                };
                if let Some(error) = refused {
                    self.state = State::Closed;
                    self.events.push_back(SenderEvent::Refused(error));
                    return Ok(());
                }
                let ping_interval_ms = self
                    .config
                    .ping_interval_ms
                    .unwrap_or_else(|| u64::from(reply.maximum_time_between_pings_ms / 3).max(1));
                self.state = State::Connected { ping_interval_ms };
                self.last_sent_ms = now_ms;
                self.events.push_back(SenderEvent::Connected {
                    receiver_site: site,
                    member: reply.member.to_owned(),
                    maximum_time_between_pings_ms: reply.maximum_time_between_pings_ms,
                    ping_interval_ms,
                });
                Ok(())
            }
            (State::Connected { .. }, Frame::Ack(ack)) => {
                let Some(oldest) = self.inflight.front().copied() else {
                    return Err(SenderError::UnexpectedAck {
                        expected: None,
                        got: ack.batch,
                    });
                };
                if ack.batch != oldest.id {
                    return Err(SenderError::UnexpectedAck {
                        expected: Some(oldest.id),
                        got: ack.batch,
                    });
                }
                let accounted = u64::from(ack.applied)
                    + u64::from(ack.duplicates)
                    + u64::from(ack.conflicts)
                    + ack.dead_letters.len() as u64;
                if accounted != u64::from(oldest.events) {
                    return Err(SenderError::AckCountMismatch {
                        batch: oldest.id,
                        events: oldest.events,
                        accounted,
                    });
                }
                let mut dead_letters = Vec::with_capacity(ack.dead_letters.len());
                for d in ack.dead_letters.iter() {
                    if d.index >= oldest.events {
                        return Err(SenderError::DeadLetterIndex {
                            batch: oldest.id,
                            index: d.index,
                            events: oldest.events,
                        });
                    }
                    dead_letters.push(d.into_owned());
                }
                self.inflight.pop_front();
                self.inflight_events -= u64::from(oldest.events);
                self.events.push_back(SenderEvent::Acked(AckedBatch {
                    batch: oldest.id,
                    queue: oldest.queue,
                    first_seq: oldest.first_seq,
                    upto_seq: oldest.last_seq,
                    events: oldest.events,
                    applied: ack.applied,
                    duplicates: ack.duplicates,
                    conflicts: ack.conflicts,
                    dead_letters,
                }));
                Ok(())
            }
            (State::Connected { .. }, Frame::Pong(nonce)) => match self.ping {
                Some((expected, _)) if expected == nonce => {
                    self.ping = None;
                    Ok(())
                }
                other => Err(SenderError::UnexpectedPong {
                    expected: other.map(|(n, _)| n),
                    got: nonce,
                }),
            },
            (state, frame) => Err(SenderError::UnexpectedFrame {
                kind: frame.kind(),
                state: match state {
                    State::Handshaking { .. } => "waiting for the hello reply",
                    State::Connected { .. } => "connected",
                    State::Closed => "closed",
                },
            }),
        }
    }

    fn fail(&mut self, error: SenderError) {
        self.state = State::Closed;
        self.ping = None;
        let inflight = self.inflight.drain(..).collect();
        self.inflight_events = 0;
        self.events
            .push_back(SenderEvent::Failed { error, inflight });
    }
}
