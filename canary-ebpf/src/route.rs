//! Forwarding a rewritten packet: ask the kernel's FIB for the next hop and
//! redirect out of the egress interface, or hand the packet to the stack when
//! the kernel has work to do (resolve a neighbour, a VLAN device, an ICMP
//! error to send).

use crate::maps::TX_PORTS;
use crate::parse::{ptr_at, words16, words4};
use crate::stats::{count, drop, pass};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use canary_common::{checksum, reason, NextHop};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The verdict on a packet, and the next hop it was redirected to (for the
/// flow entry's cache; `gen` is filled in by the caller).
pub struct Routed {
    pub action: u32,
    pub learned: Option<NextHop>,
}

fn only(action: u32) -> Routed {
    Routed {
        action,
        learned: None,
    }
}

/// After a successful lookup: redirect if we may, else let the stack route.
/// `decrement_ttl` runs only when the packet really is redirected (the stack
/// decrements it itself otherwise).
#[inline(always)]
fn finish<const L3: usize>(
    ctx: &XdpContext,
    params: &mut FibParams,
    rc: i64,
    ttl: u8,
    decrement_ttl: impl FnOnce(),
) -> Routed {
    let rc = rc as u32;
    if rc == BPF_FIB_LKUP_RET_BLACKHOLE
        || rc == BPF_FIB_LKUP_RET_UNREACHABLE
        || rc == BPF_FIB_LKUP_RET_PROHIBIT
    {
        return only(drop(reason::DROP_UNROUTABLE));
    }
    // NO_NEIGH, FRAG_NEEDED, NOT_FWDED, ...: the kernel knows what to do.
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return only(pass(reason::PASS_TO_STACK));
    }
    // A tagged frame must leave through the VLAN device the stack owns; an
    // expiring TTL needs an ICMP time-exceeded from the stack.
    if L3 != EthHdr::LEN || ttl <= 1 {
        return only(pass(reason::PASS_TO_STACK));
    }
    if TX_PORTS.get_ifindex(params.ifindex).is_none() {
        return only(pass(reason::PASS_TO_STACK));
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return only(pass(reason::PASS_MALFORMED));
    };
    decrement_ttl();
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    match TX_PORTS.redirect(params.ifindex, 0) {
        Ok(action) => {
            count(reason::FWD_REDIRECT);
            // On success the kernel reports the route's MTU in the same
            // field the packet length went in; 0 (not reported): no cache.
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            Routed {
                action,
                learned: (mtu != 0).then_some(NextHop {
                    ifindex: params.ifindex,
                    gen: 0,
                    mtu,
                    dmac: params.dmac,
                    smac: params.smac,
                    _pad: [0; 2],
                }),
            }
        }
        // As in `cached`: rewritten for the next hop, the stack would drop it.
        Err(_) => only(drop(reason::DROP_UNROUTABLE)),
    }
}

/// Redirects with a cached next hop, as `finish` would have after a lookup.
/// `None` (and the packet untouched) when the cache does not apply: a VLAN
/// frame, an expiring TTL, a packet over the route's MTU, an egress port
/// no longer in TX_PORTS. The caller then takes the slow path.
#[inline(always)]
fn cached<const L3: usize>(
    ctx: &XdpContext,
    nh: &NextHop,
    ttl: u8,
    ip_len: usize,
    decrement_ttl: impl FnOnce(),
) -> Option<u32> {
    if L3 != EthHdr::LEN || ttl <= 1 || ip_len > nh.mtu as usize {
        return None;
    }
    TX_PORTS.get_ifindex(nh.ifindex)?;
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    decrement_ttl();
    unsafe {
        (*eth).dst_addr = nh.dmac;
        (*eth).src_addr = nh.smac;
    }
    Some(match TX_PORTS.redirect(nh.ifindex, 0) {
        Ok(action) => {
            count(reason::FWD_REDIRECT);
            action
        }
        // The port vanished between the check and the redirect. The frame
        // already carries the next hop's MACs, so the stack would discard
        // it as not ours: count it as the drop it is.
        Err(_) => drop(reason::DROP_UNROUTABLE),
    })
}

#[inline(always)]
fn decrement_ttl_v4(ip: *mut Ipv4Hdr) {
    unsafe {
        let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let c = u16::from_ne_bytes((*ip).check);
        (*ip).check = checksum::replace_u16(c, old, new).to_ne_bytes();
    }
}

#[inline(always)]
fn cached_v4<const L3: usize>(ctx: &XdpContext, ip: *mut Ipv4Hdr, nh: &NextHop) -> Option<u32> {
    let (ttl, len) = unsafe { ((*ip).ttl, u16::from_be_bytes((*ip).tot_len) as usize) };
    cached::<L3>(ctx, nh, ttl, len, || decrement_ttl_v4(ip))
}

#[inline(always)]
fn cached_v6<const L3: usize>(ctx: &XdpContext, ip: *mut Ipv6Hdr, nh: &NextHop) -> Option<u32> {
    let (hop_limit, len) = unsafe {
        (
            (*ip).hop_limit,
            Ipv6Hdr::LEN + u16::from_be_bytes((*ip).payload_len) as usize,
        )
    };
    cached::<L3>(ctx, nh, hop_limit, len, || unsafe {
        (*ip).hop_limit -= 1;
    })
}

#[inline(always)]
fn route_v4<const L3: usize>(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Routed {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    let ttl;
    unsafe {
        p.family = AF_INET;
        p.l4_protocol = proto;
        p.sport = sport;
        p.dport = dport;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        p.__bindgen_anon_2.tos = (*ip).tos;
        p.__bindgen_anon_3.ipv4_src = words4(&(*ip).src_addr);
        p.__bindgen_anon_4.ipv4_dst = words4(&(*ip).dst_addr);
        ttl = (*ip).ttl;
    }
    p.ifindex = ctx.ingress_ifindex() as u32;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    finish::<L3>(ctx, &mut p, rc, ttl, || decrement_ttl_v4(ip))
}

#[inline(always)]
fn route_v6<const L3: usize>(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Routed {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    let hop_limit;
    unsafe {
        p.family = AF_INET6;
        p.l4_protocol = proto;
        p.sport = sport;
        p.dport = dport;
        // The whole IP packet, as the kernel compares it with the MTU.
        p.__bindgen_anon_1.tot_len =
            (Ipv6Hdr::LEN as u16).saturating_add(u16::from_be_bytes((*ip).payload_len));
        // Traffic class and flow label, as the kernel's own forwarding uses.
        p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes((*ip).vcf) & u32::from_be(0x0fff_ffff);
        p.__bindgen_anon_3.ipv6_src = words16(&(*ip).src_addr);
        p.__bindgen_anon_4.ipv6_dst = words16(&(*ip).dst_addr);
        hop_limit = (*ip).hop_limit;
    }
    p.ifindex = ctx.ingress_ifindex() as u32;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    finish::<L3>(ctx, &mut p, rc, hop_limit, || unsafe {
        (*ip).hop_limit -= 1;
    })
}

/// Forwards a rewritten IPv4 packet: through its connection's cached next
/// hop when there is a valid one that applies, else by a route lookup
/// (whose next hop the caller may cache).
#[inline(always)]
pub fn send_v4<const L3: usize>(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    proto: u8,
    sport: u16,
    dport: u16,
    cached: Option<NextHop>,
) -> Routed {
    match cached.and_then(|nh| cached_v4::<L3>(ctx, ip, &nh)) {
        Some(action) => only(action),
        None => route_v4::<L3>(ctx, ip, proto, sport, dport),
    }
}

/// `send_v4` for IPv6.
#[inline(always)]
pub fn send_v6<const L3: usize>(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    proto: u8,
    sport: u16,
    dport: u16,
    cached: Option<NextHop>,
) -> Routed {
    match cached.and_then(|nh| cached_v6::<L3>(ctx, ip, &nh)) {
        Some(action) => only(action),
        None => route_v6::<L3>(ctx, ip, proto, sport, dport),
    }
}
