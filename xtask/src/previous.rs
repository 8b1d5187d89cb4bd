//! `cargo xtask build-previous`: canaryd as it was before the current map
//! layout, built from git, for the upgrade test (tests/tests/upgrade.rs):
//! it starts the old canaryd, then the new one on its pins.
//!
//! The source is a detached git worktree of [`COMMIT`] in
//! `target/previous-layout/src`, built by its own `cargo xtask build-ebpf`
//! and `cargo build` of canaryd into `target/previous-layout/target`; a stamp file makes later calls free.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// The last commit of map layout 1 (64-byte flow entries, NEXTHOP_GEN,
/// 64 services / 4,096 backends). Change it with the next layout change.
pub const COMMIT: &str = "038e7daf466e0aca4b8393ed04318917324f246f";
/// How the tests are told where the old canaryd is.
pub const ENV: &str = "CANARY_PREVIOUS_CANARYD";

fn base(root: &Path) -> PathBuf {
    root.join("target/previous-layout")
}

/// The old canaryd (built or not).
pub fn canaryd_path(root: &Path) -> PathBuf {
    base(root).join("target/debug/canaryd")
}

fn stamp(root: &Path) -> PathBuf {
    base(root).join(format!("built-{COMMIT}"))
}

fn git(root: &Path) -> Cmd {
    Cmd::new("git").current_dir(root)
}

/// Builds the previous layout's canaryd unless it is built already, and
/// returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let bin = canaryd_path(root);
    if bin.is_file() && stamp(root).is_file() {
        println!(
            "build-previous: {} (cached, commit {})",
            bin.display(),
            &COMMIT[..7]
        );
        return Ok(bin);
    }
    let short = &COMMIT[..7];
    let found = std::process::Command::new("git")
        .current_dir(root)
        .args(["cat-file", "-e", &format!("{COMMIT}^{{commit}}")])
        .output()
        .context("running git (the previous layout's canaryd is built from git history)")?;
    if !found.status.success() {
        bail!(
            "commit {short} (the previous map layout's canaryd, needed by the upgrade test) is \
             not in the git history of {}: fetch the full history (`git fetch --unshallow`, or \
             clone without --depth) and run `cargo xtask build-previous` again",
            root.display()
        );
    }
    let src = base(root).join("src");
    if !src.join("Cargo.toml").is_file() {
        // A worktree whose directory went with `cargo clean` is still
        // registered: forget it first.
        git(root).args(["worktree", "prune"]).run()?;
        std::fs::create_dir_all(base(root))?;
        git(root)
            .args(["worktree", "add", "--detach"])
            .arg(&src)
            .arg(COMMIT)
            .run()
            .context("creating the previous layout's source tree")?;
    }
    let head = std::process::Command::new("git")
        .current_dir(&src)
        .args(["rev-parse", "HEAD"])
        .output()?;
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    if head != COMMIT {
        git(&src)
            .args(["checkout", "--detach", COMMIT])
            .run()
            .with_context(|| format!("checking out {short} in {}", src.display()))?;
    }
    // Its own eBPF object, then canaryd alone (not the whole old workspace:
    // CI has two cores).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for args in [
        &["xtask", "build-ebpf"][..],
        &["build", "-p", "canary-userspace", "--bin", "canaryd"][..],
    ] {
        Cmd::new(&cargo)
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", base(root).join("target"))
            .args(args)
            .stdin_null()
            .run()
            .with_context(|| {
                format!("building canaryd of commit {short} (the previous map layout)")
            })?;
    }
    if !bin.is_file() {
        bail!(
            "the previous layout's build succeeded but {} is missing",
            bin.display()
        );
    }
    std::fs::write(stamp(root), format!("{COMMIT}\n"))?;
    println!("build-previous: {} (commit {short})", bin.display());
    Ok(bin)
}
