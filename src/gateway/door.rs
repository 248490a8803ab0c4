//! The node's door: how many connections are on their way to `Ready` at once, over every
//! framing (PROTOCOL.md §1, "Refused at the door").
//!
//! `max_handshakes` bounds the connections a node has between their first packet and
//! `Ready`: QUIC and WebTransport handshakes in flight (the engine's count,
//! `Ctx::handshakes_in_flight`), QUIC sessions past their handshake and not yet `Ready` (the
//! loops' counts, summed here), and WebSocket connections past their upgrade and not yet
//! `Ready` (counted here). A reconnect storm through the WebSocket framing — a network that
//! drops UDP, after the node's restart — costs the node the same set-up work (a `Hello`, a
//! token, a session built from the store) as one over QUIC, so it is shed the same way:
//! - a QUIC loop refuses a new connection in its first packet when its own handshakes and
//!   set-ups, plus its share of the WebSocket ones, reach its share of the limit
//!   (`engine::Limits::shed_above`, [`Door::ws_share`]);
//! - a WebSocket upgrade past the node's limit is answered, and closed at once with
//!   `overloaded` (3001) before any session is made ([`Door::enter_ws`]): a browser reads
//!   the code of a close, never the status of a refused upgrade, and it must know to wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::Ctx;

/// Connections on their way to `Ready`, by framing, node-wide.
#[derive(Debug, Default)]
pub struct Door {
    /// QUIC and WebTransport sessions past the handshake and not yet `Ready` (each loop
    /// adds its own changes).
    quic: AtomicUsize,
    /// WebSocket connections past the upgrade and not yet `Ready`.
    ws: AtomicUsize,
}

impl Door {
    /// A loop's session began setting up.
    pub fn quic_entered(&self) {
        self.quic.fetch_add(1, Relaxed);
    }

    /// A loop's session is `Ready`, closing or gone.
    pub fn quic_left(&self) {
        self.quic.fetch_sub(1, Relaxed);
    }

    /// Sessions setting up now, both framings (`/metrics`: `quaver_sessions_setting_up`).
    pub fn setting_up(&self) -> usize {
        self.quic.load(Relaxed) + self.ws.load(Relaxed)
    }

    /// One loop's share of the WebSocket set-ups, rounded up: what a loop of `loops` counts
    /// beside its own handshakes and set-ups against its share of the limit.
    pub fn ws_share(&self, loops: usize) -> usize {
        self.ws.load(Relaxed).div_ceil(loops.max(1))
    }

    /// A place for a WebSocket connection at its upgrade, or `None` when the node already
    /// sets up its most at once (`max_handshakes`; 0 = no limit). The place is given back
    /// when it is dropped: at `Ready`, at the connection's end, or with an upgrade that
    /// never completed.
    pub fn enter_ws(ctx: &Arc<Ctx>) -> Option<WsPlace> {
        let door = &ctx.door;
        let max = ctx.cfg.session.max_handshakes;
        let busy = ctx.handshakes_in_flight.load(Relaxed) + door.setting_up();
        if max != 0 && busy >= max {
            return None;
        }
        door.ws.fetch_add(1, Relaxed);
        Some(WsPlace(ctx.clone()))
    }
}

/// A WebSocket connection's place among those setting up (see [`Door::enter_ws`]).
#[derive(Debug)]
pub struct WsPlace(Arc<Ctx>);

impl Drop for WsPlace {
    fn drop(&mut self) {
        self.0.door.ws.fetch_sub(1, Relaxed);
    }
}
