//! canary's XDP data plane: parse, decide, rewrite, forward, count. No policy
//! lives here: weights, pools, overrides and Maglev tables are written by
//! `canaryd`; the decision functions come from `canary-common`, shared with
//! user space.
//!
//! This file is the entry and the dispatch: Ethernet (one 802.1Q tag) and
//! the address family, then one generic path per concern, monomorphised per
//! family (`family::IpHdr`) and per L3 offset. Every path returns an
//! `Outcome`, counted once here in DATAPATH_STATS. The modules:
//! - `classify`: IP header and ports; the shapes that cannot be split.
//! - `family`: the trait over `Ipv4Hdr`/`Ipv6Hdr` the paths are generic over.
//! - `decide`: flow table, override or hash vs weight, Maglev; remembering,
//!   flood mode. `clock`: the time and canaryd's settings, once a packet.
//! - `forward` / `reply`: the client -> VIP path (DNAT) and the backend ->
//!   client path (reverse NAT).
//! - `route`: cached next hop, or `bpf_fib_lookup` + redirect, or the stack.
//! - `nat`: the rewrites and their incremental checksums.
//! - `health`: TCP flags and the passive health signals.
//! - `icmp`: ICMP errors about our flows, translated; "too big" answered.
//! - `outcome`, `stats`, `maps`, `parse`: verdicts, counters, maps, bounds.
//!
//! What each packet shape gets:
//! - not IPv4/IPv6 (ARP, LLDP, ...): XDP_PASS (`pass_not_ip`); a truncated
//!   Ethernet/VLAN header: XDP_PASS (`pass_malformed`).
//! - malformed or not splittable IP: see `classify`.
//! - IP not addressed to a VIP and not a backend's reply: XDP_PASS, untouched
//!   (`pass_not_vip`). So is a packet to a VIP address on a port or protocol
//!   that is not configured (ICMP echo, say).
//! - an ICMP error about one of our flows (its quote is a client's packet to
//!   a backend, or a reply from a VIP): translated, see `icmp`
//!   (`icmp_to_client`, `icmp_to_backend`; `drop_icmp`).
//! - to a configured VIP with a TTL (hop limit) of 1 or 0: XDP_DROP
//!   (`drop_ttl_expired`) before anything is decided: the stack's time
//!   exceeded would quote the packet rewritten toward the backend.
//! - to a configured VIP: a flow-table hit keeps the connection's backend
//!   (and moves its entry along: FIN, RST, last seen); a miss, or an entry
//!   that expired or was closed and reopened by a SYN, is decided (source-
//!   prefix override, else hash bucket vs weight), a backend picked from the
//!   pool's live Maglev table and remembered; in flood mode a bare SYN over
//!   the budget is decided without touching the table (`syn_stateless`).
//!   The destination is rewritten (DNAT) with incremental checksum updates.
//! - from a backend's service port (a reply): see `reply`; it needs no flow
//!   entry.
//! - rewritten packets are routed with `bpf_fib_lookup` and redirected out of
//!   the egress interface (TTL decremented, MACs set) when that interface is
//!   in TX_PORTS; the next hop is then cached, per backend and CPU toward a
//!   backend (`BACKEND_NEXTHOP`), in the flow entry toward a client, and
//!   used while its generation is current (it ages in about a second, and
//!   canaryd bumps it on config changes) and the packet fits the route's MTU;
//!   otherwise, and when the kernel must resolve a neighbour, handle a VLAN,
//!   send a reply's time exceeded or fragment an IPv4 packet without DF, they
//!   go to the stack already rewritten (`pass_to_stack`). Unroutable:
//!   XDP_DROP (`drop_unroutable`). Larger than the route's MTU (IPv4 with
//!   DF, IPv6): answered here with ICMP fragmentation needed / packet too
//!   big quoting the packet as its sender sent it, back out of the ingress
//!   interface (`tx_icmp_too_big`, see `icmp::too_big`); not forwarded.
#![no_std]
// BPF's atomic add (see decide::within_new_flow_budget).
#![feature(asm_experimental_arch)]
#![no_main]

mod classify;
mod clock;
mod decide;
mod family;
mod forward;
mod health;
mod icmp;
mod judge;
mod maps;
mod nat;
mod outcome;
mod parse;
mod reply;
mod route;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use canary_common::{reason, VipKey};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use classify::classify;
use family::IpHdr;
use maps::VIPS;
use outcome::Outcome;
use parse::ptr_at;

/// The splitter. Attach to the client-facing interface and to the
/// backend-facing interfaces (replies come back there).
#[xdp]
#[inline(always)]
pub fn canary(ctx: XdpContext) -> u32 {
    let outcome = process(&ctx);
    stats::count(outcome.reason());
    outcome.action()
}

/// Does nothing: the per-packet floor for benchmarks, and a way to switch on
/// a veth peer's NAPI so XDP-redirected frames are delivered.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

const ETH_LEN: usize = EthHdr::LEN;
const VLAN_L3: usize = EthHdr::LEN + VlanHdr::LEN;

#[inline(always)]
fn process(ctx: &XdpContext) -> Outcome {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::pass(reason::PASS_MALFORMED);
    };
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return Outcome::pass(reason::PASS_MALFORMED);
        };
        let inner = unsafe { (*vlan).ether_type };
        // Verifier: monomorphised per L3 offset, so every packet offset the
        // verifier sees is a constant.
        return dispatch::<VLAN_L3>(ctx, inner);
    }
    dispatch::<ETH_LEN>(ctx, ether_type)
}

#[inline(always)]
fn dispatch<const L3: usize>(ctx: &XdpContext, ether_type: u16) -> Outcome {
    if ether_type == EtherType::Ipv4 as u16 {
        handle::<Ipv4Hdr, L3>(ctx)
    } else if ether_type == EtherType::Ipv6 as u16 {
        handle::<Ipv6Hdr, L3>(ctx)
    } else {
        Outcome::pass(reason::PASS_NOT_IP)
    }
}

/// One IP packet: to a configured VIP (forward), else maybe a backend's
/// reply, else not ours.
#[inline(always)]
fn handle<H: IpHdr, const L3: usize>(ctx: &XdpContext) -> Outcome {
    let pkt = match classify::<H, L3>(ctx) {
        Ok(pkt) => pkt,
        // Not TCP/UDP, among others: maybe an ICMP error about one of our
        // flows (only packets that are not ours anyway pay for the check).
        Err(outcome) if outcome.reason() == reason::PASS_NOT_VIP => {
            return icmp::icmp::<H, L3>(ctx).unwrap_or(outcome)
        }
        Err(outcome) => return outcome,
    };
    let key = VipKey::new(pkt.dst, pkt.dport, pkt.proto, H::FAMILY);
    if let Some(vip) = unsafe { VIPS.get(&key) } {
        // The stack's time exceeded would quote the rewritten packet.
        if H::ttl(pkt.ip) <= 1 {
            return Outcome::drop(reason::DROP_TTL_EXPIRED);
        }
        return forward::forward::<H, L3>(ctx, &pkt, vip);
    }
    reply::reply::<H, L3>(ctx, &pkt).unwrap_or(Outcome::pass(reason::PASS_NOT_VIP))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
