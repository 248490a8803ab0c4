//! The WebSocket framing (PROTOCOL.md §11): one TCP connection carries what a QUIC
//! connection carries — the control stream, every lane, fetch streams and voice datagrams —
//! as binary WebSocket messages, each one [`Frame`]: a QUIC varint stream id, a kind byte,
//! then the kind's payload.
//!
//! Streams keep QUIC's shape so that the session above cannot tell the framings apart: they
//! are opened by the client only, bidirectional, numbered as QUIC numbers client-initiated
//! bidirectional streams (0, 4, 8, …; the first is the control stream), opened in increasing
//! order by their first frame, and carry bytes in order (the same length-prefixed messages a
//! QUIC stream carries), each direction ended by `FIN` or abandoned by `RESET`; `STOP` asks
//! the peer to stop sending. Datagrams (voice) carry stream 0 and are never queued behind a
//! slow socket.
//!
//! [`Frame`] is the codec; [`Streams`] is the receiving side's bookkeeping (sans-IO), which
//! refuses what QUIC itself would refuse: a stream id that is not a client bidirectional one,
//! one opened out of order or past the limit, data after `FIN`.

use bytes::Bytes;

use crate::varint;

/// Kind byte of each [`Frame`].
pub mod kind {
    /// Stream bytes.
    pub const DATA: u8 = 0;
    /// Stream bytes, then the end of the sender's direction.
    pub const DATA_FIN: u8 = 1;
    /// The sender abandons its direction: payload a varint error code.
    pub const RESET: u8 = 2;
    /// The sender asks the peer to stop sending: payload a varint error code.
    pub const STOP: u8 = 3;
    /// A voice datagram (stream 0): payload as a QUIC datagram's.
    pub const DATAGRAM: u8 = 4;
}

/// One WebSocket message of the framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of `stream`, in order; `fin`: the sender's direction ends after them.
    Data {
        /// The stream.
        stream: u64,
        /// The end of the sender's direction.
        fin: bool,
        /// The bytes (may be empty with `fin`).
        bytes: Bytes,
    },
    /// The sender abandons its direction of `stream`.
    Reset {
        /// The stream.
        stream: u64,
        /// Why (the application's code, as QUIC's RESET_STREAM).
        code: u64,
    },
    /// The sender asks the peer to stop sending on `stream`.
    Stop {
        /// The stream.
        stream: u64,
        /// Why (as QUIC's STOP_SENDING).
        code: u64,
    },
    /// A voice datagram.
    Datagram(Bytes),
}

/// A WebSocket message that is not a frame of the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// It ends inside its header or its code.
    #[error("truncated WebSocket frame")]
    Truncated,
    /// Its kind byte is not one of [`kind`].
    #[error("unknown WebSocket frame kind {0}")]
    UnknownKind(u8),
    /// A datagram names a stream, or a reset or stop carries bytes after its code.
    #[error("malformed WebSocket frame: {0}")]
    Malformed(&'static str),
}

impl Frame {
    /// Appends the frame's bytes (one WebSocket message's payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Data { stream, fin, bytes } => {
                varint::write(*stream, out);
                out.push(if *fin { kind::DATA_FIN } else { kind::DATA });
                out.extend_from_slice(bytes);
            }
            Frame::Reset { stream, code } | Frame::Stop { stream, code } => {
                varint::write(*stream, out);
                out.push(if matches!(self, Frame::Reset { .. }) {
                    kind::RESET
                } else {
                    kind::STOP
                });
                varint::write(*code, out);
            }
            Frame::Datagram(d) => {
                varint::write(0, out);
                out.push(kind::DATAGRAM);
                out.extend_from_slice(d);
            }
        }
    }

    /// The frame's bytes as one new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_hint());
        self.encode(&mut out);
        out
    }

    fn len_hint(&self) -> usize {
        match self {
            Frame::Data { bytes, .. } | Frame::Datagram(bytes) => 9 + bytes.len(),
            _ => 18,
        }
    }

    /// Reads one WebSocket message's payload. `msg` is kept (the bytes are slices of it).
    pub fn decode(msg: Bytes) -> Result<Frame, FrameError> {
        let (stream, n) = varint::read(&msg).ok_or(FrameError::Truncated)?;
        let k = *msg.get(n).ok_or(FrameError::Truncated)?;
        let rest = msg.slice(n + 1..);
        match k {
            kind::DATA | kind::DATA_FIN => Ok(Frame::Data {
                stream,
                fin: k == kind::DATA_FIN,
                bytes: rest,
            }),
            kind::RESET | kind::STOP => {
                let (code, m) = varint::read(&rest).ok_or(FrameError::Truncated)?;
                if m != rest.len() {
                    return Err(FrameError::Malformed("bytes after the code"));
                }
                Ok(if k == kind::RESET {
                    Frame::Reset { stream, code }
                } else {
                    Frame::Stop { stream, code }
                })
            }
            kind::DATAGRAM if stream == 0 => Ok(Frame::Datagram(rest)),
            kind::DATAGRAM => Err(FrameError::Malformed("a datagram names a stream")),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// The WebSocket close code that carries Quaver close code `code` (PROTOCOL.md §11). A
/// WebSocket close frame cannot carry 0, must never carry 1005 or 1006 (RFC 6455 §7.4.1),
/// and a browser page may close only with 1000 or 3000–4999: so `normal` is 1000, the
/// 1000–1999 codes move to 3000–3999 (`going_away` 3000, `slow_consumer` 3007, …), and the
/// 4000–4999 codes are themselves. Anything else (there is nothing else) is 4000.
pub fn ws_close_code(code: u32) -> u16 {
    match code {
        0 => 1000,
        1000..=1999 => (code + 2000) as u16,
        4000..=4999 => code as u16,
        _ => 4000,
    }
}

/// The Quaver close code a WebSocket close code carries ([`ws_close_code`]'s inverse). A
/// code outside the mapping (1001 when a browser tab goes away, 1006 for a dropped
/// connection, …) is `None`: the connection ended without a Quaver close.
pub fn quaver_close_code(code: u16) -> Option<u32> {
    match code {
        1000 => Some(0),
        3000..=3999 => Some(u32::from(code) - 2000),
        4000..=4999 => Some(u32::from(code)),
        _ => None,
    }
}

/// Whether `id` is a client-initiated bidirectional stream id (QUIC's numbering).
pub fn is_client_bidi(id: u64) -> bool {
    id.is_multiple_of(4)
}

/// What a frame received means for the streams ([`Streams::receive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Bytes of a stream; `opened` on its first frame; `fin` when the peer's direction ended.
    Data {
        /// The stream.
        stream: u64,
        /// First frame of the stream: it is new.
        opened: bool,
        /// The bytes.
        bytes: Bytes,
        /// The peer's direction ended with them.
        fin: bool,
    },
    /// The peer abandoned its direction.
    Reset {
        /// The stream.
        stream: u64,
        /// Its code.
        code: u64,
    },
    /// The peer asks this side to stop sending.
    Stop {
        /// The stream.
        stream: u64,
        /// Its code.
        code: u64,
    },
    /// A voice datagram.
    Datagram(Bytes),
    /// About a stream that is over here (finished both ways and forgotten): ignored, as
    /// QUIC ignores frames of closed streams.
    Stale,
}

/// A frame QUIC would have refused: the session ends with `protocol_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Not a client bidirectional stream id.
    #[error("stream {0} is not a client bidirectional stream")]
    NotClientBidi(u64),
    /// A new stream below the highest one opened (ids are used once, in order).
    #[error("stream {0} opened out of order")]
    OutOfOrder(u64),
    /// More streams open at once than the limit.
    #[error("more than {0} streams open")]
    TooManyStreams(usize),
    /// Bytes after the peer's `FIN` or `RESET` on that stream.
    #[error("data on stream {0} after its end")]
    AfterEnd(u64),
}

/// The receiving side's view of the streams of one WebSocket connection (the server's, for
/// streams the client opens).
#[derive(Debug, Clone)]
pub struct Streams {
    /// Next id a new stream may have at least.
    next: u64,
    /// Open streams: whether the peer's direction has ended.
    open: std::collections::BTreeMap<u64, bool>,
    /// Most streams open at once.
    max_open: usize,
}

impl Streams {
    /// No streams yet; at most `max_open` open at once (QUIC's stream limit).
    pub fn new(max_open: usize) -> Self {
        Self {
            next: 0,
            open: Default::default(),
            max_open,
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Takes in a frame from the peer.
    pub fn receive(&mut self, frame: Frame) -> Result<Received, StreamError> {
        let stream = match &frame {
            Frame::Datagram(d) => return Ok(Received::Datagram(d.clone())),
            Frame::Data { stream, .. } | Frame::Reset { stream, .. } | Frame::Stop { stream, .. } => *stream,
        };
        if !is_client_bidi(stream) {
            return Err(StreamError::NotClientBidi(stream));
        }
        let opened = match self.open.get(&stream) {
            Some(_) => false,
            None if stream < self.next => return Ok(Received::Stale),
            None => {
                if self.next == 0 && stream != 0 {
                    // The first stream is the control stream: 0.
                    return Err(StreamError::OutOfOrder(stream));
                }
                if self.open.len() >= self.max_open {
                    return Err(StreamError::TooManyStreams(self.max_open));
                }
                self.open.insert(stream, false);
                self.next = stream + 4;
                true
            }
        };
        let ended = self.open.get(&stream).copied().unwrap_or(false);
        match frame {
            Frame::Data { fin, bytes, .. } => {
                if ended {
                    return Err(StreamError::AfterEnd(stream));
                }
                if fin {
                    self.open.insert(stream, true);
                }
                Ok(Received::Data {
                    stream,
                    opened,
                    bytes,
                    fin,
                })
            }
            Frame::Reset { code, .. } => {
                self.open.insert(stream, true);
                Ok(Received::Reset { stream, code })
            }
            Frame::Stop { code, .. } => Ok(Received::Stop { stream, code }),
            Frame::Datagram(_) => unreachable!("returned above"),
        }
    }

    /// This side is done with `stream` (its own direction ended and the peer's too, or it
    /// gave up on it): it no longer counts against the limit, and late frames are stale.
    pub fn forget(&mut self, stream: u64) {
        self.open.remove(&stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(stream: u64, fin: bool, b: &'static [u8]) -> Frame {
        Frame::Data {
            stream,
            fin,
            bytes: Bytes::from_static(b),
        }
    }

    #[test]
    fn close_codes_map_both_ways_into_what_a_websocket_may_carry() {
        for code in [0u32, 1000, 1001, 1002, 1005, 1006, 1007, 1008, 4000, 4003, 4010, 4014] {
            let ws = ws_close_code(code);
            assert!(ws == 1000 || (3000..=4999).contains(&ws), "{code} → {ws}");
            assert_eq!(quaver_close_code(ws), Some(code), "{code} → {ws} → back");
        }
        assert_eq!(ws_close_code(1007), 3007);
        assert_eq!(ws_close_code(u32::MAX), 4000);
        assert_eq!(quaver_close_code(1001), None, "a tab going away is no Quaver close");
        assert_eq!(quaver_close_code(1006), None);
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_named() {
        for f in [
            data(0, false, b"\x02hi"),
            data(4, true, b""),
            data(1 << 40, false, b"x"),
            Frame::Reset { stream: 8, code: 300 },
            Frame::Stop { stream: 12, code: 0 },
            Frame::Datagram(Bytes::from_static(&[1, 2, 3])),
        ] {
            assert_eq!(Frame::decode(Bytes::from(f.to_bytes())), Ok(f.clone()), "{f:?}");
        }
        let bad = |b: &'static [u8]| Frame::decode(Bytes::from_static(b)).unwrap_err();
        assert_eq!(bad(b""), FrameError::Truncated);
        assert_eq!(bad(b"\x00"), FrameError::Truncated);
        assert_eq!(bad(b"\x40"), FrameError::Truncated, "a two-byte varint cut short");
        assert_eq!(bad(b"\x00\x09"), FrameError::UnknownKind(9));
        assert_eq!(bad(b"\x04\x02"), FrameError::Truncated, "a reset without its code");
        assert!(matches!(bad(b"\x04\x02\x01\x01"), FrameError::Malformed(_)));
        assert!(
            matches!(bad(b"\x04\x04\x01"), FrameError::Malformed(_)),
            "a datagram on a stream"
        );
    }

    #[test]
    fn streams_open_in_order_from_the_control_stream_and_end_once() {
        let mut s = Streams::new(3);
        assert_eq!(
            s.receive(data(4, false, b"a")),
            Err(StreamError::OutOfOrder(4)),
            "the first stream is the control stream"
        );
        let r = s.receive(data(0, false, b"a")).unwrap();
        assert!(matches!(
            r,
            Received::Data {
                stream: 0,
                opened: true,
                ..
            }
        ));
        let r = s.receive(data(0, false, b"b")).unwrap();
        assert!(matches!(
            r,
            Received::Data {
                stream: 0,
                opened: false,
                ..
            }
        ));
        assert_eq!(s.receive(data(2, false, b"")), Err(StreamError::NotClientBidi(2)));
        assert_eq!(s.receive(data(1, false, b"")), Err(StreamError::NotClientBidi(1)));
        // A gap is allowed (QUIC opens the ones below implicitly; here they are never used).
        assert!(matches!(
            s.receive(data(12, true, b"f")).unwrap(),
            Received::Data {
                opened: true,
                fin: true,
                ..
            }
        ));
        assert_eq!(s.receive(data(12, false, b"g")), Err(StreamError::AfterEnd(12)));
        // Below the highest: a stream that is over, or was skipped: stale, ignored.
        assert_eq!(s.receive(data(8, false, b"h")).unwrap(), Received::Stale);
        assert!(matches!(
            s.receive(data(16, false, b"")).unwrap(),
            Received::Data { opened: true, .. }
        ));
        assert_eq!(s.receive(data(20, false, b"")), Err(StreamError::TooManyStreams(3)));
        s.forget(12);
        assert_eq!(s.open(), 2);
        assert_eq!(s.receive(data(12, false, b"late")).unwrap(), Received::Stale);
        assert!(matches!(
            s.receive(data(20, false, b"")).unwrap(),
            Received::Data { opened: true, .. }
        ));
        assert_eq!(
            s.receive(Frame::Reset { stream: 16, code: 7 }).unwrap(),
            Received::Reset { stream: 16, code: 7 }
        );
        assert_eq!(s.receive(data(16, false, b"x")), Err(StreamError::AfterEnd(16)));
        assert_eq!(
            s.receive(Frame::Stop { stream: 0, code: 1 }).unwrap(),
            Received::Stop { stream: 0, code: 1 }
        );
        assert_eq!(
            s.receive(Frame::Datagram(Bytes::from_static(b"v"))).unwrap(),
            Received::Datagram(Bytes::from_static(b"v"))
        );
    }
}
