//! canary's XDP data plane: parse, decide, rewrite, forward, count. No policy
//! lives here: weights, pools, overrides and Maglev tables are written by
//! `canaryd`; the decision functions come from `canary-common`, shared with
//! user space.
//!
//! What each packet shape gets (every outcome is counted in DATAPATH_STATS):
//! - not IPv4/IPv6 (ARP, LLDP, ...): XDP_PASS (`pass_not_ip`).
//! - headers too short or inconsistent to tell the destination (truncated
//!   Ethernet/VLAN/IP header, bad IP version, IHL < 5): XDP_PASS
//!   (`pass_malformed`); the kernel's own validation deals with it.
//! - IP not addressed to a VIP and not a backend's reply: XDP_PASS, untouched
//!   (`pass_not_vip`). So is a packet to a VIP address on a port or protocol
//!   that is not configured (ICMP echo, say).
//! - to a VIP address, but not splittable: IPv4 with options
//!   (`drop_ip_options`), IPv4 fragments (`drop_fragment`: later fragments
//!   carry no ports, so no consistent decision is possible), IPv6 with an
//!   extension header (hop-by-hop, routing, fragment, ESP, AH, destination
//!   options, ...: `drop_ipv6_ext`), a truncated L4 header or
//!   an IP length larger than the frame (`drop_malformed`): XDP_DROP. The host
//!   does not own the VIP, so passing these would only bounce an ICMP error.
//! - to a configured VIP: flow-table hit keeps the connection's backend;
//!   a miss is decided (source-prefix override, else hash bucket vs weight),
//!   a backend picked from the pool's live Maglev table and remembered. The
//!   destination is rewritten (DNAT) with incremental checksum updates.
//! - from a backend's service port (a reply) on a connection in the flow
//!   table: the source is rewritten back to the VIP; a SYN-ACK or RST is
//!   also a health signal (handshake time, resets). From a backend's service
//!   port but not on a forwarded connection (this host's own health probes):
//!   passed untouched (`pass_reply_no_flow`). A reply the backend fragments (or sends with IPv4 options or
//!   IPv6 extension headers) is passed untouched (`pass_not_vip`): keep the
//!   backends' path MTU at or above the client side's so replies are not
//!   fragmented.
//! - rewritten packets are routed with `bpf_fib_lookup` and redirected out of
//!   the egress interface (TTL decremented, MACs set) when that interface is
//!   in TX_PORTS; the next hop is then cached in the flow entry (each
//!   direction its own), and the connection's later packets use it while
//!   its generation is current (it ages in about a second, and canaryd bumps
//!   `NEXTHOP_GEN` on config changes) and they fit the route's MTU;
//!   otherwise, and when the kernel must resolve a neighbour,
//!   handle a VLAN, or send an ICMP (TTL expiring, fragmentation needed), they
//!   go to the stack already rewritten (`pass_to_stack`). Unroutable:
//!   XDP_DROP (`drop_unroutable`).
#![no_std]
#![no_main]

mod forward;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::xdp,
    programs::XdpContext,
};

/// errno of an insert that found the key (BPF_NOEXIST).
const EEXIST: i32 = 17;
use aya_log_ebpf::warn;
use canary_common::{
    backend_hash, choose_version, maglev_base, maglev_slot, reason, split_hash, FlowKey, FlowState,
    NextHop, OverrideKeyData, VipInfo, VipKey, BACKEND_NONE, FAMILY_V4, FAMILY_V6, FLOW_FIN_SEEN,
    FLOW_RST_SEEN, OVERRIDE_SERVICE_BITS, PROTO_TCP, PROTO_UDP,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use maps::{BACKENDS, FLOWS, MAGLEV, NEXTHOP_GEN, OVERRIDES, REVERSE_NAT, SERVICES, VIPS};
use parse::{ptr_at, words16, words4};
use stats::{backend_signal, handshake_started};
use stats::{count, drop, pass};

/// The splitter. Attach to the client-facing interface and to the
/// backend-facing interfaces (replies come back there).
#[xdp]
pub fn canary(ctx: XdpContext) -> u32 {
    process(&ctx)
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
fn process(ctx: &XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return pass(reason::PASS_MALFORMED);
    };
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return pass(reason::PASS_MALFORMED);
        };
        let inner = unsafe { (*vlan).ether_type };
        // Monomorphised per L3 offset: every packet offset the verifier sees
        // is a constant.
        return dispatch::<VLAN_L3>(ctx, inner);
    }
    dispatch::<ETH_LEN>(ctx, ether_type)
}

#[inline(always)]
fn dispatch<const L3: usize>(ctx: &XdpContext, ether_type: u16) -> u32 {
    if ether_type == EtherType::Ipv4 as u16 {
        ipv4::<L3>(ctx)
    } else if ether_type == EtherType::Ipv6 as u16 {
        ipv6::<L3>(ctx)
    } else {
        pass(reason::PASS_NOT_IP)
    }
}

/// Is `addr` one of our VIP addresses (any port)?
#[inline(always)]
fn is_vip_addr(addr: [u32; 4], family: u8) -> bool {
    let marker = VipKey {
        addr,
        port: 0,
        proto: 0,
        family,
    };
    unsafe { VIPS.get(&marker) }.is_some()
}

/// The ports of a TCP or UDP header at `l4`, if the frame holds the header.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, proto: u8) -> Option<(u16, u16)> {
    if proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, l4)?;
        unsafe {
            Some((
                u16::from_ne_bytes((*tcp).source),
                u16::from_ne_bytes((*tcp).dest),
            ))
        }
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, l4)?;
        unsafe {
            Some((
                u16::from_ne_bytes((*udp).src),
                u16::from_ne_bytes((*udp).dst),
            ))
        }
    }
}

#[inline(always)]
fn l4_header_len(proto: u8) -> usize {
    if proto == PROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    }
}

/// TCP flags that matter to health signals.
struct TcpFlags {
    syn: bool,
    ack: bool,
    rst: bool,
    fin: bool,
}

#[inline(always)]
fn tcp_flags(ctx: &XdpContext, l4: usize) -> Option<TcpFlags> {
    let tcp = ptr_at::<TcpHdr>(ctx, l4)?;
    unsafe {
        Some(TcpFlags {
            syn: (*tcp).syn() != 0,
            ack: (*tcp).ack() != 0,
            rst: (*tcp).rst() != 0,
            fin: (*tcp).fin() != 0,
        })
    }
}

/// A client's SYN (not a SYN-ACK) opening a connection starts a handshake
/// the backend must answer: on a new flow, or on a known one whose last
/// connection the backend closed or reset (the client reuses the 5-tuple;
/// the per-connection flags start over). A SYN on a live connection (a
/// retransmission, a late duplicate) starts none.
#[inline(always)]
fn note_syn(ctx: &XdpContext, l4: usize, flow: &FlowKey, target: &Target) {
    if flow.proto != PROTO_TCP {
        return;
    }
    let Some(f) = tcp_flags(ctx, l4) else {
        return;
    };
    if !f.syn || f.ack {
        return;
    }
    match target.entry {
        None => handshake_started(flow, target.service_id, target.version),
        Some(entry) => {
            if unsafe { (*entry).flags } & (FLOW_RST_SEEN | FLOW_FIN_SEEN) != 0 {
                unsafe { (*entry).flags = 0 };
                handshake_started(flow, target.service_id, target.version);
            }
        }
    }
}

/// Where a client -> VIP packet goes.
struct Target {
    service_id: u32,
    version: u32,
    backend_id: u32,
    addr: [u32; 4],
    new_flow: bool,
    /// The flow entry of an established connection (None: a new one, to be
    /// remembered once it is routed).
    entry: Option<*mut FlowState>,
    /// Its cached next hop toward the backend, if still valid.
    cached: Option<NextHop>,
}

/// The generation a cached next hop must carry (see `NextHop`): canaryd's
/// counter plus the time in units of 2^30 ns (about 1.07 s). Both only go
/// up, so a cached next hop expires within about a second even while no
/// canaryd runs (the data plane outlives it), and at once when canaryd
/// bumps the counter.
#[inline(always)]
fn nexthop_gen() -> u32 {
    let epoch = (unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() } >> 30) as u32;
    NEXTHOP_GEN.get(0).copied().unwrap_or(0).wrapping_add(epoch)
}

#[inline(always)]
fn valid(nh: &NextHop, gen: u32) -> Option<NextHop> {
    (nh.ifindex != 0 && nh.gen == gen).then_some(*nh)
}

/// Records a new connection's decision (with the next hop it was just
/// routed to), or refreshes an established one's next hop.
#[inline(always)]
fn remember(ctx: &XdpContext, flow: &FlowKey, t: &Target, learned: Option<NextHop>, gen: u32) {
    let learned = learned.map(|mut nh| {
        nh.gen = gen;
        nh
    });
    match t.entry {
        Some(_) => {
            if let Some(nh) = learned {
                // Looked up again: the entry seen before the route lookup may
                // have been evicted and reused for another connection since
                // (an LRU reuses freed elements at once).
                if let Some(e) = FLOWS.get_ptr_mut(flow) {
                    if unsafe { (*e).backend_id } == t.backend_id {
                        unsafe { (*e).to_backend = nh };
                    }
                }
            }
        }
        None => {
            let state = FlowState {
                backend_id: t.backend_id,
                version: t.version,
                service_id: t.service_id,
                flags: 0,
                to_backend: learned.unwrap_or_default(),
                to_client: NextHop::default(),
            };
            // BPF_NOEXIST: if another CPU decided this connection meanwhile,
            // its decision stays (the first one wins, for every packet after).
            match FLOWS.insert(flow, &state, BPF_NOEXIST as u64) {
                Ok(()) => {}
                Err(e) if e == -EEXIST => {}
                Err(_) => {
                    // Rare (the LRU evicts instead of failing): worth a log line.
                    count(reason::FLOW_INSERT_FAILED);
                    warn!(ctx, "flow table insert failed for service {}", t.service_id);
                }
            }
        }
    }
}

/// The version forced on this client by a source-prefix override, if any.
#[inline(always)]
fn override_version(service_id: u32, flow: &FlowKey) -> Option<u32> {
    let mut addr = [0u8; 16];
    if flow.family == FAMILY_V4 {
        addr[10] = 0xff;
        addr[11] = 0xff;
        let a = flow.src[0].to_ne_bytes();
        addr[12] = a[0];
        addr[13] = a[1];
        addr[14] = a[2];
        addr[15] = a[3];
    } else {
        addr = parse::bytes16(&flow.src);
    }
    let key = LpmKey::new(
        OVERRIDE_SERVICE_BITS + 128,
        OverrideKeyData {
            service_be: service_id.to_be_bytes(),
            addr,
        },
    );
    OVERRIDES.get(&key).map(|v| v.version & 1)
}

/// Flow table first; on a miss, override or hash bucket vs weight, then the
/// live Maglev table of the chosen pool. A new decision is remembered by
/// the caller once the packet is routed (`remember`).
#[inline(always)]
fn decide(flow: &FlowKey, vip: &VipInfo, gen: u32) -> Result<Target, u32> {
    let service_id = vip.service_id;
    let (backend_id, version, entry, cached) = match FLOWS.get_ptr_mut(flow) {
        Some(f) => {
            count(reason::FLOW_HIT);
            let (backend_id, version, nh) =
                unsafe { ((*f).backend_id, (*f).version & 1, (*f).to_backend) };
            (backend_id, version, Some(f), valid(&nh, gen))
        }
        None => {
            // The service entry matters only to a new decision.
            let svc = SERVICES.get(service_id).ok_or(reason::DROP_NO_BACKEND)?;
            let version = match override_version(service_id, flow) {
                Some(v) => {
                    count(reason::OVERRIDE_HIT);
                    v
                }
                None => choose_version(split_hash(flow, vip.affinity, svc.seed), svc.weight_bp),
            } & 1;
            if svc.pool_size[version as usize] == 0 {
                return Err(reason::DROP_NO_BACKEND);
            }
            let generation = svc.live_gen[version as usize] & 1;
            let slot = maglev_slot(backend_hash(flow, vip.affinity, svc.seed));
            let idx = maglev_base(service_id, version, generation) + slot;
            let backend_id = *MAGLEV.get(idx).ok_or(reason::DROP_NO_BACKEND)?;
            if backend_id == BACKEND_NONE {
                return Err(reason::DROP_NO_BACKEND);
            }
            (backend_id, version, None, None)
        }
    };
    let backend = BACKENDS.get(backend_id).ok_or(reason::DROP_NO_BACKEND)?;
    Ok(Target {
        service_id,
        version,
        backend_id,
        addr: backend.addr,
        new_flow: entry.is_none(),
        entry,
        cached,
    })
}

#[inline(always)]
fn ipv4<const L3: usize>(ctx: &XdpContext) -> u32 {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, L3) else {
        return pass(reason::PASS_MALFORMED);
    };
    let (vihl, tot_len, frags, proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            words4(&(*ip).src_addr),
            words4(&(*ip).dst_addr),
        )
    };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return pass(reason::PASS_MALFORMED);
    }
    let frame_len = ctx.data_end() - ctx.data();
    let l4_proto = proto == PROTO_TCP || proto == PROTO_UDP;
    // More-fragments flag or a non-zero offset.
    let fragment = frags & 0x3fff != 0;
    let l4 = L3 + Ipv4Hdr::LEN;
    let lengths_ok = tot_len >= ihl * 4 + l4_header_len(proto) && L3 + tot_len <= frame_len;

    // The common case first: a well-formed TCP/UDP packet is looked up as
    // (dst, port, proto) straight away; the address-only VIP check is needed
    // only to tell what to do with packets that cannot be split.
    let simple = ihl == 5 && !fragment && l4_proto && lengths_ok;
    let ports = if simple { ports(ctx, l4, proto) } else { None };
    let vip = match ports {
        Some((_, dport)) => {
            let key = VipKey {
                addr: [dst, 0, 0, 0],
                port: dport,
                proto,
                family: FAMILY_V4,
            };
            unsafe { VIPS.get(&key) }
        }
        None => None,
    };
    let (Some(vip), Some((sport, dport))) = (vip, ports) else {
        if ports.is_some() {
            if let Some(action) = reply_v4::<L3>(ctx, ip, proto, src, dst) {
                return action;
            }
        }
        if ports.is_some() || !is_vip_addr([dst, 0, 0, 0], FAMILY_V4) {
            return pass(reason::PASS_NOT_VIP);
        }
        // Addressed to a VIP but not splittable.
        if ihl != 5 {
            return drop(reason::DROP_IP_OPTIONS);
        }
        if fragment {
            return drop(reason::DROP_FRAGMENT);
        }
        if !l4_proto {
            return pass(reason::PASS_NOT_VIP);
        }
        return drop(reason::DROP_MALFORMED);
    };
    let flow = FlowKey {
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        sport,
        dport,
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let gen = nexthop_gen();
    let target = match decide(&flow, vip, gen) {
        Ok(t) => t,
        Err(r) => return drop(r),
    };
    note_syn(ctx, l4, &flow, &target);
    if nat::dnat_v4(ctx, ip, l4, proto, dst, target.addr[0]).is_none() {
        return drop(reason::DROP_MALFORMED);
    }
    let routed = forward::send_v4::<L3>(ctx, ip, proto, sport, dport, target.cached);
    remember(ctx, &flow, &target, routed.learned, gen);
    let action = routed.action;
    if action != xdp_action::XDP_DROP {
        stats::count_forward(
            target.service_id,
            target.version,
            target.backend_id,
            frame_len as u64,
            target.new_flow,
        );
    }
    action
}

/// Is this backend packet part of a connection we forwarded? Only those are
/// rewritten: the host's own connections to a backend (health probes) share
/// its address and port but are not ours to translate. A backend's SYN-ACK
/// or RST is a health signal for its version.
#[inline(always)]
fn reply_flow(
    ctx: &XdpContext,
    l4: usize,
    flow: &FlowKey,
    service_id: u32,
    version: u32,
) -> Option<*mut FlowState> {
    let entry = FLOWS.get_ptr_mut(flow)?;
    if flow.proto == PROTO_TCP {
        if let Some(f) = tcp_flags(ctx, l4) {
            // One reset counts once per connection, however many RSTs.
            let rst = f.rst && unsafe { (*entry).flags } & FLOW_RST_SEEN == 0;
            if rst {
                unsafe { (*entry).flags |= FLOW_RST_SEEN };
            }
            if f.fin {
                unsafe { (*entry).flags |= FLOW_FIN_SEEN };
            }
            if rst || (f.syn && f.ack) {
                backend_signal(flow, service_id, version, f.syn && f.ack, rst);
            }
        }
    }
    Some(entry)
}

/// Keeps the next hop a reply was just routed to in its flow entry (looked
/// up again, as in `remember`: the entry may have been reused meanwhile).
#[inline(always)]
fn remember_reply(flow: &FlowKey, backend_id: u32, learned: Option<NextHop>, gen: u32) {
    if let Some(mut nh) = learned {
        nh.gen = gen;
        if let Some(e) = FLOWS.get_ptr_mut(flow) {
            if unsafe { (*e).backend_id } == backend_id {
                unsafe { (*e).to_client = nh };
            }
        }
    }
}

/// A reply from a backend's service port: put the VIP back as its source.
#[inline(always)]
fn reply_v4<const L3: usize>(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    proto: u8,
    src: u32,
    dst: u32,
) -> Option<u32> {
    let l4 = L3 + Ipv4Hdr::LEN;
    let (sport, dport) = ports(ctx, l4, proto)?;
    let key = canary_common::BackendAddrKey {
        addr: [src, 0, 0, 0],
        port: sport,
        proto,
        family: FAMILY_V4,
    };
    let rev = unsafe { REVERSE_NAT.get(&key) }?;
    let (service_id, version, backend_id, vip) =
        (rev.service_id, rev.version & 1, rev.backend_id, rev.vip[0]);
    // The connection as the client sent it: client -> VIP.
    let flow = FlowKey {
        src: [dst, 0, 0, 0],
        dst: [vip, 0, 0, 0],
        sport: dport,
        dport: sport,
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let Some(entry) = reply_flow(ctx, l4, &flow, service_id, version) else {
        return Some(pass(reason::PASS_REPLY_NO_FLOW));
    };
    nat::snat_v4(ctx, ip, l4, proto, src, vip)?;
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let gen = nexthop_gen();
    let cached = valid(unsafe { &(*entry).to_client }, gen);
    let routed = forward::send_v4::<L3>(ctx, ip, proto, sport, dport, cached);
    remember_reply(&flow, backend_id, routed.learned, gen);
    let action = routed.action;
    if action != xdp_action::XDP_DROP {
        stats::count_reply(service_id, version, backend_id, frame_len);
    }
    Some(action)
}

#[inline(always)]
fn ipv6<const L3: usize>(ctx: &XdpContext) -> u32 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, L3) else {
        return pass(reason::PASS_MALFORMED);
    };
    let (vcf0, payload_len, next_hdr, src, dst) = unsafe {
        (
            (*ip).vcf[0],
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            words16(&(*ip).src_addr),
            words16(&(*ip).dst_addr),
        )
    };
    if vcf0 >> 4 != 6 {
        return pass(reason::PASS_MALFORMED);
    }
    let frame_len = ctx.data_end() - ctx.data();
    let l4 = L3 + Ipv6Hdr::LEN;
    let l4_proto = next_hdr == PROTO_TCP || next_hdr == PROTO_UDP;
    let lengths_ok = payload_len >= l4_header_len(next_hdr) && l4 + payload_len <= frame_len;

    let simple = l4_proto && lengths_ok;
    let ports = if simple {
        ports(ctx, l4, next_hdr)
    } else {
        None
    };
    let vip = match ports {
        Some((_, dport)) => {
            let key = VipKey {
                addr: dst,
                port: dport,
                proto: next_hdr,
                family: FAMILY_V6,
            };
            unsafe { VIPS.get(&key) }
        }
        None => None,
    };
    let (Some(vip), Some((sport, dport))) = (vip, ports) else {
        if ports.is_some() {
            if let Some(action) = reply_v6::<L3>(ctx, ip, next_hdr, src, dst) {
                return action;
            }
        }
        if ports.is_some() || !is_vip_addr(dst, FAMILY_V6) {
            return pass(reason::PASS_NOT_VIP);
        }
        // Addressed to a VIP but not splittable. An extension header may
        // hide TCP/UDP to the VIP behind it: drop. Any other protocol
        // (ICMPv6, GRE, SCTP, ...) is not split: pass, as for IPv4.
        if !l4_proto {
            if is_ipv6_extension_header(next_hdr) {
                return drop(reason::DROP_IPV6_EXT);
            }
            return pass(reason::PASS_NOT_VIP);
        }
        return drop(reason::DROP_MALFORMED);
    };
    let flow = FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: next_hdr,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    let gen = nexthop_gen();
    let target = match decide(&flow, vip, gen) {
        Ok(t) => t,
        Err(r) => return drop(r),
    };
    note_syn(ctx, l4, &flow, &target);
    if nat::dnat_v6(ctx, ip, l4, next_hdr, &dst, &target.addr).is_none() {
        return drop(reason::DROP_MALFORMED);
    }
    let routed = forward::send_v6::<L3>(ctx, ip, next_hdr, sport, dport, target.cached);
    remember(ctx, &flow, &target, routed.learned, gen);
    let action = routed.action;
    if action != xdp_action::XDP_DROP {
        stats::count_forward(
            target.service_id,
            target.version,
            target.backend_id,
            frame_len as u64,
            target.new_flow,
        );
    }
    action
}

/// IPv6 extension header numbers (RFC 8200 section 4, and the IANA list):
/// hop-by-hop, routing, fragment, ESP, AH, destination options, mobility,
/// HIP, shim6.
#[inline(always)]
fn is_ipv6_extension_header(next_hdr: u8) -> bool {
    matches!(next_hdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn reply_v6<const L3: usize>(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
) -> Option<u32> {
    let l4 = L3 + Ipv6Hdr::LEN;
    let (sport, dport) = ports(ctx, l4, proto)?;
    let key = canary_common::BackendAddrKey {
        addr: src,
        port: sport,
        proto,
        family: FAMILY_V6,
    };
    let rev = unsafe { REVERSE_NAT.get(&key) }?;
    let (service_id, version, backend_id, vip) =
        (rev.service_id, rev.version & 1, rev.backend_id, rev.vip);
    let flow = FlowKey {
        src: dst,
        dst: vip,
        sport: dport,
        dport: sport,
        proto,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    let Some(entry) = reply_flow(ctx, l4, &flow, service_id, version) else {
        return Some(pass(reason::PASS_REPLY_NO_FLOW));
    };
    nat::snat_v6(ctx, ip, l4, proto, &src, &vip)?;
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let gen = nexthop_gen();
    let cached = valid(unsafe { &(*entry).to_client }, gen);
    let routed = forward::send_v6::<L3>(ctx, ip, proto, sport, dport, cached);
    remember_reply(&flow, backend_id, routed.learned, gen);
    let action = routed.action;
    if action != xdp_action::XDP_DROP {
        stats::count_reply(service_id, version, backend_id, frame_len);
    }
    Some(action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
