//! The SFU's decisions for one voice channel, sans-IO: who is in it (slots), who may be
//! heard, which speakers are forwarded (top-N loudest with hysteresis, a fast path for a
//! new talkspurt), who is speaking, and per-participant stats (loss from seq gaps, RFC 3550
//! interarrival jitter). The channel task feeds it frames with `now` and does the sending.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quaver_proto::datagram::{FLAG_DTX, FLAG_TALKSPURT_START, Uplink};

/// Tuning of the speaker selection.
#[derive(Debug, Clone, Copy)]
pub struct SfuConfig {
    /// Most speakers forwarded at once.
    pub top_n: usize,
    /// A challenger must be this much louder (in −dBov steps ≈ dB) than the quietest
    /// selected speaker to replace it…
    pub switch_margin: f32,
    /// …who must have been selected at least this long (no flicker).
    pub hold: Duration,
    /// A selected speaker silent this long frees its place.
    pub release_after: Duration,
    /// Speaking stops after this long without voice frames.
    pub speaking_stop: Duration,
    /// Consecutive voice frames that start "speaking" (a talkspurt start flag counts at once).
    pub speaking_start_frames: u32,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            top_n: 3,
            switch_margin: 8.0,
            hold: Duration::from_millis(500),
            release_after: Duration::from_millis(300),
            speaking_stop: Duration::from_millis(300),
            speaking_start_frames: 2,
        }
    }
}

/// Why a frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The sender is not in this channel.
    NotParticipant,
    /// The sender is muted (self, server, or lacks the speak permission).
    Muted,
    /// Silence / comfort noise.
    Dtx,
    /// Not among the loudest speakers.
    NotSelected,
}

/// Per-participant counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Frames received from the participant.
    pub received: u64,
    /// Frame copies sent to listeners.
    pub forwarded: u64,
    /// Frames not forwarded.
    pub dropped: u64,
    /// Frames missing from the participant's seq sequence.
    pub lost: u64,
    /// Interarrival jitter, milliseconds (RFC 3550 estimator).
    pub jitter_ms: f64,
    last_seq: Option<u16>,
    last_transit: Option<f64>,
}

impl Stats {
    fn on_frame(&mut self, seq: u16, timestamp: u32, arrival: Duration) {
        self.received += 1;
        if let Some(last) = self.last_seq {
            let gap = seq.wrapping_sub(last);
            // Forward jumps below 1000 are losses; others are reordering or a restart.
            if gap > 1 && gap < 1000 {
                self.lost += u64::from(gap - 1);
            }
            if gap == 0 || gap >= 0x8000 {
                return; // duplicate or late: no new ordering or jitter information
            }
        }
        self.last_seq = Some(seq);
        // Transit in 48 kHz units: arrival (as a clock) minus the media timestamp.
        let transit = arrival.as_secs_f64() * 48_000.0 - f64::from(timestamp);
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).abs();
            let j = self.jitter_ms * 48.0;
            self.jitter_ms = (j + (d - j) / 16.0) / 48.0;
        }
        self.last_transit = Some(transit);
    }
}

/// One participant.
#[derive(Debug, Clone)]
pub struct Participant {
    /// The user.
    pub user: u64,
    /// Muted by themself.
    pub self_mute: bool,
    /// Deafened by themself (receives nothing).
    pub self_deaf: bool,
    /// Muted by a moderator.
    pub server_mute: bool,
    /// Deafened by a moderator.
    pub server_deaf: bool,
    /// Has the speak permission.
    pub can_speak: bool,
    /// Currently speaking.
    pub speaking: bool,
    /// Counters.
    pub stats: Stats,
    level: f32,
    last_voice: Option<Instant>,
    voice_run: u32,
    selected_at: Option<Instant>,
}

impl Participant {
    fn muted(&self) -> bool {
        self.self_mute || self.server_mute || !self.can_speak
    }
    /// Whether frames reach this participant.
    pub fn deaf(&self) -> bool {
        self.self_deaf || self.server_deaf
    }
}

/// A frame's fate: forwarded to `listeners`, or dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The speaker's slot (goes into the downlink header).
    pub slot: u16,
    /// Slots of the listeners to send it to.
    pub listeners: Vec<u16>,
}

/// A speaking change to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speaking {
    /// Slot.
    pub slot: u16,
    /// User.
    pub user: u64,
    /// Now speaking or not.
    pub speaking: bool,
}

/// One voice channel.
#[derive(Debug)]
pub struct Channel {
    cfg: SfuConfig,
    /// Reference instant for jitter arrival clocks.
    epoch: Instant,
    participants: BTreeMap<u16, Participant>,
    selected: Vec<u16>,
    next_slot: u16,
    /// Speaking changes produced by frames, drained by `poll`.
    pending: Vec<Speaking>,
}

impl Channel {
    /// An empty channel.
    pub fn new(cfg: SfuConfig, now: Instant) -> Self {
        Self {
            cfg,
            epoch: now,
            participants: BTreeMap::new(),
            selected: Vec::new(),
            next_slot: 1,
            pending: Vec::new(),
        }
    }

    /// Adds a participant; returns their slot (never reused while the channel lives,
    /// up to 65,535 joins, so a late frame cannot be attributed to someone else).
    pub fn join(&mut self, user: u64, self_mute: bool, self_deaf: bool, can_speak: bool) -> u16 {
        while self.participants.contains_key(&self.next_slot) || self.next_slot == 0 {
            self.next_slot = self.next_slot.wrapping_add(1);
        }
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        self.participants.insert(
            slot,
            Participant {
                user,
                self_mute,
                self_deaf,
                server_mute: false,
                server_deaf: false,
                can_speak,
                speaking: false,
                stats: Stats::default(),
                level: 0.0,
                last_voice: None,
                voice_run: 0,
                selected_at: None,
            },
        );
        slot
    }

    /// Removes a participant.
    pub fn leave(&mut self, slot: u16) -> Option<Participant> {
        self.selected.retain(|s| *s != slot);
        self.participants.remove(&slot)
    }

    /// A participant.
    pub fn get(&self, slot: u16) -> Option<&Participant> {
        self.participants.get(&slot)
    }

    /// A participant, to change their state.
    pub fn get_mut(&mut self, slot: u16) -> Option<&mut Participant> {
        self.participants.get_mut(&slot)
    }

    /// The slot of `user`.
    pub fn slot_of(&self, user: u64) -> Option<u16> {
        self.participants.iter().find(|(_, p)| p.user == user).map(|(s, _)| *s)
    }

    /// Everyone, by slot.
    pub fn participants(&self) -> impl Iterator<Item = (u16, &Participant)> {
        self.participants.iter().map(|(s, p)| (*s, p))
    }

    /// Whether one more participant fits under `user_limit` (0 = no limit). The channel's
    /// task checks it and joins in one step, so simultaneous joins cannot overfill it.
    pub fn has_room(&self, user_limit: u32) -> bool {
        user_limit == 0 || self.participants.len() < user_limit as usize
    }

    /// Number of participants.
    pub fn len(&self) -> usize {
        self.participants.len()
    }

    /// Whether nobody is in the channel.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// The speakers currently forwarded.
    pub fn selected(&self) -> &[u16] {
        &self.selected
    }

    /// Decides a frame from `slot`.
    pub fn on_frame(&mut self, slot: u16, h: &Uplink, now: Instant) -> Result<Forward, Dropped> {
        let cfg = self.cfg;
        let arrival = now.saturating_duration_since(self.epoch);
        let Some(p) = self.participants.get_mut(&slot) else {
            return Err(Dropped::NotParticipant);
        };
        p.stats.on_frame(h.seq, h.timestamp, arrival);
        if p.muted() {
            p.stats.dropped += 1;
            return Err(Dropped::Muted);
        }
        if h.flags & FLAG_DTX != 0 {
            p.stats.dropped += 1;
            p.voice_run = 0;
            return Err(Dropped::Dtx);
        }
        let voice = h.level.voice();
        let loudness = if voice {
            f32::from(127 - h.level.neg_dbov())
        } else {
            0.0
        };
        p.level = p.level * 0.8 + loudness * 0.2;
        let talkspurt = h.flags & FLAG_TALKSPURT_START != 0;
        if voice || talkspurt {
            p.last_voice = Some(now);
            p.voice_run += 1;
            if !p.speaking && (talkspurt || p.voice_run >= cfg.speaking_start_frames) {
                p.speaking = true;
                self.pending.push(Speaking {
                    slot,
                    user: p.user,
                    speaking: true,
                });
            }
        } else {
            p.voice_run = 0;
        }
        let active = voice || talkspurt;
        self.release_silent(now);
        if !self.selected.contains(&slot) {
            if !active {
                let p = self.participants.get_mut(&slot).expect("checked above");
                p.stats.dropped += 1;
                return Err(Dropped::NotSelected);
            }
            if self.selected.len() < cfg.top_n {
                // Fast path: a free place takes the first frame of a talkspurt at once.
                self.select(slot, now);
            } else {
                let level = self.participants[&slot].level;
                let weakest = self
                    .selected
                    .iter()
                    .copied()
                    .min_by(|a, b| self.participants[a].level.total_cmp(&self.participants[b].level));
                let replace = weakest.filter(|w| {
                    let wp = &self.participants[w];
                    level > wp.level + cfg.switch_margin
                        && wp
                            .selected_at
                            .is_some_and(|t| now.saturating_duration_since(t) >= cfg.hold)
                });
                match replace {
                    Some(w) => {
                        self.selected.retain(|s| *s != w);
                        self.select(slot, now);
                    }
                    None => {
                        let p = self.participants.get_mut(&slot).expect("checked above");
                        p.stats.dropped += 1;
                        return Err(Dropped::NotSelected);
                    }
                }
            }
        }
        let listeners: Vec<u16> = self
            .participants
            .iter()
            .filter(|(s, l)| **s != slot && !l.deaf())
            .map(|(s, _)| *s)
            .collect();
        let p = self.participants.get_mut(&slot).expect("checked above");
        p.stats.forwarded += listeners.len() as u64;
        Ok(Forward { slot, listeners })
    }

    fn select(&mut self, slot: u16, now: Instant) {
        self.selected.push(slot);
        if let Some(p) = self.participants.get_mut(&slot) {
            p.selected_at = Some(now);
        }
    }

    fn release_silent(&mut self, now: Instant) {
        let release = self.cfg.release_after;
        let participants = &self.participants;
        self.selected.retain(|s| {
            participants
                .get(s)
                .and_then(|p| p.last_voice)
                .is_some_and(|t| now.saturating_duration_since(t) < release)
        });
    }

    /// Speaking changes since the last call: starts seen in frames, and stops for those
    /// silent past `speaking_stop`. Call every ≤ 100 ms.
    pub fn poll(&mut self, now: Instant) -> Vec<Speaking> {
        let stop = self.cfg.speaking_stop;
        let mut out = std::mem::take(&mut self.pending);
        for (slot, p) in self.participants.iter_mut() {
            if p.speaking && p.last_voice.is_none_or(|t| now.saturating_duration_since(t) >= stop) {
                p.speaking = false;
                p.voice_run = 0;
                out.push(Speaking {
                    slot: *slot,
                    user: p.user,
                    speaking: false,
                });
            }
        }
        self.release_silent(now);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_proto::datagram::AudioLevel;

    const MS: Duration = Duration::from_millis(1);

    fn frame(seq: u16, neg_dbov: u8, voice: bool) -> Uplink {
        Uplink {
            flags: 0,
            level: AudioLevel::new(neg_dbov, voice),
            seq,
            timestamp: u32::from(seq) * 960,
        }
    }

    #[test]
    fn forwards_to_everyone_else_not_back_and_not_to_the_deaf() {
        let t0 = Instant::now();
        let mut c = Channel::new(SfuConfig::default(), t0);
        let a = c.join(1, false, false, true);
        let b = c.join(2, false, false, true);
        let d = c.join(3, false, true, true);
        let f = c.on_frame(a, &frame(1, 20, true), t0).unwrap();
        assert_eq!(
            f,
            Forward {
                slot: a,
                listeners: vec![b]
            }
        );
        assert_eq!(c.get(a).unwrap().stats.forwarded, 1);
        let _ = d;
    }

    #[test]
    fn muted_dtx_and_strangers_are_dropped() {
        let t0 = Instant::now();
        let mut c = Channel::new(SfuConfig::default(), t0);
        let a = c.join(1, true, false, true);
        let b = c.join(2, false, false, false);
        let e = c.join(3, false, false, true);
        assert_eq!(c.on_frame(a, &frame(1, 20, true), t0), Err(Dropped::Muted));
        assert_eq!(
            c.on_frame(b, &frame(1, 20, true), t0),
            Err(Dropped::Muted),
            "no speak permission"
        );
        let mut dtx = frame(1, 127, false);
        dtx.flags = FLAG_DTX;
        assert_eq!(c.on_frame(e, &dtx, t0), Err(Dropped::Dtx));
        assert_eq!(c.on_frame(99, &frame(1, 20, true), t0), Err(Dropped::NotParticipant));
        c.get_mut(e).unwrap().server_mute = true;
        assert_eq!(c.on_frame(e, &frame(2, 20, true), t0), Err(Dropped::Muted));
        assert_eq!(c.get(e).unwrap().stats.dropped, 2);
    }

    #[test]
    fn top_n_loudest_with_hysteresis_and_fast_path() {
        let t0 = Instant::now();
        let mut c = Channel::new(SfuConfig::default(), t0);
        let slots: Vec<u16> = (1..=6).map(|u| c.join(u, false, false, true)).collect();
        // Six speakers at levels: slot i has −dBov 10·i (slot 1 loudest).
        let mut forwarded = [0u32; 7];
        for k in 0..50u16 {
            let now = t0 + 20 * MS * u32::from(k);
            for (i, s) in slots.iter().enumerate() {
                if c.on_frame(*s, &frame(k, 10 * (i as u8 + 1), true), now).is_ok() {
                    forwarded[*s as usize] += 1;
                }
            }
            assert!(c.selected().len() <= 3);
        }
        // The first three to talk took the places (fast path); nobody louder enough pushed
        // them out within the hold… then the loud ones win: after the hold, slots 1-3 stay.
        let mut sel = c.selected().to_vec();
        sel.sort();
        assert_eq!(sel, vec![slots[0], slots[1], slots[2]]);
        assert_eq!(
            forwarded[slots[3] as usize] + forwarded[slots[4] as usize] + forwarded[slots[5] as usize],
            0
        );
        // A much louder newcomer replaces the quietest selected speaker after the hold, and
        // only once (no flicker back and forth).
        let t1 = t0 + 2000 * MS;
        let mut switched = 0;
        for k in 0..50u16 {
            let now = t1 + 20 * MS * u32::from(k);
            for s in &slots[..3] {
                let lvl = if *s == slots[2] { 60 } else { 10 };
                let _ = c.on_frame(*s, &frame(100 + k, lvl, true), now);
            }
            let before = c.selected().to_vec();
            let _ = c.on_frame(slots[5], &frame(100 + k, 0, true), now);
            if c.selected() != before.as_slice() {
                switched += 1;
            }
        }
        assert_eq!(switched, 1);
        assert!(c.selected().contains(&slots[5]) && !c.selected().contains(&slots[2]));
    }

    #[test]
    fn a_silent_speaker_frees_its_place_for_the_next_talkspurt_at_once() {
        let t0 = Instant::now();
        let mut c = Channel::new(
            SfuConfig {
                top_n: 1,
                ..Default::default()
            },
            t0,
        );
        let a = c.join(1, false, false, true);
        let b = c.join(2, false, false, true);
        assert!(c.on_frame(a, &frame(1, 30, true), t0).is_ok());
        assert_eq!(
            c.on_frame(b, &frame(1, 30, true), t0 + 20 * MS),
            Err(Dropped::NotSelected)
        );
        // a stops; 300 ms later b's first frame goes through, unclipped.
        let mut f = frame(2, 30, true);
        f.flags = FLAG_TALKSPURT_START;
        assert!(c.on_frame(b, &f, t0 + 400 * MS).is_ok());
    }

    #[test]
    fn speaking_starts_after_two_voice_frames_and_stops_after_silence() {
        let t0 = Instant::now();
        let mut c = Channel::new(SfuConfig::default(), t0);
        let a = c.join(1, false, false, true);
        c.join(2, false, false, true);
        let _ = c.on_frame(a, &frame(1, 30, true), t0);
        assert!(c.poll(t0).is_empty(), "one frame is not speech yet");
        let _ = c.on_frame(a, &frame(2, 30, true), t0 + 20 * MS);
        assert_eq!(
            c.poll(t0 + 20 * MS),
            vec![Speaking {
                slot: a,
                user: 1,
                speaking: true
            }]
        );
        assert!(c.poll(t0 + 300 * MS).is_empty());
        assert_eq!(
            c.poll(t0 + 320 * MS),
            vec![Speaking {
                slot: a,
                user: 1,
                speaking: false
            }]
        );
        assert!(c.poll(t0 + 1000 * MS).is_empty(), "announced once");
    }

    #[test]
    fn loss_and_jitter_from_seq_and_timestamps() {
        let t0 = Instant::now();
        let mut c = Channel::new(SfuConfig::default(), t0);
        let a = c.join(1, false, false, true);
        c.join(2, false, false, true);
        // Perfectly paced frames, with seqs 5 and 6 missing, across the u16 wrap.
        let mut t = 0u32;
        for seq in (65_530u16..=65_535).chain(0..10) {
            if seq == 5 || seq == 6 {
                t += 1;
                continue;
            }
            let h = Uplink {
                flags: 0,
                level: AudioLevel::new(30, true),
                seq,
                timestamp: t * 960,
            };
            let _ = c.on_frame(a, &h, t0 + 20 * MS * t);
            t += 1;
        }
        let st = &c.get(a).unwrap().stats;
        assert_eq!(st.lost, 2);
        assert!(st.jitter_ms < 0.5, "paced frames have ~no jitter: {}", st.jitter_ms);
        // Irregular arrival raises jitter.
        for k in 0..50u32 {
            let h = Uplink {
                flags: 0,
                level: AudioLevel::new(30, true),
                seq: 10 + k as u16,
                timestamp: (t + k) * 960,
            };
            let wobble = if k % 2 == 0 { 0 } else { 15 };
            let _ = c.on_frame(a, &h, t0 + 20 * MS * (t + k) + MS * wobble);
        }
        assert!(
            c.get(a).unwrap().stats.jitter_ms > 3.0,
            "{}",
            c.get(a).unwrap().stats.jitter_ms
        );
    }
}
