//! Reading one probe: its schedule, inject and catch transports, payload and
//! SLO, with the checks that need more than one field (threshold below the
//! deadline, slices that divide a day, connections that exist).

use super::reader::{child, did_you_mean, Fields, Reader};
use super::*;
use serde_yaml::Value;

pub(crate) fn read_probes(
    value: Option<&Value>,
    defaults: &Defaults,
    connections: &BTreeMap<String, Connection>,
    r: &mut Reader,
) -> Option<Vec<ProbeConfig>> {
    let Some(value) = value else {
        r.error("probes", "is required: a list of probes");
        return None;
    };
    let Value::Sequence(items) = value else {
        r.error("probes", "expected a list of probes");
        return None;
    };
    if items.is_empty() {
        r.error("probes", "the list is empty: configure at least one probe");
        return None;
    }
    let mut probes = Vec::new();
    let mut ok = true;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("probes[{i}]");
        match read_probe(item, &path, defaults, connections, r) {
            Some(p) => {
                if let Some(first) = seen.insert(p.name.clone(), i) {
                    r.error(
                        &child(&path, "name"),
                        format!("probe name `{}` is already used by probes[{first}]", p.name),
                    );
                    ok = false;
                }
                probes.push(p);
            }
            None => ok = false,
        }
    }
    ok.then_some(probes)
}

fn read_probe(
    value: &Value,
    path: &str,
    defaults: &Defaults,
    connections: &BTreeMap<String, Connection>,
    r: &mut Reader,
) -> Option<ProbeConfig> {
    let f = r.fields(
        value,
        path,
        &[
            "name",
            "interval",
            "deadline",
            "publish_timeout",
            "inject",
            "catch",
            "payload",
            "slo",
        ],
    );
    let errors_before = r.errors.len();
    let name = r.required_string(&f, "name");
    if let Some(n) = &name {
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.error(
                &f.path_of("name"),
                format!("`{n}` is not a valid probe name: use 1 to 64 letters, digits, `-` or `_`"),
            );
        }
    }
    let interval = r.duration(&f, "interval").unwrap_or(defaults.interval);
    if interval < Duration::from_millis(1) {
        r.error(&f.path_of("interval"), "must be at least 1ms");
    }
    let deadline = r.duration(&f, "deadline").unwrap_or(defaults.deadline);
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        r.error(&f.path_of("deadline"), "must be more than 0 and at most 1h");
    }
    if deadline.as_nanos() / interval.as_nanos().max(1) > crate::probe::ledger::MAX_IN_FLIGHT {
        r.error(
            &f.path_of("deadline"),
            format!(
                "deadline / interval allows more than {} canaries in flight; use a longer interval or a shorter deadline",
                crate::probe::ledger::MAX_IN_FLIGHT
            ),
        );
    }
    let publish_timeout = r
        .duration(&f, "publish_timeout")
        .or(defaults.publish_timeout)
        .unwrap_or_else(|| DEFAULT_PUBLISH_TIMEOUT.min(deadline));
    if publish_timeout.is_zero() || publish_timeout > deadline {
        r.error(
            &f.path_of("publish_timeout"),
            "must be more than 0 and no longer than the deadline",
        );
    }

    let inject = match f.get("inject") {
        None => {
            r.error(&f.path_of("inject"), "is required: where canaries are sent, e.g. `inject: {nats: {connection: main, subject: orders.in}}`");
            None
        }
        Some(v) => read_inject(v, &f.path_of("inject"), connections, r),
    };
    let catch = match f.get("catch") {
        None => {
            r.error(
                &f.path_of("catch"),
                "is required: where canaries come out, e.g. `catch: {http: {}}`",
            );
            None
        }
        Some(v) => read_catch(v, &f.path_of("catch"), connections, r),
    };
    let payload = read_payload(f.get("payload"), &f.path_of("payload"), defaults, r);
    let slo_draft = match f.get("slo") {
        Some(v) => read_slo(v, &f.path_of("slo"), r),
        None => SloDraft::default(),
    };
    let slo = Slo {
        latency: slo_draft.latency.or(defaults.slo.latency),
        delivery: slo_draft.delivery.or(defaults.slo.delivery),
        slice: slo_draft
            .slice
            .or(defaults.slo.slice)
            .unwrap_or(DEFAULT_SLICE),
        period: slo_draft
            .period
            .or(defaults.slo.period)
            .unwrap_or(DEFAULT_PERIOD),
    };
    check_slo(&slo, deadline, &f.path_of("slo"), r);

    if r.errors.len() != errors_before {
        return None;
    }
    Some(ProbeConfig {
        name: name?,
        interval,
        deadline,
        publish_timeout,
        inject: inject?,
        catch: catch?,
        payload: payload?,
        slo,
    })
}

/// The `connection` key: a defined connection of the transport `kind`.
fn connection_ref(
    f: &Fields,
    connections: &BTreeMap<String, Connection>,
    kind: &str,
    r: &mut Reader,
) -> Option<String> {
    let name = r.required_string(f, "connection")?;
    match connections.get(&name) {
        Some(Connection::Nats(_)) if kind == "nats" => Some(name),
        Some(Connection::Kafka(_)) if kind == "kafka" => Some(name),
        Some(other) => {
            let is = match other {
                Connection::Nats(_) => "nats",
                Connection::Kafka(_) => "kafka",
            };
            r.error(
                &f.path_of("connection"),
                format!(
                    "connection `{name}` is a {is} connection; this transport needs a {kind} one"
                ),
            );
            None
        }
        None => {
            let names: Vec<&str> = connections.keys().map(String::as_str).collect();
            let hint = match did_you_mean(&name, &names) {
                Some(s) => format!("; did you mean `{s}`?"),
                None if names.is_empty() => "; define it under `connections:`".to_owned(),
                None => format!("; defined connections: {}", names.join(", ")),
            };
            r.error(
                &f.path_of("connection"),
                format!("no connection named `{name}`{hint}"),
            );
            None
        }
    }
}

fn nats_subject(f: &Fields, wildcards: bool, r: &mut Reader) -> Option<String> {
    let s = r.required_string(f, "subject")?;
    let bad = s.is_empty()
        || s.contains(char::is_whitespace)
        || s.split('.').any(str::is_empty)
        || (!wildcards && s.split('.').any(|t| t == "*" || t == ">"));
    if bad {
        r.error(
            &f.path_of("subject"),
            format!(
                "`{s}` is not a valid NATS subject{}",
                if wildcards {
                    ""
                } else {
                    " to publish to (no wildcards)"
                }
            ),
        );
        return None;
    }
    Some(s)
}

fn read_inject(
    value: &Value,
    path: &str,
    connections: &BTreeMap<String, Connection>,
    r: &mut Reader,
) -> Option<Inject> {
    let (kind, body, p) = read_transport_choice(value, path, &["nats", "http", "kafka"], r)?;
    match kind {
        "kafka" => {
            let f = r.fields(
                body,
                &p,
                &["connection", "topic", "partitions", "acks", "headers"],
            );
            let connection = connection_ref(&f, connections, "kafka", r);
            let topic = kafka_topic(&f, r);
            let partitions = match f.get("partitions") {
                None => Some(None),
                Some(Value::String(s)) if s == "all" => Some(Some(Partitions::All)),
                Some(Value::Sequence(items)) if !items.is_empty() => {
                    let list: Option<Vec<i32>> = items
                        .iter()
                        .map(|v| v.as_u64().and_then(|n| i32::try_from(n).ok()))
                        .collect();
                    match list {
                        Some(mut l) => {
                            l.sort_unstable();
                            l.dedup();
                            Some(Some(Partitions::List(l)))
                        }
                        None => {
                            r.error(
                                &f.path_of("partitions"),
                                "partition numbers are whole numbers from 0",
                            );
                            None
                        }
                    }
                }
                Some(_) => {
                    r.error(
                        &f.path_of("partitions"),
                        "expected `all` or a list of partition numbers, e.g. `[0, 1, 2]`",
                    );
                    None
                }
            };
            let acks = r.string(&f, "acks").unwrap_or_else(|| "all".into());
            if !matches!(acks.as_str(), "all" | "-1" | "0" | "1") {
                r.error(
                    &f.path_of("acks"),
                    format!("`{acks}` is not one of all, 1, 0"),
                );
            }
            let headers = r.string_map(&f, "headers");
            Some(Inject::Kafka(KafkaInject {
                connection: connection?,
                topic: topic?,
                partitions: partitions?,
                acks,
                headers,
            }))
        }
        "nats" => {
            let f = r.fields(body, &p, &["connection", "subject", "headers"]);
            let connection = connection_ref(&f, connections, "nats", r);
            let subject = nats_subject(&f, false, r);
            let headers = r.string_map(&f, "headers");
            Some(Inject::Nats(NatsInject {
                connection: connection?,
                subject: subject?,
                headers,
            }))
        }
        "http" => {
            let f = r.fields(body, &p, &["url", "method", "headers", "signature_header"]);
            let url = r.required_string(&f, "url");
            if let Some(u) = &url {
                if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with('/')) {
                    r.error(
                        &f.path_of("url"),
                        format!(
                            "`{}` must start with http://, https:// or / (a path on chirp's own listener)",
                            Endpoint::new(u.clone())
                        ),
                    );
                }
            }
            let method = match r
                .string(&f, "method")
                .as_deref()
                .map(str::to_ascii_uppercase)
            {
                None => Some(HttpMethod::Post),
                Some(m) if m == "POST" => Some(HttpMethod::Post),
                Some(m) if m == "PUT" => Some(HttpMethod::Put),
                Some(m) => {
                    r.error(
                        &f.path_of("method"),
                        format!("`{m}` is not supported; use POST or PUT"),
                    );
                    None
                }
            };
            let headers = r
                .string_map(&f, "headers")
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect();
            let signature_header = header_name(&f, "signature_header", r)?;
            Some(Inject::Http(HttpInject {
                url: Endpoint::new(url?),
                method: method?,
                headers,
                signature_header,
            }))
        }
        _ => None,
    }
}

fn header_name(f: &Fields, key: &str, r: &mut Reader) -> Option<String> {
    let name = r
        .string(f, key)
        .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.into());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.error(
            &f.path_of(key),
            format!("`{name}` is not a valid header name"),
        );
        return None;
    }
    Some(name)
}

fn read_catch(
    value: &Value,
    path: &str,
    connections: &BTreeMap<String, Connection>,
    r: &mut Reader,
) -> Option<Catch> {
    let (kind, body, p) = read_transport_choice(value, path, &["nats", "http", "kafka"], r)?;
    match kind {
        "kafka" => {
            let f = r.fields(
                body,
                &p,
                &[
                    "connection",
                    "topic",
                    "group_id",
                    "commit",
                    "fetch_wait_max",
                ],
            );
            let connection = connection_ref(&f, connections, "kafka", r);
            let topic = kafka_topic(&f, r);
            let group_id = r.string(&f, "group_id");
            let commit = r.bool(&f, "commit").unwrap_or(false);
            if commit && group_id.is_none() {
                r.error(
                    &f.path_of("commit"),
                    "committing offsets needs an explicit `group_id`",
                );
            }
            let fetch_wait_max = r
                .duration(&f, "fetch_wait_max")
                .unwrap_or(Duration::from_millis(5));
            Some(Catch::Kafka(KafkaCatch {
                connection: connection?,
                topic: topic?,
                group_id,
                commit,
                fetch_wait_max,
            }))
        }
        "nats" => {
            let f = r.fields(body, &p, &["connection", "subject", "queue_group"]);
            let connection = connection_ref(&f, connections, "nats", r);
            let subject = nats_subject(&f, true, r);
            let queue_group = r.string(&f, "queue_group");
            Some(Catch::Nats(NatsCatch {
                connection: connection?,
                subject: subject?,
                queue_group,
            }))
        }
        "http" => {
            let f = r.fields(body, &p, &["signature_header", "secret"]);
            let signature_header = header_name(&f, "signature_header", r)?;
            let secret = r.secret(&f, "secret");
            Some(Catch::Http(HttpCatch {
                signature_header,
                secret,
            }))
        }
        _ => None,
    }
}

fn read_payload(
    value: Option<&Value>,
    path: &str,
    defaults: &Defaults,
    r: &mut Reader,
) -> Option<Payload> {
    let mut p = Payload {
        size: defaults.payload_size,
        token_pointer: None,
    };
    if let Some(v) = value {
        let f = r.fields(v, path, &["size", "token_pointer"]);
        if let Some(size) = r.u64(&f, "size") {
            p.size = size as usize;
        }
        p.token_pointer = r.string(&f, "token_pointer");
        if let Some(ptr) = &p.token_pointer {
            if !ptr.is_empty() && !ptr.starts_with('/') {
                r.error(
                    &f.path_of("token_pointer"),
                    format!("`{ptr}` is not a JSON pointer; write e.g. `/meta/chirp_token`"),
                );
            }
        }
    }
    if p.size > MAX_PAYLOAD {
        r.error(
            &child(path, "size"),
            format!("{} bytes is more than the limit of {MAX_PAYLOAD}", p.size),
        );
        return None;
    }
    Some(p)
}

pub(crate) fn read_slo(value: &Value, path: &str, r: &mut Reader) -> SloDraft {
    let f = r.fields(value, path, &["latency", "delivery", "slice", "period"]);
    let latency = f.get("latency").and_then(|v| {
        let lf = r.fields(v, &f.path_of("latency"), &["threshold", "objective"]);
        let threshold = r.duration(&lf, "threshold");
        let objective = r.percent(&lf, "objective");
        if !lf.has("threshold") {
            r.error(
                &lf.path_of("threshold"),
                "is required, e.g. `threshold: 500ms`",
            );
        }
        if !lf.has("objective") {
            r.error(
                &lf.path_of("objective"),
                "is required, e.g. `objective: 99%`",
            );
        }
        Some(LatencyObjective {
            threshold: threshold?,
            objective: objective?,
        })
    });
    let delivery = f.get("delivery").and_then(|v| {
        let df = r.fields(v, &f.path_of("delivery"), &["objective"]);
        if !df.has("objective") {
            r.error(
                &df.path_of("objective"),
                "is required, e.g. `objective: 99.9%`",
            );
        }
        Some(DeliveryObjective {
            objective: r.percent(&df, "objective")?,
        })
    });
    SloDraft {
        latency,
        delivery,
        slice: r.duration(&f, "slice"),
        period: r.duration(&f, "period"),
    }
}

fn check_slo(slo: &Slo, deadline: Duration, path: &str, r: &mut Reader) {
    if let Some(l) = slo.latency {
        if l.threshold.is_zero() || l.threshold >= deadline {
            r.error(
                &format!("{path}.latency.threshold"),
                format!(
                    "{} must be above 0 and below the probe's deadline ({})",
                    humantime::format_duration(l.threshold),
                    humantime::format_duration(deadline)
                ),
            );
        }
    }
    let day = 86_400_000u128;
    let slice_ms = slo.slice.as_millis();
    if slice_ms < 1000 || slo.slice.subsec_nanos() != 0 || day % slice_ms != 0 {
        r.error(
            &format!("{path}.slice"),
            format!(
                "{} must be a whole number of seconds that divides a day (e.g. 1m, 5m, 1h)",
                humantime::format_duration(slo.slice)
            ),
        );
    } else if slo.period.as_millis() % slice_ms != 0 || slo.period < slo.slice {
        r.error(
            &format!("{path}.period"),
            format!(
                "{} must be a whole number of slices ({})",
                humantime::format_duration(slo.period),
                humantime::format_duration(slo.slice)
            ),
        );
    }
}

fn kafka_topic(f: &Fields, r: &mut Reader) -> Option<String> {
    let t = r.required_string(f, "topic")?;
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        r.error(
            &f.path_of("topic"),
            format!("`{t}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"),
        );
        return None;
    }
    Some(t)
}

pub(crate) fn read_kafka_connection(
    value: &Value,
    path: &str,
    r: &mut Reader,
) -> Option<KafkaConnection> {
    let f = r.fields(value, path, &["brokers", "tls", "sasl", "properties"]);
    let brokers = r.required_string(&f, "brokers").map(|b| {
        if b.trim() == "embedded" {
            KafkaBrokers::Embedded
        } else {
            KafkaBrokers::List(b)
        }
    });
    let tls = match f.get("tls") {
        None => None,
        Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(TlsConfig::default()),
        Some(t) => Some(read_tls(t, &f.path_of("tls"), r)),
    };
    let sasl = f.get("sasl").and_then(|s| {
        let sf = r.fields(
            s,
            &f.path_of("sasl"),
            &["mechanism", "username", "password"],
        );
        let mechanism = match r
            .required_string(&sf, "mechanism")?
            .to_ascii_uppercase()
            .as_str()
        {
            "PLAIN" => Some(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
            other => {
                r.error(
                    &sf.path_of("mechanism"),
                    format!(
                        "`{other}` is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    ),
                );
                None
            }
        };
        let username = r.required_string(&sf, "username");
        let password = r.secret(&sf, "password");
        if !sf.has("password") {
            r.error(&sf.path_of("password"), "is required");
        }
        Some(Sasl {
            mechanism: mechanism?,
            username: username?,
            password: password?,
        })
    });
    let properties = r
        .string_map(&f, "properties")
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v)))
        .collect();
    if matches!(brokers, Some(KafkaBrokers::Embedded)) && (tls.is_some() || sasl.is_some()) {
        r.error(
            path,
            "the embedded test cluster takes neither `tls` nor `sasl`",
        );
    }
    Some(KafkaConnection {
        brokers: brokers?,
        tls,
        sasl,
        properties,
    })
}
