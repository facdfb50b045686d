//! The named connections probes use: which ends use each (`needs`), the
//! connected clients of every transport (`Connections`), and building a
//! probe's injector and catch on them. The only place besides `mod.rs`
//! that names every transport.

use super::*;

/// Which ends of probes use a named connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub inject: bool,
    pub catch: bool,
}

/// What a named connection is connected for: its settings, the ends that
/// use it, and the destinations they name (the embedded Kafka cluster
/// creates its topics at start).
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub config: ConnectionConfig,
    pub roles: Roles,
    pub destinations: Vec<String>,
}

impl Need {
    /// Whether a connection made for `self` serves `other` as it is: the
    /// same settings, every role it needs, and (the embedded cluster) every
    /// topic.
    pub fn serves(&self, other: &Need) -> bool {
        let embedded = matches!(
            &self.config,
            ConnectionConfig::Kafka(k) if matches!(k.brokers, kafka::config::Brokers::Embedded)
        );
        self.config == other.config
            && (self.roles.inject || !other.roles.inject)
            && (self.roles.catch || !other.roles.catch)
            && (!embedded
                || other
                    .destinations
                    .iter()
                    .all(|d| self.destinations.contains(d)))
    }
}

/// The named connections some probe uses, and what for.
pub fn needs(
    configs: &BTreeMap<String, ConnectionConfig>,
    ends: &[(&InjectConfig, &CatchConfig)],
) -> BTreeMap<String, Need> {
    let mut out = BTreeMap::new();
    for (name, config) in configs {
        let named = |e: &End| e.connection.as_deref() == Some(name);
        let roles = Roles {
            inject: ends.iter().any(|(i, _)| named(&i.end())),
            catch: ends.iter().any(|(_, c)| named(&c.end(""))),
        };
        let mut destinations: Vec<String> = ends
            .iter()
            .flat_map(|(i, c)| [i.end(), c.end("")])
            .filter(|e| named(e))
            .filter_map(|e| e.destination)
            .collect();
        if destinations.is_empty() {
            continue;
        }
        destinations.sort();
        destinations.dedup();
        out.insert(
            name.clone(),
            Need {
                config: config.clone(),
                roles,
                destinations,
            },
        );
    }
    out
}

/// The connected named clients.
#[derive(Default)]
pub struct Connections {
    nats: BTreeMap<String, nats::Connected>,
    kafka: BTreeMap<String, kafka::Connected>,
    amqp: BTreeMap<String, amqp::Connected>,
    mqtt: BTreeMap<String, mqtt::Connected>,
    redis: BTreeMap<String, redis::Connected>,
    sqs: BTreeMap<String, sqs::Connected>,
    pubsub: BTreeMap<String, pubsub::Connected>,
    links: Vec<Arc<LinkStatus>>,
}

/// Connects every named connection a probe uses. `ends` are the probes'
/// inject and catch settings (the embedded Kafka cluster creates their topics).
pub async fn connect(
    configs: &BTreeMap<String, ConnectionConfig>,
    ends: &[(&InjectConfig, &CatchConfig)],
    ctx: &Context,
) -> Result<Connections, SetupError> {
    connect_needed(&needs(configs, ends), ctx).await
}

/// Connects each of `needs`.
pub async fn connect_needed(
    needs: &BTreeMap<String, Need>,
    ctx: &Context,
) -> Result<Connections, SetupError> {
    let mut out = Connections::default();
    for (name, need) in needs {
        match &need.config {
            ConnectionConfig::Nats(c) => {
                let conn = nats::connect(name, c, need.roles, ctx).await?;
                out.links.extend(conn.links());
                out.nats.insert(name.clone(), conn);
            }
            ConnectionConfig::Kafka(c) => {
                let conn = kafka::connect(name, c, need.destinations.clone())?;
                out.links.push(conn.link());
                out.kafka.insert(name.clone(), conn);
            }
            ConnectionConfig::Amqp(c) => {
                let conn = amqp::connect(name, c, need.roles, ctx).await?;
                out.links.extend(conn.links());
                out.amqp.insert(name.clone(), conn);
            }
            ConnectionConfig::Mqtt(c) => {
                let conn = mqtt::connect(name, c, need.roles, ctx).await?;
                out.links.extend(conn.links());
                out.mqtt.insert(name.clone(), conn);
            }
            ConnectionConfig::Redis(c) => {
                let conn = redis::connect(name, c, need.roles, ctx).await?;
                out.links.extend(conn.links());
                out.redis.insert(name.clone(), conn);
            }
            ConnectionConfig::Sqs(c) => {
                let conn = sqs::connect(name, c, need.roles, ctx).await?;
                out.links.extend(conn.links());
                out.sqs.insert(name.clone(), conn);
            }
            ConnectionConfig::PubSub(c) => {
                let conn = pubsub::connect(name, c, need.roles, ctx).await?;
                out.links.extend(conn.links());
                out.pubsub.insert(name.clone(), conn);
            }
        }
    }
    Ok(out)
}

/// The connected client `name` of `map` (validation made sure it exists).
fn named<'a, T>(map: &'a BTreeMap<String, T>, name: &str) -> Result<&'a T, SetupError> {
    map.get(name).ok_or_else(|| {
        SetupError::new(
            format!("connection `{name}`"),
            false,
            "not connected: no probe was known to use it",
        )
    })
}

impl Connections {
    /// Builds the injector of a probe named `probe`.
    pub async fn inject(
        &self,
        config: &InjectConfig,
        probe: &str,
        publish_timeout: Duration,
        ctx: &Context,
    ) -> Result<Arc<dyn Inject>, SetupError> {
        Ok(match config {
            InjectConfig::Nats(c) => Arc::new(nats::inject::NatsInject::new(
                named(&self.nats, &c.connection)?,
                c,
                publish_timeout,
            )?),
            InjectConfig::JetStream(c) => {
                jetstream::inject::build(named(&self.nats, &c.connection)?, c, publish_timeout, ctx)
                    .await?
            }
            InjectConfig::Http(c) => Arc::new(http::inject::HttpInject::new(
                c,
                probe,
                publish_timeout,
                ctx,
            )?),
            InjectConfig::Amqp(c) => {
                amqp::inject::build(named(&self.amqp, &c.connection)?, c, publish_timeout, ctx)
                    .await?
            }
            InjectConfig::Kafka(c) => {
                kafka::inject::build(
                    named(&self.kafka, &c.connection)?,
                    c,
                    probe,
                    publish_timeout,
                    ctx,
                )
                .await?
            }
            InjectConfig::Mqtt(c) => Arc::new(mqtt::inject::MqttInject::new(
                named(&self.mqtt, &c.connection)?,
                c,
                publish_timeout,
            )?),
            InjectConfig::Redis(c) => {
                redis::inject::build(named(&self.redis, &c.connection)?, c, publish_timeout, ctx)?
            }
            InjectConfig::Sqs(c) => {
                sqs::inject::build(named(&self.sqs, &c.connection)?, c, publish_timeout, ctx)
                    .await?
            }
            InjectConfig::PubSub(c) => {
                pubsub::inject::build(named(&self.pubsub, &c.connection)?, c, publish_timeout, ctx)
                    .await?
            }
        })
    }

    /// Starts the catch side of a probe, handing every message to `sink`.
    pub async fn catch(
        &self,
        config: &CatchConfig,
        sink: Arc<dyn CatchSink>,
        ctx: &Context,
    ) -> Result<Arc<dyn CatchHandle>, SetupError> {
        Ok(match config {
            CatchConfig::Nats(c) => {
                nats::catch::start(named(&self.nats, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::JetStream(c) => {
                jetstream::catch::start(named(&self.nats, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::Http(c) => http::catch::start(c, sink, ctx),
            CatchConfig::Kafka(c) => {
                kafka::catch::start(named(&self.kafka, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::Amqp(c) => {
                amqp::catch::start(named(&self.amqp, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::Mqtt(c) => {
                mqtt::catch::start(named(&self.mqtt, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::Redis(c) => {
                redis::catch::start(named(&self.redis, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::Sqs(c) => {
                sqs::catch::start(named(&self.sqs, &c.connection)?, c, sink, ctx).await?
            }
            CatchConfig::PubSub(c) => {
                pubsub::catch::start(named(&self.pubsub, &c.connection)?, c, sink, ctx).await?
            }
        })
    }

    /// Every client connection's record.
    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        self.links.clone()
    }

    /// Takes the connections named in `names` out (to close them once
    /// the probes using them have stopped).
    pub fn take(&mut self, names: &[String]) -> Connections {
        let mut out = Connections::default();
        for name in names {
            if let Some(c) = self.nats.remove(name) {
                out.nats.insert(name.clone(), c);
            }
            if let Some(c) = self.kafka.remove(name) {
                out.kafka.insert(name.clone(), c);
            }
            if let Some(c) = self.amqp.remove(name) {
                out.amqp.insert(name.clone(), c);
            }
            if let Some(c) = self.mqtt.remove(name) {
                out.mqtt.insert(name.clone(), c);
            }
            if let Some(c) = self.redis.remove(name) {
                out.redis.insert(name.clone(), c);
            }
            if let Some(c) = self.sqs.remove(name) {
                out.sqs.insert(name.clone(), c);
            }
            if let Some(c) = self.pubsub.remove(name) {
                out.pubsub.insert(name.clone(), c);
            }
        }
        let (gone, kept) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|l| names.contains(&l.connection));
        self.links = kept;
        out.links = gone;
        out
    }

    /// Adds `other`'s connections (none of which this has).
    pub fn add(&mut self, other: Connections) {
        self.nats.extend(other.nats);
        self.kafka.extend(other.kafka);
        self.amqp.extend(other.amqp);
        self.mqtt.extend(other.mqtt);
        self.redis.extend(other.redis);
        self.sqs.extend(other.sqs);
        self.pubsub.extend(other.pubsub);
        self.links.extend(other.links);
    }

    /// Closes the clients (after every task using them has stopped).
    pub async fn close(self) {
        for (_, k) in self.kafka {
            k.close().await;
        }
        for (_, a) in self.amqp {
            a.close().await;
        }
        drop(self.nats);
        // Ends their event loop tasks, which disconnect.
        drop(self.mqtt);
        // Ends the inject clients' supervisors; the catches end with their probes.
        drop(self.redis);
        // An SQS client holds no connection of its own beyond its pool.
        drop(self.sqs);
        // Ends the inject sides' supervisors; the publishers' dispatchers
        // end with the last injector, the catches' streams with their probes.
        drop(self.pubsub);
    }
}
