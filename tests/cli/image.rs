//! The container image and its Kubernetes example, checked without a
//! container engine (none runs on the development and CI machines): the
//! binary needs nothing beyond glibc, the Dockerfile builds with CI's command
//! and runs what it promises, `.dockerignore` sends the build inputs and
//! nothing else, and `deploy/kubernetes` agrees with itself, with `chirp
//! validate` and with `chirp rules`.

use crate::support::{find_bin, TempDir, CHIRP, SHIPPED};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The one build command, in the Dockerfile as in CI: `--locked` builds
/// exactly what Cargo.lock says.
const BUILD: &str = "cargo build --release --locked";

/// What the runtime image (`gcr.io/distroless/cc-debian12`: glibc and
/// libgcc_s) provides; the vDSO and the dynamic loader are always there.
const GLIBC: &[&str] = &[
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

/// What render-rules gives every `${VARIABLE}` of the ConfigMap's probes.yaml.
const PLACEHOLDER: &str = "placeholder-for-render-rules-0123456789";

#[test]
fn the_binary_needs_nothing_beyond_glibc() {
    let ldd = find_bin("ldd", "libc-bin");
    let out = Command::new(ldd).arg(&*CHIRP).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // A static binary needs nothing at all.
        assert!(
            format!("{stdout}{stderr}").contains("not a dynamic executable"),
            "ldd {} failed:\n{stdout}{stderr}",
            *CHIRP
        );
        return;
    }
    let extra: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or_default();
            let file = Path::new(name).file_name().and_then(|f| f.to_str());
            l.contains("not found") || !file.is_some_and(|f| GLIBC.contains(&f))
        })
        .collect();
    assert!(
        extra.is_empty(),
        "{} needs libraries beyond glibc, which the runtime image (gcr.io/distroless/cc-debian12) \
         does not have:\n  {}\nLink them statically (as rdkafka's ssl-vendored and libz-static \
         features do in Cargo.toml). The whole ldd output:\n{stdout}",
        *CHIRP,
        extra.join("\n  ")
    );
}

#[test]
fn version_names_the_revision() {
    assert_eq!(chirp::REVISION, expected_revision(), "chirp::REVISION");
    let out = Command::new(&*CHIRP).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if std::env::var_os("CHIRP_BIN").is_none() {
        assert_eq!(
            version,
            format!(
                "chirp {} (rev {})",
                env!("CARGO_PKG_VERSION"),
                chirp::REVISION
            )
        );
    } else {
        // Another build: its revision is its own, the shape is the same.
        let rev = version
            .strip_prefix("chirp ")
            .and_then(|v| v.split_once(" (rev "))
            .and_then(|(_, r)| r.strip_suffix(')'));
        assert!(
            rev.is_some_and(|r| !r.is_empty()),
            "`chirp --version` says {version:?}, not `chirp X.Y.Z (rev R)`"
        );
    }
}

/// The revision build.rs stamps: `$CHIRP_REVISION`, else this checkout's
/// HEAD when the crate is the top of its git checkout, else `unknown`.
fn expected_revision() -> String {
    if let Some(given) = std::env::var("CHIRP_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        return given.trim().to_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(ROOT)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let top =
        git(&["rev-parse", "--show-toplevel"]).and_then(|t| Path::new(&t).canonicalize().ok());
    if top.is_some() && top == Path::new(ROOT).canonicalize().ok() {
        if let Some(rev) = git(&["rev-parse", "--short=12", "HEAD"]) {
            return rev;
        }
    }
    "unknown".to_owned()
}

// ---- Dockerfile ------------------------------------------------------------

/// One instruction: its keyword (upper case), its arguments with
/// continuation lines joined, and its line.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

#[derive(Debug)]
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// The stage's `ARG NAME=default` default.
    fn arg_default(&self, name: &str) -> Option<String> {
        self.all("ARG").find_map(|i| {
            let (n, v) = i.args.split_once('=').unwrap_or((&i.args, ""));
            (n.trim() == name).then(|| unquote(v.trim()))
        })
    }

    /// The last `WORKDIR` before `line`.
    fn workdir_at(&self, line: usize) -> String {
        self.all("WORKDIR")
            .filter(|i| i.line < line)
            .last()
            .map(|i| i.args.clone())
            .unwrap_or_else(|| "/".to_owned())
    }
}

fn dockerfile() -> Vec<Stage> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let mut stages: Vec<Stage> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // Comment and empty lines are dropped, even inside a continued
        // instruction, as Docker does.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let (line, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = trimmed.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            pending = Some((line, joined));
            continue;
        }
        joined.push_str(trimmed);
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
            line,
        };
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            stages.push(Stage {
                from: words.first().unwrap_or(&"").to_string(),
                name,
                instructions: Vec::new(),
            });
        } else {
            let stage = stages.last_mut().unwrap_or_else(|| {
                panic!(
                    "Dockerfile line {line}: {} before FROM",
                    instruction.keyword
                )
            });
            stage.instructions.push(instruction);
        }
    }
    assert!(pending.is_none(), "Dockerfile ends inside a continued line");
    stages
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .to_owned()
}

/// Words split on whitespace outside double quotes (quotes removed).
fn words(s: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// A COPY's `--flags`, sources and destination.
struct Copy {
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn copy(i: &Instruction) -> Copy {
    let all = words(&i.args);
    let (flags, paths): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|w| w.starts_with("--"));
    let from = flags
        .iter()
        .find_map(|f| f.strip_prefix("--from=").map(str::to_owned));
    let (dest, sources) = paths
        .split_last()
        .unwrap_or_else(|| panic!("Dockerfile line {}: COPY without paths", i.line));
    Copy {
        from,
        sources: sources.to_vec(),
        dest: dest.clone(),
    }
}

/// An exec-form (JSON) ENTRYPOINT or CMD.
fn exec_form(stage: &Stage, keyword: &str) -> Vec<String> {
    let i = stage
        .all(keyword)
        .last()
        .unwrap_or_else(|| panic!("the runtime stage has no {keyword}"));
    serde_json::from_str(&i.args).unwrap_or_else(|e| {
        panic!(
            "Dockerfile line {}: {keyword} must be in exec form (a JSON array), so that chirp is PID 1 \
             and gets SIGTERM: {e}",
            i.line
        )
    })
}

/// The runtime stage (the last) and the stage it copies the binary from.
fn stages() -> (Stage, Stage) {
    let mut stages = dockerfile();
    let runtime = stages.pop().expect("the Dockerfile has no FROM");
    let from = runtime
        .all("COPY")
        .find_map(|i| copy(i).from)
        .expect("the runtime stage copies nothing from a build stage");
    let build = stages
        .into_iter()
        .find(|s| s.name.as_deref() == Some(from.as_str()))
        .unwrap_or_else(|| panic!("no build stage named {from:?}"));
    (runtime, build)
}

#[test]
fn dockerfile_builds_with_the_ci_command_on_the_runtime_images_debian() {
    let (runtime, build) = stages();
    assert!(
        build.from.starts_with("rust:1.95-bookworm"),
        "build stage FROM {}: Rust 1.95 on Debian 12 (bookworm)",
        build.from
    );
    // The binary links against the build image's glibc, which the runtime
    // image must have: the same Debian release on both sides.
    assert!(
        runtime.from.starts_with("gcr.io/distroless/cc-debian12"),
        "runtime stage FROM {}: glibc of Debian 12, like the build stage",
        runtime.from
    );
    let cargo: Vec<(usize, String)> = build
        .all("RUN")
        .flat_map(|i| {
            i.args
                .split("&&")
                .map(move |c| (i.line, c.trim().to_owned()))
        })
        .filter(|(_, c)| c.starts_with("cargo"))
        .collect();
    assert!(!cargo.is_empty(), "the build stage runs no cargo command");
    for (line, c) in &cargo {
        assert_eq!(c, BUILD, "Dockerfile line {line}: build with CI's command");
    }
    let last = build.all("RUN").last().unwrap();
    assert!(
        last.args.ends_with(BUILD),
        "Dockerfile line {}: the build stage's last RUN is not `{BUILD}`",
        last.line
    );
    // Whatever CI builds, it builds the same way.
    for file in [".ci/run", "scripts/test"] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        for l in text
            .lines()
            .filter(|l| l.trim_start().starts_with("cargo build"))
        {
            assert_eq!(
                l.trim(),
                BUILD,
                "{file} builds chirp differently from the Dockerfile"
            );
        }
    }
    // The binary is copied from where that build puts it.
    let bin = runtime
        .all("COPY")
        .map(copy)
        .find(|c| c.from.is_some())
        .unwrap();
    let line = build.all("RUN").last().unwrap().line;
    assert_eq!(
        bin.sources,
        [format!(
            "{}/target/release/chirp",
            build.workdir_at(line).trim_end_matches('/')
        )]
    );
    assert_eq!(
        bin.dest, "/usr/local/bin/chirp",
        "chirp must be on the image's PATH"
    );
    // The revision build.rs stamps is a build argument in the build stage.
    let arg = build
        .all("ARG")
        .find(|i| i.args.starts_with("CHIRP_REVISION"))
        .expect("the build stage declares no ARG CHIRP_REVISION (build.rs reads it)");
    assert!(arg.line < line, "ARG CHIRP_REVISION comes after the build");
}

#[test]
fn dockerfile_runtime_stage_installs_nothing_and_runs_as_a_numeric_non_root_user() {
    let (runtime, _) = stages();
    for i in &runtime.instructions {
        assert!(
            matches!(
                i.keyword.as_str(),
                "ARG" | "LABEL" | "COPY" | "ENV" | "USER" | "EXPOSE" | "ENTRYPOINT" | "CMD" | "WORKDIR"
            ),
            "Dockerfile line {}: {} in the runtime stage: it installs and runs nothing at build time",
            i.line,
            i.keyword
        );
    }
    let user = runtime
        .all("USER")
        .last()
        .expect("the runtime stage sets no USER");
    let ids: Vec<&str> = user.args.split(':').collect();
    assert!(
        ids.len() <= 2 && ids.iter().all(|id| id.parse::<u32>().is_ok_and(|n| n != 0)),
        "Dockerfile line {}: USER {} must be numeric and not root (runAsNonRoot can only check a number)",
        user.line,
        user.args
    );
    assert_eq!(
        user.args, "65532:65532",
        "the user deploy/kubernetes runs as"
    );
    let expose: Vec<&str> = runtime.all("EXPOSE").map(|i| i.args.as_str()).collect();
    assert_eq!(expose, ["9464"]);
}

#[test]
fn dockerfile_runs_the_configuration_it_ships() {
    let (runtime, _) = stages();
    assert_eq!(exec_form(&runtime, "ENTRYPOINT"), ["chirp"]);
    let cmd = exec_form(&runtime, "CMD");
    assert_eq!(cmd, ["run", "-c", "/etc/chirp/probes.yaml"]);
    let copied: BTreeMap<String, Vec<String>> = runtime
        .all("COPY")
        .map(copy)
        .filter(|c| c.from.is_none())
        .map(|c| (c.dest, c.sources))
        .collect();
    let sources = copied.get(&cmd[2]).unwrap_or_else(|| {
        panic!(
            "CMD reads {} but the runtime stage copies nothing there: {copied:?}",
            cmd[2]
        )
    });
    assert_eq!(sources, &["probes.yaml"]);
    assert_eq!(Path::new(ROOT).join(&sources[0]), Path::new(SHIPPED));

    // As the container starts it: no CHIRP_* variables, so every default applies.
    let out = Command::new(&*CHIRP)
        .args(["validate", "-c", SHIPPED])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the shipped probes.yaml does not validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It listens on every interface, on the exposed port.
    let shipped: Value = serde_yaml::from_str(&std::fs::read_to_string(SHIPPED).unwrap()).unwrap();
    let listen = shipped["listen"].as_str().unwrap_or_default();
    let listen = listen
        .strip_prefix("${CHIRP_LISTEN:-")
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or(listen);
    assert_eq!(
        listen, "0.0.0.0:9464",
        "probes.yaml's listen, without CHIRP_LISTEN"
    );
}

#[test]
fn dockerfile_labels_say_what_the_image_is() {
    let (runtime, _) = stages();
    let labels: BTreeMap<String, String> = runtime
        .all("LABEL")
        .flat_map(|i| words(&i.args))
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let oci = |key: &str| {
        labels
            .get(&format!("org.opencontainers.image.{key}"))
            .unwrap_or_else(|| panic!("no label org.opencontainers.image.{key}: {labels:?}"))
            .as_str()
    };
    assert_eq!(oci("title"), "chirp");
    assert_eq!(oci("description"), env!("CARGO_PKG_DESCRIPTION"));
    assert_eq!(oci("licenses"), env!("CARGO_PKG_LICENSE"));
    assert_eq!(oci("source"), "${CHIRP_SOURCE}");
    assert_eq!(oci("version"), "${CHIRP_VERSION}");
    assert_eq!(oci("revision"), "${CHIRP_REVISION}");
    assert_eq!(
        runtime.arg_default("CHIRP_VERSION").as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "the Dockerfile's ARG CHIRP_VERSION default is Cargo.toml's version"
    );
    assert!(runtime.arg_default("CHIRP_REVISION").is_some());
    assert!(runtime.arg_default("CHIRP_SOURCE").is_some());
}

// ---- .dockerignore ---------------------------------------------------------

/// `.dockerignore` as Docker reads it: the last matching pattern decides,
/// `!` lets a path back in, and a pattern matching a directory matches
/// everything under it.
struct DockerIgnore(Vec<(bool, Vec<String>)>);

impl DockerIgnore {
    fn read() -> DockerIgnore {
        let text = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore"))
            .expect("no .dockerignore: the build context would hold target/ and .git");
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (keep, p) = l.strip_prefix('!').map_or((false, l), |p| (true, p));
                let p = p.trim().trim_start_matches("./").trim_matches('/');
                (keep, p.split('/').map(str::to_owned).collect())
            })
            .collect();
        DockerIgnore(patterns)
    }

    fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for (keep, pattern) in &self.0 {
            let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
            if (1..=parts.len()).any(|n| glob(&pattern, &parts[..n])) {
                excluded = !keep;
            }
        }
        excluded
    }
}

/// `pattern` against `path`, segment by segment: `**` spans any number of
/// segments, `*` and `?` stay inside one.
fn glob(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            glob(&pattern[1..], path) || (!path.is_empty() && glob(pattern, &path[1..]))
        }
        (Some(p), Some(s)) => {
            segment(p.as_bytes(), s.as_bytes()) && glob(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

fn segment(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => segment(&p[1..], s) || (!s.is_empty() && segment(p, &s[1..])),
        (Some(b'?'), Some(_)) => segment(&p[1..], &s[1..]),
        (Some(a), Some(b)) => a == b && segment(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Files under `path` (or `path` itself), relative to the repository.
fn files_under(path: &str) -> Vec<String> {
    let full = Path::new(ROOT).join(path);
    if full.is_file() {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&full).unwrap_or_else(|e| panic!("{path}: {e}")) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        out.extend(files_under(&format!("{path}/{name}")));
    }
    out
}

#[test]
fn dockerignore_sends_the_build_inputs_and_nothing_else() {
    let ignore = DockerIgnore::read();
    let copied: Vec<String> = dockerfile()
        .iter()
        .flat_map(|s| s.all("COPY").map(copy).collect::<Vec<_>>())
        .filter(|c| c.from.is_none())
        .flat_map(|c| c.sources)
        .collect();
    assert!(copied.contains(&"src".to_owned()), "{copied:?}");
    for source in &copied {
        for file in files_under(source.trim_start_matches("./").trim_end_matches('/')) {
            assert!(
                !ignore.excludes(&file),
                "the Dockerfile copies {source}, but .dockerignore leaves {file} out of the build context"
            );
        }
    }
    for left_out in [
        "target/release/chirp",
        ".git/HEAD",
        "fuzz/corpus/config/seed",
        "fuzz/artifacts/webhook/crash-1",
        "fuzz/target/x",
        "deploy/kubernetes/secret.yaml",
        ".env",
        "README.md",
    ] {
        assert!(
            ignore.excludes(left_out),
            ".dockerignore lets {left_out} into the build context"
        );
    }
    // The matcher itself: a later `!` wins, `**` spans directories.
    let m = DockerIgnore(vec![
        (false, vec!["**".into(), "*.log".into()]),
        (false, vec!["docs".into()]),
        (true, vec!["docs".into(), "keep.md".into()]),
    ]);
    assert!(m.excludes("a/b/c.log") && m.excludes("c.log") && m.excludes("docs/x.md"));
    assert!(!m.excludes("docs/keep.md") && !m.excludes("src/main.rs"));
}

// ---- deploy/kubernetes -----------------------------------------------------

const KUBE: &str = "deploy/kubernetes";

/// Every manifest (file name → its documents), kustomization.yaml included.
fn manifests() -> BTreeMap<String, Vec<Value>> {
    use serde::Deserialize;
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join(KUBE)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .filter(|v| !v.is_null())
            .collect();
        out.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            docs,
        );
    }
    out
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The one resource of `kind`.
fn one<'a>(all: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    let found: Vec<&Value> = all
        .values()
        .flatten()
        .filter(|v| str_of(&v["kind"]) == kind)
        .collect();
    assert_eq!(found.len(), 1, "{KUBE} should hold exactly one {kind}");
    found[0]
}

/// `labels` has every key and value of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let (Some(selector), Some(labels)) = (selector.as_mapping(), labels.as_mapping()) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ConfigMap's probes.yaml and the `${VARIABLES}` its values need
/// (those without a default; comments do not count, as for chirp).
fn kube_config(all: &BTreeMap<String, Vec<Value>>) -> (String, BTreeSet<String>) {
    let text = str_of(&one(all, "ConfigMap")["data"]["probes.yaml"]).to_owned();
    assert!(!text.is_empty(), "the ConfigMap has no probes.yaml");
    let config: Value =
        serde_yaml::from_str(&text).expect("the ConfigMap's probes.yaml is not YAML");
    let mut vars = BTreeSet::new();
    needed_vars(&config, &mut vars);
    (text, vars)
}

fn needed_vars(v: &Value, vars: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else { break };
                if !after[..end].contains(":-") {
                    vars.insert(after[..end].to_owned());
                }
                rest = &after[end..];
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| needed_vars(i, vars)),
        Value::Mapping(m) => m.values().for_each(|i| needed_vars(i, vars)),
        Value::Tagged(t) => needed_vars(&t.value, vars),
        _ => {}
    }
}

/// Runs chirp with exactly `env` (nothing from the test's environment).
fn chirp_with(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(&*CHIRP)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn kubernetes_example_is_one_consistent_set() {
    let all = manifests();
    // kustomization.yaml lists every manifest, and only those.
    let kustomization = &all
        .get("kustomization.yaml")
        .expect("no kustomization.yaml")[0];
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let files: BTreeSet<&str> = all
        .keys()
        .map(String::as_str)
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml's resources");
    for (file, docs) in &all {
        for doc in docs {
            if file == "kustomization.yaml" {
                continue;
            }
            assert!(
                !str_of(&doc["apiVersion"]).is_empty() && !str_of(&doc["kind"]).is_empty(),
                "{file}"
            );
            assert!(
                !str_of(&doc["metadata"]["name"]).is_empty(),
                "{file}: no metadata.name"
            );
            assert!(
                doc["metadata"]["namespace"].is_null(),
                "{file}: a namespace; the example goes wherever `kubectl apply -k` (or kustomize's `namespace:`) puts it"
            );
        }
    }
    let image = format!("chirp:{}", env!("CARGO_PKG_VERSION"));
    let kustomize_tag = &kustomization["images"][0];
    assert_eq!(str_of(&kustomize_tag["name"]), "chirp");
    assert_eq!(
        str_of(&kustomize_tag["newTag"]),
        env!("CARGO_PKG_VERSION"),
        "kustomization.yaml's image tag"
    );

    let deployment = one(&all, "Deployment");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        spec["replicas"].as_u64(),
        Some(1),
        "one chirp per environment"
    );
    assert_eq!(
        str_of(&spec["strategy"]["type"]),
        "Recreate",
        "never two chirps of one environment"
    );
    assert!(
        selects(&spec["selector"]["matchLabels"], labels),
        "the Deployment's selector"
    );

    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(str_of(&c["image"]), image);
    // The hardening docs/deploy.md promises, each named when it is missing.
    let (pod_security, security) = (&pod["securityContext"], &c["securityContext"]);
    for (path, have, want) in [
        (
            "securityContext.runAsNonRoot",
            &pod_security["runAsNonRoot"],
            "true",
        ),
        (
            "securityContext.runAsUser (the image's USER)",
            &pod_security["runAsUser"],
            "65532",
        ),
        (
            "securityContext.runAsGroup (the image's USER)",
            &pod_security["runAsGroup"],
            "65532",
        ),
        (
            "securityContext.seccompProfile.type",
            &pod_security["seccompProfile"]["type"],
            "RuntimeDefault",
        ),
        (
            "containers[0].securityContext.readOnlyRootFilesystem",
            &security["readOnlyRootFilesystem"],
            "true",
        ),
        (
            "containers[0].securityContext.allowPrivilegeEscalation",
            &security["allowPrivilegeEscalation"],
            "false",
        ),
        (
            "containers[0].securityContext.capabilities.drop",
            &security["capabilities"]["drop"],
            "- ALL",
        ),
        (
            "automountServiceAccountToken",
            &pod["automountServiceAccountToken"],
            "false",
        ),
    ] {
        let have = serde_yaml::to_string(have).unwrap();
        assert_eq!(have.trim(), want, "deployment.yaml: the Pod's {path}");
    }
    let port = &c["ports"][0];
    assert_eq!(
        (str_of(&port["name"]), port["containerPort"].as_u64()),
        ("http", Some(9464))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (str_of(&get["path"]), str_of(&get["port"])),
            (path, "http"),
            "{probe}"
        );
    }
    for (kind, what) in [
        ("requests", "memory"),
        ("requests", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            !str_of(&c["resources"][kind][what]).is_empty(),
            "no resources.{kind}.{what}"
        );
    }

    // The configuration: the ConfigMap, mounted where `-c` reads it.
    let configmap = one(&all, "ConfigMap");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| str_of(&v["configMap"]["name"]) == str_of(&configmap["metadata"]["name"]))
        .expect("no volume of the ConfigMap");
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap's volume is not mounted");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "-c")
        .expect("the container's args have no -c");
    assert_eq!(args[0], "run");
    assert_eq!(
        args[at + 1],
        format!("{}/probes.yaml", str_of(&mount["mountPath"]))
    );

    // The signing key: from the Secret, under a key it has.
    let secret = one(&all, "Secret");
    for var in c["env"].as_sequence().unwrap() {
        let reference = &var["valueFrom"]["secretKeyRef"];
        if reference.is_null() {
            continue;
        }
        assert_eq!(
            str_of(&reference["name"]),
            str_of(&secret["metadata"]["name"]),
            "{var:?}"
        );
        let key = &reference["key"];
        assert!(
            !secret["stringData"][key].is_null() || !secret["data"][key].is_null(),
            "the Secret has no key {key:?}"
        );
    }

    // Service → Pods, ServiceMonitor → Service.
    let service = one(&all, "Service");
    assert!(
        selects(&service["spec"]["selector"], labels),
        "the Service selects no chirp Pod"
    );
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(str_of(&service_port["targetPort"]), "http");
    let monitor = one(&all, "ServiceMonitor");
    assert_eq!(str_of(&monitor["apiVersion"]), "monitoring.coreos.com/v1");
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor selects no chirp Service"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(str_of(&endpoint["port"]), str_of(&service_port["name"]));
    assert_eq!(str_of(&endpoint["path"]), "/metrics");
    assert_eq!(
        str_of(&one(&all, "PrometheusRule")["apiVersion"]),
        "monitoring.coreos.com/v1"
    );
}

#[test]
fn kubernetes_configmap_validates_with_the_deployments_environment() {
    let all = manifests();
    let (text, vars) = kube_config(&all);
    let container = &one(&all, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    // What the Pod's environment holds: literal values, and a stand-in for
    // each Secret's value.
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| {
            let value = v["value"].as_str().unwrap_or(PLACEHOLDER);
            (str_of(&v["name"]).to_owned(), value.to_owned())
        })
        .collect();
    for var in &vars {
        assert!(
            env.iter().any(|(k, _)| k == var),
            "the ConfigMap's probes.yaml needs ${{{var}}}, which the Deployment does not set"
        );
    }
    let dir = TempDir::new("kube");
    let path = dir.write("probes.yaml", &text);
    // The container's own args, with `validate` for `run` and the file here.
    let mut args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| str_of(a).to_owned())
        .collect();
    args[0] = "validate".into();
    let at = args.iter().position(|a| a == "-c").unwrap();
    args[at + 1] = path.to_string_lossy().into_owned();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = chirp_with(&args, &env);
    assert!(
        out.status.success(),
        "the ConfigMap's probes.yaml does not validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        str_of(&config["listen"]),
        "0.0.0.0:9464",
        "in a Pod chirp must listen on every interface, on the container port"
    );
}

#[test]
fn kubernetes_secret_placeholder_is_refused() {
    let all = manifests();
    let (text, _) = kube_config(&all);
    let secret = one(&all, "Secret");
    let placeholder = str_of(&secret["stringData"]["signing-key"]);
    assert!(
        !placeholder.is_empty(),
        "secret.yaml has no stringData.signing-key"
    );
    let dir = TempDir::new("kube");
    let path = dir.write("probes.yaml", &text);
    let out = chirp_with(
        &["validate", "-c", &path.to_string_lossy()],
        &[("CHIRP_SIGNING_KEY".to_owned(), placeholder.to_owned())],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "secret.yaml's placeholder must keep chirp from starting, so that nobody runs with a public key:\n{err}"
    );
    assert!(err.contains("signing_key: is too short"), "{err}");
}

#[test]
fn kubernetes_prometheusrule_is_what_chirp_rules_prints() {
    let all = manifests();
    let (text, vars) = kube_config(&all);
    let dir = TempDir::new("kube");
    let path = dir.write("probes.yaml", &text);
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|v| (v.clone(), PLACEHOLDER.to_owned()))
        .collect();
    let out = chirp_with(&["rules", "-c", &path.to_string_lossy()], &env);
    assert!(
        out.status.success(),
        "chirp rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let rule = one(&all, "PrometheusRule");
    let (want, have) = (&printed["groups"], &rule["spec"]["groups"]);
    assert!(
        want.as_sequence().is_some_and(|g| !g.is_empty()),
        "chirp rules printed no groups"
    );
    if want != have {
        let (want, have) = (
            serde_yaml::to_string(want).unwrap(),
            serde_yaml::to_string(have).unwrap(),
        );
        let first = want
            .lines()
            .zip(have.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(have.lines().count()));
        panic!(
            "{KUBE}/prometheusrule.yaml is not what `chirp rules` prints for the ConfigMap's probes.yaml; \
             regenerate it with `{KUBE}/render-rules` (CHIRP_BIN={} {KUBE}/render-rules for this binary).\n\
             First difference, line {} of spec.groups:\n  chirp rules: {}\n  the file:    {}",
            *CHIRP,
            first + 1,
            want.lines().nth(first).unwrap_or("(end)"),
            have.lines().nth(first).unwrap_or("(end)")
        );
    }
}
