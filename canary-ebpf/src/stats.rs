//! Per-CPU counters: no atomics needed, user space sums the CPUs. The
//! verdict counter (DATAPATH_STATS) is bumped once per packet by the entry
//! point (see `outcome.rs`); the per-version and per-backend traffic
//! counters by the forward and reply paths.

use crate::maps::{BACKEND_STATS, DATAPATH_STATS, VERSION_STATS};
use canary_common::version_stats_index;

#[inline(always)]
pub fn count(reason: u32) {
    if let Some(c) = DATAPATH_STATS.get_ptr_mut(reason) {
        unsafe { *c += 1 };
    }
}

/// A client -> VIP packet forwarded to (service, version, backend).
#[inline(always)]
pub fn count_forward(service_id: u32, version: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    let nf = new_flow as u64;
    if let Some(s) = VERSION_STATS.get_ptr_mut(version_stats_index(service_id, version)) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += nf;
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        unsafe {
            (*b).packets += 1;
            (*b).bytes += bytes;
            (*b).new_flows += nf;
        }
    }
}

/// A backend -> client reply rewritten back to the VIP.
#[inline(always)]
pub fn count_reply(service_id: u32, version: u32, backend_id: u32, bytes: u64) {
    if let Some(s) = VERSION_STATS.get_ptr_mut(version_stats_index(service_id, version)) {
        unsafe {
            (*s).reply_packets += 1;
            (*s).reply_bytes += bytes;
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        unsafe { (*b).reply_packets += 1 };
    }
}
