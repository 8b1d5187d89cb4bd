//! Classify: read the IP header and the ports, and sort out the shapes that
//! cannot be split. What each gets (the family-specific checks are in
//! `family.rs`):
//! - headers too short or inconsistent to tell the destination (truncated
//!   IP header, bad IP version, IHL < 5): XDP_PASS (`pass_malformed`); the
//!   kernel's own validation deals with it.
//! - not a plain TCP/UDP packet, and not addressed to a VIP address:
//!   XDP_PASS, untouched (`pass_not_vip`).
//! - addressed to a VIP address (its marker entry in VIPS), but not
//!   splittable: IPv4 with options (`drop_ip_options`), IPv4 fragments
//!   (`drop_fragment`: later fragments carry no ports, so no consistent
//!   decision is possible), IPv6 with an extension header (hop-by-hop,
//!   routing, fragment, ESP, AH, destination options, ...: `drop_ipv6_ext`),
//!   a truncated L4 header or an IP length larger than the frame
//!   (`drop_malformed`): XDP_DROP. The host does not own the VIP, so passing
//!   these would only bounce an ICMP error. Another protocol (ICMP echo,
//!   say) to a VIP address is passed (`pass_not_vip`).
//! - a TCP/UDP packet addressed to a VIP address whose own lengths disagree
//!   with the IP header's: a UDP length other than the IP payload's
//!   (`drop_udp_length`), a TCP data offset below 5 words or beyond the
//!   segment (`drop_tcp_offset`): XDP_DROP. The same packet not addressed
//!   to a VIP is not ours: XDP_PASS (`pass_not_vip`).
//! - a plain TCP/UDP packet: a `Packet`, for the forward or reply path.

use crate::family::IpHdr;
use crate::maps::VIPS;
use crate::outcome::Outcome;
use crate::parse::ptr_at;
use aya_ebpf::programs::XdpContext;
use canary_common::{reason, VipKey, PROTO_TCP};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

/// A TCP or UDP packet whose headers are all in the frame.
pub struct Packet<H> {
    pub ip: *mut H,
    /// Offset of the L4 header (a constant per monomorphisation).
    pub l4: usize,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports in map layout (network-order bytes read as native).
    pub sport: u16,
    pub dport: u16,
    pub frame_len: usize,
    /// The L4 segment's length, as the IP header says.
    pub l4_len: usize,
}

/// The packet at `L3`, or the outcome of a packet that cannot be split.
#[inline(always)]
pub fn classify<H: IpHdr, const L3: usize>(ctx: &XdpContext) -> Result<Packet<H>, Outcome> {
    let Some(ip) = ptr_at::<H>(ctx, L3) else {
        return Err(Outcome::pass(reason::PASS_MALFORMED));
    };
    let frame_len = ctx.data_end() - ctx.data();
    let h = H::header(ip, L3, frame_len)?;
    let l4 = L3 + H::LEN;
    // The common case first: a well-formed TCP/UDP packet goes on with its
    // ports straight away; the address-only VIP check is needed only to
    // tell what to do with packets that cannot be split.
    let ports = match h.unsplittable {
        None => ports(ctx, l4, h.proto),
        Some(_) => None,
    };
    // Verifier: the IP lengths are checked only after the ports were read
    // through their own bounds check. Checked before, they imply that check
    // (frame_len is data_end - data), LLVM drops it, and the verifier, which
    // does not follow that scalar arithmetic, rejects the read.
    let ports = ports.filter(|_| h.lengths_ok);
    let Some((sport, dport, l4_len)) = ports else {
        if !is_vip_addr(h.dst, H::FAMILY) {
            return Err(Outcome::pass(reason::PASS_NOT_VIP));
        }
        // A plain TCP/UDP packet whose lengths disagree with the frame.
        return Err(h
            .unsplittable
            .unwrap_or(Outcome::drop(reason::DROP_MALFORMED)));
    };
    let bad_l4 = l4_rule(h.proto, l4_len, h.l4_len);
    if bad_l4 != 0 {
        return Err(if is_vip_addr(h.dst, H::FAMILY) {
            Outcome::drop(bad_l4)
        } else {
            Outcome::pass(reason::PASS_NOT_VIP)
        });
    }
    Ok(Packet {
        ip,
        l4,
        proto: h.proto,
        src: h.src,
        dst: h.dst,
        sport,
        dport,
        frame_len,
        l4_len: h.l4_len,
    })
}

/// Is `addr` one of our VIP addresses (any port)?
#[inline(always)]
pub(crate) fn is_vip_addr(addr: [u32; 4], family: u8) -> bool {
    unsafe { VIPS.get(&VipKey::marker(addr, family)) }.is_some()
}

/// The ports of a TCP or UDP header at `l4`, if the frame holds the header,
/// and the length the header itself claims: TCP's data offset in bytes,
/// UDP's length field.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, proto: u8) -> Option<(u16, u16, usize)> {
    if proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, l4)?;
        unsafe {
            Some((
                u16::from_ne_bytes((*tcp).source),
                u16::from_ne_bytes((*tcp).dest),
                (*tcp).doff() as usize * 4,
            ))
        }
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, l4)?;
        unsafe {
            Some((
                u16::from_ne_bytes((*udp).src),
                u16::from_ne_bytes((*udp).dst),
                u16::from_be_bytes((*udp).len) as usize,
            ))
        }
    }
}

/// The length rules of the L4 header against the IP header's segment
/// length `segment`: 0 when they hold, else the drop reason. TCP: the data
/// offset (`claimed`, bytes) is at least the 20-byte header and within the
/// segment. UDP: the length field is the segment's length exactly.
#[inline(always)]
fn l4_rule(proto: u8, claimed: usize, segment: usize) -> u32 {
    if proto == PROTO_TCP {
        if claimed < TcpHdr::LEN || claimed > segment {
            return reason::DROP_TCP_OFFSET;
        }
    } else if claimed != segment {
        return reason::DROP_UDP_LENGTH;
    }
    0
}
