//! Bounds-checked access to packet bytes. Every header is checked against
//! `data_end` before it is read; the verifier rejects the program otherwise.
//! Also the one's-complement sum of such bytes (`csum`).

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use core::mem::size_of;

/// A pointer to a `T` at `offset` bytes into the packet, if the packet holds
/// the whole `T`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// `seed` plus the one's-complement sum (unfolded) of the `N` bytes at `p`
/// (from `ptr_at`), by `bpf_csum_diff`; `None` if the helper fails. `N`
/// is a multiple of 4 and a constant: the verifier checks the helper's
/// bounds against it.
#[inline(always)]
pub fn csum<const N: usize>(p: *mut [u8; N], seed: u32) -> Option<u64> {
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, seed) };
    (r >= 0).then_some(r as u64)
}

#[inline(always)]
pub fn words4(b: &[u8; 4]) -> u32 {
    u32::from_ne_bytes(*b)
}

#[inline(always)]
pub fn words16(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

#[inline(always)]
pub fn bytes16(w: &[u32; 4]) -> [u8; 16] {
    let a = w[0].to_ne_bytes();
    let b = w[1].to_ne_bytes();
    let c = w[2].to_ne_bytes();
    let d = w[3].to_ne_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}
