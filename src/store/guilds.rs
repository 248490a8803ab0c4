//! Users, guilds, members, bans, invites and roles.

use super::*;
use crate::api::types::Id;
use crate::webhooks::catalogue::{
    LeftHow, WebhookGuild, WebhookMember, WebhookMemberBanned, WebhookMemberLeft, WebhookMemberRole,
    WebhookMemberTimeout, WebhookRole, WebhookRoleDeleted, guild_event,
};

/// A stored timeout's end, or 0 once it has passed.
fn live_until(until_ms: u64, now_ms: u64) -> u64 {
    if until_ms > now_ms { until_ms } else { 0 }
}

fn role_of(r: &AnyRow) -> Result<Role> {
    Ok(Role {
        id: u(r.try_get("id")?),
        guild_id: u(r.try_get("guild_id")?),
        name: r.try_get("name")?,
        permissions: u(r.try_get("permissions")?),
        position: r.try_get::<i64, _>("position")? as u32,
    })
}

impl Store {
    // ----- users ---------------------------------------------------------------------

    /// Creates or renames a user from token claims (a deleted user is created again). A
    /// user whose name is unchanged — every connection but the first — writes nothing.
    pub async fn upsert_user(&self, id: u64, name: &str, now_ms: u64) -> Result<()> {
        self.deadline(async move {
            sqlx::query(
                "INSERT INTO users (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at, deleted_at = NULL \
                 WHERE users.name <> excluded.name OR users.deleted_at IS NOT NULL",
            )
            .bind(i(id))
            .bind(name)
            .bind(i(now_ms))
            .execute(&mut *self.conn().await?)
            .await?;
            Ok(())
        })
        .await
    }

    /// Sets a user's avatar URL (`""` = none); `false` if the user is unknown or deleted.
    pub async fn set_avatar(&self, id: u64, url: &str, now_ms: u64) -> Result<bool> {
        self.deadline(async move {
            let n =
                sqlx::query("UPDATE users SET avatar_url = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL")
                    .bind(i(id))
                    .bind(url)
                    .bind(i(now_ms))
                    .execute(&mut *self.conn().await?)
                    .await?
                    .rows_affected();
            Ok(n > 0)
        })
        .await
    }

    /// A live user's name and avatar URL.
    pub async fn live_profile(&self, id: u64) -> Result<Option<(String, String)>> {
        self.deadline(async move {
            sqlx::query("SELECT name, avatar_url FROM users WHERE id = $1 AND deleted_at IS NULL")
                .bind(i(id))
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .map(|r| Ok((r.try_get("name")?, r.try_get("avatar_url")?)))
                .transpose()
        })
        .await
    }

    /// Marks a user deleted: their profile is gone, their name becomes `name` (what their
    /// messages show).
    pub async fn mark_user_deleted(&self, id: u64, name: &str, now_ms: u64) -> Result<()> {
        self.deadline(async move {
            sqlx::query("UPDATE users SET name = $2, updated_at = $3, deleted_at = $3 WHERE id = $1")
                .bind(i(id))
                .bind(name)
                .bind(i(now_ms))
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(())
        })
        .await
    }

    /// A user's name, if known and not deleted.
    pub async fn live_user_name(&self, id: u64) -> Result<Option<String>> {
        self.name_of(id, "SELECT name FROM users WHERE id = $1 AND deleted_at IS NULL")
            .await
    }

    /// A user's name, if known (deleted users' too).
    pub async fn user_name(&self, id: u64) -> Result<Option<String>> {
        self.name_of(id, "SELECT name FROM users WHERE id = $1").await
    }

    async fn name_of(&self, id: u64, q: &'static str) -> Result<Option<String>> {
        self.deadline(async move {
            Ok(sqlx::query(q)
                .bind(i(id))
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .map(|r| r.try_get::<String, _>("name"))
                .transpose()?)
        })
        .await
    }

    // ----- guilds --------------------------------------------------------------------

    /// Creates a guild with its `@everyone` role (id = guild id), the owner as member and a
    /// `general` text channel (id `general_id`).
    pub async fn create_guild(
        &self,
        id: u64,
        general_id: u64,
        name: &str,
        owner: u64,
        everyone: u64,
        now_ms: u64,
    ) -> Result<Guild> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            sqlx::query("INSERT INTO guilds (id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)")
                .bind(i(id))
                .bind(name)
                .bind(i(owner))
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO roles (id, guild_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)",
            )
            .bind(i(id))
            .bind(i(everyone))
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3)")
                .bind(i(id))
                .bind(i(owner))
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, $2, 0, 'general', '', 0, 0, 0, 0, $3)",
            )
            .bind(i(general_id))
            .bind(i(id))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            let data = WebhookGuild {
                guild_id: Id(id),
                name: Some(name.to_string()),
                owner_id: Some(Id(owner)),
            };
            self.hook_record(&mut tx, "guild.created", now_ms, || guild_event("guild.created", id, &data))
                .await?;
            tx.commit().await?;
            Ok(Guild {
                id,
                name: name.to_string(),
                owner_id: owner,
            })
        })
        .await
    }

    /// A guild.
    pub async fn guild(&self, id: u64) -> Result<Guild> {
        self.deadline(async move {
            let r = sqlx::query("SELECT id, name, owner_id FROM guilds WHERE id = $1")
                .bind(i(id))
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .ok_or(StoreError::NotFound)?;
            Ok(Guild {
                id: u(r.try_get("id")?),
                name: r.try_get("name")?,
                owner_id: u(r.try_get("owner_id")?),
            })
        })
        .await
    }

    /// Renames a guild.
    pub async fn rename_guild(&self, id: u64, name: &str) -> Result<Guild> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let n = sqlx::query("UPDATE guilds SET name = $2 WHERE id = $1")
                .bind(i(id))
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            let data = WebhookGuild {
                guild_id: Id(id),
                name: Some(name.to_string()),
                owner_id: None,
            };
            let now_ms = crate::ids::now_ms();
            self.hook_record(&mut tx, "guild.updated", now_ms, || {
                guild_event("guild.updated", id, &data)
            })
            .await?;
            tx.commit().await?;
            self.guild(id).await
        })
        .await
    }

    /// Deletes a guild and everything in it.
    pub async fn delete_guild(&self, id: u64) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            // Explicit, in dependency order: SQLite only cascades with foreign_keys on, and
            // being explicit keeps both backends identical.
            for q in [
                "DELETE FROM channel_events WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM reactions WHERE message_id IN (SELECT m.id FROM messages m JOIN channels c ON m.channel_id = c.id WHERE c.guild_id = $1)",
                "DELETE FROM messages WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM read_states WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM overwrites WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM channels WHERE guild_id = $1",
                "DELETE FROM member_roles WHERE guild_id = $1",
                "DELETE FROM member_timeouts WHERE guild_id = $1",
                "DELETE FROM members WHERE guild_id = $1",
                "DELETE FROM roles WHERE guild_id = $1",
                "DELETE FROM bans WHERE guild_id = $1",
                "DELETE FROM invites WHERE guild_id = $1",
                "DELETE FROM guilds WHERE id = $1",
            ] {
                sqlx::query(q).bind(i(id)).execute(&mut *tx).await?;
            }
            let data = WebhookGuild {
                guild_id: Id(id),
                name: None,
                owner_id: None,
            };
            let now_ms = crate::ids::now_ms();
            self.hook_record(&mut tx, "guild.deleted", now_ms, || guild_event("guild.deleted", id, &data))
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Ids of the guilds `user` is in.
    pub async fn guild_ids_of(&self, user: u64) -> Result<Vec<u64>> {
        self.deadline(async move {
            let rows = sqlx::query("SELECT guild_id FROM members WHERE user_id = $1 ORDER BY guild_id")
                .bind(i(user))
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(|r| Ok(u(r.try_get("guild_id")?))).collect()
        })
        .await
    }

    /// Everything about a guild that permission checks need.
    pub async fn guild_state(&self, id: u64) -> Result<GuildState> {
        self.deadline(async move {
            let guild = self.guild(id).await?;
            let roles = sqlx::query(
                "SELECT id, guild_id, name, permissions, position FROM roles WHERE guild_id = $1 ORDER BY position, id",
            )
            .bind(i(id))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(role_of)
            .collect::<Result<Vec<_>>>()?;
            let mut members: HashMap<u64, Vec<u64>> = HashMap::new();
            for r in sqlx::query("SELECT user_id FROM members WHERE guild_id = $1")
                .bind(i(id))
                .fetch_all(&mut *self.conn().await?)
                .await?
            {
                members.insert(u(r.try_get("user_id")?), Vec::new());
            }
            for r in sqlx::query("SELECT user_id, role_id FROM member_roles WHERE guild_id = $1")
                .bind(i(id))
                .fetch_all(&mut *self.conn().await?)
                .await?
            {
                if let Some(v) = members.get_mut(&u(r.try_get("user_id")?)) {
                    v.push(u(r.try_get("role_id")?));
                }
            }
            let channels = self.guild_channels(id).await?;
            let now = crate::ids::now_ms();
            let mut timeouts = HashMap::new();
            for r in sqlx::query("SELECT user_id, until_ms FROM member_timeouts WHERE guild_id = $1 AND until_ms > $2")
                .bind(i(id))
                .bind(i(now))
                .fetch_all(&mut *self.conn().await?)
                .await?
            {
                timeouts.insert(u(r.try_get("user_id")?), u(r.try_get("until_ms")?));
            }
            Ok(GuildState {
                guild,
                roles,
                members,
                channels,
                timeouts,
            })
        })
        .await
    }

    // ----- members, bans, invites ----------------------------------------------------

    /// Creates an invite.
    pub async fn create_invite(
        &self,
        code: &str,
        guild: u64,
        inviter: u64,
        max_uses: u32,
        expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Invite> {
        self.deadline(async move {
            sqlx::query(
                "INSERT INTO invites (code, guild_id, inviter_id, max_uses, uses, expires_at, created_at) VALUES ($1, $2, $3, $4, 0, $5, $6)",
            )
            .bind(code)
            .bind(i(guild))
            .bind(i(inviter))
            .bind(i64::from(max_uses))
            .bind(expires_at.map(i))
            .bind(i(now_ms))
            .execute(&mut *self.conn().await?)
            .await?;
            Ok(Invite {
                code: code.to_string(),
                guild_id: guild,
                max_uses,
                expires_at_ms: expires_at,
            })
        })
        .await
    }

    /// The invite `code` while it can still be used at `now_ms` (`None`: unknown, used up
    /// or expired).
    pub async fn invite(&self, code: &str, now_ms: u64) -> Result<Option<Invite>> {
        self.deadline(async move {
            let row = sqlx::query(
                "SELECT guild_id, max_uses, expires_at FROM invites WHERE code = $1 \
                 AND (max_uses = 0 OR uses < max_uses) AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(code)
            .bind(i(now_ms))
            .fetch_optional(&mut *self.conn().await?)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let max_uses: i64 = row.try_get("max_uses")?;
            let expires: Option<i64> = row.try_get("expires_at")?;
            Ok(Some(Invite {
                code: code.to_string(),
                guild_id: u(row.try_get("guild_id")?),
                max_uses: u32::try_from(max_uses).unwrap_or(u32::MAX),
                expires_at_ms: expires.map(u),
            }))
        })
        .await
    }

    /// Joins `user` to the invite's guild; returns the guild id and whether they were
    /// already a member (then the invite is not used up).
    pub async fn use_invite(&self, code: &str, user: u64, now_ms: u64) -> Result<(u64, bool)> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            // Take the use first (the write lock), then check it was valid.
            let n = sqlx::query(
                "UPDATE invites SET uses = uses + 1 WHERE code = $1 AND (max_uses = 0 OR uses < max_uses) \
                 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(code)
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::InvalidInvite);
            }
            let guild: i64 = sqlx::query("SELECT guild_id FROM invites WHERE code = $1")
                .bind(code)
                .fetch_one(&mut *tx)
                .await?
                .try_get("guild_id")?;
            let banned = sqlx::query("SELECT 1 FROM bans WHERE guild_id = $1 AND user_id = $2")
                .bind(guild)
                .bind(i(user))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if banned {
                return Err(StoreError::Banned);
            }
            let inserted = sqlx::query(
                "INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(guild)
            .bind(i(user))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Already a member: leave the invite's use count as it was.
                tx.rollback().await?;
                return Ok((u(guild), true));
            }
            self.hook_joined(&mut tx, u(guild), user, now_ms).await?;
            tx.commit().await?;
            Ok((u(guild), false))
        })
        .await
    }

    /// Adds `user` to `guild` (no invite): whether they were not a member before;
    /// [`StoreError::Banned`] when banned there.
    pub async fn add_member(&self, guild: u64, user: u64, now_ms: u64) -> Result<bool> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let banned = sqlx::query("SELECT 1 FROM bans WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if banned {
                tx.rollback().await?;
                return Err(StoreError::Banned);
            }
            let inserted = sqlx::query(
                "INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(i(guild))
            .bind(i(user))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted > 0 {
                self.hook_joined(&mut tx, guild, user, now_ms).await?;
            }
            tx.commit().await?;
            Ok(inserted > 0)
        })
        .await
    }

    /// Lifts `user`'s ban from `guild`: whether there was one.
    pub async fn unban(&self, guild: u64, user: u64, now_ms: u64) -> Result<bool> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let n = sqlx::query("DELETE FROM bans WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                let data = WebhookMember {
                    guild_id: Id(guild),
                    user_id: Id(user),
                };
                self.hook_record(&mut tx, "member.unbanned", now_ms, || {
                    guild_event("member.unbanned", guild, &data)
                })
                .await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    async fn hook_role(
        &self,
        tx: &mut Tx,
        kind: &'static str,
        guild: u64,
        id: u64,
        name: &str,
        permissions: u64,
    ) -> Result<()> {
        let data = WebhookRole {
            guild_id: Id(guild),
            role_id: Id(id),
            name: name.to_string(),
            permissions: permissions.to_string(),
        };
        let now_ms = crate::ids::now_ms();
        self.hook_record(tx, kind, now_ms, || guild_event(kind, guild, &data))
            .await
    }

    async fn hook_joined(&self, tx: &mut Tx, guild: u64, user: u64, now_ms: u64) -> Result<()> {
        let data = WebhookMember {
            guild_id: Id(guild),
            user_id: Id(user),
        };
        self.hook_record(tx, "member.joined", now_ms, || {
            guild_event("member.joined", guild, &data)
        })
        .await
    }

    /// Removes a member: they left (`actor == user`) or `actor` kicked them; with `ban`,
    /// also bans them.
    pub async fn remove_member(
        &self,
        guild: u64,
        user: u64,
        actor: u64,
        ban: Option<&str>,
        now_ms: u64,
    ) -> Result<bool> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            if let Some(reason) = ban {
                let n = sqlx::query("INSERT INTO bans (guild_id, user_id, reason, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(i(guild))
                    .bind(i(user))
                    .bind(reason)
                    .bind(i(now_ms))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n > 0 {
                    let data = WebhookMemberBanned {
                        guild_id: Id(guild),
                        user_id: Id(user),
                        by: Id(actor),
                        reason: reason.to_string(),
                    };
                    self.hook_record(&mut tx, "member.banned", now_ms, || {
                        guild_event("member.banned", guild, &data)
                    })
                    .await?;
                }
            }
            sqlx::query("DELETE FROM member_roles WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM members WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                let how = match (ban, actor == user) {
                    (Some(_), _) => LeftHow::Banned,
                    (None, true) => LeftHow::Left,
                    (None, false) => LeftHow::Kicked,
                };
                let data = WebhookMemberLeft {
                    guild_id: Id(guild),
                    user_id: Id(user),
                    how,
                    by: (how != LeftHow::Left).then_some(Id(actor)),
                };
                self.hook_record(&mut tx, "member.left", now_ms, || guild_event("member.left", guild, &data))
                    .await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    /// Members of a guild with names, by user id after `after`.
    pub async fn members(&self, guild: u64, after: u64, limit: u32) -> Result<Vec<Member>> {
        self.deadline(async move {
            let rows = sqlx::query(
                "SELECT m.user_id, COALESCE(u.name, '') AS name, COALESCE(u.avatar_url, '') AS avatar_url, \
                 COALESCE(t.until_ms, 0) AS until_ms FROM members m LEFT JOIN users u ON u.id = m.user_id \
                 LEFT JOIN member_timeouts t ON t.guild_id = m.guild_id AND t.user_id = m.user_id \
                 WHERE m.guild_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3",
            )
            .bind(i(guild))
            .bind(i(after))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.conn().await?)
            .await?;
            // The roles of this page's members only (not the guild's whole state).
            let mut roles: HashMap<u64, Vec<u64>> = HashMap::new();
            if let Some(last) = rows.last() {
                for r in sqlx::query(
                    "SELECT user_id, role_id FROM member_roles WHERE guild_id = $1 AND user_id > $2 AND user_id <= $3",
                )
                .bind(i(guild))
                .bind(i(after))
                .bind(last.try_get::<i64, _>("user_id")?)
                .fetch_all(&mut *self.conn().await?)
                .await?
                {
                    roles
                        .entry(u(r.try_get("user_id")?))
                        .or_default()
                        .push(u(r.try_get("role_id")?));
                }
            }
            let now = crate::ids::now_ms();
            rows.iter()
                .map(|r| {
                    let user_id = u(r.try_get("user_id")?);
                    Ok(Member {
                        user_id,
                        name: r.try_get("name")?,
                        roles: roles.remove(&user_id).unwrap_or_default(),
                        avatar_url: r.try_get("avatar_url")?,
                        timed_out_until_ms: live_until(u(r.try_get("until_ms")?), now),
                    })
                })
                .collect()
        })
        .await
    }

    /// Number of members.
    pub async fn member_count(&self, guild: u64) -> Result<u32> {
        self.deadline(async move {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM members WHERE guild_id = $1")
                .bind(i(guild))
                .fetch_one(&mut *self.conn().await?)
                .await?
                .try_get("n")?;
            Ok(n as u32)
        })
        .await
    }

    // ----- roles ---------------------------------------------------------------------

    /// Creates a role at the bottom of the hierarchy (position 1, just above `@everyone`),
    /// moving every other role up one: whoever may manage roles can then manage the new
    /// one (Discord's rule; a role created on top would outrank its creator).
    pub async fn create_role(&self, id: u64, guild: u64, name: &str, permissions: u64) -> Result<Role> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            sqlx::query("UPDATE roles SET position = position + 1 WHERE guild_id = $1 AND id <> $1")
                .bind(i(guild))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO roles (id, guild_id, name, permissions, position) VALUES ($1, $2, $3, $4, 1)")
                .bind(i(id))
                .bind(i(guild))
                .bind(name)
                .bind(i(permissions))
                .execute(&mut *tx)
                .await?;
            self.hook_role(&mut tx, "role.created", guild, id, name, permissions)
                .await?;
            tx.commit().await?;
            Ok(Role {
                id,
                guild_id: guild,
                name: name.to_string(),
                permissions,
                position: 1,
            })
        })
        .await
    }

    /// Changes a role.
    pub async fn update_role(&self, guild: u64, id: u64, name: &str, permissions: u64) -> Result<Role> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let r = sqlx::query(
                "UPDATE roles SET name = $3, permissions = $4 WHERE guild_id = $1 AND id = $2 \
                 RETURNING id, guild_id, name, permissions, position",
            )
            .bind(i(guild))
            .bind(i(id))
            .bind(name)
            .bind(i(permissions))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let role = role_of(&r)?;
            self.hook_role(&mut tx, "role.updated", guild, id, name, permissions)
                .await?;
            tx.commit().await?;
            Ok(role)
        })
        .await
    }

    /// Gives or takes a role; the member and role must be in the guild.
    pub async fn set_member_role(&self, guild: u64, user: u64, role: u64, add: bool) -> Result<()> {
        self.deadline(async move {
            let ok = sqlx::query("SELECT 1 FROM members m JOIN roles r ON r.guild_id = m.guild_id WHERE m.guild_id = $1 AND m.user_id = $2 AND r.id = $3 AND r.id <> $1")
                .bind(i(guild))
                .bind(i(user))
                .bind(i(role))
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .is_some();
            if !ok {
                return Err(StoreError::NotFound);
            }
            let q = if add {
                "INSERT INTO member_roles (guild_id, user_id, role_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM member_roles WHERE guild_id = $1 AND user_id = $2 AND role_id = $3"
            };
            let mut tx = self.begin().await?;
            let n = sqlx::query(q)
                .bind(i(guild))
                .bind(i(user))
                .bind(i(role))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                let data = WebhookMemberRole {
                    guild_id: Id(guild),
                    user_id: Id(user),
                    role_id: Id(role),
                    added: add,
                };
                let now_ms = crate::ids::now_ms();
                self.hook_record(&mut tx, "member.roles_updated", now_ms, || {
                    guild_event("member.roles_updated", guild, &data)
                })
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Deletes a role (not `@everyone`): members lose it, channel overwrites naming it go.
    pub async fn delete_role(&self, guild: u64, id: u64) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let n = sqlx::query("DELETE FROM roles WHERE guild_id = $1 AND id = $2 AND id <> $1")
                .bind(i(guild))
                .bind(i(id))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM member_roles WHERE guild_id = $1 AND role_id = $2")
                .bind(i(guild))
                .bind(i(id))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM overwrites WHERE target_kind = 0 AND target_id = $2 \
                 AND channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
            )
            .bind(i(guild))
            .bind(i(id))
            .execute(&mut *tx)
            .await?;
            let data = WebhookRoleDeleted {
                guild_id: Id(guild),
                role_id: Id(id),
            };
            let now_ms = crate::ids::now_ms();
            self.hook_record(&mut tx, "role.deleted", now_ms, || {
                guild_event("role.deleted", guild, &data)
            })
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Moves a role to `position` among the guild's roles (1 = just above `@everyone`; past
    /// the top = the top) and numbers them all 1..n again: the roles whose position changed,
    /// in their new order.
    pub async fn move_role(&self, guild: u64, id: u64, position: u32) -> Result<Vec<Role>> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let mut roles = sqlx::query(
                "SELECT id, guild_id, name, permissions, position FROM roles WHERE guild_id = $1 AND id <> $1 \
                 ORDER BY position, id",
            )
            .bind(i(guild))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(role_of)
            .collect::<Result<Vec<_>>>()?;
            let from = roles.iter().position(|r| r.id == id).ok_or(StoreError::NotFound)?;
            let role = roles.remove(from);
            let to = (position.max(1) as usize - 1).min(roles.len());
            roles.insert(to, role);
            let mut changed = Vec::new();
            for (n, r) in roles.iter_mut().enumerate() {
                let p = n as u32 + 1;
                if r.position != p {
                    r.position = p;
                    sqlx::query("UPDATE roles SET position = $3 WHERE guild_id = $1 AND id = $2")
                        .bind(i(guild))
                        .bind(i(r.id))
                        .bind(i64::from(p))
                        .execute(&mut *tx)
                        .await?;
                    self.hook_role(&mut tx, "role.updated", guild, r.id, &r.name, r.permissions)
                        .await?;
                    changed.push(r.clone());
                }
            }
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }

    /// Times a member out until `until_ms` (0 lifts it); `false` if they are not a member.
    pub async fn set_timeout(&self, guild: u64, user: u64, until_ms: u64, by: u64, reason: &str) -> Result<bool> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let member = sqlx::query("SELECT 1 FROM members WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !member {
                return Ok(false);
            }
            if until_ms == 0 {
                sqlx::query("DELETE FROM member_timeouts WHERE guild_id = $1 AND user_id = $2")
                    .bind(i(guild))
                    .bind(i(user))
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO member_timeouts (guild_id, user_id, until_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (guild_id, user_id) DO UPDATE SET until_ms = excluded.until_ms",
                )
                .bind(i(guild))
                .bind(i(user))
                .bind(i(until_ms))
                .execute(&mut *tx)
                .await?;
            }
            let now_ms = crate::ids::now_ms();
            let data = WebhookMemberTimeout {
                guild_id: Id(guild),
                user_id: Id(user),
                until_ms: (until_ms > 0).then_some(until_ms),
                by: Id(by),
                reason: reason.to_string(),
            };
            self.hook_record(&mut tx, "member.timed_out", now_ms, || {
                guild_event("member.timed_out", guild, &data)
            })
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }
}
