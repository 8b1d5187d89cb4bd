//! Map keys from config values: the only encoder of VIP, backend, flow and
//! override keys (addresses and ports in the kernel's byte order, protocol
//! numbers, affinity flags), used by `apply` and by `explain` alike.

use super::*;
use canary_common::{FlowKey, OverrideKeyData};

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

pub fn vip_key(s: &ServiceConfig) -> VipKey {
    canary_common::addr::vip_key(s.vip, s.port, proto_number(s.protocol))
}

/// The key marking an address as a VIP address (any port).
pub(super) fn vip_marker(addr: IpAddr) -> VipKey {
    canary_common::addr::vip_marker(addr)
}

pub(super) fn backend_addr_key(s: &ServiceConfig, b: IpAddr) -> BackendAddrKey {
    canary_common::addr::backend_addr_key(b, s.port, proto_number(s.protocol))
}

/// The VIP flag of an affinity mode.
pub fn affinity_flag(a: Affinity) -> u32 {
    match a {
        Affinity::SourceIp => AFFINITY_SOURCE_IP,
        Affinity::Flow => AFFINITY_FLOW,
    }
}

/// The flow a client's connection to service `s` has (port 0 when unknown).
pub fn flow_key(s: &ServiceConfig, client: IpAddr, port: Option<u16>) -> FlowKey {
    canary_common::addr::flow_key(
        client,
        port.unwrap_or(0),
        s.vip,
        s.port,
        proto_number(s.protocol),
    )
}

/// The OVERRIDES lookup key of one client address (a full-length prefix).
pub fn override_lookup_key(service_id: u32, client: IpAddr) -> LpmKey<OverrideKeyData> {
    let (bits, data) = override_key(service_id, client, if client.is_ipv4() { 32 } else { 128 });
    LpmKey::new(bits, data)
}
