//! `cargo xtask build-ebpf`: builds canary-ebpf for `bpfel-unknown-none`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::{Cmd, TOOLCHAIN_ENV};
use crate::setup::{self, EbpfToolchain};

pub use crate::ebpf_object::EBPF_TARGET as TARGET;

/// The object the user-space crate embeds (its build.rs includes the same
/// definition, `ebpf_object.rs`).
pub fn object_path(root: &Path) -> PathBuf {
    crate::ebpf_object::ebpf_object_path(root)
}

/// Builds the eBPF object, always with the release profile (debug BPF code
/// does not pass the verifier), and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let toolchain = setup::detect_toolchain();
    let Some(linker) = setup::find_bpf_linker() else {
        bail!("bpf-linker not found (PATH, ~/.cargo/bin): run `cargo xtask setup`");
    };

    // Directories to put in front of PATH: the one holding bpf-linker (if it
    // was not found through PATH already) and the cargo bin directory.
    let mut front: Vec<PathBuf> = Vec::new();
    if toolchain == EbpfToolchain::Debian {
        // Debian's rustc and cargo must win over rustup's proxies.
        front.push(PathBuf::from("/usr/bin"));
    }
    front.extend(setup::cargo_bin_dirs().into_iter().take(1));
    if let Some(dir) = linker.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !front.iter().any(|f| f == dir) {
            front.push(dir.to_path_buf());
        }
    }
    let shown_path = front
        .iter()
        .map(|d| d.display().to_string())
        .chain(["$PATH".to_string()])
        .collect::<Vec<_>>()
        .join(":");
    let path = setup::prepend_path(&front);

    let dir = root.join("canary-ebpf");
    let cmd = match toolchain {
        EbpfToolchain::Debian => {
            let cargo = Path::new("/usr/bin/cargo");
            if !cargo.is_file() {
                bail!(
                    "{} not found (Debian package cargo-web): run `cargo xtask setup`",
                    cargo.display()
                );
            }
            Cmd::new(cargo)
                .env_remove_all(TOOLCHAIN_ENV)
                // aya-ebpf 0.2 uses #![feature]; Debian's rustc is a stable build.
                .env("RUSTC_BOOTSTRAP", "1")
                .env_shown("PATH", &path, &shown_path)
                .args(["build", "--release", "--target", TARGET])
        }
        EbpfToolchain::Nightly => {
            // `rustup run nightly cargo` is `cargo +nightly` without relying
            // on `cargo` in PATH being rustup's proxy.
            let rustup = setup::find_rustup().context("rustup disappeared")?;
            Cmd::new(rustup)
                .env_remove_all(TOOLCHAIN_ENV)
                .env_shown("PATH", &path, &shown_path)
                .args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
                .args(["--release", "--target", TARGET])
        }
    };
    println!("build-ebpf: toolchain: {}", toolchain.describe());
    cmd.current_dir(&dir).stdin_null().run()?;

    let obj = object_path(root);
    let size = std::fs::metadata(&obj)
        .with_context(|| format!("the build succeeded but {} is missing", obj.display()))?
        .len();
    println!("build-ebpf: {} ({size} bytes)", obj.display());
    Ok(obj)
}
