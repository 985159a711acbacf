//! The sender end of a WAN link between a sender's queues on one shard and its connection,
//! as pure steps (time passed in, bytes and outcomes out). `engine/node/src/wan.rs`
//! (`run_link`) does the same around sockets; the simulator (`engine/sim`) runs these.
//!
//! | item | what it does |
//! |---|---|
//! | [`next_batch`] | peeks the sender's queues round-robin from a cursor: the next batch to send |
//! | [`send_batch`] | registers a batch with the [`SenderConn`] and returns the bytes to write: its prefix and the records as the queue holds them |
//! | [`handle_event`] → [`LinkStep`] | carries out one [`SenderEvent`] on the queue: an ack releases its events |
//! | [`reset_all`] | after a failed connection: every peeked, unacknowledged event is resent, marked possible-duplicate |

use strait_net::wire::{BatchOut, SendError, SenderConn, SenderEvent};
use strait_queue::ids::{QueueId, Seq};
use strait_queue::queue::{AckError, Batch, ReadError, SenderQueue};

/// Most bytes of records in one batch (the node's `BATCH_BYTES_MAX`).
pub const BATCH_BYTES_MAX: u64 = 4 << 20;

/// The next batch of at most `events_max` events from the sender's queues, looking at each
/// queue in turn from `cursor` (which moves past the queue that gave one). A queue whose
/// records do not read back is skipped and its error returned beside the batch.
pub fn next_batch(
    queue: &mut SenderQueue,
    cursor: &mut u16,
    events_max: u32,
) -> (Option<Batch>, Vec<ReadError>) {
    let count = queue.config().queue_count.max(1);
    let mut errors = Vec::new();
    for i in 0..count {
        let id = QueueId(((u32::from(*cursor) + u32::from(i)) % u32::from(count)) as u16);
        match queue.peek(id, events_max.max(1), BATCH_BYTES_MAX) {
            Ok(Some(b)) => {
                *cursor = ((u32::from(id.0) + 1) % u32::from(count)) as u16;
                return (Some(b), errors);
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (None, errors)
}

/// What the connection is told of a batch peeked from a queue.
pub fn wire_batch(batch: &Batch) -> BatchOut {
    BatchOut {
        queue: batch.queue,
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        events: batch.events,
        records_len: batch.bytes as usize,
        possible_duplicate: batch.possible_duplicate,
    }
}

/// Registers `batch` with `conn` and returns the bytes to write for it: the frame prefix,
/// then the records as the queue holds them.
pub fn send_batch(
    conn: &mut SenderConn,
    queue: &SenderQueue,
    batch: &Batch,
    now_ms: u64,
) -> Result<Vec<u8>, SendError> {
    let (_, prefix) = conn.handle_batch(wire_batch(batch), now_ms)?;
    let mut bytes = Vec::with_capacity(prefix.len() + batch.bytes as usize);
    bytes.extend_from_slice(&prefix);
    for slice in queue.batch_slices(batch) {
        bytes.extend_from_slice(slice);
    }
    Ok(bytes)
}

/// What one [`SenderEvent`] came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStep {
    /// Write these bytes (the hello, a ping).
    Write(Vec<u8>),
    /// The receiver accepted the connection.
    Connected,
    /// A batch was acknowledged and its events released from `queue` up to `upto`;
    /// `dead_letters` of them were kept by the receiver.
    Acked {
        queue: QueueId,
        upto: Seq,
        released: u64,
        dead_letters: usize,
    },
    /// The receiver refused the connection: close it, retry at the longest backoff.
    Refused(String),
    /// The connection is over: close it, [`reset_all`], reconnect.
    Failed(String),
}

/// Carries out `event` on `queue`. An ack the queue refuses ends the connection.
pub fn handle_event(queue: &mut SenderQueue, event: SenderEvent) -> LinkStep {
    match event {
        SenderEvent::SendHello(bytes) => LinkStep::Write(bytes),
        SenderEvent::SendPing(bytes) => LinkStep::Write(bytes.to_vec()),
        SenderEvent::Connected { .. } => LinkStep::Connected,
        SenderEvent::Refused(e) => LinkStep::Refused(e.to_string()),
        SenderEvent::Failed { error, .. } => LinkStep::Failed(error.to_string()),
        SenderEvent::Acked(a) => match queue.ack(a.queue, a.upto_seq) {
            Ok(released) => LinkStep::Acked {
                queue: a.queue,
                upto: a.upto_seq,
                released,
                dead_letters: a.dead_letters.len(),
            },
            Err(e @ (AckError::UnknownQueue(_) | AckError::NotPeeked { .. })) => {
                LinkStep::Failed(format!("acknowledging queue {}: {e}", a.queue.0))
            }
        },
    }
}

/// Makes every peeked, unacknowledged event of every queue of the sender unpeeked again, so
/// the next connection resends it marked possible-duplicate.
pub fn reset_all(queue: &mut SenderQueue) {
    for q in 0..queue.config().queue_count {
        queue.reset(QueueId(q));
    }
}
