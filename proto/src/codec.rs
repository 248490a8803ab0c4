//! Frames: a QUIC varint length followed by exactly that many bytes holding one message in
//! bincode 2 "standard" encoding (little-endian, variable-length integers).
//!
//! This is the only module that names bincode: the format is specified in PROTOCOL.md and
//! pinned by the golden vectors, so another encoder of the same format could replace it here.

use bytes::{Buf, Bytes, BytesMut};

use crate::varint;

/// Bincode configuration of the wire format. The limit caps what one decode may allocate,
/// so a length prefix inside a message can never claim more memory than this.
type WireConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ crate::HARD_MAX_FRAME }>,
>;

const WIRE: WireConfig = bincode::config::standard().with_limit::<{ crate::HARD_MAX_FRAME }>();

/// A message could not be decoded from a frame payload.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message ended before the frame did.
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

/// A frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Encodes `msg` as one frame (length + payload) appended to `out`.
pub fn encode_frame<T: bincode::Encode>(msg: &T, out: &mut Vec<u8>) {
    let payload = encode_payload(msg);
    varint::write(payload.len() as u64, out);
    out.extend_from_slice(&payload);
}

/// Encodes `msg` as a bare payload (no length prefix).
pub fn encode_payload<T: bincode::Encode>(msg: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail: every message type is plain data.
    bincode::encode_to_vec(msg, WIRE).unwrap_or_default()
}

/// Appends a `ServerLane::Event { seq, body }` frame whose body was encoded once with
/// [`encode_payload`]: fan-out encodes an event once and only the seq differs per receiver.
pub fn encode_event_frame(seq: u64, body: &[u8], out: &mut Vec<u8>) {
    let mut head = [0u8; EVENT_HEAD_MAX];
    let n = encode_event_head(seq, body.len(), &mut head);
    out.reserve_exact(n + body.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(body);
}

/// The longest head [`encode_event_head`] writes: an 8-byte length, the variant and a u64
/// seq in varint encoding (1 + 9 bytes).
pub const EVENT_HEAD_MAX: usize = 18;

/// Writes what precedes an event's `body_len`-byte body in its `ServerLane::Event` frame —
/// the frame's length, then the variant index of `ServerLane::Event` and the seq — into
/// `out`; returns how many bytes. The body follows as it was encoded once for every
/// receiver, so a delivery can be written as these few bytes and the shared body, without
/// building the frame. Exactly what encoding the whole enum would produce (a test below
/// checks it).
pub fn encode_event_head(seq: u64, body_len: usize, out: &mut [u8; EVENT_HEAD_MAX]) -> usize {
    let mut tail = [0u8; 10];
    let n = bincode::encode_into_slice((2u32, seq), &mut tail, WIRE)
        .expect("a u32 and a u64 in varint encoding take at most 10 bytes");
    let (len, l) = varint::encode((n + body_len) as u64);
    out[..l].copy_from_slice(&len[..l]);
    out[l..l + n].copy_from_slice(&tail[..n]);
    l + n
}

/// Replies at least this large are compressed when the session negotiated zstd.
pub const COMPRESS_ABOVE: usize = 16 * 1024;

/// Encodes a fetch reply, zstd-compressing it when allowed and worthwhile.
#[cfg(feature = "compression")]
pub fn encode_fetch_reply(reply: &crate::FetchReply, zstd: bool, out: &mut Vec<u8>) {
    let payload = encode_payload(reply);
    if zstd
        && payload.len() >= COMPRESS_ABOVE
        && let Ok(data) = zstd::bulk::compress(&payload, 3)
        && data.len() < payload.len()
    {
        encode_frame(
            &crate::FetchReply::Compressed {
                raw_len: payload.len() as u32,
                data,
            },
            out,
        );
        return;
    }
    varint::write(payload.len() as u64, out);
    out.extend_from_slice(&payload);
}

/// Undoes [`encode_fetch_reply`]'s compression: a `Compressed` reply becomes the reply it
/// holds (never another `Compressed`); others pass through.
#[cfg(feature = "compression")]
pub fn decompress_fetch_reply(reply: crate::FetchReply) -> Result<crate::FetchReply, DecodeError> {
    match reply {
        crate::FetchReply::Compressed { raw_len, data } => {
            if raw_len as usize > crate::HARD_MAX_FRAME {
                return Err(DecodeError::Malformed("compressed reply too large".into()));
            }
            let raw =
                zstd::bulk::decompress(&data, raw_len as usize).map_err(|e| DecodeError::Malformed(e.to_string()))?;
            if raw.len() != raw_len as usize {
                return Err(DecodeError::Malformed("decompressed size mismatch".into()));
            }
            match decode::<crate::FetchReply>(&raw)? {
                crate::FetchReply::Compressed { .. } => Err(DecodeError::Malformed("nested compression".into())),
                inner => Ok(inner),
            }
        }
        other => Ok(other),
    }
}

/// Decodes one message that must span all of `payload`.
pub fn decode<T: bincode::Decode<()>>(payload: &[u8]) -> Result<T, DecodeError> {
    let (msg, used) =
        bincode::decode_from_slice::<T, _>(payload, WIRE).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(DecodeError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Splits a byte stream into frame payloads, refusing any frame above `max` bytes as soon
/// as its length prefix arrives (before buffering it).
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes received and not yet returned as frames.
    buf: BytesMut,
    /// Largest payload accepted.
    max: usize,
}

impl FrameReader {
    /// A reader accepting payloads of at most `max` bytes (capped at [`crate::HARD_MAX_FRAME`]).
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max: max.min(crate::HARD_MAX_FRAME),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((len, n)) = varint::read(&self.buf) else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let len = len as usize;
        if self.buf.len() < n + len {
            // Reserve up to the announced size (already bounded by `max`) to avoid regrowth.
            self.buf.reserve(n + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(n);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(feature = "io")]
pub mod io {
    //! Reading and writing frames on any tokio byte stream (quinn and wtransport streams
    //! both implement `AsyncRead`/`AsyncWrite`).

    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Why reading a message from a stream failed.
    #[derive(Debug, thiserror::Error)]
    pub enum ReadError {
        /// Framing was violated.
        #[error(transparent)]
        Frame(#[from] FrameError),
        /// The frame held no valid message.
        #[error(transparent)]
        Decode(#[from] DecodeError),
        /// The transport failed.
        #[error("stream: {0}")]
        Io(#[from] std::io::Error),
    }

    /// A framed reader over an async byte stream.
    #[derive(Debug)]
    pub struct FramedRead<R> {
        /// The stream.
        inner: R,
        /// Frame splitter holding any partial frame.
        frames: FrameReader,
        /// Total payload bytes returned (for metrics).
        pub bytes: u64,
    }

    impl<R: AsyncRead + Unpin> FramedRead<R> {
        /// Wraps `inner`, accepting frames of at most `max` bytes.
        pub fn new(inner: R, max: usize) -> Self {
            Self {
                inner,
                frames: FrameReader::new(max),
                bytes: 0,
            }
        }

        /// The next frame payload; `Ok(None)` at a clean end of stream.
        pub async fn next_payload(&mut self) -> Result<Option<Bytes>, ReadError> {
            loop {
                if let Some(frame) = self.frames.next_frame()? {
                    self.bytes += frame.len() as u64;
                    return Ok(Some(frame));
                }
                // Read straight into the frame buffer's spare room: no scratch array lives
                // in this future while it waits, so an idle stream costs little memory.
                // (`next_frame` already reserved room for a frame whose length it knows.)
                if self.frames.buf.capacity() - self.frames.buf.len() < 64 {
                    self.frames.buf.reserve(256);
                }
                let n = self.inner.read_buf(&mut self.frames.buf).await?;
                if n == 0 {
                    self.frames.finish()?;
                    return Ok(None);
                }
            }
        }

        /// The next message; `Ok(None)` at a clean end of stream.
        pub async fn next<T: bincode::Decode<()>>(&mut self) -> Result<Option<T>, ReadError> {
            match self.next_payload().await? {
                Some(p) => Ok(Some(decode(&p)?)),
                None => Ok(None),
            }
        }

        /// The wrapped stream.
        pub fn get_mut(&mut self) -> &mut R {
            &mut self.inner
        }

        /// Unwraps the stream (any buffered partial frame is dropped).
        pub fn into_inner(self) -> R {
            self.inner
        }
    }

    /// Writes one message as a frame. Returns the payload size written.
    pub async fn write_msg<W: AsyncWrite + Unpin, T: bincode::Encode>(w: &mut W, msg: &T) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(64);
        encode_frame(msg, &mut out);
        w.write_all(&out).await?;
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_across_arbitrary_chunking() {
        let mut wire = Vec::new();
        for i in 0..50u32 {
            encode_frame(&(i, "x".repeat(i as usize * 7)), &mut wire);
        }
        for chunk in [1, 2, 3, 7, 64, 1000] {
            let mut r = FrameReader::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                r.push(piece);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(decode::<(u32, String)>(&f).unwrap());
                }
            }
            r.finish().unwrap();
            assert_eq!(got.len(), 50);
            assert_eq!(got[49], (49, "x".repeat(343)));
        }
    }

    #[test]
    fn event_frames_from_preencoded_bodies_match_whole_encoding() {
        use crate::msg::{EventBody, ServerLane};
        // Frame lengths across the varint's 1-, 2- and 4-byte forms.
        for text in ["hi".to_string(), "x".repeat(100), "y".repeat(20_000)] {
            for seq in [1u64, 250, 70_000, u64::MAX] {
                let body = EventBody::Notice { text: text.clone() };
                let mut whole = Vec::new();
                encode_frame(
                    &ServerLane::Event {
                        seq,
                        body: body.clone(),
                    },
                    &mut whole,
                );
                let encoded = encode_payload(&body);
                let mut fast = Vec::new();
                encode_event_frame(seq, &encoded, &mut fast);
                assert_eq!(whole, fast);
                let mut head = [0u8; EVENT_HEAD_MAX];
                let n = encode_event_head(seq, encoded.len(), &mut head);
                assert_eq!([&head[..n], &encoded[..]].concat(), whole, "head + body, seq {seq}");
            }
        }
    }

    #[cfg(feature = "compression")]
    #[test]
    fn large_fetch_replies_compress_and_round_trip() {
        use crate::{ErrorBody, ErrorCode, FetchReply};
        let big = FetchReply::Err(ErrorBody::new(ErrorCode::INTERNAL, "x".repeat(100_000)));
        let mut out = Vec::new();
        encode_fetch_reply(&big, true, &mut out);
        assert!(out.len() < 10_000, "compressed to {}", out.len());
        let mut r = FrameReader::new(crate::HARD_MAX_FRAME);
        r.push(&out);
        let frame = r.next_frame().unwrap().unwrap();
        let got: FetchReply = decode(&frame).unwrap();
        assert!(matches!(got, FetchReply::Compressed { .. }));
        assert_eq!(decompress_fetch_reply(got).unwrap(), big);
        // Not negotiated, or small: plain.
        let mut plain = Vec::new();
        encode_fetch_reply(&big, false, &mut plain);
        let mut r = FrameReader::new(crate::HARD_MAX_FRAME);
        r.push(&plain);
        assert_eq!(decode::<FetchReply>(&r.next_frame().unwrap().unwrap()).unwrap(), big);
        let small = FetchReply::Err(ErrorBody::new(ErrorCode::INTERNAL, "x"));
        let mut out = Vec::new();
        encode_fetch_reply(&small, true, &mut out);
        let mut r = FrameReader::new(1024);
        r.push(&out);
        assert_eq!(decode::<FetchReply>(&r.next_frame().unwrap().unwrap()).unwrap(), small);
        // A lying raw_len is refused, not trusted.
        let bomb = FetchReply::Compressed {
            raw_len: u32::MAX,
            data: vec![1, 2, 3],
        };
        assert!(decompress_fetch_reply(bomb).is_err());
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut r = FrameReader::new(100);
        let mut wire = Vec::new();
        varint::write(101, &mut wire);
        r.push(&wire);
        assert!(matches!(
            r.next_frame(),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let mut p = encode_payload(&7u32);
        p.push(0);
        assert!(matches!(decode::<u32>(&p), Err(DecodeError::Trailing(1))));
        let mut r = FrameReader::new(100);
        r.push(&[5, 1, 2]);
        assert!(r.next_frame().unwrap().is_none());
        assert!(matches!(r.finish(), Err(FrameError::Truncated)));
    }

    #[test]
    fn huge_inner_length_does_not_allocate() {
        // A Vec<u8> claiming 2^60 elements: bincode's limit must refuse it.
        let mut p = vec![253u8];
        p.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u8>>(&p).is_err());
        let mut p = vec![253u8];
        p.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<String>(&p).is_err());
    }
}
