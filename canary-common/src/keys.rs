//! Constructors of the map keys that both sides build: the kernel from packet
//! words, user space from `std::net` addresses (through the wrappers in
//! [`crate::addr`]). One function per key, so the XDP program and `canaryd`
//! (or `canaryctl explain`) cannot disagree on a layout detail such as the
//! VIP marker's zero port or the IPv4-mapped override prefix.

use crate::maps::{
    BackendAddrKey, FlowKey, OverrideKeyData, VipKey, FAMILY_V4, OVERRIDE_SERVICE_BITS,
    OVERRIDE_V4_MAPPED_BITS,
};

impl VipKey {
    /// The `VIPS` key of a service: its address, port (map layout, see the
    /// crate docs) and protocol.
    #[inline(always)]
    pub const fn new(addr: [u32; 4], port: u16, proto: u8, family: u8) -> Self {
        VipKey {
            addr,
            port,
            proto,
            family,
        }
    }

    /// The `VIPS` entry marking `addr` itself as a VIP address (port 0,
    /// protocol 0), so packets that cannot be split (fragments, options,
    /// extension headers) are recognised as addressed to a VIP before their
    /// ports are read.
    #[inline(always)]
    pub const fn marker(addr: [u32; 4], family: u8) -> Self {
        Self::new(addr, 0, 0, family)
    }
}

impl FlowKey {
    /// A connection as the client sent it: client -> VIP.
    #[inline(always)]
    pub const fn new(
        src: [u32; 4],
        dst: [u32; 4],
        sport: u16,
        dport: u16,
        proto: u8,
        family: u8,
    ) -> Self {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

impl BackendAddrKey {
    /// A backend as it appears in the source of its replies (`REVERSE_NAT`).
    #[inline(always)]
    pub const fn new(addr: [u32; 4], port: u16, proto: u8, family: u8) -> Self {
        BackendAddrKey {
            addr,
            port,
            proto,
            family,
        }
    }
}

impl OverrideKeyData {
    /// The `OVERRIDES` key (LPM prefix length, data) of `service_id` and the
    /// client prefix `addr/prefix_len` (`addr` in map words; an IPv4 prefix
    /// is stored IPv4-mapped, `::ffff:a.b.c.d`, with 96 more prefix bits).
    #[inline(always)]
    pub fn prefix(service_id: u32, addr: &[u32; 4], family: u8, prefix_len: u32) -> (u32, Self) {
        let mut bytes = [0u8; 16];
        let bits = if family == FAMILY_V4 {
            bytes[10] = 0xff;
            bytes[11] = 0xff;
            let a = addr[0].to_ne_bytes();
            bytes[12] = a[0];
            bytes[13] = a[1];
            bytes[14] = a[2];
            bytes[15] = a[3];
            OVERRIDE_V4_MAPPED_BITS + prefix_len
        } else {
            let mut i = 0;
            while i < 4 {
                let w = addr[i].to_ne_bytes();
                bytes[4 * i] = w[0];
                bytes[4 * i + 1] = w[1];
                bytes[4 * i + 2] = w[2];
                bytes[4 * i + 3] = w[3];
                i += 1;
            }
            prefix_len
        };
        (
            OVERRIDE_SERVICE_BITS + bits,
            OverrideKeyData {
                service_be: service_id.to_be_bytes(),
                addr: bytes,
            },
        )
    }

    /// The key the data plane looks a client up with: its whole address.
    #[inline(always)]
    pub fn client(service_id: u32, addr: &[u32; 4], family: u8) -> (u32, Self) {
        let full = if family == FAMILY_V4 { 32 } else { 128 };
        Self::prefix(service_id, addr, family, full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::FAMILY_V6;

    #[test]
    fn override_keys() {
        let v4 = [u32::from_ne_bytes([198, 18, 3, 2]), 0, 0, 0];
        let (bits, k) = OverrideKeyData::client(7, &v4, FAMILY_V4);
        assert_eq!(bits, 32 + 128);
        assert_eq!(k.service_be, [0, 0, 0, 7]);
        assert_eq!(
            k.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 3, 2]
        );
        let (bits, _) = OverrideKeyData::prefix(7, &v4, FAMILY_V4, 24);
        assert_eq!(bits, 32 + 96 + 24);

        let o: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut w = [0u32; 4];
        for (i, x) in w.iter_mut().enumerate() {
            *x = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        }
        let (bits, k) = OverrideKeyData::client(1, &w, FAMILY_V6);
        assert_eq!(bits, 32 + 128);
        assert_eq!(k.addr, o);
    }

    #[test]
    fn vip_marker_is_port_and_proto_zero() {
        let m = VipKey::marker([1, 0, 0, 0], FAMILY_V4);
        assert_eq!(m, VipKey::new([1, 0, 0, 0], 0, 0, FAMILY_V4));
        assert_eq!(
            FlowKey::new([1; 4], [2; 4], 3, 4, 6, FAMILY_V6)._pad,
            [0; 2]
        );
    }
}
