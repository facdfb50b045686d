use super::*;
use std::collections::HashMap;

/// Reads a configuration whose `export:` section is `export` (none when empty).
fn read(export: &str, vars: &[(&str, &str)]) -> (Option<OtlpConfig>, Vec<String>) {
    let mut env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.insert("KEY".into(), "a-long-enough-signing-key".into());
    let export = if export.is_empty() {
        String::new()
    } else {
        format!("export: {{otlp: {export}}}\n")
    };
    let text = format!(
        "signing_key: ${{KEY}}\n{export}probes:\n  - name: a\n    inject: {{http: {{url: /hooks/a}}}}\n    catch: {{http: {{}}}}\n"
    );
    match crate::config::load_str(&text, &env) {
        Ok(c) => (c.otlp, Vec::new()),
        Err(e) => (None, e.iter().map(ToString::to_string).collect()),
    }
}

fn on(export: &str, vars: &[(&str, &str)]) -> OtlpConfig {
    let (c, errors) = read(export, vars);
    assert!(errors.is_empty(), "{errors:#?}");
    c.expect("OTLP export is on")
}

#[test]
fn off_without_config_or_endpoint_variable_and_when_the_sdk_is_disabled() {
    assert_eq!(read("", &[]).0, None);
    assert_eq!(read("", &[("OTEL_EXPORTER_OTLP_HEADERS", "a=b")]).0, None);
    assert_eq!(read("{}", &[("OTEL_SDK_DISABLED", "true")]).0, None);
}

#[test]
fn defaults_follow_the_specification() {
    let c = on("{}", &[]);
    let m = c.metrics.unwrap();
    assert_eq!(m.protocol, OtlpProtocol::Grpc);
    assert_eq!(m.endpoint.expose(), "http://localhost:4317");
    assert_eq!(m.timeout, DEFAULT_TIMEOUT);
    assert!(!m.gzip);
    assert_eq!(c.interval, DEFAULT_INTERVAL);
    assert_eq!(
        (c.traces, c.temporality, c.sample_ratio),
        (None, None, None)
    );
    let c = on("{protocol: http/protobuf, traces: true}", &[]);
    assert_eq!(
        c.metrics.unwrap().endpoint.expose(),
        "http://localhost:4318/v1/metrics"
    );
    assert_eq!(
        c.traces.unwrap().endpoint.expose(),
        "http://localhost:4318/v1/traces"
    );
}

#[test]
fn the_file_wins_then_a_signal_s_own_variable_then_the_generic_one() {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318/"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://traces:9999/custom",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1500"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "3000"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
    ];
    // Everything from the environment: export is on without `export.otlp`.
    let c = on("", &vars);
    let (m, t) = (c.metrics.unwrap(), c.traces.unwrap());
    assert_eq!(m.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(m.endpoint.expose(), "http://generic:4318/v1/metrics");
    assert_eq!(m.timeout, Duration::from_millis(1500));
    assert_eq!(t.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.endpoint.expose(), "http://traces:9999/custom");
    assert_eq!(t.timeout, Duration::from_millis(2500));
    assert_eq!(c.interval, Duration::from_secs(3));
    // The SDK reads the sampler and its ratio itself.
    assert_eq!(c.sample_ratio, None);

    // The file says otherwise: it wins.
    let c = on(
        "{endpoint: 'http://file:4317', protocol: grpc, timeout: 1s, interval: 5s, temporality: delta, traces: {sample_ratio: 0.25}}",
        &vars,
    );
    let (m, t) = (c.metrics.unwrap(), c.traces.unwrap());
    assert_eq!(
        (m.protocol, t.protocol),
        (OtlpProtocol::Grpc, OtlpProtocol::Grpc)
    );
    assert_eq!(m.endpoint.expose(), "http://file:4317");
    assert_eq!(t.endpoint.expose(), "http://file:4317");
    assert_eq!(
        (m.timeout, t.timeout),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(c.interval, Duration::from_secs(5));
    assert_eq!(c.temporality, Some(Temporality::Delta));
    assert_eq!(c.sample_ratio, Some(0.25));
}

#[test]
fn compression_none_in_the_file_wins_over_the_environment() {
    let gzip = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
    // Unset in the file, the environment decides.
    assert!(on("{protocol: http/protobuf}", &gzip).metrics.unwrap().gzip);
    // Over HTTP chirp compresses itself, so `none` holds.
    assert!(
        !on("{protocol: http/protobuf, compression: none}", &gzip)
            .metrics
            .unwrap()
            .gzip
    );
    // Over gRPC the exporter would apply the variable anyway: say so rather than send gzip.
    let (_, errors) = read("{protocol: grpc, compression: none}", &gzip);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("export.otlp.compression: `none` cannot be honoured over gRPC"),
        "{}",
        errors[0]
    );
    // A signal's own `none` wins over a generic `gzip`, as the exporter reads them.
    let signal_none = [gzip[0], ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none")];
    assert!(
        !on("{compression: none}", &signal_none)
            .metrics
            .unwrap()
            .gzip
    );
}

#[test]
fn a_traces_endpoint_alone_turns_on_traces_only() {
    let c = on(
        "",
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4317")],
    );
    assert_eq!(c.metrics, None);
    assert_eq!(c.traces.unwrap().endpoint.expose(), "http://tempo:4317");
    let c = on(
        "",
        &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://mimir:4317")],
    );
    assert_eq!((c.metrics.is_some(), c.traces.is_some()), (true, false));
    // The standard switches turn one signal off.
    let c = on("{traces: true}", &[("OTEL_METRICS_EXPORTER", "none")]);
    assert_eq!((c.metrics.is_some(), c.traces.is_some()), (false, true));
    let c = on("{}", &[("OTEL_TRACES_SAMPLER", "always_off")]);
    assert_eq!(c.traces, None);
}

#[test]
fn headers_come_from_the_file_only_the_exporter_reads_the_environment_s() {
    let c = on(
        "{headers: {API-Key: from-file}}",
        &[("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-metrics-only=1")],
    );
    let h: Vec<(&str, &str)> = c
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(h, [("api-key", "from-file")]);
}

#[test]
fn mistakes_are_reported_without_secret_values() {
    let yaml = "{endpoint: 'ftp://x', interval: 10ms, timeout: 0s, headers: {'bad name': 'hunter2', ok: \"line\\nbreak-hunter2\"}, traces: {sample_ratio: 2}}";
    let (_, errors) = read(yaml, &[]);
    let all = errors.join("\n");
    for want in [
        "export.otlp.endpoint: `ftp://x` is not an http:// or https:// URL",
        "export.otlp.interval: must be at least 1s",
        "export.otlp.timeout: must be more than 0",
        "export.otlp.headers.bad name: `bad name` is not a valid header name",
        "export.otlp.headers.ok: the value of header `ok` has characters",
        "export.otlp.traces.sample_ratio: must be between 0 and 1",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(!all.contains("hunter2"), "{all}");
    let (_, errors) = read(
        "{protocol: grcp}",
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
    );
    assert_eq!(
        errors,
        ["export.otlp.protocol: unknown value `grcp` (one of: grpc, http/protobuf); did you mean `grpc`? (line 2, column 17)"]
    );
    let (_, errors) = read(
        "{}",
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    let all = errors.join("\n");
    assert!(all.contains("export.otlp.timeout: OTEL_EXPORTER_OTLP_TIMEOUT=`soon` is not a number of milliseconds"), "{all}");
    assert!(
        all.contains(
            "export.otlp.protocol: OTEL_EXPORTER_OTLP_PROTOCOL=`http/json` is not supported"
        ),
        "{all}"
    );
}

#[test]
fn debug_output_hides_header_values_and_url_credentials() {
    let c = on(
        "{endpoint: 'https://user:pw@otlp.example:4317', headers: {x-api-key: s3cr3t}}",
        &[],
    );
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("pw@"),
        "{shown}"
    );
}

#[test]
fn mistakes_in_the_variables_the_sdk_reads_are_errors_that_do_not_quote_values() {
    let (_, errors) = read(
        "{}",
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=sre,s3cr3t-api-key"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "sideways",
            ),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=sre,=x"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zip"),
        ],
    );
    let all = errors.join("\n");
    for want in [
        "export.otlp.headers: OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not `name=value`",
        "export.otlp.traces: OTEL_TRACES_SAMPLER=`sometimes` is not one of",
        "export.otlp.traces: OTEL_TRACES_SAMPLER_ARG=`1.5` is not a ratio between 0 and 1",
        "export.otlp.temporality: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=`sideways`",
        "export.otlp.resource: OTEL_RESOURCE_ATTRIBUTES: entry 2 is not `name=value`",
        "export.otlp.compression: OTEL_EXPORTER_OTLP_COMPRESSION=`zip`",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(!all.contains("s3cr3t"), "{all}");
}
