//! Sets `MESHAGE_VERSION` for `meshage --version`: the package's version, and the git commit
//! when built from a checkout (`0.1.0 (commit 0123456789ab)`). Without `.git` here (a crates.io
//! tarball, an export) or without git, the version alone, silently.

use std::path::Path;
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rerun-if-changed=build.rs");
    let commit = Path::new(".git").exists().then(commit).flatten();
    match commit {
        Some(commit) => println!("cargo:rustc-env=MESHAGE_VERSION={version} (commit {commit})"),
        None => println!("cargo:rustc-env=MESHAGE_VERSION={version}"),
    }
}

/// The checkout's commit; tells cargo to run again when HEAD or the branch it names moves.
fn commit() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    // In a worktree `.git` is a file, HEAD is in the worktree's git directory and the branches
    // are in the common one.
    let head = git(&["rev-parse", "--git-path", "HEAD"])?;
    println!("cargo:rerun-if-changed={head}");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(reference) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={reference}");
        }
        if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
            println!("cargo:rerun-if-changed={packed}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
