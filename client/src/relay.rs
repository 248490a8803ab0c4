//! A UDP relay for failure tests and benchmarks: sits between clients and a server on
//! loopback and can kill one client's path (packets dropped both ways, nobody closes
//! anything), as a crash, a dead Wi-Fi or a NAT timeout would.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// A UDP relay (a small NAT) between clients and the server, to kill a connection
/// without either side closing it, as a crash or a dead network would. Each client address
/// gets its own upstream socket, so the server sees it as its own peer.
#[derive(Debug)]
pub struct Relay {
    /// Where clients should connect.
    pub addr: SocketAddr,
    /// Drop everything.
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Client addresses whose packets are dropped both ways (killed connections).
    blocked: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<SocketAddr>>>,
    /// The client address seen last.
    last: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
}

impl Relay {
    /// Starts relaying to `server` (panics only if no loopback UDP socket can be bound:
    /// meant for tests and benchmarks).
    pub async fn start(server: SocketAddr) -> Relay {
        use std::collections::HashMap;
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let front = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("a loopback UDP socket"),
        );
        let addr = front.local_addr().expect("a bound socket has an address");
        let cut = Arc::new(AtomicBool::new(false));
        let blocked: Arc<Mutex<std::collections::HashSet<SocketAddr>>> = Arc::default();
        let last: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let relay = Relay {
            addr,
            cut: cut.clone(),
            blocked: blocked.clone(),
            last: last.clone(),
        };
        tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                if cut.load(Ordering::Relaxed) || blocked.lock().unwrap_or_else(|p| p.into_inner()).contains(&from) {
                    continue;
                }
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                let up = match upstreams.get(&from) {
                    Some(u) => u.clone(),
                    None => {
                        // Toward the server from whichever address reaches it (loopback
                        // in tests, another network namespace in `quaver-bench netem`).
                        let Ok(u) = tokio::net::UdpSocket::bind(crate::unspecified_for(server)).await else {
                            continue;
                        };
                        if u.connect(server).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        upstreams.insert(from, u.clone());
                        let (u2, front2, cut2, blocked2) = (u.clone(), front.clone(), cut.clone(), blocked.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = u2.recv(&mut buf).await {
                                if cut2.load(Ordering::Relaxed)
                                    || blocked2.lock().unwrap_or_else(|p| p.into_inner()).contains(&from)
                                {
                                    continue;
                                }
                                let _ = front2.send_to(&buf[..n], from).await;
                            }
                        });
                        u
                    }
                };
                let _ = up.send(&buf[..n]).await;
            }
        });
        relay
    }

    /// Drops every packet from now on, both ways, for everyone.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Lets packets through again after [`Relay::cut`] (the network is back).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }

    /// Kills the connection of the client seen last: its packets are dropped from now on,
    /// both ways; a new connection (from a new address) passes.
    pub fn kill(&self) {
        if let Some(c) = *self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            self.blocked.lock().unwrap_or_else(|p| p.into_inner()).insert(c);
        }
    }
}
