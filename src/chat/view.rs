//! Cached permission state: a guild's roles, members and channels as one view (with the
//! role hierarchy), a private channel's recipients, and a user's access to one channel.

use super::*;

/// A cached guild with memoized viewer lists.
#[derive(Debug)]
pub(super) struct GuildView {
    pub(super) state: GuildState,
    pub(super) viewers: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

impl GuildView {
    pub(super) fn perms(&self, user: u64, channel: Option<&Channel>) -> Option<Perms> {
        let role_ids = self.state.members.get(&user)?;
        let roles: Vec<(u64, u64)> = role_ids
            .iter()
            .filter_map(|id| {
                self.state
                    .roles
                    .iter()
                    .find(|r| r.id == *id)
                    .map(|r| (r.id, r.permissions))
            })
            .collect();
        let everyone = self
            .state
            .roles
            .iter()
            .find(|r| r.id == self.state.guild.id)
            .map_or(0, |r| r.permissions);
        let s = Subject {
            user_id: user,
            is_owner: self.state.guild.owner_id == user,
            everyone,
            roles: &roles,
        };
        let p = match channel {
            Some(c) => perms::in_channel(&s, self.state.guild.id, &c.overwrites),
            None => perms::base(&s),
        };
        // A timeout leaves seeing and reading; the owner and administrators cannot be timed
        // out (the request refuses them), and one made before they became so does not bind.
        if p != Perms::ALL && self.timed_out(user).is_some() {
            return Some(Perms(p.0 & Perms::WHILE_TIMED_OUT.0));
        }
        Some(p)
    }

    /// When `user`'s timeout in this guild ends, if it has not yet.
    pub(super) fn timed_out(&self, user: u64) -> Option<u64> {
        self.state
            .timeouts
            .get(&user)
            .copied()
            .filter(|until| *until > now_ms())
    }

    /// The refusal for `user` lacking `what` here: `TIMED_OUT` (saying until when) while
    /// they are timed out, `FORBIDDEN` otherwise.
    pub(super) fn refuse(&self, user: u64, what: &str) -> ErrorBody {
        match self.timed_out(user) {
            Some(until) => ErrorBody::new(
                ErrorCode::TIMED_OUT,
                format!(
                    "you are timed out in this guild until {}",
                    crate::webhooks::rfc3339(until)
                ),
            ),
            None => forbidden(what),
        }
    }

    pub(super) fn channel(&self, id: u64) -> Option<&Channel> {
        self.state.channels.iter().find(|c| c.id == id)
    }

    /// The position of `user`'s highest role (`@everyone`, position 0, if none).
    pub(super) fn top_position(&self, user: u64) -> u32 {
        self.state
            .members
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.state.roles.iter().find(|r| r.id == *id))
            .map(|r| r.position)
            .max()
            .unwrap_or(0)
    }

    /// Discord's hierarchy: the owner outranks everything; anyone else only what sits
    /// strictly below their highest role. `position` is a role's, or a member's top one.
    pub(super) fn outranks(&self, actor: u64, position: u32) -> bool {
        self.state.guild.owner_id == actor || self.top_position(actor) > position
    }

    /// Checks that `actor` (holding `actor_perms`) may act on member `target` with a
    /// hierarchy-bound permission (kick, ban, change their roles).
    pub(super) fn check_outranks_member(&self, actor: u64, target: u64) -> Result<(), ErrorBody> {
        if actor != target && !self.outranks(actor, self.top_position(target)) {
            return Err(forbidden("a member whose highest role is not below yours"));
        }
        Ok(())
    }

    pub(super) fn viewers(&self, channel: u64) -> Arc<Vec<u64>> {
        let mut memo = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = memo.get(&channel) {
            return v.clone();
        }
        let v: Vec<u64> = match self.channel(channel) {
            Some(c) => self
                .state
                .members
                .keys()
                .copied()
                .filter(|u| self.perms(*u, Some(c)).is_some_and(|p| p.has(Perms::VIEW_CHANNEL)))
                .collect(),
            None => Vec::new(),
        };
        let v = Arc::new(v);
        memo.insert(channel, v.clone());
        v
    }

    pub(super) fn visible_channels(&self, user: u64) -> Vec<Channel> {
        self.state
            .channels
            .iter()
            .filter(|c| self.perms(user, Some(c)).is_some_and(|p| p.has(Perms::VIEW_CHANNEL)))
            .cloned()
            .collect()
    }
}

/// A DM or group DM: its kind and its members, which never change once created (so
/// they are cached for good).
#[derive(Debug)]
pub(super) struct Private {
    pub(super) kind: ChannelKind,
    pub(super) recipients: Arc<Vec<u64>>,
}

/// Where a channel lives, for access checks.
pub(super) enum Access {
    Guild(Arc<GuildView>, Channel, Perms),
    Private(Arc<Private>),
}

impl Access {
    /// The refusal for `user` lacking `what` in this channel ([`GuildView::refuse`]).
    pub(super) fn refuse(&self, user: u64, what: &str) -> ErrorBody {
        match self {
            Access::Guild(g, _, _) => g.refuse(user, what),
            Access::Private(_) => forbidden(what),
        }
    }

    pub(super) fn perms(&self) -> Perms {
        match self {
            Access::Guild(_, _, p) => *p,
            Access::Private(_) => DM_PERMS,
        }
    }
    pub(super) fn guild_id(&self) -> Option<u64> {
        match self {
            Access::Guild(g, _, _) => Some(g.state.guild.id),
            Access::Private(_) => None,
        }
    }
}
