//! A small HTTP/1.1 client for webhook deliveries: hyper's connection API (hyper is already
//! in the tree through axum), TLS through tokio-rustls with the system's trust roots (plus
//! an optional CA file), and a pool of idle keep-alive connections per origin. A client
//! crate (reqwest) would bring a second HTTP stack for one POST.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Most of an answer's body read (the rest closes the connection instead).
const MAX_ANSWER: usize = 64 * 1024;
/// Idle connections kept per origin.
const IDLE_PER_ORIGIN: usize = 32;

/// What an endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    /// HTTP status.
    pub(super) status: u16,
    /// `Retry-After` in seconds, if given as seconds.
    pub(super) retry_after: Option<Duration>,
    /// The body (up to 64 KiB; empty when longer).
    pub(super) body: Bytes,
}

/// The client (cheap to share).
pub(super) struct Client {
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client trusting the system's roots and, if given, the certificates in `ca_file`.
    pub(super) fn new(ca_file: Option<&std::path::Path>) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "reading a system trust root for webhooks failed");
        }
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(cert.map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?)
                    .map_err(|e| anyhow::anyhow!("adding {}: {e}", path.display()))?;
            }
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// POSTs `body` to `url` with `headers`, all within `timeout`.
    pub(super) async fn post(
        &self,
        url: &url::Url,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(timeout, self.post_inner(url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn post_inner(&self, url: &url::Url, headers: &[(&str, String)], body: Bytes) -> Result<Answer, String> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            s => return Err(format!("unsupported scheme {s:?}")),
        };
        let host = url.host_str().ok_or("the URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let origin = format!("{}://{host}:{port}", url.scheme());
        let mut sender = match self.take_idle(&origin) {
            Some(s) => s,
            None => self.connect(&host, port, https).await?,
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("Quaver-Webhooks/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let answer = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the answer (bounded) so the connection can carry the next request.
        let body = match Limited::new(answer.into_body(), MAX_ANSWER).collect().await {
            Ok(b) => {
                self.give_back(origin, sender);
                b.to_bytes()
            }
            Err(_) => Bytes::new(),
        };
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    fn take_idle(&self, origin: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(origin)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, origin: String, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(origin).or_default();
        if list.len() < IDLE_PER_ORIGIN {
            list.push(sender);
        }
    }

    async fn connect(&self, host: &str, port: u16, https: bool) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if https {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("server name {host:?}: {e}"))?;
            Box::new(
                self.tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}: {e}"))?,
            )
        } else {
            Box::new(tcp)
        };
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "webhook connection ended");
            }
        });
        Ok(sender)
    }
}
