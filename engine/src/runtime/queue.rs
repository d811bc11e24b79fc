//! The shards' command queues: crossbeam's bounded channel (lock-free array queue) with a
//! receiver that goes to sleep without spinning through `sched_yield`.
//!
//! crossbeam's blocking `recv` spins briefly, then calls `sched_yield` four times, then
//! does both again in its wait before it sleeps. An engine thread waits for nearly every
//! command when commands come a millisecond or so apart, and on cores that are busy (the
//! fan-out's writer, a load client, nats-server) each yield hands the core to another
//! thread and takes it back a moment later by preempting it: at 1,000 commands/s
//! `perf stat` counted about 1,900 `sched_yield` calls a second on each engine thread
//! (the engine node's and the gateway's replica's), and the gateway's writer was preempted
//! 6,500 times a second (docs/BENCHMARKS.md). Here a receiver with nothing to take
//! says it is asleep, looks once more, and parks; a sender that sees it asleep unparks
//! it. The sender's extra cost is one fence and one load of a flag that changes only when
//! the receiver sleeps or wakes.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};
pub(crate) use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError, TrySendError};

/// A bounded queue of `capacity` items (at least one).
pub(crate) fn bounded<T>(capacity: usize) -> (QueueTx<T>, QueueRx<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let bell = Arc::new(Bell::default());
    (QueueTx { tx: Some(tx), bell: Arc::clone(&bell) }, QueueRx { rx, bell })
}

/// How a sender wakes a sleeping receiver.
#[derive(Debug, Default)]
struct Bell {
    /// The receiver is about to park, or parked.
    asleep: AtomicBool,
    /// The thread that parks (set before `asleep`).
    thread: Mutex<Option<Thread>>,
}

impl Bell {
    /// After an item was queued (or the last sender went away): wakes the receiver if it
    /// sleeps.
    fn ring(&self) {
        // Pairs with the fence in `QueueRx::sleep`: either the receiver's last look at the
        // queue finds the item, or this load finds it asleep (and its thread stored).
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) {
            if let Some(thread) = &*self.thread.lock().unwrap_or_else(|e| e.into_inner()) {
                thread.unpark();
            }
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Debug)]
pub(crate) struct QueueTx<T> {
    /// `None` only while dropping (so the bell rings after the channel may be closed).
    tx: Option<Sender<T>>,
    bell: Arc<Bell>,
}

impl<T> QueueTx<T> {
    fn sender(&self) -> &Sender<T> {
        self.tx.as_ref().expect("a sender is only taken out while it is dropped")
    }

    /// Queues `item` if there is room, without blocking.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.sender().try_send(item)?;
        self.bell.ring();
        Ok(())
    }

    /// Queues `item`, waiting for room; an error only when the receiver is gone.
    pub(crate) fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.sender().send(item)?;
        self.bell.ring();
        Ok(())
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.sender().len()
    }
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        QueueTx { tx: self.tx.clone(), bell: Arc::clone(&self.bell) }
    }
}

impl<T> Drop for QueueTx<T> {
    fn drop(&mut self) {
        // The last sender closes the channel: a sleeping receiver must wake to see it.
        drop(self.tx.take());
        self.bell.ring();
    }
}

/// The receiving side: one thread receives at a time.
#[derive(Debug)]
pub(crate) struct QueueRx<T> {
    rx: Receiver<T>,
    bell: Arc<Bell>,
}

impl<T> QueueRx<T> {
    /// An item if one is waiting.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// The next item, sleeping until it comes; an error once every sender is gone.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.sleep(None) {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
        }
    }

    /// The next item if it comes within `timeout`.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.sleep(deadline) {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(RecvTimeoutError::Timeout);
                    }
                }
            }
        }
    }

    /// Takes an item if one is waiting; otherwise parks once (until a sender rings, the
    /// deadline, or a spurious wake-up) and takes one if it came.
    fn sleep(&self, deadline: Option<Instant>) -> Result<T, TryRecvError> {
        match self.rx.try_recv() {
            Err(TryRecvError::Empty) => {}
            taken => return taken,
        }
        {
            let mut thread = self.bell.thread.lock().unwrap_or_else(|e| e.into_inner());
            let me = std::thread::current();
            if thread.as_ref().map(Thread::id) != Some(me.id()) {
                *thread = Some(me);
            }
        }
        self.bell.asleep.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Bell::ring`.
        fence(Ordering::SeqCst);
        let taken = match self.rx.try_recv() {
            Err(TryRecvError::Empty) => {
                match deadline {
                    None => std::thread::park(),
                    Some(d) => {
                        std::thread::park_timeout(d.saturating_duration_since(Instant::now()))
                    }
                }
                self.rx.try_recv()
            }
            taken => taken,
        };
        self.bell.asleep.store(false, Ordering::Relaxed);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-offs one at a time, each to a receiver that has gone to sleep: none is lost
    /// (a lost wake-up would hang here, and the test harness would report it).
    #[test]
    fn every_item_wakes_a_sleeping_receiver() {
        let (tx, rx) = bounded::<u64>(4);
        let (back_tx, back_rx) = crossbeam_channel::bounded::<u64>(1);
        let receiver = std::thread::spawn(move || {
            while let Ok(n) = rx.recv() {
                back_tx.send(n).expect("the test waits for it");
            }
        });
        for n in 0..20_000u64 {
            tx.send(n).expect("receiver running");
            assert_eq!(back_rx.recv_timeout(Duration::from_secs(10)), Ok(n), "item {n}");
        }
        drop(tx);
        receiver.join().expect("the receiver ends once the sender is gone");
    }

    #[test]
    fn several_senders_lose_nothing_and_the_last_one_gone_ends_the_receiver() {
        let (tx, rx) = bounded::<u64>(8);
        let senders: Vec<_> = (0..3u64)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u64 {
                        // A full queue is retried, as the engine's submitters do.
                        let mut item = s * 1_000_000 + n;
                        while let Err(TrySendError::Full(back)) = tx.try_send(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut sum = 0u64;
        let mut count = 0u64;
        while let Ok(n) = rx.recv() {
            sum += n;
            count += 1;
        }
        for s in senders {
            s.join().expect("sender");
        }
        assert_eq!(count, 30_000);
        let expected: u64 = (0..3u64).map(|s| s * 1_000_000 * 10_000 + 10_000 * 9_999 / 2).sum();
        assert_eq!(sum, expected);
    }

    #[test]
    fn a_timeout_is_a_timeout_and_an_item_in_time_is_taken() {
        let (tx, rx) = bounded::<u8>(1);
        assert_eq!(rx.recv_timeout(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).expect("receiver waiting");
            tx
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
        drop(sender.join().expect("sender"));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected));
        assert_eq!(rx.recv(), Err(RecvError));
    }
}
