//! Address rewrites with incremental checksum updates (RFC 1624), one pair
//! for both families (`IpHdr` supplies the header fields). The IPv4 header
//! checksum covers the addresses; the TCP and UDP checksums cover them
//! through the pseudo-header, for both IPv4 and IPv6. A UDP checksum of 0
//! means "none" and stays 0.

use crate::family::IpHdr;
use crate::parse::ptr_at;
use aya_ebpf::programs::XdpContext;
use canary_common::{checksum, PROTO_TCP};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

/// The L4 checksum after the address `old` became `new`. `None`: the frame
/// does not hold the L4 header (nothing was written).
#[inline(always)]
fn l4_update<H: IpHdr>(
    ctx: &XdpContext,
    l4: usize,
    proto: u8,
    old: &[u32; 4],
    new: &[u32; 4],
) -> Option<()> {
    if proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, l4)?;
        unsafe {
            let c = u16::from_ne_bytes((*tcp).check);
            (*tcp).check = H::l4_check(c, old, new).to_ne_bytes();
        }
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, l4)?;
        unsafe {
            let c = u16::from_ne_bytes((*udp).check);
            if c != 0 {
                let updated = checksum::udp_nonzero(H::l4_check(c, old, new));
                (*udp).check = updated.to_ne_bytes();
            }
        }
    }
    Some(())
}

/// Client -> VIP becomes client -> backend.
#[inline(always)]
pub fn dnat<H: IpHdr>(
    ctx: &XdpContext,
    ip: *mut H,
    l4: usize,
    proto: u8,
    vip: &[u32; 4],
    backend: &[u32; 4],
) -> Option<()> {
    l4_update::<H>(ctx, l4, proto, vip, backend)?;
    H::set_dst(ip, vip, backend);
    Some(())
}

/// Backend -> client becomes VIP -> client.
#[inline(always)]
pub fn snat<H: IpHdr>(
    ctx: &XdpContext,
    ip: *mut H,
    l4: usize,
    proto: u8,
    backend: &[u32; 4],
    vip: &[u32; 4],
) -> Option<()> {
    l4_update::<H>(ctx, l4, proto, backend, vip)?;
    H::set_src(ip, backend, vip);
    Some(())
}
