//! Writer threads: the connection side of the fan-out, one per core by default.
//!
//! Each connection belongs to one writer (by its id). A writer keeps, for every channel,
//! the list of its connections that follow it, and runs **rounds**:
//!
//! 1. apply the registrations connection tasks sent since the last round (attach,
//!    subscribe, unsubscribe, detach);
//! 2. find the channels whose ring head moved since the last round (one atomic load per
//!    channel);
//! 3. visit each connection that follows one of them once ([`Link::visit`]): walk its
//!    cursors and write everything new with one non-blocking vectored write.
//!
//! A connection held back by its read-receipt allowance (a client that stopped reading)
//! is **parked**: left out of the rounds until the pong that releases it makes its task
//! send an unpark, or until it has been held `--write-stall-ms`, when one more visit
//! closes it. Thousands of stalled clients then cost a round nothing (visited, 5,000 of
//! them cost each round about a millisecond: docs/BENCHMARKS.md).
//!
//! The hub wakes the writers once per pass, never a connection: a pass costs the hub
//! O(writers), however many subscribers there are. Rounds are self-clocked: while a writer
//! is busy, passes pile up in the rings and the next round takes them all, so the busier
//! the machine the bigger each write and the fewer the system calls, with latency about
//! one round. A connection whose socket is full is handed to its own task (see
//! [`crate::fanout::link`]) and never holds a writer up.
//!
//! Why threads and not one wake-up per connection task: a task wake-up, its poll and its
//! `select!` cost more than the write itself at a thousand connections (`perf`: a third of
//! the server's CPU was scheduler and future polling), and each wake-up from the hub was
//! O(subscribers) work on the producer's thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use slab::Slab;

use super::link::{Link, Tally, Visit};
use super::rest::{rest, Contention, RestPolicy};
use super::ChunkCache;
use super::Directory;
use crate::metrics::Metrics;

/// Longest a writer sleeps without a wake-up (a safety net: every change wakes it).
const IDLE_PARK: Duration = Duration::from_millis(50);

/// What a connection task tells its writer (links by id; `T` is the link itself).
#[derive(Debug)]
enum Registration<T> {
    Attach(u64, T),
    Subscribe(u64, usize),
    Unsubscribe(u64, usize),
    Detach(u64),
    /// A pong released the connection from its read-receipt hold: visit it again.
    Unpark(u64),
}

/// Subscription changes one writer's inbox takes before new subscriptions are refused
/// (`limit_exceeded`, retry later): the writer empties it every round, so only a writer
/// that is stuck, or thousands of connections subscribing in the same instant, reach it.
pub const SUBSCRIPTIONS_QUEUED_MAX: usize = 65_536;

/// One writer's mailbox, shared with the hub and the connection tasks.
#[derive(Debug, Default)]
struct Mailbox {
    /// A round is wanted: chunks were published or registrations arrived.
    pending: AtomicBool,
    /// Registrations in arrival order, emptied every round. Subscriptions are refused
    /// beyond [`SUBSCRIPTIONS_QUEUED_MAX`] (see [`Writers::has_room`]); attaches, detaches
    /// and unsubscribes are always taken, and there are at most two of the first per
    /// connection and one unsubscribe per existing subscription: the inbox is bounded by
    /// that limit plus what `--max-connections` and `--max-subscriptions` allow.
    inbox: Mutex<Vec<Registration<Arc<Link>>>>,
    thread: OnceLock<Thread>,
}

impl Mailbox {
    fn wake(&self) {
        // Release: a writer that takes the flag sees every head stored before it.
        self.pending.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    fn send(&self, r: Registration<Arc<Link>>) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        self.wake();
    }
}

/// The writer threads. Cheap to share: the hub wakes them, connection tasks register with
/// them.
#[derive(Debug)]
pub struct Writers {
    mailboxes: Arc<[Mailbox]>,
    /// Length of the latest round of any writer, in nanoseconds (the hub sizes its passes
    /// by it).
    round_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Writers {
    /// Starts `count` writers (at least one) over `directory`'s channels; each rests after
    /// each round that wrote as `rest` says.
    pub fn start(
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        count: usize,
        rest: RestPolicy,
    ) -> Arc<Writers> {
        let count = count.max(1);
        let mailboxes: Arc<[Mailbox]> = (0..count).map(|_| Mailbox::default()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let round_ns = Arc::new(AtomicU64::new(0));
        let threads = (0..count)
            .map(|index| {
                let mut writer = Writer::new(
                    index,
                    Arc::clone(&mailboxes),
                    Arc::clone(&round_ns),
                    Arc::clone(&directory),
                    Arc::clone(&metrics),
                    rest,
                );
                let stop = Arc::clone(&stop);
                let thread = std::thread::Builder::new()
                    .name(format!("fanout-writer-{index}"))
                    .spawn(move || writer.run(&stop))
                    .expect("spawning a writer thread at start-up");
                let _ = mailboxes[index].thread.set(thread.thread().clone());
                thread
            })
            .collect();
        Arc::new(Writers { mailboxes, round_ns, stop, threads: Mutex::new(threads) })
    }

    /// How long the latest round that wrote something took (any writer).
    pub fn round(&self) -> Duration {
        Duration::from_nanos(self.round_ns.load(Ordering::Relaxed))
    }

    /// Asks every writer for a round (the hub, after a pass that published).
    pub fn wake(&self) {
        for m in self.mailboxes.iter() {
            m.wake();
        }
    }

    fn mailbox(&self, link: u64) -> &Mailbox {
        &self.mailboxes[(link % self.mailboxes.len() as u64) as usize]
    }

    /// Whether the writer of `link` takes `n` more subscription changes now.
    pub fn has_room(&self, link: u64, n: usize) -> bool {
        let inbox = self.mailbox(link).inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.len() + n <= SUBSCRIPTIONS_QUEUED_MAX
    }

    /// A new connection.
    pub fn attach(&self, link: &Arc<Link>) {
        self.mailbox(link.id).send(Registration::Attach(link.id, Arc::clone(link)));
    }

    /// The connection follows the channel with dense index `channel` from now on (its
    /// outbox already holds the subscription and its cursor).
    pub fn subscribe(&self, link: u64, channel: usize) {
        self.mailbox(link).send(Registration::Subscribe(link, channel));
    }

    /// The connection no longer follows `channel`.
    pub fn unsubscribe(&self, link: u64, channel: usize) {
        self.mailbox(link).send(Registration::Unsubscribe(link, channel));
    }

    /// The connection ended; its writer lets go of it.
    pub fn detach(&self, link: u64) {
        self.mailbox(link).send(Registration::Detach(link));
    }

    /// A pong released the connection from its read-receipt hold: its writer, which left
    /// it out of its rounds while it was held, visits it again.
    pub fn unpark(&self, link: u64) {
        self.mailbox(link).send(Registration::Unpark(link));
    }

    /// Stops and joins the threads (connections still attached are let go).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            t.thread().unpark();
            // The last handle can go away on a writer thread itself (a link it let go of
            // held it): that thread sees the stop flag and ends on its own.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection as its writer knows it.
#[derive(Debug)]
struct Entry<T> {
    item: T,
    /// Round in which it was last put on the visit list (visit once per round).
    stamp: u64,
    /// Held back by its read-receipt allowance since then: left out of the rounds (a
    /// thousand clients that stopped reading cost a round nothing) until a pong releases
    /// it or the hold is old enough to close it.
    parked: Option<Instant>,
    /// Channels it follows and its position in each channel's list.
    channels: Vec<(usize, usize)>,
}

/// Who follows which channel, with O(1) join and leave.
#[derive(Debug)]
struct Followers<T> {
    /// Per channel: the entries (slab keys) that follow it.
    lists: Vec<Vec<usize>>,
    entries: Slab<Entry<T>>,
    by_link: FxHashMap<u64, usize>,
}

impl<T> Followers<T> {
    fn new(channels: usize) -> Self {
        Followers {
            lists: vec![Vec::new(); channels],
            entries: Slab::new(),
            by_link: FxHashMap::default(),
        }
    }

    fn attach(&mut self, link: u64, item: T) {
        let key = self.entries.insert(Entry { item, stamp: 0, parked: None, channels: Vec::new() });
        self.by_link.insert(link, key);
    }

    /// Adds `link` to `channel`'s list (once); its key, if the link and channel exist.
    fn join(&mut self, link: u64, channel: usize) -> Option<usize> {
        let &key = self.by_link.get(&link)?;
        let list = self.lists.get_mut(channel)?;
        let entry = &mut self.entries[key];
        if !entry.channels.iter().any(|&(c, _)| c == channel) {
            entry.channels.push((channel, list.len()));
            list.push(key);
        }
        Some(key)
    }

    /// Takes `link` off `channel`'s list in O(1): the last follower moves into its place
    /// and its recorded position is updated.
    fn leave(&mut self, link: u64, channel: usize) {
        let Some(&key) = self.by_link.get(&link) else { return };
        let entry = &mut self.entries[key];
        let Some(i) = entry.channels.iter().position(|&(c, _)| c == channel) else { return };
        let (_, pos) = entry.channels.swap_remove(i);
        let list = &mut self.lists[channel];
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            if let Some(slot) = self.entries[moved].channels.iter_mut().find(|(c, _)| *c == channel)
            {
                slot.1 = pos;
            }
        }
    }

    /// Removes `link` from every list; its former key.
    fn detach(&mut self, link: u64) -> Option<usize> {
        let &key = self.by_link.get(&link)?;
        while let Some(&(channel, _)) = self.entries[key].channels.last() {
            self.leave(link, channel);
        }
        self.by_link.remove(&link);
        self.entries.remove(key);
        Some(key)
    }

    /// Applies one registration. A new subscription is visited in this round (chunks
    /// published between its snapshot and now); a detached entry leaves the visit list.
    fn apply(&mut self, r: Registration<T>, round: u64, visits: &mut Vec<usize>) {
        match r {
            Registration::Attach(link, item) => self.attach(link, item),
            Registration::Subscribe(link, channel) => {
                if let Some(key) = self.join(link, channel) {
                    self.mark(key, round, visits);
                }
            }
            Registration::Unsubscribe(link, channel) => self.leave(link, channel),
            Registration::Unpark(link) => {
                if let Some(&key) = self.by_link.get(&link) {
                    self.entries[key].parked = None;
                    self.mark(key, round, visits);
                }
            }
            Registration::Detach(link) => {
                // Only an entry marked in this round can be on the list (a mass disconnect
                // must not scan it once per connection).
                let marked =
                    self.by_link.get(&link).is_some_and(|&k| self.entries[k].stamp == round);
                if let Some(key) = self.detach(link) {
                    if marked {
                        visits.retain(|&k| k != key);
                    }
                }
            }
        }
    }

    /// Puts every follower of `channel` on `visits` (once per round).
    fn mark_channel(&mut self, channel: usize, round: u64, visits: &mut Vec<usize>) {
        for n in 0..self.lists[channel].len() {
            let key = self.lists[channel][n];
            self.mark(key, round, visits);
        }
    }

    /// Puts `key` on `visits` unless it is there for `round` already or parked.
    fn mark(&mut self, key: usize, round: u64, visits: &mut Vec<usize>) {
        let entry = &mut self.entries[key];
        if entry.stamp != round && entry.parked.is_none() {
            entry.stamp = round;
            visits.push(key);
        }
    }
}

struct Writer {
    index: usize,
    mailboxes: Arc<[Mailbox]>,
    round_ns: Arc<AtomicU64>,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    /// Per channel: the ring head at the last round.
    seen: Vec<u64>,
    followers: Followers<Arc<Link>>,
    round: u64,
    visits: Vec<usize>,
    registrations: Vec<Registration<Arc<Link>>>,
    tally: Tally,
    /// The chunks this writer read from the rings.
    chunks: ChunkCache,
    /// Rest after a round that wrote (`--fanout-round-rest-pct`).
    rest: RestPolicy,
    /// Whether the machine is contended (for [`RestPolicy::Auto`]).
    contention: Contention,
    /// No round before then (a rest).
    rest_until: Option<Instant>,
    /// Connections inside their `interval_ms`, with the time to visit them again.
    later: Vec<(Instant, Arc<Link>)>,
    /// Parked connections in the order they were parked: when to visit each again (to
    /// close it if still held), the link and when it was parked (a later park of the same
    /// link makes this one stale).
    parked: std::collections::VecDeque<(Instant, u64, Instant)>,
}

impl Writer {
    fn new(
        index: usize,
        mailboxes: Arc<[Mailbox]>,
        round_ns: Arc<AtomicU64>,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        rest: RestPolicy,
    ) -> Writer {
        Writer {
            index,
            mailboxes,
            round_ns,
            seen: directory.all().iter().map(|c| c.head()).collect(),
            followers: Followers::new(directory.all().len()),
            directory,
            metrics,
            round: 0,
            visits: Vec::new(),
            registrations: Vec::new(),
            tally: Tally::default(),
            chunks: ChunkCache::default(),
            rest,
            contention: Contention::for_policy(rest),
            rest_until: None,
            later: Vec::new(),
            parked: std::collections::VecDeque::new(),
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            // Acquire pairs with the hub's release in `Mailbox::wake`: the round below sees
            // every chunk published before the wake-up. A wake-up that lands after this swap
            // sets the flag again (and unparks), so none is lost.
            let due = self.later.iter().map(|(due, _)| *due).min();
            let now = Instant::now();
            // Resting: the flag stays set, the round comes when the rest is over.
            let resting = self.rest_until.filter(|until| now < *until);
            if resting.is_none() && self.mailboxes[self.index].pending.swap(false, Ordering::AcqRel)
            {
                self.round();
            } else if due.is_some_and(|due| due <= now) {
                self.revisit(now);
                self.tally.publish(&self.metrics);
            } else if self.parked.front().is_some_and(|p| p.0 <= now) {
                self.expire_parked(now);
                self.tally.publish(&self.metrics);
            } else {
                let wait = due.into_iter().chain(resting).map(|t| t - now).min();
                std::thread::park_timeout(wait.map_or(IDLE_PARK, |w| w.min(IDLE_PARK)));
            }
        }
    }

    /// Visits the connection with key `key`; parks it if it is held.
    fn visit(&mut self, key: usize) {
        let entry = &mut self.followers.entries[key];
        match entry.item.visit(&mut self.tally, &mut self.chunks) {
            Visit::Done => {}
            Visit::Later(due) => self.later.push((due, Arc::clone(&entry.item))),
            Visit::Held(since) => {
                entry.parked = Some(since);
                // `None`: held connections are never closed (a bench's setting). Holds
                // start at most a round apart, so the list stays nearly in order; one that
                // comes due a little late waits behind an earlier one.
                if let Some(due) = since.checked_add(entry.item.held_max()) {
                    self.parked.push_back((due, entry.item.id, since));
                }
            }
        }
    }

    /// Visits the connections parked long enough ago that their hold may have lasted
    /// `held_max`: a visit closes one still held that long (parks it again otherwise).
    fn expire_parked(&mut self, now: Instant) {
        while let Some(&(due, link, since)) = self.parked.front() {
            if due > now {
                return;
            }
            self.parked.pop_front();
            let Some(&key) = self.followers.by_link.get(&link) else { continue };
            if self.followers.entries[key].parked != Some(since) {
                continue; // released (and perhaps parked again) since
            }
            self.followers.entries[key].parked = None;
            // Its hold is `held_max` old by now: this visit closes it.
            self.visit(key);
        }
    }

    /// Visits the connections whose interval has passed by `now`.
    fn revisit(&mut self, now: Instant) {
        let mut n = 0;
        while n < self.later.len() {
            if self.later[n].0 <= now {
                let (_, link) = self.later.swap_remove(n);
                if let Visit::Later(due) = link.visit(&mut self.tally, &mut self.chunks) {
                    self.later.push((due, link));
                }
            } else {
                n += 1;
            }
        }
    }

    /// One round: registrations, changed channels, visits.
    fn round(&mut self) {
        let started = Instant::now();
        self.round += 1;
        self.visits.clear();
        // Swap, not take: the inbox gets this writer's empty buffer back, allocation kept.
        std::mem::swap(
            &mut self.registrations,
            &mut *self.mailboxes[self.index].inbox.lock().unwrap_or_else(|e| e.into_inner()),
        );
        for r in self.registrations.drain(..) {
            self.followers.apply(r, self.round, &mut self.visits);
        }
        for (at, channel) in self.directory.all().iter().enumerate() {
            let head = channel.head();
            if head != self.seen[at] {
                self.seen[at] = head;
                self.followers.mark_channel(at, self.round, &mut self.visits);
            }
        }
        for n in 0..self.visits.len() {
            let key = self.visits[n];
            self.visit(key);
        }
        self.revisit(started);
        self.expire_parked(started);
        if !self.visits.is_empty() {
            let took = started.elapsed();
            self.round_ns.store(took.as_nanos() as u64, Ordering::Relaxed);
            self.metrics.fanout_rounds.observe(took);
            let contended =
                self.rest == RestPolicy::Auto && self.contention.contended(started + took);
            self.rest_until = rest(took, self.rest, contended).map(|rest| {
                self.metrics.fanout_rests_total.fetch_add(1, Ordering::Relaxed);
                started + took + rest
            });
        }
        self.tally.publish(&self.metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Registration::*;

    fn consistent(f: &Followers<&'static str>) {
        for (channel, list) in f.lists.iter().enumerate() {
            for (pos, &k) in list.iter().enumerate() {
                assert!(f.entries[k].channels.contains(&(channel, pos)), "{channel} {pos}");
            }
        }
        for (k, e) in f.entries.iter() {
            for &(channel, pos) in &e.channels {
                assert_eq!(f.lists[channel][pos], k, "entry {k} channel {channel}");
            }
        }
        assert_eq!(f.by_link.len(), f.entries.len());
    }

    fn items(f: &Followers<&'static str>, visits: &[usize]) -> Vec<&'static str> {
        let mut v: Vec<_> = visits.iter().map(|&k| f.entries[k].item).collect();
        v.sort_unstable();
        v
    }

    /// Registrations as the writer applies them: the follower lists stay consistent
    /// through subscribes, unsubscribes and detaches in any order (each entry's recorded
    /// positions point back at it), a new subscription is visited in its round, a detached
    /// connection is not, and a round visits each follower of the changed channels once.
    #[test]
    fn registrations_keep_the_follower_lists_consistent() {
        let mut f: Followers<&'static str> = Followers::new(8);
        let mut visits = Vec::new();
        let names = ["a", "b", "c", "d", "e", "f"];
        for (link, name) in names.iter().enumerate() {
            f.apply(Attach(link as u64, *name), 1, &mut visits);
            for channel in [0, link % 3, 5] {
                f.apply(Subscribe(link as u64, channel), 1, &mut visits);
            }
        }
        assert_eq!(items(&f, &visits), names, "each new subscriber visited once");
        assert_eq!(f.lists[0].len(), 6, "a channel named twice is followed once");
        f.apply(Subscribe(99, 0), 1, &mut visits);
        f.apply(Subscribe(1, 99), 1, &mut visits);
        assert_eq!(visits.len(), 6, "unknown link or channel: nothing");
        consistent(&f);

        // Round 2: unsubscribes and a detach of a connection marked in this round.
        visits.clear();
        f.apply(Subscribe(2, 7), 2, &mut visits);
        f.apply(Unsubscribe(0, 0), 2, &mut visits);
        f.apply(Unsubscribe(3, 5), 2, &mut visits);
        f.apply(Unsubscribe(3, 5), 2, &mut visits); // twice: nothing
        f.apply(Detach(2), 2, &mut visits);
        assert!(visits.is_empty(), "a detached connection is not visited");
        consistent(&f);
        assert_eq!(f.lists[0].len(), 4);
        assert_eq!(f.lists[7].len(), 0);

        // Round 3: a detach and an attach in one batch reuse the slab key; the new
        // connection starts with no channels of the old one.
        visits.clear();
        let old_key = f.by_link[&4];
        f.apply(Detach(4), 3, &mut visits);
        f.apply(Attach(40, "g"), 3, &mut visits);
        assert_eq!(f.by_link[&40], old_key, "the key is reused");
        assert!(f.entries[old_key].channels.is_empty());
        f.apply(Subscribe(40, 6), 3, &mut visits);
        assert_eq!(items(&f, &visits), ["g"]);
        consistent(&f);

        // Round 4: channels 0 and 5 changed (overlapping followers): each visited once.
        visits.clear();
        f.mark_channel(0, 4, &mut visits);
        f.mark_channel(5, 4, &mut visits);
        assert_eq!(items(&f, &visits), ["a", "b", "d", "f"]);
        f.mark_channel(0, 4, &mut visits);
        assert_eq!(visits.len(), 4, "marked once per round");
        for link in [0, 1, 3, 5, 40] {
            f.apply(Detach(link), 5, &mut visits);
        }
        assert!(f.lists.iter().all(Vec::is_empty) && f.entries.is_empty());
        consistent(&f);
    }

    /// A parked connection (held by its read-receipt allowance) is left out of the rounds
    /// whatever its channels do, and an unpark puts it back in and visits it at once.
    #[test]
    fn a_parked_connection_is_not_visited_until_unparked() {
        let mut f: Followers<&'static str> = Followers::new(2);
        let mut visits = Vec::new();
        for (link, name) in [(1, "held"), (2, "reading")] {
            f.apply(Attach(link, name), 1, &mut visits);
            f.apply(Subscribe(link, 0), 1, &mut visits);
        }
        let held = f.by_link[&1];
        f.entries[held].parked = Some(Instant::now());
        visits.clear();
        f.mark_channel(0, 2, &mut visits);
        assert_eq!(items(&f, &visits), ["reading"]);
        f.apply(Subscribe(1, 1), 2, &mut visits);
        assert_eq!(items(&f, &visits), ["reading"], "a new subscription does not unpark it");
        visits.clear();
        f.apply(Unpark(1), 3, &mut visits);
        assert_eq!(items(&f, &visits), ["held"], "visited in the round of its unpark");
        f.mark_channel(0, 3, &mut visits);
        assert_eq!(items(&f, &visits), ["held", "reading"]);
        f.apply(Unpark(99), 3, &mut visits);
        assert_eq!(visits.len(), 2, "an unknown link: nothing");
        consistent(&f);
    }
}
