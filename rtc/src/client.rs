//! The other side of a [`Peer`](crate::Peer), for tests and load generators: a WebRTC
//! client as a browser is — full ICE, an offer with one microphone (`sendonly`) and `tracks`
//! receiving audio sections — without I/O, in the same terms as the bridge ([`Frame`]s in
//! and out, datagrams as values, time a parameter).

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::{Candidate, Event, Input, Rtc};

use crate::{Error, Frame, frame_of, received};

/// What a client has for the caller.
#[derive(Debug)]
pub enum ClientOutput {
    /// Send `data` from the client's address to `to`.
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A frame received on receiving track `mid` (its level: the packet's RFC 6464
    /// extension, 127 without one).
    Heard {
        /// The track's media id.
        mid: String,
        /// The frame.
        frame: Frame,
    },
    /// ICE and DTLS are up.
    Connected,
    /// The connection is gone.
    Closed,
    /// Nothing more until this instant (or the next datagram).
    Wait(Instant),
}

/// How a [`Client`] offers and receives.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Offer RFC 2198 RED for Opus (browsers do). Default true.
    pub red: bool,
    /// Packets a receiving track holds back behind a gap before it gives up on the missing
    /// one (str0m's audio reordering size; default 15, str0m's own). 0 gives every packet
    /// as it comes, in or out of order — what a browser's jitter buffer is handed: a load
    /// generator that times arrivals wants that, not frames held behind a gap it cannot fill.
    pub hold_back: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            red: true,
            hold_back: 15,
        }
    }
}

/// A browser-like WebRTC client.
pub struct Client {
    rtc: Rtc,
    local: SocketAddr,
    mic: Mid,
    pending: Option<SdpPendingOffer>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("local", &self.local).finish()
    }
}

impl Client {
    /// A client at `local` (its one host candidate) and its SDP offer: a microphone and
    /// `tracks` receiving tracks.
    pub fn offer(local: SocketAddr, tracks: usize, now: Instant) -> Result<(Client, String), Error> {
        Self::offer_with(local, tracks, now, true)
    }

    /// [`Client::offer`], offering RFC 2198 RED for Opus (as browsers do) or not.
    pub fn offer_with(local: SocketAddr, tracks: usize, now: Instant, red: bool) -> Result<(Client, String), Error> {
        Self::offer_opts(
            local,
            tracks,
            now,
            Options {
                red,
                ..Options::default()
            },
        )
    }

    /// [`Client::offer`] with every option.
    pub fn offer_opts(
        local: SocketAddr,
        tracks: usize,
        now: Instant,
        opts: Options,
    ) -> Result<(Client, String), Error> {
        let mut rtc = Rtc::builder()
            .enable_opus(true, opts.red)
            .set_reordering_size_audio(opts.hold_back)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| Error::Rtc(e.to_string()))?);
        let mut change = rtc.sdp_api();
        let mic = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        for _ in 0..tracks {
            change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = change.apply().ok_or_else(|| Error::Rtc("nothing to offer".into()))?;
        let sdp = offer.to_sdp_string();
        Ok((
            Client {
                rtc,
                local,
                mic,
                pending: Some(pending),
            },
            sdp,
        ))
    }

    /// The server's answer to the offer.
    pub fn accept(&mut self, answer: &str) -> Result<(), Error> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| Error::Rtc("answer already taken".into()))?;
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| Error::Sdp(e.to_string()))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// A datagram from `from` at `now`; false if the stack refused it (the client is gone).
    pub fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let Some(input) = received(now, from, self.local, data) else {
            return true;
        };
        self.rtc.handle_input(input).is_ok()
    }

    /// Time has come to `now`; false if the client is gone.
    pub fn timeout(&mut self, now: Instant) -> bool {
        self.rtc.handle_input(Input::Timeout(now)).is_ok()
    }

    /// The next thing for the caller; call until [`ClientOutput::Wait`].
    pub fn poll(&mut self) -> ClientOutput {
        loop {
            if !self.rtc.is_alive() {
                return ClientOutput::Closed;
            }
            match self.rtc.poll_output() {
                Err(_) => return ClientOutput::Closed,
                Ok(str0m::Output::Timeout(t)) => return ClientOutput::Wait(t),
                Ok(str0m::Output::Transmit(t)) => {
                    return ClientOutput::Transmit {
                        to: t.destination,
                        data: t.contents.to_vec(),
                    };
                }
                Ok(str0m::Output::Event(Event::Connected)) => return ClientOutput::Connected,
                Ok(str0m::Output::Event(Event::MediaData(m))) => {
                    return ClientOutput::Heard {
                        mid: m.mid.to_string(),
                        frame: frame_of(&m),
                    };
                }
                Ok(str0m::Output::Event(_)) => {}
            }
        }
    }

    /// Speaks `frame` on the microphone at `now` (its level as the RFC 6464 extension, its
    /// timestamp on the 48 kHz clock); false before media flows.
    pub fn speak(&mut self, frame: &Frame, now: Instant) -> bool {
        let Some(pt) = self
            .rtc
            .codec_config()
            .find(|c| c.spec().codec == Codec::Opus)
            .map(|c| c.pt())
        else {
            return false;
        };
        let Some(w) = self.rtc.writer(self.mic) else {
            return false;
        };
        let level = -(i8::try_from(frame.level.min(127)).unwrap_or(127));
        w.audio_level(level, frame.voice)
            .start_of_talkspurt(frame.talkspurt)
            .write(
                pt,
                now,
                MediaTime::new(u64::from(frame.timestamp), Frequency::FORTY_EIGHT_KHZ),
                frame.payload.clone(),
            )
            .is_ok()
    }
}
