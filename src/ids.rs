//! Snowflake ids: 41 bits of milliseconds since 2026-01-01, 10 bits of node id, 12 bits of
//! sequence. Sortable by creation time, unique across nodes, and positive as `i64`
//! (the store keeps them as signed 64-bit integers). Sans-IO: time is a parameter.

/// 2026-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Generates ids for one node.
#[derive(Debug)]
pub struct Snowflakes {
    node: u64,
    last_ms: u64,
    seq: u64,
}

impl Snowflakes {
    /// A generator for node `node` (only its low 10 bits are used).
    pub fn new(node: u16) -> Self {
        Self {
            node: u64::from(node) & 0x3ff,
            last_ms: 0,
            seq: 0,
        }
    }

    /// Continues after `last_id` (the highest id already issued, e.g. the highest stored):
    /// every later id is greater, even if the clock is now behind the time in `last_id`
    /// (a restart with the clock set back). Returns how many ms the clock `now_ms` is behind
    /// `last_id`'s time (0 if not behind), for the log.
    pub fn resume_after(&mut self, last_id: u64, now_ms: u64) -> u64 {
        let last_ms = last_id >> 22;
        let behind = last_ms.saturating_sub(now_ms.saturating_sub(EPOCH_MS));
        if last_ms >= self.last_ms {
            self.last_ms = last_ms;
            // Next id takes the following millisecond's sequence 0: never `last_id` itself,
            // whatever node or sequence bits it carried.
            self.seq = 0xfff;
        }
        behind
    }

    /// The next id at wall-clock `now_ms`. Never repeats or goes backwards, even if the
    /// clock does: it keeps counting on the last millisecond it saw.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        let ms = now_ms.saturating_sub(EPOCH_MS).max(self.last_ms);
        if ms == self.last_ms {
            self.seq += 1;
            if self.seq > 0xfff {
                // 4096 ids in one millisecond: borrow the next millisecond.
                self.last_ms += 1;
                self.seq = 0;
            }
        } else {
            self.last_ms = ms;
            self.seq = 0;
        }
        ((self.last_ms & ((1 << 41) - 1)) << 22) | (self.node << 12) | self.seq
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_with_the_clock_behind_never_repeats_an_id() {
        let t = EPOCH_MS + 1_000_000;
        let mut before = Snowflakes::new(7);
        let issued: Vec<u64> = (0..5000).map(|i| before.next(t + i / 10)).collect();
        let last = *issued.iter().max().unwrap();
        // Same node, clock 10 s behind.
        let mut after = Snowflakes::new(7);
        assert_eq!(after.resume_after(last, t - 10_000 + 500), 10_000 - 500 + 499);
        let mut prev = last;
        for _ in 0..10_000 {
            let id = after.next(t - 10_000 + 500);
            assert!(id > prev, "{id} after {prev}");
            prev = id;
        }
        // Resuming after an older id than the generator's own changes nothing.
        let mut g = Snowflakes::new(1);
        let a = g.next(t);
        g.resume_after(a >> 1, t);
        assert!(g.next(t) > a);
    }

    #[test]
    fn increasing_unique_and_positive_even_with_clock_going_back() {
        let mut g = Snowflakes::new(5);
        let t = EPOCH_MS + 1_000;
        let mut last = 0;
        for i in 0..10_000u64 {
            // Time jumps back and stalls now and then.
            let now = if i % 100 == 50 { t - 500 } else { t + i / 3 };
            let id = g.next(now);
            assert!(id > last, "{id} after {last}");
            assert!((id as i64) > 0);
            assert_eq!((id >> 12) & 0x3ff, 5);
            last = id;
        }
    }
}
