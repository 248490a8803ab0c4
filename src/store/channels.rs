//! Guild channels, permission overwrites, DMs and group DMs.

use super::*;
use crate::api::types::Id;
use crate::webhooks::catalogue::{WebhookChannel, guild_event};

fn kind_code(k: ChannelKind) -> i64 {
    match k {
        ChannelKind::Text => 0,
        ChannelKind::Voice => 1,
        ChannelKind::Dm => 2,
        ChannelKind::GroupDm => 3,
    }
}

fn kind_of(c: i64) -> ChannelKind {
    match c {
        1 => ChannelKind::Voice,
        2 => ChannelKind::Dm,
        3 => ChannelKind::GroupDm,
        _ => ChannelKind::Text,
    }
}

fn channel_of(r: &AnyRow) -> Result<Channel> {
    Ok(Channel {
        id: u(r.try_get("id")?),
        guild_id: r.try_get::<Option<i64>, _>("guild_id")?.map(u),
        kind: kind_of(r.try_get("kind")?),
        name: r.try_get("name")?,
        topic: r.try_get("topic")?,
        last_seq: u(r.try_get("last_seq")?),
        overwrites: Vec::new(),
        recipients: Vec::new(),
        user_limit: r.try_get::<i64, _>("user_limit")? as u32,
    })
}

fn overwrite_of(r: &AnyRow) -> Result<Overwrite> {
    let kind: i64 = r.try_get("target_kind")?;
    let id = u(r.try_get("target_id")?);
    Ok(Overwrite {
        target: if kind == 0 {
            OverwriteTarget::Role(id)
        } else {
            OverwriteTarget::Member(id)
        },
        allow: u(r.try_get("allow_bits")?),
        deny: u(r.try_get("deny_bits")?),
    })
}

impl Store {
    // ----- channels ------------------------------------------------------------------

    /// Creates a guild channel.
    pub async fn create_channel(&self, c: NewChannel<'_>, now_ms: u64) -> Result<Channel> {
        self.deadline(async move {
            let NewChannel {
                id,
                guild,
                kind,
                name,
                topic,
                user_limit,
            } = c;
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, $7, 0, 0, $6)",
            )
            .bind(i(id))
            .bind(i(guild))
            .bind(kind_code(kind))
            .bind(name)
            .bind(topic)
            .bind(i(now_ms))
            .bind(i64::from(user_limit))
            .execute(&mut *tx)
            .await?;
            let data = WebhookChannel {
                guild_id: Id(guild),
                channel_id: Id(id),
                name: Some(name.to_string()),
                kind: Some(if kind == ChannelKind::Voice { "voice" } else { "text" }.to_string()),
            };
            self.hook_record(&mut tx, "channel.created", now_ms, || guild_event("channel.created", guild, &data))
                .await?;
            tx.commit().await?;
            self.channel(id).await
        })
        .await
    }

    /// A channel with its overwrites and recipients.
    pub async fn channel(&self, id: u64) -> Result<Channel> {
        self.deadline(async move {
            let r =
                sqlx::query("SELECT id, guild_id, kind, name, topic, last_seq, user_limit FROM channels WHERE id = $1")
                    .bind(i(id))
                    .fetch_optional(&mut *self.conn().await?)
                    .await?
                    .ok_or(StoreError::NotFound)?;
            let mut c = channel_of(&r)?;
            c.overwrites = self.overwrites(id).await?;
            if c.guild_id.is_none() {
                c.recipients =
                    sqlx::query("SELECT user_id FROM channel_recipients WHERE channel_id = $1 ORDER BY user_id")
                        .bind(i(id))
                        .fetch_all(&mut *self.conn().await?)
                        .await?
                        .iter()
                        .map(|r| Ok(u(r.try_get("user_id")?)))
                        .collect::<Result<_>>()?;
            }
            Ok(c)
        })
        .await
    }

    /// The current `last_seq` of each channel of a guild.
    pub async fn channel_seqs(&self, guild: u64) -> Result<HashMap<u64, u64>> {
        self.deadline(async move {
            sqlx::query("SELECT id, last_seq FROM channels WHERE guild_id = $1")
                .bind(i(guild))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(|r| Ok((u(r.try_get("id")?), u(r.try_get("last_seq")?))))
                .collect()
        })
        .await
    }

    /// A guild's channels with their overwrites.
    pub async fn guild_channels(&self, guild: u64) -> Result<Vec<Channel>> {
        self.deadline(async move {
            let rows = sqlx::query(
                "SELECT id, guild_id, kind, name, topic, last_seq, user_limit FROM channels WHERE guild_id = $1 ORDER BY position, id",
            )
            .bind(i(guild))
            .fetch_all(&mut *self.conn().await?)
            .await?;
            let mut out: Vec<Channel> = rows.iter().map(channel_of).collect::<Result<_>>()?;
            let ows = sqlx::query(
                "SELECT o.channel_id, o.target_kind, o.target_id, o.allow_bits, o.deny_bits FROM overwrites o \
                 JOIN channels c ON c.id = o.channel_id WHERE c.guild_id = $1",
            )
            .bind(i(guild))
            .fetch_all(&mut *self.conn().await?)
            .await?;
            for r in ows {
                let cid = u(r.try_get("channel_id")?);
                if let Some(c) = out.iter_mut().find(|c| c.id == cid) {
                    c.overwrites.push(overwrite_of(&r)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn overwrites(&self, channel: u64) -> Result<Vec<Overwrite>> {
        sqlx::query("SELECT target_kind, target_id, allow_bits, deny_bits FROM overwrites WHERE channel_id = $1 ORDER BY target_kind, target_id")
            .bind(i(channel))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(overwrite_of)
            .collect()
    }

    /// The guild of a channel (`None`: a DM, or no such channel), in `tx`.
    async fn guild_of_channel(tx: &mut Tx, channel: u64) -> Result<Option<u64>> {
        Ok(sqlx::query("SELECT guild_id FROM channels WHERE id = $1")
            .bind(i(channel))
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get::<Option<i64>, _>("guild_id"))
            .transpose()?
            .flatten()
            .map(u))
    }

    /// Deletes a channel and its messages.
    pub async fn delete_channel(&self, id: u64) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let guild = Self::guild_of_channel(&mut tx, id).await?;
            for q in [
                "DELETE FROM channel_events WHERE channel_id = $1",
                "DELETE FROM reactions WHERE message_id IN (SELECT id FROM messages WHERE channel_id = $1)",
                "DELETE FROM messages WHERE channel_id = $1",
                "DELETE FROM read_states WHERE channel_id = $1",
                "DELETE FROM overwrites WHERE channel_id = $1",
                "DELETE FROM channel_recipients WHERE channel_id = $1",
                "DELETE FROM dm_pairs WHERE channel_id = $1",
                "DELETE FROM channels WHERE id = $1",
            ] {
                sqlx::query(q).bind(i(id)).execute(&mut *tx).await?;
            }
            if let Some(g) = guild {
                let data = WebhookChannel {
                    guild_id: Id(g),
                    channel_id: Id(id),
                    name: None,
                    kind: None,
                };
                let now_ms = crate::ids::now_ms();
                self.hook_record(&mut tx, "channel.deleted", now_ms, || {
                    guild_event("channel.deleted", g, &data)
                })
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Sets (or with `None`, removes) an overwrite.
    pub async fn set_overwrite(&self, channel: u64, target: OverwriteTarget, bits: Option<(u64, u64)>) -> Result<()> {
        self.deadline(async move {
            let (kind, id) = match target {
                OverwriteTarget::Role(id) => (0i64, id),
                OverwriteTarget::Member(id) => (1i64, id),
            };
            let mut tx = self.begin().await?;
            match bits {
                Some((allow, deny)) => {
                    sqlx::query(
                        "INSERT INTO overwrites (channel_id, target_kind, target_id, allow_bits, deny_bits) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (channel_id, target_kind, target_id) DO UPDATE SET allow_bits = excluded.allow_bits, deny_bits = excluded.deny_bits",
                    )
                    .bind(i(channel))
                    .bind(kind)
                    .bind(i(id))
                    .bind(i(allow))
                    .bind(i(deny))
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM overwrites WHERE channel_id = $1 AND target_kind = $2 AND target_id = $3")
                        .bind(i(channel))
                        .bind(kind)
                        .bind(i(id))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let guild = Self::guild_of_channel(&mut tx, channel).await?;
            if let Some(g) = guild {
                let data = WebhookChannel {
                    guild_id: Id(g),
                    channel_id: Id(channel),
                    name: None,
                    kind: None,
                };
                let now_ms = crate::ids::now_ms();
                self.hook_record(&mut tx, "channel.updated", now_ms, || guild_event("channel.updated", g, &data))
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    // ----- DMs -----------------------------------------------------------------------

    /// The DM channel of two users, created with id `new_id` if there is none.
    pub async fn open_dm(&self, new_id: u64, a: u64, b: u64, now_ms: u64) -> Result<Channel> {
        self.deadline(async move {
            let (lo, hi) = (a.min(b), a.max(b));
            // Read into a local: the connection goes back before the channel is read.
            let pair = sqlx::query("SELECT channel_id FROM dm_pairs WHERE user_low = $1 AND user_high = $2")
                .bind(i(lo))
                .bind(i(hi))
                .fetch_optional(&mut *self.conn().await?)
                .await?;
            if let Some(r) = pair {
                return self.channel(u(r.try_get("channel_id")?)).await;
            }
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, NULL, 2, '', '', 0, 0, 0, 0, $2)",
            )
            .bind(i(new_id))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            let paired = sqlx::query("INSERT INTO dm_pairs (user_low, user_high, channel_id) VALUES ($1, $2, $3)")
                .bind(i(lo))
                .bind(i(hi))
                .bind(i(new_id))
                .execute(&mut *tx)
                .await;
            match paired {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    // Opened concurrently by the other side: use theirs.
                    tx.rollback().await?;
                    return Box::pin(self.open_dm(new_id, a, b, now_ms)).await;
                }
                Err(e) => return Err(e.into()),
            }
            for user in [lo, hi] {
                sqlx::query("INSERT INTO channel_recipients (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(i(new_id))
                    .bind(i(user))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.channel(new_id).await
        })
        .await
    }

    /// Creates a group DM of `owner` and `others`.
    pub async fn create_group_dm(
        &self,
        id: u64,
        owner: u64,
        others: &[u64],
        name: &str,
        now_ms: u64,
    ) -> Result<Channel> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, NULL, 3, $2, '', 0, 10, $3, 0, $4)",
            )
            .bind(i(id))
            .bind(name)
            .bind(i(owner))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            for user in std::iter::once(&owner).chain(others) {
                sqlx::query("INSERT INTO channel_recipients (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(i(id))
                    .bind(i(*user))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.channel(id).await
        })
        .await
    }

    /// DM and group DM channels of a user.
    pub async fn private_channels(&self, user: u64) -> Result<Vec<Channel>> {
        self.deadline(async move {
            let ids: Vec<u64> =
                sqlx::query("SELECT channel_id FROM channel_recipients WHERE user_id = $1 ORDER BY channel_id")
                    .bind(i(user))
                    .fetch_all(&mut *self.conn().await?)
                    .await?
                    .iter()
                    .map(|r| Ok(u(r.try_get("channel_id")?)))
                    .collect::<Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.channel(id).await?);
            }
            Ok(out)
        })
        .await
    }
}
