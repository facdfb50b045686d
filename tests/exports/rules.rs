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
