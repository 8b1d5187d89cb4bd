//! `cargo xtask bench`: set up, build in release, make sure the contenders
//! the benchmark compares against are installed (nftables through setup,
//! HAProxy here), then run `target/release/canary-bench`, which prints the
//! table and writes `target/bench/results.json` and `results.svg`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cmd::{probe, Cmd};

/// Debian packages the benchmark needs beyond what `setup` installs: the
/// HAProxy contender (TCP mode, weighted servers).
const BENCH_DEBS: &[&str] = &["haproxy"];

pub fn run(root: &Path, extra: &[String]) -> Result<ExitCode> {
    crate::require_root("bench")?;
    crate::setup::run(false)?;
    install_bench_debs()?;
    crate::ebpf::build(root)?;
    crate::build_workspace_bins(root, true)?;
    let bin = crate::target_dir(root).join("release/canary-bench");
    if !bin.is_file() {
        bail!(
            "{} was not built: the bench is the `canary-bench` bin of the canary-tests package (tests/)",
            bin.display()
        );
    }
    let status = Cmd::new(&bin)
        .args(extra)
        .env("CANARY_BENCH_OUT", crate::target_dir(root).join("bench"))
        .current_dir(root)
        .status()?;
    crate::exit_code_of(status)
}

/// Installs the benchmark-only packages that dpkg does not know as
/// installed, saying what it installs. The package's service is not started
/// (policy-rc.d style: `RUNLEVEL=1` makes invoke-rc.d skip it).
fn install_bench_debs() -> Result<()> {
    let missing: Vec<&str> = BENCH_DEBS
        .iter()
        .copied()
        .filter(|p| {
            probe("dpkg-query", ["-W", "-f=${Status}", p], &[])
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "bench: installing Debian packages for the comparison: {}",
        missing.join(" ")
    );
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("RUNLEVEL", "1")
        .stdin_null()
        .run()
}
