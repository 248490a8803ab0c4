//! A deliberately misbehaving raw-QUIC client for failure tests and benchmarks: its streams
//! accept only a small window of unread data, so it can stop granting flow-control credit
//! (by not reading) on any stream it chooses, as a frozen or hostile client would.

use std::net::SocketAddr;
use std::sync::Arc;

use quaver_proto::codec::io::{FramedRead, write_msg};
use quaver_proto::{
    ClientControl, Compression, DeviceKind, Hello, Lane, PROTOCOL_VERSION, Ready, ServerControl, StreamOpen,
};

use crate::{Error, Trust, tls_config};

/// A raw connection and the endpoint it needs to live.
#[derive(Debug)]
pub struct RawConn {
    /// The connection.
    pub conn: quinn::Connection,
    /// Kept alive with the connection.
    _endpoint: quinn::Endpoint,
}

fn transport(e: impl std::fmt::Display) -> Error {
    Error::Transport(e.to_string())
}

/// Connects over ALPN `quaver/1`; each stream accepts at most `stream_window` unread bytes
/// (the connection 16 times that).
pub async fn connect(addr: SocketAddr, trust: &Trust, stream_window: u32) -> Result<RawConn, Error> {
    let tls = tls_config(trust, quaver_proto::ALPN_QUAVER)?;
    let mut qc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?,
    ));
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(stream_window.into());
    t.receive_window((u64::from(stream_window) * 16).try_into().map_err(transport)?);
    qc.transport_config(Arc::new(t));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).map_err(transport)?;
    let conn = endpoint
        .connect_with(qc, addr, "localhost")
        .map_err(transport)?
        .await
        .map_err(transport)?;
    Ok(RawConn {
        conn,
        _endpoint: endpoint,
    })
}

impl RawConn {
    /// Opens the control stream, says `Hello` with `token` and reads `Ready`.
    pub async fn hello(
        &self,
        token: String,
    ) -> Result<(quinn::SendStream, FramedRead<quinn::RecvStream>, Ready), Error> {
        let (mut tx, rx) = self.conn.open_bi().await.map_err(transport)?;
        let hello = ClientControl::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: Some(token),
            device: DeviceKind::Desktop,
            resume: None,
            compression: Compression::None,
        });
        write_msg(&mut tx, &hello).await.map_err(transport)?;
        let mut rx = FramedRead::new(rx, quaver_proto::HARD_MAX_FRAME);
        match rx.next::<ServerControl>().await {
            Ok(Some(ServerControl::Ready(r))) => Ok((tx, rx, *r)),
            other => Err(Error::Protocol(format!("expected Ready, got {other:?}"))),
        }
    }

    /// Opens a lane.
    pub async fn lane(&self, lane: Lane) -> Result<(quinn::SendStream, FramedRead<quinn::RecvStream>), Error> {
        let (mut tx, rx) = self.conn.open_bi().await.map_err(transport)?;
        write_msg(&mut tx, &StreamOpen::Lane(lane)).await.map_err(transport)?;
        Ok((tx, FramedRead::new(rx, quaver_proto::HARD_MAX_FRAME)))
    }

    /// Opens a fetch stream with `req` and finishes it, without reading the reply.
    pub async fn fetch_unread(
        &self,
        req: quaver_proto::FetchRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
        let (mut tx, rx) = self.conn.open_bi().await.map_err(transport)?;
        write_msg(&mut tx, &StreamOpen::Fetch(req)).await.map_err(transport)?;
        tx.finish().map_err(transport)?;
        Ok((tx, rx))
    }
}
