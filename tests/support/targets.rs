//! The transports the fault suite (`tests/faults.rs`) runs against. A
//! transport joins the suite by implementing [`Target`] here and adding one
//! line to the list in `tests/faults.rs`; every scenario (relay faults,
//! broker or endpoint restart, garbage at the sink) then runs on it.

use super::brokers::{
    create_topics, MosquittoServer, MotoServer, NatsServer, PubSubEmulator, RabbitMq, RedisServer,
    Tansu,
};
use super::{free_port, KEY};
use axum::body::Bytes;
use axum::http::HeaderMap;
use chirp::canary::{Signer, HEADER};
use chirp::outcome::FailureKind;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a relay does to the canaries it forwards, by sequence.
#[derive(Clone, Default)]
pub struct Plan {
    pub drop: HashSet<u64>,
    /// Sent to the dead-letter destination `dlq` instead of on.
    pub dead_letter: HashSet<u64>,
    /// Sent on, and to `dlq` as well 50 canaries later (after the
    /// delivery was surely recorded).
    pub dead_letter_after: HashSet<u64>,
    /// The dead-letter destination (a subject, topic or queue).
    pub dlq: Option<String>,
    pub duplicate: HashSet<u64>,
    /// first → second: `first` is held and forwarded right after `second`.
    pub swap: HashMap<u64, u64>,
    /// How long each canary is held before it is forwarded.
    pub delay: Option<fn(u64) -> Duration>,
}

/// One canary or message as a relay forwards it.
#[derive(Clone)]
pub struct Msg {
    pub token: Option<String>,
    pub body: Vec<u8>,
    /// Where it goes instead of the relay's destination (the plan's `dlq`).
    pub to: Option<String>,
}

/// Decides, for each message read, what to forward and when. Messages
/// leave in the order they came (a delay line), so a burst of arrivals is
/// never reordered by its delays: only the plan's swaps reorder.
pub struct Relay {
    plan: Plan,
    signer: Signer,
    held: HashMap<u64, Msg>,
    /// Dead-letter copies waiting for their turn.
    dead_later: HashMap<u64, Msg>,
    seconds: HashMap<u64, u64>,
    last_due: tokio::time::Instant,
}

impl Relay {
    pub fn new(plan: Plan) -> Relay {
        let seconds = plan.swap.iter().map(|(a, b)| (*b, *a)).collect();
        Relay {
            plan,
            signer: Signer::new(KEY.as_bytes()),
            held: HashMap::new(),
            dead_later: HashMap::new(),
            seconds,
            last_due: tokio::time::Instant::now(),
        }
    }

    /// The messages to forward for `msg` (read now), and when.
    pub fn on(&mut self, msg: Msg) -> (Vec<Msg>, tokio::time::Instant) {
        let (out, delay) = self.decide(msg);
        let due = (tokio::time::Instant::now() + delay).max(self.last_due);
        self.last_due = due;
        (out, due)
    }

    fn decide(&mut self, msg: Msg) -> (Vec<Msg>, Duration) {
        let token = msg
            .token
            .clone()
            .or_else(|| chirp::canary::scan(&msg.body).map(str::to_owned))
            .expect("a canary without a token reached the relay");
        let seq = self.signer.decode(&token).expect("a valid token").seq;
        let delay = self.plan.delay.map_or(Duration::ZERO, |d| d(seq));
        if self.plan.drop.contains(&seq) {
            return (Vec::new(), delay);
        }
        let dlq = self.plan.dlq.clone();
        let dead = |m: &Msg| Msg {
            to: Some(dlq.clone().expect("a plan that dead-letters names its dlq")),
            ..m.clone()
        };
        if self.plan.dead_letter.contains(&seq) {
            return (vec![dead(&msg)], delay);
        }
        let mut later: Vec<Msg> = Vec::new();
        let due: Vec<u64> = self
            .dead_later
            .keys()
            .filter(|s| seq >= **s + 50)
            .copied()
            .collect();
        for s in due {
            later.extend(self.dead_later.remove(&s));
        }
        if self.plan.dead_letter_after.contains(&seq) {
            let d = dead(&msg);
            self.dead_later.insert(seq, d);
        }
        if self.plan.swap.contains_key(&seq) {
            self.held.insert(seq, msg);
            return (Vec::new(), delay);
        }
        let mut out = vec![msg.clone()];
        out.append(&mut later);
        if self.plan.duplicate.contains(&seq) {
            out.push(msg);
        }
        if let Some(first) = self.seconds.get(&seq) {
            out.push(
                self.held
                    .remove(first)
                    .expect("the first of a swapped pair arrives first"),
            );
        }
        (out, delay)
    }
}

/// A probe's inject and catch that form a loop.
pub struct Looped {
    pub inject: String,
    pub catch: String,
    /// What the catch reads (a subject, a topic; for HTTP, the probe's hook).
    pub dest: String,
}

/// Runs `send` for each batch at its due time, in order; returns the queue to feed.
fn forwarder<F, Fut>(
    send: F,
) -> tokio::sync::mpsc::UnboundedSender<(Vec<Msg>, tokio::time::Instant)>
where
    F: Fn(Msg) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<Msg>, tokio::time::Instant)>();
    tokio::spawn(async move {
        while let Some((msgs, due)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            for m in msgs {
                send(m).await;
            }
        }
    });
    tx
}

/// A transport as the fault suite drives it.
#[allow(async_fn_in_trait)]
pub trait Target: Sized {
    /// Starts what the transport needs (a broker, an endpoint). chirp will
    /// listen on 127.0.0.1:`chirp_port`.
    async fn start(chirp_port: u16) -> Self;
    /// The `connections:` entry it needs, as (name, flow body).
    fn connection(&self) -> Option<(String, String)>;
    /// A probe's inject to `dest`.
    fn inject(&self, dest: &str) -> String;
    /// A probe's catch from `dest`.
    fn catch(&self, dest: &str) -> String;
    /// Makes `dests` ready (creates topics).
    async fn prepare(&self, dests: &[&str]);
    /// Forwards canaries from `from` to `to` (the catch of probe `probe`)
    /// applying `plan`; returns once it reads.
    async fn relay(&self, from: &str, to: &str, probe: &str, plan: Plan) -> JoinHandle<()>;
    /// Puts a message on `dest` (the catch of probe `probe`) as the pipeline
    /// would, with `token` in the token header.
    async fn publish(&self, dest: &str, probe: &str, token: Option<&str>, body: Vec<u8>);
    /// An inject and a catch that form a loop through this transport alone
    /// (through a pass-through endpoint where there is no broker) for the
    /// probe `name`, and the destination its catch reads.
    async fn looped(&self, name: &str) -> Looped;
    /// Kills the broker (or endpoint) abruptly.
    fn kill(&mut self);
    /// Starts it again, with what the loop needs.
    async fn restart(&mut self);
    /// Whether chirp can tell the client is disconnected (`chirp_probe_up`).
    fn reports_down(&self) -> bool;
    /// How far above an injected delay a measured latency may sit here.
    fn tolerance(&self) -> Duration;
    /// How a publish fails while the broker (or endpoint) is down.
    fn outage_kind(&self) -> FailureKind;
    /// Whether the catch side reads a token from the `Chirp-Token` header
    /// (the webhook receiver does not: the header is not signed).
    fn header_tokens(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------- NATS

pub struct Nats {
    pub server: NatsServer,
}

impl Target for Nats {
    async fn start(_chirp_port: u16) -> Self {
        Nats {
            server: NatsServer::start(),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "main".into(),
            format!("nats: {{url: \"{}\"}}", self.server.url()),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{nats: {{connection: main, subject: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        self.inject(dest)
    }

    async fn prepare(&self, _dests: &[&str]) {}

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("relay connect");
        let mut sub = client
            .subscribe(from.to_owned())
            .await
            .expect("relay subscribe");
        // The subscription reaches the server before chirp sends anything.
        client.flush().await.expect("relay flush");
        let to = to.to_owned();
        let c = client.clone();
        let queue = forwarder(move |m: Msg| {
            let (c, to) = (c.clone(), m.to.clone().unwrap_or_else(|| to.clone()));
            async move { nats_publish(&c, &to, m.token.as_deref(), m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(m) = sub.next().await {
                let token = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HEADER))
                    .map(|v| v.to_string());
                let _ = queue.send(relay.on(Msg {
                    to: None,
                    token,
                    body: m.payload.to_vec(),
                }));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connect");
        nats_publish(&client, dest, token, body).await;
        client.flush().await.expect("flush");
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}.loop");
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart();
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // Scheduling, loopback and two NATS hops on a busy 2-core machine.
        Duration::from_millis(25)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

async fn nats_publish(
    client: &async_nats::Client,
    subject: &str,
    token: Option<&str>,
    body: Vec<u8>,
) {
    let mut h = async_nats::HeaderMap::new();
    if let Some(t) = token {
        h.insert(HEADER, t);
    }
    client
        .publish_with_headers(subject.to_owned(), h, body.into())
        .await
        .expect("publish");
}

// ---------------------------------------------------------------- JetStream

/// A nats-server 2.9 with JetStream (Debian's: chirp uses no 2.10 feature),
/// a file-backed stream per destination, so streams survive a restart.
pub struct JetStream {
    pub server: NatsServer,
}

impl JetStream {
    /// The stream that captures subject `dest`.
    pub fn stream_name(dest: &str) -> String {
        dest.replace('.', "_")
    }

    /// Creates a stream capturing `dest` (if there is none).
    pub async fn create_stream(&self, dest: &str) {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: Self::stream_name(dest),
            subjects: vec![dest.to_owned()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create the stream");
    }
}

impl Target for JetStream {
    async fn start(_chirp_port: u16) -> Self {
        JetStream {
            server: NatsServer::with_jetstream(),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "main".into(),
            format!("nats: {{url: \"{}\"}}", self.server.url()),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{jetstream: {{connection: main, subject: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        format!(
            "{{jetstream: {{connection: main, stream: {}, subject: {dest}}}}}",
            Self::stream_name(dest)
        )
    }

    async fn prepare(&self, dests: &[&str]) {
        for d in dests {
            self.create_stream(d).await;
        }
    }

    /// Reads `from` as a core subscriber (a stored message is also
    /// published on its subject) and publishes to `to`'s stream, waiting
    /// for each PubAck.
    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("relay connect");
        let mut sub = client
            .subscribe(from.to_owned())
            .await
            .expect("relay subscribe");
        client.flush().await.expect("relay flush");
        let js = async_nats::jetstream::new(client.clone());
        let to = to.to_owned();
        let queue = forwarder(move |m: Msg| {
            let (js, to) = (js.clone(), m.to.clone().unwrap_or_else(|| to.clone()));
            async move {
                let mut h = async_nats::HeaderMap::new();
                if let Some(t) = &m.token {
                    h.insert(HEADER, t.as_str());
                }
                js.publish_with_headers(to, h, m.body.into())
                    .await
                    .expect("relay publish")
                    .await
                    .expect("relay PubAck");
            }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(m) = sub.next().await {
                let token = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HEADER))
                    .map(|v| v.to_string());
                let _ = queue.send(relay.on(Msg {
                    to: None,
                    token,
                    body: m.payload.to_vec(),
                }));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut h = async_nats::HeaderMap::new();
        if let Some(t) = token {
            h.insert(HEADER, t);
        }
        js.publish_with_headers(dest.to_owned(), h, body.into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}.loop");
        self.create_stream(&dest).await;
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart();
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // As core NATS, plus a stored write and the consumer's pull per hop.
        Duration::from_millis(40)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

// ---------------------------------------------------------------- RabbitMQ

/// A RabbitMQ node with a durable topic exchange `chirp`; each destination
/// is a durable queue of that name bound to it by the same routing key.
pub struct Rabbit {
    pub server: RabbitMq,
    /// Connections behind the channels handed out, closed with the target.
    conns: Mutex<Vec<lapin::Connection>>,
}

pub const RABBIT_EXCHANGE: &str = "chirp";

impl Rabbit {
    /// The target around a node started otherwise (with TLS, a user).
    pub fn around(server: RabbitMq) -> Rabbit {
        Rabbit {
            server,
            conns: Mutex::new(Vec::new()),
        }
    }

    pub async fn channel(&self) -> lapin::Channel {
        let conn =
            lapin::Connection::connect(&self.server.url(), lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        // The connection lives as long as the target.
        self.conns.lock().unwrap().push(conn);
        ch
    }

    /// Declares the exchange and a queue `dest` bound to it by `dest`.
    pub async fn declare(&self, dest: &str) {
        use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let ch = self.channel().await;
        ch.exchange_declare(
            RABBIT_EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
        ch.queue_declare(
            dest.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the queue");
        ch.queue_bind(
            dest.into(),
            RABBIT_EXCHANGE.into(),
            dest.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the queue");
        let _ = ch.close(200, "done".into()).await;
    }
}

/// Publishes `body` to the `chirp` exchange with routing key `dest`, the
/// token in the `Chirp-Token` header, and waits for the confirm.
pub async fn rabbit_publish(ch: &lapin::Channel, dest: &str, token: Option<&str>, body: &[u8]) {
    use lapin::types::{AMQPValue, FieldTable};
    let mut headers = FieldTable::default();
    if let Some(t) = token {
        headers.insert(HEADER.into(), AMQPValue::LongString(t.to_owned().into()));
    }
    ch.basic_publish(
        RABBIT_EXCHANGE.into(),
        dest.into(),
        lapin::options::BasicPublishOptions::default(),
        body,
        lapin::BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

impl Target for Rabbit {
    async fn start(_chirp_port: u16) -> Self {
        Rabbit {
            server: tokio::task::block_in_place(RabbitMq::start),
            conns: Mutex::new(Vec::new()),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "main".into(),
            format!("amqp: {{url: \"{}\"}}", self.server.url()),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{amqp: {{connection: main, exchange: {RABBIT_EXCHANGE}, routing_key: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        format!("{{amqp: {{connection: main, queue: {dest}}}}}")
    }

    async fn prepare(&self, dests: &[&str]) {
        for d in dests {
            self.declare(d).await;
        }
    }

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
        let ch = self.channel().await;
        let mut consumer = ch
            .basic_consume(
                from.into(),
                "relay".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("relay consume");
        let out = self.channel().await;
        out.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let to = to.to_owned();
        let queue = forwarder(move |m: Msg| {
            let (out, to) = (out.clone(), m.to.clone().unwrap_or_else(|| to.clone()));
            async move { rabbit_publish(&out, &to, m.token.as_deref(), &m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(Ok(d)) = consumer.next().await {
                let token = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(HEADER).cloned())
                    .and_then(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => None,
                    });
                let _ = queue.send(relay.on(Msg {
                    to: None,
                    token,
                    body: d.data,
                }));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        let ch = self.channel().await;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        rabbit_publish(&ch, dest, token, &body).await;
        let _ = ch.close(200, "done".into()).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}.loop");
        self.declare(&dest).await;
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        // The node takes seconds to boot: off the runtime's worker meanwhile.
        tokio::task::block_in_place(|| self.server.restart());
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        Duration::from_millis(25)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

// ---------------------------------------------------------------- MQTT

/// A test's own MQTT 5 client: an event loop task that reconnects (and
/// subscribes `topic` again on every connection), handing incoming
/// messages to `messages` and acks to `acks`.
pub struct MqttPeer {
    pub client: rumqttc::v5::AsyncClient,
    pub messages: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
    subscribed: tokio::sync::watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl MqttPeer {
    pub async fn connect(port: u16, topic: Option<&str>) -> MqttPeer {
        use rumqttc::v5::{mqttbytes::QoS, Event, Incoming};
        let id = format!("test-{}", rand::random::<u32>());
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let mut net = o.network_options();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 1000);
        let (msg_tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let (sub_tx, subscribed) = tokio::sync::watch::channel(0u64);
        let (c, topic) = (client.clone(), topic.map(str::to_owned));
        let peer_topic = topic.is_some();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        if let Some(t) = &topic {
                            c.subscribe(t.clone(), QoS::AtLeastOnce).await.unwrap();
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        sub_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let token = p.properties.as_ref().and_then(|props| {
                            props
                                .user_properties
                                .iter()
                                .find(|(k, _)| k == HEADER)
                                .map(|(_, v)| v.clone())
                        });
                        let _ = msg_tx.send(Msg {
                            token,
                            body: p.payload.to_vec(),
                            to: None,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let peer = MqttPeer {
            client,
            messages,
            acks,
            subscribed,
            task,
        };
        if peer_topic {
            peer.subscribed(1).await;
        }
        peer
    }

    /// Waits until the subscription was granted `n` times in all (once per connection).
    pub async fn subscribed(&self, n: u64) {
        let mut s = self.subscribed.clone();
        tokio::time::timeout(Duration::from_secs(30), s.wait_for(|x| *x >= n))
            .await
            .expect("the test client subscribed again")
            .expect("its event loop runs");
    }

    /// Publishes with QoS 1 (the token in the user property) and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, token: Option<&str>, body: Vec<u8>) {
        mqtt_send(&self.client, topic, token, body).await;
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("a PUBACK within 10 s")
            .expect("the event loop runs");
    }
}

impl Drop for MqttPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Queues a QoS 1 publish with `token` in the `Chirp-Token` user property.
pub async fn mqtt_send(
    client: &rumqttc::v5::AsyncClient,
    topic: &str,
    token: Option<&str>,
    body: Vec<u8>,
) {
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: token
            .map(|t| vec![(HEADER.to_owned(), t.to_owned())])
            .unwrap_or_default(),
        ..Default::default()
    };
    client
        .publish_with_properties(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            body,
            props,
        )
        .await
        .expect("publish");
}

pub struct Mqtt {
    pub server: MosquittoServer,
}

impl Target for Mqtt {
    async fn start(_chirp_port: u16) -> Self {
        Mqtt {
            server: MosquittoServer::start(),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "m".into(),
            format!("mqtt: {{url: \"{}\"}}", self.server.url()),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{mqtt: {{connection: m, topic: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        self.inject(dest)
    }

    async fn prepare(&self, _dests: &[&str]) {}

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let mut peer = MqttPeer::connect(self.server.port, Some(from)).await;
        let client = peer.client.clone();
        let to = to.to_owned();
        let queue = forwarder(move |m: Msg| {
            let (c, to) = (client.clone(), m.to.clone().unwrap_or_else(|| to.clone()));
            async move { mqtt_send(&c, &to, m.token.as_deref(), m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(m) = peer.messages.recv().await {
                let _ = queue.send(relay.on(m));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        let mut peer = MqttPeer::connect(self.server.port, None).await;
        peer.publish(dest, token, body).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}/loop");
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart();
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // Scheduling, loopback, two broker hops and their PUBACKs on a busy 2-core machine.
        Duration::from_millis(25)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

// ---------------------------------------------------------------- Redis

/// Redis Streams; the catch reads as consumer group `chirp`.
pub struct Redis {
    pub server: RedisServer,
}

/// Appends an entry as a pipeline would: the token field (if any) and the body.
pub async fn redis_add(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    token: Option<&str>,
    body: &[u8],
) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    if let Some(t) = token {
        cmd.arg(HEADER).arg(t);
    }
    cmd.arg("payload").arg(body);
    let _: String = cmd.query_async(conn).await.expect("XADD");
}

/// Reads `stream` from its current end until the task is aborted, handing
/// each entry on as a `Msg`; returns once the position is taken.
pub async fn redis_tail(
    server: &RedisServer,
    stream: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<Msg> {
    let mut conn = server.client().await;
    let last: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("XREVRANGE");
    let mut from = match last {
        redis::Value::Array(es) if !es.is_empty() => entry_id(&es[0]),
        _ => "0-0".to_owned(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = stream.to_owned();
    tokio::spawn(async move {
        loop {
            let reply: redis::Value = match redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(0)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                Err(_) => return,
            };
            let redis::Value::Array(streams) = reply else {
                continue;
            };
            for s in streams {
                let redis::Value::Array(pair) = s else {
                    continue;
                };
                let Some(redis::Value::Array(entries)) = pair.get(1) else {
                    continue;
                };
                for e in entries {
                    from = entry_id(e);
                    let redis::Value::Array(parts) = e else {
                        continue;
                    };
                    let Some(redis::Value::Array(fields)) = parts.get(1) else {
                        continue;
                    };
                    let text = |v: &redis::Value| match v {
                        redis::Value::BulkString(b) => b.clone(),
                        _ => Vec::new(),
                    };
                    let mut msg = Msg {
                        token: None,
                        body: Vec::new(),
                        to: None,
                    };
                    for kv in fields.chunks_exact(2) {
                        match text(&kv[0]).as_slice() {
                            k if k == HEADER.as_bytes() => {
                                msg.token =
                                    Some(String::from_utf8_lossy(&text(&kv[1])).into_owned())
                            }
                            b"payload" => msg.body = text(&kv[1]),
                            _ => {}
                        }
                    }
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn entry_id(e: &redis::Value) -> String {
    match e {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
            _ => "0-0".to_owned(),
        },
        _ => "0-0".to_owned(),
    }
}

impl Target for Redis {
    async fn start(_chirp_port: u16) -> Self {
        Redis {
            server: RedisServer::start(),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "r".into(),
            format!("redis: {{url: \"{}\"}}", self.server.url()),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{redis: {{connection: r, stream: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        format!("{{redis: {{connection: r, stream: {dest}, group: chirp}}}}")
    }

    async fn prepare(&self, _dests: &[&str]) {}

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let mut input = redis_tail(&self.server, from).await;
        let out = self.server.client().await;
        let to = to.to_owned();
        let queue = forwarder(move |m: Msg| {
            let (mut c, to) = (out.clone(), m.to.clone().unwrap_or_else(|| to.clone()));
            async move { redis_add(&mut c, &to, m.token.as_deref(), &m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(m) = input.recv().await {
                let _ = queue.send(relay.on(m));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        let mut c = self.server.client().await;
        redis_add(&mut c, dest, token, &body).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}.loop");
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart();
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // Scheduling, loopback and two blocking reads per canary (the
        // relay's, then chirp's) on a busy 2-core machine: 31 ms over the
        // injected delay at p90 was seen with four compilers running.
        Duration::from_millis(40)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

// ---------------------------------------------------------------- SQS

/// Amazon SQS as moto emulates it (not AWS): a standard queue per
/// destination, created by the test (chirp creates none).
pub struct Sqs {
    pub server: MotoServer,
    client: aws_sdk_sqs::Client,
    /// The queues made so far, made again after a restart (moto keeps nothing).
    queues: Mutex<Vec<String>>,
}

impl Sqs {
    /// Creates `name` (a FIFO queue when it ends in `.fifo`) with these
    /// attributes; returns its URL.
    pub async fn create(&self, name: &str, attributes: &[(&str, &str)]) -> String {
        let mut req = self.client.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
        }
        for (k, v) in attributes {
            req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::from(*k), *v);
        }
        let url = req
            .send()
            .await
            .expect("create the queue")
            .queue_url()
            .expect("a queue URL")
            .to_owned();
        let mut q = self.queues.lock().unwrap();
        if !q.iter().any(|n| n == name) {
            q.push(name.to_owned());
        }
        url
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    pub async fn url(&self, name: &str) -> String {
        self.client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .expect("the queue's URL")
            .queue_url()
            .expect("a queue URL")
            .to_owned()
    }
}

/// SQS bodies are text (XML's characters): bytes that are not are sent as
/// their lossy UTF-8 reading, anything else outside the set as U+FFFD.
pub fn sqs_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .map(|c| match c {
            '\t'
            | '\n'
            | '\r'
            | '\u{20}'..='\u{D7FF}'
            | '\u{E000}'..='\u{FFFD}'
            | '\u{10000}'.. => c,
            _ => '\u{FFFD}',
        })
        .collect()
}

/// Sends as a pipeline would: the body, and the token in the `Chirp-Token`
/// message attribute (if any).
pub async fn sqs_send(client: &aws_sdk_sqs::Client, url: &str, token: Option<&str>, body: &[u8]) {
    let mut req = client
        .send_message()
        .queue_url(url)
        .message_body(sqs_text(body));
    if let Some(t) = token {
        req = req.message_attributes(
            HEADER,
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(t)
                .build()
                .unwrap(),
        );
    }
    req.send().await.expect("SendMessage");
}

/// Receives `url` until the task is aborted, deleting what it reads and
/// handing each message on as a `Msg`.
pub fn sqs_tail(
    client: aws_sdk_sqs::Client,
    url: String,
) -> tokio::sync::mpsc::UnboundedReceiver<Msg> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok(out) = client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for m in out.messages() {
                let token = m
                    .message_attributes()
                    .and_then(|a| a.get(HEADER))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned);
                let _ = client
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await;
                let msg = Msg {
                    token,
                    body: m.body().unwrap_or_default().as_bytes().to_vec(),
                    to: None,
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

impl Target for Sqs {
    async fn start(_chirp_port: u16) -> Self {
        let server = tokio::task::block_in_place(MotoServer::start);
        let client = server.client();
        Sqs {
            server,
            client,
            queues: Mutex::new(Vec::new()),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some(("q".into(), self.server.connection()))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{sqs: {{connection: q, queue: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        self.inject(dest)
    }

    async fn prepare(&self, dests: &[&str]) {
        for d in dests {
            self.create(d, &[]).await;
        }
    }

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let mut input = sqs_tail(self.client.clone(), self.url(from).await);
        let mut urls = HashMap::new();
        for q in [Some(to), plan.dlq.as_deref()].into_iter().flatten() {
            urls.insert(q.to_owned(), self.url(q).await);
        }
        let (client, to) = (self.client.clone(), to.to_owned());
        let queue = forwarder(move |m: Msg| {
            let client = client.clone();
            let url = urls[m.to.as_deref().unwrap_or(&to)].clone();
            async move { sqs_send(&client, &url, m.token.as_deref(), &m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(m) = input.recv().await {
                let _ = queue.send(relay.on(m));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        sqs_send(&self.client, &self.url(dest).await, token, &body).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}-loop");
        self.prepare(&[&dest]).await;
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        tokio::task::block_in_place(|| self.server.restart());
        // moto keeps nothing: the queues come back, empty.
        let queues = self.queues.lock().unwrap().clone();
        for q in queues {
            self.create(&q, &[]).await;
        }
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // Four calls to moto (Python) per canary through the relay, about
        // 25 ms in all on a busy 2-core machine.
        Duration::from_millis(60)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

// ---------------------------------------------------------------- Pub/Sub

/// The project every Pub/Sub test works in (the emulator takes any).
pub const PUBSUB_PROJECT: &str = "chirp-test";

/// Google Cloud Pub/Sub on the emulator. A destination `d` is topic `d`
/// and subscription `d` on it (their names live apart); the catch reads the
/// subscription.
pub struct PubSub {
    pub emulator: PubSubEmulator,
    /// What the tests made, (subscription, topic), made again after a
    /// restart (the emulator forgets everything).
    made: Mutex<Vec<(String, String)>>,
}

/// The emulator's admin clients (REST), with no credentials.
pub async fn pubsub_admin(
    endpoint: &str,
) -> (
    google_cloud_pubsub::client::TopicAdmin,
    google_cloud_pubsub::client::SubscriptionAdmin,
) {
    use google_cloud_auth::credentials::anonymous;
    chirp::transport::install_crypto_provider();
    let topics = google_cloud_pubsub::client::TopicAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .expect("topic admin");
    let subscriptions = google_cloud_pubsub::client::SubscriptionAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .expect("subscription admin");
    (topics, subscriptions)
}

pub fn pubsub_topic(id: &str) -> String {
    format!("projects/{PUBSUB_PROJECT}/topics/{id}")
}

pub fn pubsub_subscription(id: &str) -> String {
    format!("projects/{PUBSUB_PROJECT}/subscriptions/{id}")
}

/// Creates topic `topic` (if missing) and subscription `subscription` on
/// it (if missing), retaining acknowledged messages when `retain` (for a
/// seek back).
pub async fn pubsub_create(endpoint: &str, subscription: &str, topic: &str, retain: bool) {
    use google_cloud_gax::error::rpc::Code;
    let (topics, subscriptions) = pubsub_admin(endpoint).await;
    let exists = |e: &google_cloud_gax::error::Error| {
        e.status().is_some_and(|s| s.code == Code::AlreadyExists)
    };
    if let Err(e) = topics
        .create_topic()
        .set_name(pubsub_topic(topic))
        .send()
        .await
    {
        assert!(exists(&e), "cannot create topic {topic}: {e}");
    }
    if let Err(e) = subscriptions
        .create_subscription()
        .set_name(pubsub_subscription(subscription))
        .set_topic(pubsub_topic(topic))
        .set_ack_deadline_seconds(10)
        .set_retain_acked_messages(retain)
        .send()
        .await
    {
        assert!(exists(&e), "cannot create subscription {subscription}: {e}");
    }
}

/// A publisher to `topic` as a pipeline would have: batching off.
pub async fn pubsub_publisher(
    endpoint: &str,
    topic: &str,
) -> google_cloud_pubsub::client::Publisher {
    chirp::transport::install_crypto_provider();
    google_cloud_pubsub::client::Publisher::builder(pubsub_topic(topic))
        .with_endpoint(endpoint)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .set_message_count_threshold(1u32)
        .set_delay_threshold(Duration::ZERO)
        .build()
        .await
        .expect("publisher")
}

/// Publishes a message as a pipeline would: the token (if any) in
/// attribute `Chirp-Token`, the body as data; waits for the message ID.
pub async fn pubsub_send(
    p: &google_cloud_pubsub::client::Publisher,
    token: Option<&str>,
    body: Vec<u8>,
) {
    let mut m = google_cloud_pubsub::model::Message::new().set_data(body);
    if let Some(t) = token {
        m = m.set_attributes([(HEADER, t)]);
    }
    p.publish(m).await.expect("publish");
}

/// Reads `subscription` until the task is aborted, handing each message on
/// (acknowledged) as a `Msg`.
pub async fn pubsub_tail(
    endpoint: &str,
    subscription: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<Msg> {
    chirp::transport::install_crypto_provider();
    let client = google_cloud_pubsub::client::Subscriber::builder()
        .with_endpoint(endpoint)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .expect("subscriber");
    let mut stream = client.subscribe(pubsub_subscription(subscription)).build();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok((m, h))) = stream.next().await {
            h.ack();
            let msg = Msg {
                token: m.attributes.get(HEADER).cloned(),
                body: m.data.to_vec(),
                to: None,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    rx
}

impl PubSub {
    /// Makes `subscription` on `topic` now and after every restart.
    pub async fn make(&self, subscription: &str, topic: &str) {
        pubsub_create(&self.emulator.endpoint(), subscription, topic, false).await;
        let mut made = self.made.lock().unwrap();
        let pair = (subscription.to_owned(), topic.to_owned());
        if !made.contains(&pair) {
            made.push(pair);
        }
    }
}

impl Target for PubSub {
    async fn start(_chirp_port: u16) -> Self {
        PubSub {
            emulator: PubSubEmulator::start(),
            made: Mutex::new(Vec::new()),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "g".into(),
            format!(
                "pubsub: {{project: {PUBSUB_PROJECT}, endpoint: \"{}\"}}",
                self.emulator.endpoint()
            ),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{pubsub: {{connection: g, topic: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        format!("{{pubsub: {{connection: g, subscription: {dest}}}}}")
    }

    async fn prepare(&self, dests: &[&str]) {
        for d in dests {
            self.make(d, d).await;
        }
    }

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let endpoint = self.emulator.endpoint();
        // The relay's own subscription on the input topic: made before
        // chirp publishes, so it misses nothing.
        let own = format!("{from}-relay");
        self.make(&own, from).await;
        let mut input = pubsub_tail(&endpoint, &own).await;
        let mut publishers = HashMap::new();
        for t in std::iter::once(to.to_owned()).chain(plan.dlq.clone()) {
            let p = pubsub_publisher(&endpoint, &t).await;
            publishers.insert(t, p);
        }
        let to = to.to_owned();
        let queue = forwarder(move |m: Msg| {
            let dest = m.to.clone().unwrap_or_else(|| to.clone());
            let p = publishers[&dest].clone();
            async move { pubsub_send(&p, m.token.as_deref(), m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            while let Some(m) = input.recv().await {
                let _ = queue.send(relay.on(m));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        let p = pubsub_publisher(&self.emulator.endpoint(), dest).await;
        pubsub_send(&p, token, body).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}-loop");
        self.make(&dest, &dest).await;
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.emulator.kill();
    }

    async fn restart(&mut self) {
        self.emulator.restart();
        let made = self.made.lock().unwrap().clone();
        for (subscription, topic) in made {
            pubsub_create(&self.emulator.endpoint(), &subscription, &topic, false).await;
        }
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // The emulator hands a streaming pull what arrived at most about
        // every 55 ms (a hop takes 0-55 ms, p50 about 28 ms, with its own
        // client as with chirp's: `cargo bench --bench transports_baseline
        // -- pubsub`), and a relayed canary makes two hops; then
        // scheduling on a busy 2-core machine.
        Duration::from_millis(150)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}

// ---------------------------------------------------------------- Kafka

pub struct Kafka {
    pub tansu: Tansu,
    topics: Mutex<Vec<String>>,
}

impl Kafka {
    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.tansu.bootstrap())
            .set("linger.ms", "0")
            .create()
            .expect("producer")
    }
}

async fn kafka_produce(p: &FutureProducer, topic: &str, token: Option<&str>, body: &[u8]) {
    let mut headers = OwnedHeaders::new();
    if let Some(t) = token {
        headers = headers.insert(Header {
            key: HEADER,
            value: Some(t.as_bytes()),
        });
    }
    let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(body).headers(headers);
    p.send(record, Duration::from_secs(5))
        .await
        .expect("produce");
}

impl Target for Kafka {
    async fn start(_chirp_port: u16) -> Self {
        Kafka {
            tansu: Tansu::start(),
            topics: Mutex::new(Vec::new()),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        Some((
            "k".into(),
            format!("kafka: {{brokers: \"{}\"}}", self.tansu.bootstrap()),
        ))
    }

    fn inject(&self, dest: &str) -> String {
        format!("{{kafka: {{connection: k, topic: {dest}}}}}")
    }

    fn catch(&self, dest: &str) -> String {
        self.inject(dest)
    }

    async fn prepare(&self, dests: &[&str]) {
        let topics: Vec<(&str, i32)> = dests.iter().map(|d| (*d, 1)).collect();
        create_topics(&self.tansu.bootstrap(), &topics).await;
        self.topics
            .lock()
            .unwrap()
            .extend(dests.iter().map(|d| (*d).to_owned()));
    }

    async fn relay(&self, from: &str, to: &str, _probe: &str, plan: Plan) -> JoinHandle<()> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.tansu.bootstrap())
            .set("group.id", "relay")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("relay consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(from, 0, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let producer = self.producer();
        let to = to.to_owned();
        let queue = forwarder(move |m: Msg| {
            let (p, to) = (producer.clone(), m.to.clone().unwrap_or_else(|| to.clone()));
            async move { kafka_produce(&p, &to, m.token.as_deref(), &m.body).await }
        });
        tokio::spawn(async move {
            let mut relay = Relay::new(plan);
            let mut stream = consumer.stream();
            while let Some(Ok(m)) = stream.next().await {
                let token = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == HEADER).and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                let _ = queue.send(relay.on(Msg {
                    to: None,
                    token,
                    body: m.payload().unwrap_or_default().to_vec(),
                }));
            }
        })
    }

    async fn publish(&self, dest: &str, _probe: &str, token: Option<&str>, body: Vec<u8>) {
        kafka_produce(&self.producer(), dest, token, &body).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let dest = format!("{name}-loop");
        self.prepare(&[&dest]).await;
        Looped {
            inject: self.inject(&dest),
            catch: self.catch(&dest),
            dest,
        }
    }

    fn kill(&mut self) {
        self.tansu.kill();
    }

    async fn restart(&mut self) {
        self.tansu.restart();
        // tansu keeps topics in memory: after a restart they are gone and come back empty.
        let topics = self.topics.lock().unwrap().clone();
        let t: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.prepare(&t).await;
    }

    fn reports_down(&self) -> bool {
        true
    }

    fn tolerance(&self) -> Duration {
        // Two produce/fetch round trips through tansu.
        Duration::from_millis(60)
    }

    fn outage_kind(&self) -> FailureKind {
        // librdkafka queues the record until its message timeout.
        FailureKind::Timeout
    }
}

// ---------------------------------------------------------------- HTTP

/// HTTP in (an endpoint of the test's that forwards what it is POSTed),
/// chirp's webhook receiver out.
pub struct Webhook {
    chirp_port: u16,
    /// The test endpoint chirp POSTs to.
    pub endpoint_port: u16,
    /// The endpoint's server (stopped by cancelling), the plan it serves
    /// and the probe it forwards to, so it can be stopped and started again.
    server: Mutex<Option<(CancellationToken, Plan, String)>>,
}

impl Webhook {
    fn hook(&self, probe: &str) -> String {
        format!("http://127.0.0.1:{}/hooks/{probe}", self.chirp_port)
    }

    /// Serves until `stop`; stopping closes the port and every connection.
    async fn serve(&self, plan: Plan, probe: &str, stop: CancellationToken) -> JoinHandle<()> {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.endpoint_port)).await {
                Ok(l) => break l,
                // The port of an endpoint just stopped may take a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let relay = Arc::new(Mutex::new(Relay::new(plan)));
        let hook = self.hook(probe);
        let queue = forwarder(move |m: Msg| {
            let hook = hook.clone();
            async move { post_signed(&hook, m.token.as_deref(), m.body).await }
        });
        let app = axum::Router::new().route(
            "/{dest}",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (relay, queue) = (Arc::clone(&relay), queue.clone());
                async move {
                    let token = headers
                        .get(HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let _ = queue.send(relay.lock().unwrap().on(Msg {
                        to: None,
                        token,
                        body: body.to_vec(),
                    }));
                    "accepted"
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        })
    }
}

async fn post_signed(url: &str, token: Option<&str>, body: Vec<u8>) {
    let signer = Signer::new(KEY.as_bytes());
    let mut req = reqwest::Client::new()
        .post(url)
        .header("X-Chirp-Signature", signer.signature(&body));
    if let Some(t) = token {
        req = req.header(HEADER, t);
    }
    let resp = req.body(body).send().await.expect("post to chirp");
    assert_eq!(resp.status(), 200, "chirp refused a signed webhook");
}

impl Target for Webhook {
    async fn start(chirp_port: u16) -> Self {
        Webhook {
            chirp_port,
            endpoint_port: free_port(),
            server: Mutex::new(None),
        }
    }

    fn connection(&self) -> Option<(String, String)> {
        None
    }

    fn inject(&self, dest: &str) -> String {
        format!(
            "{{http: {{url: \"http://127.0.0.1:{}/{dest}\"}}}}",
            self.endpoint_port
        )
    }

    fn catch(&self, _dest: &str) -> String {
        "{http: {}}".into()
    }

    async fn prepare(&self, _dests: &[&str]) {}

    async fn relay(&self, _from: &str, _to: &str, probe: &str, plan: Plan) -> JoinHandle<()> {
        self.serve(plan, probe, CancellationToken::new()).await
    }

    async fn publish(&self, _dest: &str, probe: &str, token: Option<&str>, body: Vec<u8>) {
        post_signed(&self.hook(probe), token, body).await;
    }

    async fn looped(&self, name: &str) -> Looped {
        let stop = CancellationToken::new();
        self.serve(Plan::default(), name, stop.clone()).await;
        *self.server.lock().unwrap() = Some((stop, Plan::default(), name.to_owned()));
        Looped {
            inject: self.inject("loop"),
            catch: self.catch(""),
            dest: name.to_owned(),
        }
    }

    fn kill(&mut self) {
        if let Some((stop, _, _)) = self.server.lock().unwrap().as_ref() {
            stop.cancel();
        }
    }

    async fn restart(&mut self) {
        let (plan, probe) = {
            let s = self.server.lock().unwrap();
            let (_, plan, probe) = s.as_ref().expect("an endpoint to restart");
            (plan.clone(), probe.clone())
        };
        let stop = CancellationToken::new();
        self.serve(plan.clone(), &probe, stop.clone()).await;
        *self.server.lock().unwrap() = Some((stop, plan, probe));
    }

    fn reports_down(&self) -> bool {
        // An HTTP inject has no connection to lose; refused posts are publish failures.
        false
    }

    fn header_tokens(&self) -> bool {
        false
    }

    fn tolerance(&self) -> Duration {
        Duration::from_millis(25)
    }

    fn outage_kind(&self) -> FailureKind {
        FailureKind::Unavailable
    }
}
