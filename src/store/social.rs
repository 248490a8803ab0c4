//! Relationships, mutes and notifications.

use super::*;

fn rel_code(k: RelationshipKind) -> i64 {
    match k {
        RelationshipKind::Friend => 1,
        RelationshipKind::IncomingRequest => 2,
        RelationshipKind::OutgoingRequest => 3,
        RelationshipKind::Blocked => 4,
    }
}

fn rel_of(c: i64) -> Option<RelationshipKind> {
    Some(match c {
        1 => RelationshipKind::Friend,
        2 => RelationshipKind::IncomingRequest,
        3 => RelationshipKind::OutgoingRequest,
        4 => RelationshipKind::Blocked,
        _ => return None,
    })
}

fn notif_code(k: NotificationKind) -> i64 {
    match k {
        NotificationKind::Mention => 0,
        NotificationKind::Reply => 1,
        NotificationKind::Reaction => 2,
        NotificationKind::DirectMessage => 3,
        NotificationKind::FriendRequest => 4,
        NotificationKind::FriendAccepted => 5,
    }
}

fn notif_kind(c: i64) -> NotificationKind {
    match c {
        1 => NotificationKind::Reply,
        2 => NotificationKind::Reaction,
        3 => NotificationKind::DirectMessage,
        4 => NotificationKind::FriendRequest,
        5 => NotificationKind::FriendAccepted,
        _ => NotificationKind::Mention,
    }
}

fn notification_of(r: &AnyRow) -> Result<Notification> {
    Ok(Notification {
        id: u(r.try_get("id")?),
        kind: notif_kind(r.try_get("kind")?),
        actor_id: u(r.try_get("actor_id")?),
        guild_id: r.try_get::<Option<i64>, _>("guild_id")?.map(u),
        channel_id: r.try_get::<Option<i64>, _>("channel_id")?.map(u),
        message_id: r.try_get::<Option<i64>, _>("message_id")?.map(u),
        preview: r.try_get("preview")?,
        created_at_ms: u(r.try_get("created_at")?),
        read: r.try_get::<Option<i64>, _>("read_at")?.is_some(),
    })
}

const NOTIF_COLS: &str = "id, kind, actor_id, guild_id, channel_id, message_id, preview, created_at, read_at";

impl Store {
    // ----- relationships -------------------------------------------------------------

    /// What `other` is to `user`.
    pub async fn relationship(&self, user: u64, other: u64) -> Result<Option<RelationshipKind>> {
        self.deadline(async move {
            Ok(
                sqlx::query("SELECT kind FROM relationships WHERE user_id = $1 AND other_id = $2")
                    .bind(i(user))
                    .bind(i(other))
                    .fetch_optional(&mut *self.conn().await?)
                    .await?
                    .map(|r| r.try_get::<i64, _>("kind"))
                    .transpose()?
                    .and_then(rel_of),
            )
        })
        .await
    }

    /// Sets both directions of a pair at once (`None` removes that direction).
    pub async fn set_relationship(
        &self,
        a: u64,
        a_to_b: Option<RelationshipKind>,
        b: u64,
        b_to_a: Option<RelationshipKind>,
        now_ms: u64,
    ) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            for (x, y, k) in [(a, b, a_to_b), (b, a, b_to_a)] {
                match k {
                    Some(k) => {
                        sqlx::query(
                            "INSERT INTO relationships (user_id, other_id, kind, created_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (user_id, other_id) DO UPDATE SET kind = excluded.kind",
                        )
                        .bind(i(x))
                        .bind(i(y))
                        .bind(rel_code(k))
                        .bind(i(now_ms))
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM relationships WHERE user_id = $1 AND other_id = $2")
                            .bind(i(x))
                            .bind(i(y))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// All relationships of `user`.
    pub async fn relationships(&self, user: u64) -> Result<Vec<Relationship>> {
        self.deadline(async move {
            let rows = sqlx::query("SELECT other_id, kind FROM relationships WHERE user_id = $1 ORDER BY other_id")
                .bind(i(user))
                .fetch_all(&mut *self.conn().await?)
                .await?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(kind) = rel_of(r.try_get("kind")?) {
                    out.push(Relationship {
                        user_id: u(r.try_get("other_id")?),
                        kind,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Of `users`, those who blocked `actor`.
    pub async fn blockers_of(&self, actor: u64) -> Result<Vec<u64>> {
        self.deadline(async move {
            sqlx::query("SELECT user_id FROM relationships WHERE other_id = $1 AND kind = 4")
                .bind(i(actor))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(|r| Ok(u(r.try_get("user_id")?)))
                .collect()
        })
        .await
    }

    // ----- mutes ---------------------------------------------------------------------

    /// Mutes or unmutes a guild or channel for `user`.
    pub async fn set_mute(&self, user: u64, target: MuteTarget, muted: bool) -> Result<()> {
        self.deadline(async move {
            let (kind, id) = match target {
                MuteTarget::Guild(id) => (0i64, id),
                MuteTarget::Channel(id) => (1i64, id),
            };
            let q = if muted {
                "INSERT INTO mutes (user_id, target_kind, target_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM mutes WHERE user_id = $1 AND target_kind = $2 AND target_id = $3"
            };
            sqlx::query(q)
                .bind(i(user))
                .bind(kind)
                .bind(i(id))
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(())
        })
        .await
    }

    /// Everything `user` muted.
    pub async fn mutes(&self, user: u64) -> Result<Vec<MuteTarget>> {
        self.deadline(async move {
            sqlx::query("SELECT target_kind, target_id FROM mutes WHERE user_id = $1 ORDER BY target_kind, target_id")
                .bind(i(user))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(|r| {
                    let id = u(r.try_get("target_id")?);
                    Ok(if r.try_get::<i64, _>("target_kind")? == 0 {
                        MuteTarget::Guild(id)
                    } else {
                        MuteTarget::Channel(id)
                    })
                })
                .collect()
        })
        .await
    }

    /// Users who muted this guild or this channel.
    pub async fn muters(&self, guild: Option<u64>, channel: u64) -> Result<Vec<u64>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT DISTINCT user_id FROM mutes WHERE (target_kind = 1 AND target_id = $1) OR (target_kind = 0 AND target_id = $2)",
            )
            .bind(i(channel))
            .bind(guild.map(i).unwrap_or(-1))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(|r| Ok(u(r.try_get("user_id")?)))
            .collect()
        })
        .await
    }

    // ----- notifications -------------------------------------------------------------

    /// Stores one notification per recipient, with a `notification.undelivered` webhook
    /// event (same transaction) for each recipient in `undelivered`.
    pub async fn create_notifications(
        &self,
        items: &[(u64, Notification)],
        undelivered: &std::collections::HashSet<u64>,
    ) -> Result<()> {
        self.deadline(async move {
            if items.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin().await?;
            for (user, n) in items {
                sqlx::query(
                    "INSERT INTO notifications (id, user_id, kind, actor_id, guild_id, channel_id, message_id, preview, created_at, delivered_at, read_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)",
                )
                .bind(i(n.id))
                .bind(i(*user))
                .bind(notif_code(n.kind))
                .bind(i(n.actor_id))
                .bind(n.guild_id.map(i))
                .bind(n.channel_id.map(i))
                .bind(n.message_id.map(i))
                .bind(&n.preview)
                .bind(i(n.created_at_ms))
                .execute(&mut *tx)
                .await?;
                if undelivered.contains(user)
                    && let Some(ev) = crate::webhooks::catalogue::undelivered(*user, n)
                {
                    self.hook_record(&mut tx, ev.kind, n.created_at_ms, || ev).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// A page of `user`'s notifications, newest first, with ids below `before` (0 = all).
    pub async fn notifications(&self, user: u64, before: u64, limit: u32) -> Result<Vec<Notification>> {
        self.deadline(async move {
            let q = format!(
                "SELECT {NOTIF_COLS} FROM notifications WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            );
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(i(user))
                .bind(if before == 0 { i64::MAX } else { i(before) })
                .bind(i64::from(limit.clamp(1, 100)))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(notification_of)
                .collect()
        })
        .await
    }

    /// Unread notifications of `user`.
    pub async fn unread_notifications(&self, user: u64) -> Result<u32> {
        self.deadline(async move {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM notifications WHERE user_id = $1 AND read_at IS NULL")
                .bind(i(user))
                .fetch_one(&mut *self.conn().await?)
                .await?
                .try_get("n")?;
            Ok(n as u32)
        })
        .await
    }

    /// Records delivery of every notification up to `up_to`; returns how many were new.
    pub async fn ack_notifications(&self, user: u64, up_to: u64, now_ms: u64) -> Result<u64> {
        self.deadline(async move {
            Ok(sqlx::query(
                "UPDATE notifications SET delivered_at = $3 WHERE user_id = $1 AND id <= $2 AND delivered_at IS NULL",
            )
            .bind(i(user))
            .bind(i(up_to))
            .bind(i(now_ms))
            .execute(&mut *self.conn().await?)
            .await?
            .rows_affected())
        })
        .await
    }

    /// How many of `user`'s notifications were acknowledged as delivered.
    pub async fn delivered_notifications(&self, user: u64) -> Result<u32> {
        self.deadline(async move {
            let n: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM notifications WHERE user_id = $1 AND delivered_at IS NOT NULL")
                    .bind(i(user))
                    .fetch_one(&mut *self.conn().await?)
                    .await?
                    .try_get("n")?;
            Ok(n as u32)
        })
        .await
    }

    /// Marks notifications read (`ids`, or all).
    pub async fn read_notifications(&self, user: u64, ids: &[u64], all: bool, now_ms: u64) -> Result<()> {
        self.deadline(async move {
            if all {
                sqlx::query("UPDATE notifications SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL")
                    .bind(i(user))
                    .bind(i(now_ms))
                    .execute(&mut *self.conn().await?)
                    .await?;
                return Ok(());
            }
            let mut tx = self.begin().await?;
            for id in ids {
                sqlx::query("UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND id = $2 AND read_at IS NULL")
                    .bind(i(user))
                    .bind(i(*id))
                    .bind(i(now_ms))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Users holding any of `roles` in `guild`.
    pub async fn role_holders(&self, guild: u64, roles: &[u64]) -> Result<Vec<u64>> {
        self.deadline(async move {
            let mut out = Vec::new();
            for role in roles {
                for r in sqlx::query("SELECT user_id FROM member_roles WHERE guild_id = $1 AND role_id = $2")
                    .bind(i(guild))
                    .bind(i(*role))
                    .fetch_all(&mut *self.conn().await?)
                    .await?
                {
                    out.push(u(r.try_get("user_id")?));
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        })
        .await
    }
}
