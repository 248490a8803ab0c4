//! WebRTC participants for Quaver's voice channels (issue 14), without I/O: a [`Peer`] is
//! one browser's (or any WebRTC stack's) connection to the server — ICE-lite, DTLS-SRTP,
//! Opus RTP with the RFC 6464 audio-level extension — turned into the SFU's own terms.
//! Its uplink (the peer's microphone) comes out as [`Frame`]s carrying what the datagram
//! uplink header carries (level, voice activity, sequence number, media timestamp, the
//! start of a talkspurt) and the Opus payload untouched; the SFU's downlink goes in as
//! frames for a forwarding slot, each slot one outgoing audio track of the peer's offer.
//! No transcoding.
//!
//! Time is a parameter and datagrams go in and out as values, as in `quaver::engine`; the
//! server decides which socket carries them. Built on `str0m` (sans-IO, one `Rtc` per peer).
//!
//! The offer a peer makes: its first audio section it sends on (`sendrecv` or `sendonly`)
//! is its microphone; every audio section it receives on (`recvonly`, or that same
//! `sendrecv` one) is a forwarding slot, in the order of the offer.

use std::net::SocketAddr;
use std::time::Instant;

mod client;
pub use client::{Client, ClientOutput, Options};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaData, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc};

/// Opus at 48 kHz: one 20 ms frame advances the media clock by this much.
pub const SAMPLES_PER_FRAME: u32 = 960;

/// A peer whose media is not flowing (ICE and DTLS up) this long after its answer is
/// closed: the same 15 s a connected peer is given once its consent checks stop, so a peer
/// that never starts holds no place in a channel for longer than one that stops.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How often the peer's counters are brought up to date from RTCP.
pub const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Packets of a participant's microphone held behind a missing one before the peer gives up
/// on it and forwards what followed. str0m's default, 15, held a speaker's voice 300 ms
/// behind two packets lost in a row (one RED cannot give back) — late for every listener,
/// whose own jitter buffers (60 ms in the web app) then drop it. 3 packets (60 ms) still
/// waits out the reordering a jittery path brings (a packet overtaken by one or two).
pub const UPLINK_HOLD_BACK: usize = 3;

/// What a peer's RTCP says about its media, brought up to date every [`STATS_INTERVAL`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Packets received on the microphone's track.
    pub uplink_packets: u64,
    /// RTP packets sent on the forwarding tracks.
    pub downlink_packets: u64,
    /// Of those, lost on the way as the peer's receiver reports say (summed over tracks).
    pub downlink_lost: u64,
    /// The largest interarrival jitter a receiver report gave, µs.
    pub downlink_jitter_us: u32,
    /// Round-trip time from the latest receiver report.
    pub rtt: Option<std::time::Duration>,
    /// Receiver reports taken into account (0: the peer has reported nothing yet).
    pub reports: u64,
    /// RTP packets refused before the stack saw them: not the microphone's payload type or
    /// not one of the SSRCs its offer announced ([`Peer::receive_at`]).
    pub uplink_refused: u64,
}

/// What went wrong. The messages are for people (they reach the client as the refusal's
/// text): short, one line, nothing of the process; [`Error::detail`] is for the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The offer is not an SDP offer this side can answer (the parser's words in it).
    #[error(
        "the SDP offer could not be read: it must be a complete offer (ICE credentials, a DTLS fingerprint, an audio section)"
    )]
    Sdp(String),
    /// The offer has no audio section the peer sends on.
    #[error("the offer has no audio the peer sends")]
    NoUplink,
    /// The offer negotiates no Opus.
    #[error("the offer has no Opus")]
    NoOpus,
    /// The WebRTC stack refused (the peer is unusable from now on).
    #[error("the WebRTC offer was refused")]
    Rtc(String),
}

impl Error {
    /// What the library said, on one line, for the log (never for the client: it can name
    /// memory addresses).
    pub fn detail(&self) -> String {
        match self {
            Error::Sdp(d) | Error::Rtc(d) => d.split_whitespace().collect::<Vec<_>>().join(" "),
            other => other.to_string(),
        }
    }
}

impl From<str0m::RtcError> for Error {
    fn from(e: str0m::RtcError) -> Self {
        Error::Rtc(e.to_string())
    }
}

/// One voice frame in the SFU's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Audio level, −dBov (0 loudest, 127 silence), as RFC 6464 and the datagram header.
    pub level: u8,
    /// The sender's voice-activity flag.
    pub voice: bool,
    /// RTP sequence number (low 16 bits).
    pub seq: u16,
    /// Media timestamp, 48 kHz.
    pub timestamp: u32,
    /// First frame after a silence.
    pub talkspurt: bool,
    /// The Opus payload.
    pub payload: Vec<u8>,
}

/// What a peer has for the caller after an input.
#[derive(Debug)]
pub enum Output {
    /// Send `data` from the local address to `to`.
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A frame from the peer's microphone.
    Frame(Frame),
    /// ICE and DTLS are up: media flows from now on.
    Connected,
    /// The peer is gone (ICE disconnected or the stack failed): drop it.
    Closed,
    /// Nothing more until this instant (or the next datagram).
    Wait(Instant),
}

/// One outgoing track: where its timestamps stand.
#[derive(Debug)]
struct Slot {
    mid: Mid,
    /// The source the slot carried last, and the offset that maps its timestamps onto the
    /// track's (a track's media clock must not jump when its speaker changes).
    source: Option<(u64, u32)>,
    /// The last timestamp written on the track.
    last: Option<u32>,
}

/// One WebRTC participant.
pub struct Peer {
    rtc: Rtc,
    local: SocketAddr,
    uplink: Mid,
    slots: Vec<Slot>,
    pt: Pt,
    /// The RED payload type wrapping the microphone's Opus, when the offer negotiated it.
    red: Option<Pt>,
    /// The SSRCs the offer announced for the microphone's section (`a=ssrc:`); empty when
    /// it named none (then any SSRC is let through).
    uplink_ssrcs: Vec<u32>,
    connected: bool,
    /// Until media flows: when the peer is given up on ([`START_TIMEOUT`] after its answer).
    start_by: Option<Instant>,
    closed: bool,
    stats: Stats,
    /// Per forwarding track: packets sent and lost, the latest values reported.
    per_track: Vec<(Mid, u64, u64)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("local", &self.local)
            .field("slots", &self.slots.len())
            .field("connected", &self.connected)
            .finish()
    }
}

impl Peer {
    /// Answers `offer` as an ICE-lite peer reachable at `local` (the UDP address the server
    /// announces as its one host candidate); returns the peer and the answer's SDP.
    pub fn answer(offer: &str, local: SocketAddr, now: Instant) -> Result<(Peer, String), Error> {
        Self::answer_on(offer, &[local], now)
    }

    /// The same with a host candidate for each of `candidates` (a server listening on every
    /// interface announces each address it can be reached at: browsers such as Firefox
    /// offer no loopback candidate, so a loopback address alone would not do). The first is
    /// the default destination of [`Peer::receive`].
    pub fn answer_on(offer: &str, candidates: &[SocketAddr], now: Instant) -> Result<(Peer, String), Error> {
        let local = *candidates
            .first()
            .ok_or_else(|| Error::Rtc("no address to announce".into()))?;
        let offer_text = offer;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| Error::Sdp(e.to_string()))?;
        // Opus with RFC 2198 RED where the offer has it (browsers offer `red/48000/2`): each
        // packet to the peer then carries the previous frame again, and str0m recovers a
        // lost packet of the peer's from the next one's copy — the WebRTC side of
        // PROTOCOL.md §8's redundancy.
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_stats_interval(Some(STATS_INTERVAL))
            .enable_opus(true, true)
            .set_reordering_size_audio(UPLINK_HOLD_BACK)
            .build(now);
        for addr in candidates {
            let candidate = Candidate::host(*addr, "udp").map_err(|e| Error::Rtc(e.to_string()))?;
            rtc.add_local_candidate(candidate);
        }
        let answer = rtc.sdp_api().accept_offer(offer)?;
        let answer = answer.to_sdp_string();
        // The offer's sections as this side answered them (str0m reports them as events
        // only once media flows; the answer says it now). A section str0m rejected (no codec
        // in common: port 0 in the answer) counts for nothing.
        let opus_of = |rtc: &Rtc, mid: Mid| -> Option<Pt> {
            let media = rtc.media(mid).filter(|m| !m.disabled())?;
            rtc.codec_config()
                .find(|p| p.spec().codec == Codec::Opus && media.remote_pts().contains(&p.pt()))
                .map(|p| p.pt())
        };
        let mut uplink = None;
        let mut slots = Vec::new();
        let mut pt = None;
        let mut audio_sent = false;
        for (kind, mid, direction) in sections(&answer) {
            if kind != "audio" {
                continue;
            }
            let receives = matches!(direction, Direction::RecvOnly | Direction::SendRecv);
            audio_sent |= receives;
            let Some(opus) = opus_of(&rtc, mid) else { continue };
            pt.get_or_insert(opus);
            if uplink.is_none() && receives {
                uplink = Some(mid);
            }
            if matches!(direction, Direction::SendOnly | Direction::SendRecv) {
                slots.push(Slot {
                    mid,
                    source: None,
                    last: None,
                });
            }
        }
        // Opus is required of the microphone (PROTOCOL.md): an offer whose sending audio
        // has no Opus is refused, not answered with every section rejected.
        let uplink = match uplink {
            Some(u) => u,
            None if audio_sent => return Err(Error::NoOpus),
            None => return Err(Error::NoUplink),
        };
        let pt = pt.ok_or(Error::NoOpus)?;
        // (str0m answers RED where offered but does not list it among the section's remote
        // payload types: the offer says which number the peer's RED packets carry.)
        let red = offered_red(offer_text, &uplink).map(Pt::from);
        let uplink_ssrcs = offered_ssrcs(offer_text, &uplink);
        Ok((
            Peer {
                rtc,
                local,
                uplink,
                slots,
                pt,
                red,
                uplink_ssrcs,
                connected: false,
                start_by: Some(now + START_TIMEOUT),
                closed: false,
                stats: Stats::default(),
                per_track: Vec::new(),
            },
            answer,
        ))
    }

    /// Forwarding slots (outgoing tracks) the peer's offer asked for.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The media id (SDP `a=mid`) of forwarding slot `slot`'s track.
    pub fn mid(&self, slot: usize) -> Option<String> {
        self.slots.get(slot).map(|s| s.mid.to_string())
    }

    /// Whether media flows.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The peer's media counters (from RTCP: its receiver reports for what we send).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn egress(&mut self, e: &str0m::stats::MediaEgressStats) {
        let lost = e.remote.as_ref().map_or(0, |r| r.packets_lost);
        match self.per_track.iter_mut().find(|t| t.0 == e.mid) {
            Some(t) => (t.1, t.2) = (e.packets, lost),
            None => self.per_track.push((e.mid, e.packets, lost)),
        }
        self.stats.downlink_packets = self.per_track.iter().map(|t| t.1).sum();
        self.stats.downlink_lost = self.per_track.iter().map(|t| t.2).sum();
        if let Some(r) = &e.remote {
            self.stats.reports += 1;
            // RTP timestamp units at 48 kHz → µs.
            let us = (u64::from(r.jitter) * 1_000_000 / 48_000).min(u64::from(u32::MAX)) as u32;
            self.stats.downlink_jitter_us = self.stats.downlink_jitter_us.max(us);
        }
        if e.rtt.is_some() {
            self.stats.rtt = e.rtt;
        }
    }

    /// Whether `data` from `from` belongs to this peer (its ICE credentials or its
    /// DTLS/SRTP path): the way to find a datagram's peer on a shared socket.
    pub fn accepts(&self, from: SocketAddr, data: &[u8]) -> bool {
        self.accepts_at(from, self.local, data)
    }

    /// [`Peer::accepts`] for a datagram that arrived at local address `to`.
    pub fn accepts_at(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) -> bool {
        received(Instant::now(), from, to, data).is_some_and(|i| self.rtc.accepts(&i))
    }

    /// A datagram from `from`, at `now`. Input that is not WebRTC is ignored; what the
    /// stack refuses ends the peer ([`Output::Closed`] follows).
    pub fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.receive_at(now, from, self.local, data);
    }

    /// [`Peer::receive`] for a datagram that arrived at local address `to` (one of the
    /// candidates announced).
    ///
    /// An RTP packet that cannot be the microphone's — another payload type than its Opus
    /// (or the RED wrapping it),
    /// or an SSRC its offer did not announce — is refused here, before str0m sees it: str0m
    /// 0.25 maps and sequences an RTP packet before SRTP authenticates it, so a corrupted or
    /// spoofed copy of the peer's own packet with a flipped SSRC or payload type could leave
    /// its microphone read as a repair stream (≈ 2 % of runs of 2,000 bit-flipped copies,
    /// before this check). Counted in [`Stats::uplink_refused`].
    pub fn receive_at(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        if let Some((pt, ssrc)) = rtp_header(data)
            && ((pt != *self.pt && Some(pt) != self.red.map(|r| *r))
                || (!self.uplink_ssrcs.is_empty() && !self.uplink_ssrcs.contains(&ssrc)))
        {
            self.stats.uplink_refused += 1;
            return;
        }
        let Some(input) = received(now, from, to, data) else {
            return;
        };
        if self.rtc.handle_input(input).is_err() {
            self.close();
        }
    }

    /// Time has come to `now` (call at the instant of [`Output::Wait`]).
    pub fn timeout(&mut self, now: Instant) {
        if self.start_by.is_some_and(|t| t <= now) {
            self.close();
            return;
        }
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.close();
        }
    }

    /// Ends the peer.
    pub fn close(&mut self) {
        self.rtc.disconnect();
        self.closed = true;
    }

    /// The next thing for the caller; call until [`Output::Wait`] (or [`Output::Closed`]).
    pub fn poll(&mut self) -> Output {
        loop {
            if self.closed || !self.rtc.is_alive() {
                self.closed = true;
                return Output::Closed;
            }
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    self.close();
                    return Output::Closed;
                }
            };
            match out {
                str0m::Output::Timeout(t) => return Output::Wait(self.start_by.map_or(t, |s| s.min(t))),
                str0m::Output::Transmit(t) => {
                    return Output::Transmit {
                        to: t.destination,
                        data: t.contents.to_vec(),
                    };
                }
                str0m::Output::Event(Event::Connected) => {
                    self.connected = true;
                    self.start_by = None;
                    return Output::Connected;
                }
                str0m::Output::Event(Event::IceConnectionStateChange(IceConnectionState::Disconnected)) => {
                    self.close();
                    return Output::Closed;
                }
                str0m::Output::Event(Event::MediaEgressStats(e)) => self.egress(&e),
                str0m::Output::Event(Event::MediaIngressStats(i)) if i.mid == self.uplink => {
                    self.stats.uplink_packets = i.packets;
                }
                str0m::Output::Event(Event::MediaData(m)) if m.mid == self.uplink => {
                    return Output::Frame(frame_of(&m));
                }
                str0m::Output::Event(_) => {}
            }
        }
    }

    /// Sends `frame` from `source` (the speaker it came from, e.g. a user id) on forwarding
    /// slot `slot`. Timestamps stay continuous on the track: when the slot's source changes,
    /// the new source's clock is mapped to follow the track's last timestamp by one frame.
    /// False if the slot does not exist or media does not flow yet.
    pub fn send(&mut self, slot: usize, source: u64, frame: Frame, now: Instant) -> bool {
        if !self.connected || self.closed {
            return false;
        }
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        let offset = match s.source {
            Some((src, off)) if src == source => off,
            _ => {
                let next = s.last.map_or(frame.timestamp, |l| l.wrapping_add(SAMPLES_PER_FRAME));
                let off = next.wrapping_sub(frame.timestamp);
                s.source = Some((source, off));
                off
            }
        };
        let ts = frame.timestamp.wrapping_add(offset);
        s.last = Some(ts);
        let Some(w) = self.rtc.writer(s.mid) else { return false };
        let level = -(i8::try_from(frame.level.min(127)).unwrap_or(127));
        w.audio_level(level, frame.voice)
            .start_of_talkspurt(frame.talkspurt)
            .write(
                self.pt,
                now,
                MediaTime::new(u64::from(ts), Frequency::FORTY_EIGHT_KHZ),
                frame.payload,
            )
            .is_ok()
    }
}

/// The payload type and SSRC of an RTP packet (RFC 7983: first byte 128–191; RFC 5761: a
/// second byte whose low 7 bits are 64–95 is RTCP, not RTP); `None` for anything else.
fn rtp_header(data: &[u8]) -> Option<(u8, u32)> {
    let (first, second) = (*data.first()?, *data.get(1)?);
    if !(128..=191).contains(&first) || (64..=95).contains(&(second & 0x7f)) {
        return None;
    }
    let ssrc = data.get(8..12)?;
    Some((second & 0x7f, u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]])))
}

/// The SSRCs `sdp` announces (`a=ssrc:<n> …`) in the media section with `mid`.
fn offered_ssrcs(sdp: &str, mid: &Mid) -> Vec<u32> {
    let mut ssrcs = Vec::new();
    for line in section(sdp, mid) {
        if let Some(rest) = line.strip_prefix("a=ssrc:")
            && let Some(Ok(n)) = rest.split(' ').next().map(str::parse::<u32>)
            && !ssrcs.contains(&n)
        {
            ssrcs.push(n);
        }
    }
    ssrcs
}

/// The payload type the offer gives RFC 2198 RED (`a=rtpmap:<pt> red/48000/2`) in the
/// section `mid`, if any: what the peer's RED packets carry.
fn offered_red(sdp: &str, mid: &Mid) -> Option<u8> {
    section(sdp, mid).into_iter().find_map(|line| {
        let (pt, codec) = line.strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec
            .to_ascii_lowercase()
            .starts_with("red/48000")
            .then(|| pt.parse().ok())?
    })
}

/// The lines of the media section whose `a=mid` is `mid` (every such section's, should the
/// SDP name it twice).
fn section<'a>(sdp: &'a str, mid: &Mid) -> Vec<&'a str> {
    let (mut current, mut found) = (Vec::new(), Vec::new());
    let mut in_mid = false;
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if in_mid {
                found.append(&mut current);
            }
            current.clear();
            in_mid = false;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            in_mid = m == &**mid;
        }
        current.push(line);
    }
    if in_mid {
        found.append(&mut current);
    }
    found
}

/// A UDP datagram from `from` to `to` as str0m's input; `None` if it is nothing str0m reads
/// (not STUN, DTLS, RTP or RTCP).
fn received(now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) -> Option<Input<'_>> {
    Some(Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: from,
            destination: to,
            contents: data.try_into().ok()?,
        },
    ))
}

/// A received packet in the SFU's terms (no level extension: silence, 127).
fn frame_of(m: &MediaData) -> Frame {
    Frame {
        level: m.ext_vals.audio_level.map_or(127, |l| l.unsigned_abs().min(127)),
        voice: m.ext_vals.voice_activity.unwrap_or(false),
        seq: **m.seq_range.start() as u16,
        timestamp: m.time.numer() as u32,
        talkspurt: m.audio_start_of_talk_spurt,
        payload: m.data.to_vec(),
    }
}

/// The media sections of `sdp`: kind (`audio`, `video`, `application`), mid, direction (a
/// section without a direction attribute is `sendrecv`, RFC 8866 §6.7).
fn sections(sdp: &str) -> Vec<(String, Mid, Direction)> {
    let mut out: Vec<(String, Option<Mid>, Direction)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let kind = m.split(' ').next().unwrap_or_default().to_string();
            out.push((kind, None, Direction::SendRecv));
        } else if let Some(last) = out.last_mut() {
            match line {
                "a=sendrecv" => last.2 = Direction::SendRecv,
                "a=sendonly" => last.2 = Direction::SendOnly,
                "a=recvonly" => last.2 = Direction::RecvOnly,
                "a=inactive" => last.2 = Direction::Inactive,
                _ => {
                    if let Some(mid) = line.strip_prefix("a=mid:") {
                        last.1 = Some(Mid::from(mid));
                    }
                }
            }
        }
    }
    out.into_iter().filter_map(|(k, m, d)| Some((k, m?, d))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_is_told_from_rtcp_and_the_rest() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0x80 | 111; // marker, Opus
        rtp[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(rtp_header(&rtp), Some((111, 0xdead_beef)));
        let mut rtcp = rtp;
        rtcp[1] = 200; // sender report
        assert_eq!(rtp_header(&rtcp), None);
        assert_eq!(rtp_header(&[0x16, 0xfe, 0xfd]), None, "DTLS");
        assert_eq!(rtp_header(&[0, 1, 0, 0]), None, "STUN");
        assert_eq!(rtp_header(&rtp[..11]), None, "short");
    }

    #[test]
    fn the_offered_ssrcs_are_those_of_the_section_asked_for() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ssrc:11 cname:x\r\na=ssrc:11 msid:a b\r\n\
                   a=ssrc:12 cname:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ssrc:21 cname:y\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\n";
        assert_eq!(offered_ssrcs(sdp, &Mid::from("0")), vec![11, 12]);
        assert_eq!(offered_ssrcs(sdp, &Mid::from("1")), vec![21]);
        assert!(
            offered_ssrcs(sdp, &Mid::from("2")).is_empty(),
            "none announced: any let through"
        );
        assert!(offered_ssrcs(sdp, &Mid::from("9")).is_empty());
    }

    #[test]
    fn the_offered_red_is_that_of_the_section_asked_for() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
                   a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
                   a=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(offered_red(sdp, &Mid::from("0")), Some(63));
        assert_eq!(offered_red(sdp, &Mid::from("1")), None);
    }
}
