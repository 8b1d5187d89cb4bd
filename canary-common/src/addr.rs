//! Conversions between `std::net` addresses and the map word layout.

use crate::maps::{BackendAddrKey, FlowKey, OverrideKeyData, VipKey, FAMILY_V4, FAMILY_V6};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as the data plane stores it (see the crate docs).
pub fn to_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            w
        }
    }
}

/// The inverse of [`to_words`].
pub fn from_words(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

pub fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// A port as the data plane stores it.
pub fn port_to_map(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

pub fn port_from_map(port: u16) -> u16 {
    u16::from_be_bytes(port.to_ne_bytes())
}

/// The `OVERRIDES` key (prefix length, data) for `service_id` and a client
/// prefix: [`OverrideKeyData::prefix`], the constructor the kernel uses too.
pub fn override_key(service_id: u32, net: IpAddr, prefix_len: u8) -> (u32, OverrideKeyData) {
    OverrideKeyData::prefix(service_id, &to_words(net), family(net), prefix_len as u32)
}

/// The `VIPS` key of a service ([`VipKey::new`]); `port` in host order.
pub fn vip_key(vip: IpAddr, port: u16, proto: u8) -> VipKey {
    VipKey::new(to_words(vip), port_to_map(port), proto, family(vip))
}

/// The `VIPS` entry marking `vip` as a VIP address ([`VipKey::marker`]).
pub fn vip_marker(vip: IpAddr) -> VipKey {
    VipKey::marker(to_words(vip), family(vip))
}

/// The `FLOWS` key of a client -> VIP connection ([`FlowKey::new`]); ports
/// in host order.
pub fn flow_key(client: IpAddr, sport: u16, vip: IpAddr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(
        to_words(client),
        to_words(vip),
        port_to_map(sport),
        port_to_map(dport),
        proto,
        family(client),
    )
}

/// The `REVERSE_NAT` key of a backend ([`BackendAddrKey::new`]); `port` in
/// host order.
pub fn backend_addr_key(backend: IpAddr, port: u16, proto: u8) -> BackendAddrKey {
    BackendAddrKey::new(to_words(backend), port_to_map(port), proto, family(backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in ["198.18.3.2", "2001:db8::1", "2001:db8:ffff::abcd"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_words(to_words(ip), family(ip)), ip);
        }
        assert_eq!(port_from_map(port_to_map(8080)), 8080);
        assert_eq!(port_to_map(80).to_ne_bytes(), [0, 80]);
    }

    /// The delegating wrapper gives the layout the old hand-built code did.
    #[test]
    fn override_key_layout() {
        let net: IpAddr = "198.18.0.0".parse().unwrap();
        let (bits, k) = override_key(3, net, 16);
        assert_eq!(bits, 32 + 96 + 16);
        assert_eq!(
            k.addr,
            Ipv4Addr::new(198, 18, 0, 0).to_ipv6_mapped().octets()
        );
        let net: IpAddr = "2001:db8::".parse().unwrap();
        let (bits, k) = override_key(3, net, 32);
        assert_eq!(bits, 32 + 32);
        assert_eq!(k.addr, "2001:db8::".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(k.service_be, [0, 0, 0, 3]);
    }
}
