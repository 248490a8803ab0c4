//! redis-server processes of a test's own (private ports, stopped by PID when dropped):
//! for a Redis Cluster, or a Redis to kill and restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// In CI, a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// redis-server processes started by a test, stopped (by PID) when dropped.
pub struct RedisProcs {
    pub children: Vec<Child>,
    pub ports: Vec<u16>,
    pub _dir: std::path::PathBuf,
}

impl Drop for RedisProcs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn have_redis_server() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && in_ci() {
        panic!("redis-server must be installed in CI (the cluster and outage tests start their own)");
    }
    if !ok {
        eprintln!("SKIPPED: no redis-server on the PATH");
    }
    ok
}

/// A free TCP port whose +10000 (the cluster bus port) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

pub fn spawn_redis(dir: &std::path::Path, port: u16, cluster: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir);
    if cluster {
        cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.join(format!("nodes-{port}.conf")));
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

pub fn wait_ping(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && let Ok(mut c) = c.get_connection()
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server on {port} did not answer");
}

/// A Redis Cluster of 3 masters on private ports, ready (`cluster_state:ok`).
pub fn start_cluster() -> RedisProcs {
    let dir = super::tempdir("rcluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let children = ports.iter().map(|p| spawn_redis(&dir, *p, true)).collect();
    let procs = RedisProcs {
        children,
        ports: ports.clone(),
        _dir: dir,
    };
    for p in &ports {
        wait_ping(*p);
    }
    let status = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli runs");
    assert!(status.success(), "redis-cli --cluster create");
    // Until every node agrees the cluster is ok.
    let end = Instant::now() + Duration::from_secs(20);
    'wait: while Instant::now() < end {
        for p in &ports {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{p}"))
                .unwrap()
                .get_connection()
                .unwrap();
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                std::thread::sleep(Duration::from_millis(100));
                continue 'wait;
            }
        }
        return procs;
    }
    panic!("the local Redis Cluster never reached cluster_state:ok");
}

/// One redis-server on a private port, answering: the processes and the port (restart it
/// with `spawn_redis(&procs._dir, port, false)`).
pub fn start_single(tag: &str) -> (RedisProcs, u16) {
    let dir = super::tempdir(tag);
    let port = free_port();
    let procs = RedisProcs {
        children: vec![spawn_redis(&dir, port, false)],
        ports: vec![port],
        _dir: dir,
    };
    wait_ping(port);
    (procs, port)
}
