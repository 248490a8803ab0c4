//! C1: many idle authenticated sessions on one node — resident memory per session above
//! the server's baseline, and how long until all are `Ready`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_client::{Transport, connect};

use crate::setup::Setup;

/// What a run measured.
pub(crate) struct IdleResult {
    /// Sessions that reached `Ready`.
    pub(crate) ready: usize,
    /// Seconds until the last one did.
    pub(crate) seconds: f64,
    /// Server RSS before any session, bytes.
    pub(crate) baseline: u64,
    /// Server RSS with all sessions open and idle, bytes.
    pub(crate) loaded: u64,
}

/// Opens `n` sessions (`concurrency` handshakes at a time) and measures.
pub(crate) async fn run(
    target: &crate::server::Target,
    n: usize,
    concurrency: usize,
    transport: Transport,
) -> anyhow::Result<IdleResult> {
    let setup = Setup::start(target, "", transport).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = setup.server.rss_bytes();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (gate, cfg) = (gate.clone(), setup.config(10_000 + i as u64));
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.ok()?;
            connect(&cfg).await.ok()
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            clients.push(c);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    // Let allocations settle (handshake buffers freed) before reading memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = setup.server.rss_bytes();
    let ready = clients.len();
    drop(clients);
    setup.server.stop().await;
    Ok(IdleResult {
        ready,
        seconds,
        baseline,
        loaded,
    })
}
