//! The real XDP program, packet in, packet out, through `BPF_PROG_TEST_RUN`:
//! what each packet shape gets (canary-ebpf/src/main.rs documents it), byte
//! for byte, with the counters it moves. Each test runs in its own network
//! namespace with LB-like veth interfaces (`canary_tests::xdp_lab`), so
//! `bpf_fib_lookup` resolves real routes and neighbours and the MAC rewrite
//! can be checked.
//!
//! Checksums are verified with the RFC 1071 sum of `canary_tests::checksum`,
//! never with `canary_common::checksum` (the code under test).
//!
//! Modules: `forward` (client -> VIP), `reply` (backend -> client),
//! `checksum`, `policy` (not ours; overrides), `malformed` (the shape
//! table), `routing` (next hops and their cache), `lifecycle` (a flow
//! entry's life, flood mode, replies without an entry).
//!
//! Needs root (netns, bpffs, BPF). Run:
//! `cargo test -p canary-tests --test prog_test_run`.

mod checksum;
mod forward;
mod icmp;
mod judging;
mod lifecycle;
mod malformed;
mod policy;
mod reply;
mod routing;
mod too_big_judging;

use canary_common::{
    backend_hash, choose_version, maglev_base, maglev_slot, reason, split_hash, PROTO_TCP,
    PROTO_UDP, VERSION_CANARY, VERSION_STABLE,
};
pub use canary_tests::checksum::*;
use canary_tests::netns::ip_batch;
pub use canary_tests::packet::*;
pub use canary_tests::prog_run::*;
pub use canary_tests::xdp_lab::*;
use canary_tests::{LbConfig, Service};
use canary_userspace::config::Version;
use canary_userspace::dataplane::affinity_flag;
use std::net::IpAddr;

const VIP4: &str = "198.18.100.1";
const VIP_UDP: &str = "198.18.100.2";
const VIP_UNRESOLVED: &str = "198.18.100.3";
const VIP6: &str = "2001:db8:100::1";
/// The IPv6 UDP services' VIP (icmp, too_big_judging).
const VIP6_UDP: &str = "2001:db8:100::2";
/// A backend address in lb-b1's subnet with no neighbour entry.
const UNRESOLVED_BACKEND: &str = "198.18.1.9";

/// The LB configuration of every test; `web` (the IPv4 TCP VIP) and `web6`
/// get `weight` percent, the UDP service 10 %.
/// A UDP service on port 53 with the lab's pools, split per flow at 10 %
/// (a UDP flow's first packet is judged).
fn lab_udp(name: &str, vip: &str) -> Service {
    Service::udp(name, vip, 53)
        .affinity("flow")
        .weight(10.0)
        .lab_pools()
}

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(
            Service::tcp("web", VIP4, 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools()
                .force("198.18.24.0/24", "canary")
                .force("198.18.25.0/24", "stable"),
        )
        .service(lab_udp("dns", VIP_UDP))
        .service(
            Service::tcp("web6", VIP6, 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools()
                .force("2001:db8:24::/48", "canary")
                .force("2001:db8:25::/48", "stable"),
        )
        .service(Service::tcp("unresolved", VIP_UNRESOLVED, 80).stable([UNRESOLVED_BACKEND]))
        .yaml()
}

/// The version `canary_common::split` gives this flow with the service's
/// configured seed and weight (what `canaryctl explain` says).
fn predicted_version(lab: &Lab, service: &str, key: &canary_common::FlowKey) -> u32 {
    let s = lab.service(service);
    let affinity = affinity_flag(s.affinity);
    choose_version(split_hash(key, affinity, s.seed()), s.weight_bp())
}

/// The backend id the live Maglev table of (service, version) holds for this
/// flow, read from the kernel's maps.
fn maglev_backend(lab: &Lab, service: &str, version: u32, key: &canary_common::FlowKey) -> u32 {
    let sid = lab.sid(service);
    let s = lab.service(service);
    let affinity = affinity_flag(s.affinity);
    let state = lab.dp().maps().services.get(&sid, 0).unwrap();
    let gen = state.live_gen[version as usize] & 1;
    let slot = maglev_slot(backend_hash(key, affinity, s.seed()));
    lab.dp()
        .maps()
        .maglev
        .get(&(maglev_base(sid, version, gen) + slot), 0)
        .unwrap()
}

/// Frames forwarded to a backend leave with the backend's neighbour MAC as
/// destination and the LB interface's MAC as source.
fn to_backend(backend: IpAddr) -> Rewrite {
    let side = backend_side(backend);
    Rewrite {
        dst: Some(backend),
        ttl_dec: true,
        macs: Some((mac_nbr(side), mac_lb(side))),
        ..Rewrite::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vs {
    packets: u64,
    bytes: u64,
    new_flows: u64,
    reply_packets: u64,
    reply_bytes: u64,
}

fn vs(lab: &Lab, service: &str, version: u32) -> Vs {
    let s = lab.vstats(service, version);
    Vs {
        packets: s.packets,
        bytes: s.bytes,
        new_flows: s.new_flows,
        reply_packets: s.reply_packets,
        reply_bytes: s.reply_bytes,
    }
}

fn both(lab: &Lab, service: &str) -> [Vs; 2] {
    [vs(lab, service, 0), vs(lab, service, 1)]
}

fn delta(a: Vs, b: Vs) -> Vs {
    Vs {
        packets: b.packets - a.packets,
        bytes: b.bytes - a.bytes,
        new_flows: b.new_flows - a.new_flows,
        reply_packets: b.reply_packets - a.reply_packets,
        reply_bytes: b.reply_bytes - a.reply_bytes,
    }
}

const ZERO: Vs = Vs {
    packets: 0,
    bytes: 0,
    new_flows: 0,
    reply_packets: 0,
    reply_bytes: 0,
};

fn fwd(len: usize, new_flow: bool) -> Vs {
    Vs {
        packets: 1,
        bytes: len as u64,
        new_flows: new_flow as u64,
        ..ZERO
    }
}

/// Sends a client -> VIP packet expected to be forwarded, checks the
/// version stats moved by exactly one packet for the flow's version, and
/// returns (run, backend, version).
fn forward_one(
    lab: &Lab,
    service: &str,
    pkt: &[u8],
    key: &canary_common::FlowKey,
    new_flow: bool,
) -> (Run, IpAddr, u32) {
    let before = both(lab, service);
    let r = lab.run(pkt, 0);
    let flow = lab.flow(key).expect("the flow is in FLOWS");
    let after = both(lab, service);
    let v = flow.version as usize;
    assert_eq!(
        delta(before[v], after[v]),
        fwd(pkt.len(), new_flow),
        "VERSION_STATS of {service}/{v}"
    );
    assert_eq!(delta(before[1 - v], after[1 - v]), ZERO, "other version");
    (r, lab.backend_addr(flow.backend_id), flow.version as u32)
}

/// The one assert of a single packet's fate: runs `pkt` arriving on side
/// `side`, asserts the action and that exactly `reasons` moved in
/// DATAPATH_STATS; an `XDP_PASS` without a rewrite must leave the frame
/// untouched (`untouched`). Returns the run.
fn expect(
    lab: &Lab,
    pkt: &[u8],
    side: usize,
    action: u32,
    untouched: bool,
    reasons: &[(u32, u64)],
    what: &str,
) -> Run {
    let dp0 = lab.datapath();
    let r = lab.run(pkt, side);
    assert_eq!(r.action, action, "{what}: action\n{}", hex(pkt));
    if untouched {
        assert_eq!(hex(&r.out), hex(pkt), "{what}: must be untouched");
    }
    assert_reasons(&dp0, &lab.datapath(), reasons, what);
    r
}

/// `forward_one` with its action and DATAPATH_STATS moves asserted: what
/// most client -> VIP checks repeat. A new flow also moves `flow_insert`.
#[allow(clippy::too_many_arguments)]
fn forward_expect(
    lab: &Lab,
    service: &str,
    pkt: &[u8],
    key: &canary_common::FlowKey,
    new_flow: bool,
    action: u32,
    reasons: &[(u32, u64)],
    what: &str,
) -> (Run, IpAddr, u32) {
    let dp0 = lab.datapath();
    let (r, backend, version) = forward_one(lab, service, pkt, key, new_flow);
    assert_eq!(r.action, action, "{what}: action");
    // A new flow's entry is an insert (`flow_insert`) on top of `reasons`.
    let mut reasons = reasons.to_vec();
    if new_flow {
        reasons.push((reason::FLOW_INSERT, 1));
    }
    assert_reasons(&dp0, &lab.datapath(), &reasons, what);
    (r, backend, version)
}
