//! Voice across the nodes of a cluster: the owner of a channel keeps its lease and its
//! states in Redis ([`super::lease`]); every node shows sessions the states of every
//! visible voice channel in `Ready`, and remembers which participants it has shown from
//! other nodes ([`RemoteView`]) so that, when an owner dies without saying goodbye, it
//! tells its sessions they left.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::{ChannelKind, EventBody, GuildSnapshot, VoiceState};

use super::Voice;
use super::lease::{self, ChannelStates};
use crate::cluster::BusEvent;

/// A participant shown from another node is checked against its channel's states in
/// Redis once it has been there this long (the owner writes them within milliseconds of
/// the event; this leaves a renewal period of margin).
pub const SETTLE: Duration = lease::RENEW_EVERY;

#[derive(Debug)]
struct Shown {
    /// The publishing node's bus origin tag.
    origin: u64,
    since: Instant,
}

#[derive(Debug, Default)]
struct RemoteChannel {
    guild: u64,
    users: HashMap<u64, Shown>,
}

/// The participants of voice channels served by other nodes that this node's sessions were
/// told about (by the owner's events on the bus). Sans-IO: time is a parameter.
#[derive(Debug, Default)]
pub struct RemoteView {
    channels: HashMap<u64, RemoteChannel>,
}

impl RemoteView {
    /// A voice event from node `origin`.
    pub fn on_event(&mut self, origin: u64, body: &EventBody, now: Instant) {
        match body {
            EventBody::VoiceStateUpdated { state } => {
                let ch = self.channels.entry(state.channel_id).or_default();
                ch.guild = state.guild_id;
                ch.users.insert(state.user_id, Shown { origin, since: now });
                // A user is in one channel: shown elsewhere before, not any more.
                for (c, other) in self.channels.iter_mut() {
                    if *c != state.channel_id {
                        other.users.remove(&state.user_id);
                    }
                }
                self.channels.retain(|_, c| !c.users.is_empty());
            }
            EventBody::VoiceStateRemoved {
                channel_id, user_id, ..
            } => {
                if let Some(ch) = self.channels.get_mut(channel_id) {
                    ch.users.remove(user_id);
                    if ch.users.is_empty() {
                        self.channels.remove(channel_id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Channels with a participant shown at least [`SETTLE`] ago.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        self.channels
            .iter()
            .filter(|(_, c)| c.users.values().any(|s| now.duration_since(s.since) >= SETTLE))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Checks `channel` against what its owner wrote (`None`: nobody there, or the owner
    /// died and its keys expired): participants shown from another owner, or missing from
    /// the owner's list, are gone. Returns (guild, user) of each, forgotten here.
    pub fn reconcile(&mut self, channel: u64, owner: Option<&ChannelStates>, now: Instant) -> Vec<(u64, u64)> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Vec::new();
        };
        let present: HashSet<u64> = owner
            .map(|o| o.states.iter().map(|s| s.user_id).collect())
            .unwrap_or_default();
        let gone: Vec<u64> = ch
            .users
            .iter()
            .filter(|(u, s)| {
                now.duration_since(s.since) >= SETTLE
                    && (owner.is_none_or(|o| o.origin != s.origin) || !present.contains(u))
            })
            .map(|(u, _)| *u)
            .collect();
        for u in &gone {
            ch.users.remove(u);
        }
        let guild = ch.guild;
        if ch.users.is_empty() {
            self.channels.remove(&channel);
        }
        gone.into_iter().map(|u| (guild, u)).collect()
    }
}

impl Voice {
    /// A voice event published by another node (`origin`), seen on the bus.
    pub fn remote_event(&self, origin: u64, event: &[u8]) {
        if self.leases.get().is_none() {
            return;
        }
        if let Ok(body) = quaver_proto::codec::decode::<EventBody>(event) {
            self.remote().on_event(origin, &body, Instant::now());
        }
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, RemoteView> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `channel`'s states changed here: its owner's copy in Redis is rewritten.
    pub(super) fn states_changed(&self, channel: u64) {
        if self.leases.get().is_some() {
            self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(channel);
            self.wake.notify_one();
        }
    }

    fn states_in(&self, channel: u64) -> Vec<VoiceState> {
        let mut v: Vec<VoiceState> = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.channel_id == channel)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.slot);
        v
    }

    fn served_here(&self, channel: u64) -> bool {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&channel)
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Keeps this node's voice leases while their channels have participants here (and
    /// releases the others), writes their states to Redis when they change (and again on
    /// every renewal, so a Redis that lost them has them back), and checks the
    /// participants shown from other nodes; runs until the server stops.
    pub async fn keep_leases(self: Arc<Self>) {
        let Some(leases) = self.leases.get().cloned() else {
            return;
        };
        let mut renew = tokio::time::interval(lease::RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let active: HashSet<u64> = self
                        .members
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .map(|m| m.channel_id)
                        .collect();
                    leases.renew(&active).await;
                    self.dirty.lock().unwrap_or_else(|p| p.into_inner()).extend(active);
                    self.reconcile(&leases).await;
                }
                _ = self.wake.notified() => {}
            }
            let dirty: Vec<u64> = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
            for c in dirty {
                if let Err(e) = leases.put_states(c, self.states_in(c)).await {
                    tracing::warn!(channel = c, error = %e, "writing voice states to Redis failed; retrying on renewal");
                }
            }
        }
    }

    /// Participants shown from other nodes that their channel's owner no longer lists (or
    /// whose owner is gone) are removed from this node's sessions' view.
    async fn reconcile(&self, leases: &lease::VoiceLeases) {
        let due = self.remote().due(Instant::now());
        if due.is_empty() {
            return;
        }
        let owners = match leases.states_of(&due).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "voice states unreadable; checking later");
                return;
            }
        };
        for (channel, owner) in owners {
            let gone = self.remote().reconcile(channel, owner.as_ref(), Instant::now());
            for (guild_id, user_id) in gone {
                tracing::info!(channel, user = user_id, "a voice participant's node is gone: removed");
                let body = EventBody::VoiceStateRemoved {
                    guild_id,
                    channel_id: channel,
                    user_id,
                };
                self.bus.deliver_here(BusEvent::Voice {
                    guild_id,
                    channel_id: channel,
                    event: Bytes::from(encode_payload(&body)),
                });
            }
        }
    }

    /// Voice states in the voice channels of `guilds` (a `Ready`'s, so the channels `user`
    /// can see): those served here from this node, the others (in a cluster) as their
    /// owners wrote them to Redis — or none while Redis does not answer.
    pub async fn visible_states(&self, guilds: &[GuildSnapshot]) -> Vec<VoiceState> {
        let voice: Vec<u64> = guilds
            .iter()
            .flat_map(|g| g.channels.iter())
            .filter(|c| c.kind == ChannelKind::Voice)
            .map(|c| c.id)
            .collect();
        self.states_of(&voice).await
    }

    /// Everyone in `channels` (voice channels), cluster-wide: this node's at once, other
    /// nodes' from Redis (none while it does not answer); by channel, then slot.
    pub async fn states_of(&self, channels: &[u64]) -> Vec<VoiceState> {
        let (mut out, elsewhere) = self.states_here(channels);
        out.extend(self.states_elsewhere(&elsewhere).await);
        out.sort_by_key(|s| (s.channel_id, s.slot));
        out
    }

    /// The states of `channels` this node serves (read at once, in line with the voice
    /// events it publishes), and the channels it does not.
    pub fn states_here(&self, channels: &[u64]) -> (Vec<VoiceState>, Vec<u64>) {
        let (here, elsewhere): (Vec<u64>, Vec<u64>) = channels.iter().partition(|c| self.served_here(**c));
        (here.into_iter().flat_map(|c| self.states_in(c)).collect(), elsewhere)
    }

    /// The states of `channels` served by other nodes, as their owners wrote them to Redis
    /// (none on one node, or while Redis does not answer).
    pub async fn states_elsewhere(&self, channels: &[u64]) -> Vec<VoiceState> {
        let Some(leases) = self.leases.get().filter(|_| !channels.is_empty()) else {
            return Vec::new();
        };
        match leases.states_of(channels).await {
            Ok(v) => v.into_iter().filter_map(|(_, s)| s).flat_map(|s| s.states).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "voice states of other nodes unavailable");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(channel: u64, user: u64) -> VoiceState {
        VoiceState {
            guild_id: 9,
            channel_id: channel,
            user_id: user,
            slot: user as u16,
            self_mute: false,
            self_deaf: false,
            server_mute: false,
            server_deaf: false,
            speaking: false,
        }
    }

    fn joined(channel: u64, user: u64) -> EventBody {
        EventBody::VoiceStateUpdated {
            state: st(channel, user),
        }
    }

    #[test]
    fn participants_of_a_dead_owner_are_removed_once_settled() {
        let t0 = Instant::now();
        let mut v = RemoteView::default();
        v.on_event(7, &joined(1, 10), t0);
        v.on_event(7, &joined(1, 11), t0);
        assert!(v.due(t0).is_empty(), "just shown: not checked yet");
        let later = t0 + SETTLE;
        assert_eq!(v.due(later), vec![1]);
        // The owner still lists both: nothing changes.
        let owner = ChannelStates {
            origin: 7,
            states: vec![st(1, 10), st(1, 11)],
        };
        assert!(v.reconcile(1, Some(&owner), later).is_empty());
        // The owner died and its keys expired: both are gone, once.
        let mut gone = v.reconcile(1, None, later);
        gone.sort();
        assert_eq!(gone, vec![(9, 10), (9, 11)]);
        assert!(v.reconcile(1, None, later).is_empty());
        assert!(v.due(later).is_empty());
    }

    #[test]
    fn a_new_owner_replaces_the_old_ones_participants_but_not_fresh_ones() {
        let t0 = Instant::now();
        let mut v = RemoteView::default();
        v.on_event(7, &joined(1, 10), t0);
        let later = t0 + SETTLE;
        // Node 8 took the channel; user 12 just joined there.
        v.on_event(8, &joined(1, 12), later);
        let owner = ChannelStates {
            origin: 8,
            states: vec![st(1, 12)],
        };
        assert_eq!(v.reconcile(1, Some(&owner), later), vec![(9, 10)]);
        // The fresh participant is not judged before the owner had time to write them.
        let racing = ChannelStates {
            origin: 8,
            states: vec![],
        };
        assert!(v.reconcile(1, Some(&racing), later).is_empty());
        assert_eq!(v.reconcile(1, Some(&racing), later + SETTLE), vec![(9, 12)]);
    }

    #[test]
    fn leaving_or_moving_forgets_a_participant() {
        let t0 = Instant::now();
        let mut v = RemoteView::default();
        v.on_event(7, &joined(1, 10), t0);
        v.on_event(7, &joined(2, 10), t0);
        assert_eq!(v.due(t0 + SETTLE), vec![2], "moved: shown in channel 2 only");
        v.on_event(
            7,
            &EventBody::VoiceStateRemoved {
                guild_id: 9,
                channel_id: 2,
                user_id: 10,
            },
            t0,
        );
        assert!(v.due(t0 + SETTLE).is_empty());
        assert!(v.reconcile(2, None, t0 + SETTLE).is_empty());
    }
}
