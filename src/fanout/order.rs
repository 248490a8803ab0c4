//! Channel order across nodes, sans-IO (time is a parameter, the store read is the
//! caller's).
//!
//! Every channel event carries the channel's seq. On one node a channel's events are
//! published in seq order (under the channel's publish lock), but two nodes may publish the
//! same channel's events concurrently, and the bus may lose some while it is unreachable. So
//! the receiving node keeps, per channel it delivers, the last seq it delivered:
//!
//! - the next seq is delivered at once (and whatever it unblocks);
//! - an older one is a duplicate and dropped;
//! - a newer one is held for [`HOLD`] — the missing ones are usually a few milliseconds
//!   behind, on another node's connection — and then the channel is caught up from the
//!   store ([`Sequencer::due`] → the caller reads the log → [`Sequencer::fill`]);
//! - what the log no longer has becomes an explicit [`Out::Gap`], never a silent hole.
//!
//! A channel's starting point comes from a session's snapshot (`Ready`'s `last_seq`) when
//! the node starts tracking it, or from its first event (a channel created or made visible
//! later: seq 1, or the `ChannelUpdated` the client was just sent). A channel that went
//! quiet while the bus was unreachable is found by [`Sequencer::check`] against the store's
//! current seq (after a subscription starts and after the bus recovers).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long a newer event waits for the ones before it before the store is asked.
pub const HOLD: Duration = Duration::from_millis(250);

/// Most events held per channel; beyond it the channel is caught up at once.
pub const MAX_HELD: usize = 1024;

/// What to deliver, in this order.
#[derive(Debug, PartialEq, Eq)]
pub enum Out<T> {
    /// An event.
    Item(T),
    /// Events after `after` and before `resumes_at` are gone (the log no longer has them).
    Gap {
        /// The channel.
        channel: u64,
        /// Its guild (`None` for DMs).
        guild: Option<u64>,
        /// Last seq delivered before the hole.
        after: u64,
        /// First seq after it.
        resumes_at: u64,
    },
}

/// A channel to catch up from the store: read its log after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The channel.
    pub channel: u64,
    /// Its guild (`None` for DMs).
    pub guild: Option<u64>,
    /// Last seq delivered.
    pub after: u64,
}

#[derive(Debug)]
struct Chan<T> {
    guild: Option<u64>,
    /// Last seq delivered.
    last: u64,
    held: BTreeMap<u64, T>,
    /// When the oldest held event arrived.
    since: Option<Instant>,
    /// A store read is under way.
    fetching: bool,
}

impl<T> Chan<T> {
    fn new(guild: Option<u64>, last: u64) -> Self {
        Self {
            guild,
            last,
            held: BTreeMap::new(),
            since: None,
            fetching: false,
        }
    }

    /// Delivers held events that follow on.
    fn drain(&mut self, out: &mut Vec<Out<T>>) {
        while let Some(e) = self.held.first_entry() {
            if *e.key() <= self.last {
                e.remove(); // already delivered (duplicate)
            } else if *e.key() == self.last + 1 {
                self.last += 1;
                out.push(Out::Item(e.remove()));
            } else {
                break;
            }
        }
    }
}

/// Per-channel order of one node.
#[derive(Debug)]
pub struct Sequencer<T> {
    chans: HashMap<u64, Chan<T>>,
    hold: Duration,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Self::new(HOLD)
    }
}

/// The result of an arrival.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Deliver these, in order (possibly none: the event is held).
    Deliver(Vec<Out<T>>),
    /// Already delivered.
    Duplicate,
}

impl<T> Sequencer<T> {
    /// A sequencer holding out-of-order events for `hold`.
    pub fn new(hold: Duration) -> Self {
        Self {
            chans: HashMap::new(),
            hold,
        }
    }

    /// Where the node stands on `channel` (the last seq it delivered); an untracked
    /// channel starts at `last_seq` (a snapshot's).
    pub fn position(&mut self, channel: u64, guild: Option<u64>, last_seq: u64) -> u64 {
        self.chans
            .entry(channel)
            .or_insert_with(|| Chan::new(guild, last_seq))
            .last
    }

    /// Whether `channel` is tracked.
    pub fn tracks(&self, channel: u64) -> bool {
        self.chans.contains_key(&channel)
    }

    /// Event `seq` of `channel` arrived at `now`.
    pub fn arrive(&mut self, channel: u64, guild: Option<u64>, seq: u64, item: T, now: Instant) -> Arrival<T> {
        let c = self
            .chans
            .entry(channel)
            .or_insert_with(|| Chan::new(guild, seq.saturating_sub(1)));
        if seq <= c.last || c.held.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        let mut out = Vec::new();
        if seq == c.last + 1 && !c.fetching {
            c.last = seq;
            out.push(Out::Item(item));
            c.drain(&mut out);
            if c.held.is_empty() {
                c.since = None;
            }
            return Arrival::Deliver(out);
        }
        c.held.insert(seq, item);
        let since = *c.since.get_or_insert(now);
        if c.held.len() > MAX_HELD {
            // Too far behind to wait: due now.
            c.since = Some(since.checked_sub(self.hold).unwrap_or(since));
        }
        Arrival::Deliver(out)
    }

    /// When the next held channel is due for a store read.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.chans
            .values()
            .filter(|c| !c.fetching)
            .filter_map(|c| c.since)
            .min()
            .map(|s| s + self.hold)
    }

    /// Channels whose held events waited long enough: read their log.
    pub fn due(&mut self, now: Instant) -> Vec<CatchUp> {
        let hold = self.hold;
        self.chans
            .iter_mut()
            .filter(|(_, c)| !c.fetching && c.since.is_some_and(|s| now >= s + hold))
            .map(|(id, c)| {
                c.fetching = true;
                CatchUp {
                    channel: *id,
                    guild: c.guild,
                    after: c.last,
                }
            })
            .collect()
    }

    /// The store says `channel` stands at `store_seq`: if the node is behind (events lost
    /// on the bus, or published before this node subscribed), read its log.
    pub fn check(&mut self, channel: u64, store_seq: u64) -> Option<CatchUp> {
        let c = self.chans.get_mut(&channel)?;
        if c.fetching || store_seq <= c.last {
            return None;
        }
        c.fetching = true;
        Some(CatchUp {
            channel,
            guild: c.guild,
            after: c.last,
        })
    }

    /// The log of `channel` after the `CatchUp`'s position, in seq order: `Some(events)`
    /// with `complete` when the read returned everything there is, `None` when it failed
    /// (tried again after the hold).
    pub fn fill(&mut self, channel: u64, read: Option<(Vec<(u64, T)>, bool)>, now: Instant) -> Vec<Out<T>> {
        let mut out = Vec::new();
        let Some(c) = self.chans.get_mut(&channel) else {
            return out;
        };
        c.fetching = false;
        let Some((events, complete)) = read else {
            if !c.held.is_empty() {
                c.since = Some(now);
            }
            return out;
        };
        for (seq, item) in events {
            if seq <= c.last {
                continue;
            }
            if seq > c.last + 1 {
                out.push(Out::Gap {
                    channel,
                    guild: c.guild,
                    after: c.last,
                    resumes_at: seq,
                });
            }
            c.last = seq;
            out.push(Out::Item(item));
        }
        c.drain(&mut out);
        if let Some(&first) = c.held.keys().next() {
            if complete {
                // The log has nothing before the held events: they were pruned.
                out.push(Out::Gap {
                    channel,
                    guild: c.guild,
                    after: c.last,
                    resumes_at: first,
                });
                c.last = first - 1;
                c.drain(&mut out);
            }
            // Whatever is still held waits for another read.
            c.since = (!c.held.is_empty()).then_some(now);
        } else {
            c.since = None;
        }
        out
    }

    /// Stops tracking the channels of `guild` (the node no longer follows it).
    pub fn forget_guild(&mut self, guild: u64) {
        self.chans.retain(|_, c| c.guild != Some(guild));
    }

    /// Stops tracking `channel`.
    pub fn forget(&mut self, channel: u64) {
        self.chans.remove(&channel);
    }

    /// Channels tracked.
    pub fn len(&self) -> usize {
        self.chans.len()
    }

    /// Whether no channel is tracked.
    pub fn is_empty(&self) -> bool {
        self.chans.is_empty()
    }

    /// Events held, all channels together.
    pub fn held(&self) -> usize {
        self.chans.values().map(|c| c.held.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(a: Arrival<u64>) -> Vec<u64> {
        match a {
            Arrival::Deliver(v) => v
                .into_iter()
                .map(|o| match o {
                    Out::Item(i) => i,
                    Out::Gap { .. } => panic!("unexpected gap"),
                })
                .collect(),
            Arrival::Duplicate => panic!("unexpected duplicate"),
        }
    }

    #[test]
    fn in_order_events_pass_and_old_ones_are_duplicates() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        assert_eq!(s.position(1, Some(9), 4), 4);
        assert_eq!(items(s.arrive(1, Some(9), 5, 5, t)), vec![5]);
        assert_eq!(items(s.arrive(1, Some(9), 6, 6, t)), vec![6]);
        assert_eq!(s.arrive(1, Some(9), 6, 6, t), Arrival::Duplicate);
        assert_eq!(s.arrive(1, Some(9), 3, 3, t), Arrival::Duplicate);
        assert_eq!(s.position(1, Some(9), 0), 6, "a later snapshot does not move it");
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_brief_reorder_is_repaired_without_the_store() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        s.position(1, None, 0);
        assert_eq!(items(s.arrive(1, None, 3, 3, t)), Vec::<u64>::new(), "held");
        assert_eq!(items(s.arrive(1, None, 2, 2, t)), Vec::<u64>::new(), "held");
        assert_eq!(s.arrive(1, None, 3, 3, t), Arrival::Duplicate, "already held");
        assert_eq!(s.next_deadline(), Some(t + HOLD));
        assert_eq!(items(s.arrive(1, None, 1, 1, t)), vec![1, 2, 3]);
        assert_eq!(s.next_deadline(), None);
        assert!(s.due(t + HOLD * 2).is_empty());
    }

    #[test]
    fn a_hole_is_caught_up_from_the_store_after_the_hold() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        s.position(1, Some(9), 10);
        assert_eq!(items(s.arrive(1, Some(9), 13, 13, t)), Vec::<u64>::new());
        assert!(s.due(t + HOLD / 2).is_empty(), "not yet");
        let due = s.due(t + HOLD);
        assert_eq!(
            due,
            vec![CatchUp {
                channel: 1,
                guild: Some(9),
                after: 10
            }]
        );
        assert!(s.due(t + HOLD * 3).is_empty(), "one read at a time");
        // While the read is under way, even the next seq waits (the read returns it too).
        assert_eq!(items(s.arrive(1, Some(9), 11, 11, t)), Vec::<u64>::new());
        let out = s.fill(1, Some((vec![(11, 11), (12, 12), (13, 13)], true)), t + HOLD);
        assert_eq!(out, vec![Out::Item(11), Out::Item(12), Out::Item(13)]);
        assert_eq!(s.held(), 0);
        assert_eq!(s.position(1, Some(9), 0), 13);
        assert_eq!(items(s.arrive(1, Some(9), 14, 14, t)), vec![14]);
    }

    #[test]
    fn what_the_log_no_longer_has_is_an_explicit_gap() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        s.position(1, None, 10);
        s.arrive(1, None, 20, 20, t);
        s.due(t + HOLD);
        // The log starts at 15 (older events pruned).
        let out = s.fill(1, Some((vec![(15, 15), (16, 16)], true)), t + HOLD);
        assert_eq!(
            out,
            vec![
                Out::Gap {
                    channel: 1,
                    guild: None,
                    after: 10,
                    resumes_at: 15
                },
                Out::Item(15),
                Out::Item(16),
                Out::Gap {
                    channel: 1,
                    guild: None,
                    after: 16,
                    resumes_at: 20
                },
                Out::Item(20),
            ]
        );
    }

    #[test]
    fn a_failed_or_partial_read_keeps_waiting_and_never_invents_a_gap() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        s.position(1, None, 0);
        s.arrive(1, None, 5, 5, t);
        s.due(t + HOLD);
        assert!(s.fill(1, None, t + HOLD).is_empty(), "the store failed");
        assert_eq!(s.next_deadline(), Some(t + HOLD * 2), "tried again");
        s.due(t + HOLD * 2);
        // A read that hit its limit: delivers what it got, holds the rest.
        let out = s.fill(1, Some((vec![(1, 1), (2, 2)], false)), t + HOLD * 2);
        assert_eq!(out, vec![Out::Item(1), Out::Item(2)]);
        assert_eq!(s.held(), 1);
        s.due(t + HOLD * 3);
        let out = s.fill(1, Some((vec![(3, 3), (4, 4), (5, 5)], true)), t + HOLD * 3);
        assert_eq!(out, vec![Out::Item(3), Out::Item(4), Out::Item(5)]);
    }

    #[test]
    fn a_quiet_channel_behind_the_store_is_found_by_a_check() {
        let t = Instant::now();
        let mut s: Sequencer<u64> = Sequencer::default();
        assert_eq!(s.check(1, 5), None, "untracked: nobody here needs it");
        s.position(1, Some(2), 3);
        assert_eq!(s.check(1, 3), None, "up to date");
        assert_eq!(
            s.check(1, 5),
            Some(CatchUp {
                channel: 1,
                guild: Some(2),
                after: 3
            })
        );
        assert_eq!(s.check(1, 5), None, "already reading");
        let out = s.fill(1, Some((vec![(4, 4), (5, 5)], true)), t);
        assert_eq!(out, vec![Out::Item(4), Out::Item(5)]);
    }

    #[test]
    fn an_untracked_channel_starts_at_its_first_event_and_forgetting_is_per_guild() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        assert_eq!(items(s.arrive(7, Some(1), 40, 40, t)), vec![40]);
        assert_eq!(items(s.arrive(8, Some(2), 1, 1, t)), vec![1]);
        s.forget_guild(1);
        assert!(!s.tracks(7));
        assert!(s.tracks(8));
        s.forget(8);
        assert!(s.is_empty());
    }

    #[test]
    fn too_many_held_events_make_the_channel_due_at_once() {
        let t = Instant::now();
        let mut s = Sequencer::default();
        s.position(1, None, 0);
        for seq in 2..(MAX_HELD as u64 + 3) {
            s.arrive(1, None, seq, seq, t);
        }
        assert_eq!(s.due(t).len(), 1);
    }
}
