//! Process metrics as plain atomics, rendered in Prometheus text format at `/metrics`.
//! Relaxed atomics: each counter is independent and read only for reporting.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use quaver_proto::CloseCode;
use quaver_proto::session::Transport;

/// Index of a transport in per-transport arrays.
fn t(tr: Transport) -> usize {
    match tr {
        Transport::Quic => 0,
        Transport::WebTransport => 1,
        Transport::WebSocket => 2,
    }
}

/// Streams counted per kind: the five lanes, then control, then fetch.
pub const STREAM_KINDS: [&str; 7] = [
    "chat",
    "presence",
    "typing",
    "voice",
    "notifications",
    "control",
    "fetch",
];
/// Index of the control stream in per-stream arrays.
pub const CONTROL: usize = 5;
/// Index of fetch streams in per-stream arrays.
pub const FETCH: usize = 6;

/// Frame and byte counters in one direction for one stream kind.
#[derive(Debug, Default)]
pub struct Flow {
    /// Frames.
    pub frames: AtomicU64,
    /// Payload bytes.
    pub bytes: AtomicU64,
}

impl Flow {
    /// Counts one frame of `bytes`.
    pub fn add(&self, bytes: usize) {
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }
}

/// All server metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open sessions per transport.
    pub sessions: [AtomicI64; 3],
    /// Handshakes completed per transport (a WebSocket: its upgrade).
    pub handshakes: [AtomicU64; 3],
    /// Sessions that reached `Ready`, per transport.
    pub ready: [AtomicU64; 3],
    /// Handshake failures by reason (close-code index; last slot = transport-level failure).
    pub handshake_failures: [AtomicU64; 32],
    /// Sessions closed by the server, by close code index.
    pub closes: [AtomicU64; 32],
    /// Connections refused with a stateless retry (address validation).
    pub retries: AtomicU64,
    /// QUIC handshakes taken on (an Initial accepted), whether or not they complete: more
    /// than the connections made when clients give up on attempts and make new ones.
    pub handshakes_begun: AtomicU64,
    /// Connections refused at the door while the node set up its most at once
    /// (`max_handshakes`).
    pub shed: AtomicU64,
    /// Presence and typing events held for their connection's window (`quiet_window`)
    /// instead of leaving in a packet of their own.
    pub held: AtomicU64,
    /// Fetch replies reset because the client did not read them in time.
    pub fetch_timeouts: AtomicU64,
    /// Frames/bytes received per stream kind.
    pub rx: [Flow; 7],
    /// Frames/bytes sent per stream kind.
    pub tx: [Flow; 7],
}

/// Slot of a close code in the per-code arrays (unknown codes share the last slot).
fn code_slot(code: CloseCode) -> usize {
    CloseCode::ALL.iter().position(|c| *c == code).unwrap_or(31).min(31)
}

impl Metrics {
    /// A session opened.
    pub fn session_opened(&self, tr: Transport) {
        self.sessions[t(tr)].fetch_add(1, Relaxed);
        self.ready[t(tr)].fetch_add(1, Relaxed);
    }
    /// A session closed.
    pub fn session_closed(&self, tr: Transport) {
        self.sessions[t(tr)].fetch_sub(1, Relaxed);
    }
    /// A handshake started.
    pub fn handshake(&self, tr: Transport) {
        self.handshakes[t(tr)].fetch_add(1, Relaxed);
    }
    /// A handshake failed with `code`.
    pub fn handshake_failed(&self, code: CloseCode) {
        self.handshake_failures[code_slot(code)].fetch_add(1, Relaxed);
    }
    /// The server closed a session with `code`.
    pub fn closed_with(&self, code: CloseCode) {
        self.closes[code_slot(code)].fetch_add(1, Relaxed);
    }
    /// Open sessions over both transports.
    pub fn open_sessions(&self) -> i64 {
        self.sessions.iter().map(|a| a.load(Relaxed)).sum()
    }
    /// Handshake failures recorded with `code`.
    pub fn failures_with(&self, code: CloseCode) -> u64 {
        self.handshake_failures[code_slot(code)].load(Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut o = String::with_capacity(4096);
        let trs = [Transport::Quic, Transport::WebTransport, Transport::WebSocket];
        let _ = writeln!(o, "# HELP quaver_sessions Open sessions.\n# TYPE quaver_sessions gauge");
        for tr in trs {
            let _ = writeln!(
                o,
                "quaver_sessions{{transport=\"{}\"}} {}",
                tr.name(),
                self.sessions[t(tr)].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP quaver_handshakes_total Handshakes completed (QUIC, WebTransport) and WebSocket upgrades.\n# TYPE quaver_handshakes_total counter"
        );
        for tr in trs {
            let _ = writeln!(
                o,
                "quaver_handshakes_total{{transport=\"{}\"}} {}",
                tr.name(),
                self.handshakes[t(tr)].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP quaver_sessions_ready_total Sessions that reached Ready.\n# TYPE quaver_sessions_ready_total counter"
        );
        for tr in trs {
            let _ = writeln!(
                o,
                "quaver_sessions_ready_total{{transport=\"{}\"}} {}",
                tr.name(),
                self.ready[t(tr)].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP quaver_handshake_failures_total Handshakes refused, by reason.\n# TYPE quaver_handshake_failures_total counter"
        );
        for (i, c) in CloseCode::ALL.iter().enumerate() {
            let n = self.handshake_failures[i].load(Relaxed);
            if n > 0 {
                let _ = writeln!(o, "quaver_handshake_failures_total{{reason=\"{}\"}} {n}", c.name());
            }
        }
        let _ = writeln!(
            o,
            "quaver_handshake_failures_total{{reason=\"transport\"}} {}",
            self.handshake_failures[31].load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP quaver_session_closes_total Sessions closed by the server, by code.\n# TYPE quaver_session_closes_total counter"
        );
        for (i, c) in CloseCode::ALL.iter().enumerate() {
            let n = self.closes[i].load(Relaxed);
            if n > 0 {
                let _ = writeln!(o, "quaver_session_closes_total{{code=\"{}\"}} {n}", c.name());
            }
        }
        let _ = writeln!(
            o,
            "# HELP quaver_quic_handshakes_begun_total QUIC handshakes taken on (Initials accepted), completed or not.\n# TYPE quaver_quic_handshakes_begun_total counter"
        );
        let _ = writeln!(
            o,
            "quaver_quic_handshakes_begun_total {}",
            self.handshakes_begun.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP quaver_handshakes_shed_total Connections refused at the door: the node was setting up its most at once.\n# TYPE quaver_handshakes_shed_total counter\nquaver_handshakes_shed_total {}",
            self.shed.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP quaver_events_held_total Presence and typing events held for their connection's window to share a packet.\n# TYPE quaver_events_held_total counter\nquaver_events_held_total {}",
            self.held.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP quaver_address_validation_retries_total Stateless retries sent.\n# TYPE quaver_address_validation_retries_total counter"
        );
        let _ = writeln!(
            o,
            "quaver_address_validation_retries_total {}",
            self.retries.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP quaver_fetch_write_timeouts_total Fetch replies reset unread after the write deadline.\n# TYPE quaver_fetch_write_timeouts_total counter\nquaver_fetch_write_timeouts_total {}",
            self.fetch_timeouts.load(Relaxed)
        );
        for (dir, flows) in [("in", &self.rx), ("out", &self.tx)] {
            let _ = writeln!(
                o,
                "# HELP quaver_frames_{dir}_total Frames {dir}, by stream.\n# TYPE quaver_frames_{dir}_total counter"
            );
            for (k, f) in STREAM_KINDS.iter().zip(flows.iter()) {
                let _ = writeln!(
                    o,
                    "quaver_frames_{dir}_total{{stream=\"{k}\"}} {}",
                    f.frames.load(Relaxed)
                );
            }
            let _ = writeln!(
                o,
                "# HELP quaver_bytes_{dir}_total Payload bytes {dir}, by stream.\n# TYPE quaver_bytes_{dir}_total counter"
            );
            for (k, f) in STREAM_KINDS.iter().zip(flows.iter()) {
                let _ = writeln!(
                    o,
                    "quaver_bytes_{dir}_total{{stream=\"{k}\"}} {}",
                    f.bytes.load(Relaxed)
                );
            }
        }
        for (name, help, v) in extra {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        o
    }
}
