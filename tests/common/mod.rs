//! Test harness: a real `nats-server` on a free port with its own data dir,
//! which tests can kill and restart; and helpers to build configurations.
#![allow(dead_code)]

pub mod kafka;
pub mod otlp;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "test-signing-key-0123456789";

/// The chirp binary built for these tests.
pub const CHIRP: &str = env!("CARGO_BIN_EXE_chirp");

/// Runs `cmd` to its end; panics with its output unless it exits with `code`.
pub fn exits(cmd: &mut Command, code: i32) -> std::process::Output {
    let out = cmd.output().expect("cannot run chirp");
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A nats-server started by the test, stopped on drop.
pub struct NatsServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempdir::Dir,
    child: Option<Child>,
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&p).expect("cannot create a temporary directory");
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let bin = find_on_path("nats-server").unwrap_or_else(|| {
            panic!("nats-server is not installed: install it with `apt-get install -y nats-server` (Debian) and rerun")
        });
        let mut s = NatsServer {
            port: free_port(),
            bin,
            dir: tempdir::Dir::new("chirp-nats"),
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (or starts again) on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--pid")
            .arg(self.dir.path().join("nats.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < give_up,
                "nats-server did not listen on port {} within 10s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A configuration with one Kafka connection `k` to `bootstrap` and the given probes YAML.
pub fn kafka_config(bootstrap: &str, probes_yaml: &str) -> chirp::config::Config {
    let text = format!(
        "environment: test\nlisten: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  k:\n    kafka: {{brokers: \"{bootstrap}\"}}\nprobes:\n{probes_yaml}"
    );
    chirp::config::load_str(&text, &std::collections::HashMap::new())
        .unwrap_or_else(|e| panic!("bad test config: {e:?}\n{text}"))
}

/// A configuration with one connection `main` to `nats_url` and the given probes YAML.
pub fn config_with(nats_url: &str, probes_yaml: &str) -> chirp::config::Config {
    let text = format!(
        "environment: test\nlisten: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  main:\n    nats: {{url: \"{nats_url}\"}}\nprobes:\n{probes_yaml}"
    );
    chirp::config::load_str(&text, &std::collections::HashMap::new())
        .unwrap_or_else(|e| panic!("bad test config: {e:?}\n{text}"))
}

/// Polls `cond` every 10 ms until it holds, or panics after `limit` naming `what`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts chirp as `check` does: fail if a broker is unreachable, send `count` canaries per probe.
pub async fn start_counted(config: &chirp::config::Config, count: u64) -> chirp::runtime::Runtime {
    chirp::runtime::Runtime::start(
        config,
        chirp::runtime::Options {
            count: Some(count),
            fail_fast: true,
            ..Default::default()
        },
    )
    .await
    .expect("chirp starts")
}

/// Like [`wait_for`], for a condition that has to await (an HTTP request).
pub async fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
