//! Messages, reactions, history pages, the channel event log and read states.

use super::*;

fn mentions_text(m: &Mentions) -> String {
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    format!("{}|{}|{}", join(&m.users), join(&m.roles), u8::from(m.everyone))
}

fn mentions_parse(s: &str) -> Mentions {
    let mut parts = s.split('|');
    let ids = |p: Option<&str>| -> Vec<u64> {
        p.unwrap_or_default()
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let users = ids(parts.next());
    let roles = ids(parts.next());
    let everyone = parts.next() == Some("1");
    Mentions { users, roles, everyone }
}

/// The message `author` sent with `nonce`, read through `ex` (the pool, or an open
/// transaction's connection).
async fn by_nonce<'e, E>(ex: E, author: u64, nonce: u64) -> Result<Option<Message>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let q = format!("SELECT {MSG_COLS} FROM messages WHERE author_id = $1 AND nonce = $2");
    sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(i(author))
        .bind(i(nonce))
        .fetch_optional(ex)
        .await?
        .map(|r| message_of(&r))
        .transpose()
}

fn message_of(r: &AnyRow) -> Result<Message> {
    Ok(Message {
        id: u(r.try_get("id")?),
        channel_id: u(r.try_get("channel_id")?),
        author_id: u(r.try_get("author_id")?),
        nonce: u(r.try_get("nonce")?),
        content: r.try_get("content")?,
        reply_to: r.try_get::<Option<i64>, _>("reply_to")?.map(u),
        mentions: mentions_parse(&r.try_get::<String, _>("mentions")?),
        seq: u(r.try_get("seq")?),
        created_at_ms: u(r.try_get("created_at")?),
        edited_at_ms: r.try_get::<Option<i64>, _>("edited_at")?.map(u),
        deleted: r.try_get::<i64, _>("deleted")? != 0,
        reactions: Vec::new(),
    })
}

const MSG_COLS: &str =
    "id, channel_id, author_id, nonce, content, reply_to, mentions, seq, created_at, edited_at, deleted";

impl Store {
    // ----- messages and the event log ------------------------------------------------

    /// Takes the channel's next seq and appends `event(seq)` to the log, in `tx`, with its
    /// webhook event (`channel:<id>`, sequenced by the channel's seq).
    async fn sequence(
        &self,
        tx: &mut Tx,
        channel: u64,
        now_ms: u64,
        event: impl FnOnce(u64) -> EventBody,
    ) -> Result<Stored> {
        let row = sqlx::query("UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq, guild_id")
            .bind(i(channel))
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let seq = u(row.try_get("last_seq")?);
        let guild = row.try_get::<Option<i64>, _>("guild_id")?.map(u);
        let body = event(seq);
        let bytes = encode_payload(&body);
        sqlx::query("INSERT INTO channel_events (channel_id, seq, body, created_at) VALUES ($1, $2, $3, $4)")
            .bind(i(channel))
            .bind(i(seq))
            .bind(bytes.clone())
            .bind(i(now_ms))
            .execute(&mut **tx)
            .await?;
        if let Some(kind) = crate::webhooks::catalogue::channel_event_type(&body) {
            self.hook_record(tx, kind, now_ms, || {
                crate::webhooks::catalogue::channel_event(kind, guild, channel, seq, &body)
            })
            .await?;
        }
        Ok(Stored { seq, event: bytes })
    }

    /// The message an author sent with `nonce`, if any.
    pub async fn message_by_nonce(&self, author: u64, nonce: u64) -> Result<Option<Message>> {
        self.deadline(async move { by_nonce(&mut *self.conn().await?, author, nonce).await })
            .await
    }

    /// Stores a message, its seq and its event in one transaction. If the author already
    /// sent this nonce, returns that message and `None` (nothing new was stored).
    pub async fn send_message(&self, m: NewMessage) -> Result<(Message, Option<Stored>)> {
        self.deadline(async move {
            // Asked inside the transaction: one connection for the whole send (each store
            // call that takes a pooled connection costs a round trip to give it back).
            let mut tx = self.begin().await?;
            if let Some(existing) = by_nonce(tx.conn(), m.author_id, m.nonce).await? {
                tx.rollback().await?;
                return Ok((existing, None));
            }
            // Reply target must be in the same channel. (Read before the seq UPDATE is fine:
            // messages are never moved between channels.)
            if let Some(target) = m.reply_to {
                let ok = sqlx::query("SELECT 1 FROM messages WHERE id = $1 AND channel_id = $2")
                    .bind(i(target))
                    .bind(i(m.channel_id))
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !ok {
                    return Err(StoreError::InvalidReply);
                }
            }
            let mut message = Message {
                id: m.id,
                channel_id: m.channel_id,
                author_id: m.author_id,
                nonce: m.nonce,
                content: m.content.clone(),
                reply_to: m.reply_to,
                mentions: m.mentions.clone(),
                seq: 0,
                created_at_ms: m.now_ms,
                edited_at_ms: None,
                deleted: false,
                reactions: Vec::new(),
            };
            let stored = self.sequence(&mut tx, m.channel_id, m.now_ms, |seq| {
                message.seq = seq;
                EventBody::MessageCreated {
                    seq,
                    message: message.clone(),
                }
            })
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO messages (id, channel_id, author_id, nonce, content, reply_to, mentions, seq, created_at, edited_at, deleted) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, 0)",
            )
            .bind(i(m.id))
            .bind(i(m.channel_id))
            .bind(i(m.author_id))
            .bind(i(m.nonce))
            .bind(&m.content)
            .bind(m.reply_to.map(i))
            .bind(mentions_text(&m.mentions))
            .bind(i(stored.seq))
            .bind(i(m.now_ms))
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    // The same nonce raced in from another connection: that one won. (Any
                    // other conflict — a repeated id — is a failure, never "not found".)
                    tx.rollback().await?;
                    return match self.message_by_nonce(m.author_id, m.nonce).await? {
                        Some(existing) => Ok((existing, None)),
                        None => Err(e.into()),
                    };
                }
                Err(e) => return Err(e.into()),
            }
            for user in &m.mentions.users {
                if *user == m.author_id {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO read_states (user_id, channel_id, last_read_seq, mention_count, last_mention_seq) VALUES ($1, $2, 0, 1, $3) \
                     ON CONFLICT (user_id, channel_id) DO UPDATE SET mention_count = read_states.mention_count + 1, \
                       last_mention_seq = excluded.last_mention_seq",
                )
                .bind(i(*user))
                .bind(i(m.channel_id))
                .bind(i(stored.seq))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            message.seq = stored.seq;
            Ok((message, Some(stored)))
        })
        .await
    }

    /// A message in a channel.
    pub async fn message(&self, channel: u64, id: u64) -> Result<Message> {
        self.deadline(async move {
            let q = format!("SELECT {MSG_COLS} FROM messages WHERE id = $1 AND channel_id = $2");
            let r = sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(i(id))
                .bind(i(channel))
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .ok_or(StoreError::NotFound)?;
            message_of(&r)
        })
        .await
    }

    /// Edits a message's content.
    pub async fn edit_message(
        &self,
        channel: u64,
        id: u64,
        content: &str,
        mentions: &Mentions,
        now_ms: u64,
    ) -> Result<Stored> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let stored = self.sequence(&mut tx, channel, now_ms, |seq| EventBody::MessageEdited {
                seq,
                channel_id: channel,
                message_id: id,
                content: content.to_string(),
                mentions: mentions.clone(),
                edited_at_ms: now_ms,
            })
            .await?;
            let n = sqlx::query("UPDATE messages SET content = $3, mentions = $4, edited_at = $5 WHERE id = $1 AND channel_id = $2 AND deleted = 0")
                .bind(i(id))
                .bind(i(channel))
                .bind(content)
                .bind(mentions_text(mentions))
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.commit().await?;
            Ok(stored)
        })
        .await
    }

    /// Deletes a message (keeps a tombstone so history pages stay gap-free by seq).
    pub async fn delete_message(&self, channel: u64, id: u64, now_ms: u64) -> Result<Stored> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let stored = self.sequence(&mut tx, channel, now_ms, |seq| EventBody::MessageDeleted {
                seq,
                channel_id: channel,
                message_id: id,
            })
            .await?;
            let n = sqlx::query("UPDATE messages SET content = '', mentions = '||0', deleted = 1 WHERE id = $1 AND channel_id = $2 AND deleted = 0")
                .bind(i(id))
                .bind(i(channel))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM reactions WHERE message_id = $1")
                .bind(i(id))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(stored)
        })
        .await
    }

    /// Adds a reaction; `None` if the user had already reacted with it.
    pub async fn add_reaction(
        &self,
        channel: u64,
        message: u64,
        user: u64,
        emoji: &str,
        now_ms: u64,
    ) -> Result<Option<Stored>> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            // Seq first: it takes the write lock, so the checks below cannot race.
            let stored = self.sequence(&mut tx, channel, now_ms, |seq| EventBody::ReactionAdded {
                seq,
                channel_id: channel,
                message_id: message,
                user_id: user,
                emoji: emoji.to_string(),
            })
            .await?;
            let exists = sqlx::query("SELECT 1 FROM messages WHERE id = $1 AND channel_id = $2 AND deleted = 0")
                .bind(i(message))
                .bind(i(channel))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
            let r = sqlx::query(
                "SELECT COUNT(DISTINCT emoji) AS n, SUM(CASE WHEN emoji = $2 THEN 1 ELSE 0 END) AS have, \
                 SUM(CASE WHEN emoji = $2 AND user_id = $3 THEN 1 ELSE 0 END) AS mine FROM reactions WHERE message_id = $1",
            )
            .bind(i(message))
            .bind(emoji)
            .bind(i(user))
            .fetch_one(&mut *tx)
            .await?;
            let distinct: i64 = r.try_get("n")?;
            let have: i64 = r.try_get::<Option<i64>, _>("have")?.unwrap_or(0);
            let mine: i64 = r.try_get::<Option<i64>, _>("mine")?.unwrap_or(0);
            if mine > 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            if have == 0 && distinct >= MAX_REACTIONS {
                return Err(StoreError::TooManyReactions);
            }
            sqlx::query("INSERT INTO reactions (message_id, user_id, emoji, created_at) VALUES ($1, $2, $3, $4)")
                .bind(i(message))
                .bind(i(user))
                .bind(emoji)
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(stored))
        })
        .await
    }

    /// Removes a reaction; `None` if there was none.
    pub async fn remove_reaction(
        &self,
        channel: u64,
        message: u64,
        user: u64,
        emoji: &str,
        now_ms: u64,
    ) -> Result<Option<Stored>> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let stored = self.sequence(&mut tx, channel, now_ms, |seq| EventBody::ReactionRemoved {
                seq,
                channel_id: channel,
                message_id: message,
                user_id: user,
                emoji: emoji.to_string(),
            })
            .await?;
            let n = sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3 AND message_id IN (SELECT id FROM messages WHERE channel_id = $4)")
                .bind(i(message))
                .bind(i(user))
                .bind(emoji)
                .bind(i(channel))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok(Some(stored))
        })
        .await
    }

    /// A page of messages by creation seq, ascending; plus whether more exist before/after.
    pub async fn history(
        &self,
        channel: u64,
        anchor: quaver_proto::HistoryAnchor,
        limit: u32,
    ) -> Result<(Vec<Message>, bool, bool)> {
        self.deadline(async move {
            use quaver_proto::HistoryAnchor as A;
            let limit = limit.clamp(1, 100) as i64;
            let older = |below: i64, n: i64| {
                let q = format!(
                    "SELECT {MSG_COLS} FROM messages WHERE channel_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                );
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(i(channel))
                    .bind(below)
                    .bind(n + 1)
            };
            let newer = |from: i64, n: i64| {
                let q = format!(
                    "SELECT {MSG_COLS} FROM messages WHERE channel_id = $1 AND seq >= $2 ORDER BY seq ASC LIMIT $3"
                );
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(i(channel))
                    .bind(from)
                    .bind(n + 1)
            };
            let (mut before, mut after) = (Vec::new(), Vec::new());
            let (mut more_before, mut more_after) = (false, false);
            let take_older = |rows: Vec<AnyRow>, n: i64, more: &mut bool| -> Result<Vec<Message>> {
                *more = rows.len() as i64 > n;
                let mut v: Vec<Message> = rows.iter().take(n as usize).map(message_of).collect::<Result<_>>()?;
                v.reverse();
                Ok(v)
            };
            match anchor {
                A::Latest => {
                    before = take_older(
                        older(i64::MAX, limit).fetch_all(&mut *self.conn().await?).await?,
                        limit,
                        &mut more_before,
                    )?
                }
                A::Before(s) => {
                    before = take_older(
                        older(i(s), limit).fetch_all(&mut *self.conn().await?).await?,
                        limit,
                        &mut more_before,
                    )?
                }
                A::After(s) | A::Around(s) => {
                    let (from, n_after) = match anchor {
                        A::After(_) => (i(s) + 1, limit),
                        _ => (i(s), limit - limit / 2),
                    };
                    if let A::Around(_) = anchor {
                        let n = limit / 2;
                        if n > 0 {
                            before = take_older(
                                older(from, n).fetch_all(&mut *self.conn().await?).await?,
                                n,
                                &mut more_before,
                            )?;
                        } else {
                            more_before = !older(from, 0).fetch_all(&mut *self.conn().await?).await?.is_empty();
                        }
                    } else {
                        more_before = !older(from, 0).fetch_all(&mut *self.conn().await?).await?.is_empty();
                    }
                    let rows = newer(from, n_after).fetch_all(&mut *self.conn().await?).await?;
                    more_after = rows.len() as i64 > n_after;
                    after = rows
                        .iter()
                        .take(n_after as usize)
                        .map(message_of)
                        .collect::<Result<_>>()?;
                }
            }
            if let A::Before(s) = anchor {
                more_after = !newer(i(s), 0).fetch_all(&mut *self.conn().await?).await?.is_empty();
            }
            before.append(&mut after);
            self.attach_reactions(channel, &mut before).await?;
            Ok((before, more_before, more_after))
        })
        .await
    }

    async fn attach_reactions(&self, channel: u64, msgs: &mut [Message]) -> Result<()> {
        let (Some(first), Some(last)) = (msgs.first(), msgs.last()) else {
            return Ok(());
        };
        let rows = sqlx::query(
            "SELECT r.message_id, r.emoji, COUNT(*) AS n, MIN(r.created_at) AS t FROM reactions r JOIN messages m ON m.id = r.message_id \
             WHERE m.channel_id = $1 AND m.seq >= $2 AND m.seq <= $3 GROUP BY r.message_id, r.emoji ORDER BY t",
        )
        .bind(i(channel))
        .bind(i(first.seq))
        .bind(i(last.seq))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        for r in rows {
            let id = u(r.try_get("message_id")?);
            if let Some(m) = msgs.iter_mut().find(|m| m.id == id) {
                m.reactions.push(Reaction {
                    emoji: r.try_get("emoji")?,
                    count: r.try_get::<i64, _>("n")? as u32,
                });
            }
        }
        Ok(())
    }

    /// Deletes logged events created before `before_ms`; returns how many.
    pub async fn prune_events(&self, before_ms: u64) -> Result<u64> {
        // In batches, each under its own deadline: one DELETE over a large log would hold
        // SQLite's write lock (and miss the deadline) for as long as it takes.
        const BATCH: i64 = 5_000;
        let mut total = 0;
        loop {
            let n = self
                .deadline(async move {
                    Ok(sqlx::query(
                        "DELETE FROM channel_events WHERE (channel_id, seq) IN \
                         (SELECT channel_id, seq FROM channel_events WHERE created_at < $1 LIMIT $2)",
                    )
                    .bind(i(before_ms))
                    .bind(BATCH)
                    .execute(&mut *self.conn().await?)
                    .await?
                    .rows_affected())
                })
                .await?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Logged events of a channel with seq > `after`, ascending, at most `limit`, created
    /// at or after `since_ms` (older ones count as pruned even before the pruner ran).
    pub async fn events_after(
        &self,
        channel: u64,
        after: u64,
        limit: u32,
        since_ms: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT seq, body FROM channel_events WHERE channel_id = $1 AND seq > $2 AND created_at >= $4 \
                 ORDER BY seq LIMIT $3",
            )
            .bind(i(channel))
            .bind(i(after))
            .bind(i64::from(limit))
            .bind(i(since_ms))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(|r| Ok((u(r.try_get("seq")?), r.try_get("body")?)))
            .collect()
        })
        .await
    }

    // ----- read states ---------------------------------------------------------------

    /// Marks a channel read up to `seq` (never backwards); clears the mention count once the
    /// read reaches the last mention (a read that raced a newer mention leaves it counted).
    pub async fn mark_read(&self, user: u64, channel: u64, seq: u64) -> Result<ReadState> {
        self.deadline(async move {
            let r = sqlx::query(
                "INSERT INTO read_states (user_id, channel_id, last_read_seq, mention_count) VALUES ($1, $2, $3, 0) \
                 ON CONFLICT (user_id, channel_id) DO UPDATE SET \
                   last_read_seq = CASE WHEN excluded.last_read_seq > read_states.last_read_seq THEN excluded.last_read_seq ELSE read_states.last_read_seq END, \
                   mention_count = CASE WHEN excluded.last_read_seq >= read_states.last_mention_seq THEN 0 ELSE read_states.mention_count END \
                 RETURNING last_read_seq, mention_count",
            )
            .bind(i(user))
            .bind(i(channel))
            .bind(i(seq))
            .fetch_one(&mut *self.conn().await?)
            .await?;
            Ok(ReadState {
                channel_id: channel,
                last_read_seq: u(r.try_get("last_read_seq")?),
                mention_count: r.try_get::<i64, _>("mention_count")? as u32,
            })
        })
        .await
    }

    /// All read states of a user.
    pub async fn read_states(&self, user: u64) -> Result<Vec<ReadState>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT channel_id, last_read_seq, mention_count FROM read_states WHERE user_id = $1 ORDER BY channel_id",
            )
            .bind(i(user))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(|r| {
                Ok(ReadState {
                    channel_id: u(r.try_get("channel_id")?),
                    last_read_seq: u(r.try_get("last_read_seq")?),
                    mention_count: r.try_get::<i64, _>("mention_count")? as u32,
                })
            })
            .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_round_trip_through_text() {
        for m in [
            Mentions::default(),
            Mentions {
                users: vec![1, 2],
                roles: vec![3],
                everyone: true,
            },
            Mentions {
                users: vec![],
                roles: vec![9],
                everyone: false,
            },
        ] {
            assert_eq!(mentions_parse(&mentions_text(&m)), m);
        }
    }
}
