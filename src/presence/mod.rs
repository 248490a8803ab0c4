//! Presence, sans-IO: each session reports a status from its device; others see the
//! user's aggregate status and one status per platform (desktop, mobile, web), like
//! Discord's `client_status`. Rules:
//!
//! - Aggregate: `invisible` on any session hides the user (offline to everyone else);
//!   otherwise dnd > online > idle > offline across sessions.
//! - A user whose last session ends stays visible for a grace period; a reconnect within it
//!   produces no offline → online flap. After it, they go offline.
//! - Sessions that stop heartbeating (a crashed connection the transport has not noticed)
//!   are swept after the heartbeat timeout.
//! - Output is produced only when what others see changes.

pub mod registry;
pub mod task;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quaver_proto::{ClientStatus, DeviceKind, Presence, PresenceStatus, SessionId};

/// Default reconnect grace before a user shows offline.
pub const GRACE: Duration = Duration::from_secs(5);

/// What a session chose with `SetPresence` (kept by its session, given back on a resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The status.
    pub status: PresenceStatus,
    /// Custom status text.
    pub custom_status: Option<String>,
    /// Activity text.
    pub activity: Option<String>,
}

#[derive(Debug, Clone)]
struct SessionState {
    device: DeviceKind,
    status: PresenceStatus,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct UserState {
    sessions: HashMap<SessionId, SessionState>,
    custom_status: Option<String>,
    activity: Option<String>,
    /// When the grace period of the last session ends.
    offline_at: Option<Instant>,
    /// What others were last told.
    published: Option<Presence>,
    /// When custom status and activity were last set (ms since the epoch).
    set_at_ms: u64,
}

fn rank(s: PresenceStatus) -> u8 {
    match s {
        PresenceStatus::Offline => 0,
        PresenceStatus::Idle => 1,
        PresenceStatus::Online => 2,
        PresenceStatus::Dnd => 3,
        PresenceStatus::Invisible => 4,
    }
}

fn aggregate<'a>(it: impl Iterator<Item = &'a SessionState>) -> PresenceStatus {
    let best = it
        .map(|s| s.status)
        .max_by_key(|s| rank(*s))
        .unwrap_or(PresenceStatus::Offline);
    if best == PresenceStatus::Invisible {
        PresenceStatus::Offline
    } else {
        best
    }
}

/// Presence of every user with a session on this node.
#[derive(Debug)]
pub struct PresenceState {
    users: HashMap<u64, UserState>,
    /// Users whose part (for the cluster registry) may have changed since the last
    /// [`PresenceState::take_dirty`].
    dirty: Vec<u64>,
    grace: Duration,
    timeout: Duration,
}

impl PresenceState {
    /// `grace`: reconnect window; `timeout`: a session unseen this long is swept.
    pub fn new(grace: Duration, timeout: Duration) -> Self {
        Self {
            users: HashMap::new(),
            dirty: Vec::new(),
            grace,
            timeout,
        }
    }

    /// What others see of `user` now.
    pub fn visible(&self, user: u64) -> Presence {
        let offline = registry::offline(user);
        let Some(u) = self.users.get(&user) else { return offline };
        if u.sessions.is_empty() {
            // In the grace period: still what was last published.
            return u.published.clone().unwrap_or(offline);
        }
        let status = aggregate(u.sessions.values());
        if status == PresenceStatus::Offline {
            return offline;
        }
        let per = |d: DeviceKind| aggregate(u.sessions.values().filter(|s| s.device == d));
        Presence {
            user_id: user,
            status,
            client_status: ClientStatus {
                desktop: per(DeviceKind::Desktop),
                mobile: per(DeviceKind::Mobile),
                web: per(DeviceKind::Web),
            },
            custom_status: u.custom_status.clone(),
            activity: u.activity.clone(),
        }
    }

    /// This node's part of `user`'s presence (raw statuses of its sessions; during the
    /// reconnect grace, what was last shown), for the cluster registry.
    pub fn part(&self, user: u64) -> registry::Part {
        let empty = ClientStatus {
            desktop: PresenceStatus::Offline,
            mobile: PresenceStatus::Offline,
            web: PresenceStatus::Offline,
        };
        let Some(u) = self.users.get(&user) else {
            return registry::Part {
                client_status: empty,
                custom_status: None,
                activity: None,
                set_at_ms: 0,
            };
        };
        let client_status = if u.sessions.is_empty() {
            u.published.as_ref().map(|p| p.client_status.clone()).unwrap_or(empty)
        } else {
            let raw = |d: DeviceKind| {
                u.sessions
                    .values()
                    .filter(|s| s.device == d)
                    .map(|s| s.status)
                    .max_by_key(|s| rank(*s))
                    .unwrap_or(PresenceStatus::Offline)
            };
            ClientStatus {
                desktop: raw(DeviceKind::Desktop),
                mobile: raw(DeviceKind::Mobile),
                web: raw(DeviceKind::Web),
            }
        };
        registry::Part {
            client_status,
            custom_status: u.custom_status.clone(),
            activity: u.activity.clone(),
            set_at_ms: u.set_at_ms,
        }
    }

    /// Users whose part may have changed since the last call (each once).
    pub fn take_dirty(&mut self) -> Vec<u64> {
        let mut d = std::mem::take(&mut self.dirty);
        d.sort_unstable();
        d.dedup();
        d
    }

    /// Marks `users` as changed (their parts are written again).
    pub fn mark_dirty(&mut self, users: impl IntoIterator<Item = u64>) {
        self.dirty.extend(users);
    }

    /// Users with a part on this node.
    pub fn users(&self) -> impl Iterator<Item = u64> + '_ {
        self.users.keys().copied()
    }

    /// Whether `user` has a session here, or lost their last one less than the reconnect
    /// grace ago (they will be back, or shown offline).
    pub fn is_live(&self, user: u64) -> bool {
        self.users
            .get(&user)
            .is_some_and(|u| !u.sessions.is_empty() || u.offline_at.is_some())
    }

    /// Whether `user` shows as anything but offline.
    pub fn is_visible_online(&self, user: u64) -> bool {
        self.visible(user).status != PresenceStatus::Offline
    }

    fn publish_if_changed(&mut self, user: u64) -> Option<Presence> {
        let now_visible = self.visible(user);
        let u = self.users.entry(user).or_default();
        let before = u.published.clone().unwrap_or(Presence {
            status: PresenceStatus::Offline,
            ..now_visible.clone()
        });
        let changed = u.published.as_ref() != Some(&now_visible)
            && !(u.published.is_none() && now_visible.status == PresenceStatus::Offline);
        let _ = before;
        if changed {
            u.published = Some(now_visible.clone());
            Some(now_visible)
        } else {
            None
        }
    }

    /// A session became ready: a new one `Online`; a resumed one as it had set itself
    /// (`chosen`: its last status and texts), so a resume shows no flap.
    pub fn connect(
        &mut self,
        user: u64,
        session: SessionId,
        device: DeviceKind,
        chosen: Option<Chosen>,
        now: Instant,
    ) -> Option<Presence> {
        self.dirty.push(user);
        let u = self.users.entry(user).or_default();
        u.offline_at = None;
        let status = match &chosen {
            Some(c) if c.status != PresenceStatus::Offline => c.status,
            Some(_) => PresenceStatus::Invisible,
            None => PresenceStatus::Online,
        };
        if let Some(c) = chosen
            && (u.custom_status != c.custom_status || u.activity != c.activity)
        {
            u.custom_status = c.custom_status;
            u.activity = c.activity;
            u.set_at_ms = crate::ids::now_ms();
        }
        u.sessions.insert(
            session,
            SessionState {
                device,
                status,
                last_seen: now,
            },
        );
        self.publish_if_changed(user)
    }

    /// A session sent a heartbeat (or anything).
    pub fn seen(&mut self, user: u64, session: SessionId, now: Instant) {
        if let Some(s) = self.users.get_mut(&user).and_then(|u| u.sessions.get_mut(&session)) {
            s.last_seen = now;
        }
    }

    /// A session set its status (and the user's custom status and activity).
    pub fn set(
        &mut self,
        user: u64,
        session: SessionId,
        status: PresenceStatus,
        custom_status: Option<String>,
        activity: Option<String>,
    ) -> Option<Presence> {
        let u = self.users.get_mut(&user)?;
        let s = u.sessions.get_mut(&session)?;
        self.dirty.push(user);
        // Offline is not a choice a live session can make; invisible is.
        s.status = if status == PresenceStatus::Offline {
            PresenceStatus::Invisible
        } else {
            status
        };
        if u.custom_status != custom_status || u.activity != activity {
            u.set_at_ms = crate::ids::now_ms();
        }
        u.custom_status = custom_status;
        u.activity = activity;
        self.publish_if_changed(user)
    }

    /// A session ended. The last one starts the grace period instead of going offline.
    pub fn disconnect(&mut self, user: u64, session: SessionId, now: Instant) -> Option<Presence> {
        let u = self.users.get_mut(&user)?;
        u.sessions.remove(&session)?;
        self.dirty.push(user);
        if u.sessions.is_empty() {
            u.offline_at = Some(now + self.grace);
            return None;
        }
        self.publish_if_changed(user)
    }

    /// The soonest deadline a command at `now` can add ([`PresenceState::next_deadline`]
    /// moves no earlier than this): a new session's sweep, or a grace that starts.
    pub fn soonest_new_deadline(&self, now: Instant) -> Instant {
        now + self.grace.min(self.timeout)
    }

    /// The next grace end or sweep time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.users
            .values()
            .flat_map(|u| {
                u.offline_at
                    .into_iter()
                    .chain(u.sessions.values().map(|s| s.last_seen + self.timeout))
            })
            .min()
    }

    /// Ends grace periods and sweeps silent sessions; returns what others must be told.
    pub fn poll(&mut self, now: Instant) -> Vec<Presence> {
        let timeout = self.timeout;
        let mut touched = Vec::new();
        for (user, u) in &mut self.users {
            let before = u.sessions.len();
            u.sessions.retain(|_, s| s.last_seen + timeout > now);
            if u.sessions.len() != before {
                touched.push(*user);
                if u.sessions.is_empty() && u.offline_at.is_none() {
                    // Swept sessions get no grace: the crash happened a timeout ago.
                    u.offline_at = Some(now);
                }
            }
            if u.offline_at.is_some_and(|t| t <= now) {
                touched.push(*user);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        self.dirty.extend(&touched);
        let mut out = Vec::new();
        for user in touched {
            let expired = self
                .users
                .get(&user)
                .is_some_and(|u| u.sessions.is_empty() && u.offline_at.is_some_and(|t| t <= now));
            if expired {
                let was_visible = self
                    .users
                    .get(&user)
                    .and_then(|u| u.published.clone())
                    .is_some_and(|p| p.status != PresenceStatus::Offline);
                self.users.remove(&user);
                if was_visible {
                    out.push(self.visible(user));
                }
            } else if let Some(p) = self.publish_if_changed(user) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn sid(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    #[test]
    fn aggregate_and_per_platform_with_two_devices() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        let first = p.connect(7, sid(1), DeviceKind::Desktop, None, t0).unwrap();
        assert_eq!(first.status, PresenceStatus::Online);
        assert_eq!(first.client_status.desktop, PresenceStatus::Online);
        assert_eq!(first.client_status.mobile, PresenceStatus::Offline);
        let both = p.connect(7, sid(2), DeviceKind::Mobile, None, t0).unwrap();
        assert_eq!(both.client_status.mobile, PresenceStatus::Online);
        // Mobile goes idle: aggregate stays online, per-platform shows it.
        let idle = p.set(7, sid(2), PresenceStatus::Idle, None, None).unwrap();
        assert_eq!(
            (idle.status, idle.client_status.mobile),
            (PresenceStatus::Online, PresenceStatus::Idle)
        );
        // Desktop sets dnd with a custom status: dnd wins.
        let dnd = p
            .set(7, sid(1), PresenceStatus::Dnd, Some("focus".into()), None)
            .unwrap();
        assert_eq!(
            (dnd.status, dnd.custom_status.as_deref()),
            (PresenceStatus::Dnd, Some("focus"))
        );
        // Setting the same again changes nothing: no output.
        assert_eq!(p.set(7, sid(1), PresenceStatus::Dnd, Some("focus".into()), None), None);
        // Mobile leaves: per-platform changes at once, no grace for a non-last session.
        let left = p.disconnect(7, sid(2), t0).unwrap();
        assert_eq!(left.client_status.mobile, PresenceStatus::Offline);
    }

    #[test]
    fn invisible_looks_offline_to_others() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        p.connect(7, sid(1), DeviceKind::Web, None, t0);
        p.connect(7, sid(2), DeviceKind::Desktop, None, t0);
        let hidden = p
            .set(7, sid(2), PresenceStatus::Invisible, Some("secret".into()), None)
            .unwrap();
        assert_eq!(hidden.status, PresenceStatus::Offline);
        assert_eq!(hidden.client_status.web, PresenceStatus::Offline);
        assert_eq!(hidden.custom_status, None, "nothing leaks");
        assert!(!p.is_visible_online(7));
        // An invisible user connecting more sessions stays hidden, and silent.
        assert_eq!(p.connect(7, sid(3), DeviceKind::Mobile, None, t0), None);
    }

    /// The presence task keeps its deadline across heartbeats (`task.rs`): right only if a
    /// heartbeat can never make the next deadline earlier.
    #[test]
    fn a_heartbeat_never_brings_the_next_deadline_earlier() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        p.connect(7, sid(1), DeviceKind::Desktop, None, t0);
        p.connect(8, sid(2), DeviceKind::Web, None, t0 + S);
        p.connect(9, sid(3), DeviceKind::Web, None, t0 + 2 * S);
        p.disconnect(9, sid(3), t0 + 3 * S);
        let mut before = p.next_deadline().expect("sessions and a grace are pending");
        assert_eq!(before, t0 + 8 * S, "user 9's grace ends first");
        for (i, (user, session)) in [(7, 1), (8, 2), (7, 1), (9, 3)].into_iter().enumerate() {
            p.seen(user, sid(session), t0 + (4 + i as u32) * S);
            let after = p.next_deadline().expect("still pending");
            assert!(
                after >= before,
                "heartbeat {i} moved the deadline from {before:?} to {after:?}"
            );
            before = after;
        }
        // A sweep when it comes still finds what is due.
        let swept = p.poll(t0 + 9 * S);
        assert!(
            swept
                .iter()
                .any(|x| x.user_id == 9 && x.status == PresenceStatus::Offline)
        );
    }

    #[test]
    fn reconnect_within_grace_does_not_flap() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        p.connect(7, sid(1), DeviceKind::Desktop, None, t0);
        assert_eq!(p.disconnect(7, sid(1), t0 + S), None, "grace, not offline");
        assert!(p.is_visible_online(7));
        assert_eq!(p.next_deadline(), Some(t0 + 6 * S));
        assert_eq!(
            p.connect(7, sid(2), DeviceKind::Desktop, None, t0 + 3 * S),
            None,
            "same visible state: no event"
        );
        assert!(p.poll(t0 + 10 * S).is_empty(), "grace was cancelled");
    }

    #[test]
    fn grace_expiry_goes_offline_once() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        p.connect(7, sid(1), DeviceKind::Desktop, None, t0);
        p.disconnect(7, sid(1), t0);
        assert!(p.poll(t0 + 4 * S).is_empty());
        let out = p.poll(t0 + 5 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, PresenceStatus::Offline);
        assert!(p.poll(t0 + 20 * S).is_empty());
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn silent_sessions_are_swept() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 20 * S);
        p.connect(7, sid(1), DeviceKind::Desktop, None, t0);
        p.connect(7, sid(2), DeviceKind::Mobile, None, t0);
        p.seen(7, sid(1), t0 + 15 * S);
        // Mobile never heartbeats again: swept at 20 s; desktop remains.
        let out = p.poll(t0 + 20 * S);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].client_status.mobile, PresenceStatus::Offline);
        assert_eq!(out[0].status, PresenceStatus::Online);
        // Desktop too, at 35 s: offline right away (the crash was a timeout ago).
        let out = p.poll(t0 + 35 * S);
        assert_eq!(
            out.iter().map(|p| p.status).collect::<Vec<_>>(),
            vec![PresenceStatus::Offline]
        );
    }

    #[test]
    fn a_resumed_session_comes_back_as_it_had_set_itself_without_a_flap() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        p.connect(7, sid(1), DeviceKind::Web, None, t0);
        let dnd = p
            .set(7, sid(1), PresenceStatus::Dnd, Some("focus".into()), None)
            .unwrap();
        assert_eq!(p.disconnect(7, sid(1), t0 + S), None, "grace");
        let chosen = Chosen {
            status: PresenceStatus::Dnd,
            custom_status: Some("focus".into()),
            activity: None,
        };
        assert_eq!(
            p.connect(7, sid(1), DeviceKind::Web, Some(chosen), t0 + 2 * S),
            None,
            "the same as before the resume: nothing to tell"
        );
        assert_eq!(p.visible(7), dnd);
    }

    #[test]
    fn invisible_user_leaving_produces_no_offline_event() {
        let t0 = Instant::now();
        let mut p = PresenceState::new(5 * S, 60 * S);
        p.connect(7, sid(1), DeviceKind::Desktop, None, t0);
        p.set(7, sid(1), PresenceStatus::Invisible, None, None);
        p.disconnect(7, sid(1), t0);
        assert!(p.poll(t0 + 10 * S).is_empty());
    }
}
