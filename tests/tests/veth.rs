//! canaryd's veth checks at attach (README: "Running on veth and in
//! containers"): in a lab whose veths keep the kernel's default offloads
//! (TX checksum offload on, GRO off) every forwarded connection fails, and
//! canaryd says why, naming the interface, the peer, its namespace and the
//! exact command; with `fix_veth_offloads: true` it repairs the peers
//! itself and the connections work; in the usual lab it says nothing.

use anyhow::{Context, Result};
use canary_tests::{client_v4, tcp_connect, LbConfig, Netns, Service, Topology, VIP_V4};
use canary_userspace::control::api::Status;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn config(fix: bool, backend_interfaces: &[&str]) -> String {
    let yaml = LbConfig::lab()
        .backend_interfaces(backend_interfaces)
        .service(Service::tcp("shop", VIP_V4, 80).weight(10.0).lab_pools())
        .yaml();
    if fix {
        format!("fix_veth_offloads: true\n{yaml}")
    } else {
        yaml
    }
}

const ALL_BACKENDS: [&str; 3] = ["lb-b1", "lb-b2", "lb-b3"];

/// `n` connections to the VIP (connect, banner, one echo) from distinct
/// client addresses starting at `client_v4(first)`, 25 at a time, each
/// bounded by `timeout`: how many worked, and the first error.
fn attempt(topo: &Topology, first: u32, n: u32, timeout: Duration) -> (u32, Option<String>) {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let next = AtomicU32::new(0);
    let ok = AtomicU32::new(0);
    let first_error = Mutex::new(None);
    topo.client.run(|| {
        std::thread::scope(|s| {
            for _ in 0..25 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let one = tcp_connect(client_v4(first + i), vip, timeout)
                        .and_then(|mut c| c.ping("hello"));
                    match one {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(format!("{e:#}"));
                        }
                    }
                });
            }
        })
    });
    (ok.into_inner(), first_error.into_inner().unwrap())
}

fn status(topo: &Topology) -> Result<Status> {
    Ok(serde_json::from_str(&topo.ctl(&["--json", "status"])?)?)
}

/// (TX checksum offload, GRO) of `ifname` in `ns`, read with ethtool: a
/// witness independent of canaryd's ioctls.
fn offloads(ns: &Netns, ifname: &str) -> Result<(bool, bool)> {
    let out = ns.exec(&["ethtool", "-k", ifname])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let on = |key: &str| -> Result<bool> {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in ethtool -k {ifname}"))?;
        Ok(line.contains(": on"))
    };
    Ok((on("tx-checksumming:")?, on("generic-receive-offload:")?))
}

/// Waits (up to 10 s, polling the status) until `iface` is listed with
/// `problems` problems: the checks a reload asks for run after it, on
/// canaryd's checking thread, which logs what it finds before it publishes
/// it.
fn wait_listed(topo: &Topology, iface: &str, problems: usize) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(topo)?;
        let listed = s.interfaces.iter().find(|i| i.name == iface);
        if listed.is_some_and(|i| i.problems.len() == problems) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < end,
            "{iface} not listed with {problems} problems: {:?}",
            s.interfaces
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The LB's veths and their peers' namespaces.
fn pairs(topo: &Topology) -> Vec<(&'static str, String)> {
    let mut v = vec![("lb-client", topo.client.name.clone())];
    for (i, b) in topo.backends.iter().enumerate() {
        v.push((ALL_BACKENDS[i], b.ns.name.clone()));
    }
    v
}

/// The commands canaryd's warnings give (the text between "Fix: `" and
/// the next backquote).
fn fix_commands(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once("Fix: `")?.1;
            Some(rest.split_once('`')?.0.to_string())
        })
        .collect()
}

/// (a) Default offloads, fix off: one warning per problem per interface,
/// naming it, its peer, the peer's namespace and the exact command; status
/// and `canaryctl status` carry them; the connections fail. Then the
/// commands from the log, run as printed, make the problems leave the status
/// at the next re-check and the connections work: the commands are exact.
#[test]
fn default_offloads_are_named_with_the_exact_fix_and_connections_fail() -> Result<()> {
    let mut topo = Topology::builder(3).default_offloads().build()?;
    topo.start_servers(80)?;
    let d = topo.spawn_canaryd(Some(&config(false, &ALL_BACKENDS)))?;
    let log = d.log();
    for (iface, ns) in pairs(&topo) {
        for (problem, setting) in [
            ("has TX checksum offload on", "tx off"),
            ("has GRO off and no XDP program", "gro on"),
        ] {
            let head = format!("{iface}: its veth peer eth0 in namespace {ns} {problem}");
            let cmd = format!("Fix: `ip netns exec {ns} ethtool -K eth0 {setting}`");
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&head) && l.contains(&cmd))
                .collect();
            assert_eq!(
                lines.len(),
                1,
                "one warning {head:?} with {cmd:?}; the log:\n{log}"
            );
            assert!(lines[0].contains("WARN"), "{}", lines[0]);
        }
    }
    assert!(
        !log.contains("fix_veth_offloads: eth0"),
        "nothing is changed without the key:\n{log}"
    );
    // canaryd changed nothing: the peers keep the defaults.
    assert_eq!(offloads(&topo.client, "eth0")?, (true, false));
    for b in &topo.backends {
        assert_eq!(offloads(&b.ns, "eth0")?, (true, false));
    }

    let s = status(&topo)?;
    assert_eq!(s.interfaces.len(), 4, "{:?}", s.interfaces);
    for i in &s.interfaces {
        assert_eq!(i.problems.len(), 2, "{i:?}");
    }
    let human = topo.ctl(&["status"])?;
    let want = format!(
        "interface lb-client (peer eth0 in namespace {}): TX checksum offload on; fix: `ip netns exec {} ethtool -K eth0 tx off`",
        topo.client.name, topo.client.name
    );
    assert!(human.contains(&want), "{want:?} not in:\n{human}");

    let t = Instant::now();
    let (ok, err) = attempt(&topo, 0, 100, Duration::from_secs(2));
    println!(
        "default veth offloads: {ok} of 100 connections worked ({} failed, {:.1} s; first error: {})",
        100 - ok,
        t.elapsed().as_secs_f64(),
        err.as_deref().unwrap_or("-")
    );
    assert!(100 - ok > 90, "more than 90 of 100 must fail: {ok} worked");

    // The commands exactly as printed.
    let cmds = fix_commands(&log);
    assert_eq!(cmds.len(), 8, "{cmds:?}");
    for c in &cmds {
        let out = std::process::Command::new("sh").args(["-c", c]).output()?;
        assert!(out.status.success(), "{c}: {out:?}");
    }
    let ran = Instant::now();
    let end = ran + Duration::from_secs(20);
    let cleared = loop {
        let s = status(&topo)?;
        if s.interfaces.iter().all(|i| i.problems.is_empty()) {
            break ran.elapsed();
        }
        assert!(
            Instant::now() < end,
            "problems still listed: {:?}",
            s.interfaces
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let log = d.log();
    assert!(
        log.contains("lb-client: its veth peer eth0 in namespace")
            && log.contains("(the earlier warning no longer applies)"),
        "{log}"
    );
    let (ok, err) = attempt(&topo, 200, 200, Duration::from_secs(3));
    println!(
        "after the printed commands: status clear {:.1} s after they ran (re-check every 10 s); {ok} of 200 connections worked (first error: {})",
        cleared.as_secs_f64(),
        err.as_deref().unwrap_or("-")
    );
    assert_eq!(ok, 200, "first error: {err:?}");
    Ok(())
}

/// (b) The same lab with `fix_veth_offloads: true`: canaryd logs what it
/// changed on each peer, ethtool sees it, nothing is left to warn about,
/// and every connection works.
#[test]
fn fix_veth_offloads_repairs_the_peers_and_connections_work() -> Result<()> {
    let mut topo = Topology::builder(3).default_offloads().build()?;
    topo.start_servers(80)?;
    let d = topo.spawn_canaryd(Some(&config(true, &ALL_BACKENDS)))?;
    let log = d.log();
    for (iface, ns) in pairs(&topo) {
        for change in ["TX checksum offload off (was on)", "GRO on (was off)"] {
            let line = format!(
                "fix_veth_offloads: eth0 in namespace {ns}, the veth peer of {iface}: {change}"
            );
            assert_eq!(
                log.matches(&line).count(),
                1,
                "{line:?} once; the log:\n{log}"
            );
        }
    }
    assert!(!log.contains("its veth peer"), "no warning left:\n{log}");
    assert_eq!(offloads(&topo.client, "eth0")?, (false, true));
    for b in &topo.backends {
        assert_eq!(offloads(&b.ns, "eth0")?, (false, true));
    }
    // The key applies to the named interfaces' peers only: the LB's own
    // side keeps its defaults.
    assert_eq!(offloads(&topo.lb, "lb-client")?, (true, false));
    let s = status(&topo)?;
    assert_eq!(s.interfaces.len(), 4);
    assert!(
        s.interfaces.iter().all(|i| i.problems.is_empty()),
        "{:?}",
        s.interfaces
    );

    let t = Instant::now();
    let (ok, err) = attempt(&topo, 0, 200, Duration::from_secs(3));
    println!(
        "fix_veth_offloads: {ok} of 200 connections worked in {:.2} s (first error: {})",
        t.elapsed().as_secs_f64(),
        err.as_deref().unwrap_or("-")
    );
    assert_eq!(ok, 200, "first error: {err:?}");
    Ok(())
}

/// (c) The usual lab (offloads set as forwarding needs): no warning, and
/// the status lists the veths as ready; a non-veth interface is neither
/// warned about nor listed. A reload that attaches a veth whose peer has the
/// defaults warns about that one only; turning `fix_veth_offloads` on by a
/// reload repairs it.
#[test]
fn the_usual_lab_gets_no_warning_and_a_reload_checks_what_it_attaches() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    // A bridge with no ports: a non-veth interface to attach to.
    topo.lb.ip(&["link", "add", "cnry-br", "type", "bridge"])?;
    topo.lb.ip(&["link", "set", "cnry-br", "up"])?;
    let mut d = topo.spawn_canaryd(Some(&config(false, &["lb-b1", "lb-b2", "cnry-br"])))?;
    let log = d.log();
    assert!(log.contains("attached to cnry-br"), "{log}");
    assert!(
        !log.contains("veth peer"),
        "no warning in the usual lab:\n{log}"
    );
    assert!(
        !log.contains("cnry-br:"),
        "nothing about a non-veth:\n{log}"
    );
    let s = status(&topo)?;
    let names: Vec<&str> = s.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["lb-b1", "lb-b2", "lb-client"]);
    assert!(
        s.interfaces.iter().all(|i| i.problems.is_empty()),
        "{:?}",
        s.interfaces
    );
    assert!(!topo.ctl(&["status"])?.contains("interface "));

    // b3's end back to the kernel's defaults, then a reload attaches lb-b3.
    let b3 = topo.backends[2].ns.name.clone();
    topo.backends[2]
        .ns
        .exec(&["ethtool", "-K", "eth0", "tx", "on", "gro", "off"])?;
    d.reload(&config(false, &["lb-b1", "lb-b2", "lb-b3", "cnry-br"]))?
        .map_err(anyhow::Error::msg)?;
    wait_listed(&topo, "lb-b3", 2)?;
    let log = d.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("veth peer")).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    for w in &warnings {
        assert!(
            w.contains(&format!("lb-b3: its veth peer eth0 in namespace {b3}")),
            "{w}"
        );
    }
    assert!(log.contains(&format!("`ip netns exec {b3} ethtool -K eth0 tx off`")));
    assert!(log.contains(&format!("`ip netns exec {b3} ethtool -K eth0 gro on`")));

    // The key turned on by a reload: the problem is repaired, nothing else.
    d.reload(&config(true, &["lb-b1", "lb-b2", "lb-b3", "cnry-br"]))?
        .map_err(anyhow::Error::msg)?;
    wait_listed(&topo, "lb-b3", 0)?;
    let log = d.log();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fix_veth_offloads: eth0"))
        .collect();
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert!(
        changes.iter().all(|l| l.contains("the veth peer of lb-b3")),
        "{changes:#?}"
    );
    assert_eq!(offloads(&topo.backends[2].ns, "eth0")?, (false, true));
    let s = status(&topo)?;
    assert!(
        s.interfaces.iter().all(|i| i.problems.is_empty()),
        "{:?}",
        s.interfaces
    );
    Ok(())
}

/// A network namespace of a process the test started (`unshare -n sleep`),
/// as a container's: no name in /run/netns. With `hold`, the namespace is
/// also bind-mounted on a file outside /run/netns and the process stopped,
/// so no name and no process lead to it. Undone on drop.
struct Unnamed {
    child: Option<std::process::Child>,
    pid: u32,
    mount: Option<std::path::PathBuf>,
}

impl Unnamed {
    fn start(hold: Option<std::path::PathBuf>) -> Result<Unnamed> {
        let child = std::process::Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .spawn()?;
        let pid = child.id();
        let mut ns = Unnamed {
            child: Some(child),
            pid,
            mount: None,
        };
        // unshare has made the namespace once its net link differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let end = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == Some(ours.clone()) {
            anyhow::ensure!(Instant::now() < end, "unshare made no namespace");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(path) = hold {
            std::fs::write(&path, "")?;
            ns.mount = Some(path.clone());
            canary_tests::netns::run(
                std::process::Command::new("mount")
                    .arg("--bind")
                    .arg(format!("/proc/{pid}/ns/net"))
                    .arg(&path),
            )?;
        }
        Ok(ns)
    }

    /// A veth pair: `name` in the LB's namespace (up), its peer `eth0` in
    /// this one.
    fn link_from(&self, lb: &canary_tests::netns::Netns, name: &str) -> Result<()> {
        canary_tests::netns::run(std::process::Command::new("ip").args([
            "link",
            "add",
            name,
            "netns",
            &lb.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.pid.to_string(),
        ]))?;
        lb.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Stops the process (the namespace lives on only through its mount).
    fn stop_process(&mut self) {
        if let Some(mut c) = self.child.take() {
            canary_tests::daemon::stop_child(&mut c);
        }
    }
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        self.stop_process();
        if let Some(p) = self.mount.take() {
            let _ = std::process::Command::new("umount").arg(&p).status();
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// (d) Peers canaryd finds only through a process (a container's
/// namespace), and peers it cannot find: the first gets the `nsenter`
/// command naming the pid; the second is said once (not again at the
/// re-checks) with the generic command naming the peer, and the status keeps
/// it listed.
#[test]
fn a_container_peer_gets_nsenter_and_an_unseen_peer_is_said_once() -> Result<()> {
    let topo = Topology::new(1)?;
    let container = Unnamed::start(None)?;
    let held = std::env::temp_dir().join(format!("{}-held-ns", topo.id));
    let mut hidden = Unnamed::start(Some(held))?;
    container.link_from(&topo.lb, "cnry-vc")?;
    hidden.link_from(&topo.lb, "cnry-vh")?;
    hidden.stop_process();
    let d = topo.spawn_canaryd(Some(&config(false, &["lb-b1", "cnry-vc", "cnry-vh"])))?;
    let log = d.log();
    let pid = container.pid;
    for (setting, problem) in [("tx off", "TX checksum offload on"), ("gro on", "GRO off")] {
        let want = format!(
            "cnry-vc: its veth peer eth0 in the network namespace of pid {pid} (sleep) has {problem}"
        );
        let cmd = format!("Fix: `nsenter --net=/proc/{pid}/ns/net ethtool -K eth0 {setting}`");
        assert!(
            log.lines().any(|l| l.contains(&want) && l.contains(&cmd)),
            "{want:?} with {cmd:?}:\n{log}"
        );
    }
    let unseen = "cnry-vh is a veth, but canaryd cannot inspect its peer";
    let generic = "run `ethtool -K eth0 tx off gro on`";
    assert!(
        log.lines()
            .any(|l| l.contains(unseen) && l.contains(generic)),
        "{log}"
    );
    // Two re-checks later it has not been said again, and the status keeps
    // both.
    std::thread::sleep(Duration::from_secs(21));
    let log = d.log();
    assert_eq!(log.matches(unseen).count(), 1, "{log}");
    let s = status(&topo)?;
    let of = |n: &str| s.interfaces.iter().find(|i| i.name == n).cloned();
    let vc = of("cnry-vc").context("cnry-vc listed")?;
    assert_eq!(vc.problems.len(), 2, "{vc:?}");
    let vh = of("cnry-vh").context("cnry-vh listed")?;
    assert_eq!(vh.peer.as_deref(), Some("eth0"), "{vh:?}");
    assert_eq!(vh.problems.len(), 1, "{vh:?}");
    assert!(vh.problems[0].starts_with("peer not inspected"), "{vh:?}");
    println!(
        "container peer: {:?}\nunseen peer: {:?}",
        vc.problems, vh.problems
    );
    Ok(())
}

/// (e) A peer whose namespace canaryd cannot find (held only by a bind
/// mount) costs a search of /run/netns and /proc. The checks run on a
/// thread of their own, so `canaryctl status` answers quickly throughout,
/// and a search that found nothing is not repeated at every re-check: the
/// searches come at start, at the first re-check (10 s), not at the second
/// (the next waits 20 s), again at the third (30 s), the next one 40 s
/// later. (Searching at every re-check, as before, made 5 by then.)
#[test]
fn an_unfound_peer_namespace_is_searched_with_a_backoff_and_status_stays_quick() -> Result<()> {
    let topo = Topology::new(1)?;
    let held = std::env::temp_dir().join(format!("{}-held-ns", topo.id));
    let mut hidden = Unnamed::start(Some(held))?;
    hidden.link_from(&topo.lb, "cnry-vh")?;
    hidden.stop_process();
    let t = Instant::now();
    let d = topo.spawn_canaryd(Some(&config(false, &["lb-b1", "cnry-vh"])))?;
    let ready = t.elapsed();
    let searches = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("cnry-vh: the network namespace of its veth peer"))
            .map(String::from)
            .collect()
    };
    assert_eq!(searches(&d.log()).len(), 1, "{}", d.log());
    // 36 s of `canaryctl --json status`, one every 100 ms, each timed.
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs(36);
    while Instant::now() < end {
        let t = Instant::now();
        let s = status(&topo)?;
        times.push(t.elapsed());
        assert_eq!(s.interfaces.len(), 3, "{:?}", s.interfaces);
        std::thread::sleep(Duration::from_millis(100));
    }
    times.sort();
    let (median, slowest) = (times[times.len() / 2], times[times.len() - 1]);
    let log = d.log();
    let found = searches(&log);
    println!(
        "unfound peer namespace: ready in {:.2} s; {} searches in {:.0} s:\n  {}\n\
         canaryctl status: {} answers, median {:.1} ms, slowest {:.1} ms",
        ready.as_secs_f64(),
        found.len(),
        t.elapsed().as_secs_f64(),
        found.join("\n  "),
        times.len(),
        median.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3
    );
    assert_eq!(found.len(), 3, "{}", found.join("\n"));
    for (line, wait) in found.iter().zip(["10", "20", "40"]) {
        assert!(line.contains(&format!("next search in {wait} s")), "{line}");
        assert!(line.contains("namespaces in"), "{line}");
    }
    // A status held up by a search would be slow at each search (3 here,
    // and every answer during one); the machine running the suite on two
    // shared cores also delays a lone call now and then (261 ms seen once
    // in 360). So: at most 1 % of the answers over 200 ms, none over 1 s.
    let slow = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(200))
        .count();
    assert!(
        slow * 100 <= times.len(),
        "{slow} of {} answers took 200 ms or more",
        times.len()
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // Said once; the status tells when the next search is.
    let unseen = "cnry-vh is a veth, but canaryd cannot inspect its peer";
    assert_eq!(log.matches(unseen).count(), 1, "{log}");
    let s = status(&topo)?;
    let vh = s.interfaces.iter().find(|i| i.name == "cnry-vh").unwrap();
    assert!(vh.problems[0].contains("next search in"), "{vh:?}");
    Ok(())
}

/// canaryd in the LB namespace with only the capabilities README's
/// Requirements names (`CAP_BPF`, `CAP_NET_ADMIN`, through `setpriv`):
/// without `CAP_SYS_ADMIN`. Stopped by pid on drop.
struct Confined {
    child: std::process::Child,
    log: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Confined {
    fn spawn(topo: &Topology, yaml: &str) -> Result<Confined> {
        use std::io::BufRead;
        let tmp = |s: &str| std::env::temp_dir().join(format!("{}-confined.{s}", topo.id));
        let (config, log) = (tmp("yaml"), tmp("log"));
        std::fs::write(&config, yaml)?;
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", topo.lb.path()))
            .args([
                "setpriv",
                "--bounding-set=-all,+bpf,+net_admin,+perfmon",
                "--",
            ])
            .arg(canary_tests::bin_path("canaryd")?)
            .args(["--instance", topo.instance(), "--stats-interval", "0"])
            .args(["--on-exit", "teardown", "--control-socket"])
            .arg(topo.socket())
            .arg("--state-dir")
            .arg(topo.state_dir())
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Confined { child, log, config };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l == "canaryd ready" => return Ok(d),
                Ok(_) => {}
                Err(_) => {
                    canary_tests::daemon::stop_child(&mut d.child);
                    anyhow::bail!("canaryd did not become ready:\n{}", d.log());
                }
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        canary_tests::daemon::stop_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!("--- canaryd log ---\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// (f) With CAP_BPF and CAP_NET_ADMIN alone canaryd starts and forwards,
/// but cannot enter the peers' namespaces (`setns` needs CAP_SYS_ADMIN):
/// each such peer is reported as not inspectable, the reason naming the
/// capability, in the log and in the status.
#[test]
fn without_cap_sys_admin_the_peers_are_uninspectable_and_the_reason_says_so() -> Result<()> {
    let mut topo = Topology::new(1)?;
    topo.start_servers(80)?;
    let d = Confined::spawn(&topo, &config(false, &["lb-b1"]))?;
    let log = d.log();
    for iface in ["lb-client", "lb-b1"] {
        let head = format!("{iface} is a veth, but canaryd cannot inspect its peer (in namespace");
        assert!(
            log.lines().any(|l| l.contains(&head)
                && l.contains("canaryd lacks CAP_SYS_ADMIN")
                && l.contains("run `ethtool -K eth0 tx off gro on`")),
            "{head:?}:\n{log}"
        );
    }
    let s = status(&topo)?;
    assert_eq!(s.interfaces.len(), 2, "{:?}", s.interfaces);
    for i in &s.interfaces {
        assert_eq!(i.peer.as_deref(), Some("eth0"), "{i:?}");
        assert!(
            i.problems.len() == 1 && i.problems[0].contains("lacks CAP_SYS_ADMIN"),
            "{i:?}"
        );
    }
    // Only the check is limited: forwarding works (the harness set the
    // peers' offloads).
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    topo.client
        .run(|| tcp_connect(client_v4(0), vip, Duration::from_secs(3))?.ping("hi"))?;
    println!("without CAP_SYS_ADMIN: {:?}", s.interfaces[0].problems);
    Ok(())
}
