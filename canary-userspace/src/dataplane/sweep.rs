//! The flow-table sweep: canaryd's own thread removes entries idle past
//! their timeout (`canary_common::flow::expired`, the rule the data path
//! applies) and counts what is left, every `flow_table.sweep_interval`.
//! It works on the pinned maps, off the async runtime and without the
//! daemon's lock, so a table of millions of entries never stalls the
//! control API. The timeouts are read from `SETTINGS` at each pass: the
//! sweep and the data path always agree.
//!
//! It also keeps what the evictions estimate needs: the LRU evicts
//! silently, so evictions are what inserts leave unexplained once the sweep's
//! removals and the table's growth are taken away (`evictions_estimate`).

use super::maps::open_pinned as open;
use anyhow::Result;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use canary_common::{flow, names, reason, FlowKey, FlowState, Settings};
use log::{info, warn};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the sweeps found so far (since this canaryd started).
#[derive(Debug, Clone, Default)]
pub struct SweepTotals {
    /// Completed passes.
    pub sweeps: u64,
    /// Entries the sweeps removed (the first pass's included).
    pub removed: u64,
    /// Entries the first pass removed.
    pub removed_by_first_sweep: u64,
    /// Entries left after the last pass.
    pub entries: u64,
    /// Entries left after the first pass (the estimate's baseline).
    pub entries_at_first_sweep: Option<u64>,
    /// The data path's insert counter (`reason::FLOW_INSERT`) when the
    /// first and the last pass began.
    pub inserts_at_first_sweep: u64,
    pub inserts_at_last_sweep: u64,
    /// When the last pass ended, and how long it took.
    pub last: Option<Instant>,
    pub last_duration: Duration,
    /// Entries left after the last pass, per backend id: a draining
    /// backend's drain is extended while any remain (`daemon/finish.rs`).
    pub live_by_backend: std::collections::HashMap<u32, u64>,
}

impl SweepTotals {
    /// Evictions (an honest estimate) between the first and the last pass.
    pub fn evictions_estimate(&self) -> u64 {
        let Some(first) = self.entries_at_first_sweep else {
            return 0;
        };
        evictions_estimate(
            self.inserts_at_last_sweep
                .saturating_sub(self.inserts_at_first_sweep),
            self.removed - self.removed_by_first_sweep,
            self.entries,
            first,
        )
    }
}

/// Entries the LRU must have evicted: every insert made an entry (the data
/// path counts `FLOW_INSERT` only for new keys, not for an expired entry it
/// replaces in place); the
/// sweep's removals and the table's growth since the baseline account for
/// some; the rest were evicted.
/// `max(0, inserts - swept_removed - (entries_now - entries_at_first_sweep))`,
/// all counted from the first sweep.
pub fn evictions_estimate(
    inserts: u64,
    swept_removed: u64,
    entries_now: u64,
    entries_at_first_sweep: u64,
) -> u64 {
    let growth = entries_now as i128 - entries_at_first_sweep as i128;
    (inserts as i128 - swept_removed as i128 - growth).clamp(0, u64::MAX as i128) as u64
}

/// The sweep thread's handle; dropping it stops the thread at its next
/// check (within 100 ms between passes, or after the pass under way).
pub struct Sweeper {
    totals: Arc<Mutex<SweepTotals>>,
    interval_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sweeper {
    /// Starts sweeping the maps pinned in `pin_dir` every `interval`.
    pub fn start(pin_dir: PathBuf, interval: Duration) -> Sweeper {
        let s = Sweeper {
            totals: Arc::default(),
            interval_ms: Arc::new(AtomicU64::new(interval.as_millis() as u64)),
            stop: Arc::default(),
        };
        let (totals, every, stop) = (s.totals.clone(), s.interval_ms.clone(), s.stop.clone());
        let spawned = std::thread::Builder::new()
            .name("flow-sweep".into())
            .spawn(move || run(&pin_dir, &totals, &every, &stop));
        if let Err(e) = spawned {
            warn!("flow-table sweep not started: {e}");
        }
        s
    }

    /// A new interval (a reload), from the next wait on.
    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn totals(&self) -> SweepTotals {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Has a pass completed (is anything counted yet)?
    pub fn has_swept(&self) -> bool {
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).sweeps > 0
    }

    /// Entries naming backend `id` after the last pass; None before the
    /// first (nothing counted yet). Reads without copying the totals.
    pub fn live_on(&self, id: u32) -> Option<u64> {
        let t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        (t.sweeps > 0).then(|| t.live_by_backend.get(&id).copied().unwrap_or(0))
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(dir: &Path, totals: &Mutex<SweepTotals>, every: &AtomicU64, stop: &AtomicBool) {
    let mut failing = false;
    loop {
        // The first pass comes right away: occupancy is known from the start.
        let began = Instant::now();
        match sweep_once(dir, stop) {
            Ok(pass) => {
                if failing {
                    info!("flow-table sweep works again");
                    failing = false;
                }
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                if t.entries_at_first_sweep.is_none() {
                    t.entries_at_first_sweep = Some(pass.entries);
                    t.inserts_at_first_sweep = pass.inserts;
                    t.removed_by_first_sweep = pass.removed;
                }
                t.removed += pass.removed;
                t.sweeps += 1;
                t.entries = pass.entries;
                t.inserts_at_last_sweep = pass.inserts;
                t.last = Some(Instant::now());
                t.last_duration = began.elapsed();
                t.live_by_backend = pass.live_by_backend;
            }
            Err(e) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if !failing {
                    warn!("flow-table sweep: {e:#}");
                    failing = true;
                }
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let wait = Duration::from_millis(every.load(Ordering::Relaxed).max(100));
            if began.elapsed() >= wait {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One pass's findings.
struct Pass {
    entries: u64,
    removed: u64,
    inserts: u64,
    live_by_backend: std::collections::HashMap<u32, u64>,
}

fn counter(stats: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    stats.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Removes the expired entries and counts the rest. Each expired entry is
/// removed once the iteration has moved past it (removing the key the
/// kernel's get-next-key stands on would restart the walk), and only if it
/// is still expired then (a packet may have refreshed it meanwhile).
fn sweep_once(dir: &Path, stop: &AtomicBool) -> Result<Pass> {
    let settings: Array<MapData, Settings> = open(dir, names::SETTINGS)?.try_into()?;
    let stats: PerCpuArray<MapData, u64> = open(dir, names::DATAPATH_STATS)?.try_into()?;
    // Two handles on the same map: one walks, one removes.
    let walk: HashMap<MapData, FlowKey, FlowState> = open(dir, names::FLOWS)?.try_into()?;
    let mut del: HashMap<MapData, FlowKey, FlowState> = open(dir, names::FLOWS)?.try_into()?;
    let timeouts = settings.get(&0, 0)?.timeouts;
    let inserts = counter(&stats, reason::FLOW_INSERT);
    let now_s = super::monotonic_s();
    let mut seen = 0u64;
    let mut removed = 0u64;
    let mut pending: Option<FlowKey> = None;
    let mut live_by_backend = std::collections::HashMap::new();
    let mut remove = |del: &mut HashMap<MapData, FlowKey, FlowState>, key: &FlowKey| {
        let still = del
            .get(key, 0)
            .map(|s| flow::expired(&s, key.proto, super::monotonic_s(), &timeouts))
            .unwrap_or(false);
        if still && del.remove(key).is_ok() {
            removed += 1;
        }
    };
    for item in walk.iter() {
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("stopped");
        }
        let Ok((key, state)) = item else { continue };
        seen += 1;
        if let Some(p) = pending.take() {
            remove(&mut del, &p);
        }
        if flow::expired(&state, key.proto, now_s, &timeouts) {
            pending = Some(key);
        } else {
            *live_by_backend.entry(state.backend_id).or_insert(0u64) += 1;
        }
    }
    if let Some(p) = pending.take() {
        remove(&mut del, &p);
    }
    Ok(Pass {
        entries: seen.saturating_sub(removed),
        removed,
        inserts,
        live_by_backend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_inserts_leave_unexplained() {
        // 1,000 inserts into a table that grew by 600 and lost 300 to the
        // sweep: 100 evicted.
        assert_eq!(evictions_estimate(1000, 300, 1600, 1000), 100);
        // Everything accounted for: none.
        assert_eq!(evictions_estimate(1000, 400, 1600, 1000), 0);
        // More removals than inserts explain (entries the kernel or an
        // operator removed): never below 0.
        assert_eq!(evictions_estimate(10, 500, 1000, 1000), 0);
        // The table shrank without the sweep (entries removed otherwise,
        // by a rollback's reset say): an estimate counts them as evicted.
        assert_eq!(evictions_estimate(0, 0, 900, 1000), 100);
        // A full table: every insert evicts one entry.
        assert_eq!(evictions_estimate(5000, 0, 4096, 4096), 5000);
        assert_eq!(evictions_estimate(u64::MAX, 0, 0, u64::MAX), u64::MAX);
    }

    #[test]
    fn totals_estimate_from_the_first_sweep_on() {
        let mut t = SweepTotals::default();
        assert_eq!(t.evictions_estimate(), 0, "no sweep yet");
        t.entries_at_first_sweep = Some(4096);
        t.inserts_at_first_sweep = 10_000;
        t.inserts_at_last_sweep = 12_000;
        t.removed = 700;
        t.removed_by_first_sweep = 200;
        t.entries = 4096;
        assert_eq!(t.evictions_estimate(), 1500);
    }
}
