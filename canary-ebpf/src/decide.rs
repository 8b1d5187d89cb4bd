//! Decide where a client -> VIP packet goes: the flow table first (an open
//! connection stays on its backend); on a miss, a source-prefix override or
//! hash bucket vs weight picks the version, and the live Maglev table of
//! that pool the backend. The decision functions themselves are
//! `canary_common`'s, shared with `canaryctl explain`. Also the flow
//! table's bookkeeping: remembering a new decision and the next hops cached
//! in an entry.

use crate::maps::{BACKENDS, FLOWS, MAGLEV, NEXTHOP_GEN, OVERRIDES, SERVICES};
use crate::outcome::Outcome;
use crate::stats::count;
use aya_ebpf::maps::lpm_trie::Key as LpmKey;
use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use aya_log_ebpf::warn;
use canary_common::{
    backend_hash, choose_version, maglev_base, maglev_slot, reason, split_hash, FlowKey, FlowState,
    NextHop, OverrideKeyData, VipInfo, BACKEND_NONE,
};

/// errno of an insert that found the key (BPF_NOEXIST).
const EEXIST: i32 = 17;

/// Where a client -> VIP packet goes.
pub struct Target {
    pub service_id: u32,
    pub version: u32,
    pub backend_id: u32,
    pub addr: [u32; 4],
    pub new_flow: bool,
    /// The flow entry of an established connection (None: a new one, to be
    /// remembered once it is routed).
    pub entry: Option<*mut FlowState>,
    /// Its cached next hop toward the backend, if still valid.
    pub cached: Option<NextHop>,
}

/// The generation a cached next hop must carry (see `NextHop`): canaryd's
/// counter plus the time in units of 2^30 ns (about 1.07 s). Both only go
/// up, so a cached next hop expires within about a second even while no
/// canaryd runs (the data plane outlives it), and at once when canaryd
/// bumps the counter.
#[inline(always)]
pub fn nexthop_gen() -> u32 {
    let epoch = (unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() } >> 30) as u32;
    NEXTHOP_GEN.get(0).copied().unwrap_or(0).wrapping_add(epoch)
}

/// A cached next hop, if it is set and of the current generation.
#[inline(always)]
pub fn valid(nh: &NextHop, gen: u32) -> Option<NextHop> {
    (nh.ifindex != 0 && nh.gen == gen).then_some(*nh)
}

/// The version forced on this client by a source-prefix override, if any.
#[inline(always)]
fn override_version(service_id: u32, flow: &FlowKey) -> Option<u32> {
    let (bits, data) = OverrideKeyData::client(service_id, &flow.src, flow.family);
    OVERRIDES
        .get(&LpmKey::new(bits, data))
        .map(|v| v.version & 1)
}

/// Flow table first; on a miss, override or hash bucket vs weight, then the
/// live Maglev table of the chosen pool. A new decision is remembered by
/// the caller once the packet is routed (`remember`). `Err`: the packet is
/// dropped (`drop_no_backend`).
#[inline(always)]
pub fn decide(flow: &FlowKey, vip: &VipInfo, gen: u32) -> Result<Target, Outcome> {
    const NO_BACKEND: Outcome = Outcome::drop(reason::DROP_NO_BACKEND);
    let service_id = vip.service_id;
    let (backend_id, version, entry, cached) = match FLOWS.get_ptr_mut(flow) {
        Some(f) => {
            count(reason::FLOW_HIT);
            let (backend_id, version, nh) =
                unsafe { ((*f).backend_id, (*f).version & 1, (*f).to_backend) };
            (backend_id, version, Some(f), valid(&nh, gen))
        }
        None => {
            // The service entry matters only to a new decision.
            let svc = SERVICES.get(service_id).ok_or(NO_BACKEND)?;
            let version = match override_version(service_id, flow) {
                Some(v) => {
                    count(reason::OVERRIDE_HIT);
                    v
                }
                None => choose_version(split_hash(flow, vip.affinity, svc.seed), svc.weight_bp),
            } & 1;
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
            (backend_id, version, None, None)
        }
    };
    let backend = BACKENDS.get(backend_id).ok_or(NO_BACKEND)?;
    Ok(Target {
        service_id,
        version,
        backend_id,
        addr: backend.addr,
        new_flow: entry.is_none(),
        entry,
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

/// Records a new connection's decision (with the next hop it was just
/// routed to), or refreshes an established one's next hop.
#[inline(always)]
pub fn remember(ctx: &XdpContext, flow: &FlowKey, t: &Target, learned: Option<NextHop>, gen: u32) {
    let learned = stamped(learned, gen);
    match t.entry {
        Some(_) => {
            if let Some(nh) = learned {
                // Looked up again: the entry seen before the route lookup may
                // have been evicted and reused for another connection since
                // (an LRU reuses freed elements at once).
                if let Some(e) = FLOWS.get_ptr_mut(flow) {
                    if unsafe { (*e).backend_id } == t.backend_id {
                        unsafe { (*e).to_backend = nh };
                    }
                }
            }
        }
        None => {
            let state = FlowState {
                backend_id: t.backend_id,
                version: t.version,
                service_id: t.service_id,
                flags: 0,
                to_backend: learned.unwrap_or_default(),
                to_client: NextHop::default(),
            };
            // BPF_NOEXIST: if another CPU decided this connection meanwhile,
            // its decision stays (the first one wins, for every packet after).
            match FLOWS.insert(flow, &state, BPF_NOEXIST as u64) {
                Ok(()) => {}
                Err(e) if e == -EEXIST => {}
                Err(_) => {
                    // Rare (the LRU evicts instead of failing): worth a log line.
                    count(reason::FLOW_INSERT_FAILED);
                    warn!(ctx, "flow table insert failed for service {}", t.service_id);
                }
            }
        }
    }
}

/// Keeps the next hop a reply was just routed to in its flow entry (looked
/// up again, as in `remember`: the entry may have been reused meanwhile).
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
