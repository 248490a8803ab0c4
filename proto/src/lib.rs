//! The Quaver wire protocol, shared by the server, the native client and (as golden vectors)
//! the browser client.
//!
//! Map of the crate:
//! - [`varint`]: QUIC variable-length integers (RFC 9000 §16), used for frame lengths.
//! - [`codec`]: frames (varint length + one message). The only module that knows bincode.
//! - [`msg`]: every message: control stream, lanes, fetch streams.
//! - [`datagram`]: the fixed binary header of voice datagrams.
//! - [`close`]: the close-code table, each code marked reconnect or terminal.
//! - [`error`]: request error codes carried in acks and fetch replies.
//! - [`ws`]: the WebSocket framing — streams and datagrams multiplexed on one WebSocket.
//! - `session` (feature `transport`): one `Session` type over raw QUIC and WebTransport,
//!   used by the native client (the server's HTTP/3 is its own, in `gateway::wt`).
//!
//! `PROTOCOL.md` beside this crate is the specification; `vectors/` holds golden encodings.

pub mod close;
pub mod codec;
pub mod datagram;
pub mod error;
pub mod msg;
#[cfg(feature = "transport")]
pub mod session;
pub mod varint;
pub mod ws;

pub use close::CloseCode;
pub use codec::{DecodeError, FrameError, FrameReader, decode, encode_frame};
pub use error::{ErrorBody, ErrorCode};
pub use msg::*;

/// Version of the protocol spoken by this crate; sent in `Hello`, checked by the server.
pub const PROTOCOL_VERSION: u16 = 2;
/// ALPN of raw-QUIC sessions (native clients).
pub const ALPN_QUAVER: &[u8] = b"quaver/1";
/// ALPN of HTTP/3, under which WebTransport sessions arrive.
pub const ALPN_H3: &[u8] = b"h3";
/// Path of the WebTransport endpoint.
pub const WEBTRANSPORT_PATH: &str = "/quaver";
/// Default largest frame payload a peer accepts (256 KiB).
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024;
/// Hard upper bound for any configured frame limit (and for decoder allocations).
pub const HARD_MAX_FRAME: usize = 4 * 1024 * 1024;
