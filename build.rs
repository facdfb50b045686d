//! Stamps the source revision into the binary as `CHIRP_BUILD_REVISION`
//! (`chirp::REVISION`, `chirp --version`): `$CHIRP_REVISION` when set (the
//! Dockerfile passes it as a build argument, since `.git` is not in its build
//! context), else `git rev-parse --short=12 HEAD` of this checkout, else
//! `unknown`. It reruns only when that input changes, not on every build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CHIRP_REVISION");
    let revision = match std::env::var("CHIRP_REVISION") {
        Ok(given) if !given.trim().is_empty() => checked(given.trim()),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo::rustc-env=CHIRP_BUILD_REVISION={revision}");
}

/// `CHIRP_REVISION` as given, or the build fails: it ends up in `--version`
/// and in labels, so it must be a short plain token.
fn checked(given: &str) -> String {
    let plain = given
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if !plain || given.len() > 64 {
        panic!(
            "CHIRP_REVISION={given:?} is not a revision: use at most 64 of A-Z a-z 0-9 . _ - + \
             (e.g. CHIRP_REVISION=$(git rev-parse --short=12 HEAD)), or leave it unset"
        );
    }
    given.to_owned()
}

/// The checked-out commit, when this source tree is the top of a git
/// checkout (a tree unpacked inside some other repository must not take that
/// one's revision). Registers `HEAD` and the branch it points to, so a commit
/// or a checkout reruns this script.
fn from_git() -> Option<String> {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let toplevel = git(&root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&toplevel).canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    // In a linked worktree HEAD is the worktree's own; branches are shared.
    let git_dir = root.join(git(&root, &["rev-parse", "--git-dir"])?);
    let common_dir = root.join(git(&root, &["rev-parse", "--git-common-dir"])?);
    watch(&git_dir.join("HEAD"));
    if let Some(branch) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = common_dir.join(&branch);
        if loose.exists() {
            watch(&loose);
        } else if let Some(dir) = loose.parent().filter(|d| d.exists()) {
            // The branch is only in packed-refs for now: its next commit
            // creates the loose file in this directory.
            watch(dir);
        }
        watch(&common_dir.join("packed-refs"));
    }
    git(&root, &["rev-parse", "--short=12", "HEAD"])
}

/// Reruns this script when `path` changes. A path that does not exist is
/// skipped: cargo would take it as changed on every build.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// `git ARGS` in `dir`: its trimmed output, or `None` when git is missing,
/// fails, or prints nothing.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
