//! Packet builders for `BPF_PROG_TEST_RUN`: Ethernet/802.1Q/IPv4/IPv6 with
//! TCP, UDP or ICMP, built with etherparse (valid checksums as built), the MAC
//! scheme of the lab namespace, header offsets, and small address helpers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;

/// The payload of an established (`Tcp::Ack`) packet.
pub const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: canary\r\n\r\n";

/// MAC of host `host` on side `side` of the lab namespace: 1 is the LB
/// interface, 2 the neighbour behind it, 0xfe the veth peer.
pub fn mac(side: u8, host: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, side, host]
}

/// MAC of an LB interface: `lb-client` is 0, `lb-bI` is I.
pub fn mac_lb(i: u8) -> [u8; 6] {
    mac(i, 0x01)
}

/// MAC of the neighbour behind an LB interface: the upstream router (0) or
/// backend I.
pub fn mac_nbr(i: u8) -> [u8; 6] {
    mac(i, 0x02)
}

/// MAC of the veth peer of an LB interface.
pub fn mac_peer(i: u8) -> [u8; 6] {
    mac(i, 0xfe)
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    /// ACK carrying a payload (an established packet).
    Ack,
    SynAck,
    /// A reset (with ACK), as a backend sends it.
    Rst,
    /// FIN with ACK: one side closing.
    Fin,
}

fn tcp_step(
    b: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    sport: u16,
    dport: u16,
    kind: Tcp,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    let t = b.tcp(sport, dport, 0x1000_0000, 64240);
    match kind {
        Tcp::Syn => t.syn(),
        Tcp::Ack => t.ack(0x2000_0001).psh(),
        Tcp::SynAck => t.syn().ack(0x1000_0001),
        Tcp::Rst => t.rst().ack(0x1000_0001),
        Tcp::Fin => t.fin().ack(0x2000_0001),
    }
}

fn l3(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = etherparse::PacketBuilder::ethernet2(eth_src, eth_dst);
    match (vlan, src, dst) {
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), ttl),
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), ttl),
        (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => eth
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv4(s.octets(), d.octets(), ttl),
        (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => eth
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed address families"),
    }
}

/// A TCP frame as it arrives from outside: `side` is the interface index
/// (0 = client side: from the upstream router to lb-client; I = from backend
/// I to lb-bI).
pub fn tcp(side: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, kind: Tcp) -> Vec<u8> {
    tcp_full(side, None, src, sport, dst, dport, kind, 64)
}

#[allow(clippy::too_many_arguments)]
pub fn tcp_full(
    side: u8,
    vlan: Option<u16>,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    kind: Tcp,
    ttl: u8,
) -> Vec<u8> {
    let b = tcp_step(
        l3(mac_nbr(side), mac_lb(side), vlan, src, dst, ttl),
        sport,
        dport,
        kind,
    );
    let payload: &[u8] = if kind == Tcp::Ack { HTTP_GET } else { &[] };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A UDP frame; `zero_checksum` clears the (IPv4) UDP checksum ("none").
pub fn udp(
    side: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let mut v = udp_full(side, src, sport, dst, dport, payload, 64);
    if zero_checksum {
        let l4 = l4_offset(&v).unwrap().1;
        v[l4 + 6] = 0;
        v[l4 + 7] = 0;
    }
    v
}

/// A UDP frame as `udp`, with the IP TTL (hop limit) `ttl`.
#[allow(clippy::too_many_arguments)]
pub fn udp_full(
    side: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
    ttl: u8,
) -> Vec<u8> {
    let b = l3(mac_nbr(side), mac_lb(side), None, src, dst, ttl).udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A TCP ACK+PSH frame carrying `payload` (a large one, say), optionally
/// 802.1Q-tagged, TTL 64; IPv4 with DF set (etherparse's default).
#[allow(clippy::too_many_arguments)]
pub fn tcp_data(
    side: u8,
    vlan: Option<u16>,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = tcp_step(
        l3(mac_nbr(side), mac_lb(side), vlan, src, dst, 64),
        sport,
        dport,
        Tcp::Ack,
    );
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// An ICMP (IPv4) or ICMPv6 message as a frame from `eth_src` to `eth_dst`:
/// IP `src` -> `dst` with TTL (hop limit) `ttl`, then `kind`, `code`, the 4
/// bytes after the checksum (`rest`: unused, or an MTU) and `body` (an
/// error's quote). Every checksum is etherparse's (ICMPv6's over its
/// pseudo-header), so a frame built here is a from-scratch reference.
#[allow(clippy::too_many_arguments)]
pub fn icmp_frame(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let b = l3(eth_src, eth_dst, vlan, src, dst, ttl);
    let mut v = Vec::new();
    if src.is_ipv4() {
        b.icmpv4_raw(kind, code, rest).write(&mut v, body).unwrap();
    } else {
        b.icmpv6_raw(kind, code, rest).write(&mut v, body).unwrap();
    }
    v
}

/// An ICMP error arriving on `side` (from the neighbour behind it, as
/// `tcp`), TTL 64.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    side: u8,
    src: IpAddr,
    dst: IpAddr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    icmp_frame(
        mac_nbr(side),
        mac_lb(side),
        None,
        src,
        dst,
        64,
        kind,
        code,
        rest,
        quote,
    )
}

/// The IP packet of a frame: after Ethernet (and one 802.1Q tag), up to
/// its IP length.
pub fn ip_packet(f: &[u8]) -> &[u8] {
    let (et, l3) = l3_offset(f).unwrap();
    let len = if et == 0x0800 {
        u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize
    } else {
        40 + u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize
    };
    &f[l3..l3 + len]
}

/// Clears an IPv4 frame's DF bit (its header checksum fixed).
pub fn clear_df(f: &mut [u8]) {
    let (_, l3) = l3_offset(f).unwrap();
    f[l3 + 6] &= !0x40;
    crate::checksum::fix_ipv4_csum(f, l3);
}

/// Writes a big-endian u16 at `at`.
pub fn set_u16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The flow key of a client -> VIP packet, as the data plane stores it.
pub use canary_common::addr::flow_key;

/// (ethertype, L3 offset) after at most one 802.1Q tag.
pub fn l3_offset(f: &[u8]) -> Option<(u16, usize)> {
    let et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    if et == 0x8100 {
        Some((u16::from_be_bytes([*f.get(16)?, *f.get(17)?]), 18))
    } else {
        Some((et, 14))
    }
}

/// (protocol, L4 offset, L4 length) of a well-formed IPv4/IPv6 frame
/// (IPv6 without extension headers).
pub fn l4_offset(f: &[u8]) -> Option<(u8, usize, usize)> {
    let (et, l3) = l3_offset(f)?;
    match et {
        0x0800 => {
            let ihl = (f[l3] & 0x0f) as usize * 4;
            let tot = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
            Some((f[l3 + 9], l3 + ihl, tot - ihl))
        }
        0x86dd => {
            let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
            Some((f[l3 + 6], l3 + 40, plen))
        }
        _ => None,
    }
}

/// The destination address of an IPv4/IPv6 frame.
pub fn dst_addr(f: &[u8]) -> IpAddr {
    let (et, l3) = l3_offset(f).unwrap();
    if et == 0x0800 {
        IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&f[l3 + 16..l3 + 20]).unwrap(),
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap(),
        ))
    }
}

/// A frame as hex, 16 bytes a line (for assert messages).
pub fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lb-bI interface index (1..=3) whose subnet holds backend `a`.
pub fn backend_side(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(a) => a.octets()[2],
        IpAddr::V6(a) => a.segments()[2] as u8,
    }
}
