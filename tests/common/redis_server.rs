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
