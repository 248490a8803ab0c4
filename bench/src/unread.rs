//! H4 (hardening, issue 10 item 4): fetch replies a client never reads. One user opens
//! `connections` raw connections whose streams take only a small window, and on each
//! `fetches` History fetches of a full page (100 messages of 4,000 four-byte characters,
//! 1.6 MB), never read, paced under the default fetch rate limit so every one is answered.
//! The server's resident memory before and while they wait says whether unread replies are
//! bounded per session (they were not: 16 MB → 244 MB for 3 × 30).

use std::time::Duration;

use quaver_client::{Transport, Trust};
use quaver_proto::{FetchRequest, HistoryAnchor, RequestBody};

use crate::setup::{Setup, req};

/// What a run measured.
pub(crate) struct UnreadResult {
    /// Server RSS with the channel filled, before the unread fetches, bytes.
    pub(crate) baseline: u64,
    /// Peak server RSS while the replies wait unread, bytes.
    pub(crate) loaded: u64,
    /// Fetch streams opened.
    pub(crate) opened: usize,
}

/// Runs the scenario; `hold` is how long the fetches stay unread (RSS sampled each 250 ms).
pub(crate) async fn run(
    target: &crate::server::Target,
    connections: usize,
    fetches: usize,
    hold: Duration,
) -> anyhow::Result<UnreadResult> {
    // Default limits, but the owner must be able to fill the channel quickly.
    let setup = Setup::start(
        target,
        "[limits]\nsend = { burst = 1000.0, per_sec = 1000.0 }\n",
        Transport::Quic,
    )
    .await?;
    let mut owner = setup.owner().await?;
    for n in 0..100u64 {
        let body = RequestBody::SendMessage {
            channel_id: owner.general,
            nonce: setup.nonce_base + n,
            content: "\u{1D11E}".repeat(4000),
            reply_to: None,
        };
        req(&mut owner.chat, body).await?;
    }
    setup.server.quiesce(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = setup.server.rss_bytes();
    let trust = Trust::Hashes(vec![setup.server.hash]);
    let mut conns = Vec::new();
    for _ in 0..connections {
        let raw = quaver_client::raw::connect(setup.server.quic, &trust, 16 * 1024).await?;
        let token = setup.config(1).token.unwrap_or_default();
        let control = raw.hello(token).await?;
        conns.push((raw, control, Vec::new()));
    }
    // 8 fetches a second in all: under the default limit (10 per second after a burst of
    // 20), so none is refused and every reply is built.
    let mut opened = 0;
    let mut loaded = 0;
    for _ in 0..fetches {
        for (raw, _, streams) in conns.iter_mut() {
            let history = FetchRequest::History {
                channel_id: owner.general,
                anchor: HistoryAnchor::Latest,
                limit: 100,
            };
            if let Ok(s) = raw.fetch_unread(history).await {
                streams.push(s);
                opened += 1;
            }
            tokio::time::sleep(Duration::from_millis(125)).await;
            loaded = loaded.max(setup.server.rss_bytes());
        }
    }
    let held = conns;
    let end = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        loaded = loaded.max(setup.server.rss_bytes());
    }
    drop(held);
    drop(owner);
    setup.server.stop().await;
    Ok(UnreadResult {
        baseline,
        loaded,
        opened,
    })
}
