//! Decide where a client -> VIP packet goes: the flow table first (an open
//! connection stays on its backend); on a miss, or an entry that is no
//! longer this connection's (expired, or closed and reopened by a SYN), a
//! source-prefix override, a live cohort's weight or the hash bucket vs
//! the weight picks the version (`decide_version`), and
//! the live Maglev table of that pool the backend. The decision functions
//! themselves are `canary_common`'s, shared with `canaryctl explain`; the
//! decision is a pure function of the packet and the tables, so a
//! connection whose entry is gone is decided the same way again.
//!
//! Also the flow table's bookkeeping: the entry's life (`flow`), remembering
//! a new decision, flood mode, and the next hops cached per backend.

use crate::clock::Now;
use crate::maps::{
    BACKENDS, BACKEND_NEXTHOP, FLOOD, FLOWS, HANDSHAKES, MAGLEV, OVERRIDES, SERVICES,
};
use crate::outcome::Outcome;
use crate::stats::count;
use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use canary_common::flow::{
    after_client, closing, still_valid, Tcp, FLOW_CLIENT_ACKED, FLOW_REPLIED,
};
use canary_common::{
    backend_hash, decide_version, maglev_base, maglev_slot, reason, split_hash, By, FlowKey,
    FlowState, NextHop, OverrideKeyData, VipInfo, BACKEND_NONE, SVC_PREFIXES,
};

/// errno of an insert that found the key (BPF_NOEXIST).
const EEXIST: i32 = 17;

/// What to do with the flow table once the packet is routed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Remember {
    /// An established connection: its entry is up to date.
    Nothing,
    /// A new connection: insert (the first CPU to decide it wins).
    Insert,
    /// The entry found was no longer this connection's: overwrite it.
    Replace,
    /// A bare SYN in flood mode: no state until the handshake's ACK.
    Stateless,
}

/// Where a client -> VIP packet goes.
pub struct Target {
    pub service_id: u32,
    pub version: u32,
    pub backend_id: u32,
    pub addr: [u32; 4],
    pub remember: Remember,
    /// The flags a new entry starts with (the client's packet applied).
    pub flags: u16,
    /// The backend's cached next hop (this CPU's copy, in the map), null
    /// when none is valid. A pointer, not a copy: no 24-byte copy (or zero
    /// fill) per packet; and not an `Option<NextHop>`, whose undefined
    /// payload LLVM spills on the `None` path (`R4 !read_ok`).
    pub cached: *const NextHop,
}

impl Target {
    /// A connection decided by this packet (not found in the table).
    #[inline(always)]
    pub fn new_flow(&self) -> bool {
        self.remember != Remember::Nothing
    }
}

/// `nh` if it is set and of the current generation, else null.
#[inline(always)]
pub fn valid(nh: *const NextHop, gen: u32) -> *const NextHop {
    if unsafe { (*nh).ifindex != 0 && (*nh).gen == gen } {
        nh
    } else {
        core::ptr::null()
    }
}

/// The client's `OVERRIDES` word (longest prefix), if any: a forced
/// version or a cohort source (`canary_common::decide_version` reads it).
#[inline(always)]
fn override_value(service_id: u32, flow: &FlowKey) -> Option<u32> {
    let (bits, data) = OverrideKeyData::client(service_id, &flow.src, flow.family);
    OVERRIDES.get(&LpmKey::new(bits, data)).map(|v| v.version)
}

/// Flood mode: may this bare SYN create state? Counts it against the
/// host-wide budget of `threshold` per second. The window's reset races
/// between CPUs at a second's boundary; a few SYNs more or less is fine.
#[inline(always)]
fn within_new_flow_budget(now: &Now) -> bool {
    let threshold = now.settings.flood_new_flows_per_s;
    if threshold == 0 {
        return true;
    }
    let Some(w) = FLOOD.get_ptr_mut(0) else {
        return true;
    };
    let second = now.secs as u64;
    unsafe {
        if (*w).second != second {
            (*w).second = second;
            (*w).new_flows = 0;
        }
        let counter = core::ptr::addr_of_mut!((*w).new_flows);
        // BPF's atomic add (core offers no 64-bit fetch_add on this target);
        // then a read: a CPU may see another's add, which is all we need.
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) counter,
            v = in(reg) 1u64,
        );
        core::ptr::read_volatile(counter) <= threshold as u64
    }
}

/// The flow table's answer for an established connection: its backend and
/// version, with the entry moved along by this packet. `None`: no entry,
/// or one that is no longer this connection's (`Some(true)` in the second
/// field then: it must be replaced, not inserted).
#[inline(always)]
fn established(flow: &FlowKey, tcp: &Tcp, now: &Now) -> (Option<(u32, u32)>, bool) {
    let Some(f) = FLOWS.get_ptr_mut(flow) else {
        return (None, false);
    };
    let state = unsafe { &mut *f };
    if !still_valid(state, flow.proto, tcp, now.secs, &now.settings.timeouts) {
        count(reason::FLOW_EXPIRED);
        return (None, true);
    }
    count(reason::FLOW_HIT);
    let mut flags = after_client(state.flags, tcp);
    if flags & (FLOW_REPLIED | FLOW_CLIENT_ACKED) == 0 && tcp.ack && !tcp.syn && !tcp.rst {
        // The client acknowledged the backend's SYN-ACK, which did not come
        // through here (in a fleet it may return through another host):
        // the handshake was answered, no timeout to count. Its time is
        // measured only where the SYN-ACK passes.
        let _ = HANDSHAKES.remove(flow);
        flags |= FLOW_CLIENT_ACKED;
    } else if tcp.rst && flags & (FLOW_REPLIED | FLOW_CLIENT_ACKED) == 0 {
        // The client gave up on its own handshake (a scanner's RST): not
        // the backend's failure, whether or not its SYN-ACK came here.
        let _ = HANDSHAKES.remove(flow);
    }
    move_along(state, flags, now.secs);
    (Some((state.backend_id, (state.version & 1) as u32)), false)
}

/// A packet of either side passed: the entry takes its new `flags` (a
/// connection that just started closing is counted, `flow_closed`) and
/// the time. Writes only what changed: an established packet in the same
/// second as the last one writes nothing.
#[inline(always)]
pub fn move_along(state: &mut FlowState, flags: u16, now_s: u32) {
    if flags != state.flags {
        if closing(flags) && !closing(state.flags) {
            count(reason::FLOW_CLOSED);
        }
        state.flags = flags;
    }
    if state.last_seen != now_s {
        state.last_seen = now_s;
    }
}

/// Flow table first; else override or hash bucket vs weight, then the live
/// Maglev table of the chosen pool. A new decision is remembered by the
/// caller once the packet is routed (`remember`). `Err`: the packet is
/// dropped (`drop_no_backend`).
#[inline(always)]
pub fn decide(flow: &FlowKey, vip: &VipInfo, tcp: &Tcp, now: &Now) -> Result<Target, Outcome> {
    const NO_BACKEND: Outcome = Outcome::drop(reason::DROP_NO_BACKEND);
    let service_id = vip.service_id;
    // Flood mode: a bare SYN over the budget is decided without touching
    // the flow table at all (a cold lookup is most of a miss's cost). A
    // retransmitted SYN of an open connection is decided the same way
    // unless the weights changed in between; a handshake not yet complete
    // then moves to the new choice, which TCP survives.
    let stateless = tcp.bare_syn() && !within_new_flow_budget(now);
    let (found, replace) = if stateless {
        (None, false)
    } else {
        established(flow, tcp, now)
    };
    let (backend_id, version, remember) = match found {
        Some((backend_id, version)) => (backend_id, version, Remember::Nothing),
        None => {
            // The service entry matters only to a new decision.
            let svc = SERVICES.get(service_id).ok_or(NO_BACKEND)?;
            let ov = if svc.has_overrides & SVC_PREFIXES != 0 {
                override_value(service_id, flow)
            } else {
                None
            };
            let h = split_hash(flow, vip.affinity, svc.seed);
            let (version, by) = decide_version(h, svc, ov);
            match by {
                By::Forced => count(reason::OVERRIDE_HIT),
                By::Cohort(_) => count(reason::COHORT_HIT),
                By::Hash => {}
            }
            let version = version & 1;
            if svc.pool_size[version as usize] == 0 {
                return Err(NO_BACKEND);
            }
            let generation = svc.live_gen[version as usize] & 1;
            let slot = maglev_slot(backend_hash(flow, vip.affinity, svc.seed));
            let idx = maglev_base(service_id, version, generation) + slot;
            let backend_id = *MAGLEV.get(idx).ok_or(NO_BACKEND)?;
            if backend_id == BACKEND_NONE {
                return Err(NO_BACKEND);
            }
            let remember = if stateless {
                Remember::Stateless
            } else if replace {
                Remember::Replace
            } else {
                Remember::Insert
            };
            (backend_id, version, remember)
        }
    };
    let backend = BACKENDS.get(backend_id).ok_or(NO_BACKEND)?;
    let cached = match BACKEND_NEXTHOP.get_ptr(backend_id) {
        Some(nh) => valid(nh, now.gen),
        None => core::ptr::null(),
    };
    Ok(Target {
        service_id,
        version,
        backend_id,
        addr: backend.addr,
        remember,
        flags: after_client(0, tcp),
        cached,
    })
}

#[inline(always)]
fn stamped(learned: Option<NextHop>, gen: u32) -> Option<NextHop> {
    learned.map(|mut nh| {
        nh.gen = gen;
        nh
    })
}

/// Keeps the next hop the packet was just routed to for its backend (this
/// CPU's copy), and records a new connection's decision.
#[inline(always)]
pub fn remember(ctx: &XdpContext, flow: &FlowKey, t: &Target, learned: Option<NextHop>, now: &Now) {
    if let Some(nh) = stamped(learned, now.gen) {
        if let Some(slot) = BACKEND_NEXTHOP.get_ptr_mut(t.backend_id) {
            unsafe { *slot = nh };
        }
    }
    let flags = match t.remember {
        Remember::Nothing => return,
        Remember::Stateless => {
            count(reason::SYN_STATELESS);
            return;
        }
        Remember::Insert => BPF_NOEXIST,
        Remember::Replace => BPF_ANY,
    };
    let state = FlowState {
        backend_id: t.backend_id,
        version: t.version as u16,
        flags: t.flags,
        last_seen: now.secs,
        to_client: NextHop::default(),
    };
    // BPF_NOEXIST: if another CPU decided this connection meanwhile, its
    // decision stays (the first one wins, for every packet after).
    match FLOWS.insert(flow, &state, flags as u64) {
        // A replaced entry was counted as expired; occupancy is unchanged.
        Ok(()) if t.remember == Remember::Insert => count(reason::FLOW_INSERT),
        Ok(()) => {}
        Err(e) if e == -EEXIST => {}
        Err(_) => {
            // Rare (the LRU evicts instead of failing): worth a log line.
            count(reason::FLOW_INSERT_FAILED);
            warn!(ctx, "flow table insert failed for service {}", t.service_id);
        }
    }
}

/// Keeps the next hop a reply was just routed to in its flow entry (looked
/// up again: the entry seen before the route lookup may have been evicted
/// and reused for another connection since, and an LRU reuses at once).
#[inline(always)]
pub fn remember_reply(flow: &FlowKey, backend_id: u32, learned: Option<NextHop>, gen: u32) {
    if let Some(nh) = stamped(learned, gen) {
        if let Some(e) = FLOWS.get_ptr_mut(flow) {
            if unsafe { (*e).backend_id } == backend_id {
                unsafe { (*e).to_client = nh };
            }
        }
    }
}
