//! The delivery task: one per node. It keeps the store's copy of the endpoints' filters
//! current, holds leases on endpoint partitions, and sends each due delivery — the first
//! pending event of its key — to its endpoint, recording the outcome.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::client::Client;
use super::{WebhooksConfig, catalogue, envelope, event_id, sign};
use crate::ids::now_ms;
use crate::store::{Due, Endpoint, EndpointFilter, PARTITIONS, Store, delivery_state};

/// How often endpoints are reread from the database (changes made on another node).
const RELOAD_MS: u64 = 2_000;
/// How often due deliveries are looked for without a wake-up (another node's writes,
/// retries coming due).
const POLL: Duration = Duration::from_millis(200);
/// How long a wake-up waits for others before looking at the due list.
const COALESCE: Duration = Duration::from_millis(2);
/// An endpoint's window is halved at most this often (the attempts that fail together
/// are one signal, not many).
const HALVE_EVERY: Duration = Duration::from_millis(500);

/// Delivery counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Attempts answered with 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (non-2xx, timeout, connection).
    pub failed: AtomicU64,
    /// Deliveries given up after the retry period.
    pub given_up: AtomicU64,
    /// Endpoints disabled by a `410`.
    pub disabled: AtomicU64,
    /// Sum of change → delivery milliseconds of delivered first attempts (with `delivered_first`).
    pub latency_ms_sum: AtomicU64,
    /// Deliveries that succeeded on their first attempt.
    pub delivered_first: AtomicU64,
    /// Partitions this node holds now.
    pub leases: AtomicU64,
    /// Times an endpoint's window (attempts in flight) was halved because it answered as
    /// an overloaded receiver does.
    pub window_halved: AtomicU64,
}

impl Metrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        for (name, help, kind, v) in [
            (
                "quaver_webhook_delivered_total",
                "Webhook attempts answered with 2xx.",
                "counter",
                &self.delivered,
            ),
            (
                "quaver_webhook_failed_total",
                "Webhook attempts that failed (will be retried).",
                "counter",
                &self.failed,
            ),
            (
                "quaver_webhook_given_up_total",
                "Webhook deliveries given up after the retry period.",
                "counter",
                &self.given_up,
            ),
            (
                "quaver_webhook_endpoints_disabled_total",
                "Webhook endpoints disabled by a 410 Gone.",
                "counter",
                &self.disabled,
            ),
            (
                "quaver_webhook_first_attempt_latency_ms_sum",
                "Change-to-delivery ms of deliveries that succeeded at once.",
                "counter",
                &self.latency_ms_sum,
            ),
            (
                "quaver_webhook_first_attempt_delivered_total",
                "Deliveries that succeeded at once.",
                "counter",
                &self.delivered_first,
            ),
            (
                "quaver_webhook_leases",
                "Endpoint partitions this node delivers.",
                "gauge",
                &self.leases,
            ),
            (
                "quaver_webhook_window_halved_total",
                "Times an endpoint's attempts in flight were halved (429, 502-504, timeout, connection error).",
                "counter",
                &self.window_halved,
            ),
        ] {
            o.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
        o
    }
}

/// An endpoint's attempts: the keys in flight, and when each recent attempt finished.
///
/// A due-list query that started before an attempt's outcome was written may still list
/// its event as pending: `finished` remembers the query generation each attempt ended in,
/// and a listing from that generation or earlier is not trusted for it (otherwise a
/// delivered event would go out twice — harmless to a deduplicating receiver, but a
/// waste, and out of key order).
#[derive(Debug)]
struct Running {
    keys: HashSet<String>,
    /// How many may be in flight now.
    window: Window,
    /// Generation of the latest due-list query.
    generation: u64,
    /// Event → the generation in which its attempt ended.
    finished: HashMap<u64, u64>,
}

/// How many attempts an endpoint may have in flight: `concurrency` while it answers;
/// halved (down to one) when it answers as an overloaded receiver does — 429, 502, 503,
/// 504, no answer in time, a refused or broken connection — at most once per
/// [`HALVE_EVERY`]; grown back by one for each window's worth of 2xx answers. (TCP's rule:
/// additive increase, multiplicative decrease.) A receiver that falls behind thus gets
/// fewer requests at once instead of the same number failing, and one that keeps up gets
/// `concurrency`.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    /// The current limit, 1 to `max`.
    limit: f64,
    /// The configured concurrency.
    max: f64,
    /// When it was last halved.
    halved_at: Option<Instant>,
}

impl Running {
    fn new(concurrency: usize) -> Self {
        Running {
            keys: HashSet::new(),
            window: Window::new(concurrency),
            generation: 0,
            finished: HashMap::new(),
        }
    }
}

/// What an attempt's answer says about the receiver's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// 2xx.
    Answered,
    /// 429, 502–504, a timeout or a connection error.
    Overloaded,
    /// Anything else (a 4xx or 500: about this event, not the receiver's load).
    Neither,
}

impl Load {
    fn of_status(status: u16) -> Load {
        match status {
            200..=299 => Load::Answered,
            429 | 502 | 503 | 504 => Load::Overloaded,
            _ => Load::Neither,
        }
    }
}

impl Window {
    /// The window of an endpoint allowed `concurrency` attempts at once.
    fn new(concurrency: usize) -> Self {
        let max = concurrency.max(1) as f64;
        Window {
            limit: max,
            max,
            halved_at: None,
        }
    }

    /// Attempts that may start with `busy` in flight.
    fn room(&self, busy: usize) -> usize {
        (self.limit as usize).saturating_sub(busy)
    }

    /// An answer came; returns whether the window was halved by it.
    fn on(&mut self, load: Load, now: Instant) -> bool {
        match load {
            Load::Answered => {
                self.limit = (self.limit + 1.0 / self.limit).min(self.max);
                false
            }
            Load::Overloaded => {
                if self.halved_at.is_some_and(|t| now.duration_since(t) < HALVE_EVERY) {
                    return false;
                }
                self.halved_at = Some(now);
                let before = self.limit;
                self.limit = (self.limit / 2.0).max(1.0);
                self.limit < before
            }
            Load::Neither => false,
        }
    }
}

/// An attempt's result, written with the others that finished at the same time (one
/// transaction), before its key is free for the next event.
#[derive(Debug)]
struct Outcome {
    endpoint: String,
    okey: String,
    event: u64,
    state: i64,
    attempts: u32,
    next_at_ms: u64,
    status: Option<u16>,
    error: Option<String>,
    /// What the answer says about the receiver's load.
    load: Load,
}

/// The delivery task's state.
pub struct Deliverer {
    store: Store,
    node: String,
    cfg: WebhooksConfig,
    client: Client,
    /// Attempts in flight and just finished, per endpoint.
    inflight: Mutex<HashMap<String, Running>>,
    /// Counters.
    pub metrics: Metrics,
    /// Finished attempts, to the run loop.
    done_tx: tokio::sync::mpsc::UnboundedSender<Outcome>,
    done_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Outcome>>>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Writes the config file's endpoints to the database (creating, updating, and
    /// removing those the file no longer lists), loads the filters into the store, and
    /// makes the task.
    pub async fn start(store: Store, node: &str, cfg: &WebhooksConfig) -> anyhow::Result<Arc<Deliverer>> {
        let client = Client::new(cfg.ca_file.as_deref())?;
        store.hooks().set_log(cfg.log.unwrap_or(false));
        let now = now_ms();
        let existing = store
            .hook_endpoints()
            .await
            .map_err(|e| anyhow::anyhow!("reading webhook endpoints: {e}"))?;
        for c in &cfg.endpoints {
            super::check_endpoint(&c.id, &c.url, Some(&c.secret), &c.events)
                .map_err(|e| anyhow::anyhow!("webhooks endpoint {:?}: {e}", c.id))?;
            let old = existing.iter().find(|e| e.id == c.id);
            if old.is_some_and(|o| o.source != "config") {
                anyhow::bail!(
                    "webhooks endpoint {:?} exists already (made through the API): pick another id",
                    c.id
                );
            }
            let e = Endpoint {
                id: c.id.clone(),
                url: c.url.clone(),
                secrets: vec![crate::store::EndpointSecret {
                    secret: c.secret.clone(),
                    expires_at: None,
                }],
                events: c.events.clone(),
                source: "config".into(),
                description: c.description.clone(),
                // A 410 disabled it: it stays disabled until enabled through the API.
                disabled: old.and_then(|o| o.disabled.clone()),
                created_at_ms: old.map_or(now, |o| o.created_at_ms),
                updated_at_ms: now,
            };
            if old != Some(&e) {
                store
                    .hook_put_endpoint(&e)
                    .await
                    .map_err(|e| anyhow::anyhow!("writing a webhook endpoint: {e}"))?;
            }
        }
        for gone in existing
            .iter()
            .filter(|e| e.source == "config" && !cfg.endpoints.iter().any(|c| c.id == e.id))
        {
            tracing::info!(endpoint = %gone.id, "webhook endpoint removed from the config file: deleting it");
            store
                .hook_delete_endpoint(&gone.id)
                .await
                .map_err(|e| anyhow::anyhow!("deleting a webhook endpoint: {e}"))?;
        }
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let d = Arc::new(Deliverer {
            store,
            node: node.to_string(),
            cfg: cfg.clone(),
            client,
            inflight: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            done_tx,
            done_rx: Mutex::new(Some(done_rx)),
        });
        d.reload()
            .await
            .map_err(|e| anyhow::anyhow!("reading webhook endpoints: {e}"))?;
        Ok(d)
    }

    /// Endpoints changed (through this node's API, or a 410 here): reread them now, and
    /// tell the other nodes of a cluster.
    pub fn endpoints_changed(&self) {
        self.store.hooks().endpoints_changed(true);
    }

    /// Endpoints changed through this node's API: what is recorded follows before this
    /// returns (the next change made here is recorded for a new endpoint), and the delivery
    /// loop rereads them and claims a new endpoint's partitions at once.
    pub async fn endpoints_changed_now(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "reading webhook endpoints failed (the delivery loop retries)");
        }
        self.endpoints_changed();
    }

    /// The settings.
    pub fn config(&self) -> &WebhooksConfig {
        &self.cfg
    }

    async fn reload(&self) -> Result<Vec<Endpoint>, crate::store::StoreError> {
        let all = self.store.hook_endpoints().await?;
        // The log, unless configured, is kept while some endpoint exists (disabled ones
        // too: what they miss meanwhile is there to redeliver).
        self.store.hooks().set_log(self.cfg.log.unwrap_or(!all.is_empty()));
        let enabled: Vec<Endpoint> = all.into_iter().filter(|e| e.disabled.is_none()).collect();
        self.store.hooks().set_endpoints(
            enabled
                .iter()
                .map(|e| EndpointFilter {
                    id: e.id.clone(),
                    events: e.events.clone(),
                })
                .collect(),
        );
        Ok(enabled)
    }

    /// Runs until `stop` fires, then gives back its leases.
    pub async fn run(self: Arc<Self>, mut stop: crate::shutdown::Signal) {
        let written = self.store.hooks().written.clone();
        let Some(mut done) = self.done_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("the webhook delivery task was started twice; this one stops");
            return;
        };
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut last_reload = 0u64;
        // (endpoint, partition) → when our lease runs out.
        let mut leases: HashMap<(String, u32), u64> = HashMap::new();
        let mut last_claim = 0u64;
        let lease_ms = (self.cfg.lease.as_millis() as u64).max(300);
        loop {
            // Finished attempts first: their outcomes are written (one transaction), then
            // their keys are free.
            let mut finished = Vec::new();
            while let Ok(o) = done.try_recv() {
                finished.push(o);
            }
            self.settle(finished).await;
            let now = now_ms();
            if self.store.hooks().take_endpoints_changed() || now.saturating_sub(last_reload) >= RELOAD_MS {
                match self.reload().await {
                    Ok(e) => {
                        // A new endpoint's partitions are claimed at once.
                        if e.iter().any(|n| !endpoints.iter().any(|o| o.id == n.id)) {
                            last_claim = 0;
                        }
                        endpoints = e;
                        last_reload = now;
                        leases.retain(|(id, _), _| endpoints.iter().any(|e| &e.id == id));
                    }
                    Err(e) => tracing::warn!(error = %e, "reading webhook endpoints failed"),
                }
            }
            // Leases: renew ours at a third of their life; try for the others as often.
            if now.saturating_sub(last_claim) >= lease_ms / 3 {
                last_claim = now;
                for e in &endpoints {
                    for part in 0..PARTITIONS {
                        match self
                            .store
                            .hook_lease(&e.id, part, &self.node, now, now + lease_ms)
                            .await
                        {
                            Ok(true) => {
                                leases.insert((e.id.clone(), part), now + lease_ms);
                            }
                            Ok(false) => {
                                leases.remove(&(e.id.clone(), part));
                            }
                            Err(err) => tracing::warn!(error = %err, endpoint = %e.id, "webhook lease failed"),
                        }
                    }
                }
                self.metrics.leases.store(leases.len() as u64, Relaxed);
            }
            for e in &endpoints {
                let parts: Vec<u32> = (0..PARTITIONS)
                    .filter(|p| leases.get(&(e.id.clone(), *p)).is_some_and(|t| *t > now))
                    .collect();
                self.dispatch(e, &parts, now).await;
            }
            tokio::select! {
                _ = written.notified() => {
                    // Wake-ups in a burst (commits, finished attempts) share one look at
                    // the due list: one query per few ms, not one per event.
                    tokio::time::sleep(COALESCE).await;
                }
                Some(o) = done.recv() => {
                    // Written at once with whatever else finished meanwhile: the key's
                    // next event waits for this write.
                    let mut finished = vec![o];
                    while let Ok(o) = done.try_recv() {
                        finished.push(o);
                    }
                    self.settle(finished).await;
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait() => break,
            }
        }
        if let Err(e) = self.store.hook_release(&self.node).await {
            tracing::warn!(error = %e, "giving back webhook leases failed (they run out by themselves)");
        }
    }

    /// Writes finished attempts' outcomes in one transaction, then frees their keys. (If
    /// the write fails the deliveries stay pending and go out again: at least once.)
    async fn settle(&self, finished: Vec<Outcome>) {
        if finished.is_empty() {
            return;
        }
        let now = now_ms();
        let rows: Vec<crate::store::Attempted> = finished
            .iter()
            .map(|o| crate::store::Attempted {
                endpoint: o.endpoint.clone(),
                event: o.event,
                state: o.state,
                attempts: o.attempts,
                next_at_ms: o.next_at_ms,
                status: o.status,
                error: o.error.clone(),
            })
            .collect();
        if let Err(err) = self.store.hook_attempted_many(&rows, now).await {
            // They will be sent again (at least once): the receiver dedupes on webhook-id.
            tracing::warn!(error = %err, attempts = rows.len(), "recording webhook attempts failed");
        }
        let mut all = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        for o in finished {
            if let Some(run) = all.get_mut(&o.endpoint) {
                run.keys.remove(&o.okey);
                let g = run.generation;
                run.finished.insert(o.event, g);
                if run.window.on(o.load, at) {
                    self.metrics.window_halved.fetch_add(1, Relaxed);
                    tracing::info!(
                        endpoint = %o.endpoint,
                        in_flight = run.window.limit as usize,
                        status = ?o.status,
                        "webhook endpoint answers as if overloaded: fewer attempts at once"
                    );
                }
            }
        }
    }

    /// What is in flight to endpoint `id` (made with the configured concurrency on first use).
    fn running<'a>(&self, all: &'a mut HashMap<String, Running>, id: &str) -> &'a mut Running {
        all.entry(id.to_string())
            .or_insert_with(|| Running::new(self.cfg.concurrency))
    }

    /// Starts an attempt for each due delivery of `e` in `parts`, within the endpoint's
    /// window and never two of one key.
    async fn dispatch(self: &Arc<Self>, e: &Endpoint, parts: &[u32], now: u64) {
        let (busy, room, generation) = {
            let mut all = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            let run = self.running(&mut all, &e.id);
            run.generation += 1;
            let g = run.generation;
            // Outcomes older than the previous listing are visible to this one.
            run.finished.retain(|_, at| *at + 1 >= g);
            let busy = run.keys.len();
            (busy, run.window.room(busy), g)
        };
        if room == 0 || parts.is_empty() {
            return;
        }
        let due = match self.store.hook_due(&e.id, parts, now, (room + busy) as u32).await {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(error = %err, endpoint = %e.id, "reading due webhook deliveries failed");
                return;
            }
        };
        let mut started = 0;
        for d in due {
            if started == room {
                break;
            }
            {
                let mut all = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                let run = self.running(&mut all, &e.id);
                // Its attempt ended after this listing was asked for: the listing is stale.
                if run.finished.get(&d.event.id).is_some_and(|at| *at >= generation) {
                    continue;
                }
                if !run.keys.insert(d.event.okey.clone()) {
                    continue;
                }
            }
            started += 1;
            let me = self.clone();
            let e = e.clone();
            tokio::spawn(async move {
                let o = me.attempt(&e, d).await;
                // The run loop writes it and frees the key (the key's next event may be
                // due then).
                let _ = me.done_tx.send(o);
            });
        }
    }

    /// One attempt: what to write for it (the run loop writes it).
    async fn attempt(&self, e: &Endpoint, d: Due) -> Outcome {
        let outcome = |state: i64, next_at_ms: u64, status: Option<u16>, error: Option<String>| Outcome {
            endpoint: e.id.clone(),
            okey: d.event.okey.clone(),
            event: d.event.id,
            state,
            attempts: d.attempts + 1,
            next_at_ms,
            // No status: no answer in time, or the connection failed.
            load: status.map_or(Load::Overloaded, Load::of_status),
            status,
            error,
        };
        let Ok(url) = url::Url::parse(&e.url) else {
            // Checked when the endpoint was made; a row edited by hand is retried and given up.
            return self.failed(e, &d, None, "the endpoint's URL does not parse", None, outcome);
        };
        let body = serde_json::to_vec(&envelope(&d.event)).unwrap_or_default();
        let now = now_ms();
        let ts = (now / 1000) as i64;
        let id = event_id(d.event.id);
        let signature = sign(&e.secrets, &id, ts, &body, now);
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ];
        match self
            .client
            .post(&url, &headers, Bytes::from(body), self.cfg.timeout)
            .await
        {
            Ok(a) if (200..300).contains(&a.status) => {
                let now = now_ms();
                self.metrics.delivered.fetch_add(1, Relaxed);
                if d.attempts == 0 {
                    self.metrics.delivered_first.fetch_add(1, Relaxed);
                    self.metrics
                        .latency_ms_sum
                        .fetch_add(now.saturating_sub(d.event.created_at_ms), Relaxed);
                }
                outcome(delivery_state::DELIVERED, now, Some(a.status), None)
            }
            Ok(a) if a.status == 410 => {
                self.metrics.disabled.fetch_add(1, Relaxed);
                self.metrics.failed.fetch_add(1, Relaxed);
                tracing::warn!(endpoint = %e.id, url = %e.url, "webhook endpoint answered 410 Gone: disabling it");
                let reason = "the endpoint answered 410 Gone";
                let now = now_ms();
                match self.store.hook_set_disabled(&e.id, Some(reason), now).await {
                    Ok(_) => {
                        let data = catalogue::WebhookEndpointDisabled {
                            endpoint_id: e.id.clone(),
                            reason: reason.into(),
                        };
                        let ev = catalogue::endpoint_event("endpoint.disabled", &e.id, &data);
                        if let Err(err) = self.store.hook_record_now(ev, None, now).await {
                            tracing::warn!(error = %err, "recording endpoint.disabled failed");
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, endpoint = %e.id, "disabling a webhook endpoint failed"),
                }
                self.endpoints_changed();
                // It waits, pending, until the endpoint is enabled again.
                outcome(delivery_state::PENDING, now, Some(410), Some(reason.into()))
            }
            Ok(a) => {
                let msg = format!("answered {}", a.status);
                self.failed(e, &d, Some(a.status), &msg, a.retry_after, outcome)
            }
            Err(msg) => self.failed(e, &d, None, &msg, None, outcome),
        }
    }

    fn failed(
        &self,
        e: &Endpoint,
        d: &Due,
        status: Option<u16>,
        msg: &str,
        retry_after: Option<Duration>,
        outcome: impl Fn(i64, u64, Option<u16>, Option<String>) -> Outcome,
    ) -> Outcome {
        self.metrics.failed.fetch_add(1, Relaxed);
        let now = now_ms();
        let attempts = d.attempts + 1;
        let give_up = now.saturating_sub(d.event.created_at_ms) >= self.cfg.retry_for.as_millis() as u64;
        if give_up {
            self.metrics.given_up.fetch_add(1, Relaxed);
            tracing::warn!(endpoint = %e.id, event = d.event.id, attempts, error = msg, "webhook delivery given up after the retry period");
            outcome(delivery_state::GIVEN_UP, now, status, Some(msg.to_string()))
        } else {
            tracing::debug!(endpoint = %e.id, event = d.event.id, attempts, error = msg, "webhook attempt failed");
            let next = now + self.backoff(attempts, retry_after).as_millis() as u64;
            outcome(delivery_state::PENDING, next, status, Some(msg.to_string()))
        }
    }

    /// The delay before attempt `attempts + 1`: `retry_min · 2^(attempts−1)` up to
    /// `retry_max`, drawn in its upper half (jitter), and never before `Retry-After` (up to
    /// a day).
    fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .cfg
            .retry_min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.cfg.retry_max);
        let jitter = exp.mul_f64(0.5 + 0.5 * rand_unit());
        jitter.max(retry_after.unwrap_or_default().min(Duration::from_secs(86_400)))
    }
}

/// A number in [0, 1) (jitter only: not security).
fn rand_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::{HALVE_EVERY, Load, Window};
    use std::time::{Duration, Instant};

    #[test]
    fn a_window_halves_on_overload_at_most_so_often_and_grows_back_on_answers() {
        let t0 = Instant::now();
        let mut w = Window::new(64);
        assert_eq!(w.room(0), 64, "the configured concurrency at first");
        assert_eq!(w.room(60), 4);
        // A burst of failures together halves it once.
        assert!(w.on(Load::Overloaded, t0));
        for _ in 0..20 {
            assert!(!w.on(Load::Overloaded, t0 + Duration::from_millis(10)));
        }
        assert_eq!(w.room(0), 32);
        // Other answers about one event (a 400, a 500) say nothing of load.
        assert_eq!(Load::of_status(500), Load::Neither);
        assert_eq!(Load::of_status(404), Load::Neither);
        assert!(!w.on(Load::Neither, t0 + HALVE_EVERY * 2));
        assert_eq!(w.room(0), 32);
        // Later signals halve it again, down to one and no further.
        let mut t = t0;
        for _ in 0..10 {
            t += HALVE_EVERY;
            w.on(Load::Overloaded, t);
        }
        assert_eq!(w.room(0), 1);
        assert_eq!(w.room(1), 0);
        assert!(!w.on(Load::Overloaded, t + HALVE_EVERY), "one is the floor");
        // A window's worth of answers adds one: from 1, 63 windows back to 64 (about
        // 2,000 answers), never above it.
        let mut answers = 0;
        while w.room(0) < 64 {
            w.on(Load::Answered, t);
            answers += 1;
            assert!(answers < 3_000, "grows back");
        }
        assert!((1_900..2_100).contains(&answers), "{answers}");
        for _ in 0..100 {
            w.on(Load::Answered, t);
        }
        assert_eq!(w.room(0), 64);
        // 429, 502, 503, 504 are overload; 2xx an answer.
        for s in [429, 502, 503, 504] {
            assert_eq!(Load::of_status(s), Load::Overloaded);
        }
        assert_eq!(Load::of_status(204), Load::Answered);
        // Another configured concurrency is another cap.
        assert_eq!(Window::new(8).room(0), 8);
    }
}
