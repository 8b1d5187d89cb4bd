//! End to end in the client/LB/backends topology: plain routing (the
//! limit), canary, nftables weighted DNAT, HAProxy (TCP mode), measured in
//! interleaved rounds.

use crate::control_plane::control_plane;
use crate::report::Report;
use crate::{median, Size};
use anyhow::{bail, Result};
use canary_tests::{
    client_v4, daemon::stop_child, tcp_connect, LbConfig, Netns, Service, Topology,
};
use canary_userspace::dataplane;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const G_TCP: &str =
    "end to end: new TCP connections/s (connect, banner, close), limit = plain routing";
const G_CPU: &str =
    "end to end: host CPU per TCP connection (all namespaces, /proc/stat), limit = plain routing";
const G_UDP: &str = "end to end: UDP request/replies per second, limit = plain routing";

pub const VIP_TCP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP_UDP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 2, 2),
    Ipv4Addr::new(198, 18, 3, 2),
];
/// The 10/45/45 split of every contender (b3 is the canary).
fn split_backend(i: usize) -> Ipv4Addr {
    match i % 20 {
        0 | 1 => BACKENDS[2],
        k if k % 2 == 0 => BACKENDS[0],
        _ => BACKENDS[1],
    }
}

pub fn canary_config(weight: f64, stable: &[String]) -> String {
    LbConfig::lab()
        .service(
            Service::tcp("shop", VIP_TCP, 80)
                .affinity("source-ip")
                .weight(weight)
                .stable(stable)
                .canary(["198.18.3.2"]),
        )
        .service(
            Service::udp("shop-udp", VIP_UDP, 80)
                .affinity("flow")
                .weight(10.0)
                .lab_pools(),
        )
        .yaml()
}

pub fn default_stable() -> Vec<String> {
    vec!["198.18.1.2".into(), "198.18.2.2".into()]
}

/// Busy jiffies (everything but idle and iowait) of the whole host.
fn busy_jiffies() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or("");
    line.split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

fn jiffy_us() -> f64 {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of a process, in jiffies.
fn proc_jiffies(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct TcpRun {
    conns: u64,
    errors: u64,
    secs: f64,
    busy_jiffies: u64,
    canary_share: f64,
}

/// `threads` clients in the client namespace open short connections to
/// `dst(i)` until `secs` pass or 500k connections are made.
fn tcp_rate(
    topo: &Topology,
    threads: usize,
    secs: f64,
    base: u32,
    dst: &(dyn Fn(usize) -> SocketAddr + Sync),
) -> TcpRun {
    let conns = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let canary = AtomicU64::new(0);
    let j0 = busy_jiffies();
    let t = Instant::now();
    let end = t + Duration::from_secs_f64(secs);
    topo.client.run(|| {
        std::thread::scope(|s| {
            for th in 0..threads {
                let (conns, errors, canary) = (&conns, &errors, &canary);
                s.spawn(move || {
                    for i in 0..500_000 / threads {
                        if Instant::now() >= end || errors.load(Ordering::Relaxed) > 1000 {
                            break;
                        }
                        let src = client_v4((base + (th * 977 + i) as u32) % 4096);
                        match tcp_connect(src, dst(th * 1_000_003 + i), Duration::from_secs(1)) {
                            Ok(c) => {
                                conns.fetch_add(1, Ordering::Relaxed);
                                if c.backend == "b3" {
                                    canary.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        })
    });
    let secs = t.elapsed().as_secs_f64();
    let conns = conns.into_inner();
    TcpRun {
        conns,
        errors: errors.into_inner(),
        secs,
        busy_jiffies: busy_jiffies() - j0,
        canary_share: canary.into_inner() as f64 / conns.max(1) as f64,
    }
}

/// `threads` UDP clients (one socket, one flow each) doing request/reply
/// until `secs` pass; (replies, lost, seconds).
fn udp_rate(
    topo: &Topology,
    threads: usize,
    secs: f64,
    dst: &(dyn Fn(usize) -> SocketAddr + Sync),
) -> (u64, u64, f64) {
    let ok = AtomicU64::new(0);
    let lost = AtomicU64::new(0);
    let t = Instant::now();
    let end = t + Duration::from_secs_f64(secs);
    topo.client.run(|| {
        std::thread::scope(|s| {
            for th in 0..threads {
                let (ok, lost) = (&ok, &lost);
                s.spawn(move || {
                    let go = || -> Result<()> {
                        let sock =
                            UdpSocket::bind(SocketAddr::new(client_v4(4000 + th as u32), 0))?;
                        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
                        sock.connect(dst(th))?;
                        let mut buf = [0u8; 256];
                        for _ in 0..2_000_000 {
                            if Instant::now() >= end || lost.load(Ordering::Relaxed) > 200 {
                                break;
                            }
                            sock.send(b"ping")?;
                            match sock.recv(&mut buf) {
                                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(_) => lost.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        Ok(())
                    };
                    if let Err(e) = go() {
                        eprintln!("udp client: {e:#}");
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    });
    (
        ok.into_inner(),
        lost.into_inner(),
        t.elapsed().as_secs_f64(),
    )
}

/// One round of one contender.
struct Sample {
    conn_rate: f64,
    cpu_us: f64,
    own_us: Option<f64>,
    udp_rate: Option<f64>,
    note: String,
}

/// Short TCP connections, then (if given) the UDP stream, through the
/// contender now in place; `own` is a process whose CPU time is its own.
fn measure(
    topo: &Topology,
    size: Size,
    base: u32,
    tcp: &(dyn Fn(usize) -> SocketAddr + Sync),
    udp: Option<&(dyn Fn(usize) -> SocketAddr + Sync)>,
    own: Option<u32>,
) -> Sample {
    let p0 = own.map(proc_jiffies);
    let r = tcp_rate(topo, size.threads, size.tcp_secs, base, tcp);
    let per_conn = |jiffies: u64| jiffies as f64 * jiffy_us() / r.conns.max(1) as f64;
    let own_us = own
        .zip(p0)
        .map(|(pid, p0)| per_conn(proc_jiffies(pid) - p0));
    let mut note = format!(
        "{} conns, {} errors, {:.0} % to b3",
        r.conns,
        r.errors,
        100.0 * r.canary_share
    );
    let udp_rate = udp.map(|udp| {
        let (ok, lost, secs) = udp_rate(topo, size.threads, size.udp_secs, udp);
        note += &format!("; udp {ok} replies, {lost} lost");
        if ok > 0 {
            ok as f64 / secs
        } else {
            f64::NAN
        }
    });
    Sample {
        conn_rate: if r.conns > 0 {
            r.conns as f64 / r.secs
        } else {
            f64::NAN
        },
        cpu_us: if r.conns > 0 {
            per_conn(r.busy_jiffies)
        } else {
            f64::NAN
        },
        own_us,
        udp_rate,
        note,
    }
}

/// The samples of one contender over the rounds, or why it could not run.
struct Contender {
    name: &'static str,
    own: &'static str,
    samples: Vec<Sample>,
    skipped: Option<String>,
}

impl Contender {
    fn new(name: &'static str, own: &'static str) -> Contender {
        Contender {
            name,
            own,
            samples: Vec::new(),
            skipped: None,
        }
    }

    fn record(&mut self, r: Result<Sample>) {
        match r {
            Ok(s) => {
                println!(
                    "  {:<32} {:>9.0} conn/s {:>7.1} us/conn {:>9} req/s   {}",
                    self.name,
                    s.conn_rate,
                    s.cpu_us,
                    s.udp_rate.map(|u| format!("{u:.0}")).unwrap_or("-".into()),
                    s.note
                );
                self.samples.push(s);
            }
            Err(e) => {
                println!("  {:<32} could not run: {e:#}", self.name);
                self.skipped = Some(format!("{e:#}"));
            }
        }
    }

    fn report(&self, report: &mut Report) {
        let rounds = self.samples.len();
        if rounds == 0 {
            let why = self.skipped.clone().unwrap_or_else(|| "did not run".into());
            report.skip(G_TCP, self.name, why);
            return;
        }
        let med = |f: &dyn Fn(&Sample) -> f64| median(self.samples.iter().map(f).collect());
        let mut note = format!(
            "median of {rounds}; last: {}",
            self.samples[rounds - 1].note
        );
        if self.samples[0].own_us.is_some() {
            let own = med(&|s| s.own_us.unwrap_or(f64::NAN));
            note = format!("{} itself {own:.1} us/conn; {note}", self.own);
        }
        report.add(G_TCP, self.name, med(&|s| s.conn_rate), "conn/s", note);
        report.add(G_CPU, self.name, med(&|s| s.cpu_us), "us/conn", "");
        if self.samples[0].udp_rate.is_some() {
            let u = med(&|s| s.udp_rate.unwrap_or(f64::NAN));
            report.add(G_UDP, self.name, u, "req/s", format!("median of {rounds}"));
        } else {
            report.skip(G_UDP, self.name, "no UDP in this contender");
        }
    }
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn nft_script(add: bool) -> String {
    let map =
        "numgen random mod 100 map { 0-9 : 198.18.3.2, 10-54 : 198.18.1.2, 55-99 : 198.18.2.2 }";
    if add {
        format!(
            "table ip cnrybench {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {VIP_TCP} tcp dport 80 dnat to {map}\n  ip daddr {VIP_UDP} udp dport 80 dnat to {map}\n }}\n}}\n"
        )
    } else {
        "delete table ip cnrybench\n".into()
    }
}

fn nft(ns: &Netns, script: &str) -> Result<()> {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A child process stopped (by its pid) on drop.
struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            stop_child(c);
        }
    }
}

fn haproxy(topo: &Topology, dir: &std::path::Path) -> Result<Guard> {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\nfrontend fe\n  bind {VIP_TCP}:80\n  default_backend be\nbackend be\n  balance random\n  server b1 198.18.1.2:80 weight 45\n  server b2 198.18.2.2:80 weight 45\n  server b3 198.18.3.2:80 weight 10\n"
        ),
    )?;
    let log = dir.join("haproxy.log");
    let child = topo
        .lb
        .command("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .spawn()?;
    let mut g = Guard(Some(child));
    let dst = SocketAddr::new(VIP_TCP.into(), 80);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if topo
            .client
            .run(|| tcp_connect(client_v4(4095), dst, Duration::from_millis(300)))
            .is_ok()
        {
            return Ok(g);
        }
        if let Some(Ok(Some(st))) = g.0.as_mut().map(|c| c.try_wait()) {
            g.0 = None;
            bail!(
                "haproxy exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!("haproxy did not accept connections within 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn end_to_end(size: Size, report: &mut Report) -> Result<()> {
    println!("end to end: client/LB/backends topology, {} client threads, {} s TCP + {} s UDP per contender", size.threads, size.tcp_secs, size.udp_secs);
    println!(
        "  (clients, LB and servers share the host's cores: rates are of the whole host; \
         CPU per connection counts every namespace)"
    );
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let dir = std::env::temp_dir().join(format!("{}-bench", topo.id));
    std::fs::create_dir_all(&dir)?;
    // Removed on every way out, a panic included.
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    e2e_contenders(size, report, &mut topo, &dir)
}

fn e2e_contenders(
    size: Size,
    report: &mut Report,
    topo: &mut Topology,
    dir: &std::path::Path,
) -> Result<()> {
    let vip_tcp = |_| SocketAddr::new(VIP_TCP.into(), 80);
    let vip_udp = |_| SocketAddr::new(VIP_UDP.into(), 80);
    // (a) plain routing: straight to a backend, same 10/45/45 mix.
    let direct = |i| SocketAddr::new(split_backend(i).into(), 80);
    let direct_udp = |i: usize| SocketAddr::new(split_backend(i * 7 + 1).into(), 80);
    let mut plain = Contender::new("plain routing (no splitter)", "");
    let mut canary = Contender::new("canary (XDP, canaryd)", "canaryd");
    let mut nftc = Contender::new("nftables numgen DNAT", "");
    let mut hap = Contender::new("HAProxy (tcp mode)", "haproxy");
    let has_nft = have("nft");
    let has_haproxy = have("haproxy");
    // HAProxy is the one contender that opens connections from the LB
    // itself (one source address per backend): give it the whole port
    // range and TIME_WAIT reuse, or later rounds stall on port search.
    // Only connections made in the LB namespace are affected.
    topo.lb
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    topo.lb.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    // Rounds interleave the contenders, so a burst of other load on the
    // host hits them alike; each figure is the median over the rounds.
    for round in 0..size.e2e_rounds {
        println!("  round {} of {}", round + 1, size.e2e_rounds);
        let base = round as u32 * 1000;
        plain.record(Ok(measure(
            topo,
            size,
            base,
            &direct,
            Some(&direct_udp),
            None,
        )));

        // (b) canary: canaryd with the same 10 % split; stopped and its
        // pins removed afterwards, so its XDP link leaves the interface.
        let r = topo
            .spawn_canaryd(Some(&canary_config(10.0, &default_stable())))
            .map(|mut d| {
                let s = measure(
                    topo,
                    size,
                    base + 100,
                    &vip_tcp,
                    Some(&vip_udp),
                    Some(d.pid()),
                );
                d.stop();
                s
            });
        dataplane::remove_pins(&topo.pin_dir())?;
        canary.record(r);

        // (c) nftables weighted DNAT in the LB namespace.
        if has_nft {
            let r = nft(&topo.lb, &nft_script(true))
                .map(|()| measure(topo, size, base + 200, &vip_tcp, Some(&vip_udp), None));
            let _ = nft(&topo.lb, &nft_script(false));
            nftc.record(r);
        } else {
            nftc.skipped = Some("nft is not installed".into());
        }

        // (d) HAProxy, TCP mode, weighted servers, the VIP a local address.
        if has_haproxy {
            topo.lb
                .ip(&["addr", "add", &format!("{VIP_TCP}/32"), "dev", "lo"])?;
            let r = haproxy(topo, dir).map(|g| {
                let pid = g.0.as_ref().map(|c| c.id());
                measure(topo, size, base + 300, &vip_tcp, None, pid)
            });
            topo.lb
                .ip(&["addr", "del", &format!("{VIP_TCP}/32"), "dev", "lo"])?;
            hap.record(r);
        } else {
            hap.skipped = Some("haproxy is not installed (cargo xtask bench installs it)".into());
        }
    }
    for c in [&plain, &canary, &nftc, &hap] {
        c.report(report);
    }

    let mut d = topo.spawn_canaryd(Some(&canary_config(10.0, &default_stable())))?;
    control_plane(size, report, topo, &mut d)
}
