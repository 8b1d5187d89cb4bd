//! Running child commands: every command is printed before it runs, and a
//! failure names the command and its exit status.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Environment variables that `cargo run` (and rustup's proxies) set for
/// xtask, or that a developer may have set, and that must not leak into a
/// cargo build of a different toolchain or target.
pub const TOOLCHAIN_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO",
];

/// A child command with a printable form that matches what actually runs.
pub struct Cmd {
    inner: Command,
    removed: Vec<String>,
    envs: Vec<String>,
    argv: Vec<String>,
    cwd: Option<String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Cmd {
            inner: Command::new(program),
            removed: Vec::new(),
            envs: Vec::new(),
            argv: vec![quote(&program.to_string_lossy())],
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.argv.push(quote(&arg.to_string_lossy()));
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Sets a variable in the child's environment; shown as `KEY=value`.
    pub fn env(self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let shown = quote(&value.as_ref().to_string_lossy());
        self.env_shown(key, value, &shown)
    }

    /// Sets a variable but shows `shown` instead of the value (for `PATH`,
    /// whose full value is long and says little).
    pub fn env_shown(mut self, key: &str, value: impl AsRef<OsStr>, shown: &str) -> Self {
        self.inner.env(key, value);
        self.envs.push(format!("{key}={shown}"));
        self
    }

    /// Removes variables from the child's environment; shown as `env -u KEY`.
    pub fn env_remove_all(mut self, keys: &[&str]) -> Self {
        for k in keys {
            self.inner.env_remove(k);
            // Only what is actually set is worth showing.
            if std::env::var_os(k).is_some() {
                self.removed.push(format!("-u {k}"));
            }
        }
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.display().to_string());
        self.inner.current_dir(dir);
        self
    }

    pub fn stdin_null(mut self) -> Self {
        self.inner.stdin(Stdio::null());
        self
    }

    /// The command as a shell line in backticks, with its directory.
    pub fn display(&self) -> String {
        let mut words = Vec::new();
        if !self.removed.is_empty() {
            words.push("env".to_string());
            words.extend(self.removed.iter().cloned());
        }
        words.extend(self.envs.iter().cloned());
        words.extend(self.argv.iter().cloned());
        let line = words.join(" ");
        match &self.cwd {
            Some(dir) => format!("`{line}` (in {dir})"),
            None => format!("`{line}`"),
        }
    }

    fn announce(&self) {
        println!("xtask: running {}", self.display());
    }

    /// Runs the command with inherited stdout/stderr, and returns its exit
    /// status whatever it is. Only failing to start it is an error.
    pub fn status(mut self) -> Result<ExitStatus> {
        self.announce();
        let shown = self.display();
        self.inner
            .status()
            .with_context(|| format!("could not start {shown}"))
    }

    /// Runs the command with stdin closed and returns what it wrote to
    /// stdout; fails unless it exits with status 0, with its stderr.
    pub fn stdout(mut self) -> Result<Vec<u8>> {
        self.announce();
        let shown = self.display();
        let out = self
            .inner
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start {shown}"))?;
        if !out.status.success() {
            bail!(
                "{shown} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// Runs the command and fails unless it exits with status 0.
    pub fn run(self) -> Result<()> {
        let shown = self.display();
        let status = self.status()?;
        if !status.success() {
            bail!("{shown} failed: {status}");
        }
        Ok(())
    }
}

/// Runs a probe (a detection command) quietly with stdin closed and its
/// output captured. `None` if it could not be started at all.
pub fn probe<I, S>(program: impl AsRef<OsStr>, args: I, envs: &[(&str, &str)]) -> Option<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().ok()
}

/// Quotes an argument for display if a shell would need it.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@' | '$')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_env_first_and_quotes() {
        let c = Cmd::new("cargo")
            .arg("build")
            .arg("a b")
            .env("RUSTC_BOOTSTRAP", "1")
            .env_shown("PATH", "/usr/bin", "/usr/bin:$PATH");
        assert_eq!(
            c.display(),
            "`RUSTC_BOOTSTRAP=1 PATH=/usr/bin:$PATH cargo build 'a b'`"
        );
    }

    #[test]
    fn quote_leaves_plain_words() {
        assert_eq!(quote("--test-threads=2"), "--test-threads=2");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
