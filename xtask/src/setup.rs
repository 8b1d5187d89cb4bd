//! `cargo xtask setup`: detect what building and testing need, and install
//! what is missing (and only that).
//!
//! The detection here is the one source of truth: `build-ebpf` asks
//! [`detect_toolchain`] and [`find_bpf_linker`] which way to build.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::cmd::{probe, Cmd, TOOLCHAIN_ENV};

/// Debian packages the integration tests and the demo always need:
/// `ip` (netns, veth), `nft` (the comparison split), `ethtool` (veth offloads),
/// `bpftool` (inspecting loaded programs and maps), `curl` (scraping the
/// metrics endpoint like a Prometheus server would), `haproxy` (the
/// user-space proxy the benchmark compares with; its smoke run is a test),
/// `prometheus` (the rollout test's external metric is a real Prometheus
/// scraping the backends; run by the test in a namespace, never as a
/// service), `etcd-server` and `etcd-client` (the fleet tests' etcd
/// cluster and `etcdctl`, the members run by the tests in namespaces, never
/// as a service), `protobuf-compiler` (`protoc`, which the etcd client
/// crate's gRPC code generation runs at build time), `tmux` (the live-view
/// test runs `canaryctl status --watch` in a tmux pane and captures it).
pub const ALWAYS_DEBS: &[&str] = &[
    "iproute2",
    "nftables",
    "ethtool",
    "bpftool",
    "curl",
    "haproxy",
    "prometheus",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "tmux",
];

/// Debian packages for the Debian eBPF toolchain: rustc 1.96 and cargo at
/// /usr/bin, the prebuilt `core` for `bpfel-unknown-none`, and the LLVM 22
/// that bpf-linker is built against.
pub const DEBIAN_EBPF_DEBS: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];

/// The bpf-linker release built on the Debian path (it supports LLVM 22).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The cargo-deb release `cargo xtask package` is made with (its
/// `systemd-units` options and `--no-build` as used there).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// How the eBPF crate gets built on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfToolchain {
    /// The standard aya setup: a rustup nightly with `rust-src`, and
    /// `-Z build-std=core`.
    Nightly,
    /// Debian's rustc/cargo at /usr/bin with the prebuilt BPF `core`
    /// (`libstd-rust-web-dev-bpf`) and `RUSTC_BOOTSTRAP=1`.
    Debian,
}

impl EbpfToolchain {
    pub fn describe(self) -> &'static str {
        match self {
            EbpfToolchain::Nightly => "rustup nightly with rust-src (-Z build-std=core)",
            EbpfToolchain::Debian => "Debian rustc/cargo at /usr/bin with the prebuilt BPF core",
        }
    }
}

/// Environment for rustup probes: never download a toolchain while probing.
const RUSTUP_PROBE_ENV: &[(&str, &str)] = &[("RUSTUP_AUTO_INSTALL", "0")];

/// Decides which eBPF toolchain applies: the standard aya setup if rustup
/// has a nightly toolchain with `rust-src` installed, the Debian path
/// otherwise.
pub fn detect_toolchain() -> EbpfToolchain {
    let Some(rustup) = find_rustup() else {
        return EbpfToolchain::Debian;
    };
    let list = probe(&rustup, ["toolchain", "list"], RUSTUP_PROBE_ENV)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !has_nightly(&list) {
        return EbpfToolchain::Debian;
    }
    let components = probe(
        &rustup,
        ["+nightly", "component", "list", "--installed"],
        RUSTUP_PROBE_ENV,
    )
    .filter(|o| o.status.success())
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_default();
    if has_rust_src(&components) {
        EbpfToolchain::Nightly
    } else {
        EbpfToolchain::Debian
    }
}

/// True if `rustup toolchain list` output names the plain `nightly` channel
/// (what `+nightly` resolves to), e.g. `nightly-x86_64-unknown-linux-gnu`.
/// A dated nightly (`nightly-2024-05-01-...`) is not what `+nightly` means.
pub fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        match name.strip_prefix("nightly") {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .and_then(|r| r.chars().next())
                .is_some_and(|c| !c.is_ascii_digit()),
            None => false,
        }
    })
}

/// True if `rustup component list --installed` output lists `rust-src`.
pub fn has_rust_src(components: &str) -> bool {
    components.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        name == "rust-src" || name.starts_with("rust-src-")
    })
}

/// True if `dpkg-query -W -f='${Status}' NAME` output says the package is
/// installed ("install ok installed"; a held package, "hold ok installed",
/// is installed too).
pub fn dpkg_status_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    status.contains("install ok installed") || words == ["hold", "ok", "installed"]
}

/// Asks dpkg whether a package is installed. Unknown packages (dpkg-query
/// exits 1 with "no packages found") and a missing dpkg-query count as not
/// installed.
pub fn deb_installed(name: &str) -> bool {
    probe("dpkg-query", ["-W", "-f=${Status}", name], &[])
        .is_some_and(|o| dpkg_status_installed(&String::from_utf8_lossy(&o.stdout)))
}

/// `$CARGO_HOME/bin` and `~/.cargo/bin`, where `cargo install` and rustup
/// put their binaries (deduplicated, first is where `cargo install` writes).
pub fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let d = PathBuf::from(home).join(".cargo/bin");
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Finds a tool that runs with `args`: first by name in PATH, then in the
/// cargo bin directories. Returns what to execute.
fn find_tool(name: &str, args: &[&str]) -> Option<PathBuf> {
    let runs = |p: &Path| probe(p, args, RUSTUP_PROBE_ENV).is_some_and(|o| o.status.success());
    if runs(Path::new(name)) {
        return Some(PathBuf::from(name));
    }
    cargo_bin_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file() && runs(p))
}

/// bpf-linker is present iff `bpf-linker --version` runs (PATH or
/// ~/.cargo/bin).
pub fn find_bpf_linker() -> Option<PathBuf> {
    find_tool("bpf-linker", &["--version"])
}

/// cargo-deb is present iff `cargo-deb --version` runs (PATH or
/// ~/.cargo/bin, where cargo looks for the `cargo deb` subcommand too).
pub fn find_cargo_deb() -> Option<PathBuf> {
    find_tool("cargo-deb", &["--version"])
}

pub fn find_rustup() -> Option<PathBuf> {
    find_tool("rustup", &["--version"])
}

/// What setup found missing.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub toolchain: EbpfToolchain,
    pub debs: Vec<&'static str>,
    pub bpf_linker: bool,
    pub cargo_deb: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.debs.is_empty() && !self.bpf_linker && !self.cargo_deb
    }
}

/// The Debian packages a toolchain path needs, always-needed ones first.
pub fn needed_debs(toolchain: EbpfToolchain) -> Vec<&'static str> {
    let mut debs = ALWAYS_DEBS.to_vec();
    if toolchain == EbpfToolchain::Debian {
        debs.extend_from_slice(DEBIAN_EBPF_DEBS);
    }
    debs
}

/// Looks at the machine and says what is missing.
pub fn plan() -> Plan {
    let toolchain = detect_toolchain();
    let debs = needed_debs(toolchain)
        .into_iter()
        .filter(|p| !deb_installed(p))
        .collect();
    Plan {
        toolchain,
        debs,
        bpf_linker: find_bpf_linker().is_none(),
        cargo_deb: find_cargo_deb().is_none(),
    }
}

fn bpf_linker_line(toolchain: EbpfToolchain) -> String {
    match toolchain {
        EbpfToolchain::Debian => {
            format!("bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)")
        }
        EbpfToolchain::Nightly => "bpf-linker from crates.io (a few minutes)".to_string(),
    }
}

/// `cargo xtask setup [--dry-run]`.
pub fn run(dry_run: bool) -> Result<()> {
    let plan = plan();
    if plan.is_empty() {
        println!("setup: nothing to install");
        return Ok(());
    }
    if dry_run {
        println!(
            "setup: eBPF toolchain: {} (dry run, nothing is installed)",
            plan.toolchain.describe()
        );
        if !plan.debs.is_empty() {
            println!(
                "setup: would install Debian packages: {}",
                plan.debs.join(" ")
            );
        }
        if plan.bpf_linker {
            println!("setup: would build {}", bpf_linker_line(plan.toolchain));
        }
        if plan.cargo_deb {
            println!("setup: would build {}", cargo_deb_line());
        }
        return Ok(());
    }

    if !crate::is_root() {
        let mut missing: Vec<String> = plan.debs.iter().map(|s| s.to_string()).collect();
        if plan.bpf_linker {
            missing.push("bpf-linker".into());
        }
        if plan.cargo_deb {
            missing.push("cargo-deb".into());
        }
        bail!(
            "setup must install {} and needs root for that: run it as root \
             (`cargo xtask setup --dry-run` shows the plan without installing)",
            missing.join(", ")
        );
    }

    if !plan.debs.is_empty() {
        if probe("dpkg-query", ["--version"], &[]).is_none() {
            bail!(
                "setup installs packages with apt (Debian and derivatives); there is \
                 no dpkg-query here: install the equivalents of {} yourself",
                plan.debs.join(", ")
            );
        }
        println!("setup: installing Debian packages: {}", plan.debs.join(" "));
        apt_get(&["update"])?;
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(plan.debs.iter().copied());
        apt_get(&args)?;
    }

    if plan.bpf_linker {
        install_tool(
            "bpf-linker",
            &bpf_linker_line(plan.toolchain),
            || install_bpf_linker(plan.toolchain),
            find_bpf_linker,
        )?;
    }
    if plan.cargo_deb {
        install_tool(
            "cargo-deb",
            &cargo_deb_line(),
            install_cargo_deb,
            find_cargo_deb,
        )?;
    }
    Ok(())
}

/// Builds a tool with `cargo install` (`install`), saying so (`line`), then
/// checks that `find` sees it run.
fn install_tool(
    name: &str,
    line: &str,
    install: impl FnOnce() -> Result<()>,
    find: impl Fn() -> Option<PathBuf>,
) -> Result<()> {
    println!("setup: building {line}");
    install()?;
    if find().is_none() {
        bail!(
            "{name} was installed but `{name} --version` does not run (looked in PATH and {})",
            cargo_bin_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn cargo_deb_line() -> String {
    format!(
        "cargo-deb {CARGO_DEB_VERSION} from crates.io, the Debian packaging tool of \
         `cargo xtask package` (about a minute)"
    )
}

fn apt_get(args: &[&str]) -> Result<()> {
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args)
        .stdin_null()
        .run()
}

/// `cargo install` with the cargo that runs xtask (rustup's stable); a
/// target dir, target or flags meant for the workspace must not leak into
/// the install.
fn cargo_install_cmd() -> Cmd {
    let cargo = PathBuf::from(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    let mut leaky: Vec<&str> = TOOLCHAIN_ENV.to_vec();
    leaky.retain(|k| !matches!(*k, "RUSTUP_TOOLCHAIN" | "RUSTC" | "CARGO"));
    let mut cmd = Cmd::new(&cargo).env_remove_all(&leaky);
    // The rustc of that same toolchain, not whatever a rustup proxy in PATH
    // would resolve to from the crate's directory.
    let sibling = cargo.with_file_name("rustc");
    if cargo.is_absolute() && sibling.is_file() {
        cmd = cmd.env("RUSTC", &sibling);
    }
    cmd
}

fn install_cargo_deb() -> Result<()> {
    cargo_install_cmd()
        .args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ])
        .stdin_null()
        .run()
}

fn install_bpf_linker(toolchain: EbpfToolchain) -> Result<()> {
    let cmd = cargo_install_cmd();
    let cmd = match toolchain {
        EbpfToolchain::Debian => {
            let path = prepend_path(&[PathBuf::from(LLVM_PREFIX).join("bin")]);
            cmd.env("LLVM_PREFIX", LLVM_PREFIX)
                .env_shown("PATH", path, &format!("{LLVM_PREFIX}/bin:$PATH"))
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
        }
        EbpfToolchain::Nightly => cmd.args(["install", "bpf-linker"]),
    };
    cmd.stdin_null().run()
}

/// `dirs` followed by the current PATH.
pub fn prepend_path(dirs: &[PathBuf]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let all = dirs.iter().cloned().chain(std::env::split_paths(&current));
    std::env::join_paths(all).expect("PATH entries contain no ':'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_parsing() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed"));
        // Removed but configuration left behind.
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        // Selected for install, never unpacked.
        assert!(!dpkg_status_installed("install ok not-installed"));
        assert!(!dpkg_status_installed("install ok half-configured"));
        // `dpkg-query: no packages found matching ...` goes to stderr; stdout is empty.
        assert!(!dpkg_status_installed(""));
    }

    #[test]
    fn nightly_detection() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly("nightly-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly(
            "nightly-2024-05-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
        assert!(!has_nightly(""));
    }

    #[test]
    fn rust_src_detection() {
        let without = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                       rust-std-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(!has_rust_src(without));
        assert!(has_rust_src(&format!("{without}rust-src\n")));
        assert!(!has_rust_src(""));
    }

    #[test]
    fn debs_per_toolchain() {
        // The nightly path needs only the test tools; the Debian path adds
        // its toolchain packages after them.
        assert_eq!(needed_debs(EbpfToolchain::Nightly), ALWAYS_DEBS);
        let debian = needed_debs(EbpfToolchain::Debian);
        assert_eq!(&debian[..ALWAYS_DEBS.len()], ALWAYS_DEBS);
        assert_eq!(&debian[ALWAYS_DEBS.len()..], DEBIAN_EBPF_DEBS);
        assert!(ALWAYS_DEBS.contains(&"prometheus"));
        for fleet in ["etcd-server", "etcd-client", "protobuf-compiler"] {
            assert!(ALWAYS_DEBS.contains(&fleet), "{fleet}");
        }
        // The live-view test drives canaryctl in tmux.
        assert!(ALWAYS_DEBS.contains(&"tmux"));
    }

    #[test]
    fn unknown_package_is_not_installed() {
        // Runs the real dpkg-query (or finds none): a name no archive has.
        assert!(!deb_installed("canary-xtask-no-such-package"));
    }
}
