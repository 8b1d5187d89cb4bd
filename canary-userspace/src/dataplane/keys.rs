//! Map keys from config values: the only encoder of VIP and backend keys
//! (addresses and ports in the kernel's byte order, protocol numbers), used
//! by `apply` and by `explain` alike.

use super::*;

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

pub fn vip_key(s: &ServiceConfig) -> VipKey {
    VipKey {
        addr: to_words(s.vip),
        port: port_to_map(s.port),
        proto: proto_number(s.protocol),
        family: family(s.vip),
    }
}

/// The key marking an address as a VIP address (any port).
pub(super) fn vip_marker(addr: IpAddr) -> VipKey {
    VipKey {
        addr: to_words(addr),
        port: 0,
        proto: 0,
        family: family(addr),
    }
}

pub(super) fn backend_addr_key(s: &ServiceConfig, b: IpAddr) -> BackendAddrKey {
    BackendAddrKey {
        addr: to_words(b),
        port: port_to_map(s.port),
        proto: proto_number(s.protocol),
        family: family(b),
    }
}
