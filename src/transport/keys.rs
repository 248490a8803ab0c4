//! Keys that outlive a process and are the same on every node, kept in the database
//! (`server_keys`), so that a node restarted — or a client moving to another node — costs
//! as little as it can:
//!
//! - **TLS session tickets** ([`TicketKeys`]): a client that held a connection comes back
//!   with a ticket and resumes TLS (a PSK handshake with a fresh X25519 exchange: no
//!   certificate sent, no signature made), whichever node it reaches and across restarts.
//!   rustls's own ticketer makes its keys in memory, so every restart (and every other
//!   node) would refuse every ticket, exactly when a reconnect storm comes. Keys are made
//!   per period of [`TICKET_PERIOD`] (the next one ahead of time, by whichever node gets
//!   there first), a ticket is sealed with its period's key and opened while that key is
//!   kept — its period and the next — and a key is erased from the database and from
//!   memory after that, so a stolen database or process image opens no older ticket.
//! - **The QUIC stateless-reset key** ([`Keys::reset`]): a restarted node answers the
//!   packets of connections it lost with a stateless reset the client recognises
//!   (RFC 9000 §10.3), so the client reconnects at its next packet (within one heartbeat)
//!   instead of waiting out its idle timeout (20–30 s). quinn makes a random key per
//!   endpoint by default, which the restarted node no longer has.
//!
//! No 0-RTT: it would save one round trip, not CPU, and early data can be replayed — a
//! replayed `Hello` would open a session (presence online, `session.opened`, the connect
//! hook) for someone who cannot finish the handshake. `max_early_data_size` stays 0.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::Store;

/// How long one ticket key seals tickets; it opens them for twice that (its period and
/// the next), after which it is erased. A ticket therefore resumes for 12 to 24 hours.
pub const TICKET_PERIOD: Duration = Duration::from_secs(12 * 3600);

/// How often a node makes sure the current and next periods' keys exist and erases old ones.
const REFRESH_EVERY: Duration = Duration::from_secs(600);

const TICKET_KIND: &str = "tls_ticket";
const RESET_KIND: &str = "quic_reset";

/// The keys a node serves with.
pub struct Keys {
    /// The stateless-reset key every engine loop's endpoint uses.
    pub reset: Arc<dyn quinn_proto::crypto::HmacKey>,
    /// The TLS session-ticket keys.
    pub tickets: Arc<TicketKeys>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("tickets", &self.tickets)
            .finish_non_exhaustive()
    }
}

fn random32(rng: &SystemRandom) -> anyhow::Result<[u8; 32]> {
    let mut k = [0u8; 32];
    rng.fill(&mut k)
        .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
    Ok(k)
}

impl Keys {
    /// Loads (or makes, once for the whole cluster) the keys from the store.
    pub async fn load(store: &Store) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let now = crate::ids::now_ms();
        let reset = store.server_key(RESET_KIND, 0, &random32(&rng)?, now).await?;
        let tickets = Arc::new(TicketKeys::new(TICKET_PERIOD));
        tickets.refresh(store, now).await?;
        Ok(Self {
            reset: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset)),
            tickets,
        })
    }
}

/// Seals and opens TLS 1.3 session tickets with keys shared through the store (see the
/// module's docs). A ticket is `period (4 bytes, big-endian) ‖ nonce (12) ‖ AES-256-GCM
/// ciphertext and tag`, the period authenticated as associated data.
pub struct TicketKeys {
    period_ms: u64,
    /// Keys by period, the ones that may open tickets now.
    keys: RwLock<Vec<(u32, LessSafeKey)>>,
    rng: SystemRandom,
    /// Tickets sealed.
    pub issued: AtomicU64,
    /// Tickets opened (a client resuming).
    pub accepted: AtomicU64,
    /// Tickets that could not be opened: from an erased key's period, or not ours.
    pub refused: AtomicU64,
    /// Tickets not sealed because the current period's key was missing (the store could
    /// not be reached for longer than a period); logged by the refresh.
    pub unsealed: AtomicU64,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let periods: Vec<u32> = self.read().iter().map(|(p, _)| *p).collect();
        f.debug_struct("TicketKeys")
            .field("periods", &periods)
            .finish_non_exhaustive()
    }
}

const HEADER: usize = 4 + NONCE_LEN;

impl TicketKeys {
    /// Keys of `period` each; none loaded yet (every ticket refused until [`Self::refresh`]).
    pub fn new(period: Duration) -> Self {
        Self {
            period_ms: (period.as_millis() as u64).max(1),
            keys: RwLock::new(Vec::new()),
            rng: SystemRandom::new(),
            issued: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unsealed: AtomicU64::new(0),
        }
    }

    fn period_at(&self, now_ms: u64) -> u32 {
        u32::try_from(now_ms / self.period_ms).unwrap_or(u32::MAX)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(u32, LessSafeKey)>> {
        // A poisoned lock only means a writer panicked mid-swap of a whole vector.
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the keys of the current and the next period exist in the store, erases
    /// the ones no ticket may use any more, and takes the rest (the previous, current and
    /// next periods') into service.
    pub async fn refresh(&self, store: &Store, now_ms: u64) -> anyhow::Result<()> {
        let current = self.period_at(now_ms);
        for p in [current, current.saturating_add(1)] {
            store
                .server_key(TICKET_KIND, p.into(), &random32(&self.rng)?, now_ms)
                .await?;
        }
        let oldest = current.saturating_sub(1);
        store.erase_server_keys_before(TICKET_KIND, oldest.into()).await?;
        let mut keys = Vec::new();
        for (p, secret) in store.server_keys_from(TICKET_KIND, oldest.into()).await? {
            let key = UnboundKey::new(&AES_256_GCM, &secret)
                .map_err(|_| anyhow::anyhow!("ticket key of period {p} has the wrong length"))?;
            keys.push((u32::try_from(p)?, LessSafeKey::new(key)));
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] until shutdown; a failure is logged and retried at
    /// the next turn (the next period's key was made ahead, so one failed turn costs nothing).
    pub async fn refresh_loop(self: Arc<Self>, store: Store, mut shutdown: crate::shutdown::Signal) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            if let Err(e) = self.refresh(&store, crate::ids::now_ms()).await {
                tracing::warn!(error = %e, "could not refresh the TLS ticket keys; retrying in {REFRESH_EVERY:?}");
            }
        }
    }

    fn seal_at(&self, plain: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        let period = self.period_at(now_ms);
        let keys = self.read();
        let Some((_, key)) = keys.iter().find(|(p, _)| *p == period) else {
            self.unsealed.fetch_add(1, Relaxed);
            return None;
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(period.to_be_bytes()),
                &mut out[HEADER..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        self.issued.fetch_add(1, Relaxed);
        Some(out)
    }

    fn open_at(&self, ticket: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        let opened = self.open(ticket, now_ms);
        match opened {
            Some(_) => self.accepted.fetch_add(1, Relaxed),
            None => self.refused.fetch_add(1, Relaxed),
        };
        opened
    }

    fn open(&self, ticket: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER + AES_256_GCM.tag_len() {
            return None;
        }
        let period = u32::from_be_bytes(ticket[..4].try_into().ok()?);
        // Sealed in its period; opened in that period or the next (a key still held for
        // a later period after a clock step back does not stretch that).
        let now = self.period_at(now_ms);
        if period > now || now - period > 1 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[4..HEADER]).ok()?;
        let keys = self.read();
        let (_, key) = keys.iter().find(|(p, _)| *p == period)?;
        let mut buf = ticket[HEADER..].to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(period.to_be_bytes()), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain);
        Some(buf)
    }

    /// Prometheus text of the counters.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, help, v) in [
            (
                "quaver_tls_tickets_issued_total",
                "TLS session tickets sealed.",
                &self.issued,
            ),
            (
                "quaver_tls_tickets_accepted_total",
                "TLS session tickets opened: a client resuming TLS.",
                &self.accepted,
            ),
            (
                "quaver_tls_tickets_refused_total",
                "TLS session tickets that could not be opened (expired key, or not this cluster's).",
                &self.refused,
            ),
            (
                "quaver_tls_tickets_unsealed_total",
                "Tickets not issued because the current period's key could not be loaded.",
                &self.unsealed,
            ),
        ] {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
        s
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.period_ms / 1000).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, crate::ids::now_ms())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, crate::ids::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600 * 1000;

    /// A store of its own (a file: an in-memory SQLite database is one per connection).
    async fn new_store() -> Store {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "quaver-keys-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Store::open(&format!("sqlite://{}/q.db?mode=rwc", dir.display()))
            .await
            .expect("a store")
    }

    #[tokio::test]
    async fn a_ticket_opens_on_another_node_and_after_a_restart_until_its_key_is_erased() {
        let store = new_store().await;
        let t0 = 1_000 * 12 * H + H;
        let a = TicketKeys::new(TICKET_PERIOD);
        a.refresh(&store, t0).await.expect("refresh");
        let ticket = a.seal_at(b"resumption secret", t0).expect("sealed");
        assert_ne!(&ticket[HEADER..HEADER + 17], b"resumption secret", "sealed, not copied");
        // Another node (or this one restarted) loads the same keys from the store.
        let b = TicketKeys::new(TICKET_PERIOD);
        b.refresh(&store, t0 + H).await.expect("refresh");
        assert_eq!(b.open_at(&ticket, t0 + H).as_deref(), Some(&b"resumption secret"[..]));
        // Next period: still opens (the key is kept one period more), new tickets use the
        // next key, made ahead of time.
        b.refresh(&store, t0 + 12 * H).await.expect("refresh");
        assert!(b.open_at(&ticket, t0 + 12 * H).is_some());
        let newer = b.seal_at(b"x", t0 + 12 * H).expect("sealed");
        assert_ne!(newer[..4], ticket[..4]);
        // Two periods on: the first key is erased, from the store too.
        b.refresh(&store, t0 + 24 * H).await.expect("refresh");
        assert!(b.open_at(&ticket, t0 + 24 * H).is_none());
        let c = TicketKeys::new(TICKET_PERIOD);
        c.refresh(&store, t0 + 24 * H).await.expect("refresh");
        assert!(
            c.keys
                .read()
                .expect("lock")
                .iter()
                .all(|(p, _)| u64::from(*p) > t0 / (12 * H))
        );
        assert!(c.open_at(&newer, t0 + 24 * H).is_some());
        assert_eq!(b.accepted.load(Relaxed), 2);
        assert_eq!(b.refused.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn forged_truncated_or_foreign_tickets_are_refused() {
        let store = new_store().await;
        let t0 = 7 * 12 * H;
        let k = TicketKeys::new(TICKET_PERIOD);
        k.refresh(&store, t0).await.expect("refresh");
        let ticket = k.seal_at(b"secret", t0).expect("sealed");
        for n in 0..ticket.len() {
            assert!(k.open_at(&ticket[..n], t0).is_none(), "truncated to {n}");
        }
        let mut flipped = ticket.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(k.open_at(&flipped, t0).is_none(), "tag");
        // The period is authenticated: relabelled as the next period (whose key exists),
        // it does not open.
        let mut relabelled = ticket.clone();
        relabelled[..4].copy_from_slice(&(u32::from_be_bytes(ticket[..4].try_into().expect("4")) + 1).to_be_bytes());
        assert!(k.open_at(&relabelled, t0 + 12 * H).is_none(), "period");
        // Another cluster's (another database's) keys do not open ours.
        let other = TicketKeys::new(TICKET_PERIOD);
        other.refresh(&new_store().await, t0).await.expect("refresh");
        assert!(other.open_at(&ticket, t0).is_none());
        // With no key loaded nothing is sealed, and it is counted.
        let empty = TicketKeys::new(TICKET_PERIOD);
        assert!(empty.seal_at(b"x", t0).is_none());
        assert_eq!(empty.unsealed.load(Relaxed), 1);
        assert!(k.open_at(&ticket, t0).is_some());
    }

    #[tokio::test]
    async fn the_reset_key_is_the_same_after_a_restart() {
        let store = new_store().await;
        let a = Keys::load(&store).await.expect("keys");
        let b = Keys::load(&store).await.expect("keys");
        let (mut ta, mut tb) = ([0u8; 32], [0u8; 32]);
        a.reset.sign(b"connection id", &mut ta);
        b.reset.sign(b"connection id", &mut tb);
        assert_eq!(ta, tb);
        let other = Keys::load(&new_store().await).await.expect("keys");
        let mut tc = [0u8; 32];
        other.reset.sign(b"connection id", &mut tc);
        assert_ne!(ta, tc);
    }
}
