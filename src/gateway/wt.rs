//! WebTransport on the engine: the HTTP/3 side of one `h3` connection as a state machine
//! over bytes (no I/O; [`super::wire`] reads the streams and acts on what this decides).
//!
//! PROTOCOL.md §1: the server opens its HTTP/3 control stream with SETTINGS
//! ([`control_stream_bytes`]); the client's first
//! bidirectional stream carries the extended CONNECT ([`H3::connect_bytes`] → a request the
//! gateway judges with [`crate::transport::judge`]); once answered `200`, client
//! bidirectional streams start with the WebTransport stream signal and the session id
//! ([`H3::head_bytes`]) before Quaver's frames, datagrams with the session's quarter stream
//! id ([`H3::strip_datagram`]), and the CONNECT stream ending — or its
//! `CLOSE_WEBTRANSPORT_SESSION` capsule — ends the session. The client's control and QPACK
//! streams are read and ignored (no dynamic table); never stopped, which Chromium treats as
//! fatal.
//!
//! HTTP/3 lives here and nowhere else in the project: this machine, and [`frames`] for the
//! bytes (SETTINGS, the CONNECT and its answer, stream types, capsules). The native client
//! speaks WebTransport through `wtransport`.

use std::collections::HashMap;

use bytes::Bytes;
use quaver_proto::varint;
use quinn_proto::StreamId;
use wtransport_proto::session::SessionRequest;

mod frames;

use frames::{ConnectStream, STREAM_WEBTRANSPORT_UNI, WEBTRANSPORT_STREAM, parse_request};
pub use frames::{control_stream_bytes, response_bytes};

/// H3_STREAM_CREATION_ERROR: a stream we do not serve (WebTransport uni streams).
pub const H3_STREAM_CREATION_ERROR: u32 = 0x103;
/// H3_REQUEST_REJECTED: a second request on a connection that serves one session.
pub const H3_REQUEST_REJECTED: u32 = 0x10b;
/// A stream's WebTransport header is two varints: at most 16 bytes.
const MAX_HEAD: usize = 16;

/// What the CONNECT stream said.
#[derive(Debug)]
pub enum ConnectStep {
    /// Nothing to act on yet.
    Pending,
    /// The request is complete: judge it, then [`H3::accept`] or [`H3::refuse`].
    Request(Box<SessionRequest>),
    /// Not a WebTransport request.
    Malformed(String),
    /// The client ended the session: the capsule's code and reason, or `(0, "")` when it
    /// finished (or reset) the stream without one.
    Ended(u32, String),
}

/// What a client bidirectional stream turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Its header is not complete, or the session is not open yet.
    Pending,
    /// A stream of our session; what followed its header (Quaver's first bytes).
    Ours(Vec<Bytes>),
    /// Another request or another session's stream: refuse it (`H3_REQUEST_REJECTED`).
    Rejected,
    /// It ended before its header: forget it.
    Gone,
}

/// What a client unidirectional stream turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Uni {
    /// Its type is not known yet, or it is being drained.
    Pending,
    /// A WebTransport uni stream (Quaver uses none): stop it (`H3_STREAM_CREATION_ERROR`).
    Refuse,
}

#[derive(Debug)]
enum Connect {
    /// Bytes of the request so far.
    Request(Vec<u8>),
    /// Answered with an error status: what follows is ignored.
    Refused,
    /// Answered `200`.
    Open {
        session_id: u64,
        prefix: Vec<u8>,
        reader: ConnectStream,
    },
    /// The session ended.
    Ended,
}

/// The HTTP/3 state of one WebTransport connection.
#[derive(Debug)]
pub struct H3 {
    /// The CONNECT stream: the client's first bidirectional stream.
    pub connect: Option<StreamId>,
    state: Connect,
    /// Client uni streams: `Some(bytes)` while their type is unknown, `None` once known
    /// (read and dropped until they end).
    uni: HashMap<StreamId, Option<Vec<u8>>>,
    /// Client bidi streams (after the CONNECT) whose header is incomplete or that wait
    /// for the session to open: the bytes read so far.
    heads: HashMap<StreamId, Vec<u8>>,
}

impl Default for H3 {
    fn default() -> Self {
        Self::new()
    }
}

impl H3 {
    /// A connection whose handshake chose `h3`.
    pub fn new() -> Self {
        Self {
            connect: None,
            state: Connect::Request(Vec::new()),
            uni: HashMap::new(),
            heads: HashMap::new(),
        }
    }

    /// Whether the session is open (answered `200`, not ended).
    pub fn is_open(&self) -> bool {
        matches!(self.state, Connect::Open { .. })
    }

    /// The session's datagram prefix (its quarter stream id); empty before it opens.
    pub fn prefix(&self) -> &[u8] {
        match &self.state {
            Connect::Open { prefix, .. } => prefix,
            _ => &[],
        }
    }

    /// The next bytes of the CONNECT stream (`end`: it finished or was reset).
    pub fn connect_bytes(&mut self, chunks: &[Bytes], end: bool) -> ConnectStep {
        match &mut self.state {
            Connect::Request(buf) => {
                for c in chunks {
                    buf.extend_from_slice(c);
                }
                match parse_request(buf) {
                    Ok(Some(r)) => ConnectStep::Request(Box::new(r)),
                    Ok(None) if end => ConnectStep::Malformed("stream ended before the request".into()),
                    Ok(None) => ConnectStep::Pending,
                    Err(e) => ConnectStep::Malformed(e.to_string()),
                }
            }
            Connect::Open { reader, .. } => {
                let mut how = None;
                for c in chunks {
                    match reader.push(c) {
                        Ok(Some(h)) => {
                            how = Some(h);
                            break;
                        }
                        Ok(None) => {}
                        // Past the bounds: the session ends as if the stream had.
                        Err(()) => {
                            how = Some((0, String::new()));
                            break;
                        }
                    }
                }
                match how.or_else(|| end.then(|| (0, String::new()))) {
                    Some((code, reason)) => {
                        self.state = Connect::Ended;
                        ConnectStep::Ended(code, reason)
                    }
                    None => ConnectStep::Pending,
                }
            }
            Connect::Refused | Connect::Ended => ConnectStep::Pending,
        }
    }

    /// The request was answered `200`: the session is open. Streams that waited for it
    /// are to be looked at again ([`H3::waiting`]).
    pub fn accept(&mut self) {
        let Some(connect) = self.connect else { return };
        // A client bidirectional stream's id is its index × 4 (type bits 00).
        let session_id = connect.index() << 2;
        let mut prefix = Vec::new();
        varint::write(session_id / 4, &mut prefix);
        self.state = Connect::Open {
            session_id,
            prefix,
            reader: ConnectStream::default(),
        };
    }

    /// The request was answered with an error status.
    pub fn refuse(&mut self) {
        self.state = Connect::Refused;
    }

    /// A client bidirectional stream after the CONNECT was opened.
    pub fn head_opened(&mut self, id: StreamId) {
        self.heads.insert(id, Vec::new());
    }

    /// Whether `id` is a bidirectional stream whose header is still wanted.
    pub fn wants_head(&self, id: StreamId) -> bool {
        self.heads.contains_key(&id)
    }

    /// Whether more of `id` should be read for its header (past 16 bytes it is complete,
    /// and the rest stays in QUIC's buffers until the session opens).
    pub fn head_room(&self, id: StreamId) -> bool {
        self.heads.get(&id).is_some_and(|b| b.len() < MAX_HEAD)
    }

    /// Streams waiting for the session.
    pub fn waiting(&self) -> Vec<StreamId> {
        self.heads.keys().copied().collect()
    }

    /// The next bytes of bidirectional stream `id` (`end`: it ended).
    pub fn head_bytes(&mut self, id: StreamId, chunks: &[Bytes], end: bool) -> Head {
        let Some(buf) = self.heads.get_mut(&id) else {
            return Head::Gone;
        };
        for c in chunks {
            buf.extend_from_slice(c);
        }
        let parsed = varint::read(buf).and_then(|(kind, a)| {
            let (sid, b) = varint::read(&buf[a..])?;
            Some((kind, sid, a + b))
        });
        let verdict = match (parsed, &self.state) {
            (Some((kind, _, _)), _) if kind != WEBTRANSPORT_STREAM => Head::Rejected,
            (Some((_, sid, n)), Connect::Open { session_id, .. }) => {
                if sid == *session_id {
                    let rest = Bytes::copy_from_slice(&buf[n..]);
                    Head::Ours(if rest.is_empty() { Vec::new() } else { vec![rest] })
                } else {
                    Head::Rejected
                }
            }
            // A session that was refused or ended takes no streams.
            (Some(_), Connect::Refused | Connect::Ended) => Head::Rejected,
            // Opened before the answer (a client may): kept until the session opens.
            (Some(_), Connect::Request(_)) => Head::Pending,
            (None, _) if end => Head::Gone,
            (None, _) => Head::Pending,
        };
        if verdict != Head::Pending {
            self.heads.remove(&id);
        }
        verdict
    }

    /// A client unidirectional stream was opened.
    pub fn uni_opened(&mut self, id: StreamId) {
        self.uni.insert(id, Some(Vec::new()));
    }

    /// Whether `id` is a client unidirectional stream being read.
    pub fn is_uni(&self, id: StreamId) -> bool {
        self.uni.contains_key(&id)
    }

    /// The next bytes of unidirectional stream `id` (`end`: it ended).
    pub fn uni_bytes(&mut self, id: StreamId, chunks: &[Bytes], end: bool) -> Uni {
        let verdict = match self.uni.get_mut(&id) {
            Some(Some(buf)) => {
                for c in chunks {
                    buf.extend_from_slice(c);
                    if buf.len() >= 8 {
                        break;
                    }
                }
                match varint::read(buf) {
                    Some((STREAM_WEBTRANSPORT_UNI, _)) => Uni::Refuse,
                    Some(_) => {
                        // HTTP/3 control or QPACK (or unknown): read and dropped from now on.
                        self.uni.insert(id, None);
                        Uni::Pending
                    }
                    None => Uni::Pending,
                }
            }
            _ => Uni::Pending,
        };
        if end || verdict == Uni::Refuse {
            self.uni.remove(&id);
        }
        verdict
    }

    /// A datagram of the connection without the session's prefix, or `None` when it is not
    /// the session's (or the session is not open).
    pub fn strip_datagram(&self, d: Bytes) -> Option<Bytes> {
        match &self.state {
            Connect::Open { prefix, .. } if d.starts_with(prefix) => Some(d.slice(prefix.len()..)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::{Dir, Side};
    use wtransport_proto::frame::Frame;
    use wtransport_proto::headers::Headers;

    fn bidi(index: u64) -> StreamId {
        StreamId::new(Side::Client, Dir::Bi, index)
    }

    fn connect_request(path: &str) -> Vec<u8> {
        let h = Headers::from_iter([
            (":method", "CONNECT"),
            (":protocol", "webtransport"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
            ("origin", "https://chat.example"),
        ]);
        let mut out = Vec::new();
        // Grease first: skipped.
        varint::write(0x21, &mut out);
        varint::write(1, &mut out);
        out.push(0);
        h.generate_frame().write(&mut out).unwrap();
        out
    }

    fn stream_head(sid: u64, rest: &[u8]) -> Bytes {
        let mut out = Vec::new();
        varint::write(WEBTRANSPORT_STREAM, &mut out);
        varint::write(sid, &mut out);
        out.extend_from_slice(rest);
        Bytes::from(out)
    }

    #[test]
    fn request_in_pieces_then_streams_then_datagrams_then_the_end() {
        let mut h3 = H3::new();
        h3.connect = Some(bidi(0));
        let req = connect_request("/quaver?token=abc");
        let (a, b) = req.split_at(7);
        assert!(matches!(
            h3.connect_bytes(&[Bytes::copy_from_slice(a)], false),
            ConnectStep::Pending
        ));
        // A stream opened before the answer waits for it.
        h3.head_opened(bidi(1));
        assert_eq!(
            h3.head_bytes(bidi(1), &[stream_head(0, b"hello")], false),
            Head::Pending
        );
        let ConnectStep::Request(r) = h3.connect_bytes(&[Bytes::copy_from_slice(b)], false) else {
            panic!("request")
        };
        assert_eq!(r.path(), "/quaver?token=abc");
        assert_eq!(r.origin(), Some("https://chat.example"));
        assert!(!h3.is_open());
        h3.accept();
        assert!(h3.is_open());
        assert_eq!(h3.waiting(), vec![bidi(1)]);
        assert_eq!(
            h3.head_bytes(bidi(1), &[], false),
            Head::Ours(vec![Bytes::from_static(b"hello")])
        );
        // A header split over pieces; another session's stream; a second request.
        h3.head_opened(bidi(2));
        let head = stream_head(0, b"");
        assert_eq!(h3.head_bytes(bidi(2), &[head.slice(..1)], false), Head::Pending);
        assert_eq!(h3.head_bytes(bidi(2), &[head.slice(1..)], false), Head::Ours(vec![]));
        h3.head_opened(bidi(3));
        assert_eq!(h3.head_bytes(bidi(3), &[stream_head(4, b"")], false), Head::Rejected);
        h3.head_opened(bidi(4));
        assert_eq!(
            h3.head_bytes(bidi(4), &[Bytes::from(connect_request("/quaver"))], false),
            Head::Rejected
        );
        h3.head_opened(bidi(5));
        assert_eq!(h3.head_bytes(bidi(5), &[], true), Head::Gone);
        // Datagrams: quarter stream id 0.
        assert_eq!(h3.prefix(), &[0]);
        assert_eq!(
            h3.strip_datagram(Bytes::from_static(&[0, 9, 9])),
            Some(Bytes::from_static(&[9, 9]))
        );
        assert_eq!(h3.strip_datagram(Bytes::from_static(&[1, 9])), None);
        // The end: the CONNECT stream finishing without a capsule is code 0.
        assert!(matches!(h3.connect_bytes(&[], true), ConnectStep::Ended(0, _)));
        assert!(!h3.is_open());
    }

    #[test]
    fn a_malformed_or_early_stream_is_not_a_request() {
        let mut h3 = H3::new();
        h3.connect = Some(bidi(0));
        assert!(matches!(
            h3.connect_bytes(&[stream_head(0, b"")], false),
            ConnectStep::Malformed(_)
        ));
        let mut h3 = H3::new();
        h3.connect = Some(bidi(0));
        assert!(matches!(
            h3.connect_bytes(&[Bytes::from_static(&[0x01])], true),
            ConnectStep::Malformed(_)
        ));
        // A HEADERS frame that is not QPACK.
        let mut h3 = H3::new();
        h3.connect = Some(bidi(0));
        let f = Frame::new_headers(vec![0xff; 8].into());
        let mut bytes = Vec::new();
        f.write(&mut bytes).unwrap();
        assert!(matches!(
            h3.connect_bytes(&[Bytes::from(bytes)], false),
            ConnectStep::Malformed(_)
        ));
    }

    #[test]
    fn a_refused_request_takes_no_streams() {
        let mut h3 = H3::new();
        h3.connect = Some(bidi(0));
        assert!(matches!(
            h3.connect_bytes(&[Bytes::from(connect_request("/elsewhere"))], false),
            ConnectStep::Request(_)
        ));
        h3.refuse();
        h3.head_opened(bidi(1));
        assert_eq!(h3.head_bytes(bidi(1), &[stream_head(0, b"x")], false), Head::Rejected);
        assert!(matches!(h3.connect_bytes(&[], true), ConnectStep::Pending));
        assert_eq!(h3.strip_datagram(Bytes::from_static(&[0, 1])), None);
    }

    #[test]
    fn uni_streams_are_read_and_ignored_but_webtransport_ones_refused() {
        let mut h3 = H3::new();
        let control = StreamId::new(Side::Client, Dir::Uni, 0);
        h3.uni_opened(control);
        assert_eq!(h3.uni_bytes(control, &[], false), Uni::Pending);
        assert_eq!(
            h3.uni_bytes(control, &[Bytes::from_static(&[0x00, 0x04, 0x00])], false),
            Uni::Pending
        );
        assert!(h3.is_uni(control));
        assert_eq!(
            h3.uni_bytes(control, &[Bytes::from_static(&[1; 100])], false),
            Uni::Pending
        );
        assert_eq!(h3.uni_bytes(control, &[], true), Uni::Pending);
        assert!(!h3.is_uni(control));
        let wt = StreamId::new(Side::Client, Dir::Uni, 1);
        h3.uni_opened(wt);
        let mut b = Vec::new();
        varint::write(STREAM_WEBTRANSPORT_UNI, &mut b);
        assert_eq!(h3.uni_bytes(wt, &[Bytes::from(b)], false), Uni::Refuse);
        assert!(!h3.is_uni(wt));
    }
}
