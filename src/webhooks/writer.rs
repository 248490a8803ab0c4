//! Events that are not part of a stored change and happen where nothing may wait for the
//! database — a session opening or closing on an engine loop, a request refused by a rate
//! limit — are handed to this writer, which records them in batches (one transaction for
//! everything queued) off those paths. A batch that fails is retried with backoff; the
//! queue is bounded (a database away for long drops the newest, counted in
//! `quaver_webhook_events_dropped_total` and logged).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{HookEvent, Store};

/// Events queued at most.
const QUEUE: usize = 100_000;
/// Events per transaction at most.
const BATCH: usize = 500;

/// The writer's handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct HookWriter {
    tx: mpsc::Sender<(HookEvent, u64)>,
    store: Store,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl HookWriter {
    /// Starts the writer over `store`.
    pub fn spawn(store: Store) -> HookWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let w = HookWriter {
            tx,
            store: store.clone(),
            dropped: Default::default(),
            written: Default::default(),
        };
        tokio::spawn(run(store, rx, w.written.clone()));
        w
    }

    /// Whether an event of `kind` would be recorded at all.
    pub fn wants(&self, kind: &str) -> bool {
        self.store.hooks().wants(kind)
    }

    /// Queues `ev` (happened at `now_ms`); never waits.
    pub fn record(&self, ev: HookEvent, now_ms: u64) {
        if self.tx.try_send((ev, now_ms)).is_err() {
            let n = self.dropped.fetch_add(1, Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(
                    dropped = n,
                    "webhook event queue full (is the database answering?): events dropped"
                );
            }
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        format!(
            "# HELP quaver_webhook_events_dropped_total Session and rate-limit events dropped because the writer's queue was full.\n# TYPE quaver_webhook_events_dropped_total counter\nquaver_webhook_events_dropped_total {}\n# HELP quaver_webhook_events_batched_total Session and rate-limit events recorded by the batch writer.\n# TYPE quaver_webhook_events_batched_total counter\nquaver_webhook_events_batched_total {}\n",
            self.dropped.load(Relaxed),
            self.written.load(Relaxed)
        )
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<(HookEvent, u64)>, written: Arc<AtomicU64>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(100);
        loop {
            match store.hook_record_batch(&batch).await {
                Ok(()) => {
                    written.fetch_add(batch.len() as u64, Relaxed);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), retry_in = ?wait, "recording webhook events failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
