//! Per-CPU counters: no atomics needed, user space sums the CPUs.

use crate::maps::{BACKEND_STATS, DATAPATH_STATS, HANDSHAKES, HEALTH_STATS, VERSION_STATS};
use canary_common::{handshake_bucket, version_stats_index, FlowKey, PendingHandshake};

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

/// A SYN forwarded on a new connection: remember when, until the backend
/// answers.
#[inline(always)]
pub fn handshake_started(flow: &FlowKey, service_id: u32, version: u32) {
    let pending = PendingHandshake {
        syn_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        service_id,
        version,
    };
    // BPF_NOEXIST: never restart a handshake in flight. An LRU: a full
    // table forgets the oldest handshake, never this one.
    let _ = HANDSHAKES.insert(flow, &pending, aya_ebpf::bindings::BPF_NOEXIST as u64);
}

/// A backend's SYN-ACK or RST on a connection we forwarded (`flow` as the
/// client sent it). The first SYN-ACK records the handshake time; a RST
/// counts against the version and ends a pending handshake.
#[inline(always)]
pub fn backend_signal(flow: &FlowKey, service_id: u32, version: u32, syn_ack: bool, rst: bool) {
    let Some(h) = HEALTH_STATS.get_ptr_mut(version_stats_index(service_id, version)) else {
        return;
    };
    if rst {
        unsafe { (*h).rsts += 1 };
        if unsafe { HANDSHAKES.get(flow) }.is_some() {
            let _ = HANDSHAKES.remove(flow);
        }
        return;
    }
    if !syn_ack {
        return;
    }
    // Retransmitted SYN-ACKs find no entry and are not counted again.
    let Some(p) = (unsafe { HANDSHAKES.get(flow) }) else {
        return;
    };
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let bucket = handshake_bucket(now.saturating_sub(p.syn_ns)) as usize;
    let _ = HANDSHAKES.remove(flow);
    unsafe {
        (*h).syn_acks += 1;
        if let Some(slot) = (*h).handshake_us_log2.get_mut(bucket) {
            *slot += 1;
        }
    }
}

/// Count `r` and let the packet go on to the kernel's stack.
#[inline(always)]
pub fn pass(r: u32) -> u32 {
    count(r);
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Count `r` and drop the packet.
#[inline(always)]
pub fn drop(r: u32) -> u32 {
    count(r);
    aya_ebpf::bindings::xdp_action::XDP_DROP
}
