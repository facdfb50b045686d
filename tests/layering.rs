//! The layering of `src/` (see `../shared/ARCHITECTURE.md` and `src/lib.rs`):
//! every module has a rank, and production code may only import modules of
//! a lower rank (or its own module and those inside it). So there is no
//! import cycle, the ledger cannot reach the SLO engine, an exporter or a
//! transport, and a transport cannot reach the probe or an exporter.

use std::collections::BTreeSet;
use std::path::Path;

/// (module, rank), most specific first where modules nest.
const RANKS: &[(&str, u32)] = &[
    ("version", 0),
    ("canary", 0),
    ("outcome", 0),
    ("stats", 0),
    ("timer", 0),
    ("payload", 1),
    ("config::errors", 0),
    ("config::limits", 0),
    ("config::secret", 0),
    ("config::vars", 0),
    ("config::de", 1),
    ("config::tls", 2),
    ("transport", 3),
    ("config", 4),
    ("probe::ledger", 5),
    ("probe", 6),
    ("slo", 7),
    ("history", 7),
    ("report", 8),
    ("export", 9),
    ("server", 10),
    ("runtime", 11),
    ("cmd", 12),
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
        let code = without_comment(line);
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// `line` without its `//` comment (a `//` inside a string literal is code).
fn without_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The paths of a use-tree body such as `a::b, c::{d, e}` (nested braces).
fn use_tree(body: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let mut depth = 0;
    let mut start = 0;
    let mut entries = Vec::new();
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&body[start..]);
    for e in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
        match e.split_once('{') {
            Some((head, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or(rest);
                use_tree(inner, &join_str(prefix, head.trim_end_matches("::")), out);
            }
            None => {
                let path: String = e
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                out.insert(join_str(prefix, &path));
            }
        }
    }
}

fn join_str(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}::{b}"),
    }
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
            // `crate::{a::b, c::{d, e}}`: each leaf is a reference.
            let mut depth = 0;
            let mut end = start;
            for (j, c) in text[start..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = start + j;
                    break;
                }
            }
            use_tree(&text[start + 1..end], &base.join("::"), &mut refs);
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
        "use crate::{outcome::{Counts, Stray}, slo::SloObserver};\nlet u = \"http://x\"; use crate::export::E;",
        "probe::ledger",
    );
    assert!(grouped.contains("slo::SloObserver"), "{grouped:?}");
    assert!(grouped.contains("outcome::Stray"), "{grouped:?}");
    let code = production("let u = \"http://x\"; use crate::export::E;");
    assert!(references(&code, "probe").contains("export::E"), "{code}");
    let (own, rank) = unit("probe::ledger").unwrap();
    let (other, other_rank) = unit("slo::SloObserver").unwrap();
    assert!(
        own != other && other_rank >= rank,
        "the ledger importing the SLO engine is a violation"
    );
}
