//! canaryd as the packaged systemd unit runs it, in the netns topology:
//!
//! - `readiness_reload_and_stop_are_notified`: canaryd started with
//!   NOTIFY_SOCKET pointing at a datagram socket the test binds (what
//!   systemd does for `Type=notify`). READY=1 is its first message and, the
//!   moment it arrives, the XDP program is attached and a connection through
//!   the VIP is forwarded; SIGHUP gives RELOADING=1 (with MONOTONIC_USEC)
//!   then READY=1, for an applied and for a rejected file alike; SIGTERM
//!   gives STOPPING=1, canaryd exits 0 and (--on-exit keep) the data plane
//!   still forwards, open and new connections.
//! - `runs_under_the_units_capability_bounding_set`: the packaged canaryd
//!   (CANARY_DEB, from `cargo xtask package`) as root under exactly the
//!   unit's CapabilityBoundingSet (parsed from the packaged unit; setpriv
//!   drops the rest from the bounding set, so its effective set is that):
//!   it attaches, forwards a real TCP connection, and a restart under the
//!   same set takes over the kept data plane with that connection still
//!   open. Then each capability of the set is shown needed: without it a
//!   restart fails (and the kept data plane goes on forwarding).
//!
//! Needs root. Run: `cargo test -p canary-tests --test service -- --nocapture`
//! (the second test also needs CANARY_DEB).

use anyhow::{bail, ensure, Context, Result};
use canary_tests::daemon::{Daemon, Launch};
use canary_tests::{bin_path, client_v4, tcp_connect, Conn, LbConfig, Service, Topology, VIP_V4};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(3);

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(Service::tcp("shop", VIP_V4, 80).weight(weight).lab_pools())
        .yaml()
}

/// The service manager's end of NOTIFY_SOCKET: a bound datagram socket.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(id: &str) -> Result<Notify> {
        let path = std::env::temp_dir().join(format!("{id}-notify.sock"));
        let _ = std::fs::remove_file(&path);
        let sock =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(Notify { sock, path })
    }

    /// The next message's `KEY=value` lines, or None after `timeout`.
    fn next(&self, timeout: Duration) -> Result<Option<Vec<String>>> {
        self.sock.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Ok(Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(String::from)
                    .collect(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next message; an error naming `what` if none comes in `timeout`.
    fn expect(&self, what: &str, timeout: Duration) -> Result<Vec<String>> {
        self.next(timeout)?
            .with_context(|| format!("no sd_notify message within {timeout:?} ({what})"))
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn has(msg: &[String], line: &str) -> bool {
    msg.iter().any(|l| l == line)
}

fn value<'a>(msg: &'a [String], key: &str) -> Option<&'a str> {
    msg.iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// canaryd in the topology's LB namespace (the harness's placement),
/// `bin` under `wrapper`, with NOTIFY_SOCKET and `--on-exit keep`; its
/// readiness is read from `notify`, not waited for.
fn launch(topo: &Topology, bin: &Path, wrapper: &[String], notify: &Notify) -> Result<Daemon> {
    Daemon::launch(
        topo,
        Some(&config(0.0)),
        Launch {
            bin: Some(bin),
            wrapper,
            extra: &["--on-exit", "keep"],
            env: &[("NOTIFY_SOCKET", notify.path.as_os_str())],
            no_wait: true,
        },
    )
}

/// The XDP program id on the LB's client-facing interface, if any.
fn xdp_prog(topo: &Topology) -> Result<Option<u32>> {
    let out = topo.lb.ip(&["-d", "link", "show", "lb-client"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|id| id.parse().ok()))
}

fn connect(topo: &Topology, i: u32) -> Result<Conn> {
    let c = topo
        .client
        .run(|| tcp_connect(client_v4(i), vip(), TIMEOUT))?;
    ensure!(
        c.backend == "b1" || c.backend == "b2",
        "weight 0 but connection {i} on {}",
        c.backend
    );
    Ok(c)
}

#[test]
fn readiness_reload_and_stop_are_notified() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let notify = Notify::bind(&topo.id)?;
    ensure!(
        xdp_prog(&topo)?.is_none(),
        "lb-client has XDP before canaryd"
    );
    let started = Instant::now();
    let mut d = launch(&topo, &bin_path("canaryd")?, &[], &notify)?;
    let conf = d.config_path.clone().context("a config file")?;

    // READY=1 is the first message, and the data plane is up when it comes.
    let ready = notify.expect("READY=1 after the start", Duration::from_secs(20))?;
    let prog = xdp_prog(&topo)?;
    let took = started.elapsed();
    ensure!(has(&ready, "READY=1"), "first message: {ready:?}");
    let prog = prog
        .with_context(|| format!("READY=1 but no XDP program on lb-client; log:\n{}", d.log()))?;
    ensure!(
        topo.pin_dir().join("links/lb-client").exists(),
        "READY=1 but the link is not pinned"
    );
    let status = value(&ready, "STATUS").unwrap_or_default();
    ensure!(status.contains("lb-client"), "STATUS: {status:?}");
    let mut before = connect(&topo, 1)?;
    before.ping("after ready")?;
    println!(
        "service: READY=1 {took:?} after the start, XDP prog {prog} attached; STATUS={status}"
    );

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1.
    for (what, yaml, want) in [
        ("applied", config(0.0), "reloaded the config"),
        ("rejected", config(150.0), "reload rejected"),
    ] {
        std::fs::write(&conf, yaml)?;
        let now_us = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let now_us = now_us.tv_sec() as i128 * 1_000_000 + now_us.tv_nsec() as i128 / 1000;
        d.signal(nix::sys::signal::Signal::SIGHUP)?;
        let reloading = notify.expect("RELOADING=1 after SIGHUP", Duration::from_secs(5))?;
        ensure!(
            has(&reloading, "RELOADING=1"),
            "{what}: after SIGHUP: {reloading:?}"
        );
        let stamp: i128 = value(&reloading, "MONOTONIC_USEC")
            .context("RELOADING=1 without MONOTONIC_USEC")?
            .parse()?;
        ensure!(
            stamp >= now_us && stamp < now_us + 5_000_000,
            "{what}: MONOTONIC_USEC={stamp}, the test's clock before the signal {now_us}"
        );
        let again = notify.expect("READY=1 after the reload", Duration::from_secs(10))?;
        ensure!(
            has(&again, "READY=1"),
            "{what}: after RELOADING=1: {again:?}"
        );
        let status = value(&again, "STATUS").unwrap_or_default();
        ensure!(status.contains(want), "{what}: STATUS={status:?}");
        println!("service: SIGHUP ({what}): RELOADING=1 then READY=1, STATUS={status}");
    }
    before.ping("after the reloads")?;

    // SIGTERM: STOPPING=1, exit 0, and the data plane forwards on.
    d.signal(nix::sys::signal::Signal::SIGTERM)?;
    let stopping = notify.expect("STOPPING=1 after SIGTERM", Duration::from_secs(5))?;
    ensure!(has(&stopping, "STOPPING=1"), "after SIGTERM: {stopping:?}");
    let st = d.wait_exit(Duration::from_secs(10))?;
    ensure!(st.success(), "canaryd exited {st}; log:\n{}", d.log());
    ensure!(
        notify.next(Duration::from_millis(200))?.is_none(),
        "a message after STOPPING=1"
    );
    ensure!(
        xdp_prog(&topo)? == Some(prog),
        "the XDP program changed or went at exit"
    );
    before.ping("after canaryd exited")?;
    let mut after = connect(&topo, 2)?;
    after.ping("new, with no canaryd")?;
    println!("service: STOPPING=1, exit 0; an open and a new connection forwarded without canaryd");
    Ok(())
}

/// The unpacked .deb of CANARY_DEB (removed on drop).
struct Unpacked(PathBuf);

impl Unpacked {
    fn new(id: &str) -> Result<Unpacked> {
        let hint = "build it with `cargo xtask package` (`cargo xtask test` does, and passes \
                    its path in CANARY_DEB)";
        let deb = std::env::var_os("CANARY_DEB")
            .map(PathBuf::from)
            .with_context(|| format!("CANARY_DEB is not set; {hint}"))?;
        ensure!(
            deb.is_file(),
            "CANARY_DEB={} does not exist; {hint}",
            deb.display()
        );
        let dir = std::env::temp_dir().join(format!("{id}-deb"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let u = Unpacked(dir);
        let out = Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(&u.0)
            .output()?;
        ensure!(
            out.status.success(),
            "dpkg -x: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(u)
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CapabilityBoundingSet= of a unit's [Service] section.
fn bounding_set(unit: &str) -> Result<Vec<String>> {
    let mut section = "";
    let mut found = None;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some(v) = line.strip_prefix("CapabilityBoundingSet=") {
                ensure!(found.is_none(), "CapabilityBoundingSet= twice");
                found = Some(v.split_whitespace().map(String::from).collect());
            }
        }
    }
    found.context("the unit has no CapabilityBoundingSet=")
}

/// The bit of a capability in /proc/PID/status masks.
fn cap_bit(name: &str) -> Result<u32> {
    Ok(match name {
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => bail!("capability {other} is not one this test knows"),
    })
}

/// `setpriv` arguments that leave only `caps` in the bounding set (and so,
/// for root, in the permitted and effective sets), as systemd does for
/// CapabilityBoundingSet= with User= root.
fn setpriv(caps: &[String]) -> Vec<String> {
    let mut set = String::from("-all");
    for c in caps {
        set.push_str(&format!(
            ",+{}",
            c.trim_start_matches("CAP_").to_lowercase()
        ));
    }
    [
        "setpriv",
        "--bounding-set",
        &set,
        "--inh-caps",
        "-all",
        "--ambient-caps",
        "-all",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

fn cap_mask(status: &str, key: &str) -> Result<u64> {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("no {key} in /proc/PID/status"))?;
    Ok(u64::from_str_radix(v.trim(), 16)?)
}

#[test]
fn runs_under_the_units_capability_bounding_set() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let pkg = Unpacked::new(&topo.id)?;
    let unit = std::fs::read_to_string(pkg.0.join("usr/lib/systemd/system/canaryd.service"))?;
    let caps = bounding_set(&unit)?;
    let mut want = 0u64;
    for c in &caps {
        want |= 1 << cap_bit(c)?;
    }
    let bin = pkg.0.join("usr/sbin/canaryd");
    let notify = Notify::bind(&topo.id)?;
    let wrapper = setpriv(&caps);
    println!("service: the unit's CapabilityBoundingSet: {caps:?} (mask {want:#x})");

    let start = |n: u32, wrapper: &[String]| -> Result<Daemon> {
        let d = launch(&topo, &bin, wrapper, &notify)?;
        let ready = notify.expect("READY=1", Duration::from_secs(20));
        match ready {
            Ok(m) if has(&m, "READY=1") => Ok(d),
            other => bail!("start {n}: {other:?}; log:\n{}", d.log()),
        }
    };
    let check_caps = |d: &Daemon| -> Result<()> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))?;
        ensure!(
            status.starts_with("Name:\tcanaryd"),
            "pid {} is not canaryd",
            d.pid()
        );
        for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let got = cap_mask(&status, key)?;
            ensure!(got == want, "{key} {got:#x}, the unit's set is {want:#x}");
        }
        Ok(())
    };

    // A fresh start: attach and forward.
    let mut d = start(0, &wrapper)?;
    check_caps(&d)?;
    let prog = xdp_prog(&topo)?.context("no XDP program after READY=1")?;
    ensure!(
        d.log().contains("attached to lb-client"),
        "log:\n{}",
        d.log()
    );
    let mut conn = connect(&topo, 1)?;
    conn.ping("fresh")?;

    // Stop (the data plane stays), then a restart under the same set takes
    // it over: the open connection carries on.
    d.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(
        d.wait_exit(Duration::from_secs(10))?.success(),
        "log:\n{}",
        d.log()
    );
    while notify.next(Duration::from_millis(100))?.is_some() {}
    conn.ping("between")?;
    let mut d = start(1, &wrapper)?;
    check_caps(&d)?;
    let log = d.log();
    ensure!(
        log.contains("adopting the pinned data plane")
            && log.contains("took over the XDP link on lb-client"),
        "the restart did not take over the kept data plane; log:\n{log}"
    );
    let prog2 = xdp_prog(&topo)?.context("no XDP program after the restart")?;
    conn.ping("after the restart")?;
    connect(&topo, 2)?.ping("new after the restart")?;
    println!(
        "service: under {caps:?}: attached (prog {prog}), forwarded, restarted and took over \
         (prog {prog2}) with the connection open"
    );

    // A removed link pin is pinned again under the same set (from the fd
    // canaryd holds: opening a link by id would need CAP_SYS_ADMIN), so the
    // next restart still takes the data plane over.
    let link_pin = topo.pin_dir().join("links/lb-client");
    std::fs::remove_file(&link_pin)?;
    let end = Instant::now() + Duration::from_secs(5);
    while !(link_pin.exists() && d.log().contains("pinned again")) {
        ensure!(
            Instant::now() < end,
            "the link pin was not restored under {caps:?}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(d.wait_exit(Duration::from_secs(10))?.success());
    while notify.next(Duration::from_millis(100))?.is_some() {}
    conn.ping("after the restored pin's canaryd stopped")?;
    let mut d = start(2, &wrapper)?;
    ensure!(
        d.log().contains("took over the XDP link on lb-client"),
        "no take-over after the pin was restored; log:\n{}",
        d.log()
    );
    conn.ping("after the restart over the restored pin")?;
    println!(
        "service: a removed link pin was pinned again under {caps:?}; the next restart took over"
    );
    d.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(d.wait_exit(Duration::from_secs(10))?.success());
    while notify.next(Duration::from_millis(100))?.is_some() {}

    // Each capability of the set is needed: without it the restart fails,
    // and the kept data plane forwards on.
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        let mut d = launch(&topo, &bin, &setpriv(&fewer), &notify)?;
        let st = d.wait_exit(Duration::from_secs(20))?;
        let msg = notify.next(Duration::from_millis(100))?;
        ensure!(
            !st.success() && msg.as_ref().is_none_or(|m| !has(m, "READY=1")),
            "canaryd started without {drop} ({st}, {msg:?}); log:\n{}",
            d.log()
        );
        let why = d.log().lines().last().unwrap_or_default().to_string();
        conn.ping(&format!("after a start without {drop}"))?;
        println!(
            "service: without {drop}: exit {st}: {}",
            why.chars().take(160).collect::<String>()
        );
    }
    Ok(())
}
