//! TCP flags and the passive health signals they carry: a judged client's
//! SYN (see `judge`) starts a handshake the backend must answer; the
//! backend's SYN-ACK ends it (its time goes into a log2 histogram) and its
//! RST counts against its version (`HEALTH_STATS.rsts`, every backend RST;
//! `SIGNALS.resets`, those on judged connections, which rollouts use). Also a backend's packets moving its flow entry along (answered,
//! FIN, RST: see `canary_common::flow`).

use crate::decide::{move_along, Remember, Target};
use crate::judge::{failure, judge, Opening};
use crate::maps::{HANDSHAKES, HEALTH_STATS};
use crate::parse::ptr_at;
use crate::stats::count;
use aya_ebpf::programs::XdpContext;
use canary_common::flow::{
    after_backend, Tcp, FLOW_FIN_CLIENT, FLOW_JUDGED, FLOW_RST, FLOW_RST_COUNTED,
};
use canary_common::{
    handshake_bucket, reason, version_stats_index, FlowKey, FlowState, PendingHandshake,
    FAILURE_RESET, PROTO_TCP,
};
use network_types::tcp::TcpHdr;

/// The flags of a TCP packet (all false for UDP).
#[inline(always)]
pub fn tcp_flags(ctx: &XdpContext, l4: usize, proto: u8) -> Tcp {
    if proto != PROTO_TCP {
        return Tcp::default();
    }
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4) else {
        return Tcp::default();
    };
    unsafe {
        Tcp {
            syn: (*tcp).syn() != 0,
            ack: (*tcp).ack() != 0,
            rst: (*tcp).rst() != 0,
            fin: (*tcp).fin() != 0,
        }
    }
}

/// A new connection with state (a new entry, or one replacing a closed
/// connection's) opened by a checked packet is judged if its client is
/// within budget (`judge`): its entry is marked, and a SYN starts a
/// handshake the backend must answer. A SYN on a live connection (a
/// retransmission) starts none, nor does one decided without state in
/// flood mode (no per-SYN state at all), nor an unjudged one.
#[inline(always)]
pub fn note_opening(tcp: &Tcp, opening: Opening, flow: &FlowKey, target: &mut Target, now_s: u32) {
    if !matches!(target.remember, Remember::Insert | Remember::Replace) {
        return;
    }
    if opening != Opening::Checked {
        if tcp.bare_syn() {
            count(reason::NOT_JUDGED_UNCHECKED);
        }
        return;
    }
    if !judge(flow, target.service_id, target.version, now_s) {
        return;
    }
    target.flags |= FLOW_JUDGED;
    if tcp.bare_syn() {
        handshake_started(flow, target.service_id, target.version);
    }
}

/// A backend's packet on a connection we forwarded (`flow` as the client
/// sent it, `entry` its flow entry if it still has one): the entry moves
/// along; a SYN-ACK or a RST is a health signal for the version (a RST
/// once per connection while it has an entry).
#[inline(always)]
pub fn note_reply(
    tcp: &Tcp,
    flow: &FlowKey,
    entry: Option<*mut FlowState>,
    service_id: u32,
    version: u32,
    now_s: u32,
) {
    let mut rst = tcp.rst;
    if let Some(e) = entry {
        let state = unsafe { &mut *e };
        let mut flags = after_backend(state.flags, tcp);
        if rst {
            rst = state.flags & FLOW_RST_COUNTED == 0;
            flags |= FLOW_RST_COUNTED;
            // Judged: a SYN we checked and the backend refused, or a
            // connection it accepted and then reset. A RST on an entry a
            // bare ACK made says only that the backend never knew it; one
            // after the client's own RST or FIN answers what the client
            // sent after closing (a client can provoke that at will).
            let client_closed = state.flags & (FLOW_RST | FLOW_FIN_CLIENT) != 0;
            if rst && state.flags & FLOW_JUDGED != 0 && !client_closed {
                failure(flow, service_id, version, FAILURE_RESET);
            }
        }
        move_along(state, flags, now_s);
    }
    let syn_ack = tcp.syn && tcp.ack;
    if rst || syn_ack {
        backend_signal(flow, service_id, version, syn_ack, rst);
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
    // BPF_NOEXIST: never restart a handshake in flight. A full table
    // refuses: this handshake goes untimed (see `HANDSHAKES`).
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
