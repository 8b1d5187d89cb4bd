//! Fleet: three canaryd hosts behind the ECMP router sharing one service
//! through a 3-member etcd cluster (`canary_tests::fleet`).
//!
//! - etcd's own put (its HTTP gateway, no canaryd) as the floor; a
//!   weight set on one host (the control API over the Unix socket, as
//!   canaryctl does it, without canaryctl's process start) reaches the
//!   three hosts' `SERVICES` maps: the call's duration (it returns once etcd
//!   has the write), its return to the last host's map, its start to the
//!   last host's map; `size.fleet_changes` changes alternating between two
//!   weights on the hosts in turn, bounded in time.
//! - etcd writes per host per second: the cluster's revision over an idle
//!   window and over a window with a rollout (2 s steps) running under
//!   load, divided by the 3 hosts and the seconds; each window's writes
//!   are split by key (a key's `version` counts its writes).
//!
//! Everything (namespaces, etcd, canaryd, servers, load) goes on drop.

use crate::report::Report;
use crate::Size;
use anyhow::{bail, Context, Result};
use canary_tests::fleet::FleetTopology;
use canary_tests::rollout::shop;
use canary_tests::{Daemon, Host, Load, LoadBounds, ServerOptions, VIP_V4};
use canary_userspace::control::api::{Change, SetWeight, Status};
use canary_userspace::dataplane::maps::Maps;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const G_CONV: &str = "fleet: set-weight on one of 3 hosts (control API) -> every host's map, \
                      limit = etcd's own put, median";
const G_WRITES: &str =
    "fleet: etcd writes per host per second (revision delta / 3 hosts / s), limit = idle";

const HOSTS: usize = 3;
/// The two weights the changes alternate between, in percent and bp.
const WEIGHTS: [(f64, u32); 2] = [(12.5, 1250), (7.25, 725)];
/// The rollout of the loaded window: 2 s steps, enough of them to outlast
/// the window; analysis loose enough that a shared machine's hiccup does
/// not abort it.
const PLAN: &str = "      steps: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
      interval: 2s
      analysis:
        max_error_ratio: 0.5
        min_canary_connections: 5
";

/// One HTTP/1.1 request on `s` and its answer (status, body); the body
/// read by its length or its chunks, so the connection may serve another.
fn exchange<S: Read + Write>(
    s: &mut S,
    method: &str,
    uri: &str,
    body: &[u8],
    close: bool,
) -> Result<(u16, Vec<u8>)> {
    let mut req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: canaryd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut more = |buf: &mut Vec<u8>| -> Result<()> {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("the connection closed before the whole answer to {uri}");
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(&mut buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = buf.split_off(head_end);
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            more(&mut body)?;
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            more(&mut body)?;
        }
        body = dechunk(&body)?;
    } else {
        s.read_to_end(&mut body)?;
    }
    Ok((status, body))
}

/// One request to canaryd's control API on its Unix socket (HTTP/1.1,
/// JSON, as `canary_control::client` sends it, here without a tokio
/// runtime): the answer's body, or an error with canaryd's refusal.
fn api(socket: &Path, method: &str, uri: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let (status, body) = exchange(&mut s, method, uri, body.unwrap_or_default(), true)?;
    if !(200..300).contains(&status) {
        let said = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        bail!("{method} {uri}: {status}: {said}");
    }
    Ok(body)
}

/// etcd's own write latency, for comparison: `n` puts of one key through
/// member 1's v3 HTTP gateway (the member canaryd talks to first), on one
/// kept-alive connection from the switch namespace.
fn etcd_puts(topo: &FleetTopology, n: usize) -> Result<Vec<Duration>> {
    topo.etcd.switch.run(|| {
        let addr = SocketAddr::new(canary_tests::etcd::member_v4(0).into(), 2379);
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            // {"key": "/bench/etcd-put", "value": "<i>"}, base64.
            let body = format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                to_base64(b"/bench/etcd-put"),
                to_base64(i.to_string().as_bytes())
            );
            let t = Instant::now();
            let (status, answer) = exchange(&mut s, "POST", "/v3/kv/put", body.as_bytes(), false)?;
            let took = t.elapsed();
            anyhow::ensure!(
                status == 200,
                "etcd put: {status}: {}",
                String::from_utf8_lossy(&answer)
            );
            times.push(took);
        }
        Ok(times)
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunked body")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(b.len() >= size + 2, "chunked body ends early");
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn set_weight(socket: &Path, percent: f64) -> Result<Change> {
    let body = serde_json::to_vec(&SetWeight { percent })?;
    let out = api(socket, "POST", "/v1/services/shop/weight", Some(&body))?;
    Ok(serde_json::from_slice(&out)?)
}

fn status(socket: &Path) -> Result<Status> {
    Ok(serde_json::from_slice(&api(
        socket,
        "GET",
        "/v1/status",
        None,
    )?)?)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn to_base64(b: &[u8]) -> String {
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, x)| n | (*x as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() {
                B64[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Standard base64 (etcdctl's JSON gives keys as bytes).
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The cluster's revision and each key's version under the fleet's prefix
/// (one read, from the switch), and when it was taken.
struct Snapshot {
    at: Instant,
    revision: u64,
    versions: BTreeMap<String, u64>,
}

fn snapshot(topo: &FleetTopology) -> Result<Snapshot> {
    let out = topo.etcd.etcdctl(&[
        "--command-timeout=2s",
        "get",
        "/canary/",
        "--prefix",
        "-w",
        "json",
    ])?;
    let at = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&out).context("etcdctl get -w json")?;
    let revision = v["header"]["revision"]
        .as_u64()
        .with_context(|| format!("no revision in {out}"))?;
    let mut versions = BTreeMap::new();
    for kv in v["kvs"].as_array().into_iter().flatten() {
        let key = String::from_utf8_lossy(&base64(kv["key"].as_str().unwrap_or(""))).to_string();
        versions.insert(key, kv["version"].as_u64().unwrap_or(0));
    }
    Ok(Snapshot {
        at,
        revision,
        versions,
    })
}

/// A window's writes: the total (revision delta), per host per second, and
/// a breakdown by kind of key (`hosts/*`, `services/*`, `health/*`, the
/// rest: elections, keys gone).
struct Window {
    writes: u64,
    secs: f64,
    per_host_s: f64,
    by_kind: String,
}

fn window(topo: &FleetTopology, secs: f64) -> Result<Window> {
    let a = snapshot(topo)?;
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b = snapshot(topo)?;
    let secs = (b.at - a.at).as_secs_f64();
    let writes = b.revision - a.revision;
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, v) in &b.versions {
        // A key created in the window: all its versions are the window's.
        let d = v - a.versions.get(k).copied().filter(|x| x <= v).unwrap_or(0);
        let kind = k
            .split('/')
            .nth(3)
            .filter(|k| ["hosts", "services", "health"].contains(k))
            .unwrap_or("other");
        *kinds.entry(kind).or_default() += d;
    }
    let counted: u64 = kinds.values().sum();
    *kinds.entry("other").or_default() += writes.saturating_sub(counted);
    let by_kind = kinds
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {:.2}/s", *n as f64 / secs))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Window {
        writes,
        secs,
        per_host_s: writes as f64 / HOSTS as f64 / secs,
        by_kind,
    })
}

/// The fleet under test. Field order is drop order: the load, the
/// daemons, then the topology (namespaces, servers, etcd).
struct Fleet {
    load: Option<Load>,
    daemons: Vec<Daemon>,
    maps: Vec<Maps>,
    sockets: Vec<PathBuf>,
    topo: FleetTopology,
}

impl Fleet {
    fn start() -> Result<Fleet> {
        let mut topo = FleetTopology::new(HOSTS, 3)?;
        topo.start_servers_with(80, &ServerOptions::probed())?;
        let mut f = Fleet {
            load: None,
            daemons: Vec::new(),
            maps: Vec::new(),
            sockets: Vec::new(),
            topo,
        };
        for k in 0..HOSTS {
            let yaml = f
                .topo
                .lb_config(k)
                .fleet(f.topo.fleet_section(k, "bench").lease_ttl("3s"))
                .service(shop(PLAN))
                .yaml();
            f.daemons.push(f.topo.spawn_canaryd(k, &yaml)?);
            f.maps.push(Maps::from_pins(&f.topo.lbs[k].pin_dir())?);
            f.sockets.push(f.topo.lbs[k].socket());
        }
        f.wait(Duration::from_secs(20), "the fleet to form", |s| {
            s.fleet
                .as_ref()
                .is_some_and(|fl| fl.connected && fl.leader.is_some() && fl.hosts.len() == HOSTS)
        })?;
        Ok(f)
    }

    /// Waits until `ok` holds for every host's status.
    fn wait(&self, limit: Duration, what: &str, ok: impl Fn(&Status) -> bool) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            if self
                .sockets
                .iter()
                .all(|s| status(s).map(|s| ok(&s)).unwrap_or(false))
            {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("waited {limit:?} for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn weight_bp(&self, k: usize) -> Result<u32> {
        canary_tests::rollout::weight_bp(&self.maps[k])
    }

    /// Polls every host's map until all have `bp`: when each had it
    /// (polled every 200 us).
    fn seen(&self, bp: u32, limit: Duration) -> Result<[Instant; HOSTS]> {
        let t0 = Instant::now();
        let mut at = [None; HOSTS];
        loop {
            for (k, t) in at.iter_mut().enumerate() {
                if t.is_none() && self.weight_bp(k)? == bp {
                    *t = Some(Instant::now());
                }
            }
            if let [Some(a), Some(b), Some(c)] = at {
                return Ok([a, b, c]);
            }
            if t0.elapsed() > limit {
                let got: Vec<u32> = (0..HOSTS).map(|k| self.weight_bp(k).unwrap_or(0)).collect();
                bail!("weight {bp} bp not on every host after {limit:?}: {got:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// How long from now until the last host's map has `bp`.
    fn last_host(&self, bp: u32, limit: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let seen = self.seen(bp, limit)?;
        Ok(seen.into_iter().max().unwrap_or(t0) - t0)
    }

    /// Warnings and errors in the canaryds' logs (for the run's notes).
    fn log_complaints(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, d) in self.daemons.iter().enumerate() {
            for l in d.log().lines() {
                if l.contains("WARN") || l.contains("ERROR") {
                    out.push(format!("lb{}: {l}", k + 1));
                }
            }
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (median, p99, max) in ms.
fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.iter().copied().map(ms).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (v[v.len() / 2], at(0.99), v[v.len() - 1])
}

pub fn fleet(size: Size, report: &mut Report) -> Result<()> {
    let t0 = Instant::now();
    println!(
        "fleet: 3 LB hosts behind ECMP, 3 backends, 3-member etcd; canaryd on each \
         (lease_ttl 3s, report_interval 1s)   [cargo xtask bench -- --fleet]"
    );
    let mut f = Fleet::start()?;
    println!("  fleet formed in {:.1} s", t0.elapsed().as_secs_f64());
    let r = run(size, report, &mut f);
    let complaints = f.log_complaints();
    if !complaints.is_empty() {
        println!(
            "  canaryd logged {} warning/error line(s); the first ones:",
            complaints.len()
        );
        for l in complaints.iter().take(8) {
            println!("    {l}");
        }
    }
    drop(f);
    println!(
        "  fleet part: {:.1} s, torn down",
        t0.elapsed().as_secs_f64()
    );
    r
}

fn run(size: Size, report: &mut Report, f: &mut Fleet) -> Result<()> {
    // 1. Idle: reports only (and lease renewals, which are not writes).
    std::thread::sleep(Duration::from_millis(500));
    let idle = window(&f.topo, size.fleet_window_secs)?;

    // 2. etcd's own write, then weight changes on the hosts in turn.
    let puts = etcd_puts(&f.topo, size.fleet_changes)?;
    let budget = Duration::from_secs_f64(size.fleet_window_secs * 2.0);
    let began = Instant::now();
    let (mut calls, mut after, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let (mut local, mut first_other) = (Vec::new(), Vec::new());
    for i in 0..size.fleet_changes {
        if began.elapsed() > budget && i >= 5 {
            break;
        }
        let (pct, bp) = WEIGHTS[i % 2];
        let k = i % HOSTS;
        // The call on its own thread; the maps polled here meanwhile.
        let socket = f.sockets[k].clone();
        let (seen, call) = std::thread::scope(|sc| {
            let call = sc.spawn(move || -> Result<(Instant, Instant)> {
                let start = Instant::now();
                set_weight(&socket, pct)?;
                Ok((start, Instant::now()))
            });
            let seen = f.seen(bp, Duration::from_secs(5));
            (seen, call.join().expect("set-weight thread"))
        });
        let (start, returned) = call.with_context(|| format!("set-weight on lb{}", k + 1))?;
        let seen = seen?.map(|t| t.saturating_duration_since(start));
        let last = seen.into_iter().max().unwrap_or_default();
        calls.push(returned - start);
        total.push(last);
        after.push(last.saturating_sub(returned - start));
        local.push(seen[k]);
        if let Some(first) = (0..HOSTS).filter(|h| *h != k).map(|h| seen[h]).min() {
            first_other.push(first);
        }
    }
    let n = calls.len();
    let changes = format!("{n} changes in {:.1} s", began.elapsed().as_secs_f64());
    println!("{G_CONV}");
    let (e50, e99, emax) = stats(&puts);
    report.add(
        G_CONV,
        "etcd put alone (no canaryd), median",
        e50,
        "ms",
        format!(
            "{} puts through member 1's v3 HTTP gateway, from the switch",
            puts.len()
        ),
    );
    report.add(
        G_CONV,
        "etcd put alone, p99",
        e99,
        "ms",
        format!("max {emax:.1} ms"),
    );
    let (c50, c99, cmax) = stats(&calls);
    let (a50, a99, amax) = stats(&after);
    let (t50, t99, tmax) = stats(&total);
    report.add(
        G_CONV,
        "set-weight call (etcd write), median",
        c50,
        "ms",
        format!("{changes}, 12.5 <-> 7.25 %, hosts in turn"),
    );
    report.add(
        G_CONV,
        "set-weight call (etcd write), p99",
        c99,
        "ms",
        format!("max {cmax:.1} ms"),
    );
    let (l50, l99, _) = stats(&local);
    let (o50, o99, _) = stats(&first_other);
    report.add(
        G_CONV,
        "call start -> calling host's map, median",
        l50,
        "ms",
        format!("p99 {l99:.1} ms (applied there, then written to etcd)"),
    );
    report.add(
        G_CONV,
        "call start -> first other host's map, median",
        o50,
        "ms",
        format!("p99 {o99:.1} ms (by etcd's watch)"),
    );
    report.add(
        G_CONV,
        "call returned -> last host's map, median",
        a50,
        "ms",
        "",
    );
    report.add(
        G_CONV,
        "call returned -> last host's map, p99",
        a99,
        "ms",
        format!("max {amax:.1} ms"),
    );
    report.add(
        G_CONV,
        "call start -> last host's map, median",
        t50,
        "ms",
        "",
    );
    report.add(
        G_CONV,
        "call start -> last host's map, p99",
        t99,
        "ms",
        format!("max {tmax:.1} ms"),
    );

    // 3. A rollout under load: back to 0 (the plan's start), the load on,
    // the rollout started on a host that does not lead.
    set_weight(&f.sockets[0], 0.0)?;
    f.last_host(0, Duration::from_secs(5))?;
    f.load = Some(Load::start(
        &f.topo.client,
        SocketAddr::new(VIP_V4.into(), 80),
        LoadBounds {
            max_time: Duration::from_secs_f64(size.fleet_window_secs + 15.0),
            ..LoadBounds::default()
        },
    ));
    let leader = (0..HOSTS)
        .find(|k| {
            status(&f.sockets[*k])
                .ok()
                .and_then(|s| s.fleet)
                .is_some_and(|fl| fl.leading)
        })
        .context("no host leads")?;
    let starter = (leader + 1) % HOSTS;
    api(
        &f.sockets[starter],
        "POST",
        "/v1/services/shop/rollout/start",
        Some(b"null"),
    )
    .context("rollout start")?;
    f.last_host(1000, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(500));
    let step_at = |f: &Fleet| -> Result<(usize, String)> {
        let s = status(&f.sockets[leader])?;
        let r = s
            .services
            .iter()
            .find(|s| s.name == "shop")
            .and_then(|s| s.rollout.clone())
            .context("no rollout in the leader's status")?;
        Ok((r.step, r.phase))
    };
    let (step0, _) = step_at(f)?;
    let busy = window(&f.topo, size.fleet_window_secs)?;
    let (step1, phase) = step_at(f)?;
    let (ok, failed) = f.load.take().map(|mut l| l.stop()).unwrap_or_default();
    println!("{G_WRITES}");
    report.add(
        G_WRITES,
        "idle (reports)",
        idle.per_host_s,
        "writes/s",
        format!(
            "{} writes in {:.1} s: {}",
            idle.writes, idle.secs, idle.by_kind
        ),
    );
    report.add(
        G_WRITES,
        "rollout running (2 s steps) under load",
        busy.per_host_s,
        "writes/s",
        format!(
            "{} writes in {:.1} s: {}; steps {step0} -> {step1} ({phase}); load {ok} conns, {failed} failed",
            busy.writes, busy.secs, busy.by_kind
        ),
    );
    if phase != "running" {
        println!("  note: the rollout was {phase} at the window's end (not running throughout)");
    }
    Ok(())
}
