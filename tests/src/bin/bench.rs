//! canary-bench: what the splitter costs, measured side by side in one run
//! (needs root; `cargo xtask bench` builds and runs it).
//!
//! 1. Per-packet cost through `BPF_PROG_TEST_RUN` in a scratch namespace:
//!    the `xdp_pass` floor against each path of the canary program.
//! 2. Scaling: the flow-table hit with 1k/100k/1M flows in `FLOWS`, and the
//!    new-flow path with 2/100/1000 backends per pool.
//! 3. End to end in the client/LB/backend topology: plain routing (the
//!    limit), canary, nftables weighted DNAT, HAProxy (TCP mode).
//! 4. Control plane: weight change to first connection observing it, and
//!    the apply time of a 1000-backend Maglev table swap.
//!
//! Every figure is printed with its ratio to the limit of its group, and
//! written to `results.json` and `results.svg` in `$CANARY_BENCH_OUT` (or
//! `target/bench`, or `--out DIR`). `--smoke` runs one short iteration of
//! everything (for the test suite, well under 30 s).
//!
//! Traffic stays inside namespaces this process creates (198.18.0.0/15,
//! 2001:db8::/32); every loop is bounded in count and time; the namespaces,
//! pins and child processes (canaryd, testsrv, haproxy) go on drop.

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use canary_common::addr::{family, port_to_map, to_words};
use canary_common::{FlowKey, FlowState, PROTO_TCP};
use canary_tests::{client_v4, daemon::stop_child, tcp_connect, Netns, Topology};
use canary_userspace::config::Config;
use canary_userspace::dataplane::{self, DataPlane};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const XDP_NAMES: [&str; 5] = ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"];

/// How much of everything: the full run and the smoke run.
#[derive(Clone, Copy)]
struct Size {
    rounds: usize,
    single: usize,
    repeat: u32,
    flows: &'static [u32],
    backends: &'static [usize],
    tcp_secs: f64,
    udp_secs: f64,
    threads: usize,
    swaps: usize,
    e2e_rounds: usize,
}

const FULL: Size = Size {
    rounds: 7,
    single: 20_000,
    repeat: 1_000_000,
    flows: &[1_000, 100_000, 1_000_000],
    backends: &[2, 100, 1000],
    tcp_secs: 2.0,
    udp_secs: 1.5,
    threads: 4,
    swaps: 5,
    e2e_rounds: 3,
};

const SMOKE: Size = Size {
    rounds: 3,
    single: 2_000,
    repeat: 10_000,
    flows: &[1_000, 10_000],
    backends: &[2, 1000],
    tcp_secs: 0.5,
    udp_secs: 0.3,
    threads: 2,
    swaps: 1,
    e2e_rounds: 1,
};

/// One figure. `ratio` is to the first row of its group (the limit).
struct Row {
    group: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
    note: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Adds a row; the first row of a group is its limit (ratio 1).
    fn add(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) {
        let limit = self
            .rows
            .iter()
            .find(|r| r.group == group && r.value.is_finite())
            .map(|r| r.value);
        let ratio = match limit {
            _ if !value.is_finite() => None,
            Some(l) if l > 0.0 => Some(value / l),
            Some(_) => None,
            None => Some(1.0),
        };
        let row = Row {
            group,
            name: name.into(),
            value,
            unit,
            ratio,
            note: note.into(),
        };
        println!("  {}", fmt_row(&row));
        self.rows.push(row);
    }

    /// A contender that could not run: no value, the reason as its note.
    fn skip(&mut self, group: &'static str, name: impl Into<String>, why: impl Into<String>) {
        self.add(group, name, f64::NAN, "", why);
    }
}

fn fmt_row(r: &Row) -> String {
    let value = if r.value.is_finite() {
        format!("{:>12.1} {:<9}", r.value, r.unit)
    } else {
        format!("{:>12} {:<9}", "-", "")
    };
    let ratio = r
        .ratio
        .map(|x| {
            if x < 0.1 {
                format!("x{x:.4}")
            } else {
                format!("x{x:.2}")
            }
        })
        .unwrap_or_else(|| "-".into());
    format!("{:<44}{value}{ratio:>8}  {}", r.name, r.note)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let out = match args.iter().position(|a| a == "--out") {
        Some(i) => PathBuf::from(args.get(i + 1).expect("--out DIR")),
        None => std::env::var_os("CANARY_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/bench".into()),
    };
    let out = if smoke { out.join("smoke") } else { out };
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: canary-bench [--smoke] [--out DIR]   (root)");
        return;
    }
    match run(if smoke { SMOKE } else { FULL }, smoke, &out) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("canary-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(size: Size, smoke: bool, out: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    let mut report = Report::default();
    let mut failures = Vec::new();
    println!(
        "canary-bench{} on {} cores",
        if smoke { " --smoke" } else { "" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if let Err(e) = micro(size, &mut report) {
        eprintln!("canary-bench: per-packet part failed: {e:#}");
        failures.push(format!("per-packet: {e:#}"));
    }
    if let Err(e) = end_to_end(size, &mut report) {
        eprintln!("canary-bench: end-to-end part failed: {e:#}");
        failures.push(format!("end to end: {e:#}"));
    }
    let took = start.elapsed();
    println!("\ncanary-bench results ({:.1} s):", took.as_secs_f64());
    let mut groups: Vec<&str> = Vec::new();
    for r in &report.rows {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    for g in &groups {
        println!("{g}");
        for r in report.rows.iter().filter(|r| r.group == *g) {
            println!("  {}", fmt_row(r));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::json!({
        "smoke": smoke,
        "seconds": took.as_secs_f64(),
        "failures": failures,
        "results": report.rows.iter().map(|r| serde_json::json!({
            "group": r.group,
            "name": r.name,
            "value": if r.value.is_finite() { Some(r.value) } else { None },
            "unit": r.unit,
            "ratio_to_limit": r.ratio,
            "note": r.note,
        })).collect::<Vec<_>>(),
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let svg_path = out.join("results.svg");
    chart(&report, &svg_path)?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    if !failures.is_empty() {
        bail!("{} part(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Per-packet cost: a scratch namespace with LB-like interfaces and
// permanent neighbours, the real data plane loaded and configured.

const G_REP: &str = "per packet, BPF_PROG_TEST_RUN repeat=N (kernel mean), limit = xdp_pass";
const G_ONE: &str = "per packet, many repeat=1 runs (kernel mean), limit = xdp_pass";
const G_FLOWS: &str = "scaling: established packet vs flows in FLOWS, limit = smallest";
const G_BACKENDS: &str = "scaling: new-flow SYN vs backends per pool, limit = smallest";
const G_APPLY: &str = "control plane: DataPlane::apply of a config (in process), limit = smallest";

const LAB_VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const LAB_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 1);
const IFACES: [&str; 3] = ["lb-client", "lb-b1", "lb-b2"];

fn mac(i: u8, host: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, i, host]
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Backend I of a pool of the lab: 198.18.64.0/18 on lb-b1 (stable from
/// 198.18.64.2, canary from 198.18.96.2), all with permanent neighbours.
fn lab_backend(canary: bool, i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 18, if canary { 96 } else { 64 }, 2));
    Ipv4Addr::from(base + i as u32)
}

fn lab_config(backends: usize) -> String {
    let pool = |canary| {
        (0..backends)
            .map(|i| lab_backend(canary, i).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
interface: lb-client
backend_interfaces: [lb-b1, lb-b2]
services:
  - name: web
    vip: {LAB_VIP4}
    port: 80
    protocol: tcp
    affinity: flow
    canary_weight: 10
    stable: [{}]
    canary: [{}]
    overrides:
      - cidr: 198.18.24.0/24
        version: canary
  - name: web6
    vip: "{LAB_VIP6}"
    port: 80
    protocol: tcp
    affinity: flow
    canary_weight: 10
    stable: ["2001:db8:2::2", "2001:db8:2::3"]
    canary: ["2001:db8:2::4"]
"#,
        pool(false),
        pool(true)
    )
}

fn ip_batch(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn build_lab(ns: &Netns) -> Result<()> {
    let mut s = String::new();
    for (i, name) in IFACES.iter().enumerate() {
        let peer = name.replace("lb-", "lbp-");
        s += &format!(
            "link add {name} address {} type veth peer name {peer} address {}\n",
            mac_str(mac(i as u8, 1)),
            mac_str(mac(i as u8, 0xfe))
        );
    }
    ip_batch(&ns.name, &s)?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    for name in IFACES {
        ns.sysctl(
            &format!("net.ipv6.conf.{}.disable_ipv6", name.replace("lb-", "lbp-")),
            "1",
        )?;
    }
    let mut s = String::new();
    for name in IFACES {
        s += &format!(
            "link set {} up\nlink set {name} up\n",
            name.replace("lb-", "lbp-")
        );
    }
    let m0 = mac_str(mac(0, 2));
    s += "addr add 198.18.0.1/24 dev lb-client\naddr add 2001:db8::1/64 dev lb-client nodad\n";
    s += &format!("neigh add 198.18.0.2 lladdr {m0} dev lb-client nud permanent\n");
    s += &format!("neigh add 2001:db8::2 lladdr {m0} dev lb-client nud permanent\n");
    s += "route add 198.18.0.0/15 via 198.18.0.2 dev lb-client\n";
    s += "route add 2001:db8::/32 via 2001:db8::2 dev lb-client\n";
    s += "addr add 198.18.64.1/18 dev lb-b1\n";
    let m1 = mac_str(mac(1, 2));
    for canary in [false, true] {
        for i in 0..1000 {
            s += &format!(
                "neigh add {} lladdr {m1} dev lb-b1 nud permanent\n",
                lab_backend(canary, i)
            );
        }
    }
    s += "addr add 2001:db8:2::1/64 dev lb-b2 nodad\n";
    let m2 = mac_str(mac(2, 2));
    for h in 2..=4 {
        s += &format!("neigh add 2001:db8:2::{h} lladdr {m2} dev lb-b2 nud permanent\n");
    }
    ip_batch(&ns.name, &s)
}

fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let words = [0u32, len as u32, 0, ifindex, 0, 0];
    let mut b = [0u8; 24];
    for (i, w) in words.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// One test run: (action, kernel ns per repetition). An `xdp_md` ctx names
/// the ingress interface; a kernel that refuses it gets none.
fn test_run(prog: &Xdp, pkt: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, f64)> {
    static NO_CTX: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let mut out = vec![0u8; pkt.len() + 256];
    let ctx = xdp_md(pkt.len(), ifindex);
    let use_ctx = !NO_CTX.load(Ordering::Relaxed);
    let opts = TestRunOptions {
        data_in: Some(pkt),
        data_out: Some(&mut out),
        ctx_in: if use_ctx { Some(&ctx[..]) } else { None },
        repeat,
        ..TestRunOptions::new()
    };
    match prog.test_run(opts) {
        Ok(r) => Ok((r.return_value, r.duration.as_nanos() as f64)),
        Err(e) if use_ctx => {
            eprintln!("NOTE: the kernel refused an xdp_md ctx ({e}); running without");
            NO_CTX.store(true, Ordering::Relaxed);
            test_run(prog, pkt, ifindex, repeat)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Syn,
    Ack,
}

/// An Ethernet/IP/TCP frame arriving on lb-`side` (valid checksums).
fn tcp(side: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, kind: Kind) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2(mac(side, 2), mac(side, 1));
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let t = ip.tcp(sport, dport, 0x1000_0000, 64240);
    let (t, payload): (_, &[u8]) = match kind {
        Kind::Syn => (t.syn(), &[]),
        Kind::Ack => (
            t.ack(0x2000_0001).psh(),
            b"GET / HTTP/1.1\r\nHost: canary\r\n\r\n",
        ),
    };
    let mut v = Vec::new();
    t.write(&mut v, payload).unwrap();
    v
}

fn flow_key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
    FlowKey {
        src: to_words(src),
        dst: to_words(dst),
        sport: port_to_map(sport),
        dport: port_to_map(dport),
        proto: PROTO_TCP,
        family: family(src),
        _pad: [0; 2],
    }
}

/// A distinct IPv4 new-flow source for every n (< 2^24).
fn fresh_v4(n: usize) -> (IpAddr, u16) {
    (
        IpAddr::V4(Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8)),
        1024 + (n >> 16) as u16,
    )
}

struct Lab<'a> {
    size: Size,
    ifindex: [u32; 3],
    _ns: &'a Netns,
}

impl Lab<'_> {
    /// Kernel mean ns per packet over `single` repeat=1 runs on fresh
    /// packets from `mk`; median over rounds. Also the last action.
    fn single(
        &self,
        prog: &Xdp,
        side: usize,
        mk: &mut dyn FnMut(usize) -> Vec<u8>,
        n: &mut usize,
    ) -> Result<(f64, u32)> {
        let mut rounds = Vec::new();
        let mut action = 0;
        for _ in 0..self.size.rounds {
            let pkts: Vec<Vec<u8>> = (0..self.size.single)
                .map(|_| {
                    *n += 1;
                    mk(*n)
                })
                .collect();
            let mut sum = 0.0;
            for p in &pkts {
                let (a, ns) = test_run(prog, p, self.ifindex[side], 1)?;
                sum += ns;
                action = a;
            }
            rounds.push(sum / pkts.len() as f64);
        }
        Ok((median(rounds), action))
    }

    fn repeated(&self, prog: &Xdp, pkt: &[u8]) -> Result<(f64, u32)> {
        let mut v = Vec::new();
        let mut action = 0;
        for _ in 0..self.size.rounds {
            let (a, ns) = test_run(prog, pkt, self.ifindex[0], self.size.repeat)?;
            v.push(ns);
            action = a;
        }
        Ok((median(v), action))
    }

    fn load(&self, tag: &str, flows: u32, backends: usize) -> Result<(DataPlane, Duration)> {
        let instance = format!("cnry-{}-bench-{tag}", std::process::id());
        let mut dp = DataPlane::load(&instance, Some(flows))
            .with_context(|| format!("loading the data plane ({tag})"))?;
        let config = Config::parse(&lab_config(backends))?;
        let t = Instant::now();
        let applied = dp.apply(&config);
        let took = t.elapsed();
        if let Err(e) = applied {
            let _ = dp.teardown();
            return Err(e.context("applying the lab config"));
        }
        Ok((dp, took))
    }
}

/// Tears the data plane down (pins included) however `f` ends.
fn with_dp<R>(
    lab: &Lab,
    tag: &str,
    flows: u32,
    backends: usize,
    f: impl FnOnce(&mut DataPlane, Duration) -> Result<R>,
) -> Result<R> {
    let (mut dp, took) = lab.load(tag, flows, backends)?;
    let r = f(&mut dp, took);
    if let Err(e) = dp.teardown() {
        eprintln!("cleanup: teardown of {tag}: {e:#}");
    }
    let dir = canary_userspace::maps::pin_dir(&dp.instance);
    let _ = dataplane::remove_pins(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn action(a: u32) -> String {
    format!("XDP_{}", XDP_NAMES.get(a as usize).copied().unwrap_or("?"))
}

fn micro(size: Size, report: &mut Report) -> Result<()> {
    let ns = Netns::create(&format!("cnry-{}-bench", std::process::id()))?;
    build_lab(&ns)?;
    ns.run(|| -> Result<()> {
        let mut ifindex = [0u32; 3];
        for (i, name) in IFACES.iter().enumerate() {
            ifindex[i] = dataplane::ifindex(name)?;
        }
        let lab = Lab {
            size,
            ifindex,
            _ns: &ns,
        };
        micro_paths(&lab, report)?;
        micro_scaling(&lab, report)
    })
}

fn micro_paths(lab: &Lab, report: &mut Report) -> Result<()> {
    let size = lab.size;
    with_dp(lab, "paths", 1 << 21, 2, |dp, _| {
        // The xdp_pass program of the same object, as the floor.
        let instance = dp.instance.clone();
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(canary_userspace::maps::pin_dir(&instance))
            .load(dataplane::ebpf_object())?;
        let pass: &mut Xdp = ebpf
            .program_mut(dataplane::PASS_PROGRAM)
            .context("no xdp_pass")?
            .try_into()?;
        pass.load()?;
        let pass: &Xdp = ebpf.program(dataplane::PASS_PROGRAM).unwrap().try_into()?;
        let canary = dp.program()?;
        let vip = IpAddr::V4(LAB_VIP4);
        let client: IpAddr = "198.18.16.5".parse()?;
        let non_vip = tcp(0, client, 40000, "198.18.250.9".parse()?, 80, Kind::Syn);

        println!(
            "{G_REP} (repeat={}, median of {} rounds)",
            size.repeat, size.rounds
        );
        let (floor, _) = lab.repeated(pass, &non_vip)?;
        report.add(G_REP, "xdp_pass (floor)", floor, "ns/pkt", "");
        let (c, a) = lab.repeated(canary, &non_vip)?;
        report.add(G_REP, "canary, non-VIP packet", c, "ns/pkt", action(a));

        println!(
            "{G_ONE} ({} runs, median of {} rounds)",
            size.single, size.rounds
        );
        let mut n = 0usize;
        let (k, _) = lab.single(pass, 0, &mut |_| non_vip.clone(), &mut n)?;
        report.add(G_ONE, "xdp_pass (floor)", k, "ns/pkt", "");
        let (k, a) = lab.single(canary, 0, &mut |_| non_vip.clone(), &mut n)?;
        report.add(G_ONE, "canary, non-VIP packet", k, "ns/pkt", action(a));
        let mut n = 0usize;
        let (k, a) = lab.single(
            canary,
            0,
            &mut |n| {
                let (s, p) = fresh_v4(n);
                tcp(0, s, p, vip, 80, Kind::Syn)
            },
            &mut n,
        )?;
        report.add(
            G_ONE,
            "canary, new-flow TCP SYN (FLOWS miss)",
            k,
            "ns/pkt",
            format!("{}, distinct source per run", action(a)),
        );
        let (a, _) = test_run(
            canary,
            &tcp(0, client, 40000, vip, 80, Kind::Syn),
            lab.ifindex[0],
            1,
        )?;
        let ack = tcp(0, client, 40000, vip, 80, Kind::Ack);
        let (k, a2) = lab.single(canary, 0, &mut |_| ack.clone(), &mut n)?;
        report.add(
            G_ONE,
            "canary, established packet (FLOWS hit)",
            k,
            "ns/pkt",
            format!("{} (SYN: {})", action(a2), action(a)),
        );
        // The established connection's own backend answers (a reply from
        // another backend would not be this connection's).
        let entry = dp.maps.flows.get(&flow_key(client, 40000, vip, 80), 0)?;
        let info = dp.maps.backends.get(&entry.backend_id, 0)?;
        let backend = canary_common::addr::from_words(info.addr, info.family as u8);
        let reply = tcp(1, backend, 80, client, 40000, Kind::Ack);
        let (k, a) = lab.single(canary, 1, &mut |_| reply.clone(), &mut n)?;
        report.add(
            G_ONE,
            "canary, backend reply (reverse NAT)",
            k,
            "ns/pkt",
            action(a),
        );
        let mut n = 0usize;
        let (k, a) = lab.single(
            canary,
            0,
            &mut |n| {
                let s = IpAddr::V4(Ipv4Addr::new(198, 18, 24, n as u8));
                tcp(0, s, 1024 + (n >> 8) as u16, vip, 80, Kind::Syn)
            },
            &mut n,
        )?;
        report.add(
            G_ONE,
            "canary, override hit (new-flow SYN)",
            k,
            "ns/pkt",
            format!("{}, source in 198.18.24.0/24", action(a)),
        );
        let mut n = 0usize;
        let vip6 = IpAddr::V6(LAB_VIP6);
        let (k, a) = lab.single(
            canary,
            0,
            &mut |n| {
                let s = IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0x1000,
                    0,
                    0,
                    0,
                    (n >> 16) as u16,
                    n as u16,
                ));
                tcp(0, s, 40000, vip6, 80, Kind::Syn)
            },
            &mut n,
        )?;
        report.add(G_ONE, "canary, IPv6 new-flow SYN", k, "ns/pkt", action(a));
        drop(ebpf);
        Ok(())
    })
}

fn micro_scaling(lab: &Lab, report: &mut Report) -> Result<()> {
    let size = lab.size;
    println!("{G_FLOWS}");
    for &flows in size.flows {
        // 25 % headroom: an LRU map evicts before it is full.
        let table = (flows + flows / 4).max(1024);
        with_dp(lab, &format!("flows{flows}"), table, 2, |dp, _| {
            let ids = dp.ids();
            let sid = *ids.services.get("web").context("no service web")?;
            let bid = *ids
                .backends
                .get(&(sid, IpAddr::V4(lab_backend(false, 0))))
                .context("no backend id")?;
            let state = FlowState {
                backend_id: bid,
                version: 0,
                service_id: sid,
                ..FlowState::default()
            };
            let vip = IpAddr::V4(LAB_VIP4);
            let t = Instant::now();
            for i in 0..flows as usize {
                let (s, p) = fresh_v4(i);
                dp.maps.flows.insert(flow_key(s, p, vip, 80), state, 0)?;
            }
            let fill = t.elapsed();
            let stats0 =
                dp.maps.version_stats(sid, 0)?.new_flows + dp.maps.version_stats(sid, 1)?.new_flows;
            // Established packets of pre-filled flows, spread over the table.
            // One untimed pass first: a connection's first packet looks its
            // route up and caches the next hop in its flow entry; the timed
            // pass is the steady state (a flow pays one lookup per second,
            // when its cached next hop ages out).
            let step = (flows as usize / size.single.max(1)).max(1) | 1;
            let canary = dp.program()?;
            let mut established = |n: usize| {
                let (s, p) = fresh_v4((n * step) % flows as usize);
                tcp(0, s, p, vip, 80, Kind::Ack)
            };
            let mut warm = 0usize;
            lab.single(canary, 0, &mut established, &mut warm)?;
            let mut n = 0usize;
            let (k, a) = lab.single(canary, 0, &mut established, &mut n)?;
            let stats1 =
                dp.maps.version_stats(sid, 0)?.new_flows + dp.maps.version_stats(sid, 1)?.new_flows;
            let misses = stats1 - stats0;
            report.add(
                G_FLOWS,
                format!("established, {flows} flows (table {table})"),
                k,
                "ns/pkt",
                format!(
                    "{}, {misses} misses of {n}, filled in {:.1} s",
                    action(a),
                    fill.as_secs_f64()
                ),
            );
            Ok(())
        })?;
    }
    println!("{G_BACKENDS}");
    let mut applies = Vec::new();
    for &b in size.backends {
        with_dp(lab, &format!("backends{b}"), 1 << 21, b, |dp, took| {
            applies.push((b, took));
            let canary = dp.program()?;
            let vip = IpAddr::V4(LAB_VIP4);
            let mut n = 0usize;
            let (k, a) = lab.single(
                canary,
                0,
                &mut |n| {
                    let (s, p) = fresh_v4(n);
                    tcp(0, s, p, vip, 80, Kind::Syn)
                },
                &mut n,
            )?;
            report.add(
                G_BACKENDS,
                format!("new-flow SYN, {b} backends per pool"),
                k,
                "ns/pkt",
                action(a),
            );
            Ok(())
        })?;
    }
    println!("{G_APPLY}");
    for (b, took) in applies {
        report.add(
            G_APPLY,
            format!("first apply, {b} backends per pool"),
            took.as_secs_f64() * 1e3,
            "ms",
            "2 pools, Maglev tables built and written",
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// End to end in the namespace topology.

const G_TCP: &str =
    "end to end: new TCP connections/s (connect, banner, close), limit = plain routing";
const G_CPU: &str =
    "end to end: host CPU per TCP connection (all namespaces, /proc/stat), limit = plain routing";
const G_UDP: &str = "end to end: UDP request/replies per second, limit = plain routing";
const G_SEEN: &str = "control plane: weight change seen by new connections, limit = design bound";
const G_CTL: &str =
    "control plane: canaryd reload, SIGHUP -> 'canaryd applied config', limit = weight-only change";

const VIP_TCP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
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

fn canary_config(weight: f64, stable: &[String]) -> String {
    format!(
        r#"
interface: lb-client
backend_interfaces: [lb-b1, lb-b2, lb-b3]
services:
  - name: shop
    vip: {VIP_TCP}
    port: 80
    protocol: tcp
    affinity: source-ip
    canary_weight: {weight}
    stable: [{}]
    canary: [198.18.3.2]
  - name: shop-udp
    vip: {VIP_UDP}
    port: 80
    protocol: udp
    affinity: flow
    canary_weight: 10
    stable: [198.18.1.2, 198.18.2.2]
    canary: [198.18.3.2]
"#,
        stable.join(", ")
    )
}

fn default_stable() -> Vec<String> {
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

fn end_to_end(size: Size, report: &mut Report) -> Result<()> {
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

/// Connections from fresh sources until one lands on b3 (bounded): the
/// time from `since` to that connection.
fn first_canary(topo: &Topology, base: u32, since: Instant) -> Option<Duration> {
    let dst = SocketAddr::new(VIP_TCP.into(), 80);
    topo.client.run(|| {
        for i in 0..2000u32 {
            if since.elapsed() > Duration::from_secs(3) {
                return None;
            }
            if let Ok(c) = tcp_connect(
                client_v4((base + i) % 4096),
                dst,
                Duration::from_millis(500),
            ) {
                if c.backend == "b3" {
                    return Some(since.elapsed());
                }
            }
        }
        None
    })
}

fn control_plane(
    size: Size,
    report: &mut Report,
    topo: &Topology,
    d: &mut canary_tests::Daemon,
) -> Result<()> {
    println!("{G_SEEN}");
    report.add(
        G_SEEN,
        "design bound (DESIGN.md: weight 0 within a second)",
        1000.0,
        "ms",
        "",
    );
    let reload = |d: &mut canary_tests::Daemon, yaml: &str| -> Result<Duration> {
        let t = Instant::now();
        d.reload(yaml)?
            .map_err(|e| anyhow!("reload rejected: {e}"))?;
        Ok(t.elapsed())
    };
    // Weight 0 -> 100 through canaryctl, then the same through SIGHUP reload.
    reload(d, &canary_config(0.0, &default_stable()))?;
    let out = topo.canaryctl(&["set-weight", "shop", "100"], None)?;
    let returned = Instant::now();
    anyhow::ensure!(
        out.status.success(),
        "canaryctl set-weight: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let via_ctl = first_canary(topo, 100, returned).context(
        "no new connection reached canary within 3 s of `canaryctl set-weight shop 100`",
    )?;
    // Back to the config's weight: canaryctl again (a reload would keep the
    // run-time weight while the file's value is unchanged).
    let out = topo.canaryctl(&["set-weight", "shop", "0"], None)?;
    anyhow::ensure!(out.status.success(), "canaryctl set-weight 0");
    let took = reload(d, &canary_config(100.0, &default_stable()))?;
    let applied = Instant::now();
    let first = first_canary(topo, 200, applied);
    report.add(
        G_SEEN,
        "canaryctl set-weight returned -> first new conn on it",
        via_ctl.as_secs_f64() * 1e3,
        "ms",
        "",
    );
    match first {
        Some(t) => report.add(
            G_SEEN,
            "SIGHUP reload -> first new conn on it",
            (took + t).as_secs_f64() * 1e3,
            "ms",
            format!(
                "{:.2} ms to 'applied config', then {:.2} ms",
                took.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3
            ),
        ),
        None => report.skip(
            G_SEEN,
            "SIGHUP reload -> first new conn on it",
            "no connection reached canary within 3 s",
        ),
    }
    println!("{G_CTL}");
    report.add(
        G_CTL,
        "weight change only (0 -> 100 %)",
        took.as_secs_f64() * 1e3,
        "ms",
        "",
    );
    // Maglev swap: the stable pool becomes 1000 backends (two alternating
    // sets, so each reload really changes the table), timed SIGHUP -> applied.
    let pool = |shift: u32| -> Vec<String> {
        let mut v = default_stable();
        for i in 0..998u32 {
            v.push(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 2)) + i + shift).to_string(),
            );
        }
        v
    };
    let mut times = Vec::new();
    for k in 0..size.swaps.max(1) {
        times.push(reload(d, &canary_config(10.0, &pool((k % 2) as u32)))?.as_secs_f64() * 1e3);
    }
    let n = times.len();
    report.add(
        G_CTL,
        "swap to a 1000-backend stable pool (Maglev)",
        median(times),
        "ms",
        format!("median of {n}"),
    );
    reload(d, &canary_config(10.0, &default_stable()))?;
    // Still forwarding after the swaps.
    let c = topo.client.run(|| {
        tcp_connect(
            client_v4(3333),
            SocketAddr::new(VIP_TCP.into(), 80),
            Duration::from_secs(2),
        )
    });
    if let Err(e) = c {
        bail!("no connection through canary after the swaps: {e:#}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The chart: one bar per figure, its ratio to the limit of its group.

fn chart(report: &Report, path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let rows: Vec<&Row> = report.rows.iter().collect();
    let line = 20i32;
    let mut height = 60i32;
    let mut last = "";
    for r in &rows {
        if r.group != last {
            height += line + 6;
            last = r.group;
        }
        height += line;
    }
    let width = 1200i32;
    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    let e = |e| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let title = ("sans-serif", 18).into_font();
    let label = ("sans-serif", 12).into_font();
    let head = ("sans-serif", 13).into_font().style(FontStyle::Bold);
    root.draw(&Text::new("canary-bench: each figure as a ratio to the limit of its group (bar = 1.0 at the grey line)", (10, 10), title)).map_err(e)?;
    let (x0, x1) = (470i32, width - 160);
    let max = rows
        .iter()
        .filter_map(|r| r.ratio)
        .fold(1.0f64, f64::max)
        .min(50.0);
    let scale = |v: f64| x0 + ((v.min(max) / max) * (x1 - x0) as f64) as i32;
    let mut y = 44;
    let mut last = "";
    for r in &rows {
        if r.group != last {
            y += 6;
            root.draw(&Text::new(r.group.to_string(), (10, y), head.clone()))
                .map_err(e)?;
            y += line;
            last = r.group;
        }
        root.draw(&Text::new(r.name.clone(), (20, y), label.clone()))
            .map_err(e)?;
        match r.ratio {
            Some(ratio) => {
                let color = if ratio <= 1.0 + 1e-9 {
                    RGBColor(80, 140, 200)
                } else {
                    RGBColor(220, 120, 60)
                };
                root.draw(&Rectangle::new(
                    [(x0, y + 2), (scale(ratio), y + line - 4)],
                    color.filled(),
                ))
                .map_err(e)?;
                let text = format!("x{ratio:.2}  ({:.1} {})", r.value, r.unit);
                root.draw(&Text::new(text, (scale(ratio) + 6, y), label.clone()))
                    .map_err(e)?;
            }
            None => {
                root.draw(&Text::new(
                    format!("n/a: {}", r.note),
                    (x0, y),
                    label.clone(),
                ))
                .map_err(e)?;
            }
        }
        y += line;
    }
    let one = scale(1.0);
    root.draw(&PathElement::new(
        vec![(one, 40), (one, height - 10)],
        RGBColor(150, 150, 150),
    ))
    .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
