//! Server CPU per binary WebSocket frame, fastwebsockets against tokio-tungstenite, on
//! loopback. The server runs on its own thread (a current-thread runtime); its CPU time is
//! that thread's (CLOCK_THREAD_CPUTIME_ID). The client is the same for both (tungstenite).
//!
//! Cases: the server sends N frames of 100 B (a chat event) and of 1 KiB, writing them one by
//! one into a buffer and flushing every 32 (and at the end) with either crate; the client sends N masked frames of 100 B that
//! the server reads. Each case five times; the median is printed.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const N: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lib {
    Fast,
    Tungstenite,
}

#[derive(Clone, Copy, Debug)]
enum Case {
    Send(usize),
    Receive(usize),
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The server's side of the handshake, by hand for fastwebsockets (tungstenite's own for it).
async fn handshake(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.expect("read request");
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ").or_else(|| l.strip_prefix("sec-websocket-key: ")))
        .expect("a key")
        .trim();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(resp.as_bytes()).await.expect("write response");
}

async fn serve(lib: Lib, case: Case, l: TcpListener) -> Duration {
    let (mut s, _) = l.accept().await.expect("accept");
    s.set_nodelay(true).expect("nodelay");
    match lib {
        Lib::Fast => {
            handshake(&mut s).await;
            // Buffered both ways, as tungstenite is: frames are written into the buffer and
            // reach the socket at a flush (every 32) — one syscall per batch, not per frame.
            let s = tokio::io::BufStream::with_capacity(64 * 1024, 64 * 1024, s);
            let mut ws = fastwebsockets::WebSocket::after_handshake(s, fastwebsockets::Role::Server);
            ws.set_auto_close(true);
            ws.set_writev(false);
            let start = thread_cpu();
            match case {
                Case::Send(size) => {
                    let payload = vec![7u8; size];
                    for i in 0..N {
                        let f = fastwebsockets::Frame::binary(fastwebsockets::Payload::Borrowed(&payload));
                        ws.write_frame(f).await.expect("write");
                        if i % 32 == 31 {
                            ws.flush().await.expect("flush");
                        }
                    }
                    ws.flush().await.expect("flush");
                    let cpu = thread_cpu() - start;
                    // Wait for the client's word that it has everything.
                    let _ = ws.read_frame().await;
                    cpu
                }
                Case::Receive(_) => {
                    let mut got = 0;
                    while got < N {
                        let f = ws.read_frame().await.expect("read");
                        if f.opcode == fastwebsockets::OpCode::Binary {
                            got += 1;
                        }
                    }
                    thread_cpu() - start
                }
            }
        }
        Lib::Tungstenite => {
            let mut ws = tokio_tungstenite::accept_async(s).await.expect("accept ws");
            let start = thread_cpu();
            match case {
                Case::Send(size) => {
                    let payload = tokio_tungstenite::tungstenite::Bytes::from(vec![7u8; size]);
                    for i in 0..N {
                        ws.feed(Message::Binary(payload.clone())).await.expect("feed");
                        if i % 32 == 31 {
                            ws.flush().await.expect("flush");
                        }
                    }
                    ws.flush().await.expect("flush");
                    let cpu = thread_cpu() - start;
                    let _ = ws.next().await;
                    cpu
                }
                Case::Receive(_) => {
                    let mut got = 0;
                    while got < N {
                        if let Some(Ok(Message::Binary(_))) = ws.next().await {
                            got += 1;
                        }
                    }
                    thread_cpu() - start
                }
            }
        }
    }
}

async fn client(addr: std::net::SocketAddr, case: Case) {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), s)
        .await
        .expect("client handshake");
    match case {
        Case::Send(_) => {
            let mut got = 0;
            while got < N {
                if let Some(Ok(Message::Binary(_))) = ws.next().await {
                    got += 1;
                }
            }
            ws.send(Message::Binary(vec![1].into())).await.expect("done");
        }
        Case::Receive(size) => {
            let payload = tokio_tungstenite::tungstenite::Bytes::from(vec![9u8; size]);
            for i in 0..N {
                ws.feed(Message::Binary(payload.clone())).await.expect("feed");
                if i % 32 == 31 {
                    ws.flush().await.expect("flush");
                }
            }
            ws.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn run(lib: Lib, case: Case) -> Duration {
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let l = rt().block_on(async { TcpListener::bind("127.0.0.1:0").await.expect("bind") });
    let addr = l.local_addr().expect("addr");
    let std_l = l.into_std().expect("std listener");
    let server = std::thread::spawn(move || {
        let rt = rt();
        rt.block_on(async move { serve(lib, case, TcpListener::from_std(std_l).expect("listener")).await })
    });
    std::thread::spawn(move || rt().block_on(client(addr, case)))
        .join()
        .expect("client");
    server.join().expect("server")
}

fn main() {
    println!("frames per run: {N}; server CPU per frame, median of 5 (ns)");
    for case in [Case::Send(100), Case::Send(1024), Case::Receive(100)] {
        for lib in [Lib::Fast, Lib::Tungstenite] {
            let mut v: Vec<f64> = (0..5)
                .map(|_| {
                    let t0 = Instant::now();
                    let cpu = run(lib, case);
                    let _ = t0;
                    cpu.as_nanos() as f64 / N as f64
                })
                .collect();
            v.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
            println!(
                "{case:?}\t{lib:?}\tmedian {:.0} ns\truns {}",
                v[2],
                v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ")
            );
        }
    }
}
