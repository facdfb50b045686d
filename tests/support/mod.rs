//! What every integration test shares: the chirp binary, configurations
//! (in memory or as a file), temporary directories, brokers started on free
//! ports, the transport targets of the fault suite, a `/metrics` scraper
//! that fails on a missing series, and waiting on conditions.
#![allow(dead_code)]

pub mod brokers;
pub mod kafka;
pub mod otlp;
pub mod targets;

#[allow(unused_imports)]
pub use brokers::{MosquittoServer, MotoServer, NatsServer, PubSubEmulator, RedisServer};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const KEY: &str = "test-signing-key-0123456789";

/// The chirp binary: the one built for these tests, or `CHIRP_BIN` (to run
/// the binary's tests against another build, e.g. an older release).
pub static CHIRP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("CHIRP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chirp").to_owned())
});

/// The configuration shipped at the top of the repository.
pub const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/probes.yaml");

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
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "chirp-{prefix}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("cannot create a temporary directory");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in this directory; returns the file's path.
    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("cannot write a test file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A configuration file in its own temporary directory.
pub struct ConfigFile {
    _dir: TempDir,
    pub path: PathBuf,
}

/// Writes `text` as `probes.yaml` in a new temporary directory.
pub fn config_file(text: &str) -> ConfigFile {
    let dir = TempDir::new("config");
    let path = dir.write("probes.yaml", text);
    ConfigFile { _dir: dir, path }
}

/// Builds the text of a configuration: the top-level keys, named
/// connections, and probes, each written in flow style.
#[derive(Clone)]
pub struct Conf {
    pub listen: String,
    pub environment: String,
    connections: Vec<(String, String)>,
    probes: Vec<String>,
    extra: String,
}

impl Default for Conf {
    fn default() -> Self {
        Conf {
            listen: "127.0.0.1:0".into(),
            environment: "test".into(),
            connections: Vec::new(),
            probes: Vec::new(),
            extra: String::new(),
        }
    }
}

impl Conf {
    pub fn new() -> Conf {
        Conf::default()
    }

    pub fn listen(mut self, addr: impl Into<String>) -> Conf {
        self.listen = addr.into();
        self
    }

    /// A named connection, e.g. `("main", "nats: {url: nats://…}")`.
    pub fn connection(mut self, name: &str, body: impl Into<String>) -> Conf {
        self.connections.push((name.into(), body.into()));
        self
    }

    /// A probe in flow style, e.g. `{name: a, inject: {…}, catch: {…}}`.
    pub fn probe(mut self, flow: impl Into<String>) -> Conf {
        self.probes.push(flow.into());
        self
    }

    /// Other top-level YAML, e.g. `export: {otlp: {…}}`.
    pub fn top(mut self, yaml: &str) -> Conf {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    pub fn text(&self) -> String {
        let mut t = format!(
            "environment: {}\nlisten: {}\nsigning_key: {KEY}\n{}",
            self.environment, self.listen, self.extra
        );
        if !self.connections.is_empty() {
            t.push_str("connections:\n");
            for (name, body) in &self.connections {
                t.push_str(&format!("  {name}: {{{body}}}\n"));
            }
        }
        t.push_str("probes:\n");
        for p in &self.probes {
            t.push_str(&format!("  - {p}\n"));
        }
        t
    }

    /// The validated configuration (panics with the errors otherwise).
    pub fn build(&self) -> chirp::config::Config {
        let text = self.text();
        chirp::config::load_str(&text, &HashMap::new())
            .unwrap_or_else(|e| panic!("bad test config: {e:#?}\n{text}"))
    }

    pub fn file(&self) -> ConfigFile {
        config_file(&self.text())
    }
}

/// A configuration with one NATS connection `main` to `nats_url` and the given probes (flow style).
pub fn nats_conf(nats_url: &str) -> Conf {
    Conf::new().connection("main", format!("nats: {{url: \"{nats_url}\"}}"))
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

/// Starts chirp as `run` does, listening where the configuration says.
pub async fn start(config: &chirp::config::Config) -> chirp::runtime::Runtime {
    chirp::runtime::Runtime::start(config, chirp::runtime::Options::run(config.listen.address))
        .await
        .expect("chirp starts")
}

/// Starts chirp as `run` does, except that every connection is made
/// before the first canary (as `check` does), so none fails while a client
/// is still connecting.
pub async fn start_connected(config: &chirp::config::Config) -> chirp::runtime::Runtime {
    chirp::runtime::Runtime::start(
        config,
        chirp::runtime::Options {
            fail_fast: true,
            reload: false,
            ..chirp::runtime::Options::run(config.listen.address)
        },
    )
    .await
    .expect("chirp starts")
}

/// Starts chirp as `check` does: fail if a broker is unreachable, send
/// `count` canaries per probe; listening where the configuration says.
pub async fn start_counted(config: &chirp::config::Config, count: u64) -> chirp::runtime::Runtime {
    chirp::runtime::Runtime::start(
        config,
        chirp::runtime::Options {
            count: Some(count),
            fail_fast: true,
            reload: false,
            ..chirp::runtime::Options::run(config.listen.address)
        },
    )
    .await
    .expect("chirp starts")
}

/// The probe named `name` of a running chirp.
pub fn probe(rt: &chirp::runtime::Runtime, name: &str) -> std::sync::Arc<chirp::probe::Probe> {
    rt.probes()
        .iter()
        .find(|w| w.probe.name() == name)
        .map(|w| std::sync::Arc::clone(&w.probe))
        .unwrap_or_else(|| panic!("no probe {name}"))
}

/// One `/metrics` exposition, read by series. Asking for a series that is
/// not there fails the test: a missing series is never a zero.
pub struct Scrape {
    pub text: String,
}

impl Scrape {
    pub async fn get(addr: std::net::SocketAddr) -> Scrape {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("scrape body");
        Scrape { text }
    }

    /// Reads a blocking scrape of `127.0.0.1:port` (for a chirp process); `None` if it does not answer.
    pub fn blocking(port: u16) -> Option<Scrape> {
        let resp = http_get(port, "/metrics")?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        head.contains(" 200 ").then(|| Scrape {
            text: body.to_owned(),
        })
    }

    /// Every sample of `name` whose labels include all of `labels`, as (label text, value).
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let (labels_text, value) = if let Some(r) = rest.strip_prefix('{') {
                    let (ls, v) = r.split_once("} ")?;
                    (ls.to_owned(), v)
                } else {
                    (String::new(), rest.strip_prefix(' ')?)
                };
                let value: f64 = value.split_whitespace().next()?.parse().ok()?;
                Some((labels_text, value))
            })
            .filter(|(ls, _)| {
                labels
                    .iter()
                    .all(|(k, v)| ls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            })
            .collect()
    }

    /// The sum of every sample of `name` matching `labels`; panics when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = self.samples(name, labels);
        assert!(
            !s.is_empty(),
            "no series {name} with {labels:?} in the scrape:\n{}",
            self.text
        );
        s.iter().map(|(_, v)| v).sum()
    }
}

/// The whole HTTP/1.0 response (status line, headers, body) to `GET path` on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// A child process killed on drop.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bin` on PATH (or in the sbin directories), or a panic naming the package to install.
pub fn find_bin(bin: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{bin} is not installed: install it with `apt-get install -y {package}` (or ./scripts/test) and rerun")
        })
}
