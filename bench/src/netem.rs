//! Real networks on one machine (issue 29): the client and the server in network namespaces
//! of their own, joined through a user-space bridge that delays, drops and reorders frames
//! per direction, blacks the link out, or drops every UDP datagram (a network that blocks
//! UDP). The kernel here has no `netem` qdisc (nor `prio`/`gact` to drop with), so the
//! impairment is ours: two veth pairs whose root-namespace ends carry no address, read and
//! written with `AF_PACKET` sockets (`pnet_datalink`), one reader and one writer thread per
//! direction, frames released from a heap ordered by their due time.
//!
//! ```text
//!  netns qnc<id>            root namespace (this process)          netns qns<id>
//!  qc<id> 10.99.x.1 ── veth ── qbc<id> ⇄ bridge ⇄ qbs<id> ── veth ── qs<id> 10.99.x.2
//! ```
//!
//! [`run`] builds that, starts `quaver serve` in the server's namespace, runs a scenario of
//! this bench (`chat`, `voice`, …) in the client's namespace with `--target` pointing at it,
//! applies a blackout at a set time after the scenario starts measuring, and removes
//! everything afterwards (also when the run fails). Root only; every load is bounded by the
//! scenario's own counts and by `--timeout`.
//!
//! Offloads are turned off on the namespaces' veth ends (`ethtool`): with them on, the
//! kernel hands the bridge TCP and UDP super-frames larger than the MTU and frames with
//! checksums left for hardware that does not exist on the other side.

use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// What the link does to each frame, in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Impairment {
    /// One-way delay.
    pub(crate) delay: Duration,
    /// Extra one-way delay, uniform in [0, jitter) per frame: frames may overtake each other.
    pub(crate) jitter: Duration,
    /// Probability a frame is dropped.
    pub(crate) loss: f64,
    /// Every frame is dropped.
    pub(crate) blackout: bool,
    /// Every UDP datagram (IPv4 or IPv6) is dropped; the rest passes.
    pub(crate) drop_udp: bool,
    /// A NAT in front of the client rebound (IPv4 UDP only): the client's ports look
    /// different to the server from now on ([`nat_out`]), and what the server sends to the
    /// ports it knew is dropped ([`nat_in`]), as when a NAT's mapping expired and a new one
    /// was made. The client itself sees nothing change.
    pub(crate) nat_rebound: bool,
    /// The link's rate, bits per second (0: unlimited). Frames leave one after another at
    /// this rate, then take the delay: a bottleneck with a queue in front of it.
    pub(crate) rate_bps: f64,
    /// The most a frame may wait in the bottleneck's queue; one that would wait longer is
    /// dropped (a drop-tail queue of `rate × queue` bytes).
    pub(crate) queue: Duration,
}

/// How far a rebound NAT moves a client's UDP port: from the ephemeral range
/// (32768–60999) to below it, so a new port is never one the server knew.
const NAT_SHIFT: u16 = 30_000;

/// Where an IPv4 UDP frame's UDP header starts (`None`: not IPv4 UDP, or a fragment).
fn ipv4_udp_header(frame: &[u8]) -> Option<usize> {
    if frame.get(12..14) != Some(&[0x08, 0x00]) || frame.get(14 + 9) != Some(&17) {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    let frag = u16::from_be_bytes([*frame.get(14 + 6)?, *frame.get(14 + 7)?]);
    if ihl < 20 || frag & 0x1fff != 0 || frame.len() < 14 + ihl + 8 {
        return None;
    }
    Some(14 + ihl)
}

/// Client → server through a rebound NAT: the source port moved by [`NAT_SHIFT`]. The UDP
/// checksum is set to 0 ("none", allowed over IPv4) rather than recomputed.
fn nat_out(frame: &mut [u8]) {
    let Some(u) = ipv4_udp_header(frame) else { return };
    let port = u16::from_be_bytes([frame[u], frame[u + 1]]);
    if port >= 32_768 {
        frame[u..u + 2].copy_from_slice(&(port - NAT_SHIFT).to_be_bytes());
        frame[u + 6..u + 8].copy_from_slice(&[0, 0]);
    }
}

/// Server → client through a rebound NAT: to a new port, translated back; to a port of the
/// old mapping, `false` (dropped: the NAT no longer knows it).
fn nat_in(frame: &mut [u8]) -> bool {
    let Some(u) = ipv4_udp_header(frame) else { return true };
    let port = u16::from_be_bytes([frame[u + 2], frame[u + 3]]);
    if port >= 32_768 {
        return false;
    }
    if let Some(back) = port.checked_add(NAT_SHIFT).filter(|p| *p >= 32_768) {
        frame[u + 2..u + 4].copy_from_slice(&back.to_be_bytes());
        frame[u + 6..u + 8].copy_from_slice(&[0, 0]);
    }
    true
}

/// What the link did, per direction.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) forwarded: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Dropped because the bottleneck's queue was full (counted in `dropped` too).
    pub(crate) overflowed: AtomicU64,
}

/// The bottleneck of a rate-limited link, per direction: when it is next free.
#[derive(Debug)]
struct Bottleneck {
    free_at: Instant,
}

impl Bottleneck {
    /// When a frame of `len` bytes arriving at `now` has gone through (before the delay), or
    /// `None` if it would wait longer than `queue` (dropped).
    fn admit(&mut self, now: Instant, len: usize, rate_bps: f64, queue: Duration) -> Option<Instant> {
        if rate_bps <= 0.0 {
            return Some(now);
        }
        let start = self.free_at.max(now);
        if start - now > queue {
            return None;
        }
        self.free_at = start + Duration::from_secs_f64(len as f64 * 8.0 / rate_bps);
        Some(self.free_at)
    }
}

/// A frame waiting for its due time (ordered so the heap's top is the earliest).
struct Due {
    at: Instant,
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// xorshift64*: loss and jitter decisions, seeded per run (no dependency for a coin).
struct Coin(u64);

impl Coin {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether an Ethernet frame carries UDP (IPv4 protocol 17, or IPv6 next header 17).
fn is_udp(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.get(14 + 9) == Some(&17),
        Some([0x86, 0xdd]) => frame.get(14 + 6) == Some(&17),
        _ => false,
    }
}

/// The bridge: runs until dropped.
pub(crate) struct Bridge {
    params: Arc<Mutex<Impairment>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Client → server, then server → client.
    pub(crate) counts: [Arc<Counts>; 2],
}

impl Bridge {
    /// Bridges interfaces `a` and `b` (of this namespace). `a_mac`/`b_mac` are the MAC
    /// addresses of the hosts behind each: only their frames are taken from that side (the
    /// packet sockets also see what the bridge itself writes).
    pub(crate) fn start(a: &str, a_mac: [u8; 6], b: &str, b_mac: [u8; 6], seed: u64) -> anyhow::Result<Self> {
        let params = Arc::new(Mutex::new(Impairment::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = [Arc::new(Counts::default()), Arc::new(Counts::default())];
        let (a_tx, a_rx) = channel(a)?;
        let (b_tx, b_rx) = channel(b)?;
        let mut threads = Vec::new();
        for (i, (rx, mac, tx)) in [(a_rx, a_mac, b_tx), (b_rx, b_mac, a_tx)].into_iter().enumerate() {
            let queue = Arc::new((Mutex::new(BinaryHeap::<Due>::new()), Condvar::new()));
            let (p, s, q, c) = (params.clone(), stop.clone(), queue.clone(), counts[i].clone());
            let coin = Coin(seed.wrapping_mul(2 * i as u64 + 1) | 1);
            let toward_server = i == 0;
            threads.push(std::thread::spawn(move || {
                read_side(rx, mac, toward_server, p, s, q, c, coin)
            }));
            let (s, q) = (stop.clone(), queue);
            threads.push(std::thread::spawn(move || write_side(tx, s, q)));
        }
        Ok(Self {
            params,
            stop,
            threads,
            counts,
        })
    }

    /// Changes what the link does from now on (frames already queued keep their due time).
    pub(crate) fn set(&self, f: impl FnOnce(&mut Impairment)) {
        f(&mut self.params.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Tx = Box<dyn pnet_datalink::DataLinkSender>;
type Rx = Box<dyn pnet_datalink::DataLinkReceiver>;

/// The kernel receive buffer of the bridge's packet sockets. With the default (208 KiB) a
/// burst from 200 connections at once — the server answering 200 moved clients, say —
/// overflowed it, and frames were lost that the link never decided to lose (seen as path
/// challenges that never arrived). Capped by `net.core.rmem_max` (4 MiB here).
const BRIDGE_RCVBUF: usize = 8 << 20;

fn channel(name: &str) -> anyhow::Result<(Tx, Rx)> {
    use std::os::fd::IntoRawFd as _;
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .with_context(|| format!("no interface {name}"))?;
    // ETH_P_ALL (0x0003), in network byte order as AF_PACKET wants it; pnet binds the
    // socket to the interface and owns (and closes) it from here on.
    let socket = socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(i32::from(0x0003u16.to_be()))),
    )
    .with_context(|| format!("AF_PACKET on {name} (root only)"))?;
    socket
        .set_recv_buffer_size(BRIDGE_RCVBUF)
        .context("the bridge's receive buffer")?;
    let cfg = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        read_buffer_size: 65536,
        write_buffer_size: 65536,
        promiscuous: true,
        socket_fd: Some(socket.into_raw_fd()),
        ..Default::default()
    };
    match pnet_datalink::channel(&iface, cfg).with_context(|| format!("AF_PACKET on {name} (root only)"))? {
        pnet_datalink::Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => bail!("{name}: not an Ethernet channel"),
    }
}

type Queue = Arc<(Mutex<BinaryHeap<Due>>, Condvar)>;

#[allow(clippy::too_many_arguments)]
fn read_side(
    mut rx: Rx,
    mac: [u8; 6],
    toward_server: bool,
    params: Arc<Mutex<Impairment>>,
    stop: Arc<AtomicBool>,
    queue: Queue,
    counts: Arc<Counts>,
    mut coin: Coin,
) {
    let mut seq = 0;
    let mut bottleneck = Bottleneck {
        free_at: Instant::now(),
    };
    while !stop.load(Ordering::Relaxed) {
        let frame = match rx.next() {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                eprintln!("netem bridge: reading failed: {e}");
                return;
            }
        };
        // Only what the host on this side sent (not what the bridge wrote out here).
        if frame.get(6..12) != Some(&mac[..]) {
            continue;
        }
        let p = *params.lock().unwrap_or_else(|p| p.into_inner());
        if p.blackout || (p.drop_udp && is_udp(frame)) || (p.loss > 0.0 && coin.unit() < p.loss) {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut frame = frame.to_vec();
        if p.nat_rebound {
            if toward_server {
                nat_out(&mut frame);
            } else if !nat_in(&mut frame) {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let Some(through) = bottleneck.admit(Instant::now(), frame.len(), p.rate_bps, p.queue) else {
            counts.overflowed.fetch_add(1, Ordering::Relaxed);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let jitter = p.jitter.mul_f64(coin.unit());
        seq += 1;
        let due = Due {
            at: through + p.delay + jitter,
            seq,
            frame,
        };
        let (heap, wake) = &*queue;
        heap.lock().unwrap_or_else(|p| p.into_inner()).push(due);
        wake.notify_one();
        counts.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_side(mut tx: Tx, stop: Arc<AtomicBool>, queue: Queue) {
    let (heap, wake) = &*queue;
    let mut q = heap.lock().unwrap_or_else(|p| p.into_inner());
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match q.peek() {
            Some(d) if d.at <= now => {
                let d = q.pop().expect("peeked");
                drop(q);
                if let Some(Err(e)) = tx.send_to(&d.frame, None) {
                    // A frame the other side's MTU refuses is a set-up error worth seeing.
                    eprintln!("netem bridge: writing a {}-byte frame failed: {e}", d.frame.len());
                }
                q = heap.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            Some(d) => d.at - now,
            None => Duration::from_millis(50),
        };
        q = wake.wait_timeout(q, wait).unwrap_or_else(|p| p.into_inner()).0;
    }
}

/// Two namespaces and the veth pairs between them and this one.
pub(crate) struct Topology {
    pub(crate) client_ns: String,
    pub(crate) server_ns: String,
    /// The client's interface (in its namespace), and the server's (in its).
    pub(crate) client_dev: String,
    pub(crate) server_dev: String,
    /// The bridge's ends (root namespace): toward the client, toward the server.
    pub(crate) ends: (String, String),
    pub(crate) client_ip: std::net::Ipv4Addr,
    pub(crate) server_ip: std::net::Ipv4Addr,
    pub(crate) client_mac: [u8; 6],
    pub(crate) server_mac: [u8; 6],
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {} (iproute2 and ethtool are needed)", args[0]))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The offloads turned off on every end (see the module's docs).
const OFFLOADS: [&str; 5] = ["tx", "sg", "tso", "gso", "gro"];

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Topology {
    /// Creates the namespaces and links of run `id` (unique among runs at once).
    pub(crate) fn create(id: u32) -> anyhow::Result<Self> {
        let x = (id % 250) as u8;
        let t = Self {
            client_ns: format!("qnc{id}"),
            server_ns: format!("qns{id}"),
            client_dev: format!("qc{id}"),
            server_dev: format!("qs{id}"),
            ends: (format!("qbc{id}"), format!("qbs{id}")),
            client_ip: std::net::Ipv4Addr::new(10, 99, x, 1),
            server_ip: std::net::Ipv4Addr::new(10, 99, x, 2),
            client_mac: [0x02, 0x51, 0, 0, x, 1],
            server_mac: [0x02, 0x51, 0, 0, x, 2],
        };
        // Whatever a killed earlier run with this id left.
        t.remove();
        let (cv, sv) = (t.client_dev.clone(), t.server_dev.clone());
        let (cm, sm) = (mac_text(t.client_mac), mac_text(t.server_mac));
        let mut steps: Vec<Vec<String>> = vec![
            vec!["ip", "netns", "add", &t.client_ns],
            vec!["ip", "netns", "add", &t.server_ns],
            vec![
                "ip", "link", "add", &cv, "address", &cm, "type", "veth", "peer", "name", &t.ends.0,
            ],
            vec![
                "ip", "link", "add", &sv, "address", &sm, "type", "veth", "peer", "name", &t.ends.1,
            ],
            vec!["ip", "link", "set", &cv, "netns", &t.client_ns],
            vec!["ip", "link", "set", &sv, "netns", &t.server_ns],
            vec![
                "ip",
                "-n",
                &t.client_ns,
                "addr",
                "add",
                &format!("{}/24", t.client_ip),
                "dev",
                &cv,
            ],
            vec![
                "ip",
                "-n",
                &t.server_ns,
                "addr",
                "add",
                &format!("{}/24", t.server_ip),
                "dev",
                &sv,
            ],
            vec!["ip", "-n", &t.client_ns, "link", "set", "lo", "up"],
            vec!["ip", "-n", &t.server_ns, "link", "set", "lo", "up"],
            vec!["ip", "-n", &t.client_ns, "link", "set", &cv, "up"],
            vec!["ip", "-n", &t.server_ns, "link", "set", &sv, "up"],
            vec!["ip", "link", "set", &t.ends.0, "up"],
            vec!["ip", "link", "set", &t.ends.1, "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(str::to_string).collect())
        .collect();
        // Offloads off on all four ends, before they come up.
        for (ns, dev) in [
            (Some(&t.client_ns), &cv),
            (Some(&t.server_ns), &sv),
            (None, &t.ends.0),
            (None, &t.ends.1),
        ] {
            let mut step: Vec<String> = match ns {
                Some(ns) => ["ip", "netns", "exec", ns].map(String::from).to_vec(),
                None => Vec::new(),
            };
            step.extend(["ethtool", "-K", dev].map(String::from));
            step.extend(OFFLOADS.iter().flat_map(|o| [o.to_string(), "off".to_string()]));
            steps.insert(steps.len() - 4, step);
        }
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = sh(&args) {
                t.remove();
                return Err(e);
            }
        }
        // The bridge's ends carry no address: the root namespace must not talk on them.
        for end in [&t.ends.0, &t.ends.1] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{end}/disable_ipv6"), "1");
        }
        Ok(t)
    }

    /// The client moves to another address of its network (as on another Wi-Fi access
    /// point or after a DHCP renewal): `.3` is added, the old address deleted (the new one
    /// takes its place: `promote_secondaries`). Sockets bound to the unspecified address
    /// send from `.3` from now on; what the server sends to the old address is lost.
    ///
    /// The server's neighbour entry for `.3` is made first, as a router in front of a real
    /// server would already have its next hop resolved: here client and server share one
    /// link, and the first packets of 200 moved connections waiting for an ARP answer
    /// overflowed the kernel's queue of unresolved packets (`unres_qlen_bytes`), losing the
    /// servers' path challenges — an artefact of the emulation, not of a real network.
    pub(crate) fn readdress(&self) -> anyhow::Result<std::net::Ipv4Addr> {
        let o = self.client_ip.octets();
        let new = std::net::Ipv4Addr::new(o[0], o[1], o[2], 3);
        let (ip, mac) = (new.to_string(), mac_text(self.client_mac));
        sh(&[
            "ip",
            "-n",
            &self.server_ns,
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac,
            "dev",
            &self.server_dev,
            "nud",
            "permanent",
        ])?;
        let promote = format!(
            "echo 1 > /proc/sys/net/ipv4/conf/{}/promote_secondaries",
            self.client_dev
        );
        sh(&["ip", "netns", "exec", &self.client_ns, "sh", "-c", &promote])?;
        let (new_cidr, old_cidr) = (format!("{new}/24"), format!("{}/24", self.client_ip));
        sh(&[
            "ip",
            "-n",
            &self.client_ns,
            "addr",
            "add",
            &new_cidr,
            "dev",
            &self.client_dev,
        ])?;
        sh(&[
            "ip",
            "-n",
            &self.client_ns,
            "addr",
            "del",
            &old_cidr,
            "dev",
            &self.client_dev,
        ])?;
        Ok(new)
    }

    /// Deletes what [`Topology::create`] made (deleting a namespace deletes its veth ends,
    /// and with them their peers).
    fn remove(&self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for end in [&self.ends.0, &self.ends.1] {
            let _ = Command::new("ip")
                .args(["link", "del", end])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A child process killed (and reaped) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `quaver-bench netem` was asked.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) server_bin: std::path::PathBuf,
    pub(crate) impairment: Impairment,
    /// A blackout `(after, for)` counted from the scenario's start of measuring.
    pub(crate) blackout: Option<(Duration, Duration)>,
    /// The client's address changes this long after the start of measuring
    /// ([`Topology::readdress`]).
    pub(crate) readdress_at: Option<Duration>,
    /// A NAT in front of the client rebinds this long after the start of measuring
    /// ([`Impairment::nat_rebound`]).
    pub(crate) nat_rebind_at: Option<Duration>,
    /// The scenario and its arguments (`chat --sessions 200 …`); `--target` is added.
    pub(crate) scenario: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) seed: u64,
    /// Another system to measure instead of Quaver (the Socket.IO stand-in): this shell
    /// command runs in the server's namespace, and `scenario` is then a shell command for the
    /// client's, not one of this bench's scenarios. Both get `NETEM_SERVER_IP`. The server is
    /// taken as ready when it prints a line with "listening".
    pub(crate) server_cmd: Option<String>,
}

const SECRET: &str = "quaver-bench-netem-secret-0123456789abcdef";

/// Set on SIGINT or SIGTERM: the run stops and removes what it made.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs `plan.scenario` across the impaired link; its output is passed through, then the
/// link's own counts are printed.
pub(crate) fn run(plan: &Plan) -> anyhow::Result<()> {
    if !is_root() {
        bail!("netem needs root (network namespaces, AF_PACKET)");
    }
    let id = std::process::id() % 100_000;
    let topo = Topology::create(id)?;
    let bridge = Bridge::start(&topo.ends.0, topo.client_mac, &topo.ends.1, topo.server_mac, plan.seed)?;
    bridge.set(|p| *p = plan.impairment);
    let dir = std::env::temp_dir().join(format!("quaver-netem-{id}"));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let cfg = dir.join("bench.toml");
    std::fs::write(&cfg, include_str!("../running-server.toml"))?;
    let server_ip = topo.server_ip.to_string();
    let mut server = match &plan.server_cmd {
        None => Child(
            Command::new("ip")
                .args(["netns", "exec", &topo.server_ns])
                .arg(&plan.server_bin)
                .arg("serve")
                .env_remove("DATABASE_URL")
                .env_remove("REDIS_URL")
                .env("JWT_SECRET", SECRET)
                .env("QUAVER_CONFIG", &cfg)
                .env("QUAVER_LISTEN", format!("{server_ip}:4433"))
                .env("QUAVER_HTTP_LISTEN", format!("{server_ip}:8080"))
                .env("QUAVER_API_LISTEN", "127.0.0.1:0")
                .env("QUAVER_DATA_DIR", dir.join("data"))
                .env("QUAVER_CERT_DIR", dir.join("certs"))
                .env(
                    "QUAVER_LOG",
                    std::env::var("NETEM_SERVER_LOG_FILTER").unwrap_or_else(|_| "info".into()),
                )
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", plan.server_bin.display()))?,
        ),
        Some(cmd) => Child(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &topo.server_ns,
                    "sh",
                    "-c",
                    &format!("exec {cmd} 2>&1"),
                ])
                .env("NETEM_SERVER_IP", &server_ip)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting --server-cmd")?,
        ),
    };
    // `ip netns exec` (and `exec` in the shell) exec the server: its pid is the server's.
    let pid = server.0.id();
    // Ready once it reports its listeners; its log is drained after (warnings and errors
    // shown), so it never blocks on a full pipe.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log: Box<dyn std::io::Read + Send> = match plan.server_cmd {
        None => Box::new(server.0.stderr.take().context("the server's stderr")?),
        Some(_) => Box::new(server.0.stdout.take().context("the server's output")?),
    };
    // NETEM_SERVER_LOG=<file> keeps the server's whole log (with NETEM_SERVER_LOG_FILTER, a
    // QUAVER_LOG filter such as `info,quinn_proto=trace`, to see what a connection did).
    let mut keep = match std::env::var_os("NETEM_SERVER_LOG") {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(&path).context("NETEM_SERVER_LOG")?,
        )),
        None => None,
    };
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if (line.contains("quic=") && line.contains("http=")) || line.contains("listening") {
                let _ = ready_tx.send(());
            }
            if line.contains("WARN") || line.contains("ERROR") || line.contains("rror:") {
                eprintln!("server: {line}");
            }
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        bail!("the server did not report its listeners within 30 s");
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.client_ns]);
    match plan.server_cmd {
        None => {
            cmd.arg(std::env::current_exe().context("this binary")?)
                .args(&plan.scenario)
                .args(["--target", &format!("{server_ip}:4433")])
                .args(["--target-http", &format!("{server_ip}:8080")])
                .args(["--target-pid", &pid.to_string()])
                .env("JWT_SECRET", SECRET);
        }
        Some(_) => {
            cmd.args(["sh", "-c", &plan.scenario.join(" ")]);
        }
    }
    let mut scenario = Child(
        cmd.env("NETEM_SERVER_IP", &server_ip)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the scenario")?,
    );
    // The scenario says when it starts measuring ("measuring …", "speaking …"; the Socket.IO
    // stand-in's load generator: "connect: …", before its 2 s warm-up): the blackout is timed
    // from there. Its output is passed through.
    let started = Arc::new(Mutex::new(None::<Instant>));
    let mut relays = Vec::new();
    let outputs: [(Box<dyn std::io::Read + Send>, bool); 2] = [
        (
            Box::new(scenario.0.stdout.take().context("the scenario's stdout")?),
            true,
        ),
        (
            Box::new(scenario.0.stderr.take().context("the scenario's stderr")?),
            false,
        ),
    ];
    for (out, is_stdout) in outputs {
        let seen = started.clone();
        relays.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("measuring") || line.starts_with("speaking") || line.starts_with("connect:") {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(Instant::now);
                }
                if is_stdout {
                    let _ = writeln!(std::io::stdout(), "{line}");
                } else {
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
        }));
    }
    let deadline = Instant::now() + plan.timeout;
    let mut dark = false;
    let (mut readdressed, mut rebound) = (false, false);
    let status = loop {
        if let Some(s) = scenario.0.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the scenario ran past --timeout ({:?})", plan.timeout);
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let t0 = *started.lock().unwrap_or_else(|p| p.into_inner());
        let t = t0.map(|t0| t0.elapsed());
        if let (Some(at), Some(t)) = (plan.readdress_at, t)
            && !readdressed
            && t >= at
        {
            readdressed = true;
            let new = topo.readdress()?;
            eprintln!(
                "netem: the client's address changed {} → {new} at {:.2} s",
                topo.client_ip,
                t.as_secs_f64()
            );
        }
        if let (Some(at), Some(t)) = (plan.nat_rebind_at, t)
            && !rebound
            && t >= at
        {
            rebound = true;
            bridge.set(|p| p.nat_rebound = true);
            eprintln!(
                "netem: the client's NAT rebound (new ports) at {:.2} s",
                t.as_secs_f64()
            );
        }
        if let (Some((after, length)), Some(t)) = (plan.blackout, t) {
            let now_dark = t >= after && t < after + length;
            if now_dark != dark {
                dark = now_dark;
                bridge.set(|p| p.blackout = dark);
                eprintln!(
                    "netem: blackout {} at {:.2} s",
                    if dark { "begins" } else { "ends" },
                    t.as_secs_f64()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for r in relays {
        let _ = r.join();
    }
    if let Ok(Some(s)) = server.0.try_wait() {
        bail!("the server exited during the run: {s}");
    }
    let [up, down] = &bridge.counts;
    println!(
        "{}",
        serde_json::json!({
            "netem": {
                "delay_ms": plan.impairment.delay.as_secs_f64() * 1e3,
                "jitter_ms": plan.impairment.jitter.as_secs_f64() * 1e3,
                "loss": plan.impairment.loss,
                "rate_mbit": plan.impairment.rate_bps / 1e6,
                "queue_ms": plan.impairment.queue.as_secs_f64() * 1e3,
                "overflowed_up": up.overflowed.load(Ordering::Relaxed), "overflowed_down": down.overflowed.load(Ordering::Relaxed),
                "drop_udp": plan.impairment.drop_udp,
                "blackout": plan.blackout.map(|(a, l)| [a.as_secs_f64(), l.as_secs_f64()]),
                "readdress_at": plan.readdress_at.map(|a| a.as_secs_f64()),
                "nat_rebind_at": plan.nat_rebind_at.map(|a| a.as_secs_f64()),
                "frames_up": up.forwarded.load(Ordering::Relaxed), "dropped_up": up.dropped.load(Ordering::Relaxed),
                "frames_down": down.forwarded.load(Ordering::Relaxed), "dropped_down": down.dropped.load(Ordering::Relaxed),
            },
            "scenario_exit": status.code(),
        })
    );
    if !status.success() {
        bail!("the scenario failed across the link ({status})");
    }
    Ok(())
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_are_told_apart() {
        let mut v4 = vec![0u8; 14 + 20];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4[14 + 9] = 17;
        assert!(is_udp(&v4));
        v4[14 + 9] = 6;
        assert!(!is_udp(&v4), "TCP");
        let mut v6 = vec![0u8; 14 + 40];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14 + 6] = 17;
        assert!(is_udp(&v6));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!is_udp(&arp));
        assert!(!is_udp(&[0u8; 5]), "short frames are not UDP");
    }

    /// An IPv4 UDP frame from `src` to `dst` port, with a non-zero checksum.
    fn udp_v4(src: u16, dst: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[34..36].copy_from_slice(&src.to_be_bytes());
        f[36..38].copy_from_slice(&dst.to_be_bytes());
        f[40..42].copy_from_slice(&[0xab, 0xcd]);
        f
    }

    #[test]
    fn a_rebound_nat_moves_the_clients_ports_and_forgets_the_old_ones() {
        let mut out = udp_v4(45_000, 4433);
        nat_out(&mut out);
        assert_eq!(&out[34..38], &[(15_000u16 >> 8) as u8, 15_000u16 as u8, 0x11, 0x51]);
        assert_eq!(&out[40..42], &[0, 0], "checksum: none");
        // The server answers the new port: translated back.
        let mut back = udp_v4(4433, 15_000);
        assert!(nat_in(&mut back));
        assert_eq!(u16::from_be_bytes([back[36], back[37]]), 45_000);
        // To the port it knew before: the NAT has no mapping.
        assert!(!nat_in(&mut udp_v4(4433, 45_000)));
        // Not UDP, or a fragment: untouched and passed.
        let mut tcp = udp_v4(45_000, 80);
        tcp[14 + 9] = 6;
        let before = tcp.clone();
        nat_out(&mut tcp);
        assert!(nat_in(&mut tcp));
        assert_eq!(tcp, before);
        let mut frag = udp_v4(4433, 45_000);
        frag[14 + 7] = 1;
        assert!(nat_in(&mut frag));
    }

    #[test]
    fn the_heap_releases_earliest_first_and_ties_in_arrival_order() {
        let t = Instant::now();
        let mut h = BinaryHeap::new();
        for (ms, seq) in [(30, 1), (10, 2), (10, 3), (20, 4)] {
            h.push(Due {
                at: t + Duration::from_millis(ms),
                seq,
                frame: vec![],
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop().map(|d| d.seq)).collect();
        assert_eq!(order, vec![2, 3, 4, 1]);
    }

    #[test]
    fn the_bottleneck_spaces_frames_at_its_rate_and_drops_past_its_queue() {
        let t = Instant::now();
        let mut b = Bottleneck { free_at: t };
        let ms = Duration::from_millis;
        // 8 Mbit/s: a 1,000-byte frame takes 1 ms.
        assert_eq!(b.admit(t, 1000, 8e6, ms(3)), Some(t + ms(1)));
        assert_eq!(b.admit(t, 1000, 8e6, ms(3)), Some(t + ms(2)));
        assert_eq!(b.admit(t, 1000, 8e6, ms(3)), Some(t + ms(3)));
        assert_eq!(b.admit(t, 1000, 8e6, ms(3)), Some(t + ms(4)), "waits 3 ms: still in");
        assert_eq!(b.admit(t, 1000, 8e6, ms(3)), None, "would wait 4 ms: dropped");
        // Once drained, a frame goes straight through; unlimited never waits.
        assert_eq!(b.admit(t + ms(10), 1000, 8e6, ms(3)), Some(t + ms(11)));
        assert_eq!(b.admit(t + ms(10), 1000, 0.0, ms(3)), Some(t + ms(10)));
    }

    #[test]
    fn the_coin_is_uniform_enough_for_a_loss_rate() {
        let mut c = Coin(0x1234_5678_9abc_def1);
        let n = 100_000;
        let hits = (0..n).filter(|_| c.unit() < 0.03).count();
        let rate = hits as f64 / n as f64;
        assert!((0.027..0.033).contains(&rate), "{rate}");
    }
}
