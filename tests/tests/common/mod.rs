//! Shared set-up for the `BPF_PROG_TEST_RUN` tests: a throw-away network
//! namespace with LB-like veth interfaces, the real data plane loaded and
//! configured inside it, and independent packet builders and checksum checks
//! (etherparse builds, an RFC 1071 sum written here verifies; nothing here
//! uses `canary_common::checksum`, the code under test).
//!
//! Topology inside `cnry-<pid>-ptr-<n>` (only 198.18.0.0/15 and 2001:db8::/32):
//!
//! ```text
//!   lb-client  198.18.0.1/24  2001:db8::1/64    peer lbp-client
//!              upstream router 198.18.0.2 / 2001:db8::2 (permanent neighbour,
//!              MAC 02:00:00:00:00:02); 198.18.0.0/15 and 2001:db8::/32 via it
//!   lb-bI      198.18.I.1/24  2001:db8:I::1/64  peer lbp-bI      (I = 1, 2, 3)
//!              backend 198.18.I.2 / 2001:db8:I::2 (permanent neighbour,
//!              MAC 02:00:00:00:0I:02)
//!   lb-X MAC   02:00:00:00:0X:01 (X = 0 for lb-client)
//! ```
//!
//! The peers have IPv6 disabled and no addresses, so nothing but the test's
//! own `BPF_PROG_TEST_RUN` packets reaches the attached program and the
//! counters can be asserted exactly.
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use canary_common::{reason, FlowKey, FlowState, VersionStats};
use canary_userspace::config::Config;
use canary_userspace::dataplane::DataPlane;
use canary_userspace::maps::pin_dir;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const ETH_HLEN: usize = 14;

/// MAC of an LB interface: `lb-client` is 0, `lb-bI` is I.
pub fn mac_lb(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, i, 0x01]
}
/// MAC of the neighbour behind an LB interface: the upstream router (0) or
/// backend I.
pub fn mac_nbr(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, i, 0x02]
}
fn mac_peer(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, i, 0xfe]
}
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An interface name and its index in 0..=3.
pub const IFACES: [&str; 4] = ["lb-client", "lb-b1", "lb-b2", "lb-b3"];

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
/// 0 unknown, 1 the kernel accepts an `xdp_md` ctx, 2 it does not.
static CTX_SUPPORT: AtomicU8 = AtomicU8::new(0);

fn ip(ns: Option<&str>, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn ip_batch(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Owns the named network namespace: deleted on drop, even on a panic.
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn create(name: &str) -> Result<NetnsGuard> {
        // A leftover of a killed earlier run with the same pid is ours too.
        let _ = ip(None, &["netns", "del", name]);
        ip(None, &["netns", "add", name])?;
        Ok(NetnsGuard {
            name: name.to_string(),
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = ip(None, &["netns", "del", &self.name]) {
            eprintln!("cleanup: deleting netns {}: {e:#}", self.name);
        }
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {path}"))
}

/// Builds the topology in `ns`. Must run on a thread that has entered `ns`
/// (the sysctls are written through /proc/sys of the calling thread).
fn build_topology(ns: &str) -> Result<()> {
    let mut s = String::new();
    for (i, name) in IFACES.iter().enumerate() {
        let i = i as u8;
        let peer = name.replace("lb-", "lbp-");
        s += &format!(
            "link add {name} address {} type veth peer name {peer} address {}\n",
            mac_str(mac_lb(i)),
            mac_str(mac_peer(i))
        );
    }
    ip_batch(ns, &s)?;
    write_sysctl("/proc/sys/net/ipv4/conf/all/forwarding", "1")?;
    write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    for name in IFACES {
        let peer = name.replace("lb-", "lbp-");
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{peer}/disable_ipv6"), "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/forwarding"), "1")?;
    }
    let mut s = String::new();
    for (i, name) in IFACES.iter().enumerate() {
        let peer = name.replace("lb-", "lbp-");
        s += &format!("link set {peer} up\nlink set {name} up\n");
        let (v4, v6) = if i == 0 {
            ("198.18.0".to_string(), "2001:db8:".to_string())
        } else {
            (format!("198.18.{i}"), format!("2001:db8:{i}:"))
        };
        s += &format!("addr add {v4}.1/24 dev {name}\n");
        s += &format!("addr add {v6}:1/64 dev {name} nodad\n");
        let mac = mac_str(mac_nbr(i as u8));
        s += &format!("neigh add {v4}.2 lladdr {mac} dev {name} nud permanent\n");
        s += &format!("neigh add {v6}:2 lladdr {mac} dev {name} nud permanent\n");
    }
    s += "route add 198.18.0.0/15 via 198.18.0.2 dev lb-client\n";
    s += "route add 2001:db8::/32 via 2001:db8::2 dev lb-client\n";
    ip_batch(ns, &s)
}

/// The data plane under test inside its namespace. Dropping it detaches
/// the program and removes the pins; it must be dropped on the thread that
/// entered the namespace (the `run_lab` thread does).
pub struct Lab {
    pub ns: String,
    pub instance: String,
    dp: Option<DataPlane>,
    pub config: Config,
    pub ifindex: [u32; 4],
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut dp) = self.dp.take() {
            if let Err(e) = dp.teardown() {
                eprintln!("cleanup: teardown of {}: {e:#}", self.instance);
            }
        }
        let dir = pin_dir(&self.instance);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("cleanup: removing {}: {e}", dir.display());
            }
        }
        if let Some(parent) = dir.parent() {
            // Only if empty: other instances may live there.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Creates a fresh namespace `cnry-<pid>-ptr-<n>`, enters it on a dedicated
/// thread, builds the topology, loads and applies `config_yaml`, and runs
/// `body`. Everything is cleaned up however `body` ends; a panic in `body`
/// is re-raised here.
pub fn run_lab<F>(config_yaml: &str, flow_table_size: Option<u32>, body: F)
where
    F: FnOnce(&mut Lab) + Send + 'static,
{
    let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let ns = format!("cnry-{pid}-ptr-{n}");
    let instance = format!("cnry-{pid}-ptr-{n}");
    let guard = NetnsGuard::create(&ns).expect("creating the test netns");
    let yaml = config_yaml.to_string();
    let thread_ns = ns.clone();
    let handle = std::thread::Builder::new()
        .name(ns.clone())
        .spawn(move || {
            let file = std::fs::File::open(format!("/var/run/netns/{thread_ns}"))
                .expect("opening the netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the test netns");
            drop(file);
            build_topology(&thread_ns).expect("building the topology");
            let config = Config::parse(&yaml).expect("test config");
            let mut ifindex = [0u32; 4];
            for (i, name) in IFACES.iter().enumerate() {
                ifindex[i] = canary_userspace::dataplane::ifindex(name).unwrap();
            }
            let mut lab = Lab {
                ns: thread_ns,
                instance: instance.clone(),
                dp: None,
                config: config.clone(),
                ifindex,
            };
            lab.dp = Some(DataPlane::load(&instance, flow_table_size).expect("loading"));
            lab.apply_config(config);
            body(&mut lab);
            // `lab` drops here, inside the namespace.
        })
        .expect("spawning the lab thread");
    let result = handle.join();
    drop(guard);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub duration_ns: u64,
}

/// The 24-byte `struct xdp_md` the kernel takes as `ctx_in` for XDP. The
/// kernel wants `data_end` = the input length and `data` = the length of
/// the metadata in front of the frame (a multiple of 4, at most 32; usually 0).
pub fn xdp_md(meta_len: usize, len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let words = [meta_len as u32, len as u32, 0, ingress_ifindex, 0, 0];
    let mut b = [0u8; 24];
    for (i, w) in words.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// One `BPF_PROG_TEST_RUN` with exactly these inputs. The output holds the
/// metadata (if any) followed by the frame.
pub fn test_run_raw(
    prog: &Xdp,
    data_in: &[u8],
    ctx: Option<&[u8; 24]>,
    repeat: u32,
) -> Result<Run> {
    let mut out = vec![0u8; data_in.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(data_in),
        data_out: Some(&mut out),
        ctx_in: ctx.map(|c| &c[..]),
        ctx_out: None,
        repeat,
        ..TestRunOptions::new()
    };
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok(Run {
        action: r.return_value,
        out,
        duration_ns: r.duration.as_nanos() as u64,
    })
}

/// Runs `prog` once (or `repeat` times on the same buffer) on `pkt` as if it
/// arrived on `ingress_ifindex`. Uses an `xdp_md` ctx when the kernel takes
/// one, else none (then the ingress device is the namespace's loopback).
pub fn test_run(prog: &Xdp, pkt: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<Run> {
    let ctx = xdp_md(0, pkt.len(), ingress_ifindex);
    match CTX_SUPPORT.load(Ordering::Relaxed) {
        1 => test_run_raw(prog, pkt, Some(&ctx), repeat),
        2 => test_run_raw(prog, pkt, None, repeat),
        _ => match test_run_raw(prog, pkt, Some(&ctx), repeat) {
            Ok(r) => {
                CTX_SUPPORT.store(1, Ordering::Relaxed);
                Ok(r)
            }
            Err(e) => {
                // Maybe this kernel refuses the ctx, maybe it refuses this
                // packet: try without to find out.
                let r = test_run_raw(prog, pkt, None, repeat).map_err(|e2| {
                    anyhow::anyhow!("test run failed with ctx ({e:#}) and without ({e2:#})")
                })?;
                eprintln!("NOTE: the kernel refused an xdp_md ctx ({e:#}); running without");
                CTX_SUPPORT.store(2, Ordering::Relaxed);
                Ok(r)
            }
        },
    }
}

pub fn ctx_supported() -> bool {
    CTX_SUPPORT.load(Ordering::Relaxed) == 1
}

impl Lab {
    pub fn dp(&self) -> &DataPlane {
        self.dp.as_ref().unwrap()
    }

    pub fn dp_mut(&mut self) -> &mut DataPlane {
        self.dp.as_mut().unwrap()
    }

    pub fn apply_config(&mut self, config: Config) {
        self.dp_mut().apply(&config).expect("applying the config");
        self.config = config;
    }

    pub fn apply_yaml(&mut self, yaml: &str) {
        self.apply_config(Config::parse(yaml).expect("test config"));
    }

    /// Runs the canary program once on `pkt` arriving on `IFACES[iface]`.
    pub fn run(&self, pkt: &[u8], iface: usize) -> Run {
        test_run(self.dp().program().unwrap(), pkt, self.ifindex[iface], 1)
            .expect("BPF_PROG_TEST_RUN")
    }

    pub fn datapath(&self) -> [u64; reason::COUNT as usize] {
        self.dp().maps.datapath_stats().unwrap()
    }

    pub fn sid(&self, service: &str) -> u32 {
        *self
            .dp()
            .ids()
            .services
            .get(service)
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    pub fn service(&self, name: &str) -> &canary_userspace::config::ServiceConfig {
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    pub fn vstats(&self, service: &str, version: u32) -> VersionStats {
        self.dp()
            .maps
            .version_stats(self.sid(service), version)
            .unwrap()
    }

    pub fn backend_id(&self, service: &str, addr: IpAddr) -> u32 {
        let sid = self.sid(service);
        *self
            .dp()
            .ids()
            .backends
            .get(&(sid, addr))
            .unwrap_or_else(|| panic!("no backend {addr} in {service}"))
    }

    /// The backend address of an id, from the ids user space handed out.
    pub fn backend_addr(&self, id: u32) -> IpAddr {
        self.dp()
            .ids()
            .backends
            .iter()
            .find(|(_, v)| **v == id)
            .map(|((_, a), _)| *a)
            .unwrap_or_else(|| panic!("no backend id {id}"))
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowState> {
        self.dp().maps.flows.get(key, 0).ok()
    }
}

/// Asserts that exactly the listed reasons moved, each by the given amount.
pub fn assert_reasons(
    before: &[u64; reason::COUNT as usize],
    after: &[u64; reason::COUNT as usize],
    expected: &[(u32, u64)],
    what: &str,
) {
    for r in 0..reason::COUNT {
        let want = expected
            .iter()
            .filter(|(e, _)| *e == r)
            .map(|(_, n)| *n)
            .sum::<u64>();
        let got = after[r as usize] - before[r as usize];
        assert_eq!(
            got,
            want,
            "{what}: DATAPATH_STATS[{}] moved by {got}, expected {want}",
            reason::NAMES[r as usize]
        );
    }
}

/// The flow key of a client -> VIP packet, as the data plane stores it.
pub fn flow_key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    use canary_common::addr::{family, port_to_map, to_words};
    FlowKey {
        src: to_words(src),
        dst: to_words(dst),
        sport: port_to_map(sport),
        dport: port_to_map(dport),
        proto,
        family: family(src),
        _pad: [0; 2],
    }
}

// ---------------------------------------------------------------------------
// Packets (built with etherparse; valid checksums as built).

pub const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: canary\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    /// ACK carrying a payload (an established packet).
    Ack,
    SynAck,
    /// A reset (with ACK), as a backend sends it.
    Rst,
}

fn tcp_step(
    b: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    sport: u16,
    dport: u16,
    kind: Tcp,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    let t = b.tcp(sport, dport, 0x1000_0000, 64240);
    match kind {
        Tcp::Syn => t.syn(),
        Tcp::Ack => t.ack(0x2000_0001).psh(),
        Tcp::SynAck => t.syn().ack(0x1000_0001),
        Tcp::Rst => t.rst().ack(0x1000_0001),
    }
}

fn l3(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = etherparse::PacketBuilder::ethernet2(eth_src, eth_dst);
    match (vlan, src, dst) {
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), ttl),
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), ttl),
        (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => eth
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv4(s.octets(), d.octets(), ttl),
        (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => eth
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed address families"),
    }
}

/// A TCP frame as it arrives from outside: `side` is the interface index
/// (0 = client side: from the upstream router to lb-client; I = from backend
/// I to lb-bI).
pub fn tcp(side: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, kind: Tcp) -> Vec<u8> {
    tcp_full(side, None, src, sport, dst, dport, kind, 64)
}

#[allow(clippy::too_many_arguments)]
pub fn tcp_full(
    side: u8,
    vlan: Option<u16>,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    kind: Tcp,
    ttl: u8,
) -> Vec<u8> {
    let b = tcp_step(
        l3(mac_nbr(side), mac_lb(side), vlan, src, dst, ttl),
        sport,
        dport,
        kind,
    );
    let payload: &[u8] = if kind == Tcp::Ack { HTTP_GET } else { &[] };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A UDP frame; `zero_checksum` clears the (IPv4) UDP checksum ("none").
pub fn udp(
    side: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let b = l3(mac_nbr(side), mac_lb(side), None, src, dst, 64).udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    if zero_checksum {
        let l4 = l4_offset(&v).unwrap().1;
        v[l4 + 6] = 0;
        v[l4 + 7] = 0;
    }
    v
}

pub fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}
pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

// ---------------------------------------------------------------------------
// Independent checksum verification (RFC 1071) and expected rewrites.

/// One's-complement sum of 16-bit big-endian words, not yet folded.
pub fn rfc1071_sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// (ethertype, L3 offset) after at most one 802.1Q tag.
pub fn l3_offset(f: &[u8]) -> Option<(u16, usize)> {
    let et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    if et == 0x8100 {
        Some((u16::from_be_bytes([*f.get(16)?, *f.get(17)?]), 18))
    } else {
        Some((et, 14))
    }
}

/// (protocol, L4 offset, L4 length) of a well-formed IPv4/IPv6 frame
/// (IPv6 without extension headers).
pub fn l4_offset(f: &[u8]) -> Option<(u8, usize, usize)> {
    let (et, l3) = l3_offset(f)?;
    match et {
        0x0800 => {
            let ihl = (f[l3] & 0x0f) as usize * 4;
            let tot = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
            Some((f[l3 + 9], l3 + ihl, tot - ihl))
        }
        0x86dd => {
            let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
            Some((f[l3 + 6], l3 + 40, plen))
        }
        _ => None,
    }
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum of a frame with
/// an RFC 1071 sum over the pseudo-header and the segment. A UDP checksum of
/// 0 over IPv4 means "none" and is accepted.
pub fn verify_checksums(f: &[u8]) -> Result<(), String> {
    let (et, l3) = l3_offset(f).ok_or("no ethertype")?;
    let (proto, l4, l4len) = l4_offset(f).ok_or("not IP")?;
    if l4 + l4len > f.len() {
        return Err(format!("L4 length {l4len} beyond the frame"));
    }
    let seg = &f[l4..l4 + l4len];
    let pseudo_sum = if et == 0x0800 {
        let hdr = &f[l3..l4];
        if fold(rfc1071_sum(hdr, 0)) != 0xffff {
            return Err(format!(
                "IPv4 header checksum {:#06x} invalid",
                u16::from_be_bytes([hdr[10], hdr[11]])
            ));
        }
        let mut p = Vec::new();
        p.extend_from_slice(&f[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4len as u16).to_be_bytes());
        rfc1071_sum(&p, 0)
    } else {
        let mut p = Vec::new();
        p.extend_from_slice(&f[l3 + 8..l3 + 40]);
        p.extend_from_slice(&(l4len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
        rfc1071_sum(&p, 0)
    };
    let csum_at = match proto {
        6 => 16,
        17 => 6,
        _ => return Ok(()),
    };
    let stored = u16::from_be_bytes([seg[csum_at], seg[csum_at + 1]]);
    if proto == 17 && et == 0x0800 && stored == 0 {
        return Ok(());
    }
    if proto == 17 && et == 0x86dd && stored == 0 {
        return Err("UDP over IPv6 with checksum 0".into());
    }
    let total = fold(rfc1071_sum(seg, pseudo_sum));
    if total != 0xffff {
        return Err(format!(
            "{} checksum {stored:#06x} invalid (sum {total:#06x})",
            if proto == 6 { "TCP" } else { "UDP" }
        ));
    }
    Ok(())
}

/// Byte ranges of the checksum fields (IPv4 header, TCP/UDP).
pub fn checksum_fields(f: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut v = Vec::new();
    if let (Some((et, l3)), Some((proto, l4, _))) = (l3_offset(f), l4_offset(f)) {
        if et == 0x0800 {
            v.push(l3 + 10..l3 + 12);
        }
        match proto {
            6 => v.push(l4 + 16..l4 + 18),
            17 => v.push(l4 + 6..l4 + 8),
            _ => {}
        }
    }
    v
}

/// What a rewrite should have changed; everything else stays byte-identical.
#[derive(Default, Clone, Copy)]
pub struct Rewrite {
    pub dst: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub ttl_dec: bool,
    /// (Ethernet destination, Ethernet source).
    pub macs: Option<([u8; 6], [u8; 6])>,
}

/// `input` with `rw` applied, checksum fields as in `input`.
pub fn expected(input: &[u8], rw: Rewrite) -> Vec<u8> {
    let mut e = input.to_vec();
    let (et, l3) = l3_offset(input).unwrap();
    let (src_at, dst_at, ttl_at) = if et == 0x0800 {
        (l3 + 12, l3 + 16, l3 + 8)
    } else {
        (l3 + 8, l3 + 24, l3 + 7)
    };
    let put = |e: &mut Vec<u8>, at: usize, a: IpAddr| match a {
        IpAddr::V4(a) => e[at..at + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => e[at..at + 16].copy_from_slice(&a.octets()),
    };
    if let Some(d) = rw.dst {
        put(&mut e, dst_at, d);
    }
    if let Some(s) = rw.src {
        put(&mut e, src_at, s);
    }
    if rw.ttl_dec {
        e[ttl_at] -= 1;
    }
    if let Some((d, s)) = rw.macs {
        e[0..6].copy_from_slice(&d);
        e[6..12].copy_from_slice(&s);
    }
    e
}

/// Asserts `out` equals `input` with `rw` applied, byte for byte outside the
/// checksum fields, and that its checksums are valid.
pub fn assert_rewritten(out: &[u8], input: &[u8], rw: Rewrite, what: &str) {
    let mut want = expected(input, rw);
    assert_eq!(out.len(), want.len(), "{what}: output length");
    for r in checksum_fields(&want) {
        want[r.clone()].copy_from_slice(&out[r]);
    }
    assert_eq!(
        hex(out),
        hex(&want),
        "{what}: output differs outside the checksum fields"
    );
    if let Err(e) = verify_checksums(out) {
        panic!("{what}: {e}\n{}", hex(out));
    }
}

/// The destination address of an IPv4/IPv6 frame.
pub fn dst_addr(f: &[u8]) -> IpAddr {
    let (et, l3) = l3_offset(f).unwrap();
    if et == 0x0800 {
        IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&f[l3 + 16..l3 + 20]).unwrap(),
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap(),
        ))
    }
}

pub fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lb-bI interface index (1..=3) whose subnet holds backend `a`.
pub fn backend_side(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(a) => a.octets()[2],
        IpAddr::V6(a) => a.segments()[2] as u8,
    }
}
