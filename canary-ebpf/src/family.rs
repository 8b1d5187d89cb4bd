//! The address family as a trait over the header types (`Ipv4Hdr`,
//! `Ipv6Hdr`), so the forward and reply paths, the rewrites and the routing
//! are written once and monomorphised per family. Every method is
//! `#[inline(always)]`: after inlining each family's code is what a
//! hand-written per-family path would be, and every packet offset the
//! verifier sees is still a constant.
//!
//! Addresses travel in the map layout (`[u32; 4]`, IPv4 in word 0, see
//! `canary_common`); what differs per family (the header fields, IPv4's
//! header checksum, how many words the checksums cover, the FIB query) is
//! behind the trait.

use crate::outcome::Outcome;
use crate::parse::{bytes16, words16, words4};
use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use canary_common::{checksum, reason, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the IP header says, read once.
pub struct Header {
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// `None`: a plain TCP/UDP packet, splittable if `lengths_ok`.
    /// Otherwise the verdict for it when it is addressed to a VIP address
    /// (see `classify`).
    pub unsplittable: Option<Outcome>,
    /// The IP lengths hold the L4 header and fit in the frame.
    pub lengths_ok: bool,
    /// The L4 segment's length as the IP header says (IPv4: total length
    /// minus the header; IPv6: the payload length).
    pub l4_len: usize,
}

/// An IP header type the data plane handles.
/// A zero the optimiser cannot see through (see `Ipv4Hdr::addr`).
#[inline(always)]
fn opaque_zero() -> u32 {
    let zero = 0u32;
    unsafe { core::ptr::read_volatile(&zero) }
}

pub trait IpHdr: Sized {
    /// `FAMILY_V4`/`FAMILY_V6` in map keys.
    const FAMILY: u8;
    /// The fixed header's length (no options, no extension headers): the L4
    /// header follows it in every packet we split.
    const LEN: usize;

    /// Reads the header at `ip` (the frame holds `Self::LEN` bytes there;
    /// `l3` is its offset). `Err`: not a header of this family at all.
    fn header(ip: *const Self, l3: usize, frame_len: usize) -> Result<Header, Outcome>;

    /// An address from a map value, as this family's keys hold it (IPv4:
    /// words 1..3 zero).
    fn addr(words: &[u32; 4]) -> [u32; 4];

    /// `check` (TCP/UDP, pseudo-header) after the address `old` became `new`.
    fn l4_check(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16;

    /// Rewrites the destination address (`old` is the current one), with
    /// the IP header checksum if there is one.
    fn set_dst(ip: *mut Self, old: &[u32; 4], new: &[u32; 4]);

    /// Rewrites the source address, as `set_dst`.
    fn set_src(ip: *mut Self, old: &[u32; 4], new: &[u32; 4]);

    /// TTL or hop limit.
    fn ttl(ip: *const Self) -> u8;

    /// Decrements it (and updates the checksum that covers it).
    fn decrement_ttl(ip: *mut Self);

    /// The whole IP packet's length, as compared with a route's MTU.
    fn ip_len(ip: *const Self) -> usize;

    /// Fills the family's part of a `bpf_fib_lookup` query: family, length,
    /// TOS or flow info, addresses.
    fn fib_query(ip: *const Self, p: &mut FibParams);
}

#[inline(always)]
pub fn l4_header_len(proto: u8) -> usize {
    if proto == PROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    }
}

#[inline(always)]
fn is_l4(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

impl IpHdr for Ipv4Hdr {
    const FAMILY: u8 = FAMILY_V4;
    const LEN: usize = Ipv4Hdr::LEN;

    #[inline(always)]
    fn header(ip: *const Self, l3: usize, frame_len: usize) -> Result<Header, Outcome> {
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
            return Err(Outcome::pass(reason::PASS_MALFORMED));
        }
        // More-fragments flag or a non-zero offset.
        let fragment = frags & 0x3fff != 0;
        let lengths_ok = tot_len >= ihl * 4 + l4_header_len(proto) && l3 + tot_len <= frame_len;
        let unsplittable = if ihl != 5 {
            Some(Outcome::drop(reason::DROP_IP_OPTIONS))
        } else if fragment {
            // Later fragments carry no ports: no consistent decision.
            Some(Outcome::drop(reason::DROP_FRAGMENT))
        } else if !is_l4(proto) {
            // ICMP and the rest are not split.
            Some(Outcome::pass(reason::PASS_NOT_VIP))
        } else {
            None
        };
        Ok(Header {
            proto,
            src: [src, 0, 0, 0],
            dst: [dst, 0, 0, 0],
            unsplittable,
            lengths_ok,
            l4_len: tot_len.saturating_sub(ihl * 4),
        })
    }

    #[inline(always)]
    fn addr(words: &[u32; 4]) -> [u32; 4] {
        // Zeros LLVM cannot see: with literal ones it merges the zero words
        // of every key built from this address with their neighbours into
        // a call to a byte-loop `memset`, on every packet.
        let z = opaque_zero();
        [words[0], z, z, z]
    }

    #[inline(always)]
    fn l4_check(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
        // One word: adding the zero words 1..3 could turn a 0x0000 sum into
        // 0xffff and change the bytes.
        checksum::replace_words(check, &[old[0]], &[new[0]])
    }

    #[inline(always)]
    fn set_dst(ip: *mut Self, old: &[u32; 4], new: &[u32; 4]) {
        unsafe {
            let c = u16::from_ne_bytes((*ip).check);
            (*ip).check = checksum::replace_words(c, &[old[0]], &[new[0]]).to_ne_bytes();
            (*ip).dst_addr = new[0].to_ne_bytes();
        }
    }

    #[inline(always)]
    fn set_src(ip: *mut Self, old: &[u32; 4], new: &[u32; 4]) {
        unsafe {
            let c = u16::from_ne_bytes((*ip).check);
            (*ip).check = checksum::replace_words(c, &[old[0]], &[new[0]]).to_ne_bytes();
            (*ip).src_addr = new[0].to_ne_bytes();
        }
    }

    #[inline(always)]
    fn ttl(ip: *const Self) -> u8 {
        unsafe { (*ip).ttl }
    }

    #[inline(always)]
    fn decrement_ttl(ip: *mut Self) {
        unsafe {
            let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
            (*ip).ttl -= 1;
            let new = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
            let c = u16::from_ne_bytes((*ip).check);
            (*ip).check = checksum::replace_u16(c, old, new).to_ne_bytes();
        }
    }

    #[inline(always)]
    fn ip_len(ip: *const Self) -> usize {
        unsafe { u16::from_be_bytes((*ip).tot_len) as usize }
    }

    #[inline(always)]
    fn fib_query(ip: *const Self, p: &mut FibParams) {
        p.family = AF_INET;
        unsafe {
            p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
            p.__bindgen_anon_2.tos = (*ip).tos;
            p.__bindgen_anon_3.ipv4_src = words4(&(*ip).src_addr);
            p.__bindgen_anon_4.ipv4_dst = words4(&(*ip).dst_addr);
        }
    }
}

/// IPv6 extension header numbers (RFC 8200 section 4, and the IANA list):
/// hop-by-hop, routing, fragment, ESP, AH, destination options, mobility,
/// HIP, shim6.
#[inline(always)]
fn is_ipv6_extension_header(next_hdr: u8) -> bool {
    matches!(next_hdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

impl IpHdr for Ipv6Hdr {
    const FAMILY: u8 = FAMILY_V6;
    const LEN: usize = Ipv6Hdr::LEN;

    #[inline(always)]
    fn header(ip: *const Self, l3: usize, frame_len: usize) -> Result<Header, Outcome> {
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
            return Err(Outcome::pass(reason::PASS_MALFORMED));
        }
        let l4 = l3 + Ipv6Hdr::LEN;
        let lengths_ok = payload_len >= l4_header_len(next_hdr) && l4 + payload_len <= frame_len;
        let unsplittable = if !is_l4(next_hdr) {
            // An extension header may hide TCP/UDP to the VIP behind it:
            // drop. Any other protocol (ICMPv6, GRE, SCTP, ...) is not
            // split: pass, as for IPv4.
            Some(if is_ipv6_extension_header(next_hdr) {
                Outcome::drop(reason::DROP_IPV6_EXT)
            } else {
                Outcome::pass(reason::PASS_NOT_VIP)
            })
        } else {
            None
        };
        Ok(Header {
            proto: next_hdr,
            src,
            dst,
            unsplittable,
            lengths_ok,
            l4_len: payload_len,
        })
    }

    #[inline(always)]
    fn addr(words: &[u32; 4]) -> [u32; 4] {
        *words
    }

    #[inline(always)]
    fn l4_check(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
        checksum::replace_words(check, old, new)
    }

    #[inline(always)]
    fn set_dst(ip: *mut Self, _old: &[u32; 4], new: &[u32; 4]) {
        // No IPv6 header checksum.
        unsafe { (*ip).dst_addr = bytes16(new) };
    }

    #[inline(always)]
    fn set_src(ip: *mut Self, _old: &[u32; 4], new: &[u32; 4]) {
        unsafe { (*ip).src_addr = bytes16(new) };
    }

    #[inline(always)]
    fn ttl(ip: *const Self) -> u8 {
        unsafe { (*ip).hop_limit }
    }

    #[inline(always)]
    fn decrement_ttl(ip: *mut Self) {
        unsafe { (*ip).hop_limit -= 1 };
    }

    #[inline(always)]
    fn ip_len(ip: *const Self) -> usize {
        unsafe { Ipv6Hdr::LEN + u16::from_be_bytes((*ip).payload_len) as usize }
    }

    #[inline(always)]
    fn fib_query(ip: *const Self, p: &mut FibParams) {
        p.family = AF_INET6;
        unsafe {
            // The whole IP packet, as the kernel compares it with the MTU.
            p.__bindgen_anon_1.tot_len =
                (Ipv6Hdr::LEN as u16).saturating_add(u16::from_be_bytes((*ip).payload_len));
            // Traffic class and flow label, as the kernel's own forwarding uses.
            p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes((*ip).vcf) & u32::from_be(0x0fff_ffff);
            p.__bindgen_anon_3.ipv6_src = words16(&(*ip).src_addr);
            p.__bindgen_anon_4.ipv6_dst = words16(&(*ip).dst_addr);
        }
    }
}
