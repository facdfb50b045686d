//! Brokers the tests start themselves, on free ports with their own data
//! directories, and can kill and restart: nats-server, mosquitto, tansu (a
//! Kafka-compatible broker) and librdkafka's mock cluster (in this process).

use super::{find_bin, free_port, TempDir};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
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
