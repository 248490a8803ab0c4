//! The server API over plain HTTP/1.1, as a backend calls it: one request per connection,
//! with a key, an answer parsed into status, headers and JSON.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use quaver::config::{ApiKeyConfig, Config};
use serde_json::Value;

/// An answer: status, headers (lower-case names), body as JSON (`Null` when empty or not
/// JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// The body's `field` as a string (ids are strings).
    pub fn s(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {}", self.body))
            .to_string()
    }
}

/// One request to the API port.
pub async fn call(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the API answers in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    // Answers are small: hyper sends them with Content-Length, or chunked.
    let body = if headers.get("transfer-encoding").is_some_and(|v| v == "chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// The id of the first text channel in a guild's details (`GET /api/v1/guilds/{id}`).
pub fn text_channel_of(details: &serde_json::Value) -> String {
    details["channels"]
        .as_array()
        .expect("the guild's channels")
        .iter()
        .find(|c| c["kind"] == "text")
        .expect("a text channel")["id"]
        .as_str()
        .expect("a channel id")
        .to_string()
}

/// Adds an all-scopes key and a read-only key to `c`.
pub fn with_keys(c: &mut Config) -> (String, String) {
    let (admin, admin_hash) = quaver::api::auth::mint("backend").unwrap();
    let (reader, reader_hash) = quaver::api::auth::mint("reader").unwrap();
    c.api.keys = vec![
        ApiKeyConfig {
            id: "backend".into(),
            secret_sha256: admin_hash,
            scopes: vec!["admin".into()],
        },
        ApiKeyConfig {
            id: "reader".into(),
            secret_sha256: reader_hash,
            scopes: vec!["messages:read".into()],
        },
    ];
    (admin, reader)
}
