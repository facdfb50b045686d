//! `chirp rules` output checked by Prometheus' own tools: `promtool check
//! rules`, and `promtool test rules` with input series that must fire, and
//! must not fire, each burn-rate alert (Debian package `prometheus`).

use crate::support::{self, CHIRP, KEY};
use std::path::{Path, PathBuf};
use std::process::Command;

fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("promtool is not installed: `apt-get install -y prometheus` and rerun")
        })
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn generate(dir: &Path) -> serde_yaml::Value {
    let cfg = dir.join("probes.yaml");
    std::fs::write(
        &cfg,
        format!(
            "environment: prod\nsigning_key: {KEY}\nprobes:\n  - name: orders\n    inject: {{http: {{url: /hooks/orders}}}}\n    catch: {{http: {{}}}}\n    slo:\n      delivery: {{objective: 99.9%}}\n  - name: payments\n    inject: {{http: {{url: /hooks/payments}}}}\n    catch: {{http: {{}}}}\n    slo:\n      latency: {{threshold: 250ms, objective: 99%}}\n"
        ),
    )
    .unwrap();
    let out = support::exits(Command::new(&*CHIRP).args(["rules", "-c"]).arg(&cfg), 0);
    std::fs::write(dir.join("rules.yml"), &out.stdout).unwrap();
    serde_yaml::from_slice(&out.stdout).expect("rules are YAML")
}

/// The alert's annotations as Prometheus renders them for `value`.
fn expected_annotations(
    rules: &serde_yaml::Value,
    probe: &str,
    burn: &str,
    value: &str,
) -> serde_yaml::Value {
    let rule = rules["groups"][1]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| {
            r["labels"]["probe"].as_str() == Some(probe)
                && r["labels"]["burn_rate"].as_str() == Some(burn)
        })
        .unwrap_or_else(|| panic!("no {burn} alert for {probe}"));
    let mut a = rule["annotations"].clone();
    for (_, v) in a.as_mapping_mut().unwrap().iter_mut() {
        let s = v
            .as_str()
            .unwrap()
            .replace("{{ $labels.environment }}", "prod")
            .replace("{{ $value | humanizePercentage }}", value);
        *v = serde_yaml::Value::String(s);
    }
    a
}

fn alert(rules: &serde_yaml::Value, burn: &str, value: &str) -> serde_yaml::Value {
    let (severity, long, short) = match burn {
        "14.4x" => ("page", "1h", "5m"),
        "6x" => ("page", "6h", "30m"),
        _ => ("ticket", "3d", "6h"),
    };
    serde_yaml::from_str::<serde_yaml::Value>(&format!(
        "exp_labels: {{environment: prod, probe: orders, sli: delivery, severity: {severity}, burn_rate: \"{burn}\", long_window: {long}, short_window: {short}}}"
    ))
    .map(|mut v| {
        v["exp_annotations"] = expected_annotations(rules, "orders", burn, value);
        v
    })
    .unwrap()
}

#[test]
fn rules_for_the_shipped_configuration_pass_promtool() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/probes.yaml");
    let out = Command::new(&*CHIRP)
        .args(["rules", "-c", shipped])
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = std::env::temp_dir().join(format!("chirp-shipped-rules-{}.yml", std::process::id()));
    std::fs::write(&path, &out.stdout).unwrap();
    let check = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // Two probes with two SLIs each, three alerts per SLI.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("- alert: ChirpErrorBudgetBurn")
            .count(),
        12
    );
}

#[test]
fn generated_rules_pass_promtool_and_fire_exactly_when_they_should() {
    let dir = Dir(std::env::temp_dir().join(format!("chirp-rules-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let rules = generate(&dir.0);
    let check = Command::new(promtool())
        .args(["check", "rules"])
        .arg(dir.0.join("rules.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Canaries per minute, and how many of them were good.
    let case = |events_per_min: u32,
                good_per_min: u32,
                evals: Vec<(&str, Vec<serde_yaml::Value>)>| {
        let mut t = serde_yaml::Mapping::new();
        t.insert("interval".into(), "1m".into());
        t.insert(
            "input_series".into(),
            serde_yaml::from_str(&format!(
                "- {{series: 'chirp_sli_events_total{{environment=\"prod\",probe=\"orders\",sli=\"delivery\"}}', values: '0+{events_per_min}x200'}}\n- {{series: 'chirp_sli_good_total{{environment=\"prod\",probe=\"orders\",sli=\"delivery\"}}', values: '0+{good_per_min}x200'}}"
            ))
            .unwrap(),
        );
        let tests: Vec<serde_yaml::Value> = evals
            .into_iter()
            .map(|(at, alerts)| {
                let mut m = serde_yaml::Mapping::new();
                m.insert("eval_time".into(), at.into());
                m.insert("alertname".into(), "ChirpErrorBudgetBurn".into());
                m.insert("exp_alerts".into(), serde_yaml::Value::Sequence(alerts));
                serde_yaml::Value::Mapping(m)
            })
            .collect();
        t.insert("alert_rule_test".into(), serde_yaml::Value::Sequence(tests));
        serde_yaml::Value::Mapping(t)
    };
    let tests = vec![
        // 10% lost: the fast page fires within minutes, then the slow page, then the ticket.
        case(
            600,
            540,
            vec![
                ("10m", vec![alert(&rules, "14.4x", "10%")]),
                (
                    "80m",
                    vec![
                        alert(&rules, "14.4x", "10%"),
                        alert(&rules, "6x", "10%"),
                        alert(&rules, "1x", "10%"),
                    ],
                ),
            ],
        ),
        // 1% lost: too little for the fast page; the slow page and the ticket fire.
        case(
            600,
            594,
            vec![
                ("10m", vec![]),
                (
                    "80m",
                    vec![alert(&rules, "6x", "1%"), alert(&rules, "1x", "1%")],
                ),
            ],
        ),
        // 0.05% lost: within the 0.1% budget, nothing fires.
        case(6000, 5997, vec![("80m", vec![])]),
        // Nothing lost.
        case(600, 600, vec![("80m", vec![])]),
    ];
    let mut doc = serde_yaml::Mapping::new();
    doc.insert(
        "rule_files".into(),
        serde_yaml::from_str("[rules.yml]").unwrap(),
    );
    doc.insert("evaluation_interval".into(), "1m".into());
    doc.insert("tests".into(), serde_yaml::Value::Sequence(tests));
    std::fs::write(dir.0.join("test.yml"), serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules", "test.yml"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alert `name`'s annotations in `rules` (the first with `probe`, when
/// given), rendered as Prometheus would for `labels` and a value whose
/// plain and humanized forms are given.
fn rendered(
    rules: &serde_yaml::Value,
    name: &str,
    probe: Option<&str>,
    labels: &[(&str, &str)],
    value: &str,
    humanized: &str,
) -> serde_yaml::Value {
    let rule = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .find(|r| {
            r["alert"].as_str() == Some(name)
                && probe.is_none_or(|p| r["labels"]["probe"].as_str() == Some(p))
        })
        .unwrap_or_else(|| panic!("no {name} alert"));
    let mut a = rule["annotations"].clone();
    for (_, v) in a.as_mapping_mut().unwrap().iter_mut() {
        let mut s = v
            .as_str()
            .unwrap()
            .replace(
                "{{ with $labels.partition }}, partition {{ . }}{{ end }}",
                "",
            )
            .replace("{{ $value | humanizeDuration }}", humanized)
            .replace("{{ $value }}", value);
        for (k, val) in labels {
            s = s.replace(&format!("{{{{ $labels.{k} }}}}"), val);
        }
        assert!(!s.contains("{{"), "a template left unrendered: {s}");
        *v = serde_yaml::Value::String(s);
    }
    a
}

/// The alerts on chirp itself, for two environments whose rule files load
/// into one Prometheus: each fires when it should (with the live value in
/// its annotations, the configured labels and runbook link), stays quiet
/// otherwise, and each file's recording rules read only its own environment.
#[test]
fn alerts_on_chirp_itself_fire_and_two_environments_load_together() {
    let dir = Dir(std::env::temp_dir().join(format!("chirp-self-rules-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut files = Vec::new();
    for env in ["prod", "staging"] {
        let cfg = dir.0.join(format!("{env}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "environment: {env}\nsigning_key: {KEY}\nalerts:\n  labels: {{team: payments}}\n  runbook_url: https://runbooks.example.com/chirp/\n  disconnected_for: 5m\n  absent_for: 5m\n  silent_intervals: 10\nprobes:\n  - name: orders\n    interval: 1s\n    deadline: 5s\n    inject: {{http: {{url: /hooks/orders}}}}\n    catch: {{http: {{}}}}\n    slo:\n      delivery: {{objective: 99.9%}}\n  - name: payments\n    interval: 10s\n    deadline: 2m\n    inject: {{http: {{url: /hooks/payments}}}}\n    catch: {{http: {{}}}}\n"
            ),
        )
        .unwrap();
        let out = support::exits(Command::new(&*CHIRP).args(["rules", "-c"]).arg(&cfg), 0);
        std::fs::write(dir.0.join(format!("{env}.yml")), &out.stdout).unwrap();
        files.push(serde_yaml::from_slice::<serde_yaml::Value>(&out.stdout).unwrap());
    }
    let check = Command::new(promtool())
        .args(["check", "rules", "prod.yml", "staging.yml"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let prod = &files[0];
    let own = |extra: &[(&str, &str)]| {
        let mut m = serde_yaml::Mapping::new();
        for (k, v) in extra.iter().chain(&[("team", "payments")]) {
            m.insert((*k).into(), (*v).into());
        }
        serde_yaml::Value::Mapping(m)
    };
    let expect = |labels: serde_yaml::Value, annotations: serde_yaml::Value| {
        let mut m = serde_yaml::Mapping::new();
        m.insert("exp_labels".into(), labels);
        m.insert("exp_annotations".into(), annotations);
        serde_yaml::Value::Mapping(m)
    };
    let absent = expect(
        own(&[("environment", "prod"), ("severity", "page")]),
        rendered(prod, "ChirpAbsent", None, &[], "1", "1s"),
    );
    let disconnected = expect(
        own(&[
            ("environment", "prod"),
            ("probe", "orders"),
            ("instance", "a:9464"),
            ("severity", "page"),
        ]),
        rendered(
            prod,
            "ChirpProbeDisconnected",
            None,
            &[
                ("probe", "orders"),
                ("environment", "prod"),
                ("instance", "a:9464"),
            ],
            "0",
            "0s",
        ),
    );
    // Caught up to 10m, then nothing: at 12m the last catch is 120 s old.
    let silent = expect(
        own(&[
            ("environment", "prod"),
            ("probe", "orders"),
            ("severity", "page"),
        ]),
        rendered(
            prod,
            "ChirpNoCanaryCaught",
            Some("orders"),
            &[("environment", "prod")],
            "120",
            "2m 0s",
        ),
    );
    for a in [&absent, &disconnected, &silent] {
        let url = a["exp_annotations"]["runbook_url"].as_str().unwrap_or("");
        assert!(
            url.starts_with("https://runbooks.example.com/chirp/chirp"),
            "{url}"
        );
    }
    let evals = |name: &str, at: &[(&str, Vec<serde_yaml::Value>)]| -> Vec<serde_yaml::Value> {
        at.iter()
            .map(|(t, alerts)| {
                serde_yaml::from_str::<serde_yaml::Value>(&format!(
                    "{{eval_time: {t}, alertname: {name}}}"
                ))
                .map(|mut v| {
                    v["exp_alerts"] = serde_yaml::Value::Sequence(alerts.clone());
                    v
                })
                .unwrap()
            })
            .collect()
    };
    let mut alert_tests = Vec::new();
    // prod's chirp stops being scraped after 10m; staging's never does.
    alert_tests.extend(evals(
        "ChirpAbsent",
        &[("9m", vec![]), ("30m", vec![absent.clone()])],
    ));
    // orders' clients drop at 6m: quiet for the first 5 minutes of it.
    alert_tests.extend(evals(
        "ChirpProbeDisconnected",
        &[("9m", vec![]), ("20m", vec![disconnected])],
    ));
    // A reload refused at 6m: a ticket once it has lasted 10 minutes.
    let reload_failed = expect(
        own(&[
            ("environment", "prod"),
            ("instance", "a:9464"),
            ("severity", "ticket"),
        ]),
        rendered(
            prod,
            "ChirpConfigReloadFailed",
            None,
            &[("environment", "prod"), ("instance", "a:9464")],
            "0",
            "0s",
        ),
    );
    alert_tests.extend(evals(
        "ChirpConfigReloadFailed",
        &[("12m", vec![]), ("20m", vec![reload_failed])],
    ));
    alert_tests.extend(evals(
        "ChirpNoCanaryCaught",
        &[("5m", vec![]), ("10m", vec![]), ("12m", vec![silent])],
    ));
    // Recording rules, one series per environment: half bad in prod (a ratio
    // that is exact in floating point), none in staging.
    let budget = 1.0 - 300.0 / 2592.0;
    let promql = format!(
        "- {{expr: 'chirp:sli_error_ratio:rate5m', eval_time: 10m, exp_samples: [{{labels: 'chirp:sli_error_ratio:rate5m{{environment=\"prod\",probe=\"orders\",sli=\"delivery\"}}', value: 0.5}}, {{labels: 'chirp:sli_error_ratio:rate5m{{environment=\"staging\",probe=\"orders\",sli=\"delivery\"}}', value: 0}}]}}\n- {{expr: 'chirp:slo_error_budget_remaining:ratio30d{{environment=\"prod\"}}', eval_time: 10m, exp_samples: [{{labels: 'chirp:slo_error_budget_remaining:ratio30d{{environment=\"prod\",probe=\"orders\",sli=\"delivery\"}}', value: {budget}}}]}}\n"
    );
    let series = |env: &str, good: u32, tail: &str| {
        format!(
            "- {{series: 'chirp_sli_events_total{{environment=\"{env}\",probe=\"orders\",sli=\"delivery\"}}', values: '0+60x30'}}\n- {{series: 'chirp_sli_good_total{{environment=\"{env}\",probe=\"orders\",sli=\"delivery\"}}', values: '0+{good}x30'}}\n- {{series: 'chirp_slo_error_budget_canaries{{environment=\"{env}\",probe=\"orders\",sli=\"delivery\"}}', values: '2592x30'}}\n- {{series: 'chirp_build_info{{environment=\"{env}\",version=\"1\"}}', values: '{tail}'}}\n"
        )
    };
    let mut input = series("prod", 30, "1x10 _x20");
    input += &series("staging", 60, "1x30");
    input += "- {series: 'chirp_probe_up{environment=\"prod\",probe=\"orders\",instance=\"a:9464\"}', values: '1x5 0x25'}\n";
    input += "- {series: 'chirp_probe_up{environment=\"staging\",probe=\"orders\",instance=\"b:9464\"}', values: '1x30'}\n";
    input += "- {series: 'chirp_config_last_reload_successful{environment=\"prod\",instance=\"a:9464\"}', values: '1x5 0x25'}\n";
    input += "- {series: 'chirp_config_last_reload_successful{environment=\"staging\",instance=\"b:9464\"}', values: '1x30'}\n";
    input += "- {series: 'chirp_last_caught_timestamp_seconds{environment=\"prod\",probe=\"orders\"}', values: '0+60x10 600x20'}\n";
    input += "- {series: 'chirp_last_caught_timestamp_seconds{environment=\"staging\",probe=\"orders\"}', values: '0+60x30'}\n";
    let mut test = serde_yaml::Mapping::new();
    test.insert("interval".into(), "1m".into());
    test.insert("input_series".into(), serde_yaml::from_str(&input).unwrap());
    test.insert(
        "alert_rule_test".into(),
        serde_yaml::Value::Sequence(alert_tests),
    );
    test.insert(
        "promql_expr_test".into(),
        serde_yaml::from_str(&promql).unwrap(),
    );
    let mut doc = serde_yaml::Mapping::new();
    doc.insert(
        "rule_files".into(),
        serde_yaml::from_str("[prod.yml, staging.yml]").unwrap(),
    );
    doc.insert("evaluation_interval".into(), "1m".into());
    doc.insert(
        "tests".into(),
        serde_yaml::Value::Sequence(vec![serde_yaml::Value::Mapping(test)]),
    );
    std::fs::write(dir.0.join("test.yml"), serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules", "test.yml"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
