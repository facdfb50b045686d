//! Brokers the tests start themselves, on free ports with their own data
//! directories, and can kill and restart: nats-server, mosquitto, redis-server, the Pub/Sub emulator, tansu (a
//! Kafka-compatible broker), moto (an emulator of Amazon SQS, not AWS) and
//! librdkafka's mock cluster (in this process).

use super::{find_bin, free_port, TempDir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server started by the test, stopped on drop.
pub struct NatsServer {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    auth: Option<(String, String)>,
    jetstream: bool,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with(None)
    }

    /// A server that requires `user` and `password`.
    pub fn with_user(user: &str, password: &str) -> NatsServer {
        Self::start_with(Some((user.into(), password.into())))
    }

    /// A server with JetStream, storing in its own directory (kept across restarts).
    pub fn with_jetstream() -> NatsServer {
        let mut s = NatsServer {
            port: free_port(),
            bin: find_bin("nats-server", "nats-server"),
            dir: TempDir::new("nats"),
            auth: None,
            jetstream: true,
            child: None,
        };
        s.restart();
        s
    }

    fn start_with(auth: Option<(String, String)>) -> NatsServer {
        let mut s = NatsServer {
            port: free_port(),
            bin: find_bin("nats-server", "nats-server"),
            dir: TempDir::new("nats"),
            auth,
            jetstream: false,
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
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--pid")
            .arg(self.dir.path().join("nats.pid"));
        if let Some((user, password)) = &self.auth {
            cmd.args(["--user", user, "--pass", password]);
        }
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.path().join("js"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
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

/// A RabbitMQ node of its own (Debian package `rabbitmq-server`): its own
/// AMQP, distribution and epmd ports, node name, data and log directories,
/// and an empty plugin list; it keeps its queues across a restart.
pub struct RabbitMq {
    pub port: u16,
    /// The AMQPS port, when started with TLS.
    pub tls_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl RabbitMq {
    pub fn start() -> RabbitMq {
        Self::start_with(None, None)
    }

    /// A node whose only user is `user` with `password` (no guest).
    pub fn with_user(user: &str, password: &str) -> RabbitMq {
        Self::start_with(Some((user, password)), None)
    }

    /// A node that also speaks AMQPS with this PEM certificate and key.
    pub fn with_tls(cert: &str, key: &str) -> RabbitMq {
        Self::start_with(None, Some((cert, key)))
    }

    fn start_with(user: Option<(&str, &str)>, tls: Option<(&str, &str)>) -> RabbitMq {
        // Debian's wrapper (/usr/sbin/rabbitmq-server) switches to the
        // rabbitmq user; the script under it runs as whoever starts it.
        let wrapper = find_bin("rabbitmq-server", "rabbitmq-server");
        let bin = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
        let bin = if bin.is_file() { bin } else { wrapper };
        let dir = TempDir::new("rabbitmq");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        // Guest may connect from 127.0.0.1 (the default allows only "localhost" names).
        let mut conf = String::from("loopback_users = none\n");
        if let Some((u, p)) = user {
            conf.push_str(&format!("default_user = {u}\ndefault_pass = {p}\n"));
        }
        let tls_port = tls.map(|(cert, key)| {
            let port = free_port();
            let (c, k) = (dir.write("server.pem", cert), dir.write("server.key", key));
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{port}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                c.display(),
                k.display()
            ));
            port
        });
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        let mut s = RabbitMq {
            port: free_port(),
            tls_port,
            dist_port: free_port(),
            epmd_port: free_port(),
            bin,
            dir,
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts (or starts again) with the same ports and data; waits until
    /// the AMQP port accepts connections (the broker has booted).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("rabbitmq.out")).expect("log file");
        let child = Command::new(&self.bin)
            // A node killed mid-write leaves crash dumps in its directory.
            .current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", format!("chirp{}@localhost", self.port))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            // The Erlang VM reads its stdin: never the test runner's.
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("cannot start rabbitmq-server");
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < give_up,
                "rabbitmq-server did not listen on port {} within 60s: {}",
                self.port,
                std::fs::read_to_string(d.join("rabbitmq.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node abruptly (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: killpg takes no pointers; the group is the node's own
            // (spawned with process_group(0)), so nothing else is hit.
            unsafe {
                libc::killpg(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.kill();
        // epmd detaches from the node; it is ours (own port), so stop it
        // too. It refuses while the killed node is still registered: retry.
        for _ in 0..50 {
            let out = Command::new("epmd")
                .args(["-port", &self.epmd_port.to_string(), "-kill"])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if String::from_utf8_lossy(&o.stdout).contains("Killed") => break,
                // Nothing listens there (never started, or gone already).
                Ok(o) if String::from_utf8_lossy(&o.stderr).contains("Cannot connect") => break,
                Err(_) => break,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// A mosquitto broker started by the test with its own configuration file,
/// listening on 127.0.0.1 only, stopped on drop.
pub struct MosquittoServer {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    /// Lines for the listener (TLS files, a password file).
    listener: String,
    anonymous: bool,
    child: Option<Child>,
}

impl MosquittoServer {
    /// Anonymous clients, nothing kept across restarts.
    pub fn start() -> MosquittoServer {
        Self::start_with("", true)
    }

    /// `listener` lines follow the `listener` line (e.g. `certfile …`);
    /// `anonymous` false needs a `password_file`.
    pub fn start_with(listener: &str, anonymous: bool) -> MosquittoServer {
        let mut s = MosquittoServer {
            port: free_port(),
            bin: find_bin("mosquitto", "mosquitto"),
            dir: TempDir::new("mosquitto"),
            listener: listener.to_owned(),
            anonymous,
            child: None,
        };
        s.restart();
        s
    }

    /// The broker's own directory (for certificates, password files).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts (or starts again) on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let conf = format!(
            "per_listener_settings false\nset_tcp_nodelay true\nallow_anonymous {}\npersistence false\nlog_dest stderr\nlog_type all\nlistener {} 127.0.0.1\n{}\n",
            self.anonymous, self.port, self.listener
        );
        let conf = self.dir.write("mosquitto.conf", conf);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto");
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto");
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MosquittoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-server started by the test on a free port, keeping nothing on
/// disk (an outage loses what the streams held, as a crash of an
/// unpersisted server does), stopped on drop.
pub struct RedisServer {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    /// Extra `redis.conf` lines (an ACL user, TLS).
    extra: String,
    /// Files the configuration names.
    keep: Option<TempDir>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with("")
    }

    /// With extra configuration lines; `{port}` in them is the server's
    /// port, `{dir}` its directory.
    pub fn start_with(extra: &str) -> RedisServer {
        let (port, dir) = (free_port(), TempDir::new("redis"));
        let extra = extra
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let mut s = RedisServer {
            port,
            bin: find_bin("redis-server", "redis-server"),
            dir,
            extra,
            keep: None,
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Serving TLS only, with this certificate; clients need none of their own.
    pub fn with_tls(cert_pem: &str, key_pem: &str) -> RedisServer {
        let files = TempDir::new("redis-tls");
        let cert = files.write("server.pem", cert_pem);
        let key = files.write("server.key", key_pem);
        let mut s = Self::start_with(&format!(
            "port 0\ntls-port {{port}}\ntls-cert-file {}\ntls-key-file {}\ntls-auth-clients no",
            cert.display(),
            key.display()
        ));
        s.keep = Some(files);
        s
    }

    /// A client of the test's own.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connect")
    }

    /// Starts (or starts again) on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let conf = format!(
            "port {}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n{}\n",
            self.port,
            self.dir.path().display(),
            self.dir.path().join("redis.log").display(),
            self.extra
        );
        let conf = self.dir.write("redis.conf", conf);
        let child = Command::new(&self.bin)
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto in server mode (PyPI `moto[server]`): an emulator of AWS APIs,
/// here Amazon SQS, standing in for AWS in the tests; it is not AWS. It
/// keeps everything in memory: a restart loses every queue. Started on a
/// free port, stopped on drop.
pub struct MotoServer {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

fn find_moto() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server is not installed: run `python3 -m pip install 'moto[server]'` (or ./scripts/test) and rerun"
            )
        })
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let mut s = MotoServer {
            port: free_port(),
            bin: find_moto(),
            dir: TempDir::new("moto"),
            child: None,
        };
        s.restart();
        s
    }

    /// The endpoint a client is given instead of AWS's.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `sqs:` connection settings of a client of this emulator (moto
    /// takes any keys).
    pub fn connection(&self) -> String {
        format!(
            "sqs: {{region: us-east-1, endpoint: \"{}\", access_key_id: AKIDCHIRPTEST, secret_access_key: moto-takes-any-key}}",
            self.endpoint()
        )
    }

    /// A test's own SQS client of this emulator.
    pub fn client(&self) -> aws_sdk_sqs::Client {
        let conf = aws_sdk_sqs::config::Builder::new()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "AKIDCHIRPTEST",
                "moto-takes-any-key",
                None,
                None,
                "test",
            ))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    /// Starts (or starts again) on the same port, with no queues, and waits
    /// until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("moto.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("cannot start moto_server");
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = super::http_get(self.port, "/moto-api/").unwrap_or_default();
            if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "moto_server did not answer on port {} within 30s: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the emulator abruptly (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: killpg takes no pointers; the group is the emulator's
            // own (spawned with process_group(0)), so nothing else is hit.
            unsafe {
                libc::killpg(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Pub/Sub emulator of the Google Cloud SDK (a Java program), started
/// by the test on a free port, stopped on drop. It keeps nothing across a
/// restart: topics and subscriptions are gone, as a test's `restart` knows.
pub struct PubSubEmulator {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

/// Where the SDK keeps the emulator's start script.
const PUBSUB_EMULATOR: &str = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// The emulator's start script: under `$CLOUDSDK_ROOT_DIR`, Debian's
/// /usr/lib/google-cloud-sdk, or wherever `gcloud info` says the SDK is.
fn find_pubsub_emulator() -> PathBuf {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let mut roots: Vec<PathBuf> = std::env::var_os("CLOUDSDK_ROOT_DIR")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        roots.push(PathBuf::from("/usr/lib/google-cloud-sdk"));
        if let Some(p) = roots
            .iter()
            .map(|r| r.join(PUBSUB_EMULATOR))
            .find(|p| p.is_file())
        {
            return Some(p);
        }
        let out = Command::new("gcloud")
            .args(["info", "--format=value(installation.sdk_root)"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let p = PathBuf::from(root).join(PUBSUB_EMULATOR);
        p.is_file().then_some(p)
    });
    found.clone().unwrap_or_else(|| {
        panic!(
            "the Pub/Sub emulator is not installed: it is the Google Cloud SDK's `google-cloud-cli-pubsub-emulator` package (or `gcloud components install pubsub-emulator`), and it runs on Java 11 or later (Debian `openjdk-17-jre-headless`); install them and rerun"
        )
    })
}

impl PubSubEmulator {
    pub fn start() -> PubSubEmulator {
        let mut e = PubSubEmulator {
            port: free_port(),
            bin: find_pubsub_emulator(),
            dir: TempDir::new("pubsub"),
            child: None,
        };
        e.restart();
        e
    }

    /// `http://127.0.0.1:<port>`: gRPC and REST on one port.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (or starts again, empty) on the same port, and waits until
    /// it answers `GET /` with `Ok`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("emulator.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            // Its own group: the script execs java, but killing the group
            // also ends anything it may have started.
            .process_group(0)
            .spawn()
            .expect("cannot start the Pub/Sub emulator");
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if emulator_answers(self.port) {
                break;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the Pub/Sub emulator exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < give_up,
                "the Pub/Sub emulator did not answer on port {} within 60s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the emulator wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    /// Kills the emulator abruptly (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: killpg takes no pointers; the group is the emulator's
            // own (spawned with process_group(0)), so nothing else is hit.
            unsafe {
                libc::killpg(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `GET /` on the emulator's port answers 200 `Ok` (its
/// readiness: the port accepts connections a while before it serves).
fn emulator_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    // It may keep the connection open: read until the body is there.
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.starts_with("HTTP/1.1 200") && text.trim_end().ends_with("\r\n\r\nOk") {
            return true;
        }
    }
    false
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        self.kill();
    }
}
fn wait_for_port(port: u16, what: &str) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < give_up,
            "{what} did not listen on port {port} within 20s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// librdkafka's in-process mock cluster (a test stand-in for Kafka, not a broker).
pub struct Mock {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Mock {
    pub fn start() -> Mock {
        Mock {
            cluster: rdkafka::mocking::MockCluster::new(1).expect("mock cluster"),
        }
    }
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.cluster
            .create_topic(name, partitions, 1)
            .expect("create topic");
    }
}

/// A tansu broker process on a free port, stopped on drop.
pub struct Tansu {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

fn find_tansu() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = find_tansu().unwrap_or_else(|| {
            panic!(
                "tansu is not installed: run `cargo install tansu --version 0.6.0 --features dynostore --locked` (about 20 minutes) and rerun"
            )
        });
        let mut t = Tansu {
            port: free_port(),
            bin,
            child: None,
        };
        t.restart();
        t
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port with empty in-memory storage, and waits for the port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start tansu");
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < give_up,
                "tansu did not listen on {} within 20s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates topics through the admin API (for real brokers).
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, p)| NewTopic::new(name, *p, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        if let Err((name, e)) = r {
            // Already there is fine (a restart test recreates them).
            assert!(
                e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "cannot create topic {name}: {e}"
            );
        }
    }
}
