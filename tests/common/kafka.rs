//! Kafka test targets: librdkafka's mock cluster (in this process, always
//! available) and tansu, a real Kafka-compatible broker started on a free
//! port (installed by `.ci/run`), plus a fault-injecting relay between two
//! topics that keeps partitions.
#![allow(dead_code)]

use super::{free_port, KEY};
use chirp::canary::{Signer, HEADER};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// What the relay does to the canaries of each partition (keyed by (partition, seq)).
#[derive(Default, Clone)]
pub struct Plan {
    pub drop: HashSet<(i32, u64)>,
    pub duplicate: HashSet<(i32, u64)>,
    /// (partition, first) → second: `first` is held and forwarded right after `second`.
    pub swap: HashMap<(i32, u64), u64>,
    /// Stop forwarding this partition from this sequence on (a stalled partition).
    pub stall: Option<(i32, u64)>,
}

/// Consumes `from` (all partitions, from the beginning) and produces to the
/// same partition of `to`, applying `plan`. Returns once positioned.
pub async fn spawn_relay(
    bootstrap: &str,
    from: &str,
    to: &str,
    partitions: i32,
    plan: Plan,
) -> tokio::task::JoinHandle<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "relay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("relay consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(from, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("relay producer");
    let to = to.to_owned();
    tokio::spawn(async move {
        let signer = Signer::new(KEY.as_bytes());
        let seconds: HashMap<(i32, u64), u64> =
            plan.swap.iter().map(|((p, a), b)| ((*p, *b), *a)).collect();
        let mut held: HashMap<(i32, u64), (Vec<u8>, String)> = HashMap::new();
        let mut stream = consumer.stream();
        while let Some(Ok(msg)) = stream.next().await {
            let p = msg.partition();
            let token = msg
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == HEADER).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("canary without token header");
            let seq = signer.decode(&token).expect("valid token").seq;
            let body = msg.payload().unwrap_or_default().to_vec();
            if plan.drop.contains(&(p, seq))
                || plan.stall.is_some_and(|(sp, from)| sp == p && seq >= from)
            {
                continue;
            }
            if plan.swap.contains_key(&(p, seq)) {
                held.insert((p, seq), (body, token));
                continue;
            }
            let mut out = vec![(body.clone(), token.clone())];
            if plan.duplicate.contains(&(p, seq)) {
                out.push((body, token));
            }
            if let Some(first) = seconds.get(&(p, seq)) {
                out.push(
                    held.remove(&(p, *first))
                        .expect("first of a swapped pair came first"),
                );
            }
            for (body, token) in out {
                let headers = OwnedHeaders::new().insert(Header {
                    key: HEADER,
                    value: Some(token.as_bytes()),
                });
                let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&to)
                    .partition(p)
                    .payload(&body)
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(5))
                    .await
                    .expect("relay produce");
            }
        }
    })
}
