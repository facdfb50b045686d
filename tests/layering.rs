//! The layering of `src/` (see `../shared/ARCHITECTURE.md` and `src/lib.rs`):
//! every module has a rank, and production code may only import modules of
//! a lower rank (or its own module and those inside it). So there is no
//! import cycle, the ledger cannot reach the SLO engine, an exporter or a
//! transport, and a transport cannot reach the probe or an exporter.

use std::collections::BTreeSet;
use std::path::Path;

/// (module, rank), most specific first where modules nest.
const RANKS: &[(&str, u32)] = &[
    ("canary", 0),
    ("outcome", 0),
    ("stats", 0),
    ("config::errors", 0),
    ("config::limits", 0),
    ("config::secret", 0),
    ("config::vars", 0),
    ("config::de", 1),
    ("config::tls", 1),
    ("transport", 2),
    ("config", 3),
    ("probe::ledger", 4),
    ("probe", 5),
    ("slo", 6),
    ("report", 7),
    ("export", 8),
    ("server", 9),
    ("runtime", 10),
    ("cmd", 11),
];

/// The ranked module `path` belongs to, and its rank.
fn unit(path: &str) -> Option<(&'static str, u32)> {
    RANKS
        .iter()
        .filter(|(m, _)| path == *m || path.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
        .copied()
}

/// The file's text without comments and without test code (`tests.rs`
/// files are skipped by the caller; `#[cfg(test)]` items are cut here).
fn production(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the next item: `mod x;` or a braced block.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                if !opened && l.trim_end().ends_with(';') {
                    break;
                }
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                opened |= l.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every module path `text` (in module `here`) refers to through `crate::` or `super::`.
fn references(text: &str, here: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < text.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let (base, skip) = if rest.starts_with("crate::") && (i == 0 || !is_ident(bytes[i - 1])) {
            (Vec::new(), "crate::".len())
        } else if rest.starts_with("super::") && (i == 0 || !is_ident(bytes[i - 1])) {
            let mut parts: Vec<&str> = here.split("::").collect();
            let mut j = i;
            while text[j..].starts_with("super::") {
                parts.pop();
                j += "super::".len();
            }
            (parts.into_iter().map(str::to_owned).collect(), j - i)
        } else {
            i += 1;
            continue;
        };
        let start = i + skip;
        if text[start..].starts_with('{') {
            // `crate::{a::b, c}`: each entry is a reference.
            let end = start + text[start..].find('}').unwrap_or(0);
            for entry in text[start + 1..end].split(',') {
                let path: String = entry
                    .trim()
                    .chars()
                    .take_while(|c| is_ident(*c as u8) || *c == ':')
                    .collect();
                refs.insert(join(&base, &path));
            }
            i = end;
        } else {
            let path: String = text[start..]
                .chars()
                .take_while(|c| is_ident(*c as u8) || *c == ':')
                .collect();
            refs.insert(join(&base, path.trim_end_matches(':')));
            i = start + path.len();
        }
    }
    refs
}

fn join(base: &[String], path: &str) -> String {
    let mut parts: Vec<String> = base.to_vec();
    parts.extend(
        path.split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
    );
    parts.join("::")
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every violation: (file, its unit, the unit it imports, why).
fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = Vec::new();
    let mut seen_units = BTreeSet::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let rel = rel.to_string_lossy().replace('/', "::");
        if rel == "lib" || rel == "main" || rel.ends_with("tests") {
            continue;
        }
        let module = rel.trim_end_matches("::mod").to_owned();
        let Some((own, rank)) = unit(&module) else {
            out.push(format!(
                "{module}: not in the layering table; give it a rank"
            ));
            continue;
        };
        seen_units.insert(own);
        let text = production(&std::fs::read_to_string(&f).unwrap());
        for r in references(&text, &module) {
            let Some((other, other_rank)) = unit(&r) else {
                out.push(format!("{module}: refers to `{r}`, which has no rank"));
                continue;
            };
            if other != own && other_rank >= rank {
                out.push(format!(
                    "{module} (`{own}`, rank {rank}) imports `{r}` (`{other}`, rank {other_rank})"
                ));
            }
        }
    }
    for (m, _) in RANKS {
        if !seen_units.contains(m) {
            out.push(format!("`{m}` is in the layering table but not in src/"));
        }
    }
    out
}

#[test]
fn imports_only_point_down_the_layers() {
    let v = violations();
    assert!(v.is_empty(), "layering broken:\n  {}", v.join("\n  "));
}

#[test]
fn the_check_sees_a_violation() {
    // The parser finds both forms of import, so the test above can fail.
    let text = production("use crate::export::otlp::Telemetry;\nfn f() { super::super::probe::Probe::new(); }\n// crate::cmd in a comment\n");
    let refs = references(&text, "transport::nats::inject");
    assert!(refs.contains("export::otlp::Telemetry"), "{refs:?}");
    assert!(refs.contains("transport::probe::Probe::new"), "{refs:?}");
    assert!(!refs.iter().any(|r| r.starts_with("cmd")), "{refs:?}");
    let grouped = references(
        "use crate::{outcome::Counts, slo::SloObserver};",
        "probe::ledger",
    );
    assert!(grouped.contains("slo::SloObserver"), "{grouped:?}");
    let (own, rank) = unit("probe::ledger").unwrap();
    let (other, other_rank) = unit("slo::SloObserver").unwrap();
    assert!(
        own != other && other_rank >= rank,
        "the ledger importing the SLO engine is a violation"
    );
}
