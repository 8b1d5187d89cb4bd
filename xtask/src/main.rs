//! `cargo xtask`: every developer and CI entry point of canary.
//!
//! - `setup`: install what is missing (Debian packages, bpf-linker, cargo-deb).
//! - `build-ebpf`: build the XDP program for `bpfel-unknown-none`.
//! - `build [--release]`: the eBPF object, then the workspace binaries.
//! - `build-previous`: canaryd of the previous map layout, from git (the
//!   upgrade test starts it first).
//! - `package`: setup, the eBPF object, release binaries, man pages and
//!   completions, and the Debian package (cargo-deb) in target/debian/.
//! - `test [-- ARGS]`: setup, build, build-previous, package, and the whole
//!   test suite (root).
//! - `demo [--fleet] [-- ARGS]`: setup, build, and run the demo, or its
//!   fleet act (root).
//! - `bench [-- ARGS]`: setup, release build, and run the benchmark (root).

mod bench;
mod cmd;
mod ebpf;
mod ebpf_object;
mod package;
mod previous;
mod setup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::cmd::Cmd;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo entry points for canary"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing for building, testing and the demo
    ///
    /// Debian packages (iproute2, nftables, ethtool, bpftool; and rustc-web,
    /// cargo-web, libstd-rust-web-dev-bpf, llvm-22-dev unless rustup has a
    /// nightly with rust-src), bpf-linker and cargo-deb. Only what is missing
    /// is installed; installing needs root.
    Setup {
        /// Print what would be installed, install nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the XDP program (canary-ebpf) for bpfel-unknown-none
    ///
    /// Always the release profile (debug BPF code does not pass the
    /// verifier). Output: canary-ebpf/target/bpfel-unknown-none/release/canary.
    BuildEbpf,
    /// Build the eBPF object, then the workspace binaries (canaryd, canaryctl, ...)
    Build {
        /// Build the user-space binaries with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build canaryd of the previous map layout from git, for the upgrade test
    ///
    /// A detached git worktree of the previous layout's last commit in
    /// target/previous-layout/src, built by its own `cargo xtask build` into
    /// target/previous-layout/target (cached). `cargo xtask test` runs it and
    /// passes the binary to the tests in CANARY_PREVIOUS_CANARYD.
    BuildPrevious,
    /// Build the Debian package (cargo-deb): target/debian/canary_VERSION-1_ARCH.deb
    ///
    /// Setup, the eBPF object, a release build of canaryd and canaryctl, their
    /// man pages and shell completions (target/release/package/), then
    /// `cargo deb -p canary-userspace --no-build`. Contents and the systemd
    /// unit: canary-userspace/Cargo.toml ([package.metadata.deb]) and
    /// canary-userspace/packaging/.
    Package,
    /// Set up, build, and run the whole test suite (needs root)
    ///
    /// Root because the integration tests create network namespaces and load
    /// XDP programs. Arguments after `--` go to `cargo test` (e.g. a test name
    /// filter); a further `--` separates the arguments for the test binaries:
    /// `cargo xtask test -- split -- --nocapture`.
    Test {
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<String>,
    },
    /// Set up, build, and run the demo (needs root)
    ///
    /// Runs target/debug/canary-demo and exits with its status. Arguments
    /// after `--` go to the demo.
    Demo {
        /// Run the fleet act instead of the single-host demo: three canaryd
        /// hosts behind an ECMP router sharing one rollout through a
        /// 3-member etcd cluster (one weight everywhere, ECMP spread, the
        /// leader killed mid-rollout, an LB host lost under open
        /// connections); about a minute.
        #[arg(long)]
        fleet: bool,
        #[arg(last = true, value_name = "DEMO_ARGS")]
        args: Vec<String>,
    },
    /// Set up, build (release), and run the benchmark (needs root)
    ///
    /// Runs target/release/canary-bench: per-packet cost (BPF_PROG_TEST_RUN),
    /// scaling, end to end against plain routing, nftables DNAT and HAProxy,
    /// control-plane latency. Writes target/bench/results.json and
    /// results.svg. Arguments after `--` go to canary-bench (`--smoke`).
    Bench {
        #[arg(last = true, value_name = "BENCH_ARGS")]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Setup { dry_run } => setup::run(dry_run).map(|()| ExitCode::SUCCESS),
        Task::BuildEbpf => ebpf::build(&root).map(|_| ExitCode::SUCCESS),
        Task::Build { release } => build(&root, release).map(|()| ExitCode::SUCCESS),
        Task::BuildPrevious => previous::build(&root).map(|_| ExitCode::SUCCESS),
        Task::Package => package::run(&root).map(|_| ExitCode::SUCCESS),
        Task::Test { args } => test(&root, &args),
        Task::Demo { fleet, args } => demo(&root, fleet, &args),
        Task::Bench { args } => bench::run(&root, &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of xtask's own manifest directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs xtask (so the workspace builds with the same
/// toolchain), in the workspace root.
fn cargo(root: &Path) -> Cmd {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Cmd::new(cargo).current_dir(root)
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the workspace
/// root, where xtask runs cargo) or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Effective uid 0, read from /proc/self/status (no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective uid from a /proc/PID/status text: `Uid: real effective saved fs`.
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask {what}` needs root: {}", match what {
            "test" => "the integration tests create network namespaces and veth links and load XDP programs",
            _ => "it creates network namespaces and veth links and loads XDP programs",
        });
    }
    Ok(())
}

fn build_workspace_bins(root: &Path, release: bool) -> Result<()> {
    let mut c = cargo(root).args(["build", "--workspace", "--bins"]);
    if release {
        c = c.arg("--release");
    }
    c.run()
}

fn build(root: &Path, release: bool) -> Result<()> {
    ebpf::build(root)?;
    build_workspace_bins(root, release)?;
    let profile = if release { "release" } else { "debug" };
    println!(
        "build: binaries in {} (canaryd embeds the eBPF object)",
        target_dir(root).join(profile).display()
    );
    Ok(())
}

/// Splits `cargo xtask test -- A -- B` into cargo-test arguments (A) and
/// test-binary arguments (B), and adds `--test-threads=2` unless B sets it.
fn cargo_test_args(extra: &[String]) -> Vec<String> {
    let (cargo_args, harness_args) = match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (extra, &[][..]),
    };
    let mut args: Vec<String> = ["test", "--workspace", "--no-fail-fast"]
        .map(String::from)
        .to_vec();
    args.extend(cargo_args.iter().cloned());
    args.push("--".into());
    if !harness_args.iter().any(|a| a.starts_with("--test-threads")) {
        // Two cores; the netns tests use unique names and run concurrently.
        args.push("--test-threads=2".into());
    }
    args.extend(harness_args.iter().cloned());
    args
}

/// Wall time per phase, printed as they finish and summed up at the end.
struct Phases {
    start: Instant,
    done: Vec<(&'static str, Duration, Result<(), String>)>,
}

impl Phases {
    fn new() -> Self {
        Phases {
            start: Instant::now(),
            done: Vec::new(),
        }
    }

    fn run(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
        println!("xtask: === {name} ===");
        let t = Instant::now();
        let r = f().map_err(|e| format!("{e:#}"));
        let took = t.elapsed();
        match &r {
            Ok(()) => println!("xtask: {name} took {}", secs(took)),
            Err(e) => eprintln!("xtask: {name} FAILED after {}: {e}", secs(took)),
        }
        let ok = r.is_ok();
        self.done.push((name, took, r));
        ok
    }

    fn summary(&self) -> bool {
        println!("xtask: summary");
        for (name, took, r) in &self.done {
            let outcome = match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            println!("  {name:<15}{:>9}  {outcome}", secs(*took));
        }
        println!("  {:<15}{:>9}", "total", secs(self.start.elapsed()));
        self.done.iter().all(|(_, _, r)| r.is_ok())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn test(root: &Path, extra: &[String]) -> Result<ExitCode> {
    require_root("test")?;
    let mut phases = Phases::new();
    let _ = phases.run("setup", || setup::run(false))
        && phases.run("build-ebpf", || ebpf::build(root).map(|_| ()))
        && phases.run("build", || {
            cargo(root)
                .args(["build", "--workspace", "--bins", "--tests"])
                .run()
        })
        && {
            // Only the upgrade test needs it: without it that test fails
            // with the reason, the others still run.
            phases.run("build-previous", || previous::build(root).map(|_| ()));
            // Likewise only the package test needs the .deb.
            phases.run("package", || package::run(root).map(|_| ()));
            phases.run("test", || {
                cargo(root)
                    .env(previous::ENV, previous::canaryd_path(root))
                    .env(package::ENV, package::deb_path(root))
                    .args(cargo_test_args(extra))
                    .run()
            })
        };
    if phases.summary() {
        println!("xtask: all tests passed");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: test FAILED (see above)");
        Ok(ExitCode::FAILURE)
    }
}

fn demo(root: &Path, fleet: bool, extra: &[String]) -> Result<ExitCode> {
    require_root("demo")?;
    setup::run(false)?;
    ebpf::build(root)?;
    build_workspace_bins(root, false)?;
    let bin = target_dir(root).join("debug/canary-demo");
    if !bin.is_file() {
        bail!(
            "{} was not built: the demo is the `canary-demo` bin of the canary-tests package (tests/)",
            bin.display()
        );
    }
    let mut args: Vec<String> = Vec::new();
    if fleet {
        args.push("--fleet".into());
    }
    args.extend(extra.iter().cloned());
    let status = Cmd::new(&bin).args(args).current_dir(root).status()?;
    exit_code_of(status)
}

/// The exit code to pass on: the child's own, or 128 + signal if it was
/// killed by a signal (as a shell reports it).
fn exit_code_of(status: std::process::ExitStatus) -> Result<ExitCode> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    if let Some(sig) = status.signal() {
        eprintln!("xtask: demo killed by signal {sig}");
        return Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8));
    }
    bail!("no exit code and no signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_args_default() {
        assert_eq!(
            cargo_test_args(&[]),
            strings(&[
                "test",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--test-threads=2"
            ])
        );
    }

    #[test]
    fn test_args_filter_and_harness_args() {
        assert_eq!(
            cargo_test_args(&strings(&["split", "--", "--nocapture"])),
            strings(&[
                "test",
                "--workspace",
                "--no-fail-fast",
                "split",
                "--",
                "--test-threads=2",
                "--nocapture"
            ])
        );
        assert_eq!(
            cargo_test_args(&strings(&["--", "--test-threads=1"])),
            strings(&[
                "test",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--test-threads=1"
            ])
        );
    }

    #[test]
    fn uid_parsing() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["xtask", "test", "--", "f", "--", "--nocapture"]).unwrap();
        match cli.task {
            Task::Test { args } => assert_eq!(args, strings(&["f", "--", "--nocapture"])),
            _ => panic!("wrong subcommand"),
        }
        for (argv, want) in [
            (&["xtask", "demo"][..], false),
            (&["xtask", "demo", "--fleet"], true),
        ] {
            match Cli::try_parse_from(argv).unwrap().task {
                Task::Demo { fleet, args } => assert_eq!((fleet, args.len()), (want, 0)),
                _ => panic!("wrong subcommand"),
            }
        }
    }
}
