//! The event log as sessions see it: what a resuming client missed, a channel's log for
//! the fan-out's catch-up, and where channels stand — with an explicit `Gap` wherever the
//! log no longer reaches.

use super::*;
use crate::fanout::{Caught, gap};

impl Chat {
    /// What a client resuming with channel positions missed: per channel it can still
    /// read, the logged events after its position, read now (the fan-out hands them to the
    /// session in order with live traffic, [`crate::fanout::Fanout::open`]).
    pub async fn catch_up(
        &self,
        user: u64,
        channels: &[quaver_proto::ChannelSeq],
        retention: std::time::Duration,
    ) -> Vec<Caught> {
        let since = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut out = Vec::new();
        for cs in channels.iter().take(500) {
            let Ok(access) = self.access(user, cs.channel_id).await else {
                continue;
            };
            if !access.perms().has(Perms::READ_MESSAGE_HISTORY) {
                continue;
            }
            let Ok((items, reached)) = self.log_since(cs.channel_id, cs.seq, None, since).await else {
                continue;
            };
            out.push(Caught {
                channel: cs.channel_id,
                guild: access.guild_id(),
                from: cs.seq,
                reached,
                since_ms: since,
                items,
            });
        }
        out
    }

    /// A channel's logged events after `from` (up to `until`, else up to where the channel
    /// stands now), as the session must see them: in order, with an explicit `Gap` where
    /// the log no longer reaches (pruned, older than `since_ms`, or more than 1,000 behind).
    /// Each item has its ordering key (a Gap's is the first seq it covers). Also returns
    /// the seq the items reach.
    pub(crate) async fn log_since(
        &self,
        channel: u64,
        from: u64,
        until: Option<u64>,
        since_ms: u64,
    ) -> Result<(Vec<(u64, Bytes)>, u64), StoreError> {
        const MAX_PER_CHANNEL: u32 = 1000;
        let last = match until {
            Some(u) => u,
            None => self.store.channel(channel).await?.last_seq,
        };
        let mut items = Vec::new();
        if last <= from {
            return Ok((items, from.max(last)));
        }
        let events = self
            .store
            .events_after(channel, from, MAX_PER_CHANNEL, since_ms)
            .await?;
        let mut at = from;
        for (seq, body) in events {
            if seq > last {
                break;
            }
            if seq != at + 1 {
                // Pruned (or too old): say so instead of leaving a silent hole.
                items.push((at + 1, gap(channel, at, seq)));
            }
            items.push((seq, Bytes::from(body)));
            at = seq;
        }
        if at < last {
            items.push((at + 1, gap(channel, at, last + 1)));
        }
        Ok((items, last))
    }

    /// A channel's logged events after `after`, at most `limit` (the fan-out's catch-up).
    pub(crate) async fn channel_log(
        &self,
        channel: u64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let events = self.store.events_after(channel, after, limit, 0).await?;
        Ok(events.into_iter().map(|(s, b)| (s, Bytes::from(b))).collect())
    }

    /// Where a guild's channels (or one DM channel) stand now.
    pub(crate) async fn current_seqs(&self, guild: Option<u64>, channel: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        match guild {
            Some(g) => Ok(self.store.channel_seqs(g).await?.into_iter().collect()),
            None => Ok(vec![(channel, self.store.channel(channel).await?.last_seq)]),
        }
    }
}
