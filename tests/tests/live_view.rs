//! `canaryctl status --watch` against a live canaryd under real client
//! traffic, during a rollout: the live view in a terminal (tmux, 160x48,
//! read with `capture-pane`) and the plain and JSON lines through a pipe.

use anyhow::{bail, Context, Result};
use canary_tests::rollout::{config, topology, vip};
use canary_tests::{bin_path, daemon::stop_child, Load, LoadBounds, Topology};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A rollout that stays at its first step (10 %) for the whole test: the
/// step lasts five minutes and needs 100000 canary connections.
fn lab() -> Result<(Topology, canary_tests::Daemon)> {
    let topo = topology(0.0)?;
    let d = topo.spawn_canaryd(Some(&config(
        "      steps: [10, 50, 100]
      interval: 300s
      analysis:
        max_error_ratio: 0.5
        min_canary_connections: 100000
",
    )))?;
    topo.ctl(&["rollout", "start", "shop"])?;
    Ok((topo, d))
}

/// Steady client connections (bounded: 60 s, 200000 connections).
fn load(topo: &Topology) -> Load {
    Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            max_time: Duration::from_secs(60),
            max_connections: 200_000,
            ..Default::default()
        },
    )
}

/// Waits until canaryd's status has the load in its per-second figures
/// and the rollout's analysis has run.
fn wait_for_traffic(topo: &Topology) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let s = topo.service_status("shop")?;
        // Counted, and in canaryd's per-second figures and analysis.
        let sampled = s.observed_canary_share.is_some()
            && s.canary.new_flows_per_sec > 0.0
            && s.stable.new_flows_per_sec > 0.0;
        let judged = s
            .rollout
            .as_ref()
            .is_some_and(|r| r.required_canary_connections.is_some());
        if sampled && judged {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("no traffic through shop: {s:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tmux server of our own (`-L`), running `canaryctl status --watch`
/// on `socket` in a 160x48 window; killed on drop, whatever happened.
struct Tmux {
    socket: String,
    /// The server's socket (tmux leaves it behind).
    socket_path: Option<PathBuf>,
    /// Where the view's pid, its exit status and the terminal's settings
    /// after it are written.
    pid_file: PathBuf,
    status_file: PathBuf,
    stty_file: PathBuf,
}

impl Tmux {
    fn start(name: &str, canary_socket: &Path) -> Result<Tmux> {
        let tmp = |what: &str| std::env::temp_dir().join(format!("{name}.{what}"));
        let mut t = Tmux {
            socket: name.to_string(),
            socket_path: None,
            pid_file: tmp("pid"),
            status_file: tmp("status"),
            stty_file: tmp("stty"),
        };
        for f in [&t.pid_file, &t.status_file, &t.stty_file] {
            let _ = std::fs::remove_file(f);
        }
        // The window closes when the view ends (and the server with it).
        // `timeout` bounds the view should this test die without its drop
        // (`--foreground`: the view keeps the terminal's signals).
        let shell = format!(
            "timeout --foreground -k 5 120 sh -c 'echo $$ > {pid}; exec env CANARY_SOCKET={sock} {ctl} status --watch'; \
             echo $? > {status}; stty -a > {stty}",
            pid = t.pid_file.display(),
            sock = canary_socket.display(),
            ctl = bin_path("canaryctl")?.display(),
            status = t.status_file.display(),
            stty = t.stty_file.display()
        );
        let out = t
            .tmux()
            .args(["new-session", "-d", "-x", "160", "-y", "48", &shell])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = t
            .tmux()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        t.socket_path = (!path.is_empty()).then(|| PathBuf::from(path));
        Ok(t)
    }

    /// The view's pid, once it has started.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    fn capture(&self) -> Result<String> {
        let out = self.tmux().args(["capture-pane", "-p"]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "capture-pane: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn send(&self, keys: &str) -> Result<()> {
        let st = self.tmux().args(["send-keys", keys]).status()?;
        anyhow::ensure!(st.success(), "send-keys {keys}");
        Ok(())
    }

    /// Whether the session (the command in it) is still there.
    fn alive(&self) -> bool {
        self.tmux()
            .args(["has-session"])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Captures until `want` holds (at most `limit`); the last capture.
    fn wait_screen(&self, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let end = Instant::now() + limit;
        loop {
            let screen = self.capture()?;
            if want(&screen) {
                return Ok(screen);
            }
            if Instant::now() > end {
                bail!("after {limit:?} the pane still shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
        // The view ends with its terminal; should it not, it is killed (by
        // its pid, checked to be canaryctl still).
        if let Some(pid) = self.pid() {
            let end = Instant::now() + Duration::from_secs(3);
            while is_canaryctl(pid) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_canaryctl(pid) {
                eprintln!("live view {pid} outlived its terminal: killed");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for f in [&self.pid_file, &self.status_file, &self.stty_file] {
            let _ = std::fs::remove_file(f);
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether `pid` is a running canaryctl (not a zombie, not reused).
fn is_canaryctl(pid: i32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'));
    running && String::from_utf8_lossy(&cmd).contains("canaryctl")
}

/// The token after the first `key` token (in any line) that `ok` accepts.
fn after<'a>(screen: &'a str, key: &str, ok: impl Fn(&str) -> bool) -> Option<&'a str> {
    screen.lines().find_map(|line| {
        let toks: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|t| !t.is_empty())
            .collect();
        toks.windows(2)
            .find(|w| w[0] == key && ok(w[1]))
            .map(|w| w[1])
    })
}

fn pct(tok: &str) -> Option<f64> {
    tok.strip_suffix('%')?.parse().ok()
}

/// A version's row in the view: (new connections so far, per second).
fn version_row(screen: &str, version: &str) -> Option<(u64, f64)> {
    screen.lines().find_map(|line| {
        let toks: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|t| !t.is_empty())
            .collect();
        if toks.first() != Some(&version) || toks.get(1) != Some(&"new") {
            return None;
        }
        Some((
            toks.get(2)?.parse().ok()?,
            toks.get(3)?.strip_suffix("/s")?.parse().ok()?,
        ))
    })
}

/// What one capture shows: the weight, the observed share, the versions'
/// counters and rates.
#[derive(Debug)]
struct Shown {
    weight: f64,
    share: f64,
    stable: (u64, f64),
    canary: (u64, f64),
}

fn read_screen(screen: &str) -> Result<Shown> {
    let ctx = || format!("in\n{screen}");
    anyhow::ensure!(screen.contains(" shop  198.18.100.1:80/tcp"), "{}", ctx());
    anyhow::ensure!(
        screen.contains("RUNNING  step 1/3 at 10%"),
        "rollout progress: {}",
        ctx()
    );
    anyhow::ensure!(
        screen.contains("step time ") && screen.contains("/100000 canary conns"),
        "the step's time and sample: {}",
        ctx()
    );
    Ok(Shown {
        weight: after(screen, "weight", |t| pct(t).is_some())
            .and_then(pct)
            .with_context(|| format!("no weight {}", ctx()))?,
        share: after(screen, "share", |t| pct(t).is_some())
            .and_then(pct)
            .with_context(|| format!("no observed share {}", ctx()))?,
        stable: version_row(screen, "stable")
            .with_context(|| format!("no stable row {}", ctx()))?,
        canary: version_row(screen, "canary")
            .with_context(|| format!("no canary row {}", ctx()))?,
    })
}

/// The must-show: the live view in tmux under traffic shows the service,
/// its weight and observed share, the figures move between two captures,
/// a daemon that stops answering is said (and the view keeps trying until
/// it is back), and `q` ends it with the terminal restored.
#[test]
fn live_view_in_tmux_follows_the_traffic() -> Result<()> {
    let (topo, mut d) = lab()?;
    let mut load = load(&topo);
    wait_for_traffic(&topo)?;
    let tmux = Tmux::start(&format!("{}-tui", topo.instance()), &topo.socket())?;
    // Two polls in, so the rates come from the counters' change.
    let first = tmux.wait_screen(Duration::from_secs(10), |s| {
        read_screen(s).is_ok()
            && after(s, "last", |t| t.parse::<u32>().is_ok_and(|n| n >= 2)).is_some()
    })?;
    let ok_before = load.ok.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    let second = tmux.capture()?;
    let ok_after = load.ok.load(std::sync::atomic::Ordering::SeqCst);
    println!("first capture:\n{first}\nsecond capture, 3 s later:\n{second}");
    let (a, b) = (read_screen(&first)?, read_screen(&second)?);
    println!(
        "shown: {a:?} then {b:?}; the load made {} connections in between",
        ok_after - ok_before
    );
    for s in [&a, &b] {
        assert_eq!(s.weight, 10.0, "the rollout's first step");
        // The share of the last second, over the connections of about a
        // second (the rates shown): within 5 standard deviations of the
        // weight (plus rounding), the split being a hash of the address.
        let n = (s.stable.1 + s.canary.1).max(1.0);
        let bound = 5.0 * (0.1f64 * 0.9 / n).sqrt() * 100.0 + 0.1;
        assert!(n >= 20.0, "traffic flows: {s:?}");
        assert!(
            (s.share - 10.0).abs() <= bound,
            "share {}% vs weight 10% (±{bound:.1} at {n:.0} connections/s)",
            s.share
        );
    }
    assert!(
        b.stable.0 > a.stable.0 && b.canary.0 > a.canary.0,
        "counters moved: {a:?} {b:?}"
    );
    let moved = (b.stable.0 + b.canary.0) - (a.stable.0 + a.canary.0);
    // The view's counters follow the clients': polls 2 to 4 s apart, the
    // load's 3 s between the captures.
    assert!(
        moved as f64 >= (ok_after - ok_before) as f64 / 3.0,
        "the view counted {moved} new connections, the clients made {}",
        ok_after - ok_before
    );
    assert_ne!(first, second, "the screen changed");

    // canaryd goes away: said on screen, the last figures kept, the view
    // keeps asking; canaryd back: the figures again.
    load.stop();
    d.stop();
    let silent = tmux.wait_screen(Duration::from_secs(5), |s| {
        s.contains("canaryd not answering: ")
    })?;
    println!(
        "canaryd stopped:\n{}",
        silent.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    assert!(silent.contains(" shop  198.18.100.1:80/tcp"), "{silent}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        tmux.alive(),
        "the view exited when canaryd stopped answering"
    );
    let _d = canary_tests::Daemon::spawn(
        &topo,
        Some(&std::fs::read_to_string(d.config_path.as_ref().unwrap())?),
        &[],
    )?;
    // (No traffic now: no share in the last second.)
    let back = tmux.wait_screen(Duration::from_secs(5), |s| {
        !s.contains("canaryd not answering") && s.contains("RUNNING  step 1/3 at 10%")
    })?;
    assert!(back.contains("weight  10.00%"), "{back}");
    // The restarted canaryd's events reach the view (its numbers start
    // above the first one's, which the view had already passed).
    topo.ctl(&["reload"])?;
    tmux.wait_screen(Duration::from_secs(5), |s| s.contains("config reloaded by"))
        .context("the restarted canaryd's reload event is not on screen")?;

    // q: the command exits 0 with the terminal out of raw mode.
    tmux.send("q")?;
    let end = Instant::now() + Duration::from_secs(5);
    while tmux.alive() || !tmux.stty_file.exists() {
        anyhow::ensure!(Instant::now() < end, "still running 5 s after q");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(&tmux.status_file)?;
    assert_eq!(status.trim(), "0", "canaryctl's exit status");
    let stty = std::fs::read_to_string(&tmux.stty_file)?;
    let flags: Vec<&str> = stty.split_whitespace().collect();
    for f in ["icanon", "echo", "opost"] {
        assert!(flags.contains(&f), "terminal left without {f}: {stty}");
    }
    Ok(())
}

/// Runs `canaryctl args...` with stdout a pipe for `for_how_long`, then
/// kills it (it must still be running): its lines.
fn watch_lines(socket: &Path, args: &[&str], for_how_long: Duration) -> Result<Vec<String>> {
    let mut child = Command::new(bin_path("canaryctl")?)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + for_how_long;
    let mut lines = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let exited = child.try_wait()?;
    stop_child(&mut child);
    let _ = reader.join();
    if let Some(st) = exited {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("canaryctl {args:?} exited ({st}) within {for_how_long:?}: {err}\n{lines:#?}");
    }
    Ok(lines)
}

/// Not a terminal: a line per service per second, with the fields; JSON
/// objects with `--json`; a daemon that is not there is said each second.
#[test]
fn plain_and_json_lines_through_a_pipe() -> Result<()> {
    let (topo, _d) = lab()?;
    let _load = load(&topo);
    wait_for_traffic(&topo)?;

    let lines = watch_lines(
        &topo.socket(),
        &["status", "--watch"],
        Duration::from_millis(3300),
    )?;
    println!("{}", lines.join("\n"));
    assert!(lines.len() >= 2, "{lines:#?}");
    for l in &lines {
        let t: Vec<&str> = l.split(' ').collect();
        let ts = t[0];
        assert!(
            ts.len() == 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "timestamp: {l}"
        );
        assert_eq!(&t[1..4], ["shop", "weight", "10.00%"], "{l}");
        assert_eq!(
            (t[4], t[6], t[8], t[10], t[12]),
            ("share", "stable", "err", "canary", "err"),
            "{l}"
        );
        assert!(pct(t[5]).is_some(), "share: {l}");
        for rate in [t[7], t[11]] {
            let r: f64 = rate.strip_suffix("/s").context("rate")?.parse()?;
            assert!(r > 0.0, "traffic flows: {l}");
        }
        assert_eq!(&t[14..18], ["rollout", "running", "step", "1/3"], "{l}");
        assert!(l.contains(" s sample ") && l.ends_with("/100000"), "{l}");
    }

    let lines = watch_lines(
        &topo.socket(),
        &["--json", "status", "--watch", "shop"],
        Duration::from_millis(2300),
    )?;
    assert!(lines.len() >= 2, "{lines:#?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).with_context(|| l.clone())?;
        assert_eq!(v["service"], "shop", "{l}");
        assert_eq!(v["weight_percent"], 10.0, "{l}");
        assert!(
            v["canary"]["new_connections"].as_u64().unwrap_or(0) > 0,
            "{l}"
        );
        assert_eq!(v["rollout"]["step"], 1, "{l}");
        assert_eq!(v["rollout"]["required_canary_connections"], 100000, "{l}");
    }
    println!("{}", lines[0]);

    // No daemon on that socket: a line a second saying so, and it goes on.
    let gone = std::env::temp_dir().join(format!("{}-nobody.sock", topo.instance()));
    let lines = watch_lines(&gone, &["status", "--watch"], Duration::from_millis(2300))?;
    println!("{}", lines.join("\n"));
    assert!(lines.len() >= 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" canaryd not answering: no control socket at ")),
        "{lines:#?}"
    );
    Ok(())
}

/// A terminal that goes away (tmux killed, an ssh session dropped) ends the
/// view: it does not linger polling a daemon for nobody.
#[test]
fn a_closed_terminal_ends_the_view() -> Result<()> {
    let name = format!("cnry-{}-tui-hup", std::process::id());
    let nobody = std::env::temp_dir().join(format!("{name}.sock"));
    let tmux = Tmux::start(&name, &nobody)?;
    let screen = tmux.wait_screen(Duration::from_secs(5), |s| {
        s.contains("canaryd not answering: no control socket at")
    })?;
    assert!(screen.contains("retrying every second"), "{screen}");
    let pid = tmux.pid().context("no pid")?;
    assert!(is_canaryctl(pid));
    tmux.tmux().arg("kill-server").status()?;
    let end = Instant::now() + Duration::from_secs(3);
    while is_canaryctl(pid) {
        anyhow::ensure!(
            Instant::now() < end,
            "canaryctl {pid} still runs 3 s after its terminal went"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
