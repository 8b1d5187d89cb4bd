//! Address rewrites with incremental checksum updates (RFC 1624). The IPv4
//! header checksum covers the addresses; the TCP and UDP checksums cover them
//! through the pseudo-header, for both IPv4 and IPv6. A UDP checksum of 0
//! means "none" and stays 0.

use crate::parse::{bytes16, ptr_at};
use aya_ebpf::programs::XdpContext;
use canary_common::{checksum, PROTO_TCP};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

#[inline(always)]
fn l4_update<const N: usize>(
    ctx: &XdpContext,
    l4: usize,
    proto: u8,
    old: &[u32; N],
    new: &[u32; N],
) -> Option<()> {
    if proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, l4)?;
        unsafe {
            let c = u16::from_ne_bytes((*tcp).check);
            (*tcp).check = checksum::replace_words(c, old, new).to_ne_bytes();
        }
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, l4)?;
        unsafe {
            let c = u16::from_ne_bytes((*udp).check);
            if c != 0 {
                let updated = checksum::udp_nonzero(checksum::replace_words(c, old, new));
                (*udp).check = updated.to_ne_bytes();
            }
        }
    }
    Some(())
}

/// Client -> VIP becomes client -> backend.
#[inline(always)]
pub fn dnat_v4(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    l4: usize,
    proto: u8,
    vip: u32,
    backend: u32,
) -> Option<()> {
    l4_update(ctx, l4, proto, &[vip], &[backend])?;
    unsafe {
        let c = u16::from_ne_bytes((*ip).check);
        (*ip).check = checksum::replace_words(c, &[vip], &[backend]).to_ne_bytes();
        (*ip).dst_addr = backend.to_ne_bytes();
    }
    Some(())
}

/// Backend -> client becomes VIP -> client.
#[inline(always)]
pub fn snat_v4(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    l4: usize,
    proto: u8,
    backend: u32,
    vip: u32,
) -> Option<()> {
    l4_update(ctx, l4, proto, &[backend], &[vip])?;
    unsafe {
        let c = u16::from_ne_bytes((*ip).check);
        (*ip).check = checksum::replace_words(c, &[backend], &[vip]).to_ne_bytes();
        (*ip).src_addr = vip.to_ne_bytes();
    }
    Some(())
}

#[inline(always)]
pub fn dnat_v6(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    l4: usize,
    proto: u8,
    vip: &[u32; 4],
    backend: &[u32; 4],
) -> Option<()> {
    l4_update(ctx, l4, proto, vip, backend)?;
    unsafe { (*ip).dst_addr = bytes16(backend) };
    Some(())
}

#[inline(always)]
pub fn snat_v6(
    ctx: &XdpContext,
    ip: *mut Ipv6Hdr,
    l4: usize,
    proto: u8,
    backend: &[u32; 4],
    vip: &[u32; 4],
) -> Option<()> {
    l4_update(ctx, l4, proto, backend, vip)?;
    unsafe { (*ip).src_addr = bytes16(vip) };
    Some(())
}
