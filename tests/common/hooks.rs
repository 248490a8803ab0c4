//! A webhook receiver on loopback for tests: it records every request (headers and body),
//! answers as told (a status, a delay, or 200), and checks signatures with its own HMAC
//! (ring), independent of the server's signing code.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::Value;

/// How to answer one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// This status at once.
    Status(u16),
    /// This status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// 200 after this long (longer than the server's timeout: a timeout).
    Slow(Duration),
    /// This status after this long (shorter than the server's timeout: an answer).
    After(u16, Duration),
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The body.
    pub body: String,
    /// What it was answered (200 unless told otherwise).
    pub answered: u16,
    /// Requests being answered when it came, itself included.
    pub in_flight: usize,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a webhook body is JSON")
    }
}

#[derive(Default)]
struct State {
    plan: Mutex<VecDeque<Reply>>,
    got: Mutex<Vec<Received>>,
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts a request as being answered while it lives.
struct Answering<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on `addr` (port 0: any).
    pub async fn start(addr: SocketAddr) -> Receiver {
        let state = Arc::new(State::default());
        let st = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let st = st.clone();
                async move { answer(&st, &headers, body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.expect("receiver binds");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, task }
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests this way (then 200).
    pub fn plan(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.plan.lock().unwrap().extend(replies);
    }

    /// Everything received so far.
    pub fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// Stops listening (connections refused from now on).
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

async fn answer(st: &State, headers: &HeaderMap, body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let in_flight = st.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let _answering = Answering(&st.in_flight);
    let reply = st.plan.lock().unwrap().pop_front();
    let (status, retry_after) = match reply {
        None | Some(Reply::Slow(_)) => (200, None),
        Some(Reply::Status(s) | Reply::After(s, _)) => (s, None),
        Some(Reply::RetryAfter(s, secs)) => (s, Some(secs)),
    };
    // Recorded on arrival (the order requests came in); a slow answer as not answered: the
    // server gives up on it (a timeout) before it ends.
    st.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
        answered: if matches!(reply, Some(Reply::Slow(_))) {
            0
        } else {
            status
        },
        in_flight,
    });
    if let Some(Reply::Slow(d) | Reply::After(_, d)) = reply {
        tokio::time::sleep(d).await;
    }
    let mut r = axum::http::StatusCode::from_u16(status).unwrap().into_response();
    if let Some(s) = retry_after {
        r.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

/// Whether `r` carries a valid `v1` signature by `secret` (`whsec_<base64>`), computed here
/// from the Standard Webhooks definition: base64(HMAC-SHA256(key, "id.timestamp.body")).
pub fn signed_by(r: &Received, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let tag = ring::hmac::sign(&key, format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let want = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref()));
    r.signature.split(' ').any(|s| s == want)
}

/// Every request's body matches its headers and signature, and for each key the requests
/// never go back in `key_seq` (a retry repeats one; the next is sent only after it was
/// answered 2xx).
pub fn check_signed_and_ordered(got: &[Received], secret: &str) {
    let mut last: HashMap<String, (u64, bool)> = HashMap::new();
    for g in got {
        assert!(signed_by(g, secret), "signature of {g:?}");
        let v = g.json();
        assert_eq!(v["id"], g.id.as_str());
        let key = v["key"].as_str().unwrap().to_string();
        let seq = v["key_seq"].as_u64().unwrap();
        let ok = (200..300).contains(&g.answered);
        if let Some((prev, prev_ok)) = last.get(&key) {
            if *prev_ok {
                assert!(seq > *prev, "key {key}: {seq} sent after {prev} was delivered");
            } else {
                assert_eq!(seq, *prev, "key {key}: {seq} sent while {prev} was still failing");
            }
        }
        last.insert(key, (seq, ok));
    }
}
