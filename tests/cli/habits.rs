//! What users of command-line tools expect: completions a shell can load, a
//! man page, errors that say which file was read and what to do, and, with
//! `--log-format json`, nothing on stderr that is not JSON.

use crate::support::{config_file, exits, TempDir, CHIRP, KEY};
use std::process::Command;

#[test]
fn bash_loads_the_completions_and_they_complete_subcommands_and_flags() {
    let script = exits(Command::new(&*CHIRP).args(["completions", "bash"]), 0);
    let dir = TempDir::new("chirp-completions");
    let file = dir.write("chirp.bash", &script.stdout);
    // Sourced with errors fatal, then asked as bash asks on <TAB>.
    let complete = |words: &str, cword: usize| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -euo pipefail; source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _chirp chirp \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "bash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let subcommands = complete("chirp ''", 1);
    for s in ["run", "check", "validate", "rules", "completions", "man"] {
        assert!(
            subcommands.lines().any(|l| l == s),
            "{s} not offered: {subcommands}"
        );
    }
    let flags = complete("chirp check --", 2);
    for f in ["--count", "--max-p99", "--format", "--log-format"] {
        assert!(flags.lines().any(|l| l == f), "{f} not offered: {flags}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = exits(Command::new(&*CHIRP).args(["completions", shell]), 0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("chirp"),
            "{shell}"
        );
    }
}

#[test]
fn the_man_pages_cover_every_subcommand() {
    let out = exits(Command::new(&*CHIRP).arg("man"), 0);
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH chirp 1"), "{page}");
    for s in ["run", "check", "validate", "rules", "completions"] {
        assert!(
            page.contains(&format!("chirp\\-{s}(1)")),
            "no {s} in:\n{page}"
        );
    }
    let dir = TempDir::new("chirp-man");
    let to = dir.path().join("man1");
    exits(Command::new(&*CHIRP).args(["man", "--dir"]).arg(&to), 0);
    let check = std::fs::read_to_string(to.join("chirp-check.1")).expect("chirp-check.1");
    assert!(
        check.contains(".TH chirp-check 1") && check.contains("\\-\\-max\\-p99"),
        "{check}"
    );
}

/// Run where there is no probes.yaml: the error names the file it looked
/// for, as an absolute path, and how to name another.
#[test]
fn a_missing_configuration_is_named_and_the_flag_suggested() {
    let dir = TempDir::new("chirp-no-config");
    for cmd in ["validate", "rules", "run"] {
        let out = exits(
            Command::new(&*CHIRP)
                .arg(cmd)
                .current_dir(dir.path())
                .env_remove("CHIRP_CONFIG"),
            2,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let looked = dir.path().canonicalize().unwrap().join("probes.yaml");
        assert!(
            err.contains(&format!("{}: 1 error", looked.display())),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("name the configuration file with `-c FILE`"),
            "{cmd}: {err}"
        );
    }
    let good = config_file(&format!(
        "signing_key: {KEY}\nprobes:\n  - name: a\n    inject: {{http: {{url: /hooks/a}}}}\n    catch: {{http: {{}}}}\n"
    ));
    let out = exits(
        Command::new(&*CHIRP)
            .args(["validate", "-c"])
            .arg(&good.path),
        0,
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("{}: ok", good.path.display())),
        "{said}"
    );
}

/// Every line chirp writes to stderr with `--log-format json` is a JSON
/// object shaped as its logs are, fatal errors and the exit line included.
#[test]
fn with_json_logs_fatal_errors_and_the_exit_reason_are_json() {
    let lines = |out: &std::process::Output| -> Vec<serde_json::Value> {
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{err}"))
            })
            .collect()
    };
    let dir = TempDir::new("chirp-json-errors");

    // A configuration that does not exist.
    let out = exits(
        Command::new(&*CHIRP)
            .args(["--log-format", "json", "validate", "-c", "nope.yaml"])
            .current_dir(dir.path()),
        2,
    );
    let got = lines(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["level"], "ERROR");
    assert!(
        got[0]["fields"]["file"]
            .as_str()
            .unwrap()
            .ends_with("/nope.yaml"),
        "{got:?}"
    );
    assert!(got[0]["fields"]["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("cannot read"));
    assert!(got[0]["timestamp"].is_string() && got[0]["target"] == "chirp");
    assert_eq!(got[1]["fields"]["exit_code"], 2);

    // Errors in the file, each with its place.
    let bad = dir.write("bad.yaml", "signing_key: short\nprobes: []\nbogus: 1\n");
    let out = exits(
        Command::new(&*CHIRP)
            .args(["validate", "--log-format=json", "-c"])
            .arg(&bad),
        2,
    );
    let got = lines(&out);
    let errors = got[0]["fields"]["errors"].as_array().unwrap();
    assert_eq!(
        got[0]["fields"]["message"], "the configuration has 1 error",
        "{got:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "bogus" && e["line"] == 3),
        "{got:?}"
    );

    // No subcommand at all: the usage error, as JSON.
    let got = lines(&exits(
        Command::new(&*CHIRP).args(["--log-format", "json"]),
        2,
    ));
    assert!(
        got[0]["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("requires a subcommand"),
        "{got:?}"
    );

    // A command line clap refuses.
    let got = lines(&exits(
        Command::new(&*CHIRP).args(["--log-format", "json", "chekc"]),
        2,
    ));
    assert!(
        got[0]["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("unrecognized subcommand"),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap()["fields"]["exit_code"], 2);

    // `run` that cannot listen: the fatal error and the exit line, after the logs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config_file(&format!(
        "signing_key: {KEY}\nlisten: 127.0.0.1:{port}\nprobes:\n  - name: a\n    inject: {{http: {{url: /hooks/a}}}}\n    catch: {{http: {{}}}}\n"
    ));
    let got = lines(&exits(
        Command::new(&*CHIRP)
            .args(["run", "--log-format", "json", "-c"])
            .arg(&cfg.path),
        2,
    ));
    let fatal = &got[got.len() - 2];
    assert_eq!(fatal["level"], "ERROR");
    assert!(
        fatal["fields"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap()["fields"]["exit_code"], 2);

    // And a clean exit says so too.
    let got = lines(&exits(
        Command::new(&*CHIRP)
            .args(["--log-format", "json", "validate", "-c"])
            .arg(&cfg.path),
        0,
    ));
    assert_eq!(got.last().unwrap()["fields"]["exit_code"], 0, "{got:?}");
    assert_eq!(got.last().unwrap()["level"], "INFO");
}

/// `check` beside a `run` on the same address: the clash names the flag
/// that avoids it.
#[test]
fn a_taken_address_says_which_flag_avoids_the_clash() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = config_file(&format!(
        "signing_key: {KEY}\nprobes:\n  - name: a\n    inject: {{http: {{url: /hooks/a}}}}\n    catch: {{http: {{}}}}\n"
    ));
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "3", "--listen", &addr.to_string(), "-c"])
            .arg(&cfg.path),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("--listen 127.0.0.1:0"),
        "{err}"
    );
    // Without --listen, check takes a free port of its own and passes.
    exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "3", "-c"])
            .arg(&cfg.path),
        0,
    );
}
