//! The Grafana dashboards in `dashboards/`: every panel query parses as
//! PromQL once Grafana's variables are filled in, reads counters only
//! through `rate`/`increase`/`irate` (checked on the parsed tree), names
//! only metrics chirp exports or records, and every panel has a unit, a
//! description and the `${datasource}` variable. A real Prometheus (Debian
//! package `prometheus`) scraping a `chirp run` with faults answers every
//! panel query with data.

use crate::support::{self, free_port, Conf, Kill, TempDir, CHIRP};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chirp::export::catalogue::{Kind, CATALOGUE};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self as promql, Expr, VectorSelector};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
const OVERVIEW: &str = "chirp-overview.json";
const DETAIL: &str = "chirp-probe-detail.json";
const PANEL_TYPES: &[&str] = &[
    "stat",
    "timeseries",
    "table",
    "heatmap",
    "state-timeline",
    "bargauge",
];

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// Every dashboard file, by file name; exactly the two documented ones.
fn dashboards() -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .expect("dashboards/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names, [OVERVIEW, DETAIL], "dashboards/ holds these two");
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(Path::new(DIR).join(&n)).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, v)
        })
        .collect()
}

/// Every panel, rows included, with the panels of collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("a panels list") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// One target of one panel.
struct Query {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / \"{}\" / {}: {}",
            self.dashboard, self.panel, self.ref_id, self.expr
        )
    }
}

fn queries(dashboards: &[(String, Value)]) -> Vec<Query> {
    let mut out = Vec::new();
    for (name, d) in dashboards {
        for p in panels(d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    dashboard: name.clone(),
                    panel: p["title"].as_str().unwrap_or("").to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or("").to_owned(),
                    expr: t["expr"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
    }
    out
}

/// The values Grafana would put in for its variables: `$probe` as the
/// overview's "All" (`.+`), the intervals as Grafana computes them for a
/// 1 s scrape interval and a short time range.
fn grafana_vars(environment: &str) -> HashMap<&'static str, String> {
    [
        ("datasource", "prometheus"),
        ("environment", environment),
        ("probe", ".+"),
        ("__rate_interval", "10s"),
        ("__interval", "2s"),
        ("__interval_ms", "2000"),
        ("__range", "1m"),
        ("__range_s", "60"),
        ("__range_ms", "60000"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// `expr` with Grafana's `$name`, `${name}` and `${name:format}` replaced;
/// panics on a variable it does not know (add it to [`grafana_vars`]).
fn substitute(expr: &str, vars: &HashMap<&'static str, String>) -> String {
    assert!(
        !expr.contains("[["),
        "the deprecated [[var]] syntax in: {expr}"
    );
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced
                    .find('}')
                    .unwrap_or_else(|| panic!("unclosed ${{ in: {expr}"));
                (braced[..end].split(':').next().unwrap_or(""), end + 2)
            }
            None => {
                let n = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..n], n)
            }
        };
        if name.is_empty() {
            // A `$` that is not a variable (the end of a regex).
            out.push('$');
            rest = after;
            continue;
        }
        let value = vars
            .get(name)
            .unwrap_or_else(|| panic!("unknown Grafana variable `{name}` in: {expr}"));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The metric name a selector reads: its name, or an exact `__name__`.
fn selector_name(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone())
    })
}

/// What a walk over one parsed query finds.
#[derive(Default)]
struct Found {
    /// Exact metric names read.
    names: Vec<String>,
    /// `__name__` regexes read.
    name_regexes: Vec<String>,
    /// Counters read other than as the series of `rate`, `increase` or `irate`.
    unguarded: Vec<String>,
}

/// chirp's histograms (their `_bucket`, `_count` and `_sum` series are counters).
fn histograms() -> Vec<&'static str> {
    CATALOGUE
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
        .map(|m| m.prometheus)
        .collect()
}

fn is_counter(name: &str) -> bool {
    name.ends_with("_total")
        || name.ends_with("_bucket")
        || histograms().iter().any(|h| {
            ["_count", "_sum"]
                .iter()
                .any(|s| name.strip_prefix(h) == Some(s))
        })
}

impl Found {
    fn selector(&mut self, vs: &VectorSelector, guarded: bool) {
        match selector_name(vs) {
            Some(name) => {
                if is_counter(&name) && !guarded {
                    self.unguarded.push(name.clone());
                }
                self.names.push(name);
            }
            None => self.name_regexes.extend(
                vs.matchers
                    .matchers
                    .iter()
                    .filter(|m| m.name == "__name__")
                    .map(|m| m.value.clone()),
            ),
        }
    }
}

/// Walks `e`. `guarded` holds while the path up to the nearest function
/// is `rate`/`increase`/`irate` through nothing but a range (or subquery)
/// and parentheses: `sum(x_total)` and `rate(sum(x_total)[5m:])` are not.
fn walk(e: &Expr, guarded: bool, found: &mut Found) {
    match e {
        Expr::VectorSelector(vs) => found.selector(vs, guarded),
        Expr::MatrixSelector(m) => found.selector(&m.vs, guarded),
        Expr::Paren(p) => walk(&p.expr, guarded, found),
        Expr::Subquery(s) => walk(&s.expr, guarded, found),
        Expr::Call(c) => {
            let counts = matches!(c.func.name, "rate" | "increase" | "irate");
            for a in &c.args.args {
                walk(a, counts, found);
            }
        }
        Expr::Aggregate(a) => {
            walk(&a.expr, false, found);
            if let Some(p) = &a.param {
                walk(p, false, found);
            }
        }
        Expr::Unary(u) => walk(&u.expr, false, found),
        Expr::Binary(b) => {
            walk(&b.lhs, false, found);
            walk(&b.rhs, false, found);
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Extension(_) => panic!("the parser made an extension node"),
    }
}

fn analyse(expr: &str) -> Result<Found, String> {
    let tree = promql::parse(expr)?;
    let mut found = Found::default();
    walk(&tree, false, &mut found);
    Ok(found)
}

/// The names of the recording rules `chirp rules` writes for a
/// configuration with two SLO periods.
fn recorded_names() -> BTreeSet<String> {
    let conf = support::config_file(&format!(
        "signing_key: {}\nprobes:\n  - {{name: a, inject: {{http: {{url: /hooks/a}}}}, catch: {{http: {{}}}}, slo: {{delivery: {{objective: 99%}}, period: 1h}}}}\n  - {{name: b, inject: {{http: {{url: /hooks/b}}}}, catch: {{http: {{}}}}, slo: {{delivery: {{objective: 99%}}}}}}\n",
        support::KEY
    ));
    let out = support::exits(
        Command::new(&*CHIRP).args(["rules", "-c"]).arg(&conf.path),
        0,
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect()
}

/// Whether the anchored regex `re` of a `__name__=~"re"` matcher takes
/// `name`; enough for the dashboards' patterns, a literal prefix followed
/// by `.+` or `.*`.
fn name_regex_matches(re: &str, name: &str) -> bool {
    if let Some(prefix) = re.strip_suffix(".+") {
        name.len() > prefix.len() && name.starts_with(prefix)
    } else if let Some(prefix) = re.strip_suffix(".*") {
        name.starts_with(prefix)
    } else {
        panic!("a __name__ regex this test cannot read: {re}")
    }
}

#[test]
fn the_counter_check_finds_counters_read_raw() {
    let unguarded = |e: &str| analyse(e).unwrap().unguarded;
    assert_eq!(
        unguarded("chirp_canaries_sent_total"),
        ["chirp_canaries_sent_total"]
    );
    assert_eq!(
        unguarded("sum by (probe) (chirp_canaries_lost_total{probe=\"a\"})"),
        ["chirp_canaries_lost_total"]
    );
    assert_eq!(
        unguarded("histogram_quantile(0.99, sum by (le) (chirp_latency_seconds_bucket))"),
        ["chirp_latency_seconds_bucket"]
    );
    assert_eq!(
        unguarded("rate(chirp_schedule_lag_seconds_sum[5m]) / chirp_schedule_lag_seconds_count"),
        ["chirp_schedule_lag_seconds_count"]
    );
    assert_eq!(
        unguarded("rate(sum(chirp_canaries_sent_total)[5m:1m])"),
        ["chirp_canaries_sent_total"]
    );
    assert_eq!(
        unguarded("{__name__=\"chirp_canaries_late_total\"}"),
        ["chirp_canaries_late_total"]
    );
    assert_eq!(
        unguarded("delta(chirp_canaries_late_total[5m])"),
        ["chirp_canaries_late_total"]
    );
    for fine in [
        "sum by (probe) (rate(chirp_canaries_sent_total[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(chirp_latency_seconds_bucket[5m])))",
        "increase((chirp_canaries_lost_total)[1h:1m])",
        "irate(chirp_canaries_duplicate_total[1m]) / chirp_canaries_in_flight",
        "time() - chirp_last_caught_timestamp_seconds",
        "chirp_slo_error_budget_spent_canaries",
    ] {
        assert_eq!(unguarded(fine), Vec::<String>::new(), "{fine}");
    }
    assert!(analyse("sum(rate(x[5m])").is_err());
}

#[test]
fn the_variable_substitution_fills_in_every_form() {
    let vars = grafana_vars("prod");
    assert_eq!(
        substitute(
            "rate(x{environment=~\"$environment\", probe=~\"${probe:regex}|\"}[$__rate_interval]) or y{a=~\"b$\"}[${__range}]",
            &vars
        ),
        "rate(x{environment=~\"prod\", probe=~\".+|\"}[10s]) or y{a=~\"b$\"}[1m]"
    );
}

#[test]
fn every_panel_query_parses_reads_counters_through_rate_and_names_real_metrics() {
    let dashboards = dashboards();
    let vars = grafana_vars("prod");
    let exported: HashSet<String> = CATALOGUE
        .iter()
        .flat_map(|m| {
            let base = m.prometheus.to_owned();
            if m.kind == Kind::Histogram {
                ["_bucket", "_count", "_sum"]
                    .iter()
                    .map(|s| format!("{base}{s}"))
                    .collect()
            } else {
                vec![base]
            }
        })
        .collect();
    let recorded = recorded_names();
    assert!(
        recorded.contains("chirp:sli_error_ratio:rate5m"),
        "{recorded:?}"
    );
    let mut problems = Vec::new();
    let all = queries(&dashboards);
    assert!(all.len() > 40, "only {} queries", all.len());
    for q in &all {
        if q.expr.trim().is_empty() {
            problems.push(format!("{q}: no expression"));
            continue;
        }
        let expr = substitute(&q.expr, &vars);
        let found = match analyse(&expr) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{q}: does not parse: {e}"));
                continue;
            }
        };
        for c in &found.unguarded {
            problems.push(format!(
                "{q}: counter {c} read without rate(), increase() or irate()"
            ));
        }
        for name in &found.names {
            let known = exported.contains(name) || recorded.contains(name) || name == "ALERTS";
            if !known {
                problems.push(format!(
                    "{q}: {name} is neither on chirp's /metrics nor a `chirp rules` record"
                ));
            }
        }
        for re in &found.name_regexes {
            if !recorded.iter().any(|r| name_regex_matches(re, r)) {
                problems.push(format!(
                    "{q}: __name__=~\"{re}\" matches no recorded series"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// A panel's rectangle in Grafana's 24-column grid.
fn grid(p: &Value) -> (i64, i64, i64, i64) {
    let g = &p["gridPos"];
    let n = |k: &str| {
        g[k].as_i64()
            .unwrap_or_else(|| panic!("panel {} has no gridPos.{k}", p["title"]))
    };
    (n("x"), n("y"), n("w"), n("h"))
}

#[test]
fn every_panel_has_a_unit_a_description_and_the_datasource_variable() {
    let dashboards = dashboards();
    let readme = std::fs::read_to_string(Path::new(DIR).join("README.md")).unwrap();
    let mut problems = Vec::new();
    let mut uids = HashSet::new();
    for (name, d) in &dashboards {
        let mut say = |s: String| problems.push(format!("{name}: {s}"));
        if d["schemaVersion"].as_u64().unwrap_or(0) < 39 {
            say(format!(
                "schemaVersion {} (want 39 or later)",
                d["schemaVersion"]
            ));
        }
        let uid = d["uid"].as_str().unwrap_or("");
        if uid.is_empty() || !uids.insert(uid.to_owned()) {
            say(format!("uid `{uid}` missing or not unique"));
        }
        if !d["title"].as_str().is_some_and(|t| readme.contains(t)) {
            say(format!("dashboards/README.md does not name {}", d["title"]));
        }

        // Variables: datasource, environment, probe (multi with All on the overview).
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let var = |n: &str| vars.iter().find(|v| v["name"] == n).cloned();
        match var("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            other => say(format!(
                "no datasource variable of type prometheus: {other:?}"
            )),
        }
        for n in ["environment", "probe"] {
            let Some(v) = var(n) else {
                say(format!("no `{n}` variable"));
                continue;
            };
            if v["type"] != "query" || v["datasource"] != datasource() {
                say(format!("variable `{n}` is not a query on ${{datasource}}"));
            }
            let def = v["definition"].as_str().unwrap_or("");
            if v["query"]["query"].as_str() != Some(def) {
                say(format!("variable `{n}`: query and definition differ"));
            }
            // label_values(<selector>, <label>): the selector parses and the label is the variable's.
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.rsplit_once(','));
            match inner {
                Some((selector, label)) if label.trim() == n => {
                    if let Err(e) = promql::parse(&substitute(selector, &grafana_vars("prod"))) {
                        say(format!("variable `{n}`: {selector} does not parse: {e}"));
                    }
                }
                _ => say(format!(
                    "variable `{n}` is not label_values(<selector>, {n}): {def}"
                )),
            }
        }
        if name == OVERVIEW {
            let p = var("probe").unwrap_or_default();
            if p["multi"] != true || p["includeAll"] != true || p["allValue"] != ".+" {
                say("the overview's probe variable is not multi-value with All = .+".into());
            }
        }

        // Every datasource reference anywhere is the variable.
        let mut stack = vec![d];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(m) => {
                    if let Some(ds) = m.get("datasource") {
                        if *ds != datasource() {
                            say(format!(
                                "a datasource reference is {ds}, not ${{datasource}}"
                            ));
                        }
                    }
                    stack.extend(m.values());
                }
                Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }

        let mut ids = HashSet::new();
        let mut cells: Vec<(String, (i64, i64, i64, i64))> = Vec::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or("").to_owned();
            if title.is_empty() {
                say(format!("panel {} has no title", p["id"]));
            }
            if !ids.insert(p["id"].as_u64().unwrap_or(0)) || p["id"].as_u64().unwrap_or(0) == 0 {
                say(format!("\"{title}\": id missing or not unique"));
            }
            if !readme.contains(&title) {
                say(format!(
                    "\"{title}\" is not described in dashboards/README.md"
                ));
            }
            let (x, y, w, h) = grid(p);
            if x < 0 || w < 1 || h < 1 || x + w > 24 {
                say(format!("\"{title}\": gridPos outside the 24 columns"));
            }
            for (other, (ox, oy, ow, oh)) in &cells {
                if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                    say(format!("\"{title}\" overlaps \"{other}\""));
                }
            }
            cells.push((title.clone(), (x, y, w, h)));
            if p["type"] == "row" {
                if p["collapsed"] != false {
                    say(format!("row \"{title}\" is collapsed"));
                }
                continue;
            }
            if !PANEL_TYPES.contains(&p["type"].as_str().unwrap_or("")) {
                say(format!("\"{title}\": panel type {}", p["type"]));
            }
            if p["description"].as_str().unwrap_or("").trim().len() < 20 {
                say(format!("\"{title}\" has no description"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("")
                .is_empty()
            {
                say(format!("\"{title}\" has no fieldConfig.defaults.unit"));
            }
            if p["datasource"] != datasource() {
                say(format!("\"{title}\" does not use ${{datasource}}"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                say(format!("\"{title}\" has no query"));
            }
            let mut refs = HashSet::new();
            for t in &targets {
                if !refs.insert(t["refId"].as_str().unwrap_or("").to_owned()) {
                    say(format!(
                        "\"{title}\": refId {} missing or repeated",
                        t["refId"]
                    ));
                }
                if t["datasource"] != datasource() {
                    say(format!(
                        "\"{title}\" {}: not on ${{datasource}}",
                        t["refId"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

// ------------------------------------------------------------------ live

const ENV: &str = "dash";

/// What the relay does to the `i`th canary it is handed.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    Forward,
    /// Never forwarded: lost.
    Lose,
    /// Forwarded twice: duplicate.
    Duplicate,
    /// Held, so the next canaries overtake it (reordered) and it misses
    /// the 25 ms latency threshold.
    Hold,
    /// Held past the 1 s deadline: lost, then caught late.
    Late,
    /// Answered 503 and not forwarded: publish_failed{kind="unavailable"}.
    Refuse,
}

impl Fault {
    fn of(i: u64) -> Fault {
        match i % 20 {
            1 => Fault::Refuse,
            3 | 13 => Fault::Lose,
            5 | 15 => Fault::Duplicate,
            7 | 17 => Fault::Hold,
            9 => Fault::Late,
            _ => Fault::Forward,
        }
    }
}

/// An HTTP endpoint that chirp posts canaries to and that forwards them to
/// chirp's webhook `hook`, applying [`Fault::of`] in arrival order.
async fn faulty_relay(hook: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/in",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let fault = Fault::of(seen.fetch_add(1, Ordering::Relaxed));
            let (http, hook) = (http.clone(), hook.clone());
            async move {
                let (copies, hold) = match fault {
                    Fault::Refuse => return StatusCode::SERVICE_UNAVAILABLE,
                    Fault::Lose => return StatusCode::OK,
                    Fault::Forward => (1, Duration::ZERO),
                    Fault::Duplicate => (2, Duration::ZERO),
                    Fault::Hold => (1, Duration::from_millis(150)),
                    Fault::Late => (1, Duration::from_millis(1500)),
                };
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    for _ in 0..copies {
                        let mut req = http.post(&hook).body(body.clone());
                        if let Some(sig) = headers.get("X-Chirp-Signature") {
                            req = req.header("X-Chirp-Signature", sig);
                        }
                        let _ = req.send().await;
                    }
                });
                StatusCode::OK
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

/// The result of an instant query (an empty list for an empty vector).
async fn query(http: &reqwest::Client, base: &str, q: &str) -> Result<Vec<Value>, String> {
    let resp = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(match &body["data"]["result"] {
        Value::Array(a) => a.clone(),
        // A scalar or string result is a value, never empty.
        other => vec![other.clone()],
    })
}

/// Probes: `faulty` through the relay (every fault of [`Fault`]), `refused`
/// posting to a port nobody listens on (every canary publish_failed, never
/// a catch, so ChirpNoCanaryCaught fires), and `partitioned` on the
/// embedded Kafka cluster in per-partition mode (the partition table).
fn configuration(chirp_port: u16, relay: &str, refused_port: u16) -> String {
    let mut c = Conf::new()
        .listen(format!("127.0.0.1:{chirp_port}"))
        .connection("embedded", "kafka: {brokers: embedded}")
        .probe(format!(
            "{{name: faulty, interval: 50ms, deadline: 1s, inject: {{http: {{url: \"{relay}\"}}}}, catch: {{http: {{}}}}, slo: {{latency: {{threshold: 25ms, objective: 99%}}, delivery: {{objective: 99%}}, period: 1h}}}}"
        ))
        .probe(format!(
            "{{name: refused, interval: 100ms, deadline: 1s, inject: {{http: {{url: \"http://127.0.0.1:{refused_port}/in\"}}}}, catch: {{http: {{}}}}, slo: {{delivery: {{objective: 99.9%}}}}}}"
        ))
        .probe(
            "{name: partitioned, interval: 200ms, deadline: 2s, inject: {kafka: {connection: embedded, topic: dash, partitions: all}}, catch: {kafka: {connection: embedded, topic: dash}}, slo: {latency: {threshold: 250ms, objective: 99%}, delivery: {objective: 99.9%}}}",
        );
    c.environment = ENV.into();
    c.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_every_panel_query_from_a_faulty_chirp() {
    let started = tokio::time::Instant::now();
    let prometheus = support::find_bin("prometheus", "prometheus");
    let dashboards = dashboards();
    let vars = grafana_vars(ENV);
    let panel_queries: Vec<(String, String)> = queries(&dashboards)
        .into_iter()
        .map(|q| (q.to_string(), substitute(&q.expr, &vars)))
        .collect();
    // The faults really happened, so the panels that show them are not
    // showing zeros.
    let partitions = chirp::transport::kafka::EMBEDDED_PARTITIONS;
    let faults: Vec<(String, String)> = [
        ("lost", "chirp_canaries_lost_total{probe=\"faulty\"} > 0".to_owned()),
        ("duplicate", "chirp_canaries_duplicate_total{probe=\"faulty\"} > 0".into()),
        ("reordered", "chirp_canaries_reordered_total{probe=\"faulty\"} > 0".into()),
        ("late", "chirp_canaries_late_total{probe=\"faulty\"} > 0".into()),
        (
            "refused by the relay",
            "chirp_canaries_publish_failed_total{probe=\"faulty\", kind=\"unavailable\"} > 0".into(),
        ),
        (
            "refused by a closed port",
            "chirp_canaries_publish_failed_total{probe=\"refused\", kind=\"unavailable\"} > 0".into(),
        ),
        (
            "latency over the threshold",
            "chirp:sli_error_ratio:rate5m{probe=\"faulty\", sli=\"latency\"} > 0".into(),
        ),
        (
            "ChirpNoCanaryCaught firing",
            "ALERTS{alertname=\"ChirpNoCanaryCaught\", alertstate=\"firing\", probe=\"refused\"}".into(),
        ),
        (
            "every partition delivers",
            format!("count(count by (partition) (chirp_canaries_delivered_total{{probe=\"partitioned\"}} > 0)) == {partitions}"),
        ),
    ]
    .into_iter()
    .map(|(what, q)| (format!("fault check: {what}"), q))
    .collect();

    let dir = TempDir::new("dashboards");
    let chirp_port = free_port();
    let refused_port = free_port();
    let (relay_url, relay) =
        faulty_relay(format!("http://127.0.0.1:{chirp_port}/hooks/faulty")).await;
    let cfg = dir.write(
        "probes.yaml",
        configuration(chirp_port, &relay_url, refused_port),
    );
    let rules = support::exits(Command::new(&*CHIRP).args(["rules", "-c"]).arg(&cfg), 0);
    // ChirpNoCanaryCaught waits 1m before firing (one scrape is not enough
    // to page on); here it may fire at once, so the "firing alerts" panels
    // have something to show within the test's time.
    let rules = String::from_utf8(rules.stdout).expect("rules are UTF-8");
    let (mut quick, mut in_rule, mut changed) = (String::new(), false, 0);
    for line in rules.lines() {
        if line.trim_start().starts_with("- ") {
            in_rule = line.contains("alert: ChirpNoCanaryCaught");
        }
        if in_rule && line.trim_start().starts_with("for: ") {
            quick.push_str("        for: 0s\n");
            changed += 1;
        } else {
            quick.push_str(line);
            quick.push('\n');
        }
    }
    assert!(changed > 0, "no `for:` on ChirpNoCanaryCaught in:\n{rules}");
    dir.write("rules.yml", &quick);
    let prom_port = free_port();
    dir.write(
        "prometheus.yml",
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: chirp\n    static_configs: [{{targets: ['127.0.0.1:{chirp_port}']}}]\n"
        ),
    );
    let chirp_log = std::fs::File::create(dir.path().join("chirp.log")).unwrap();
    let _chirp = Kill(
        Command::new(&*CHIRP)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(chirp_log)
            .spawn()
            .unwrap(),
    );
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Kill(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // Poll until every panel query and every fault check has data; on the
    // deadline, name each one that has none.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let mut empty = Vec::new();
        for (what, q) in panel_queries.iter().chain(&faults) {
            match query(&http, &base, q).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => empty.push(format!("empty: {what}\n    evaluated: {q}")),
                Err(e) => empty.push(format!("error: {what}\n    evaluated: {q}\n    {e}")),
            }
        }
        if empty.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > give_up {
            let log = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
            let tail = |s: String| {
                s.lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "after 45 s, {} of {} queries have no data:\n{}\n--- chirp.log (end)\n{}\n--- prometheus.log (end)\n{}",
                empty.len(),
                panel_queries.len() + faults.len(),
                empty.join("\n"),
                tail(log("chirp.log")),
                tail(log("prometheus.log")),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The variables list this environment and its three probes.
    let environments = query(&http, &base, "count by (environment) (chirp_probe_up)")
        .await
        .unwrap();
    assert!(
        environments
            .iter()
            .any(|r| r["metric"]["environment"] == ENV),
        "{environments:?}"
    );
    let probes: BTreeSet<String> = query(
        &http,
        &base,
        &format!("count by (probe) (chirp_probe_up{{environment=~\"{ENV}\"}})"),
    )
    .await
    .unwrap()
    .iter()
    .filter_map(|r| r["metric"]["probe"].as_str().map(str::to_owned))
    .collect();
    assert_eq!(
        probes,
        ["faulty", "partitioned", "refused"]
            .map(String::from)
            .into(),
    );
    relay.abort();
    eprintln!(
        "{} panel queries answered in {:.1?}",
        panel_queries.len(),
        started.elapsed()
    );
}
