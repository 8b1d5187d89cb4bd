//! canaryd as a child process of a test, in a load-balancer namespace: the
//! single-host topology's LB or one host of a fleet (`Host`).

use crate::netns::Netns;
use crate::topology::{bin_path, Topology};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Where a canaryd runs: its namespace and what keeps one canaryd's state
/// apart from another's on the same machine (the instance names the pins,
/// then the control socket and the state dir). Names carry `cnry-<pid>-`
/// so `cleanup::leftovers` recognises them.
pub trait Host {
    fn netns(&self) -> &Netns;
    fn instance(&self) -> &str;
    fn socket(&self) -> PathBuf;
    fn state_dir(&self) -> PathBuf;
}

/// The single-host topology's LB.
impl Host for Topology {
    fn netns(&self) -> &Netns {
        &self.lb
    }
    fn instance(&self) -> &str {
        &self.id
    }
    fn socket(&self) -> PathBuf {
        Topology::socket(self)
    }
    fn state_dir(&self) -> PathBuf {
        Topology::state_dir(self)
    }
}

/// `program`, run as root or as the numeric `as_uid` (and gid) through
/// setpriv.
fn as_user(program: &std::ffi::OsStr, as_uid: Option<u32>) -> Command {
    match as_uid {
        Some(uid) => {
            let id = uid.to_string();
            let mut c = Command::new("setpriv");
            c.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `canaryctl --socket <host's> args...` (as root, or as the numeric
/// `as_uid` (and gid) through setpriv) and returns its output whatever the
/// exit status.
pub fn canaryctl(host: &impl Host, args: &[&str], as_uid: Option<u32>) -> Result<Output> {
    let mut cmd = as_user(bin_path("canaryctl")?.as_os_str(), as_uid);
    cmd.arg("--socket").arg(host.socket()).args(args);
    Ok(cmd.stdin(Stdio::null()).output()?)
}

/// One request with curl on a control socket (as root, or as the numeric
/// `as_uid` through setpriv): its status and body.
/// `headers` replace curl's defaults (`content-type:` alone removes it).
pub fn curl(
    socket: &Path,
    as_uid: Option<u32>,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut cmd = as_user("curl".as_ref(), as_uid);
    cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(socket)
        .args(["-X", method]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(body) = body {
        cmd.args(["--data-raw", body]);
    }
    let out = cmd.arg(format!("http://canaryd{path}")).output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// `canaryctl args...` as root: its stdout, or an error carrying its
/// stderr when it fails.
pub fn ctl(host: &impl Host, args: &[&str]) -> Result<String> {
    let out = canaryctl(host, args, None)?;
    anyhow::ensure!(
        out.status.success(),
        "canaryctl {args:?} ({}): {}",
        host.instance(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// canaryd's arguments that place it on `host`.
fn place(cmd: &mut Command, host: &impl Host) {
    cmd.args(["--instance", host.instance(), "--stats-interval", "0"])
        .arg("--control-socket")
        .arg(host.socket())
        .arg("--state-dir")
        .arg(host.state_dir());
}

/// How `Daemon::launch` starts canaryd, beyond its place in the host.
#[derive(Default)]
pub struct Launch<'a> {
    /// Another canaryd binary than the one built (an unpacked package's).
    pub bin: Option<&'a Path>,
    /// A command canaryd runs under, program first (`setpriv ...`).
    pub wrapper: &'a [String],
    /// More arguments for canaryd.
    pub extra: &'a [&'a str],
    /// More environment (`NOTIFY_SOCKET`).
    pub env: &'a [(&'a str, &'a std::ffi::OsStr)],
    /// Return once started, without waiting for `canaryd ready` (a start
    /// that may fail, readiness read elsewhere).
    pub no_wait: bool,
}

pub struct Daemon {
    child: Option<Child>,
    lines: Receiver<String>,
    pub config_path: Option<PathBuf>,
    pub log_path: PathBuf,
}

/// SIGTERM by pid, up to 3 s, then SIGKILL; always reaped.
pub fn stop_child(child: &mut Child) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Daemon {
    /// `extra` args go to canaryd (e.g. `--on-exit teardown`).
    pub fn spawn(host: &impl Host, config_yaml: Option<&str>, extra: &[&str]) -> Result<Daemon> {
        Self::launch(
            host,
            config_yaml,
            Launch {
                extra,
                ..Launch::default()
            },
        )
    }

    /// `spawn` with another canaryd binary (the upgrade test's previous
    /// layout's).
    pub fn spawn_bin(
        host: &impl Host,
        bin: &Path,
        config_yaml: Option<&str>,
        extra: &[&str],
    ) -> Result<Daemon> {
        Self::launch(
            host,
            config_yaml,
            Launch {
                bin: Some(bin),
                extra,
                ..Launch::default()
            },
        )
    }

    /// canaryd placed in `host` as `spawn` does, started as `how` says.
    pub fn launch(host: &impl Host, config_yaml: Option<&str>, how: Launch) -> Result<Daemon> {
        // Per-spawn file names: a restarted daemon's files must not be the
        // ones its predecessor's Drop removes.
        static SPAWNS: AtomicU32 = AtomicU32::new(0);
        let n = SPAWNS.fetch_add(1, Ordering::SeqCst);
        let config_path = match config_yaml {
            Some(y) => {
                let p = std::env::temp_dir().join(format!("{}-canaryd-{n}.yaml", host.instance()));
                std::fs::write(&p, y)?;
                Some(p)
            }
            None => None,
        };
        let log_path = std::env::temp_dir().join(format!("{}-canaryd-{n}.log", host.instance()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let bin = match how.bin {
            Some(b) => b.to_path_buf(),
            None => bin_path("canaryd")?,
        };
        let mut cmd = match how.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = host.netns().command(first);
                c.args(rest).arg(&bin);
                c
            }
            None => host.netns().command(bin.to_str().context("canaryd path")?),
        };
        place(&mut cmd, host);
        cmd.args(how.extra);
        if let Some(p) = &config_path {
            cmd.arg("--config").arg(p);
        }
        for (k, v) in how.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting canaryd")?;
        let (tx, rx) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child: Some(child),
            lines: rx,
            config_path,
            log_path,
        };
        if !how.no_wait {
            d.wait_for(|l| l == "canaryd ready", Duration::from_secs(20))
                .with_context(|| format!("canaryd did not become ready; its log:\n{}", d.log()))?;
        }
        Ok(d)
    }

    /// Runs canaryd as `spawn` does, for a start that must fail: waits up to
    /// `timeout` for it to exit (then kills it) and returns its exit status
    /// and everything it wrote to stderr.
    pub fn run_to_exit(
        host: &impl Host,
        config_yaml: &str,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        Self::run_to_exit_bin(host, &bin_path("canaryd")?, config_yaml, timeout)
    }

    /// `run_to_exit` with another canaryd binary.
    pub fn run_to_exit_bin(
        host: &impl Host,
        bin: &Path,
        config_yaml: &str,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        let tmp = |suffix: &str| {
            std::env::temp_dir().join(format!("{}-canaryd-exit.{suffix}", host.instance()))
        };
        let config_path = tmp("yaml");
        std::fs::write(&config_path, config_yaml)?;
        let err_path = tmp("err");
        let err = std::fs::File::create(&err_path)?;
        let mut cmd = host.netns().command(bin.to_str().unwrap());
        place(&mut cmd, host);
        let mut child = cmd
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .context("starting canaryd")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                break stop_child(&mut child).context("canaryd could not be reaped")?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        let _ = std::fs::remove_file(&config_path);
        Ok((status, stderr))
    }

    fn wait_for(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Ok(l),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => bail!("timed out"),
                Err(RecvTimeoutError::Disconnected) => bail!("canaryd exited"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Writes a new config file and sends SIGHUP: Ok(Ok) applied,
    /// Ok(Err(reason)) refused.
    pub fn reload(&mut self, yaml: &str) -> Result<std::result::Result<(), String>> {
        let path = self
            .config_path
            .clone()
            .context("canaryd runs without a config file")?;
        std::fs::write(&path, yaml)?;
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        let line = self.wait_for(
            |l| l == "canaryd applied config" || l.starts_with("canaryd reload rejected"),
            Duration::from_secs(10),
        )?;
        Ok(match line.strip_prefix("canaryd reload rejected: ") {
            Some(reason) => Err(reason.to_string()),
            None => Ok(()),
        })
    }

    /// Sends `sig` to canaryd.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)?;
        Ok(())
    }

    /// Waits up to `timeout` for canaryd to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("canaryd is not running")?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("canaryd did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(stop_child).inspect(|_| {
            self.child = None;
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            stop_child(c);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- canaryd log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
        if let Some(p) = &self.config_path {
            let _ = std::fs::remove_file(p);
        }
    }
}
