//! Independent checksum verification, twice over and never with
//! `canary_common::checksum` (the code under test): an RFC 1071 sum written
//! here over the IPv4 header and the TCP/UDP pseudo-header and segment, and
//! etherparse's own checksum computation on the parsed frame; plus the expected-rewrite check
//! "byte-identical to the input outside the rewritten fields, checksums
//! valid" used for every forwarded frame.

use crate::packet::{hex, l3_offset, l4_offset};
use std::net::IpAddr;

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

/// Recomputes the IPv4 header checksum at `l3` (after a deliberate
/// mangling), so a shape is malformed only in the way its case says.
pub fn fix_ipv4_csum(f: &mut [u8], l3: usize) {
    let ihl = ((f[l3] & 0x0f) as usize * 4).max(20).min(f.len() - l3);
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let c = !fold(rfc1071_sum(&f[l3..l3 + ihl], 0));
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
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
    verify_with_etherparse(f)
}

/// The second opinion: etherparse parses the frame and computes the IPv4
/// header and TCP/UDP checksums itself; each must equal the stored one (0
/// and 0xffff are the same one's-complement value; an IPv4 UDP checksum of
/// 0 means "none").
pub fn verify_with_etherparse(f: &[u8]) -> Result<(), String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice, UdpHeader};
    let same = |a: u16, b: u16| a == b || (a | b == 0xffff && (a == 0 || b == 0));
    let p = SlicedPacket::from_ethernet(f).map_err(|e| format!("etherparse: {e}"))?;
    let addrs = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let want = h.to_header().calc_header_checksum();
            if want != h.header_checksum() {
                return Err(format!(
                    "etherparse: IPv4 header checksum {:#06x}, computed {want:#06x}",
                    h.header_checksum()
                ));
            }
            (h.source().to_vec(), h.destination().to_vec())
        }
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source().to_vec(),
            ip.header().destination().to_vec(),
        ),
        _ => return Ok(()),
    };
    let v4 = addrs.0.len() == 4;
    let computed = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let c = if v4 {
                t.calc_checksum_ipv4(
                    addrs.0[..].try_into().unwrap(),
                    addrs.1[..].try_into().unwrap(),
                )
            } else {
                t.calc_checksum_ipv6(
                    addrs.0[..].try_into().unwrap(),
                    addrs.1[..].try_into().unwrap(),
                )
            };
            Some(("TCP", t.checksum(), c))
        }
        Some(TransportSlice::Udp(u)) => {
            let h: UdpHeader = u.to_header();
            if v4 && h.checksum == 0 {
                return Ok(());
            }
            let c = if v4 {
                h.calc_checksum_ipv4_raw(
                    addrs.0[..].try_into().unwrap(),
                    addrs.1[..].try_into().unwrap(),
                    u.payload(),
                )
            } else {
                h.calc_checksum_ipv6_raw(
                    addrs.0[..].try_into().unwrap(),
                    addrs.1[..].try_into().unwrap(),
                    u.payload(),
                )
            };
            Some(("UDP", h.checksum, c))
        }
        _ => None,
    };
    if let Some((what, stored, c)) = computed {
        let c = c.map_err(|e| format!("etherparse: {what} checksum: {e}"))?;
        if !same(stored, c) {
            return Err(format!(
                "etherparse: {what} checksum {stored:#06x}, computed {c:#06x}"
            ));
        }
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
