//! ICMP for forwarded flows, both families. The family-specific bits (type
//! numbers, IPv4's header checksum, ICMPv6's pseudo-header) branch on the
//! constant `H::FAMILY`, folded away per monomorphisation like the rest.
//!
//! Errors others send (`icmp`), only for an ICMP error whose quote is a
//! plain TCP/UDP packet (inner IPv4 without options and not a fragment,
//! inner IPv6 without extension headers) of one of our flows:
//! - **about a forwarded packet** (the quote is client -> backend
//!   addr:port, a `REVERSE_NAT` entry), from the backend or a router between
//!   this host and it: the client gets it from the VIP quoting its own
//!   packet (quoted destination -> VIP, with the quote's IPv4 header and
//!   TCP/UDP checksums; outer source -> VIP; the ICMP checksum updated
//!   incrementally, ICMPv6's for its pseudo-header too) and it is routed like
//!   a reply (`icmp_to_client`). A backend's own port unreachable about a
//!   judged UDP flow counts once per flow in `SIGNALS.unreachables`. The
//!   host's own connections to a backend (its probes: the quote's source is
//!   in `LOCAL_ADDRS`) keep their ICMP (`pass_reply_no_flow`).
//! - **about a reply** (the quote is VIP:port -> client, a `VIPS` entry),
//!   from a router on the client's side to the VIP: the backend of the flow
//!   entry gets it, quoting its own packet (quoted source and outer
//!   destination -> backend), so its path MTU discovery works toward
//!   clients (`icmp_to_backend`). No flow entry: dropped (`drop_icmp`).
//! - a quote too short to read (inner IP header + 8 bytes), or an IP length
//!   that disagrees with the frame, in an ICMP error addressed to a VIP
//!   address: dropped (`drop_icmp`); to any other address it is not ours.
//! - anything else (echo, redirects, errors about other traffic, quotes with
//!   options or extension headers, which our flows never carry): not ours,
//!   passed untouched (`pass_not_vip`).
//! Translated errors are routed with `route::send` (no cached next hop:
//! they are rare), so they are redirected, or passed to the stack already
//! translated, as any rewritten packet.
//!
//! **Where an error may come from.** Anyone can send an ICMP error quoting
//! any packet, so before translating (and counting) one, two checks tie it
//! to the packet it quotes:
//! - it is addressed to that packet's sender: the outer destination is the
//!   quote's source (the client; for an error about a reply, the VIP);
//! - it came in through the interface that packet left by: the quote's
//!   destination (the backend; for a reply, the client) is routed out of
//!   the ingress interface (`route::toward_ingress`, a `bpf_fib_lookup`
//!   from the ingress interface; as rp_filter, but for the quoted packet).
//! The check is on the quote's destination, not on the outer source as
//! rp_filter would: the sender chooses the outer source, a forger one
//! routed the right way, while the quoted destination is pinned by the map
//! entry that matched (a backend's address, a flow's client). So a client
//! cannot, from the client side, forge a backend's port unreachable
//! against the canary (it arrives on the client's interface), probe which
//! addresses are backends (a guess that is one gets what a guess that is
//! not gets: passed untouched), or have the VIP send ICMP to a third host
//! (the quote's source, the outer destination); from the backends' side,
//! an error to a VIP about a reply is not sent on to a backend. It costs
//! no flow entry, so an error about a connection whose entry was evicted,
//! or that another host of the fleet decided, is translated all the same
//! (unlike a flow-entry check). A refused error is handled as if its quote
//! were no one's: passed untouched (`pass_not_vip`), dropped if addressed
//! to a VIP address (`drop_icmp`). Limits: with the clients and the backends
//! behind one interface (one-armed), every error passes the interface check
//! and only the first check and the flow entry (needed to count an
//! unreachable) remain; with a multipath route over several interfaces, an
//! error coming back through another path than the one the lookup picks
//! (by the quoted packet's addresses and ports) is refused, as strict
//! rp_filter would; an 802.1Q-tagged error cannot be checked (XDP sees the
//! parent device, the route the VLAN device) and is dropped (`drop_icmp`)
//! rather than passed, which would show the client a backend's address
//! (attached to the VLAN devices, the program sees such errors untagged).
//!
//! Errors this host would send (`too_big`): a packet too big for its route
//! (IPv4 with DF, IPv6) is answered here instead of by the stack, which
//! would quote it rewritten: a client's packet to a VIP from the VIP, a
//! backend's reply from the client's address, each quoting the packet as
//! its sender sent it (the rewrite undone; the IP header and 64 bytes),
//! back out of the interface it came in on (`tx_icmp_too_big`).

use crate::classify::is_vip_addr;
use crate::family::IpHdr;
use crate::maps::{BACKENDS, FLOWS, LOCAL_ADDRS, REVERSE_NAT, TX_PORTS, VIPS};
use crate::outcome::Outcome;
use crate::parse::{csum, ptr_at, words16, words4};
use crate::stats::count;
use crate::{judge, nat, route};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use canary_common::checksum::{self, fold};
use canary_common::flow::{FLOW_JUDGED, FLOW_UNREACH_COUNTED};
use canary_common::{
    reason, BackendAddrKey, FlowKey, LocalAddrKey, ReverseNat, VipKey, FAILURE_UNREACHABLE,
    FAMILY_V4, PROTO_TCP, PROTO_UDP,
};
use network_types::eth::EthHdr;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// The ICMP header: type, code, checksum and 4 bytes (unused, or the MTU).
const ICMP_HLEN: usize = 8;
/// The part of a quoted TCP/UDP header an error must carry (RFC 792).
const L4_QUOTED: usize = 8;

/// Bytes of the client's packet a "too big" answer quotes: its IP header
/// and 64 bytes. With the ICMP header, a multiple of 4 (`bpf_csum_diff`).
const QUOTE_V4: usize = Ipv4Hdr::LEN + 64;
const QUOTE_V6: usize = Ipv6Hdr::LEN + 64;
/// What `bpf_csum_diff` sums for the answer's ICMP checksum: the ICMP
/// header and the quote; for ICMPv6 the addresses of the pseudo-header in
/// front of them (they precede it in the header).
const SUM_V4: usize = ICMP_HLEN + QUOTE_V4;
const SUM_V6: usize = 32 + ICMP_HLEN + QUOTE_V6;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

/// The first 8 bytes of a TCP or UDP header: ports, and UDP's checksum.
#[repr(C)]
struct L4Head {
    sport: [u8; 2],
    dport: [u8; 2],
    _len: [u8; 2],
    udp_check: [u8; 2],
}

/// A TCP header up to its checksum.
#[repr(C)]
struct TcpHead {
    _before: [u8; 16],
    check: [u8; 2],
}

#[inline(always)]
fn is_v4<H: IpHdr>() -> bool {
    H::FAMILY == FAMILY_V4
}

#[inline(always)]
fn icmp_proto<H: IpHdr>() -> u8 {
    if is_v4::<H>() {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    }
}

/// The error types: v4 destination unreachable, time exceeded, parameter
/// problem; v6 destination unreachable, packet too big, time exceeded,
/// parameter problem.
#[inline(always)]
fn is_error<H: IpHdr>(kind: u8) -> bool {
    if is_v4::<H>() {
        kind == 3 || kind == 11 || kind == 12
    } else {
        (1..=4).contains(&kind)
    }
}

#[inline(always)]
fn is_port_unreachable<H: IpHdr>(kind: u8, code: u8) -> bool {
    if is_v4::<H>() {
        kind == 3 && code == 3
    } else {
        kind == 1 && code == 4
    }
}

/// The header's version is its family's; IPv4: without options and not a
/// fragment (IPv6: always; an extension header shows as another next
/// header).
#[inline(always)]
fn plain<H: IpHdr>(ip: *const H) -> bool {
    if is_v4::<H>() {
        let ip = ip as *const Ipv4Hdr;
        unsafe { (*ip).vihl == 0x45 && u16::from_be_bytes((*ip).frags) & 0x3fff == 0 }
    } else {
        unsafe { (*(ip as *const Ipv6Hdr)).vcf[0] >> 4 == 6 }
    }
}

/// The protocol (IPv6: next header) of the header at `ip`.
#[inline(always)]
fn proto_of<H: IpHdr>(ip: *const H) -> u8 {
    if is_v4::<H>() {
        unsafe { (*(ip as *const Ipv4Hdr)).proto }
    } else {
        unsafe { (*(ip as *const Ipv6Hdr)).next_hdr }
    }
}

/// The source address of the header at `ip`, in map layout. Read from the
/// packet where it is needed, not kept: an address held across a map
/// lookup is spilled to the stack byte by byte (the packet's bytes are read
/// one at a time), and the stack is the program's scarcest resource.
#[inline(always)]
fn src_of<H: IpHdr>(ip: *const H) -> [u32; 4] {
    if is_v4::<H>() {
        H::addr(&[
            unsafe { words4(&(*(ip as *const Ipv4Hdr)).src_addr) },
            0,
            0,
            0,
        ])
    } else {
        unsafe { words16(&(*(ip as *const Ipv6Hdr)).src_addr) }
    }
}

/// The destination address, as `src_of`.
#[inline(always)]
fn dst_of<H: IpHdr>(ip: *const H) -> [u32; 4] {
    if is_v4::<H>() {
        H::addr(&[
            unsafe { words4(&(*(ip as *const Ipv4Hdr)).dst_addr) },
            0,
            0,
            0,
        ])
    } else {
        unsafe { words16(&(*(ip as *const Ipv6Hdr)).dst_addr) }
    }
}

/// The IPv4 header checksum as stored (IPv6 has none: 0).
#[inline(always)]
fn ip_check<H: IpHdr>(ip: *const H) -> u16 {
    if !is_v4::<H>() {
        return 0;
    }
    unsafe { u16::from_ne_bytes((*(ip as *const Ipv4Hdr)).check) }
}

/// An ICMP error (`ip` its header) we do not translate (a bad quote, or one
/// that fails the checks of the module doc): ours to drop if addressed to a
/// VIP address (the stack would route it toward the VIP), else not ours
/// (`None`: passed untouched, as an error about anyone else's traffic).
#[inline(always)]
fn not_ours<H: IpHdr>(ip: *const H) -> Option<Outcome> {
    is_vip_addr(dst_of(ip), H::FAMILY).then_some(Outcome::drop(reason::DROP_ICMP))
}

/// An ICMP error about one of our flows, translated (see the module doc).
/// `None`: not an ICMP error, or not about our flows; the caller passes it
/// untouched as not ours.
#[inline(always)]
pub fn icmp<H: IpHdr, const L3: usize>(ctx: &XdpContext) -> Option<Outcome> {
    let ip = ptr_at::<H>(ctx, L3)?;
    if proto_of(ip) != icmp_proto::<H>() || !plain(ip) {
        return None;
    }
    let frame_len = ctx.data_end() - ctx.data();
    let msg = L3 + H::LEN;
    let inner_at = msg + ICMP_HLEN;
    let l4_at = inner_at + H::LEN;
    let hdr = ptr_at::<IcmpHdr>(ctx, msg)?;
    let (kind, code) = unsafe { ((*hdr).kind, (*hdr).code) };
    if !is_error::<H>(kind) {
        return None;
    }
    let (Some(inner), Some(ports)) = (ptr_at::<H>(ctx, inner_at), ptr_at::<L4Head>(ctx, l4_at))
    else {
        return not_ours(ip);
    };
    let (sport, dport) = unsafe {
        (
            u16::from_ne_bytes((*ports).sport),
            u16::from_ne_bytes((*ports).dport),
        )
    };
    // Verifier: the lengths are compared only after the reads above went
    // through their own bounds checks (see `classify`).
    let ip_len = H::ip_len(ip);
    if L3 + ip_len > frame_len || ip_len < H::LEN + ICMP_HLEN + H::LEN + L4_QUOTED {
        return not_ours(ip);
    }
    let proto = proto_of(inner);
    // Options, a fragment, an extension header, not TCP/UDP: never one of
    // our flows (the forward path drops those, the reply path passes them
    // unrewritten).
    if !plain(inner) || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let q = Quote {
        inner,
        l4_at,
        // The quoted TCP/UDP bytes inside the IP packet (not the frame's
        // padding).
        l4_quoted: L3 + ip_len - l4_at,
        proto,
        sport,
        dport,
    };
    // A client's packet to a backend (DNAT'ed): tell the client.
    let key = BackendAddrKey::new(dst_of(inner), dport, proto, H::FAMILY);
    if let Some(rev) = unsafe { REVERSE_NAT.get(&key) } {
        let local = LocalAddrKey {
            addr: src_of(inner),
            family: H::FAMILY as u32,
        };
        if unsafe { LOCAL_ADDRS.get(&local) }.is_some() {
            // This host's own connection to the backend (a probe).
            return Some(Outcome::pass(reason::PASS_REPLY_NO_FLOW));
        }
        // To the client, from the backend's side (module doc).
        if let Err(refused) = came_back::<H, L3>(ctx, ip, &q) {
            return refused;
        }
        let unreachable = is_port_unreachable::<H>(kind, code) && proto == PROTO_UDP;
        return Some(to_client::<H, L3>(ctx, ip, hdr, &q, rev, unreachable));
    }
    // A reply (reverse-NATed) from a VIP: tell its backend.
    let key = VipKey::new(src_of(inner), sport, proto, H::FAMILY);
    if unsafe { VIPS.get(&key) }.is_some() {
        // To the VIP, from the client's side.
        if let Err(refused) = came_back::<H, L3>(ctx, ip, &q) {
            return refused;
        }
        return Some(to_backend::<H, L3>(ctx, ip, hdr, &q));
    }
    None
}

/// The checks of the module doc ("where an error may come from") on the
/// error at `ip` about the quoted packet `q`: did it come back the way that
/// packet went? `Err`: what to do with it instead of translating it
/// (`None`: not ours, passed untouched).
#[inline(always)]
fn came_back<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *const H,
    q: &Quote<H>,
) -> Result<(), Option<Outcome>> {
    // Addressed to the quoted packet's sender.
    if dst_of(ip) != src_of(q.inner) {
        return Err(not_ours(ip));
    }
    // Tagged: the ingress is the parent device, the route's interface the
    // VLAN device. Not checkable, and not to be passed on untranslated.
    if L3 != EthHdr::LEN {
        return Err(Some(Outcome::drop(reason::DROP_ICMP)));
    }
    // Through the interface toward the quoted packet's destination (with
    // its ports, so a multipath route hashes it as it did the packet).
    if !route::toward_ingress::<H>(ctx, q.inner, q.proto, q.sport, q.dport) {
        return Err(not_ours(ip));
    }
    Ok(())
}

/// The quoted packet of an ICMP error (its addresses are read where they
/// are needed, see `src_of`).
struct Quote<H> {
    inner: *mut H,
    /// Offset of its TCP/UDP header, and how many of its bytes the error
    /// carries (at least `L4_QUOTED`).
    l4_at: usize,
    l4_quoted: usize,
    proto: u8,
    /// Map layout, as `Packet`'s.
    sport: u16,
    dport: u16,
}

/// The backend's port unreachable about the UDP flow `flow` (as the client
/// sent it): one failure of a judged flow, once.
#[inline(always)]
fn note_unreachable(flow: &FlowKey, rev: &ReverseNat) {
    let Some(e) = FLOWS.get_ptr_mut(flow) else {
        return;
    };
    let (flags, backend_id) = unsafe { ((*e).flags, (*e).backend_id) };
    if backend_id != rev.backend_id || flags & FLOW_JUDGED == 0 || flags & FLOW_UNREACH_COUNTED != 0
    {
        return;
    }
    unsafe { (*e).flags = flags | FLOW_UNREACH_COUNTED };
    let version = rev.version & 1;
    judge::failure(flow, rev.service_id, version, FAILURE_UNREACHABLE);
}

/// An error about a client -> backend packet: from the VIP to the client,
/// quoting the client's packet as it sent it. `unreachable`: a port
/// unreachable about UDP, a failure if the backend itself sent it.
#[inline(always)]
fn to_client<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    hdr: *mut IcmpHdr,
    q: &Quote<H>,
    rev: &ReverseNat,
    unreachable: bool,
) -> Outcome {
    let vip = H::addr(&rev.vip);
    if unreachable && src_of(ip) == dst_of(q.inner) {
        let flow = FlowKey::new(src_of(q.inner), vip, q.sport, q.dport, PROTO_UDP, H::FAMILY);
        note_unreachable(&flow, rev);
    }
    translate::<H, L3>(ctx, ip, hdr, q, false, &vip, reason::ICMP_TO_CLIENT)
}

/// An error about a reply (VIP -> client): to the flow's backend, quoting
/// the packet as the backend sent it.
#[inline(always)]
fn to_backend<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    hdr: *mut IcmpHdr,
    q: &Quote<H>,
) -> Outcome {
    // The connection as the client sent it: client -> VIP.
    let flow = FlowKey::new(
        dst_of(q.inner),
        src_of(q.inner),
        q.dport,
        q.sport,
        q.proto,
        H::FAMILY,
    );
    let Some(entry) = (unsafe { FLOWS.get(&flow) }) else {
        return Outcome::drop(reason::DROP_ICMP);
    };
    let Some(b) = BACKENDS.get(entry.backend_id) else {
        return Outcome::drop(reason::DROP_ICMP);
    };
    let backend = H::addr(&b.addr);
    translate::<H, L3>(ctx, ip, hdr, q, true, &backend, reason::ICMP_TO_BACKEND)
}

/// Translates the error at `ip` and sends it on, counted as `why`: the
/// quoted packet's destination becomes `new` (see `rewrite_quote`), and so
/// does the error's source, which speaks for that destination; with `src`,
/// the quoted packet's source and the error's destination. The ICMP
/// checksum follows both (ICMPv6's covers its pseudo-header's addresses).
#[inline(always)]
fn translate<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    hdr: *mut IcmpHdr,
    q: &Quote<H>,
    src: bool,
    new: &[u32; 4],
    why: u32,
) -> Outcome {
    let mut check = unsafe { u16::from_ne_bytes((*hdr).check) };
    check = rewrite_quote::<H>(ctx, q, src, new, check);
    // The quote's source is the error's destination, and the other way.
    let old = if src { dst_of(ip) } else { src_of(ip) };
    if src {
        H::set_dst(ip, &old, new);
    } else {
        H::set_src(ip, &old, new);
    }
    if !is_v4::<H>() {
        check = H::l4_check(check, &old, new);
    }
    unsafe { (*hdr).check = check.to_ne_bytes() };
    count(why);
    route::send::<H, L3>(ctx, ip, icmp_proto::<H>(), 0, 0, core::ptr::null()).outcome
}

/// Rewrites the quoted packet's source (`src`) or destination address to
/// `new`, with its IPv4 header checksum and its TCP/UDP checksum when the
/// quote holds it (a UDP checksum of 0 stays 0). Returns the ICMP checksum
/// `check` updated for every 16-bit word that changed (all at even offsets
/// of the ICMP message). `H::l4_check` is the family's "address `old`
/// became `new`" update, whatever the checksum.
#[inline(always)]
fn rewrite_quote<H: IpHdr>(
    ctx: &XdpContext,
    q: &Quote<H>,
    src: bool,
    new: &[u32; 4],
    mut check: u16,
) -> u16 {
    let ip_check_before = ip_check(q.inner);
    let old = if src {
        src_of(q.inner)
    } else {
        dst_of(q.inner)
    };
    if src {
        H::set_src(q.inner, &old, new);
    } else {
        H::set_dst(q.inner, &old, new);
    }
    check = H::l4_check(check, &old, new);
    if is_v4::<H>() {
        check = checksum::replace_u16(check, ip_check_before, ip_check(q.inner));
    }
    if q.proto == PROTO_TCP {
        if q.l4_quoted < core::mem::size_of::<TcpHead>() {
            return check;
        }
        let Some(t) = ptr_at::<TcpHead>(ctx, q.l4_at) else {
            return check;
        };
        unsafe {
            let before = u16::from_ne_bytes((*t).check);
            let after = H::l4_check(before, &old, new);
            (*t).check = after.to_ne_bytes();
            check = checksum::replace_u16(check, before, after);
        }
    } else {
        // UDP: the whole header is in every quote we take.
        let Some(u) = ptr_at::<L4Head>(ctx, q.l4_at) else {
            return check;
        };
        unsafe {
            let before = u16::from_ne_bytes((*u).udp_check);
            if before != 0 {
                let after = checksum::udp_nonzero(H::l4_check(before, &old, new));
                (*u).udp_check = after.to_ne_bytes();
                check = checksum::replace_u16(check, before, after);
            }
        }
    }
    check
}

/// Bytes of the packet a "too big" answer quotes.
#[inline(always)]
fn quote_len<H: IpHdr>() -> usize {
    if is_v4::<H>() {
        QUOTE_V4
    } else {
        QUOTE_V6
    }
}

/// Answers a packet too big for its route (`mtu`), if it is ours to
/// answer: IPv4 with DF set, and IPv6, when the packet holds the fixed-size
/// quote; else `None`, untouched (IPv4 without DF: the stack fragments it).
/// The packet at `L3` was rewritten: its `orig` destination (`src`: source)
/// is put back first (with its checksums), so the answer quotes it as its
/// sender sent it (see `answer_too_big`).
#[inline(always)]
pub fn too_big<H: IpHdr, const L3: usize>(
    ctx: &XdpContext,
    ip: *mut H,
    l4: usize,
    proto: u8,
    orig: &[u32; 4],
    src: bool,
    mtu: u16,
) -> Option<Outcome> {
    let q = quote_len::<H>();
    let frame_len = ctx.data_end() - ctx.data();
    if H::ip_len(ip) < q || frame_len < L3 + q {
        return None;
    }
    if is_v4::<H>() && unsafe { u16::from_be_bytes((*(ip as *const Ipv4Hdr)).frags) } & 0x4000 == 0
    {
        return None;
    }
    // The undo: the rewrite's own code, back (the same incremental
    // updates, so the checksums come back as they were).
    let undone = if src {
        nat::snat::<H>(ctx, ip, l4, proto, &src_of(ip), orig)
    } else {
        nat::dnat::<H>(ctx, ip, l4, proto, &dst_of(ip), orig)
    };
    Some(match undone {
        Some(()) => answer_too_big::<H, L3>(ctx, mtu),
        None => Outcome::drop(reason::DROP_ICMP),
    })
}

/// Answers the packet at `L3` (as its sender sent it) with ICMP
/// "fragmentation needed" (v4: type 3 code 4) / "packet too big" (v6: type
/// 2) carrying `mtu`, from the packet's destination to its source, quoting
/// its first `QUOTE_V4`/`QUOTE_V6` bytes, sent back out of the ingress
/// interface with the MACs swapped; an 802.1Q tag is kept.
///
/// The frame is cut after the quote (`bpf_xdp_adjust_tail`), grown in
/// front by the new IP and ICMP headers (`bpf_xdp_adjust_head`), and the
/// Ethernet header moved to the new front; the quote stays where it was,
/// and the new header's addresses are copied from it (packet to packet:
/// nothing held across the helper calls, see `src_of`).
#[inline(always)]
fn answer_too_big<H: IpHdr, const L3: usize>(ctx: &XdpContext, mtu: u16) -> Outcome {
    const FAILED: Outcome = Outcome::drop(reason::DROP_ICMP);
    let frame_len = ctx.data_end() - ctx.data();
    let keep = L3 + quote_len::<H>();
    if frame_len > keep {
        let delta = keep as i32 - frame_len as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return FAILED;
        }
    }
    let grow = H::LEN + ICMP_HLEN;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return FAILED;
    }
    // Every packet pointer is new after the adjustments.
    let (Some(eth), Some(old_eth)) = (ptr_at::<[u8; L3]>(ctx, 0), ptr_at::<[u8; L3]>(ctx, grow))
    else {
        return FAILED;
    };
    unsafe {
        let (new, old) = (eth as *mut u8, old_eth as *const u8);
        // Back where it came from: the MACs swapped, the tag (if any) and
        // the EtherType as they were.
        core::ptr::copy_nonoverlapping(old.add(6), new, 6);
        core::ptr::copy_nonoverlapping(old, new.add(6), 6);
        core::ptr::copy_nonoverlapping(old.add(12), new.add(12), L3 - 12);
    }
    let built = if is_v4::<H>() {
        build_v4::<L3>(ctx, mtu)
    } else {
        build_v6::<L3>(ctx, mtu)
    };
    if built.is_none() {
        return FAILED;
    }
    // Back out of the interface it came in on: redirected to it when it is
    // a TX port, else XDP_TX (the helper's answer when the port is not in
    // the map: the flags' low bits). A redirect because on a veth, XDP_TX
    // wakes the peer only if the peer runs an XDP program itself, while a
    // redirect needs what every forwarded frame needs (NAPI on the peer:
    // GRO on); on a NIC both are the same transmit.
    let port = unsafe { (*ctx.ctx).ingress_ifindex };
    match TX_PORTS.redirect(port, xdp_action::XDP_TX as u64) {
        Ok(_) => Outcome::redirected(reason::TX_ICMP_TOO_BIG),
        Err(_) => Outcome::tx(reason::TX_ICMP_TOO_BIG),
    }
}

#[inline(always)]
fn build_v4<const L3: usize>(ctx: &XdpContext, mtu: u16) -> Option<()> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, L3)?;
    let msg = ptr_at::<[u8; SUM_V4]>(ctx, L3 + Ipv4Hdr::LEN)?;
    let quoted = ptr_at::<Ipv4Hdr>(ctx, L3 + Ipv4Hdr::LEN + ICMP_HLEN)?;
    unsafe {
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = ((Ipv4Hdr::LEN + SUM_V4) as u16).to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0, 0];
        (*ip).ttl = 64;
        (*ip).proto = PROTO_ICMP;
        (*ip).check = [0, 0];
        copy4(&(*quoted).dst_addr, &mut (*ip).src_addr);
        copy4(&(*quoted).src_addr, &mut (*ip).dst_addr);
        let check = !fold(csum(ip as *mut [u8; Ipv4Hdr::LEN], 0)?);
        (*ip).check = check.to_ne_bytes();

        let m = msg as *mut u8;
        // Type 3 (destination unreachable), code 4 (fragmentation
        // needed), checksum, 2 unused bytes, the next hop's MTU.
        let mtu = mtu.to_be_bytes();
        let head: [u8; ICMP_HLEN] = [3, 4, 0, 0, 0, 0, mtu[0], mtu[1]];
        core::ptr::copy_nonoverlapping(head.as_ptr(), m, ICMP_HLEN);
        let check = !fold(csum(msg, 0)?);
        core::ptr::copy_nonoverlapping(check.to_ne_bytes().as_ptr(), m.add(2), 2);
    }
    Some(())
}

#[inline(always)]
fn build_v6<const L3: usize>(ctx: &XdpContext, mtu: u16) -> Option<()> {
    const PAYLOAD: usize = ICMP_HLEN + QUOTE_V6;
    let ip = ptr_at::<Ipv6Hdr>(ctx, L3)?;
    let quoted = ptr_at::<Ipv6Hdr>(ctx, L3 + Ipv6Hdr::LEN + ICMP_HLEN)?;
    // The addresses, the ICMPv6 header and the quote, contiguous.
    let summed = ptr_at::<[u8; SUM_V6]>(ctx, L3 + 8)?;
    unsafe {
        (*ip).vcf = [0x60, 0, 0, 0];
        (*ip).payload_len = (PAYLOAD as u16).to_be_bytes();
        (*ip).next_hdr = PROTO_ICMPV6;
        (*ip).hop_limit = 64;
        copy16(&(*quoted).dst_addr, &mut (*ip).src_addr);
        copy16(&(*quoted).src_addr, &mut (*ip).dst_addr);

        let m = (summed as *mut u8).add(32);
        // Type 2 (packet too big), code 0, checksum, the MTU (32 bits).
        let mtu = (mtu as u32).to_be_bytes();
        let head: [u8; ICMP_HLEN] = [2, 0, 0, 0, mtu[0], mtu[1], mtu[2], mtu[3]];
        core::ptr::copy_nonoverlapping(head.as_ptr(), m, ICMP_HLEN);
        // The pseudo-header's upper-layer length and next header, as the
        // packet's bytes would be loaded (see `canary_common::checksum`).
        let len = u32::from_ne_bytes((PAYLOAD as u32).to_be_bytes()) as u64;
        let next = u32::from_ne_bytes([0, 0, 0, PROTO_ICMPV6]) as u64;
        let check = !fold(csum(summed, 0)? + len + next);
        core::ptr::copy_nonoverlapping(check.to_ne_bytes().as_ptr(), m.add(2), 2);
    }
    Some(())
}

/// Packet to packet, non-overlapping: expanded inline (a plain assignment
/// may become a call to a byte-loop `memmove`, see `route::set_macs`).
#[inline(always)]
fn copy4(from: &[u8; 4], to: &mut [u8; 4]) {
    unsafe { core::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr(), 4) };
}

#[inline(always)]
fn copy16(from: &[u8; 16], to: &mut [u8; 16]) {
    unsafe { core::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr(), 16) };
}
