//! Passive sessions: which guild channels a session looks at (`ViewChannels`), and what it is
//! told about the others.
//!
//! A session that declares the channels it views gets those channels' events as they happen
//! and, for its other guild channels, a coalesced `ChannelActivity` (each such channel and its
//! newest seq) — the first at once, then at most one per [`ACTIVITY_EVERY`]; a channel that
//! stays busy is re-told at a growing interval, up to [`ACTIVITY_MAX`] (only the first report
//! of a channel changes what a client shows: its unread mark). A client in a
//! 10,000-member guild thus receives the one busy channel it has open, not every channel's
//! every message: deliveries are what cost a server per user (a packet and an ACK each), and
//! most members of a large guild are not looking at the channel that is talking. Mentions
//! still come at once, as notifications (notifications lane), and DMs are never held back
//! (their envelopes carry no channel audience). Nothing is lost: every event is stored and
//! sequenced as before, and opening a channel fetches its history.
//!
//! The view also decides whose presence the session is told in a *large* guild (more
//! members than `session.large_guild_members`): only while the session looks at one of its
//! channels (or declared no view). Presence is the other quadratic of a large guild: every
//! member's every change to every member's every session — 10,000 members connecting were
//! 10⁸ deliveries. A session is *kept* current on a large guild from the moment its view
//! brings it in; it is then sent a snapshot of the guild's members
//! ([`View::newly_kept`]: with the offline ones too once it has ever looked away, since
//! what it holds of them may then be stale).
//!
//! This is state, not I/O: [`View`] decides, the session handle applies it under its lock.

use std::time::{Duration, Instant};

use quaver_proto::{ChannelSeq, UserId};

use super::Map;

/// Most channels one `ViewChannels` may name (a client shows a handful at once).
pub const MAX_VIEWED: usize = 100;

/// Least time between two `ChannelActivity` events to one session, and most a channel not
/// in the session's last report waits for its own.
pub const ACTIVITY_EVERY: Duration = Duration::from_secs(2);

/// Longest interval a channel that stays busy is re-told at: the interval for the channels
/// of the last report doubles from [`ACTIVITY_EVERY`] with each report that comes back to
/// back, and starts over after a quiet one. A busy channel a session does not view is
/// reported once (the client marks it unread) and then re-told its newest seq every 2, 4,
/// 8, 8… seconds — a quarter of the reports of a steady 2 s, for the same unread marks.
pub const ACTIVITY_MAX: Duration = Duration::from_secs(8);

/// Most a session's later reports are spread past [`ACTIVITY_EVERY`] (per session, fixed):
/// a message seen by thousands of passive sessions at once reports to all of them at once,
/// and without a spread their next reports would all fall due in the same instant again.
pub const ACTIVITY_SPREAD: Duration = Duration::from_millis(500);

/// What to do about an activity report after an event was held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Send one now ([`View::take_report`]).
    Now,
    /// Send one at this time (the caller schedules it; [`View::take_report`] then).
    At(Instant),
    /// One is already scheduled.
    Scheduled,
}

/// What [`View::hold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// When to report.
    pub report: Report,
    /// Whether the channel was not held before (it is now, until the next report).
    pub new: bool,
}

/// A session's view: the channels it takes live, and the activity held back elsewhere.
#[derive(Debug, Default)]
pub struct View {
    /// `None`: every channel (the default). Otherwise sorted, without repeats.
    only: Option<Vec<u64>>,
    /// Channels with events held back since the last report: (channel, newest seq), sorted
    /// by channel.
    held: Vec<(u64, u64)>,
    /// When the last report was taken.
    last_report: Option<Instant>,
    /// The channels of the last report, sorted.
    last_channels: Vec<u64>,
    /// The interval they are re-told at ([`ACTIVITY_EVERY`]..=[`ACTIVITY_MAX`]).
    again: Duration,
    /// A report is due at this time, which the caller was told ([`Report::At`]).
    scheduled: Option<Instant>,
    /// This session's share of [`ACTIVITY_SPREAD`].
    spread: Duration,
    /// The guilds of the channels in `only` (`None` with it), sorted.
    guilds: Option<Vec<u64>>,
    /// Large guilds the session is kept current on (it was sent their members' presence,
    /// and their changes reach it), sorted.
    kept: Vec<u64>,
    /// Whether it ever declared a view narrower than every channel: until then it was
    /// sent every change of every large guild, so nothing it holds of them is stale.
    narrowed: bool,
}

/// A large guild newly brought into a session's view: send it the members' presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// The guild.
    pub guild: u64,
    /// Whether the session may hold stale statuses of its members (it has looked away from
    /// large guilds before): the offline members are said too.
    pub again: bool,
}

impl View {
    /// A view of every channel; its later reports come `spread` (capped at
    /// [`ACTIVITY_SPREAD`]) after the interval.
    pub fn new(spread: Duration) -> Self {
        Self {
            spread: spread.min(ACTIVITY_SPREAD),
            again: ACTIVITY_EVERY,
            ..Self::default()
        }
    }

    /// Sets the channels viewed and their guilds (`None`: all; channels of no guild, or
    /// unknown, in `guilds` are left out by the caller). See [`View::set`].
    pub fn set_with_guilds(&mut self, only: Option<Vec<u64>>, guilds: Option<Vec<u64>>) -> Vec<u64> {
        let dropped = self.set(only);
        self.guilds = self.only.as_ref().and(guilds).map(|mut g| {
            g.sort_unstable();
            g.dedup();
            g
        });
        dropped
    }

    /// The channels viewed (`None`: every channel), sorted.
    pub fn channels(&self) -> Option<&[u64]> {
        self.only.as_deref()
    }

    /// What is held back: (channel, seq at which it was held), sorted by channel.
    #[cfg(test)]
    pub fn held(&self) -> &[(u64, u64)] {
        &self.held
    }

    /// Forgets what is held back (the session ends): returns the channels it held.
    pub fn forget_held(&mut self) -> Vec<u64> {
        self.held.drain(..).map(|(c, _)| c).collect()
    }

    /// The guilds of the channels viewed (`None`: every channel).
    pub fn guilds(&self) -> Option<&[u64]> {
        self.guilds.as_deref()
    }

    /// Whether the session looks at a channel of `guild` (or at every channel).
    pub fn views_guild(&self, guild: u64) -> bool {
        self.guilds.as_ref().is_none_or(|g| g.binary_search(&guild).is_ok())
    }

    /// Of `large` (the user's large guilds, sorted), those the view now brings in and the
    /// session was not kept current on: it is from now on (and no longer on those it left).
    pub fn newly_kept(&mut self, large: &[u64]) -> Vec<Keep> {
        let now: Vec<u64> = large.iter().copied().filter(|g| self.views_guild(*g)).collect();
        let new: Vec<Keep> = now
            .iter()
            .filter(|g| self.kept.binary_search(g).is_err())
            .map(|g| Keep {
                guild: *g,
                again: self.narrowed,
            })
            .collect();
        self.kept = now;
        self.narrowed |= self.guilds.is_some();
        new
    }

    /// The large guilds the session is kept current on.
    pub fn kept(&self) -> &[u64] {
        &self.kept
    }

    /// Sets the channels viewed (`None`: all). A channel now viewed is no longer reported:
    /// its events come whole from here on (the client fetches what came before). Returns
    /// the channels no longer held for that reason.
    pub fn set(&mut self, only: Option<Vec<u64>>) -> Vec<u64> {
        self.only = only.map(|mut ids| {
            ids.sort_unstable();
            ids.dedup();
            ids
        });
        // With `None`, what was held back is still reported (it was not sent), at the
        // report already scheduled.
        let mut dropped = Vec::new();
        if let Some(ids) = &self.only {
            // Viewed, it is read: its next activity is news again.
            self.last_channels.retain(|c| ids.binary_search(c).is_err());
            self.held.retain(|(c, _)| {
                let keep = ids.binary_search(c).is_err();
                if !keep {
                    dropped.push(*c);
                }
                keep
            });
        }
        dropped
    }

    /// Whether `channel`'s events go to the session as they happen.
    pub fn views(&self, channel: u64) -> bool {
        self.only.as_ref().is_none_or(|ids| ids.binary_search(&channel).is_ok())
    }

    /// Remembers that `channel` had event `seq`, not sent; says when to report.
    pub fn hold(&mut self, channel: u64, seq: u64, now: Instant) -> Held {
        let new = match self.held.binary_search_by_key(&channel, |(c, _)| *c) {
            Ok(i) => {
                self.held[i].1 = self.held[i].1.max(seq);
                false
            }
            Err(i) => {
                self.held.insert(i, (channel, seq));
                true
            }
        };
        // Due `ACTIVITY_EVERY` after the last report, or the current interval for a channel
        // in it; the first report goes at once.
        let every = if self.last_channels.binary_search(&channel).is_ok() {
            self.again.max(ACTIVITY_EVERY)
        } else {
            ACTIVITY_EVERY
        };
        let report = match self.last_report {
            None => Report::Now,
            Some(last) => {
                let due = last + every;
                match self.scheduled {
                    // One is scheduled as soon as this one would be.
                    Some(at) if at <= due + self.spread => Report::Scheduled,
                    _ if now >= due => Report::Now,
                    // Earlier than the one scheduled, if any (a fresh channel): that one is
                    // stale ([`View::is_due`]).
                    _ => {
                        self.scheduled = Some(due + self.spread);
                        Report::At(due + self.spread)
                    }
                }
            }
        };
        Held { report, new }
    }

    /// Whether a report the caller was told to send at `at` ([`Report::At`]) is still the
    /// one due (not superseded by an earlier one).
    pub fn is_due(&self, at: Instant) -> bool {
        self.scheduled == Some(at)
    }

    /// The activity to report now (empty: nothing to say), taken: the next report comes
    /// no sooner than [`ACTIVITY_EVERY`] after this one.
    pub fn take_report(&mut self, now: Instant) -> Vec<ChannelSeq> {
        self.scheduled = None;
        if self.held.is_empty() {
            return Vec::new();
        }
        // Back to back with the last (a channel of it still busy): its channels wait longer
        // next time; after a quiet interval, the base again.
        let back_to_back = self
            .last_report
            .is_some_and(|last| now <= last + self.again + ACTIVITY_EVERY + ACTIVITY_SPREAD)
            && self
                .held
                .iter()
                .any(|(c, _)| self.last_channels.binary_search(c).is_ok());
        self.again = if back_to_back {
            (self.again * 2).clamp(ACTIVITY_EVERY, ACTIVITY_MAX)
        } else {
            ACTIVITY_EVERY
        };
        self.last_channels = self.held.iter().map(|(c, _)| *c).collect();
        self.last_report = Some(now);
        self.held
            .drain(..)
            .map(|(channel_id, seq)| ChannelSeq { channel_id, seq })
            .collect()
    }
}

/// The node's held-back activity per channel: the newest seq held back from passive sessions,
/// and per user how many of their sessions hold the channel for their next report.
///
/// With it a channel event passes over a user all of whose sessions are passive and already
/// hold the channel — in a busy channel of a large guild, nearly every member nearly all the
/// time — without touching their sessions (the sessions' registry keeps it beside its other
/// indexes, under its lock); and a report says each channel's newest seq from here, not the
/// one it was first held at. (That newest seq may be of an event a session's user was not in
/// the audience of — their own message, or one after a permission change within the
/// interval: a number, never content.)
#[derive(Debug, Default)]
pub struct Holds(Map<u64, Holding>);

/// One channel's entry in [`Holds`].
#[derive(Debug)]
struct Holding {
    newest: u64,
    users: Map<UserId, u32>,
}

impl Holds {
    /// A session of `user` newly holds `channel` (its event `seq` held back).
    pub fn add(&mut self, channel: u64, user: UserId, seq: u64) {
        let h = self.0.entry(channel).or_insert_with(|| Holding {
            newest: seq,
            users: Map::default(),
        });
        h.newest = h.newest.max(seq);
        *h.users.entry(user).or_default() += 1;
    }

    /// `channel` had event `seq` held back from sessions that already hold it.
    pub fn saw(&mut self, channel: u64, seq: u64) {
        if let Some(h) = self.0.get_mut(&channel) {
            h.newest = h.newest.max(seq);
        }
    }

    /// How many sessions of `user` hold `channel`.
    pub fn count(&self, channel: u64, user: UserId) -> u32 {
        self.0
            .get(&channel)
            .and_then(|h| h.users.get(&user))
            .copied()
            .unwrap_or(0)
    }

    /// The newest seq held back of `channel`, while a session holds it.
    pub fn newest(&self, channel: u64) -> Option<u64> {
        self.0.get(&channel).map(|h| h.newest)
    }

    /// A session of `user` no longer holds `channel` (reported, viewed, or ended).
    pub fn release(&mut self, channel: u64, user: UserId) {
        let Some(h) = self.0.get_mut(&channel) else { return };
        if let Some(n) = h.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                h.users.remove(&user);
            }
        }
        if h.users.is_empty() {
            self.0.remove(&channel);
        }
    }

    /// Whether no channel is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans(r: &[ChannelSeq]) -> Vec<(u64, u64)> {
        r.iter().map(|c| (c.channel_id, c.seq)).collect()
    }

    #[test]
    fn a_session_that_declares_nothing_views_every_channel() {
        let v = View::default();
        assert!(v.views(1) && v.views(u64::MAX));
    }

    #[test]
    fn a_declared_view_takes_only_its_channels_and_none_means_all_again() {
        let mut v = View::default();
        v.set(Some(vec![9, 3, 9]));
        assert!(v.views(3) && v.views(9) && !v.views(4));
        v.set(Some(Vec::new()));
        assert!(!v.views(3), "an empty view takes no guild channel live");
        v.set(None);
        assert!(v.views(4));
    }

    #[test]
    fn the_first_report_goes_at_once_and_later_ones_coalesce_to_one_per_interval() {
        let t0 = Instant::now();
        let mut v = View::default();
        v.set(Some(vec![1]));
        assert_eq!(v.hold(2, 10, t0).report, Report::Now);
        assert_eq!(chans(&v.take_report(t0)), [(2, 10)]);
        // Within the interval: one report, scheduled for its end, carrying the newest seqs.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(v.hold(2, 11, t1).report, Report::At(t0 + ACTIVITY_EVERY));
        assert_eq!(
            v.hold(5, 3, t1),
            Held {
                report: Report::Scheduled,
                new: true
            }
        );
        assert!(!v.hold(2, 12, t1).new, "2 is held already");
        let t2 = t0 + ACTIVITY_EVERY;
        assert_eq!(chans(&v.take_report(t2)), [(2, 12), (5, 3)]);
        // Quiet for longer than the interval: the next is at once again.
        let t3 = t2 + ACTIVITY_EVERY * 3;
        assert_eq!(v.hold(2, 13, t3).report, Report::Now);
    }

    #[test]
    fn a_channel_that_stays_busy_is_retold_ever_less_often_and_a_fresh_one_within_the_base() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut v = View::new(Duration::ZERO);
        v.set(Some(Vec::new()));
        assert_eq!(v.hold(1, 1, t0).report, Report::Now);
        v.take_report(t0);
        // Busy: 2 s, then 4, then 8, and 8 from then on.
        assert_eq!(v.hold(1, 2, t0 + ms(100)).report, Report::At(t0 + s(2)));
        assert_eq!(chans(&v.take_report(t0 + s(2))), [(1, 2)]);
        assert_eq!(v.hold(1, 3, t0 + ms(2100)).report, Report::At(t0 + s(6)));
        // A fresh channel meanwhile goes 2 s after the last report, with the busy one; the
        // report scheduled later is superseded.
        assert_eq!(v.hold(9, 1, t0 + ms(2200)).report, Report::At(t0 + s(4)));
        assert!(v.is_due(t0 + s(4)) && !v.is_due(t0 + s(6)));
        assert_eq!(chans(&v.take_report(t0 + s(4))), [(1, 3), (9, 1)]);
        assert_eq!(v.hold(1, 4, t0 + ms(4100)).report, Report::At(t0 + s(12)));
        v.take_report(t0 + s(12));
        assert_eq!(
            v.hold(1, 5, t0 + ms(12_100)).report,
            Report::At(t0 + s(20)),
            "at most ACTIVITY_MAX"
        );
        v.take_report(t0 + s(20));
        // Quiet for a while: at once, and the interval starts over.
        assert_eq!(v.hold(1, 6, t0 + s(60)).report, Report::Now);
        v.take_report(t0 + s(60));
        assert_eq!(v.hold(1, 7, t0 + ms(60_100)).report, Report::At(t0 + s(62)));
        // Opened (read) and left: its next activity is news again.
        v.take_report(t0 + s(62));
        v.set(Some(vec![1]));
        v.set(Some(Vec::new()));
        assert_eq!(v.hold(1, 8, t0 + ms(62_100)).report, Report::At(t0 + s(64)));
    }

    #[test]
    fn later_reports_are_spread_per_session() {
        let t0 = Instant::now();
        let mut v = View::new(Duration::from_millis(300));
        v.set(Some(Vec::new()));
        assert_eq!(v.hold(2, 1, t0).report, Report::Now, "the first is not delayed");
        v.take_report(t0);
        assert_eq!(
            v.hold(2, 2, t0).report,
            Report::At(t0 + ACTIVITY_EVERY + Duration::from_millis(300))
        );
        assert_eq!(View::new(Duration::from_secs(9)).spread, ACTIVITY_SPREAD, "capped");
    }

    #[test]
    fn a_large_guild_is_kept_current_while_viewed_and_said_whole_once_it_was_looked_away_from() {
        let keep = |g, again| Keep { guild: g, again };
        // Every channel (no view yet): every large guild, once; nothing it holds is stale.
        let mut v = View::default();
        assert_eq!(v.newly_kept(&[10, 20]), [keep(10, false), keep(20, false)]);
        assert!(v.newly_kept(&[10, 20]).is_empty(), "already kept");
        assert!(v.views_guild(10) && v.views_guild(99));
        // A channel of guild 10: 20 is left (its changes stop), nothing new to send.
        v.set_with_guilds(Some(vec![1]), Some(vec![10]));
        assert!(v.views_guild(10) && !v.views_guild(20));
        assert!(v.newly_kept(&[10, 20]).is_empty());
        assert_eq!(v.kept(), [10]);
        // Another channel of 10: still nothing new.
        v.set_with_guilds(Some(vec![2]), Some(vec![10]));
        assert!(v.newly_kept(&[10, 20]).is_empty());
        // Back to 20: its members again, offline ones too (what it holds may be stale).
        v.set_with_guilds(Some(vec![3]), Some(vec![20]));
        assert_eq!(v.newly_kept(&[10, 20]), [keep(20, true)]);
        // A guild that grew large meanwhile: it may have been looked away from too.
        v.set_with_guilds(Some(vec![3, 4]), Some(vec![20, 30]));
        assert_eq!(v.newly_kept(&[10, 20, 30]), [keep(30, true)]);
        // No view again: everything.
        v.set_with_guilds(None, Some(vec![20]));
        assert!(v.views_guild(10), "no view: guilds ignored");
        assert_eq!(v.newly_kept(&[10, 20, 30]), [keep(10, true)]);

        // A new session's first view: it was sent every change until now, so the guild it
        // takes in needs only who is not offline.
        let mut fresh = View::default();
        fresh.set_with_guilds(Some(vec![1]), Some(vec![10]));
        assert_eq!(fresh.newly_kept(&[10, 20]), [keep(10, false)]);
        fresh.set_with_guilds(Some(vec![5]), Some(vec![20]));
        assert_eq!(fresh.newly_kept(&[10, 20]), [keep(20, true)]);
    }

    #[test]
    fn a_channel_opened_is_not_reported_any_more() {
        let t0 = Instant::now();
        let mut v = View::default();
        v.set(Some(Vec::new()));
        assert_eq!(v.hold(2, 1, t0).report, Report::Now);
        v.take_report(t0);
        assert_eq!(v.hold(2, 2, t0).report, Report::At(t0 + ACTIVITY_EVERY));
        assert_eq!(v.set(Some(vec![2])), [2], "no longer held");
        assert!(
            v.take_report(t0 + ACTIVITY_EVERY).is_empty(),
            "its events now come whole"
        );
        // An empty report does not count as one: the next hold reports at once.
        assert_eq!(v.hold(3, 1, t0 + ACTIVITY_EVERY).report, Report::Now);
    }
}
