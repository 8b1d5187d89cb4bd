//! The distinct clients behind each version's failures in the current step:
//! a step fails on its error counts only when enough distinct clients
//! failed (`analysis.min_failing_clients`), so one client, or a few, cannot
//! roll a canary back by provoking failures, and cannot make a failing one
//! look bad on their own.
//!
//! The data plane reports each judged failure it sees (a backend's RST or
//! ICMP port unreachable) with its client in the `FAILURES` ring buffer;
//! canaryd adds the handshakes it times out itself. A client is an address
//! (IPv6: its /64, as the judging budget keys it). The set starts afresh
//! when the service's step begins; what the analysis reads is a counter,
//! the number of clients seen for the first time in the step, so a window
//! is a difference of two readings like every other counter.

use canary_common::{ClientKey, FailureEvent, FlowKey};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::fleet::{Client, StepClients};

#[derive(Default)]
struct Tracker {
    /// The step these clients failed in (its start, as the daemon's
    /// `step_began` has it).
    step: Option<Instant>,
    seen: HashSet<Client>,
    /// Clients seen for the first time in a step, ever (a counter).
    distinct: u64,
    /// Of those, in this step.
    in_step: u64,
}

/// Per service, stable and canary (by the version's number). Looked up by
/// name without allocating: a flood of failures is noted one by one.
#[derive(Default)]
pub struct FailingClients {
    trackers: HashMap<String, [Tracker; 2]>,
}

/// Most clients remembered per (service, version) and step: beyond it a
/// client counts as new (the step has plenty of distinct clients anyway).
const MAX_REMEMBERED: usize = 100_000;

impl FailingClients {
    /// One failure of `client`'s judged connection in `service`'s current
    /// step (`step`: when it began; `None` without a running rollout, then
    /// every failure is remembered as of no step).
    pub fn note(&mut self, service: &str, version: u32, client: Client, step: Option<Instant>) {
        let versions = match self.trackers.get_mut(service) {
            Some(v) => v,
            None => self.trackers.entry(service.to_string()).or_default(),
        };
        let t = &mut versions[(version & 1) as usize];
        if t.step != step {
            t.step = step;
            t.seen.clear();
            t.in_step = 0;
        }
        if t.seen.len() >= MAX_REMEMBERED || t.seen.insert(client) {
            t.distinct += 1;
            t.in_step += 1;
        }
    }

    /// The counter the analysis reads.
    pub fn distinct(&self, service: &str, version: u32) -> u64 {
        self.trackers
            .get(service)
            .map_or(0, |v| v[(version & 1) as usize].distinct)
    }

    /// The clients that failed in the step that began at `step` (as `note`
    /// was given it), at most `max` of them listed (none when the last
    /// failure was in another step).
    pub fn of_step(
        &self,
        service: &str,
        version: u32,
        step: Option<Instant>,
        max: usize,
    ) -> StepClients {
        match self.trackers.get(service) {
            Some(v) if v[(version & 1) as usize].step == step => {
                let t = &v[(version & 1) as usize];
                StepClients {
                    count: t.in_step,
                    clients: t.seen.iter().take(max).copied().collect(),
                }
            }
            _ => StepClients::default(),
        }
    }

    /// Forgets services no longer configured.
    pub fn retain(&mut self, known: impl Fn(&str) -> bool) {
        self.trackers.retain(|name, _| known(name));
    }
}

/// The client of a data-plane failure record.
pub fn client_of_event(e: &FailureEvent) -> Client {
    (e.family, e.addr)
}

/// The client of a connection (IPv6: its /64), as the data plane reports
/// it.
pub fn client_of_flow(key: &FlowKey) -> Client {
    (key.family as u32, ClientKey::client_addr(&key.src))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_counts_once_a_step() {
        let mut f = FailingClients::default();
        let step1 = Some(Instant::now());
        let c1 = (4, [1, 0, 0, 0]);
        let c2 = (4, [2, 0, 0, 0]);
        for _ in 0..100 {
            f.note("shop", 1, c1, step1);
        }
        assert_eq!(f.distinct("shop", 1), 1, "100 failures of one client");
        f.note("shop", 1, c2, step1);
        assert_eq!(f.distinct("shop", 1), 2);
        assert_eq!(f.distinct("shop", 0), 0, "per version");
        let step2 = step1.map(|t| t + Duration::from_secs(30));
        f.note("shop", 1, c1, step2);
        assert_eq!(f.distinct("shop", 1), 3, "a new step: c1 counts again");
        f.retain(|s| s != "shop");
        assert_eq!(f.distinct("shop", 1), 0);
    }

    #[test]
    fn a_step_lists_its_own_clients_only() {
        let mut f = FailingClients::default();
        let (step1, step2) = (Instant::now(), Instant::now() + Duration::from_secs(30));
        for i in 0..5 {
            f.note("shop", 1, (4, [i, 0, 0, 0]), Some(step1));
        }
        let listed = f.of_step("shop", 1, Some(step1), 3);
        assert_eq!((listed.count, listed.clients.len()), (5, 3));
        assert_eq!(f.of_step("shop", 0, Some(step1), 3), StepClients::default());
        assert_eq!(
            f.of_step("shop", 1, Some(step2), 3),
            StepClients::default(),
            "the step that began later has had no failure yet"
        );
        f.note("shop", 1, (4, [9, 0, 0, 0]), Some(step2));
        let listed = f.of_step("shop", 1, Some(step2), 3);
        assert_eq!((listed.count, listed.clients), (1, vec![(4, [9, 0, 0, 0])]));
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        use canary_common::FAMILY_V6;
        let k = |last: u32| FlowKey {
            src: [1, 2, 3, last],
            family: FAMILY_V6,
            ..Default::default()
        };
        assert_eq!(client_of_flow(&k(7)), client_of_flow(&k(8)));
    }
}
