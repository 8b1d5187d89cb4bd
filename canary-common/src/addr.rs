//! Conversions between `std::net` addresses and the map word layout.

use crate::maps::{FAMILY_V4, FAMILY_V6, OVERRIDE_SERVICE_BITS, OVERRIDE_V4_MAPPED_BITS};
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
/// prefix.
pub fn override_key(
    service_id: u32,
    net: IpAddr,
    prefix_len: u8,
) -> (u32, crate::maps::OverrideKeyData) {
    let (addr, bits) = match net {
        IpAddr::V4(a) => (
            a.to_ipv6_mapped().octets(),
            OVERRIDE_V4_MAPPED_BITS + prefix_len as u32,
        ),
        IpAddr::V6(a) => (a.octets(), prefix_len as u32),
    };
    (
        OVERRIDE_SERVICE_BITS + bits,
        crate::maps::OverrideKeyData {
            service_be: service_id.to_be_bytes(),
            addr,
        },
    )
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
}
