//! Cross-shard mailboxes: how one shard hands operations to another and gets the replies back.
//!
//! - [`channel`] makes a [`MailSender`] / [`MailReceiver`] pair: an unbounded FIFO queue
//!   (`std::sync::mpsc`, lock-free) plus a bell (an `AtomicWaker`) that wakes the receiving
//!   task after every send and when the last sender goes.
//!
//! Why not glommio's `shared_channel`: its receiver notifies the sending executor each time
//! it takes an item (there is room again), which writes that executor's eventfd whenever it
//! sleeps. A shard that forwarded a client's write sleeps until the reply, so every forwarded
//! write woke it once for nothing, and the reply came back the same way. Here a send wakes
//! only the receiving task (glommio's foreign wake writes the eventfd only when that executor
//! sleeps), and taking an item wakes no one.
//!
//! The queue is unbounded: every sender waits for the replies to what it sent before it sends
//! again (a client connection per read, a gateway receiver per batch), so what a mailbox holds
//! is bounded by the senders in flight, each bounded by its own read buffer.

use futures_util::task::AtomicWaker;
use std::sync::{Arc, mpsc};
use std::task::Poll;

/// The sending end.
#[derive(Debug)]
pub(crate) struct MailSender<T> {
    /// `None` only while being dropped.
    queue: Option<mpsc::Sender<T>>,
    bell: Arc<AtomicWaker>,
}

/// The receiving end; it lives on one shard.
#[derive(Debug)]
pub(crate) struct MailReceiver<T> {
    queue: mpsc::Receiver<T>,
    bell: Arc<AtomicWaker>,
}

/// A new mailbox.
pub(crate) fn channel<T>() -> (MailSender<T>, MailReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let bell = Arc::new(AtomicWaker::new());
    (
        MailSender {
            queue: Some(tx),
            bell: bell.clone(),
        },
        MailReceiver { queue: rx, bell },
    )
}

impl<T> MailSender<T> {
    /// Queues `item` and wakes the receiving task; never waits. `Err(item)` once the receiver
    /// is gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        let Some(queue) = &self.queue else {
            return Err(item);
        };
        queue.send(item).map_err(|e| e.0)?;
        self.bell.wake();
        Ok(())
    }
}

impl<T> Drop for MailSender<T> {
    fn drop(&mut self) {
        // The queue end goes first, so the woken receiver sees the disconnection.
        drop(self.queue.take());
        self.bell.wake();
    }
}

impl<T> MailReceiver<T> {
    /// The next item in send order; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&self) -> Option<T> {
        std::future::poll_fn(|cx| {
            if let Some(done) = self.poll_once() {
                return Poll::Ready(done);
            }
            // Register, then look again: a send between the two looks wakes this task.
            self.bell.register(cx.waker());
            match self.poll_once() {
                Some(done) => Poll::Ready(done),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// `Some(Some(item))`, `Some(None)` when disconnected, `None` when empty for now.
    fn poll_once(&self) -> Option<Option<T>> {
        match self.queue.try_recv() {
            Ok(item) => Some(Some(item)),
            Err(mpsc::TryRecvError::Disconnected) => Some(None),
            Err(mpsc::TryRecvError::Empty) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Duration;

    /// Runs `f` on an executor of its own thread, failing after `deadline`.
    fn on_executor<F, Fut>(name: &str, deadline: Duration, f: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let name = name.to_string();
        std::thread::spawn(move || {
            let ex = LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(1 << 20)
                .name(&name)
                .make()
                .expect("executor");
            ex.run(async move {
                glommio::timer::timeout(deadline, async {
                    f().await;
                    Ok(())
                })
                .await
                .expect("within the deadline")
            })
        })
    }

    #[test]
    fn items_arrive_in_order_across_executors_and_the_end_is_seen() {
        let (tx, rx) = channel::<u64>();
        let deadline = Duration::from_secs(20);
        // Request and reply across two executors, as a forwarded write does: the sender waits
        // for each reply (a sleeping receiver must be woken), then sends a burst.
        let (reply_tx, reply_rx) = channel::<u64>();
        let consumer = on_executor("consumer", deadline, move || async move {
            let mut expected = 0;
            while let Some(v) = rx.recv().await {
                assert_eq!(v, expected, "items in send order");
                expected += 1;
                if v < 1000 {
                    reply_tx.send(v * 2).expect("the producer waits");
                }
            }
            assert_eq!(expected, 1000 + 5000, "every item, then the end");
        });
        let producer = on_executor("producer", deadline, move || async move {
            for i in 0..1000 {
                tx.send(i).expect("the consumer runs");
                assert_eq!(reply_rx.recv().await, Some(i * 2));
            }
            for i in 1000..6000 {
                tx.send(i).expect("the consumer runs");
            }
            drop(tx);
            // The consumer dropped its reply sender when it saw the end.
            assert_eq!(reply_rx.recv().await, None);
        });
        producer.join().expect("producer");
        consumer.join().expect("consumer");
    }

    #[test]
    fn a_send_to_a_dropped_receiver_gives_the_item_back() {
        let (tx, rx) = channel::<&str>();
        drop(rx);
        assert_eq!(tx.send("x"), Err("x"));
    }
}
