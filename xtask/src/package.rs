//! `cargo xtask package`: the Debian package of canaryd and canaryctl.
//!
//! Setup (cargo-deb among what it installs), the eBPF object, a release build
//! of canaryd and canaryctl, then the generated assets in
//! `target/release/package/` (man pages from the clap definitions, gzipped as
//! Debian wants them; bash, zsh and fish completions), then
//! `cargo deb -p canary-userspace --no-build`. What goes where is
//! `[package.metadata.deb]` in canary-userspace/Cargo.toml; the unit is
//! canary-userspace/packaging/canaryd.service. `cargo xtask test` passes the
//! package's path to the tests in [`ENV`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::{probe, Cmd};

/// How the tests are told where the .deb is.
pub const ENV: &str = "CANARY_DEB";
/// The Debian package's name (`name` in `[package.metadata.deb]`).
pub const DEB_NAME: &str = "canary";
/// cargo-deb's default Debian revision.
const REVISION: &str = "1";

/// Where the generated man pages and completions go: cargo-deb maps asset
/// paths under `target/release/` to the real target directory.
pub fn generated_dir(root: &Path) -> PathBuf {
    crate::target_dir(root).join("release/package")
}

/// The Debian architecture of this host (`dpkg --print-architecture`),
/// else the Rust one mapped to Debian's name.
fn deb_arch() -> String {
    probe("dpkg", ["--print-architecture"], &[])
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| match std::env::consts::ARCH {
            "x86_64" => "amd64".into(),
            "aarch64" => "arm64".into(),
            other => other.into(),
        })
}

/// The .deb `cargo xtask package` writes (built or not):
/// `target/debian/canary_<version>-1_<arch>.deb`.
pub fn deb_path(root: &Path) -> PathBuf {
    crate::target_dir(root).join("debian").join(format!(
        "{DEB_NAME}_{}-{REVISION}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        deb_arch()
    ))
}

/// Man pages and completions from the freshly built release binaries into
/// [`generated_dir`] (emptied first: no page of a removed command lingers).
pub fn generate_assets(root: &Path) -> Result<()> {
    let release = crate::target_dir(root).join("release");
    let canaryd = release.join("canaryd");
    let canaryctl = release.join("canaryctl");
    let dir = generated_dir(root);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let man_s = man.to_str().context("target dir is not UTF-8")?;
    Cmd::new(&canaryd).args(["--man-page", man_s]).stdout()?;
    Cmd::new(&canaryctl).args(["man-pages", man_s]).stdout()?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    if !pages.iter().any(|p| p.ends_with("canaryd.8"))
        || !pages.iter().any(|p| p.ends_with("canaryctl.1"))
    {
        bail!("the man pages canaryd.8 and canaryctl.1 were not both written to {man_s}");
    }
    // Debian policy: man pages gzipped with maximum compression, no name
    // or time stamp in the header (-n) so that rebuilds are identical.
    Cmd::new("gzip")
        .args(["-9", "-n", "-f"])
        .args(&pages)
        .run()?;
    for (shell, file) in [
        ("bash", "canaryctl.bash"),
        ("zsh", "_canaryctl"),
        ("fish", "canaryctl.fish"),
    ] {
        let script = Cmd::new(&canaryctl).args(["completions", shell]).stdout()?;
        if script.is_empty() {
            bail!("`canaryctl completions {shell}` printed nothing");
        }
        std::fs::write(completions.join(file), script)?;
    }
    println!(
        "package: {} man pages and 3 completion scripts in {}",
        pages.len(),
        dir.display()
    );
    Ok(())
}

/// `cargo xtask package`: returns the .deb's path.
pub fn run(root: &Path) -> Result<PathBuf> {
    crate::setup::run(false)?;
    if crate::setup::find_cargo_deb().is_none() {
        bail!("cargo-deb not found after setup (PATH, ~/.cargo/bin): run `cargo xtask setup`");
    }
    crate::ebpf::build(root)?;
    crate::cargo(root)
        .args([
            "build",
            "--release",
            "-p",
            "canary-userspace",
            "--bin",
            "canaryd",
            "-p",
            "canaryctl",
            "--bin",
            "canaryctl",
        ])
        .run()?;
    generate_assets(root)?;
    let deb = deb_path(root);
    if let Some(dir) = deb.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // --no-build: the binaries above are the ones to package (cargo-deb
    // would build without xtask's eBPF step). Binaries are stripped by
    // cargo-deb; the release profile has no debug info to split off.
    crate::cargo(root)
        .args(["deb", "-p", "canary-userspace", "--no-build", "--output"])
        .arg(&deb)
        .run()?;
    if !deb.is_file() {
        bail!("cargo deb succeeded but {} is not there", deb.display());
    }
    let size = std::fs::metadata(&deb)?.len();
    println!(
        "package: {} ({:.1} MiB)",
        deb.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_file_name() {
        let p = deb_path(Path::new("/w"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("canary_{}-1_", env!("CARGO_PKG_VERSION"))),
            "{name}"
        );
        assert!(name.ends_with(".deb"), "{name}");
        assert!(p.parent().unwrap().ends_with("debian"), "{}", p.display());
    }

    #[test]
    fn generated_dir_is_under_release() {
        // cargo-deb resolves asset paths under target/release/ only.
        assert!(generated_dir(Path::new("/w")).ends_with("release/package"));
    }
}
