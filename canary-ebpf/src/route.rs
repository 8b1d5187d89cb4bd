//! Sending a rewritten packet on, for both families and both directions:
//! through the connection's cached next hop when one applies, else by
//! asking the kernel's FIB (`bpf_fib_lookup`) and redirecting out of the
//! egress interface, or handing the packet to the stack when the kernel has
//! work to do (resolve a neighbour, a VLAN device, an ICMP error to send).
//! A packet larger than its route's MTU is reported (`Routed::too_big`) so
//! the caller can answer it itself (see `icmp::too_big`). The same lookup
//! checks where an ICMP error may come from (`toward_ingress`).

use crate::family::IpHdr;
use crate::maps::TX_PORTS;
use crate::outcome::Outcome;
use crate::parse::ptr_at;
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use canary_common::{reason, NextHop};
use network_types::eth::EthHdr;

/// The verdict on a packet, and the next hop it was redirected to (for the
/// flow entry's cache; `gen` is filled in by the caller).
pub struct Routed {
    pub outcome: Outcome,
    pub learned: Option<NextHop>,
    /// Non-zero: the packet is larger than its route's MTU, this one
    /// (`outcome` then passes it to the stack, untouched since the
    /// rewrite, should the caller not answer it itself).
    pub too_big: u16,
}

#[inline(always)]
fn only(outcome: Outcome) -> Routed {
    Routed {
        outcome,
        learned: None,
        too_big: 0,
    }
}

/// Forwards a rewritten packet: through its connection's cached next hop
/// when there is one (not null) that applies, else by a route lookup (whose
/// next hop the caller may cache).
#[inline(always)]
pub fn send<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    proto: u8,
    sport: u16,
    dport: u16,
    cached: *const NextHop,
) -> Routed {
    if !cached.is_null() {
        if let Some(outcome) = via_cached::<H, L3>(ctx, ip, unsafe { &*cached }) {
            return only(outcome);
        }
    }
    lookup::<H, L3>(ctx, ip, proto, sport, dport)
}

/// Redirects with a cached next hop, as `finish` would have after a lookup.
/// `None` (and the packet untouched) when the cache does not apply: a VLAN
/// frame, an expiring TTL, a packet over the route's MTU. The caller then
/// takes the slow path.
#[inline(always)]
fn via_cached<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    nh: &NextHop,
) -> Option<Outcome> {
    let (ttl, ip_len) = (H::ttl(ip), H::ip_len(ip));
    if L3 != EthHdr::LEN || ttl <= 1 || ip_len > nh.mtu as usize {
        return None;
    }
    // No TX_PORTS check first (one lookup less per packet): a next hop is
    // cached only after a redirect to its port succeeded, and canaryd bumps
    // the generation whenever TX_PORTS changes, so a valid cached port is
    // in the map; should it vanish anyway, the redirect fails below.
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    H::decrement_ttl(ip);
    set_macs(eth, &nh.dmac, &nh.smac);
    Some(match TX_PORTS.redirect(nh.ifindex, 0) {
        Ok(_) => Outcome::REDIRECT,
        // The port vanished between the check and the redirect. The frame
        // already carries the next hop's MACs, so the stack would discard
        // it as not ours: count it as the drop it is.
        Err(_) => Outcome::drop(reason::DROP_UNROUTABLE),
    })
}

/// Verifier-friendly and cheap: a plain `(*eth).dst_addr = mac` becomes a
/// call to a byte-loop `memmove` (the packet and the source may alias, as
/// far as LLVM knows); a non-overlapping copy of 6 bytes is expanded inline.
#[inline(always)]
fn set_macs(eth: *mut EthHdr, dmac: &[u8; 6], smac: &[u8; 6]) {
    unsafe {
        core::ptr::copy_nonoverlapping(dmac.as_ptr(), (*eth).dst_addr.as_mut_ptr(), 6);
        core::ptr::copy_nonoverlapping(smac.as_ptr(), (*eth).src_addr.as_mut_ptr(), 6);
    }
}

#[inline(always)]
fn lookup<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Routed {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    let ttl = H::ttl(ip);
    let rc = fib::<H>(ctx, ip, proto, sport, dport, true, &mut p);
    finish::<H, L3>(ctx, ip, &p, rc, ttl)
}

/// Is the destination of the IP header at `ip` (protocol `proto`, ports in
/// map layout) routed out of the interface this frame came in on? The
/// header need not be the frame's own: for an ICMP error it is the quoted
/// packet, and an error about a packet sent toward X is expected from X's
/// side (see `icmp`). Only the route's interface is asked for: an
/// unresolved neighbour does not matter (the kernel sets the interface
/// before it looks for the neighbour), nor does the quoted length (not
/// compared with the MTU). No route, a local or unreachable destination,
/// forwarding off on the ingress interface: false.
#[inline(always)]
pub fn toward_ingress<H: IpHdr>(
    ctx: &XdpContext,
    ip: *const H,
    proto: u8,
    sport: u16,
    dport: u16,
) -> bool {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    let rc = fib::<H>(ctx, ip, proto, sport, dport, false, &mut p) as u32;
    (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
        && p.ifindex == ctx.ingress_ifindex() as u32
}

/// The `bpf_fib_lookup` of the packet whose IP header is at `ip` (protocol
/// `proto`, ports in map layout) as it came in on the ingress interface:
/// `p` (zeroed) filled in and answered, the helper's return code. `len`:
/// the header's length is compared with the route's MTU (else 0: not).
#[inline(always)]
fn fib<H: IpHdr>(
    ctx: &XdpContext,
    ip: *const H,
    proto: u8,
    sport: u16,
    dport: u16,
    len: bool,
    p: &mut FibParams,
) -> i64 {
    H::fib_query(ip, p);
    if !len {
        p.__bindgen_anon_1.tot_len = 0;
    }
    p.l4_protocol = proto;
    p.sport = sport;
    p.dport = dport;
    p.ifindex = ctx.ingress_ifindex() as u32;
    unsafe { bpf_fib_lookup(ctx.as_ptr(), p, core::mem::size_of::<FibParams>() as i32, 0) }
}

/// After a lookup: redirect if we may, else let the stack route. The TTL is
/// decremented only when the packet really is redirected (the stack
/// decrements it itself otherwise).
#[inline(always)]
fn finish<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    params: &FibParams,
    rc: i64,
    ttl: u8,
) -> Routed {
    let rc = rc as u32;
    if rc == BPF_FIB_LKUP_RET_BLACKHOLE
        || rc == BPF_FIB_LKUP_RET_UNREACHABLE
        || rc == BPF_FIB_LKUP_RET_PROHIBIT
    {
        return only(Outcome::drop(reason::DROP_UNROUTABLE));
    }
    // Over the route's MTU (the kernel reports it in the field the length
    // went in): the stack would fragment it or send the ICMP, quoting the
    // rewritten packet; the caller may answer it instead.
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED {
        return Routed {
            outcome: Outcome::pass(reason::PASS_TO_STACK),
            learned: None,
            too_big: unsafe { params.__bindgen_anon_1.mtu_result },
        };
    }
    // NO_NEIGH, NOT_FWDED, ...: the kernel knows what to do.
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return only(Outcome::pass(reason::PASS_TO_STACK));
    }
    // A tagged frame must leave through the VLAN device the stack owns; an
    // expiring TTL needs an ICMP time-exceeded from the stack (a reply's,
    // or a translated ICMP's: the forward path drops its own before).
    if L3 != EthHdr::LEN || ttl <= 1 {
        return only(Outcome::pass(reason::PASS_TO_STACK));
    }
    if TX_PORTS.get_ifindex(params.ifindex).is_none() {
        return only(Outcome::pass(reason::PASS_TO_STACK));
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return only(Outcome::pass(reason::PASS_MALFORMED));
    };
    H::decrement_ttl(ip);
    set_macs(eth, &params.dmac, &params.smac);
    match TX_PORTS.redirect(params.ifindex, 0) {
        Ok(_) => {
            // On success the kernel reports the route's MTU in the same
            // field the packet length went in; 0 (not reported): no cache.
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            Routed {
                outcome: Outcome::REDIRECT,
                learned: (mtu != 0).then_some(NextHop {
                    ifindex: params.ifindex,
                    gen: 0,
                    mtu,
                    dmac: params.dmac,
                    smac: params.smac,
                    _pad: [0; 2],
                }),
                too_big: 0,
            }
        }
        // As in `via_cached`: rewritten for the next hop, the stack would
        // drop it.
        Err(_) => only(Outcome::drop(reason::DROP_UNROUTABLE)),
    }
}
