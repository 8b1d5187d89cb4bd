//! The flow table seen from the daemon: the sweep thread's findings, the
//! SYN-flood watcher (flood mode on while the data path decides bare SYNs
//! without state), `LOCAL_ADDRS` kept in step with this host's addresses,
//! and the `flow_table` part of the status.

use super::*;
use crate::control::api::FlowTableStatus;

/// How often `LOCAL_ADDRS` is compared with this host's addresses.
const LOCAL_ADDRS_EVERY: Duration = Duration::from_secs(2);

/// The flood watcher's memory: the stateless-SYN counter at the previous
/// second, and whether flood mode is on.
#[derive(Debug, Default)]
pub(super) struct FloodWatch {
    last: Option<(Instant, u64)>,
    pub(super) on: bool,
}

/// What one reading of the stateless-SYN counter means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FloodChange {
    Started { per_sec: f64 },
    Ended,
}

impl FloodWatch {
    /// Takes the counter `count` read at `at`: flood mode is on while it
    /// grows (the data path only decides statelessly past its threshold).
    pub(super) fn observe(&mut self, at: Instant, count: u64) -> Option<FloodChange> {
        let prev = self.last.replace((at, count));
        let (t0, c0) = prev?;
        let delta = count.saturating_sub(c0);
        let on = delta > 0;
        if on == self.on {
            return None;
        }
        self.on = on;
        Some(if on {
            let dt = at.duration_since(t0).as_secs_f64().max(1e-3);
            FloodChange::Started {
                per_sec: delta as f64 / dt,
            }
        } else {
            FloodChange::Ended
        })
    }
}

impl Daemon {
    /// Starts the flow-table sweep (canaryd only: a data plane in a test
    /// keeps its entries).
    pub fn start_sweeper(&mut self) {
        let every = self.running.flow_table.sweep_interval;
        self.sweeper = Some(Sweeper::start(self.dp.pin_dir().to_path_buf(), every));
        info!(
            "flow table: {} entries, swept every {every:?}; flood mode above {} new flows/s{}",
            self.dp.options().flow_table_size,
            self.running.flow_table.syn_flood_threshold,
            if self.running.flow_table.syn_flood_threshold == 0 {
                " (off)"
            } else {
                ""
            }
        );
    }

    /// The once-a-second duties of the flow table: the flood watcher, and
    /// `LOCAL_ADDRS` every 2 s (and the veth peers' check every 10 s).
    pub fn flow_housekeeping(&mut self) {
        let now = Instant::now();
        match self.dp.maps().datapath_stats() {
            Ok(stats) => {
                if let Some(n) = self
                    .bad_checksums
                    .observe(now, stats[reason::DROP_BAD_CHECKSUM as usize])
                {
                    warn!(
                        "{n} SYNs to the VIPs had a wrong TCP checksum in the last {} s and were \
                         dropped (drop_bad_checksum): a veth peer with TX checksum offload on \
                         sends every frame so (README: Running on veth and in containers); \
                         otherwise somebody sends them on purpose",
                        BAD_CHECKSUM_WINDOW.as_secs()
                    );
                }
                let count = stats[reason::SYN_STATELESS as usize];
                match self.flood.observe(now, count) {
                    Some(FloodChange::Started { per_sec }) => {
                        let msg = format!("flood mode on: {per_sec:.0} stateless SYNs/s");
                        warn!("{msg}");
                        self.events.push("*", EventKind::SynFlood, msg);
                    }
                    Some(FloodChange::Ended) => {
                        let msg = "flood mode off".to_string();
                        info!("{msg}");
                        self.events.push("*", EventKind::SynFlood, msg);
                    }
                    None => {}
                }
            }
            Err(e) => warn!("reading the data-path counters: {e:#}"),
        }
        let due = self
            .local_addrs_at
            .is_none_or(|t| now.duration_since(t) >= LOCAL_ADDRS_EVERY);
        if due {
            self.local_addrs_at = Some(now);
            match self.dp.refresh_local_addrs() {
                Ok((0, 0)) => {}
                Ok((added, removed)) => info!(
                    "this host's addresses changed: {added} added to LOCAL_ADDRS, {removed} removed"
                ),
                Err(e) => warn!("refreshing LOCAL_ADDRS: {e:#}"),
            }
        }
        // The attached veths' peers, every 10 s (README: "Running on veth
        // and in containers"): asked of the checking thread, which does the
        // rtnetlink, /proc and setns work off this lock; returns at once.
        self.dp.recheck_veths();
    }

    /// The sweep interval after a change of the running config.
    pub(super) fn flow_config_changed(&self) {
        if let Some(s) = &self.sweeper {
            s.set_interval(self.running.flow_table.sweep_interval);
        }
    }

    /// The `flow_table` part of the status, from data-path counters
    /// `datapath` (indexed by reason) and the sweeps.
    pub(super) fn flow_table_status(&self, datapath: &[u64]) -> FlowTableStatus {
        let at = |r: u32| datapath.get(r as usize).copied().unwrap_or(0);
        let sweep = self
            .sweeper
            .as_ref()
            .map(|s| s.totals())
            .unwrap_or_default();
        FlowTableStatus {
            size: self.dp.options().flow_table_size as u64,
            entries: sweep.entries,
            swept_at_age_ms: sweep.last.map(|t| t.elapsed().as_millis() as u64),
            inserts: at(reason::FLOW_INSERT),
            insert_failures: at(reason::FLOW_INSERT_FAILED),
            expired: at(reason::FLOW_EXPIRED) + sweep.removed,
            swept_removed: sweep.removed,
            evictions_estimate: sweep.evictions_estimate(),
            closed: at(reason::FLOW_CLOSED),
            flood_mode: self.flood.on,
            syn_stateless: at(reason::SYN_STATELESS),
            reply_no_flow_nat: at(reason::REPLY_NO_FLOW_NAT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_mode_follows_the_stateless_syn_counter() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = FloodWatch::default();
        assert_eq!(
            w.observe(s(0), 100),
            None,
            "the first reading is a baseline"
        );
        assert_eq!(w.observe(s(1), 100), None);
        assert_eq!(
            w.observe(s(2), 50_100),
            Some(FloodChange::Started { per_sec: 50_000.0 })
        );
        assert!(w.on);
        assert_eq!(w.observe(s(3), 90_000), None, "still on");
        assert_eq!(w.observe(s(4), 90_000), Some(FloodChange::Ended));
        assert!(!w.on);
        // A counter reset (a fresh data plane) is no flood.
        assert_eq!(w.observe(s(5), 0), None);
    }
}

/// How often the bad-checksum counter is looked at, and how many drops in
/// that window are worth a warning (a few are line noise or a scan).
const BAD_CHECKSUM_WINDOW: Duration = Duration::from_secs(10);
const BAD_CHECKSUM_WARN_AT: u64 = 50;

/// Watches `drop_bad_checksum`: many SYNs with a wrong checksum usually
/// mean a veth peer with TX checksum offload on (its frames carry partial
/// checksums), so every connection through it fails.
#[derive(Default)]
pub(super) struct BadChecksumWatch {
    last: Option<(Instant, u64)>,
}

impl BadChecksumWatch {
    /// The drops in the window just ended, when there were enough to warn.
    fn observe(&mut self, now: Instant, count: u64) -> Option<u64> {
        let Some((at, was)) = self.last else {
            self.last = Some((now, count));
            return None;
        };
        if now.duration_since(at) < BAD_CHECKSUM_WINDOW {
            return None;
        }
        self.last = Some((now, count));
        let n = count.saturating_sub(was);
        (n >= BAD_CHECKSUM_WARN_AT).then_some(n)
    }
}

#[cfg(test)]
mod bad_checksum_tests {
    use super::*;

    #[test]
    fn warns_once_a_window_when_enough_were_dropped() {
        let t0 = Instant::now();
        let mut w = BadChecksumWatch::default();
        assert_eq!(w.observe(t0, 1000), None, "the first look sets the base");
        assert_eq!(
            w.observe(t0 + Duration::from_secs(5), 5000),
            None,
            "mid-window"
        );
        assert_eq!(w.observe(t0 + Duration::from_secs(10), 5000), Some(4000));
        assert_eq!(
            w.observe(t0 + Duration::from_secs(20), 5040),
            None,
            "40: noise"
        );
    }
}
