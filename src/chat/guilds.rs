//! Chat requests on guilds and their parts: guilds, invites, members, roles (with the role
//! hierarchy), channels, permission overwrites, and DMs.

use super::*;

/// The longest timeout (28 days, as Discord's).
pub const MAX_TIMEOUT_SECS: u32 = 28 * 24 * 3600;

impl Chat {
    /// `user` was just added to `guild` (invite or server API): everything that follows a
    /// join — cached permission state, the member's topic, the announcements, the audience.
    async fn joined(&self, guild: &quaver_proto::Guild, user: u64) -> Result<(), ErrorBody> {
        let gid = guild.id;
        // A join only adds a member with no roles: update cached permission state in place
        // (every node, through the bus) instead of reloading it.
        let count = self.member_added(gid, user);
        let channels = self.store.channel_seqs(gid).await.map_err(store_err)?;
        self.bus.publish(BusEvent::MemberAdded {
            guild_id: gid,
            user_id: user,
            channels: channels.into_iter().collect(),
        });
        // Like the member lists in `Ready`, join announcements are for small guilds; in
        // large ones clients page the list (`Members` fetch).
        if count.is_none_or(|n| n <= SMALL_GUILD as usize) {
            self.publish_member(gid, user).await?;
        }
        self.publish_user(user, &EventBody::GuildUpdated { guild: guild.clone() });
        self.joined_audience(gid, user).await
    }

    /// Adds `user` to `guild` without an invite (the server API): `Ok(false)` if they were a
    /// member already; `BANNED` if banned there.
    pub async fn add_member(&self, guild: u64, user: u64) -> Result<bool, ErrorBody> {
        let g = self.store.guild(guild).await.map_err(store_err)?;
        if !self.store.add_member(guild, user, now_ms()).await.map_err(store_err)? {
            return Ok(false);
        }
        self.joined(&g, user).await?;
        Ok(true)
    }

    /// Lifts a ban (the server API): whether there was one.
    pub async fn unban(&self, guild: u64, user: u64) -> Result<bool, ErrorBody> {
        self.store.guild(guild).await.map_err(store_err)?;
        self.store.unban(guild, user, now_ms()).await.map_err(store_err)
    }

    /// `user` just joined `guild`: they and its members now see each other's presence, and
    /// they see who is in its voice channels they can view — each told at once, on every
    /// node (PROTOCOL.md: a snapshot wherever an audience changes).
    async fn joined_audience(&self, guild: u64, user: u64) -> Result<(), ErrorBody> {
        let g = self.guild(guild).await?;
        if self.large(&g) {
            // A large guild's members: to the joiner's sessions that look at it (those with
            // no view; the others when their view takes it in).
            self.bus.publish(BusEvent::ShowGuildMembers {
                user_id: user,
                guild_id: guild,
                again: false,
            });
        } else {
            let members: Vec<u64> = g.state.members.keys().copied().filter(|u| *u != user).collect();
            self.bus.publish(BusEvent::ShowPresences {
                to: Viewers::User(user),
                users: members,
            });
        }
        self.bus.publish(BusEvent::ShowPresences {
            to: Viewers::GuildExcept(guild, user),
            users: vec![user],
        });
        let voice: Vec<u64> = g
            .visible_channels(user)
            .iter()
            .filter(|c| c.kind == ChannelKind::Voice)
            .map(|c| c.id)
            .collect();
        if !voice.is_empty() {
            self.bus.publish(BusEvent::ShowVoiceStates {
                user_id: user,
                channels: voice,
            });
        }
        Ok(())
    }

    pub(super) async fn handle_guild(&self, user: u64, body: RequestBody, now: u64) -> Result<ResponseBody, Refusal> {
        use RequestBody as R;
        match body {
            R::CreateGuild { name } => {
                self.limit(user, Kind::Manage)?;
                validate::name(&name)?;
                let (gid, cid) = (self.id(), self.id());
                let g = self
                    .store
                    .create_guild(gid, cid, &name, user, Perms::DEFAULT_EVERYONE.0, now)
                    .await
                    .map_err(store_err)?;
                self.bus.publish(BusEvent::MemberAdded {
                    guild_id: g.id,
                    user_id: user,
                    channels: vec![(cid, 0)],
                });
                self.publish_user(user, &EventBody::GuildUpdated { guild: g.clone() });
                Ok(ResponseBody::Guild(g))
            }
            R::RenameGuild { guild_id, name } => {
                self.limit(user, Kind::Manage)?;
                validate::name(&name)?;
                let (_, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MANAGE_GUILD) {
                    return Err(forbidden("manage guild").into());
                }
                let g = self.store.rename_guild(guild_id, &name).await.map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::GuildUpdated { guild: g.clone() });
                Ok(ResponseBody::Guild(g))
            }
            R::DeleteGuild { guild_id } => {
                self.limit(user, Kind::Manage)?;
                let (g, _) = self.guild_perms(user, guild_id).await?;
                if g.state.guild.owner_id != user {
                    return Err(forbidden("guild owner").into());
                }
                // Tell members before the membership disappears.
                for m in g.state.members.keys() {
                    self.publish_user(*m, &EventBody::GuildRemoved { guild_id });
                }
                self.store.delete_guild(guild_id).await.map_err(store_err)?;
                for m in g.state.members.keys() {
                    self.bus.publish(BusEvent::MemberLeft { guild_id, user_id: *m });
                }
                self.changed(guild_id);
                Ok(ResponseBody::Done)
            }
            R::CreateInvite {
                guild_id,
                max_uses,
                max_age_secs,
            } => {
                self.limit(user, Kind::Manage)?;
                let (_, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::CREATE_INVITE) {
                    return Err(forbidden("create invite").into());
                }
                let code = invite_code();
                let expires = (max_age_secs > 0).then(|| now + u64::from(max_age_secs) * 1000);
                let inv = self
                    .store
                    .create_invite(&code, guild_id, user, max_uses, expires, now)
                    .await
                    .map_err(store_err)?;
                Ok(ResponseBody::Invite(inv))
            }
            R::JoinGuild { code } => {
                self.limit(user, Kind::Manage)?;
                if code.is_empty() || code.len() > 64 {
                    return Err(ErrorBody::new(ErrorCode::INVALID_INVITE, "invite unknown, used up or expired").into());
                }
                let (gid, already) = self.store.use_invite(&code, user, now).await.map_err(store_err)?;
                let guild = self.store.guild(gid).await.map_err(store_err)?;
                if !already {
                    self.joined(&guild, user).await?;
                }
                Ok(ResponseBody::Guild(guild))
            }
            R::LeaveGuild { guild_id } => {
                self.limit(user, Kind::Manage)?;
                let (g, _) = self.guild_perms(user, guild_id).await?;
                if g.state.guild.owner_id == user {
                    return Err(
                        ErrorBody::new(ErrorCode::OWNER, "the owner cannot leave; delete the guild instead").into(),
                    );
                }
                self.remove_member(guild_id, user, user, None, now).await?;
                Ok(ResponseBody::Done)
            }
            R::KickMember { guild_id, user_id } | R::BanMember { guild_id, user_id, .. } if user_id == user => {
                let _ = guild_id;
                Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "use LeaveGuild to leave").into())
            }
            R::KickMember { guild_id, user_id } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::KICK_MEMBERS) {
                    return Err(forbidden("kick members").into());
                }
                if g.state.guild.owner_id == user_id {
                    return Err(ErrorBody::new(ErrorCode::OWNER, "the owner cannot be removed").into());
                }
                if !g.state.members.contains_key(&user_id) {
                    return Err(not_found().into());
                }
                g.check_outranks_member(user, user_id)?;
                self.remove_member(guild_id, user_id, user, None, now).await?;
                Ok(ResponseBody::Done)
            }
            R::BanMember {
                guild_id,
                user_id,
                reason,
            } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::BAN_MEMBERS) {
                    return Err(forbidden("ban members").into());
                }
                if g.state.guild.owner_id == user_id {
                    return Err(ErrorBody::new(ErrorCode::OWNER, "the owner cannot be removed").into());
                }
                g.check_outranks_member(user, user_id)?;
                if reason.chars().count() > 512 {
                    return Err(ErrorBody::new(ErrorCode::TOO_LARGE, "reason over 512 characters").into());
                }
                self.remove_member(guild_id, user_id, user, Some(&reason), now).await?;
                Ok(ResponseBody::Done)
            }
            R::CreateRole {
                guild_id,
                name,
                permissions,
            } => {
                let old = self.check_role_change(user, guild_id, &name, permissions).await?;
                let role = self
                    .store
                    .create_role(self.id(), guild_id, &name, permissions & Perms::ALL.0)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::RoleUpdated { role: role.clone() });
                // Every other role moved up one: members see the new positions.
                for moved in self.guild(guild_id).await?.state.roles.iter() {
                    if old
                        .state
                        .roles
                        .iter()
                        .any(|r| r.id == moved.id && r.position != moved.position)
                    {
                        self.publish_guild(guild_id, &EventBody::RoleUpdated { role: moved.clone() });
                    }
                }
                Ok(ResponseBody::Role(role))
            }
            R::UpdateRole {
                guild_id,
                role_id,
                name,
                permissions,
            } => {
                let g = self.check_role_change(user, guild_id, &name, permissions).await?;
                let Some(old) = g.state.roles.iter().find(|r| r.id == role_id) else {
                    return Err(not_found().into());
                };
                // `@everyone` (position 0) is below everyone with a role; any other role
                // must be below the editor's highest.
                if !g.outranks(user, old.position) && role_id != guild_id {
                    return Err(forbidden("a role that is not below your highest role").into());
                }
                let role = self
                    .store
                    .update_role(guild_id, role_id, &name, permissions & Perms::ALL.0)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::RoleUpdated { role: role.clone() });
                self.announce_visibility(&g, guild_id).await?;
                Ok(ResponseBody::Role(role))
            }
            R::SetMemberRole {
                guild_id,
                user_id,
                role_id,
                add,
            } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MANAGE_ROLES) {
                    return Err(forbidden("manage roles").into());
                }
                // Nobody hands out (or takes away) a role at or above their own highest
                // one, nor one carrying a permission they lack — themselves included.
                let role = g.state.roles.iter().find(|r| r.id == role_id && r.id != guild_id);
                let Some(role) = role else {
                    return Err(not_found().into());
                };
                if !g.outranks(user, role.position) {
                    return Err(forbidden("a role that is not below your highest role").into());
                }
                if add && role.permissions & !p.0 != 0 && g.state.guild.owner_id != user {
                    return Err(forbidden("a role with a permission you do not have").into());
                }
                g.check_outranks_member(user, user_id)?;
                self.store
                    .set_member_role(guild_id, user_id, role_id, add)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                self.publish_member(guild_id, user_id).await?;
                self.announce_visibility(&g, guild_id).await?;
                Ok(ResponseBody::Done)
            }
            R::CreateChannel {
                guild_id,
                kind,
                name,
                topic,
                user_limit,
            } => {
                self.limit(user, Kind::Manage)?;
                validate::name(&name)?;
                validate::topic(&topic)?;
                if !matches!(kind, ChannelKind::Text | ChannelKind::Voice) {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "guild channels are Text or Voice").into());
                }
                let (_, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MANAGE_CHANNELS) {
                    return Err(forbidden("manage channels").into());
                }
                let c = self
                    .store
                    .create_channel(
                        crate::store::NewChannel {
                            id: self.id(),
                            guild: guild_id,
                            kind,
                            name: &name,
                            topic: &topic,
                            user_limit: user_limit.min(99),
                        },
                        now,
                    )
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                let g = self.guild(guild_id).await?;
                for u in g.viewers(c.id).iter() {
                    self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
                }
                Ok(ResponseBody::Channel(c))
            }
            R::DeleteChannel { channel_id } => {
                self.limit(user, Kind::Manage)?;
                let Access::Guild(g, c, p) = self.access(user, channel_id).await? else {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "DMs cannot be deleted").into());
                };
                if !p.has(Perms::MANAGE_CHANNELS) {
                    return Err(forbidden("manage channels").into());
                }
                let viewers = g.viewers(c.id);
                self.store.delete_channel(channel_id).await.map_err(store_err)?;
                self.channel_guild
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&channel_id);
                self.changed(g.state.guild.id);
                for u in viewers.iter() {
                    self.publish_user(*u, &EventBody::ChannelRemoved { channel_id });
                }
                Ok(ResponseBody::Done)
            }
            R::SetOverwrite {
                channel_id,
                target,
                allow,
                deny,
            } => {
                self.limit(user, Kind::Manage)?;
                self.set_overwrite(
                    user,
                    channel_id,
                    target,
                    Some((allow & Perms::ALL.0, deny & Perms::ALL.0)),
                )
                .await
            }
            R::DeleteOverwrite { channel_id, target } => {
                self.limit(user, Kind::Manage)?;
                self.set_overwrite(user, channel_id, target, None).await
            }
            R::OpenDm { user_id } => {
                self.limit(user, Kind::Manage)?;
                if user_id == user || user_id == 0 {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "a DM needs another user").into());
                }
                if self.blocked_between(user, user_id).await? {
                    return Err(ErrorBody::new(ErrorCode::BLOCKED, "blocked").into());
                }
                let c = self
                    .store
                    .open_dm(self.id(), user, user_id, now)
                    .await
                    .map_err(store_err)?;
                self.remember(&c);
                self.bus.publish(BusEvent::DmOpened {
                    channel_id: c.id,
                    recipients: c.recipients.clone(),
                    last_seq: c.last_seq,
                });
                for u in &c.recipients {
                    self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
                }
                Ok(ResponseBody::Channel(c))
            }
            R::CreateGroupDm { user_ids, name } => {
                self.limit(user, Kind::Manage)?;
                let mut others: Vec<u64> = user_ids.into_iter().filter(|u| *u != user && *u != 0).collect();
                others.sort_unstable();
                others.dedup();
                if others.is_empty() {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "a group DM needs other users").into());
                }
                if others.len() + 1 > MAX_GROUP_DM {
                    return Err(ErrorBody::new(ErrorCode::GROUP_FULL, "at most 10 people in a group DM").into());
                }
                if !name.is_empty() {
                    validate::name(&name)?;
                }
                let c = self
                    .store
                    .create_group_dm(self.id(), user, &others, &name, now)
                    .await
                    .map_err(store_err)?;
                self.remember(&c);
                self.bus.publish(BusEvent::DmOpened {
                    channel_id: c.id,
                    recipients: c.recipients.clone(),
                    last_seq: c.last_seq,
                });
                for u in &c.recipients {
                    self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
                }
                Ok(ResponseBody::Channel(c))
            }
            R::DeleteRole { guild_id, role_id } => {
                self.limit(user, Kind::Manage)?;
                let g = self.check_manage_role(user, guild_id, role_id).await?;
                self.store.delete_role(guild_id, role_id).await.map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::RoleDeleted { guild_id, role_id });
                self.announce_visibility(&g, guild_id).await?;
                Ok(ResponseBody::Done)
            }
            R::MoveRole {
                guild_id,
                role_id,
                position,
            } => {
                self.limit(user, Kind::Manage)?;
                let g = self.check_manage_role(user, guild_id, role_id).await?;
                if position == 0 {
                    return Err(
                        ErrorBody::new(ErrorCode::BAD_REQUEST, "position 0 is @everyone's; roles start at 1").into(),
                    );
                }
                // The new place must be below the mover's highest role too: nobody lifts a
                // role to (or above) their own rank.
                let top = g.state.roles.iter().map(|r| r.position).max().unwrap_or(0);
                if !g.outranks(user, position.min(top)) {
                    return Err(forbidden("a place that is not below your highest role").into());
                }
                let moved = self
                    .store
                    .move_role(guild_id, role_id, position)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                // The role as it now stands (unmoved when it was there already).
                let role = moved
                    .iter()
                    .chain(&g.state.roles)
                    .find(|r| r.id == role_id)
                    .cloned()
                    .ok_or_else(not_found)?;
                for r in moved {
                    self.publish_guild(guild_id, &EventBody::RoleUpdated { role: r });
                }
                Ok(ResponseBody::Role(role))
            }
            R::TimeoutMember {
                guild_id,
                user_id,
                duration_secs,
                reason,
            } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MODERATE_MEMBERS) {
                    return Err(forbidden("moderate members").into());
                }
                if user_id == user {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "you cannot time yourself out").into());
                }
                if duration_secs > MAX_TIMEOUT_SECS {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "a timeout lasts at most 28 days").into());
                }
                if reason.chars().count() > 512 {
                    return Err(ErrorBody::new(ErrorCode::TOO_LARGE, "reason over 512 characters").into());
                }
                if !g.state.members.contains_key(&user_id) {
                    return Err(not_found().into());
                }
                if g.state.guild.owner_id == user_id {
                    return Err(ErrorBody::new(ErrorCode::OWNER, "the owner cannot be timed out").into());
                }
                if duration_secs > 0 && g.perms(user_id, None).is_some_and(|p| p.has(Perms::ADMINISTRATOR)) {
                    return Err(forbidden("timing out an administrator").into());
                }
                g.check_outranks_member(user, user_id)?;
                let until = if duration_secs == 0 {
                    0
                } else {
                    now + u64::from(duration_secs) * 1000
                };
                if !self
                    .store
                    .set_timeout(guild_id, user_id, until, user, &reason)
                    .await
                    .map_err(store_err)?
                {
                    return Err(not_found().into());
                }
                self.changed(guild_id);
                self.publish_member(guild_id, user_id).await?;
                if until > 0 {
                    // Out of voice at once, on whichever node serves their channel.
                    self.bus.publish(BusEvent::Order(crate::gateway::Order::Voice {
                        guild_id,
                        user_id,
                        action: crate::gateway::VoiceAction::Disconnect,
                    }));
                }
                Ok(ResponseBody::Done)
            }
            _ => Err(ErrorBody::new(ErrorCode::WRONG_LANE, "not a guild request").into()),
        }
    }

    /// A user's name or avatar changed: every guild they are in is told (their member entry).
    pub async fn profile_changed(&self, user: u64) -> Result<(), ErrorBody> {
        for guild in self.store.guild_ids_of(user).await.map_err(store_err)? {
            self.publish_member(guild, user).await?;
        }
        Ok(())
    }

    /// Tells a guild a member's current state (roles, name, avatar, timeout).
    async fn publish_member(&self, guild_id: u64, user_id: u64) -> Result<(), ErrorBody> {
        let member = self
            .store
            .members(guild_id, user_id.saturating_sub(1), 1)
            .await
            .map_err(store_err)?;
        if let Some(member) = member.into_iter().next().filter(|m| m.user_id == user_id) {
            self.publish_guild(guild_id, &EventBody::MemberUpdated { guild_id, member });
        }
        Ok(())
    }

    /// Checks that `user` may delete or move `role_id`: manage-roles, a role of the guild
    /// other than `@everyone`, below their highest.
    async fn check_manage_role(&self, user: u64, guild_id: u64, role_id: u64) -> Result<Arc<GuildView>, Refusal> {
        let (g, p) = self.guild_perms(user, guild_id).await?;
        if !p.has(Perms::MANAGE_ROLES) {
            return Err(forbidden("manage roles").into());
        }
        if role_id == guild_id {
            return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "@everyone cannot be deleted or moved").into());
        }
        let Some(role) = g.state.roles.iter().find(|r| r.id == role_id) else {
            return Err(not_found().into());
        };
        if !g.outranks(user, role.position) {
            return Err(forbidden("a role that is not below your highest role").into());
        }
        Ok(g)
    }

    /// Checks a role creation or change: rate, name, manage-roles, and that nobody grants
    /// a permission they lack (the owner has everything).
    async fn check_role_change(
        &self,
        user: u64,
        guild_id: u64,
        name: &str,
        permissions: u64,
    ) -> Result<Arc<GuildView>, Refusal> {
        self.limit(user, Kind::Manage)?;
        validate::name(name)?;
        let (g, p) = self.guild_perms(user, guild_id).await?;
        if !p.has(Perms::MANAGE_ROLES) {
            return Err(forbidden("manage roles").into());
        }
        if permissions & !p.0 != 0 && g.state.guild.owner_id != user {
            return Err(forbidden("a permission you do not have").into());
        }
        Ok(g)
    }

    async fn remove_member(
        &self,
        guild_id: u64,
        user_id: u64,
        actor: u64,
        ban: Option<&str>,
        now: u64,
    ) -> Result<(), ErrorBody> {
        self.store
            .remove_member(guild_id, user_id, actor, ban, now)
            .await
            .map_err(store_err)?;
        self.changed(guild_id);
        self.publish_user(user_id, &EventBody::GuildRemoved { guild_id });
        self.publish_guild(guild_id, &EventBody::MemberRemoved { guild_id, user_id });
        self.bus.publish(BusEvent::MemberLeft { guild_id, user_id });
        Ok(())
    }

    async fn set_overwrite(
        &self,
        user: u64,
        channel_id: u64,
        target: OverwriteTarget,
        bits: Option<(u64, u64)>,
    ) -> Result<ResponseBody, Refusal> {
        let Access::Guild(g, _, p) = self.access(user, channel_id).await? else {
            return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "DMs have no overwrites").into());
        };
        if !p.has(Perms::MANAGE_ROLES) {
            return Err(forbidden("manage roles").into());
        }
        if let Some((allow, deny)) = bits
            && (allow | deny) & !p.0 != 0
            && g.state.guild.owner_id != user
        {
            return Err(forbidden("a permission you do not have").into());
        }
        self.store
            .set_overwrite(channel_id, target, bits)
            .await
            .map_err(store_err)?;
        let gid = g.state.guild.id;
        self.changed(gid);
        self.announce_visibility(&g, gid).await?;
        Ok(ResponseBody::Done)
    }
}
