//! What webhooks keep: the retained event log, per-key sequences, endpoints, one delivery
//! row per (endpoint, event) and the delivery leases.
//!
//! An event about a stored change is recorded inside the change's own transaction
//! ([`Store::hook_record`]), together with a delivery row for every endpoint that wants it:
//! the change and its webhooks commit or roll back together, so nothing is announced that
//! was not stored and nothing stored goes unannounced, whatever happens to the node after
//! the commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::*;

/// An endpoint's ordering keys are spread over this many partitions; each partition is
/// leased to one node at a time, which delivers its keys (in order per key).
pub const PARTITIONS: u32 = 8;

/// The partition of an ordering key (FNV-1a: stable across nodes and releases).
pub fn partition(okey: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in okey.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % PARTITIONS
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct HookEvent {
    /// Its type (`message.created`, …).
    pub kind: &'static str,
    /// Its ordering key (`channel:<id>`, `guild:<id>`, `voice:<id>`, `user:<id>`,
    /// `endpoint:<id>`).
    pub okey: String,
    /// The key's sequence when the caller has one (a channel's seq); otherwise the next of
    /// the key's own counter.
    pub kseq: Option<u64>,
    /// The envelope's `data`, JSON.
    pub data: String,
}

/// Which event types an endpoint wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFilter {
    /// The endpoint.
    pub id: String,
    /// Its patterns.
    pub events: Vec<String>,
}

/// What every write needs to decide which events to record: whether the log is kept, and
/// a copy of the enabled endpoints' filters (kept current by the delivery task).
#[derive(Debug, Default)]
pub struct HookSink {
    log: AtomicBool,
    endpoints: RwLock<Arc<Vec<EndpointFilter>>>,
    /// Woken after a commit that wrote deliveries (the delivery task waits on it).
    pub written: Arc<tokio::sync::Notify>,
    /// Woken after the same commits, for the other nodes of a cluster (the task that tells
    /// them waits on it: a `Notify` wakes one waiter, so each has its own).
    pub committed: Arc<tokio::sync::Notify>,
    /// Endpoints changed (here or on another node): the delivery task rereads them.
    endpoints_stale: AtomicBool,
    /// Woken when endpoints changed through this node, for the other nodes of a cluster.
    pub endpoints_changed_here: Arc<tokio::sync::Notify>,
}

/// What a transaction that wrote deliveries wakes once it committed.
#[derive(Debug)]
pub(super) struct Wake {
    here: Arc<tokio::sync::Notify>,
    cluster: Arc<tokio::sync::Notify>,
}

impl Wake {
    pub(super) fn fire(self) {
        self.here.notify_one();
        self.cluster.notify_one();
    }
}

impl HookSink {
    /// Keeps (or not) events no endpoint wants, for `GET /api/v1/events`.
    pub fn set_log(&self, on: bool) {
        self.log.store(on, Ordering::Relaxed);
    }

    /// The enabled endpoints' filters.
    pub fn set_endpoints(&self, filters: Vec<EndpointFilter>) {
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(filters);
    }

    /// Endpoints changed — through this node (`here`: the cluster is told too) or, as the
    /// bus says, another: the delivery task rereads them at once, and with them the filters
    /// every write records by.
    pub fn endpoints_changed(&self, here: bool) {
        self.endpoints_stale.store(true, Ordering::Relaxed);
        self.written.notify_one();
        if here {
            self.endpoints_changed_here.notify_one();
        }
    }

    /// Whether endpoints changed since the last call.
    pub fn take_endpoints_changed(&self) -> bool {
        self.endpoints_stale.swap(false, Ordering::Relaxed)
    }

    pub(super) fn wake(&self) -> Wake {
        Wake {
            here: self.written.clone(),
            cluster: self.committed.clone(),
        }
    }

    fn endpoints(&self) -> Arc<Vec<EndpointFilter>> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether an event of `kind` is recorded at all.
    pub fn wants(&self, kind: &str) -> bool {
        self.log.load(Ordering::Relaxed)
            || self
                .endpoints()
                .iter()
                .any(|e| crate::webhooks::catalogue::matches(&e.events, kind))
    }
}

/// A signing secret of an endpoint (its `Debug` does not show it).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointSecret {
    /// `whsec_<base64>`.
    pub secret: String,
    /// Unix ms after which it no longer signs (`None`: the current one).
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSecret")
            .field("secret", &"whsec_…")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its id.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Signing secrets, newest first.
    pub secrets: Vec<EndpointSecret>,
    /// Event type patterns.
    pub events: Vec<String>,
    /// `config` or `api`.
    pub source: String,
    /// Free text.
    pub description: String,
    /// When and why it was disabled (a `410`, or by the API).
    pub disabled: Option<(u64, String)>,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its id (`evt_<id>` on the wire).
    pub id: u64,
    /// Its type.
    pub kind: String,
    /// Ordering key.
    pub okey: String,
    /// The key's sequence.
    pub kseq: u64,
    /// `data`, JSON.
    pub data: String,
    /// Unix ms.
    pub created_at_ms: u64,
}

/// A delivery due now.
#[derive(Debug, Clone)]
pub struct Due {
    /// The event.
    pub event: LoggedEvent,
    /// Attempts so far.
    pub attempts: u32,
}

/// An attempt's outcome to write.
#[derive(Debug, Clone)]
pub struct Attempted {
    /// The endpoint.
    pub endpoint: String,
    /// The event.
    pub event: u64,
    /// Its new state (pending for a retry).
    pub state: i64,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// The next attempt (pending ones), Unix ms.
    pub next_at_ms: u64,
    /// The answer's status, if any.
    pub status: Option<u16>,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// One row of an endpoint's delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event.
    pub event_id: u64,
    /// Its type.
    pub kind: String,
    /// Ordering key and sequence.
    pub okey: String,
    /// The key's sequence.
    pub kseq: u64,
    /// 0 pending, 1 delivered, 2 given up.
    pub state: u8,
    /// Attempts so far.
    pub attempts: u32,
    /// Next attempt (pending), Unix ms.
    pub next_at_ms: u64,
    /// The last answer's HTTP status, if any.
    pub last_status: Option<u16>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Unix ms.
    pub updated_at_ms: u64,
}

/// Delivery states.
pub mod state {
    /// Not delivered yet.
    pub const PENDING: i64 = 0;
    /// Answered with 2xx.
    pub const DELIVERED: i64 = 1;
    /// Retried until the retry period ended (or the endpoint was deleted).
    pub const GIVEN_UP: i64 = 2;
}

fn logged_of(r: &AnyRow) -> Result<LoggedEvent> {
    Ok(LoggedEvent {
        id: u(r.try_get("id")?),
        kind: r.try_get("type")?,
        okey: r.try_get("okey")?,
        kseq: u(r.try_get("kseq")?),
        data: r.try_get("data")?,
        created_at_ms: u(r.try_get("created_at")?),
    })
}

fn endpoint_of(r: &AnyRow) -> Result<Endpoint> {
    let secrets: String = r.try_get("secrets")?;
    let events: String = r.try_get("events")?;
    let disabled_at: Option<i64> = r.try_get("disabled_at")?;
    let reason: Option<String> = r.try_get("disabled_reason")?;
    Ok(Endpoint {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        // Written by this module only; a row that does not parse has no usable secret.
        secrets: serde_json::from_str(&secrets).unwrap_or_default(),
        events: serde_json::from_str(&events).unwrap_or_default(),
        source: r.try_get("source")?,
        description: r.try_get("description")?,
        disabled: disabled_at.map(|t| (u(t), reason.unwrap_or_default())),
        created_at_ms: u(r.try_get("created_at")?),
        updated_at_ms: u(r.try_get("updated_at")?),
    })
}

const EP_COLS: &str =
    "id, url, secrets, events, source, description, disabled_at, disabled_reason, created_at, updated_at";

impl Store {
    /// Records `event()` in `tx` when anything wants an event of `kind`: the log row, and
    /// a delivery row for each enabled endpoint that wants it. The delivery task is woken
    /// when `tx` commits.
    pub(super) async fn hook_record(
        &self,
        tx: &mut Tx,
        kind: &'static str,
        now_ms: u64,
        event: impl FnOnce() -> HookEvent,
    ) -> Result<()> {
        if !self.hooks.wants(kind) {
            return Ok(());
        }
        let ev = event();
        let (id, kseq) = Self::insert_event(tx, &ev, now_ms).await?;
        let part = i64::from(partition(&ev.okey));
        let mut any = false;
        for e in self.hooks.endpoints().iter() {
            if !crate::webhooks::catalogue::matches(&e.events, ev.kind) {
                continue;
            }
            Self::insert_delivery(tx, &e.id, id, &ev.okey, kseq, part, now_ms).await?;
            any = true;
        }
        if any {
            tx.wake = Some(self.hooks.wake());
        }
        Ok(())
    }

    /// Writes `ev` to the log with its key's sequence (the caller's, or the key's next):
    /// its id and that sequence.
    async fn insert_event(tx: &mut Tx, ev: &HookEvent, now_ms: u64) -> Result<(i64, u64)> {
        let kseq = match ev.kseq {
            Some(s) => s,
            None => u(sqlx::query(
                "INSERT INTO hook_keys (okey, last_seq) VALUES ($1, 1) \
                 ON CONFLICT (okey) DO UPDATE SET last_seq = hook_keys.last_seq + 1 RETURNING last_seq",
            )
            .bind(&ev.okey)
            .fetch_one(&mut **tx)
            .await?
            .try_get("last_seq")?),
        };
        let id: i64 = sqlx::query(
            "INSERT INTO hook_events (type, okey, kseq, data, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(ev.kind)
        .bind(&ev.okey)
        .bind(i(kseq))
        .bind(&ev.data)
        .bind(i(now_ms))
        .fetch_one(&mut **tx)
        .await?
        .try_get("id")?;
        Ok((id, kseq))
    }

    async fn insert_delivery(
        tx: &mut Tx,
        endpoint: &str,
        event: i64,
        okey: &str,
        kseq: u64,
        part: i64,
        now_ms: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO hook_deliveries (endpoint_id, event_id, okey, kseq, part, state, attempts, next_at, last_status, last_error, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 0, 0, $6, NULL, NULL, $6, $6) \
             ON CONFLICT (endpoint_id, event_id) DO UPDATE SET state = 0, attempts = 0, next_at = $6, updated_at = $6",
        )
        .bind(endpoint)
        .bind(event)
        .bind(okey)
        .bind(i(kseq))
        .bind(part)
        .bind(i(now_ms))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records an event that is not part of a stored change (sessions, presence, voice, a
    /// test ping) in a transaction of its own. With `only`, it is delivered to that
    /// endpoint alone (whatever its filter says).
    pub async fn hook_record_now(&self, ev: HookEvent, only: Option<&str>, now_ms: u64) -> Result<Option<u64>> {
        self.deadline(async move {
            if only.is_none() && !self.hooks.wants(ev.kind) {
                return Ok(None);
            }
            let mut tx = self.begin().await?;
            let id = match only {
                None => {
                    let kind = ev.kind;
                    self.hook_record(&mut tx, kind, now_ms, || ev).await?;
                    None
                }
                Some(endpoint) => {
                    let (id, kseq) = Self::insert_event(&mut tx, &ev, now_ms).await?;
                    let part = i64::from(partition(&ev.okey));
                    Self::insert_delivery(&mut tx, endpoint, id, &ev.okey, kseq, part, now_ms).await?;
                    tx.wake = Some(self.hooks.wake());
                    Some(u(id))
                }
            };
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    /// Records events that are not part of a stored change, in one transaction (each when
    /// something wants its kind), each at its own time.
    pub async fn hook_record_batch(&self, events: &[(HookEvent, u64)]) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            for (ev, at) in events {
                let kind = ev.kind;
                self.hook_record(&mut tx, kind, *at, || ev.clone()).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// What decides which events are recorded (shared with the delivery task).
    pub fn hooks(&self) -> &HookSink {
        &self.hooks
    }

    // ----- endpoints -------------------------------------------------------------

    /// Every endpoint.
    pub async fn hook_endpoints(&self) -> Result<Vec<Endpoint>> {
        self.deadline(async move {
            let q = format!("SELECT {EP_COLS} FROM hook_endpoints ORDER BY id");
            sqlx::query(sqlx::AssertSqlSafe(q))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(endpoint_of)
                .collect()
        })
        .await
    }

    /// One endpoint.
    pub async fn hook_endpoint(&self, id: &str) -> Result<Endpoint> {
        self.deadline(async move {
            let q = format!("SELECT {EP_COLS} FROM hook_endpoints WHERE id = $1");
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .map(|r| endpoint_of(&r))
                .transpose()?
                .ok_or(StoreError::NotFound)
        })
        .await
    }

    /// Creates or replaces an endpoint (its `created_at` is kept when it existed).
    pub async fn hook_put_endpoint(&self, e: &Endpoint) -> Result<()> {
        self.deadline(async move {
            let secrets = serde_json::to_string(&e.secrets).unwrap_or_else(|_| "[]".into());
            let events = serde_json::to_string(&e.events).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO hook_endpoints (id, url, secrets, events, source, description, disabled_at, disabled_reason, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (id) DO UPDATE SET url = $2, secrets = $3, events = $4, source = $5, description = $6, \
                 disabled_at = $7, disabled_reason = $8, updated_at = $10",
            )
            .bind(&e.id)
            .bind(&e.url)
            .bind(secrets)
            .bind(events)
            .bind(&e.source)
            .bind(&e.description)
            .bind(e.disabled.as_ref().map(|d| i(d.0)))
            .bind(e.disabled.as_ref().map(|d| d.1.clone()))
            .bind(i(e.created_at_ms))
            .bind(i(e.updated_at_ms))
            .execute(&mut *self.conn().await?)
            .await?;
            Ok(())
        })
        .await
    }

    /// Disables an endpoint (`Some(reason)`) or enables it again; whether it exists.
    pub async fn hook_set_disabled(&self, id: &str, reason: Option<&str>, now_ms: u64) -> Result<bool> {
        self.deadline(async move {
            Ok(sqlx::query(
                "UPDATE hook_endpoints SET disabled_at = $2, disabled_reason = $3, updated_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(reason.map(|_| i(now_ms)))
            .bind(reason)
            .bind(i(now_ms))
            .execute(&mut *self.conn().await?)
            .await?
            .rows_affected()
                > 0)
        })
        .await
    }

    /// Deletes an endpoint with its deliveries and leases; whether it existed.
    pub async fn hook_delete_endpoint(&self, id: &str) -> Result<bool> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            for q in [
                "DELETE FROM hook_deliveries WHERE endpoint_id = $1",
                "DELETE FROM hook_leases WHERE endpoint_id = $1",
            ] {
                sqlx::query(q).bind(id).execute(&mut *tx).await?;
            }
            let n = sqlx::query("DELETE FROM hook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    // ----- delivery ----------------------------------------------------------------

    /// Takes (or keeps) the lease on `endpoint`'s partition `part` for `node` until
    /// `until_ms`: whether `node` holds it now.
    pub async fn hook_lease(&self, endpoint: &str, part: u32, node: &str, now_ms: u64, until_ms: u64) -> Result<bool> {
        self.deadline(async move {
            Ok(sqlx::query(
                "INSERT INTO hook_leases (endpoint_id, part, node, expires_at) VALUES ($1, $2, $3, $5) \
                 ON CONFLICT (endpoint_id, part) DO UPDATE SET node = $3, expires_at = $5 \
                 WHERE hook_leases.node = $3 OR hook_leases.expires_at < $4",
            )
            .bind(endpoint)
            .bind(i64::from(part))
            .bind(node)
            .bind(i(now_ms))
            .bind(i(until_ms))
            .execute(&mut *self.conn().await?)
            .await?
            .rows_affected()
                > 0)
        })
        .await
    }

    /// Gives up every lease `node` holds (a clean shutdown: another node takes over at once).
    pub async fn hook_release(&self, node: &str) -> Result<()> {
        self.deadline(async move {
            sqlx::query("DELETE FROM hook_leases WHERE node = $1")
                .bind(node)
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(())
        })
        .await
    }

    /// Deliveries of `endpoint` in partitions `parts` due at `now_ms`, each the first
    /// pending one of its key (a key's later events wait until it is delivered or given
    /// up), oldest first, at most `limit`.
    pub async fn hook_due(&self, endpoint: &str, parts: &[u32], now_ms: u64, limit: u32) -> Result<Vec<Due>> {
        if parts.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.deadline(async move {
            // Partitions are small integers: written into the text, not bound.
            let list = parts.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            let q = format!(
                "SELECT e.id, e.type, e.okey, e.kseq, e.data, e.created_at, d.attempts \
                 FROM hook_deliveries d JOIN hook_events e ON e.id = d.event_id \
                 WHERE d.endpoint_id = $1 AND d.state = 0 AND d.part IN ({list}) AND d.next_at <= $2 \
                 AND NOT EXISTS (SELECT 1 FROM hook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
                 AND p.okey = d.okey AND p.state = 0 AND p.kseq < d.kseq) \
                 ORDER BY d.event_id LIMIT $3"
            );
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(endpoint)
                .bind(i(now_ms))
                .bind(i64::from(limit))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(|r| {
                    Ok(Due {
                        event: logged_of(r)?,
                        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    })
                })
                .collect()
        })
        .await
    }

    /// Writes attempts' outcomes in one transaction.
    pub async fn hook_attempted_many(&self, rows: &[Attempted], now_ms: u64) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            for a in rows {
                sqlx::query(
                    "UPDATE hook_deliveries SET state = $3, attempts = $4, next_at = $5, last_status = $6, last_error = $7, updated_at = $8 \
                     WHERE endpoint_id = $1 AND event_id = $2 AND state = 0",
                )
                .bind(&a.endpoint)
                .bind(i(a.event))
                .bind(a.state)
                .bind(i64::from(a.attempts))
                .bind(i(a.next_at_ms))
                .bind(a.status.map(i64::from))
                .bind(a.error.as_deref())
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// `endpoint`'s deliveries with event ids after `after`, oldest first; only those in
    /// `state` when given.
    pub async fn hook_deliveries(
        &self,
        endpoint: &str,
        after: u64,
        state: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT d.event_id, e.type, d.okey, d.kseq, d.state, d.attempts, d.next_at, d.last_status, d.last_error, d.updated_at \
                 FROM hook_deliveries d JOIN hook_events e ON e.id = d.event_id \
                 WHERE d.endpoint_id = $1 AND d.event_id > $2 AND ($3 < 0 OR d.state = $3) ORDER BY d.event_id LIMIT $4",
            )
            .bind(endpoint)
            .bind(i(after))
            .bind(state.unwrap_or(-1))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(|r| {
                Ok(Delivery {
                    event_id: u(r.try_get("event_id")?),
                    kind: r.try_get("type")?,
                    okey: r.try_get("okey")?,
                    kseq: u(r.try_get("kseq")?),
                    state: u8::try_from(r.try_get::<i64, _>("state")?).unwrap_or(0),
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    next_at_ms: u(r.try_get("next_at")?),
                    last_status: r.try_get::<Option<i64>, _>("last_status")?.and_then(|s| u16::try_from(s).ok()),
                    last_error: r.try_get("last_error")?,
                    updated_at_ms: u(r.try_get("updated_at")?),
                })
            })
            .collect()
        })
        .await
    }

    /// Queues the events with ids in `from..=to` (created within `since_ms..=until_ms`)
    /// for `endpoint` again, whether it had them or not; how many. At most `limit`.
    pub async fn hook_redeliver(
        &self,
        endpoint: &str,
        (from, to): (u64, u64),
        (since_ms, until_ms): (u64, u64),
        limit: u32,
        now_ms: u64,
    ) -> Result<u64> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let rows = sqlx::query(
                "SELECT id, okey, kseq FROM hook_events WHERE id >= $1 AND id <= $2 AND created_at >= $3 AND created_at <= $4 \
                 ORDER BY id LIMIT $5",
            )
            .bind(i(from))
            .bind(i(to.min(i64::MAX as u64)))
            .bind(i(since_ms))
            .bind(i(until_ms.min(i64::MAX as u64)))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                let okey: String = r.try_get("okey")?;
                let part = i64::from(partition(&okey));
                let id: i64 = r.try_get("id")?;
                let kseq = u(r.try_get("kseq")?);
                Self::insert_delivery(&mut tx, endpoint, id, &okey, kseq, part, now_ms).await?;
            }
            if !rows.is_empty() {
                tx.wake = Some(self.hooks.wake());
            }
            tx.commit().await?;
            Ok(rows.len() as u64)
        })
        .await
    }

    /// The event log after `after`, oldest first, only events created at or before
    /// `upto_ms` (see `GET /api/v1/events` for why), of types matching `patterns`.
    pub async fn hook_events_after(&self, after: u64, upto_ms: u64, limit: u32) -> Result<Vec<LoggedEvent>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT id, type, okey, kseq, data, created_at FROM hook_events WHERE id > $1 AND created_at <= $2 ORDER BY id LIMIT $3",
            )
            .bind(i(after))
            .bind(i(upto_ms.min(i64::MAX as u64)))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.conn().await?)
            .await?
            .iter()
            .map(logged_of)
            .collect()
        })
        .await
    }

    /// One logged event.
    pub async fn hook_event(&self, id: u64) -> Result<LoggedEvent> {
        self.deadline(async move {
            sqlx::query("SELECT id, type, okey, kseq, data, created_at FROM hook_events WHERE id = $1")
                .bind(i(id))
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .map(|r| logged_of(&r))
                .transpose()?
                .ok_or(StoreError::NotFound)
        })
        .await
    }

    /// Forgets finished deliveries and logged events older than `before_ms` (an event
    /// still pending for some endpoint is kept); how many events.
    pub async fn hook_prune(&self, before_ms: u64) -> Result<u64> {
        self.deadline(async move {
            sqlx::query("DELETE FROM hook_deliveries WHERE state <> 0 AND created_at < $1")
                .bind(i(before_ms))
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(sqlx::query(
                "DELETE FROM hook_events WHERE created_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM hook_deliveries d WHERE d.event_id = hook_events.id AND d.state = 0)",
            )
            .bind(i(before_ms))
            .execute(&mut *self.conn().await?)
            .await?
            .rows_affected())
        })
        .await
    }
}
