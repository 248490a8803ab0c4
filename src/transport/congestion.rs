//! The server's congestion controller: quinn's CUBIC, with a floor under its window.
//!
//! QUIC congestion control covers datagrams, so voice is subject to it; a voice listener's
//! flow is small and steady (three speakers at 50 frames/s) and application-limited, and an
//! application-limited window does not grow back after a loss. Across a link with loss or
//! reordering (which loss detection takes for loss), every congestion event cuts the window
//! until it sits at RFC 9002's two-packet minimum, below what the flow keeps in flight for
//! one round trip — from then on frames wait in the send queue for acknowledgements: measured
//! across 25 ms each way with 20 ms jitter, a listener's p99 rose from 91 to 114 ms once each
//! datagram also carried the previous frame (bench/RESULTS.md "Voice redundancy").
//!
//! So the window never falls below `floor` full-size packets (default 10: the initial window
//! RFC 9002 gives every connection, about 12 KB — 96 kbit/s at a 1 s round trip, 2 Mbit/s at
//! 50 ms). Above the floor CUBIC decides everything as before; a bulk transfer (a large
//! History fetch) still backs off on loss down to it. What the floor gives up is a small
//! flow's halving on loss — which for audio means frames arriving after they were due.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// Builds [`Floored`] CUBIC controllers.
#[derive(Debug)]
pub struct FloorFactory {
    /// Full-size packets the window never falls below.
    pub packets: u32,
}

impl ControllerFactory for FloorFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: Arc::new(CubicConfig::default()).build(now, current_mtu),
            packets: u64::from(self.packets),
            mtu: u64::from(current_mtu),
        })
    }
}

/// A controller whose window is never below `packets` × the path's MTU.
pub struct Floored {
    inner: Box<dyn Controller>,
    packets: u64,
    mtu: u64,
}

impl Floored {
    fn floor(&self) -> u64 {
        self.packets * self.mtu
    }
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        self.inner.on_congestion_event(now, sent, persistent, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.inner.clone_box(),
            packets: self.packets,
            mtu: self.mtu,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn losses_cut_the_window_down_to_the_floor_and_no_further() {
        let t0 = Instant::now();
        let mut c = Arc::new(FloorFactory { packets: 10 }).build(t0, 1200);
        let mut plain = Arc::new(CubicConfig::default()).build(t0, 1200);
        assert_eq!(c.window(), plain.window());
        for i in 1..20u64 {
            let at = t0 + Duration::from_millis(100 * i);
            let sent = at - Duration::from_millis(1);
            c.on_congestion_event(at, sent, false, 1200);
            plain.on_congestion_event(at, sent, false, 1200);
        }
        assert_eq!(plain.window(), 2 * 1200, "CUBIC alone ends at two packets");
        assert_eq!(c.window(), 10 * 1200);
        c.on_mtu_update(1400);
        assert_eq!(c.window(), 10 * 1400);
        assert_eq!(c.metrics().congestion_window, 10 * 1400);
        assert_eq!(c.clone_box().window(), 10 * 1400);
    }
}
