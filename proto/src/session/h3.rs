//! A WebTransport session served over a quinn connection by our own HTTP/3 layer (the
//! server side; the native client uses `wtransport`'s). The HTTP/3 handshake — SETTINGS,
//! the extended CONNECT and its response — happens before (in the server's transport);
//! this is what follows it: client-opened bidirectional streams carry the WebTransport
//! stream signal (`0x41`, session id) before Quaver's frames, datagrams carry the session's
//! quarter stream id before the voice header, and the CONNECT stream ending (or its
//! `CLOSE_WEBTRANSPORT_SESSION` capsule) ends the session.
//!
//! Why not `wtransport`'s server: it takes the quinn `Connecting` and gives no handle on the
//! connection until the CONNECT has arrived, so a client that never sent one could only be
//! dropped (QUIC close code 0), not closed with `hello_timeout`; and its debug logs print the
//! request (`?token=` included).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{RecvStream, SendStream, SessionError};
use crate::varint;

/// The WebTransport stream signal opening a client bidirectional stream (draft-02 §4.2).
pub const WEBTRANSPORT_STREAM: u64 = 0x41;
/// Uni stream type of an HTTP/3 control stream.
pub const STREAM_CONTROL: u64 = 0x00;
/// Uni stream type of a WebTransport unidirectional stream.
pub const STREAM_WEBTRANSPORT_UNI: u64 = 0x54;
/// HTTP/3 frame type of DATA (capsules ride in them on the CONNECT stream).
const FRAME_DATA: u64 = 0x00;
/// Capsule closing a WebTransport session: u32 code, then a UTF-8 reason.
const CAPSULE_CLOSE_SESSION: u64 = 0x2843;
/// H3_STREAM_CREATION_ERROR: a stream we do not serve.
const H3_STREAM_CREATION_ERROR: u32 = 0x103;
/// H3_REQUEST_REJECTED: a second request on a connection that serves one session.
const H3_REQUEST_REJECTED: u32 = 0x10b;
/// Most bytes read from the CONNECT stream or an HTTP/3 uni stream's frame at once.
const MAX_CONTROL_FRAME: u64 = 64 * 1024;

/// A WebTransport session on a quinn connection. Cloning is cheap (a handle).
#[derive(Clone, Debug)]
pub struct H3Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: quinn::Connection,
    /// Stream id of the CONNECT request: the session id.
    session_id: u64,
    /// The session's quarter stream id, encoded: every datagram starts with it.
    datagram_prefix: Vec<u8>,
    /// Client bidirectional streams of this session, their stream signal read.
    streams: tokio::sync::Mutex<mpsc::Receiver<(quinn::SendStream, quinn::RecvStream)>>,
    /// How the client ended the session, if it did (code 0 when without a capsule).
    peer_closed: Arc<Mutex<Option<(u32, String)>>>,
    /// The acceptor and CONNECT-watcher tasks: they end with the last handle.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl H3Session {
    /// Serves the session whose CONNECT came on stream `connect` (already answered `200`).
    /// `control` is our HTTP/3 control stream (kept open: closing it is a connection error).
    /// Must be called within a tokio runtime.
    pub fn start(
        conn: quinn::Connection,
        control: quinn::SendStream,
        connect: (quinn::SendStream, quinn::RecvStream),
    ) -> Self {
        let session_id = connect.1.id().index() << 2; // client bidi: type bits 00
        let mut datagram_prefix = Vec::new();
        varint::write(session_id / 4, &mut datagram_prefix);
        let (tx, rx) = mpsc::channel(16);
        let peer_closed = Arc::new(Mutex::new(None));
        let tasks = vec![
            tokio::spawn(accept_bi(conn.clone(), session_id, tx)).abort_handle(),
            tokio::spawn(accept_uni(conn.clone(), control)).abort_handle(),
            tokio::spawn(watch_connect(conn.clone(), connect, peer_closed.clone())).abort_handle(),
        ];
        Self {
            inner: Arc::new(Inner {
                conn,
                session_id,
                datagram_prefix,
                streams: tokio::sync::Mutex::new(rx),
                peer_closed,
                tasks,
            }),
        }
    }

    /// The QUIC connection underneath.
    pub fn quic(&self) -> &quinn::Connection {
        &self.inner.conn
    }

    /// The session id (the CONNECT stream's id).
    pub fn session_id(&self) -> u64 {
        self.inner.session_id
    }

    /// The next bidirectional stream the client opened in this session.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), SessionError> {
        match self.inner.streams.lock().await.recv().await {
            Some((s, r)) => Ok((SendStream::Quic(s), RecvStream::Quic(r))),
            None => Err(SessionError::Closed(
                self.inner
                    .conn
                    .close_reason()
                    .map_or_else(|| "session ended".into(), |e| e.to_string()),
            )),
        }
    }

    /// Opens a bidirectional stream in this session.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), SessionError> {
        let (mut s, r) = self
            .inner
            .conn
            .open_bi()
            .await
            .map_err(|e| SessionError::Closed(e.to_string()))?;
        let mut header = Vec::with_capacity(10);
        varint::write(WEBTRANSPORT_STREAM, &mut header);
        varint::write(self.inner.session_id, &mut header);
        s.write_all(&header)
            .await
            .map_err(|e| SessionError::Closed(e.to_string()))?;
        Ok((SendStream::Quic(s), RecvStream::Quic(r)))
    }

    /// Sends a datagram of this session.
    pub fn send_datagram(&self, data: &[u8]) -> Result<(), SessionError> {
        let prefix = &self.inner.datagram_prefix;
        let mut d = Vec::with_capacity(prefix.len() + data.len());
        d.extend_from_slice(prefix);
        d.extend_from_slice(data);
        self.inner
            .conn
            .send_datagram(Bytes::from(d))
            .map_err(|e| SessionError::Datagram(e.to_string()))
    }

    /// The bytes every datagram of this session starts with (its quarter stream id).
    pub fn datagram_prefix(&self) -> &[u8] {
        &self.inner.datagram_prefix
    }

    /// Sends a datagram that already starts with [`H3Session::datagram_prefix`].
    pub fn send_raw_datagram(&self, data: Bytes) -> Result<(), SessionError> {
        self.inner
            .conn
            .send_datagram(data)
            .map_err(|e| SessionError::Datagram(e.to_string()))
    }

    /// The next datagram of this session (others are dropped: one session per connection).
    pub async fn read_datagram(&self) -> Result<Bytes, SessionError> {
        let prefix = &self.inner.datagram_prefix;
        loop {
            let d = self
                .inner
                .conn
                .read_datagram()
                .await
                .map_err(|e| SessionError::Closed(e.to_string()))?;
            if d.starts_with(prefix) {
                return Ok(d.slice(prefix.len()..));
            }
        }
    }

    /// Largest datagram payload that fits now (0 if none), after the session prefix.
    pub fn max_datagram_size(&self) -> usize {
        self.inner
            .conn
            .max_datagram_size()
            .map_or(0, |m| m.saturating_sub(self.inner.datagram_prefix.len()))
    }

    /// How the client ended the session, if it did: the capsule's code and reason, or
    /// `(0, "")` when it finished the CONNECT stream without one.
    pub fn peer_closed(&self) -> Option<(u32, String)> {
        self.inner.peer_closed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reads a QUIC varint from a stream, byte by byte (headers are a few bytes).
async fn read_varint(r: &mut quinn::RecvStream) -> Option<u64> {
    let mut buf = [0u8; 8];
    r.read_exact(&mut buf[..1]).await.ok()?;
    let len = varint::len_of_first(buf[0]);
    r.read_exact(&mut buf[1..len]).await.ok()?;
    varint::read(&buf[..len]).map(|(v, _)| v)
}

/// Client bidirectional streams: those signalling our session go to `tx`; anything else
/// (a second request) is refused.
async fn accept_bi(conn: quinn::Connection, session_id: u64, tx: mpsc::Sender<(quinn::SendStream, quinn::RecvStream)>) {
    while let Ok((mut s, mut r)) = conn.accept_bi().await {
        let tx = tx.clone();
        tokio::spawn(async move {
            // No deadline for the header: a browser may open a stream and write its header
            // with the first data, much later; idle streams are bounded by the connection's
            // stream limits.
            let header = async { Some((read_varint(&mut r).await?, read_varint(&mut r).await?)) }.await;
            match header {
                Some((WEBTRANSPORT_STREAM, sid)) if sid == session_id => {
                    let _ = tx.send((s, r)).await;
                }
                _ => {
                    let _ = s.reset(H3_REQUEST_REJECTED.into());
                    let _ = r.stop(H3_REQUEST_REJECTED.into());
                }
            }
        });
    }
}

/// Client unidirectional streams: HTTP/3 control and QPACK streams are read and ignored
/// (no dynamic table, nothing to act on); WebTransport uni streams are not used by Quaver.
/// Holds our own control stream open for the connection's life.
///
/// A stream's type is awaited without a deadline: Chromium opens its QPACK streams at once
/// but may say nothing on them for a long time, and stopping one of them is fatal to the
/// connection (it closes with H3 error 0x104, "STOP_SENDING received for QPACK send
/// stream") — a 10 s deadline here once ended every idle browser session after 10 s.
async fn accept_uni(conn: quinn::Connection, _control: quinn::SendStream) {
    while let Ok(mut r) = conn.accept_uni().await {
        tokio::spawn(async move {
            match read_varint(&mut r).await {
                Some(STREAM_WEBTRANSPORT_UNI) => {
                    let _ = r.stop(H3_STREAM_CREATION_ERROR.into());
                }
                Some(_) => {
                    let mut sink = [0u8; 4096];
                    while let Ok(Some(_)) = r.read(&mut sink).await {}
                }
                // Reset or closed before saying what it was: nothing to do.
                None => {}
            }
        });
    }
}

/// Reads the CONNECT stream until the client ends the session, then closes the connection
/// (the session is the connection's only one).
async fn watch_connect(
    conn: quinn::Connection,
    (_send, mut recv): (quinn::SendStream, quinn::RecvStream),
    peer_closed: Arc<Mutex<Option<(u32, String)>>>,
) {
    let how = read_close_capsule(&mut recv).await.unwrap_or((0, String::new()));
    *peer_closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(how.clone());
    conn.close(how.0.into(), how.1.as_bytes());
}

/// The `CLOSE_WEBTRANSPORT_SESSION` capsule's code and reason, or `None` when the stream
/// ended (or broke) without one.
async fn read_close_capsule(r: &mut quinn::RecvStream) -> Option<(u32, String)> {
    let mut reader = ConnectStream::default();
    loop {
        let chunk = r.read_chunk(MAX_CONTROL_FRAME as usize, true).await.ok()??;
        match reader.push(&chunk.bytes) {
            Ok(Some(how)) => return Some(how),
            Ok(None) => {}
            Err(()) => return None,
        }
    }
}

/// What a client sends on the CONNECT stream once its session is open: HTTP/3 frames whose
/// DATA carry capsules. Fed in pieces (sans-IO), it finds the `CLOSE_WEBTRANSPORT_SESSION`
/// capsule; other frames and capsules are skipped. Bounded: a frame or a capsule larger
/// than 64 KiB is an error.
#[derive(Debug, Default)]
pub struct ConnectStream {
    /// Bytes not yet parsed into frames.
    frames: Vec<u8>,
    /// DATA payload not yet parsed into capsules.
    capsules: Vec<u8>,
}

impl ConnectStream {
    /// Takes the next bytes of the stream: `Ok(Some((code, reason)))` once the close capsule
    /// has arrived, `Err(())` when the client exceeded the bounds.
    #[allow(clippy::result_unit_err)]
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(u32, String)>, ()> {
        self.frames.extend_from_slice(bytes);
        while let Some((kind, a)) = varint::read(&self.frames) {
            let Some((len, b)) = varint::read(&self.frames[a..]) else {
                break;
            };
            if len > MAX_CONTROL_FRAME {
                return Err(());
            }
            let start = a + b;
            let end = start + len as usize;
            if self.frames.len() < end {
                break;
            }
            if kind == FRAME_DATA {
                self.capsules.extend_from_slice(&self.frames[start..end]);
            }
            self.frames.drain(..end);
        }
        // Complete capsules at the front of the buffer.
        while let Some((ctype, a)) = varint::read(&self.capsules) {
            let Some((clen, b)) = varint::read(&self.capsules[a..]) else {
                break;
            };
            let start = a + b;
            let Some(end) = start.checked_add(clen as usize).filter(|e| *e <= self.capsules.len()) else {
                break;
            };
            if ctype == CAPSULE_CLOSE_SESSION && clen >= 4 {
                let v = &self.capsules[start..end];
                let code = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                return Ok(Some((code, String::from_utf8_lossy(&v[4..]).into_owned())));
            }
            self.capsules.drain(..end);
        }
        if self.capsules.len() as u64 > MAX_CONTROL_FRAME {
            return Err(());
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_capsule_in_data(code: u32, reason: &str) -> Vec<u8> {
        let mut capsule = Vec::new();
        varint::write(CAPSULE_CLOSE_SESSION, &mut capsule);
        varint::write(4 + reason.len() as u64, &mut capsule);
        capsule.extend_from_slice(&code.to_be_bytes());
        capsule.extend_from_slice(reason.as_bytes());
        let mut out = Vec::new();
        // A grease frame first, then the capsule split over two DATA frames.
        varint::write(0x21, &mut out);
        varint::write(2, &mut out);
        out.extend_from_slice(b"zz");
        let (x, y) = capsule.split_at(3);
        for part in [x, y] {
            varint::write(FRAME_DATA, &mut out);
            varint::write(part.len() as u64, &mut out);
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn close_capsule_is_found_whatever_the_pieces() {
        let bytes = close_capsule_in_data(4001, "bye");
        for cut in 0..bytes.len() {
            let mut r = ConnectStream::default();
            let first = r.push(&bytes[..cut]).unwrap();
            assert_eq!(first, None, "cut {cut}");
            assert_eq!(r.push(&bytes[cut..]).unwrap(), Some((4001, "bye".into())), "cut {cut}");
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut out = Vec::new();
        varint::write(FRAME_DATA, &mut out);
        varint::write(MAX_CONTROL_FRAME + 1, &mut out);
        assert_eq!(ConnectStream::default().push(&out), Err(()));
    }
}
