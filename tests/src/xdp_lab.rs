//! The single-namespace lab for `BPF_PROG_TEST_RUN` (tests and the bench's
//! per-packet part): LB-like veth interfaces with permanent neighbours, the
//! real data plane loaded and configured inside, so `bpf_fib_lookup`
//! resolves real routes and the MAC rewrite can be checked byte for byte.
//!
//! Standard addressing inside `cnry-<pid>-ptr-<n>` (only 198.18.0.0/15 and
//! 2001:db8::/32):
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
//! The peers have IPv6 disabled and no addresses, so nothing but the
//! caller's own `BPF_PROG_TEST_RUN` packets reaches the attached program and
//! the counters can be asserted exactly.

use crate::netns::Netns;
use crate::packet::{mac_lb, mac_nbr, mac_peer, mac_str};
use crate::prog_run::{test_run, Run};
use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use canary_common::addr::to_words;
use canary_common::{
    names, reason, FlowKey, FlowState, LocalAddrKey, NextHop, Settings, VersionStats,
};
use canary_userspace::config::{Config, ServiceConfig};
use canary_userspace::dataplane::maps::pin_dir;
use canary_userspace::dataplane::DataPlane;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// The LB interfaces, index = side (0 = client side, I = backend side I).
pub const IFACES: [&str; 4] = ["lb-client", "lb-b1", "lb-b2", "lb-b3"];

fn peer(name: &str) -> String {
    name.replace("lb-", "lbp-")
}

/// Creates the veth pairs of the first `n` of `IFACES` in `ns` (forwarding
/// on, IPv6 off on the peers), brings them up, then runs `addressing` (an
/// `ip -batch` script: addresses, neighbours, routes).
pub fn build_lb_namespace(ns: &Netns, n: usize, addressing: &str) -> Result<()> {
    let ifaces = &IFACES[..n];
    let mut s = String::new();
    for (i, name) in ifaces.iter().enumerate() {
        s += &format!(
            "link add {name} address {} type veth peer name {} address {}\n",
            mac_str(mac_lb(i as u8)),
            peer(name),
            mac_str(mac_peer(i as u8))
        );
    }
    ns.ip_batch(&s)?;
    // Through /proc/sys of a thread inside the namespace.
    ns.run(|| -> Result<()> {
        let w = |path: String, value: &str| {
            std::fs::write(&path, value).with_context(|| format!("writing {path}"))
        };
        w("/proc/sys/net/ipv4/conf/all/forwarding".into(), "1")?;
        w("/proc/sys/net/ipv6/conf/all/forwarding".into(), "1")?;
        for name in ifaces {
            let p = peer(name);
            w(format!("/proc/sys/net/ipv6/conf/{p}/disable_ipv6"), "1")?;
            w(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
            w(format!("/proc/sys/net/ipv6/conf/{name}/forwarding"), "1")?;
        }
        Ok(())
    })?;
    let mut s = String::new();
    for name in ifaces {
        s += &format!("link set {} up\nlink set {name} up\n", peer(name));
    }
    s += addressing;
    ns.ip_batch(&s)
}

/// The client side's addresses, its upstream router as a permanent
/// neighbour, and the routes of 198.18.0.0/15 and 2001:db8::/32 via it.
pub fn client_side_addressing() -> String {
    let mut s = side_addressing(0);
    s += "route add 198.18.0.0/15 via 198.18.0.2 dev lb-client\n";
    s += "route add 2001:db8::/32 via 2001:db8::2 dev lb-client\n";
    s
}

/// Side I's /24 and /64 with its neighbour .2 / ::2 (permanent), as in the
/// module comment.
pub fn side_addressing(i: usize) -> String {
    let name = IFACES[i];
    let (v4, v6) = if i == 0 {
        ("198.18.0".to_string(), "2001:db8:".to_string())
    } else {
        (format!("198.18.{i}"), format!("2001:db8:{i}:"))
    };
    let mac = mac_str(mac_nbr(i as u8));
    let mut s = String::new();
    s += &format!("addr add {v4}.1/24 dev {name}\n");
    s += &format!("addr add {v6}:1/64 dev {name} nodad\n");
    s += &format!("neigh add {v4}.2 lladdr {mac} dev {name} nud permanent\n");
    s += &format!("neigh add {v6}:2 lladdr {mac} dev {name} nud permanent\n");
    s
}

/// The standard addressing of all four sides (module comment).
pub fn standard_addressing() -> String {
    let mut s = client_side_addressing();
    for i in 1..IFACES.len() {
        s += &side_addressing(i);
    }
    s
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The data plane under test inside its namespace. Dropping it detaches
/// the program and removes the pins; it must be dropped on the thread that
/// entered the namespace (`run_lab` does).
pub struct Lab {
    /// The namespace's name (for `netns::ip_batch`).
    pub ns: String,
    pub instance: String,
    dp: Option<DataPlane>,
    pub config: Config,
    pub ifindex: [u32; 4],
    /// The CPU the lab's thread is pinned to: every packet runs there, as
    /// on one NIC queue, so per-CPU state (the backends' next hops) is
    /// that CPU's.
    pub cpu: usize,
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

/// Creates a fresh namespace `cnry-<pid>-ptr-<n>` with the standard
/// addressing, enters it on a dedicated thread, loads and applies
/// `config_yaml`, and runs `body`. Everything is cleaned up however `body`
/// ends; a panic in `body` is re-raised here.
pub fn run_lab<F>(config_yaml: &str, flow_table_size: Option<u32>, body: F)
where
    F: FnOnce(&mut Lab) + Send,
{
    let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
    let name = format!("cnry-{}-ptr-{n}", std::process::id());
    let ns = Netns::recreate(&name).expect("creating the test netns");
    build_lb_namespace(&ns, IFACES.len(), &standard_addressing()).expect("building the topology");
    ns.run(|| {
        let config = Config::parse(config_yaml).expect("test config");
        let mut ifindex = [0u32; 4];
        for (i, name) in IFACES.iter().enumerate() {
            ifindex[i] = canary_userspace::dataplane::ifindex(name).unwrap();
        }
        let mut lab = Lab {
            ns: name.clone(),
            instance: name.clone(),
            dp: None,
            config: config.clone(),
            ifindex,
            cpu: pin_to_current_cpu(),
        };
        lab.dp = Some(DataPlane::load(&name, flow_table_size).expect("loading"));
        lab.apply_config(config);
        // What canaryd does for every address of its namespace.
        lab.add_local_addrs(&lab_local_addrs());
        body(&mut lab);
        // `lab` drops here, inside the namespace.
    });
    // `ns` is deleted when it drops, after a panic too.
}

impl Lab {
    pub fn dp(&self) -> &DataPlane {
        self.dp.as_ref().unwrap()
    }

    pub fn dp_mut(&mut self) -> &mut DataPlane {
        self.dp.as_mut().unwrap()
    }

    /// Applies `config` with flood mode off: these tests send SYNs far
    /// faster than any budget, and expect state for each (the flood-mode
    /// test turns it on through SETTINGS).
    pub fn apply_config(&mut self, mut config: Config) {
        config.flow_table.syn_flood_threshold = 0;
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
        self.dp().maps().datapath_stats().unwrap()
    }

    pub fn sid(&self, service: &str) -> u32 {
        *self
            .dp()
            .ids()
            .services
            .get(service)
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    pub fn service(&self, name: &str) -> &ServiceConfig {
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    pub fn vstats(&self, service: &str, version: u32) -> VersionStats {
        self.dp()
            .maps()
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
        self.dp().maps().flows.get(key, 0).ok()
    }

    /// Overwrites a flow entry (to age it, say).
    pub fn set_flow(&mut self, key: &FlowKey, state: FlowState) {
        self.dp_mut()
            .maps_mut()
            .flows
            .insert(key, state, 0)
            .unwrap();
    }

    pub fn remove_flow(&mut self, key: &FlowKey) {
        self.dp_mut().maps_mut().flows.remove(key).unwrap();
    }

    /// A map of this lab's data plane, opened through its pin (what an
    /// independent reader sees, whatever handles `DataPlane` keeps).
    fn pinned(&self, name: &str) -> MapData {
        let path = pin_dir(&self.instance).join(name);
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    }

    pub fn settings(&self) -> Settings {
        let a: Array<_, Settings> =
            Array::try_from(Map::Array(self.pinned(names::SETTINGS))).unwrap();
        a.get(&0, 0).unwrap()
    }

    pub fn set_settings(&self, settings: Settings) {
        let mut a: Array<_, Settings> =
            Array::try_from(Map::Array(self.pinned(names::SETTINGS))).unwrap();
        a.set(0, settings, 0).unwrap();
    }

    /// Every CPU's cached next hop toward a backend.
    pub fn backend_nexthops(&self, backend_id: u32) -> Vec<NextHop> {
        let a: PerCpuArray<_, NextHop> =
            PerCpuArray::try_from(Map::PerCpuArray(self.pinned(names::BACKEND_NEXTHOP))).unwrap();
        a.get(&backend_id, 0).unwrap().iter().copied().collect()
    }

    /// The cached next hop toward a backend on the lab's CPU.
    pub fn backend_nexthop(&self, backend_id: u32) -> NextHop {
        self.backend_nexthops(backend_id)[self.cpu]
    }

    /// Lists `addrs` as this host's own in LOCAL_ADDRS (what canaryd does
    /// for every address of its namespace).
    pub fn add_local_addrs(&self, addrs: &[IpAddr]) {
        let mut m: BpfHashMap<_, LocalAddrKey, u32> =
            BpfHashMap::try_from(Map::HashMap(self.pinned(names::LOCAL_ADDRS))).unwrap();
        for a in addrs {
            let family = if a.is_ipv4() { 4 } else { 6 };
            m.insert(
                LocalAddrKey {
                    addr: to_words(*a),
                    family,
                },
                1,
                0,
            )
            .unwrap();
        }
    }

    pub fn local_addrs(&self) -> Vec<LocalAddrKey> {
        let m: BpfHashMap<_, LocalAddrKey, u32> =
            BpfHashMap::try_from(Map::HashMap(self.pinned(names::LOCAL_ADDRS))).unwrap();
        m.keys().map(|k| k.unwrap()).collect()
    }
}

/// Pins the calling thread to the CPU it runs on and returns that CPU.
fn pin_to_current_cpu() -> usize {
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    cpu as usize
}

/// The LB's own addresses in the standard addressing.
pub fn lab_local_addrs() -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = (0..4)
        .map(|i| format!("198.18.{i}.1").parse().unwrap())
        .collect();
    v.push("2001:db8::1".parse().unwrap());
    for i in 1..4 {
        v.push(format!("2001:db8:{i}::1").parse().unwrap());
    }
    v
}

/// Seconds of CLOCK_MONOTONIC: the clock of a flow entry's `last_seen`.
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    canary_common::flow::clock_secs(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
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
