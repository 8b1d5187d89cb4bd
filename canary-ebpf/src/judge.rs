//! Judging: which new connections a rollout counts, so that its failure
//! signals say something about the backend and not about one client.
//!
//! A connection is *judged* when its opening packet was checked and its
//! client address was within its budget:
//! - TCP: a bare SYN (no ACK, RST or FIN) without data whose TCP checksum
//!   is right. A SYN with a wrong checksum is dropped here
//!   (`drop_bad_checksum`): the backend would drop it too, and its silence
//!   would count as a handshake timeout against the backend. A SYN with
//!   data (TCP Fast Open) is forwarded unchecked and not judged
//!   (`not_judged_unchecked`); so is any other packet that opens an entry
//!   (a bare ACK: flood mode, or a connection that began on another host).
//! - UDP: the first packet of a flow.
//! - the budget (`CLIENT_BUDGET`, `JUDGE`): at most `per_client_per_s`
//!   judged connections a second per client address and service; the rest
//!   are forwarded alike but not judged (`not_judged_budget`).
//!
//! Only a judged connection starts a handshake timer, and only its backend's
//! RST or ICMP port unreachable counts as a failure (`SIGNALS`). Which
//! connections are judged does not depend on how they end, so the judged
//! ones are a fair sample of each version's connections and the rollout's
//! statistics keep their false-alarm rate.

use crate::classify::Packet;
use crate::family::IpHdr;
use crate::maps::{CLIENT_BUDGET, FAILURES, JUDGE, SIGNALS};
use crate::parse::{csum, ptr_at};
use crate::stats::count;
use aya_ebpf::programs::XdpContext;
use canary_common::checksum::fold;
use canary_common::flow::Tcp;
use canary_common::{
    reason, version_stats_index, ClientBudget, ClientKey, FailureEvent, FlowKey, Signals,
    FAILURE_RESET, FAMILY_V4, PROTO_TCP,
};
use network_types::tcp::TcpHdr;

/// What a client's packet is worth as the opening of a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Checked: may be judged (within its client's budget).
    Checked,
    /// Not checkable (a SYN with data), or not an opening (an ACK, ...).
    Unchecked,
    /// A bare SYN with a wrong TCP (or IPv4 header) checksum: drop it.
    Bad,
}

/// Sorts a client's packet (see the module doc). Costs a checksum over the
/// TCP header for bare SYNs only; every other TCP packet is `Unchecked`
/// and every UDP packet `Checked` at no cost.
#[inline(always)]
pub fn opening<H: IpHdr>(ctx: &XdpContext, pkt: &Packet<H>, tcp: &Tcp) -> Opening {
    if pkt.proto != PROTO_TCP {
        return Opening::Checked;
    }
    if !(tcp.syn && !tcp.ack && !tcp.rst && !tcp.fin) {
        return Opening::Unchecked;
    }
    let Some(hdr) = ptr_at::<TcpHdr>(ctx, pkt.l4) else {
        return Opening::Unchecked;
    };
    let header_len = unsafe { (*hdr).doff() } as usize * 4;
    // Data with the SYN: checking it would mean summing up to an MSS.
    if header_len != pkt.l4_len {
        return Opening::Unchecked;
    }
    // IPv4's own header checksum: the rewrite updates it incrementally, so
    // a wrong one stays wrong and the backend drops the SYN unanswered.
    if H::FAMILY == FAMILY_V4 {
        let l3 = pkt.l4 - H::LEN;
        match sum_at::<20>(ctx, l3, 0) {
            Some(s) if fold(s) == 0xffff => {}
            Some(_) => return Opening::Bad,
            None => return Opening::Unchecked,
        }
    }
    let seed = pseudo_header_sum(&pkt.src, &pkt.dst, header_len as u32);
    // One constant size per arm: the verifier checks each arm's bounds.
    let sum = match header_len {
        20 => sum_at::<20>(ctx, pkt.l4, seed),
        24 => sum_at::<24>(ctx, pkt.l4, seed),
        28 => sum_at::<28>(ctx, pkt.l4, seed),
        32 => sum_at::<32>(ctx, pkt.l4, seed),
        36 => sum_at::<36>(ctx, pkt.l4, seed),
        40 => sum_at::<40>(ctx, pkt.l4, seed),
        44 => sum_at::<44>(ctx, pkt.l4, seed),
        48 => sum_at::<48>(ctx, pkt.l4, seed),
        52 => sum_at::<52>(ctx, pkt.l4, seed),
        56 => sum_at::<56>(ctx, pkt.l4, seed),
        60 => sum_at::<60>(ctx, pkt.l4, seed),
        _ => None,
    };
    match sum {
        // A segment whose checksum is right sums to all ones.
        Some(s) if fold(s) == 0xffff => Opening::Checked,
        Some(_) => Opening::Bad,
        None => Opening::Unchecked,
    }
}

/// The one's-complement sum (unfolded) of the TCP pseudo-header: the
/// addresses (IPv4: word 0; words 1..3 are zero), the protocol and the
/// segment length. As the checksum arithmetic in `canary_common::checksum`,
/// words are the packet's bytes loaded as native integers.
#[inline(always)]
fn pseudo_header_sum(src: &[u32; 4], dst: &[u32; 4], len: u32) -> u64 {
    let proto_len = u32::from_ne_bytes([0, PROTO_TCP, (len >> 8) as u8, len as u8]);
    src[0] as u64
        + src[1] as u64
        + src[2] as u64
        + src[3] as u64
        + dst[0] as u64
        + dst[1] as u64
        + dst[2] as u64
        + dst[3] as u64
        + proto_len as u64
}

/// `seed` plus the sum of the `N` bytes at `l4` (`None` if the frame does
/// not hold them).
#[inline(always)]
fn sum_at<const N: usize>(ctx: &XdpContext, l4: usize, seed: u64) -> Option<u64> {
    // The helper takes a 32-bit seed: fold the pseudo-header's sum first.
    csum(ptr_at::<[u8; N]>(ctx, l4)?, fold(seed) as u32)
}

/// A new connection with state, opened by a checked packet: is it judged
/// (within its client's budget)? Counted either way in `SIGNALS`.
#[inline(always)]
pub fn judge(flow: &FlowKey, service_id: u32, version: u32, now_s: u32) -> bool {
    let per_second = JUDGE.get(0).map(|j| j.per_client_per_s).unwrap_or(0);
    let admitted = per_second == 0 || within_budget(flow, service_id, now_s, per_second);
    if let Some(s) = signals(service_id, version) {
        unsafe {
            if admitted {
                (*s).judged += 1;
            } else {
                (*s).over_budget += 1;
            }
        }
    }
    if !admitted {
        count(reason::NOT_JUDGED_BUDGET);
    }
    admitted
}

/// Counts one more judged connection against the client's budget for
/// this second, if there is room. Not atomic between CPUs: a race lets one
/// more through, which is harmless.
#[inline(always)]
fn within_budget(flow: &FlowKey, service_id: u32, now_s: u32, per_second: u32) -> bool {
    let key = ClientKey {
        addr: ClientKey::client_addr(&flow.src),
        service_id,
        family: flow.family as u32,
    };
    if let Some(b) = CLIENT_BUDGET.get_ptr_mut(&key) {
        return unsafe { (*b).admit(now_s, per_second) };
    }
    let mut fresh = ClientBudget::default();
    let admitted = fresh.admit(now_s, per_second);
    let _ = CLIENT_BUDGET.insert(&key, &fresh, 0);
    admitted
}

/// The (service, version) slot of `SIGNALS` (this CPU's).
#[inline(always)]
fn signals(service_id: u32, version: u32) -> Option<*mut Signals> {
    SIGNALS.get_ptr_mut(version_stats_index(service_id, version))
}

/// A judged connection's failure of `kind` (`FAILURE_RESET`: its backend's
/// RST; `FAILURE_UNREACHABLE`: its backend's port unreachable): counted
/// for its version in `SIGNALS` (`resets`, `unreachables`) and recorded
/// with its client (`failed`). The callers see to once per connection.
#[inline(always)]
pub fn failure(flow: &FlowKey, service_id: u32, version: u32, kind: u32) {
    if let Some(s) = signals(service_id, version) {
        unsafe {
            if kind == FAILURE_RESET {
                (*s).resets += 1;
            } else {
                (*s).unreachables += 1;
            }
        }
    }
    failed(flow, service_id, version, kind);
}

/// Records a judged connection's failure with its client (`FAILURES`), for
/// canaryd's count of distinct failing clients. Written in place in the
/// ring (no copy on the stack); a full ring drops it.
#[inline(always)]
fn failed(flow: &FlowKey, service_id: u32, version: u32, kind: u32) {
    let Some(mut e) = FAILURES.reserve::<FailureEvent>(0) else {
        return;
    };
    let p = e.as_mut_ptr();
    unsafe {
        (*p).addr = ClientKey::client_addr(&flow.src);
        (*p).family = flow.family as u32;
        (*p).service_id = service_id;
        (*p).version = version;
        (*p).kind = kind;
    }
    e.submit(0);
}
