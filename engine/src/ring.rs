//! A lock-free single-producer, multi-reader broadcast ring of events.
//!
//! The engine thread is the only writer; any number of readers each keep their own
//! cursor and never block the writer, which never waits for them. A reader that falls
//! more than the capacity behind is told exactly how many events it missed and resumes at
//! the oldest event still in the ring.
//!
//! Each slot is a *seqlock*: a stamp plus the event as [`EVENT_WORDS`] atomic words. The
//! writer marks the slot busy (`2*index + 1`), stores the words, then marks it done
//! (`2*index + 2`); a reader loads the stamp, the words, then the stamp again and keeps
//! the copy only if both stamps are the "done" stamp of the index it wants. All data is
//! in atomics (relaxed loads/stores ordered by the stamp's acquire/release and fences, as
//! in Boehm, "Can seqlocks get along with programming language memory models?", 2012),
//! so there is no `unsafe` and no data race. Publication of the head is batched: the
//! writer stores many events, then publishes the new head once.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::event::{Event, EVENT_WORDS};

struct Slot {
    stamp: AtomicU64,
    words: [AtomicU64; EVENT_WORDS],
}

/// The shared ring. Create with [`EventRing::with_capacity`], which returns the writer.
pub struct EventRing {
    slots: Box<[Slot]>,
    mask: u64,
    /// Index one past the last published event.
    head: CachePadded<AtomicU64>,
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing")
            .field("capacity", &self.slots.len())
            .field("head", &self.head())
            .finish()
    }
}

impl EventRing {
    /// A ring of `capacity` events (rounded up to a power of two, at least 2) and its one
    /// writer.
    pub fn with_capacity(capacity: usize) -> (Arc<EventRing>, RingWriter) {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| Slot { stamp: AtomicU64::new(0), words: Default::default() })
            .collect();
        let ring = Arc::new(EventRing {
            slots,
            mask: capacity as u64 - 1,
            head: CachePadded::new(AtomicU64::new(0)),
        });
        let writer = RingWriter { ring: Arc::clone(&ring), next: 0 };
        (ring, writer)
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Index one past the last published event: the total published so far.
    #[inline]
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// A reader that starts at the next event to be published.
    pub fn reader(self: &Arc<Self>) -> RingReader {
        RingReader { ring: Arc::clone(self), cursor: self.head() }
    }

    /// A reader that starts at the oldest event still in the ring.
    pub fn reader_from_oldest(self: &Arc<Self>) -> RingReader {
        let head = self.head();
        RingReader { ring: Arc::clone(self), cursor: head.saturating_sub(self.capacity()) }
    }

    /// Reads the event at `index` if it is still in its slot.
    #[inline]
    fn read(&self, index: u64) -> Option<Event> {
        let slot = &self.slots[(index & self.mask) as usize];
        let done = 2 * index + 2;
        if slot.stamp.load(Ordering::Acquire) != done {
            return None;
        }
        let mut words = [0u64; EVENT_WORDS];
        for (w, a) in words.iter_mut().zip(&slot.words) {
            *w = a.load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if slot.stamp.load(Ordering::Relaxed) != done {
            return None;
        }
        Event::from_words(&words)
    }
}

/// The ring's only writer (not `Clone`: single producer by construction).
pub struct RingWriter {
    ring: Arc<EventRing>,
    next: u64,
}

impl std::fmt::Debug for RingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingWriter").field("next", &self.next).finish()
    }
}

impl RingWriter {
    /// Stores an event; readers see it after the next [`RingWriter::publish`].
    #[inline(always)]
    pub fn write(&mut self, event: &Event) {
        let index = self.next;
        let slot = &self.ring.slots[(index & self.ring.mask) as usize];
        slot.stamp.store(2 * index + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (a, w) in slot.words.iter().zip(event.to_words()) {
            a.store(w, Ordering::Relaxed);
        }
        slot.stamp.store(2 * index + 2, Ordering::Release);
        self.next = index + 1;
    }

    /// Makes every written event visible to readers.
    #[inline]
    pub fn publish(&mut self) {
        self.ring.head.store(self.next, Ordering::Release);
    }

    /// Events written so far (published or not).
    pub fn written(&self) -> u64 {
        self.next
    }

    /// The ring this writer fills.
    pub fn ring(&self) -> &Arc<EventRing> {
        &self.ring
    }
}

impl crate::engine::EventSink for RingWriter {
    #[inline(always)]
    fn push(&mut self, event: Event) {
        self.write(&event);
    }
}

/// What one [`RingReader::read`] call found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Events appended to the output.
    pub read: usize,
    /// Events that were overwritten before this reader got to them (skipped).
    pub missed: u64,
}

/// One reader's cursor into a ring.
#[derive(Debug)]
pub struct RingReader {
    ring: Arc<EventRing>,
    cursor: u64,
}

impl Clone for RingReader {
    fn clone(&self) -> Self {
        RingReader { ring: Arc::clone(&self.ring), cursor: self.cursor }
    }
}

impl RingReader {
    /// Index of the next event this reader will read.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Events published but not yet read (may exceed the capacity when lapped).
    pub fn lag(&self) -> u64 {
        self.ring.head().saturating_sub(self.cursor)
    }

    /// Appends up to `max` new events to `out`. Never blocks. If the writer lapped this
    /// reader, the overwritten events are skipped and counted in `missed`.
    pub fn read(&mut self, out: &mut Vec<Event>, max: usize) -> ReadOutcome {
        let mut outcome = ReadOutcome::default();
        let capacity = self.ring.capacity();
        let mut head = self.ring.head();
        while outcome.read < max && self.cursor < head {
            if head - self.cursor > capacity {
                let oldest = head - capacity;
                outcome.missed += oldest - self.cursor;
                self.cursor = oldest;
            }
            match self.ring.read(self.cursor) {
                Some(event) => {
                    out.push(event);
                    outcome.read += 1;
                    self.cursor += 1;
                }
                None => {
                    // Overwritten while we looked: the writer is at least one lap ahead of
                    // this index. Skip to what is safely readable now.
                    head = self.ring.head();
                    let oldest = head.saturating_sub(capacity).max(self.cursor + 1);
                    outcome.missed += oldest - self.cursor;
                    self.cursor = oldest;
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::BookDelta;
    use crate::types::{InstrumentId, Price, Qty, Seq, Side, UnixNanos};

    fn ev(i: u64) -> Event {
        Event::BookDelta(BookDelta {
            instrument: InstrumentId(0),
            seq: Seq(i),
            ts: UnixNanos(i),
            side: Side::Buy,
            price: Price(i as i64),
            qty: Qty(1),
        })
    }

    #[test]
    fn readers_see_only_published_events_in_order() {
        let (ring, mut writer) = EventRing::with_capacity(8);
        let mut reader = ring.reader();
        let mut out = Vec::new();
        writer.write(&ev(1));
        assert_eq!(reader.read(&mut out, 10).read, 0, "unpublished is invisible");
        writer.write(&ev(2));
        writer.publish();
        assert_eq!(reader.read(&mut out, 1), ReadOutcome { read: 1, missed: 0 });
        assert_eq!(reader.read(&mut out, 10), ReadOutcome { read: 1, missed: 0 });
        assert_eq!(out, vec![ev(1), ev(2)]);
    }

    #[test]
    fn lapped_reader_learns_exactly_how_many_it_missed() {
        let (ring, mut writer) = EventRing::with_capacity(4);
        let mut slow = ring.reader();
        for i in 0..10 {
            writer.write(&ev(i));
        }
        writer.publish();
        let mut out = Vec::new();
        let outcome = slow.read(&mut out, 100);
        assert_eq!(outcome, ReadOutcome { read: 4, missed: 6 });
        assert_eq!(out, (6..10).map(ev).collect::<Vec<_>>());
        assert_eq!(slow.lag(), 0);
    }

    #[test]
    fn concurrent_reader_never_sees_torn_or_out_of_order_events() {
        let (ring, mut writer) = EventRing::with_capacity(64);
        let total = 200_000u64;
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let mut reader = ring.reader_from_oldest();
                std::thread::spawn(move || {
                    let (mut seen, mut missed, mut last) = (0u64, 0u64, None::<u64>);
                    let mut out = Vec::with_capacity(256);
                    while seen + missed < total {
                        out.clear();
                        let o = reader.read(&mut out, 256);
                        missed += o.missed;
                        for e in &out {
                            let Event::BookDelta(d) = e else { panic!("wrong event") };
                            // A torn read would mix fields of two events.
                            assert_eq!(d.ts.0, d.seq.0, "consistent event");
                            assert_eq!(d.price.0 as u64, d.seq.0, "consistent event");
                            if let Some(prev) = last {
                                assert!(d.seq.0 > prev, "in order");
                            }
                            last = Some(d.seq.0);
                        }
                        seen += o.read as u64;
                        if o.read == 0 {
                            std::thread::yield_now();
                        }
                    }
                    assert_eq!(seen + missed, total, "every event read or counted missed");
                })
            })
            .collect();
        for i in 0..total {
            writer.write(&ev(i));
            if i % 16 == 0 {
                writer.publish();
            }
        }
        writer.publish();
        for r in readers {
            r.join().expect("reader thread");
        }
    }
}
