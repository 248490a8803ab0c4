//! Chat requests on messages: send, edit, delete, reactions, read states. Each takes the
//! channel's next seq under its publish lock and publishes the event it stored.

use super::*;
use crate::webhooks::hooks::{HookKind, Verdict};

impl Chat {
    /// Sends a message as `user` (`SendMessage`): stored, sequenced, published, notified.
    /// Returns the message as stored, and whether this author's `nonce` was used before (then
    /// it is the first message, and nothing new was created).
    pub async fn send_message(
        &self,
        user: u64,
        channel_id: u64,
        nonce: u64,
        content: String,
        reply_to: Option<u64>,
        now: u64,
    ) -> Result<(quaver_proto::Message, bool), Refusal> {
        self.limit(user, Kind::Send)?;
        validate::content(&content)?;
        let access = self.access(user, channel_id).await?;
        if !access.perms().has(Perms::SEND_MESSAGES) {
            return Err(access.refuse(user, "send messages").into());
        }
        if let Access::Private(p) = &access {
            self.check_dm_block(user, p.kind, &p.recipients).await?;
        }
        // The application's hook decides (not for a retry of a message already stored: its
        // answer is the stored message). No lock is held while it is asked.
        let mut content = content;
        if let Some(hooks) = self.hooks.get().filter(|h| h.has(HookKind::MessageBeforeCreate))
            && self
                .store
                .message_by_nonce(user, nonce)
                .await
                .map_err(store_err)?
                .is_none()
        {
            let data = serde_json::json!({
                "user_id": user.to_string(),
                "channel_id": channel_id.to_string(),
                "guild_id": access.guild_id().map(|g| g.to_string()),
                "nonce": nonce.to_string(),
                "content": content,
                "reply_to": reply_to.map(|r| r.to_string()),
            });
            match hooks.ask(HookKind::MessageBeforeCreate, &data).await {
                Verdict::Deny { reason } => {
                    return Err(ErrorBody::new(ErrorCode::REFUSED_BY_APP, reason).into());
                }
                Verdict::Allow {
                    content: Some(rewritten),
                    ..
                } => {
                    validate::content(&rewritten).map_err(|mut e| {
                        e.message = format!("the application's rewrite: {}", e.message);
                        e
                    })?;
                    content = rewritten;
                }
                Verdict::Allow { .. } => {}
            }
        }
        let mut mentions = validate::mentions(&content);
        if mentions.everyone && !access.perms().has(Perms::MENTION_EVERYONE) {
            mentions.everyone = false;
        }
        let lock = self.lock(channel_id);
        let _guard = lock.lock().await;
        let (m, stored) = self
            .store
            .send_message(NewMessage {
                id: self.id(),
                channel_id,
                author_id: user,
                nonce,
                content,
                reply_to,
                mentions,
                now_ms: now,
            })
            .await
            .map_err(store_err)?;
        let duplicate = stored.is_none();
        if let Some(s) = stored {
            self.publish_channel(access.guild_id(), channel_id, s.seq, s.event);
            drop(_guard);
            // The message is stored and acknowledged regardless: a failure to notify
            // is logged, never turned into a failed send (the client would resend).
            if let Err(e) = self.notify_message(&access, &m).await {
                tracing::warn!(error = %e.message, "notifications for a message failed");
            }
        }
        Ok((m, duplicate))
    }

    pub(super) async fn handle_message(&self, user: u64, body: RequestBody, now: u64) -> Result<ResponseBody, Refusal> {
        use RequestBody as R;
        match body {
            R::SendMessage {
                channel_id,
                nonce,
                content,
                reply_to,
            } => {
                let (m, duplicate) = self
                    .send_message(user, channel_id, nonce, content, reply_to, now)
                    .await?;
                Ok(ResponseBody::MessageSent {
                    message_id: m.id,
                    seq: m.seq,
                    created_at_ms: m.created_at_ms,
                    duplicate,
                })
            }
            R::EditMessage {
                channel_id,
                message_id,
                content,
            } => {
                self.limit(user, Kind::Edit)?;
                validate::content(&content)?;
                let access = self.access(user, channel_id).await?;
                let m = self.store.message(channel_id, message_id).await.map_err(store_err)?;
                if m.author_id != user || m.deleted {
                    return Err(forbidden("edit others' messages").into());
                }
                let mut mentions = validate::mentions(&content);
                mentions.everyone &= access.perms().has(Perms::MENTION_EVERYONE);
                let edit = self
                    .store
                    .edit_message(channel_id, message_id, &content, &mentions, now);
                let seq = self
                    .sequenced(access.guild_id(), channel_id, async { edit.await.map(Some) })
                    .await?;
                Ok(sequenced_reply(seq))
            }
            R::DeleteMessage { channel_id, message_id } => {
                self.limit(user, Kind::Edit)?;
                let access = self.access(user, channel_id).await?;
                let m = self.store.message(channel_id, message_id).await.map_err(store_err)?;
                if m.author_id != user && !access.perms().has(Perms::MANAGE_MESSAGES) {
                    return Err(forbidden("manage messages").into());
                }
                let delete = self.store.delete_message(channel_id, message_id, now);
                let seq = self
                    .sequenced(access.guild_id(), channel_id, async { delete.await.map(Some) })
                    .await?;
                Ok(sequenced_reply(seq))
            }
            R::AddReaction {
                channel_id,
                message_id,
                emoji,
            }
            | R::RemoveReaction {
                channel_id,
                message_id,
                emoji,
            } if validate::emoji(&emoji).is_err() => {
                let _ = (channel_id, message_id);
                Err(validate::emoji(&emoji).unwrap_err().into())
            }
            R::AddReaction {
                channel_id,
                message_id,
                emoji,
            } => {
                self.limit(user, Kind::React)?;
                let access = self.access(user, channel_id).await?;
                if !access.perms().has(Perms::ADD_REACTIONS) {
                    return Err(access.refuse(user, "add reactions").into());
                }
                let add = self.store.add_reaction(channel_id, message_id, user, &emoji, now);
                let seq = self.sequenced(access.guild_id(), channel_id, add).await?;
                if seq.is_some()
                    && let Err(e) = self
                        .notify_reaction(&access, user, channel_id, message_id, &emoji)
                        .await
                {
                    tracing::warn!(error = %e.message, "notification for a reaction failed");
                }
                Ok(sequenced_reply(seq))
            }
            R::RemoveReaction {
                channel_id,
                message_id,
                emoji,
            } => {
                self.limit(user, Kind::React)?;
                let access = self.access(user, channel_id).await?;
                let remove = self.store.remove_reaction(channel_id, message_id, user, &emoji, now);
                let seq = self.sequenced(access.guild_id(), channel_id, remove).await?;
                Ok(sequenced_reply(seq))
            }
            R::MarkRead { channel_id, seq } => {
                self.limit(user, Kind::Read)?;
                self.access(user, channel_id).await?;
                let state = self.store.mark_read(user, channel_id, seq).await.map_err(store_err)?;
                self.publish_user(user, &EventBody::ReadStateUpdated { state });
                Ok(ResponseBody::Done)
            }
            _ => Err(ErrorBody::new(ErrorCode::WRONG_LANE, "not a message request").into()),
        }
    }
}
