//! TCP flags and the passive health signals they carry: a client's SYN
//! starts a handshake the backend must answer; the backend's SYN-ACK ends
//! it (its time goes into a log2 histogram) and its RST counts against its
//! version. Also the per-connection FIN/RST flags in the flow entry that
//! tell a reused 5-tuple from a retransmission.

use crate::decide::Target;
use crate::maps::{HANDSHAKES, HEALTH_STATS};
use crate::parse::ptr_at;
use aya_ebpf::programs::XdpContext;
use canary_common::{
    handshake_bucket, version_stats_index, FlowKey, FlowState, PendingHandshake, FLOW_FIN_SEEN,
    FLOW_RST_SEEN, PROTO_TCP,
};
use network_types::tcp::TcpHdr;

/// TCP flags that matter to health signals.
struct TcpFlags {
    syn: bool,
    ack: bool,
    rst: bool,
    fin: bool,
}

#[inline(always)]
fn tcp_flags(ctx: &XdpContext, l4: usize) -> Option<TcpFlags> {
    let tcp = ptr_at::<TcpHdr>(ctx, l4)?;
    unsafe {
        Some(TcpFlags {
            syn: (*tcp).syn() != 0,
            ack: (*tcp).ack() != 0,
            rst: (*tcp).rst() != 0,
            fin: (*tcp).fin() != 0,
        })
    }
}

/// A client's SYN (not a SYN-ACK) opening a connection starts a handshake
/// the backend must answer: on a new flow, or on a known one whose last
/// connection the backend closed or reset (the client reuses the 5-tuple;
/// the per-connection flags start over). A SYN on a live connection (a
/// retransmission, a late duplicate) starts none.
#[inline(always)]
pub fn note_syn(ctx: &XdpContext, l4: usize, flow: &FlowKey, target: &Target) {
    if flow.proto != PROTO_TCP {
        return;
    }
    let Some(f) = tcp_flags(ctx, l4) else {
        return;
    };
    if !f.syn || f.ack {
        return;
    }
    match target.entry {
        None => handshake_started(flow, target.service_id, target.version),
        Some(entry) => {
            if unsafe { (*entry).flags } & (FLOW_RST_SEEN | FLOW_FIN_SEEN) != 0 {
                unsafe { (*entry).flags = 0 };
                handshake_started(flow, target.service_id, target.version);
            }
        }
    }
}

/// A backend's packet on a connection we forwarded (`flow` as the client
/// sent it, `entry` its flow entry): FIN and RST are remembered in the
/// entry; a SYN-ACK or the connection's first RST is a health signal for
/// the version.
#[inline(always)]
pub fn note_reply(
    ctx: &XdpContext,
    l4: usize,
    flow: &FlowKey,
    entry: *mut FlowState,
    service_id: u32,
    version: u32,
) {
    if flow.proto != PROTO_TCP {
        return;
    }
    let Some(f) = tcp_flags(ctx, l4) else {
        return;
    };
    // One reset counts once per connection, however many RSTs.
    let rst = f.rst && unsafe { (*entry).flags } & FLOW_RST_SEEN == 0;
    if rst {
        unsafe { (*entry).flags |= FLOW_RST_SEEN };
    }
    if f.fin {
        unsafe { (*entry).flags |= FLOW_FIN_SEEN };
    }
    if rst || (f.syn && f.ack) {
        backend_signal(flow, service_id, version, f.syn && f.ack, rst);
    }
}

/// A SYN forwarded on a new connection: remember when, until the backend
/// answers.
#[inline(always)]
fn handshake_started(flow: &FlowKey, service_id: u32, version: u32) {
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
fn backend_signal(flow: &FlowKey, service_id: u32, version: u32, syn_ack: bool, rst: bool) {
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
