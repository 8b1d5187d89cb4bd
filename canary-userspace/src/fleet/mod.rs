//! The fleet: several canaryd hosts behind ECMP acting as one, their shared
//! state in etcd (`fleet:` in the config; without it none of this runs).
//!
//! What lives in etcd, under `/canary/<cluster>/` (`Keys`):
//! - `services/<name>`: the fleet's desired run-time state of a service
//!   (`ServiceDoc`): weight and pool overrides with a generation, the
//!   rollout and its history, the rollback count. Every write is a
//!   compare-and-swap on the key's revision.
//! - `health/<name>`: the fleet's one verdict per backend (`HealthDoc`),
//!   written by the leader from a majority of the hosts' probe views.
//! - `hosts/<host>`: each host's report (`HostReport`), bound to its lease:
//!   what it applied, its counters, its probe view. Gone when the host is.
//! - `election/<lease>`: etcd's election (campaign); the lowest is the leader,
//!   the one host that runs rollouts and decides health verdicts.
//! - `members/<host>`: every host that ever joined, without a lease: a host
//!   whose report is gone (its canaryd down, its link to etcd cut) is still
//!   known, and status calls it silent (its data plane may still forward
//!   with its last weight). Removed by hand when a host leaves for good.
//!
//! Here: the documents and the pure rules over them (majority, agreement).
//! `link` does the etcd I/O; the daemon (`daemon/fleet.rs`) decides.

pub mod link;

use crate::control::api::{FleetAgreement, FleetHost};
use crate::daemon::state::ServiceOverrides;
use crate::rollout::analysis::WindowCounts;
use crate::rollout::engine::Rollout;
use canary_common::weight::WeightBp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (report times are wall-clock: hosts
/// compare them).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The key layout of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/canary/{cluster}/"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.prefix)
    }

    pub fn health(&self, name: &str) -> String {
        format!("{}health/{name}", self.prefix)
    }

    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }

    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }

    /// The election's name (etcd adds `/<lease>` per candidate).
    pub fn election(&self) -> String {
        format!("{}election", self.prefix)
    }

    /// The election key of the candidate on `lease` (etcd's v3election
    /// names it by the lease in hex).
    pub fn candidate(&self, lease: i64) -> String {
        format!("{}/{lease:x}", self.election())
    }

    /// What a key under the prefix is.
    pub fn parse<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let (kind, name) = rest.split_once('/')?;
        match kind {
            "services" => Some(Key::Service(name)),
            "health" => Some(Key::Health(name)),
            "hosts" => Some(Key::Host(name)),
            "members" => Some(Key::Member(name)),
            "election" => Some(Key::Candidate),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Service(&'a str),
    Health(&'a str),
    Host(&'a str),
    Member(&'a str),
    Candidate,
}

/// A host that joined the fleet (`members/<host>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberDoc {
    pub host: String,
    /// When its canaryd last connected (Unix ms).
    pub joined_ms: u64,
}

/// The fleet's desired run-time state of one service: what the state file
/// holds for it on a lone host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// Bumped whenever the weight or a pool changes: hosts report the
    /// generation they applied.
    pub generation: u64,
    #[serde(default)]
    pub overrides: ServiceOverrides,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub rollbacks: u64,
    /// Rollbacks that reset open canary connections: a host applying a
    /// larger count resets its own.
    #[serde(default)]
    pub canary_resets: u64,
    /// The host that wrote it, and which run of its canaryd (a host skips
    /// the echo of its own writes).
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub session: u64,
    /// The writer's own count of its writes of this service: a host skips
    /// echoes older than its latest.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub at_ms: u64,
}

impl ServiceDoc {
    /// The weight this document sets, if it sets one.
    pub fn weight(&self) -> Option<WeightBp> {
        self.overrides
            .weight
            .as_ref()
            .map(|w| WeightBp::from_bp(w.weight_bp))
    }

    /// The document's state alone: who wrote it, when, and its generation
    /// aside.
    pub fn state(&self) -> ServiceDoc {
        ServiceDoc {
            overrides: self.overrides.clone(),
            rollout: self.rollout.clone(),
            rollbacks: self.rollbacks,
            canary_resets: self.canary_resets,
            ..Default::default()
        }
    }

    /// Whether two documents ask for the same thing (`state`). Compared as
    /// JSON: the rollout's unsaved fields do not count.
    pub fn same_state(&self, other: &ServiceDoc) -> bool {
        let json = |d: &ServiceDoc| serde_json::to_value(d.state()).unwrap_or_default();
        json(self) == json(other)
    }

    /// Whether `other` differs from this one only in a running rollout's
    /// progress (its window and elapsed time): the leader writes that at
    /// most once per report interval, a step or an end at once.
    pub fn progress_only(&self, other: &ServiceDoc) -> bool {
        let key = |d: &ServiceDoc| {
            let r = d.rollout.as_ref().map(|r| {
                (
                    r.phase,
                    r.step,
                    r.reason.clone(),
                    r.history.len(),
                    r.final_passed,
                )
            });
            (
                serde_json::to_value(&d.overrides).unwrap_or_default(),
                (d.rollbacks, d.canary_resets),
                r,
            )
        };
        key(self) == key(other)
    }
}

/// One backend's fleet verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub healthy: bool,
    /// "2 of 3 hosts" saw it unhealthy.
    pub unhealthy_votes: u32,
    pub voters: u32,
}

/// The fleet's health verdicts of one service's probed backends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthDoc {
    pub backends: BTreeMap<IpAddr, Verdict>,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at_ms: u64,
}

/// What one host applied of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub generation: u64,
    pub weight_bp: u32,
}

/// One host's report, refreshed every `report_interval` on a key bound to
/// its lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// This run of canaryd (its counters' baseline: the leader restarts its
    /// per-host deltas when it changes).
    pub session: u64,
    pub at_ms: u64,
    pub leader: bool,
    #[serde(default)]
    pub applied: BTreeMap<String, Applied>,
    /// Cumulative counters per service (new connections, failures,
    /// handshake histogram), as the rollout analysis reads them.
    #[serde(default)]
    pub counters: BTreeMap<String, WindowCounts>,
    /// This host's own probe verdicts: service -> backend -> healthy.
    #[serde(default)]
    pub health: BTreeMap<String, BTreeMap<IpAddr, bool>>,
    /// Per service with a rollout running, the clients whose judged
    /// connections failed here in its current step: the leader counts a
    /// client once however many hosts ECMP spread its connections over.
    #[serde(default)]
    pub failing: BTreeMap<String, StepFailures>,
    /// This canaryd lists its failing clients (`failing`). A report without
    /// it (an older canaryd, during a rolling upgrade) has its distinct
    /// count added as before.
    #[serde(default)]
    pub lists_failing: bool,
    /// The rollout features this canaryd runs (`PLAN_FEATURES`). An older
    /// canaryd ignores what it does not know in the fleet's documents and,
    /// as leader, would run an adaptive plan's chosen weights as fixed
    /// steps or drop cohorts and drains: a plan needing a feature is not
    /// started while a live host lacks it.
    #[serde(default)]
    pub plan_features: Vec<String>,
    /// Open connections on this host to each draining backend
    /// (`"service/address"`; absent: none), after its first flow-table
    /// sweep; None before it, or from an older canaryd. The leader ends a
    /// drain only when every live host counts none.
    #[serde(default)]
    pub draining_open: Option<BTreeMap<String, u64>>,
}

/// What `plan_features` lists in this version.
pub const PLAN_FEATURES: [&str; 6] = [
    "adaptive",
    "cohorts",
    "finish",
    "latency",
    "metrics",
    "on_failure",
];

/// A client as the failure count sees it: family and address (IPv6: its
/// /64, as the data plane's judging budget keys it).
pub type Client = (u32, [u32; 4]);

/// The most failing clients a host lists per version and step. A host with
/// more lists these and its count; the leader then sums the hosts' counts
/// (more than this many clients failed on one host alone: no single client
/// can be behind that), else counts the union of the lists exactly.
/// `analysis.min_failing_clients` is 3 by default.
pub const LISTED_FAILING_CLIENTS: usize = 64;

/// One version's failing clients in a step on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepClients {
    /// How many clients failed (all of them, listed or not).
    pub count: u64,
    /// At most `LISTED_FAILING_CLIENTS` of them.
    pub clients: Vec<Client>,
}

/// A service's failing clients on one host in rollout step `step`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailures {
    pub step: usize,
    /// Stable's, then the canary's (by the version's number).
    pub versions: [StepClients; 2],
}

/// The fleet's number of distinct failing clients from the hosts' lists of
/// one step and version: the size of their union when every list is whole,
/// else the sum of the hosts' counts.
pub fn failing_clients<'a>(hosts: impl IntoIterator<Item = &'a StepClients>) -> u64 {
    let mut union = std::collections::HashSet::new();
    let (mut sum, mut whole) = (0u64, true);
    for h in hosts {
        sum += h.count;
        whole &= h.clients.len() as u64 == h.count;
        union.extend(h.clients.iter().copied());
    }
    if whole {
        union.len() as u64
    } else {
        sum
    }
}

/// The fleet verdict of one backend from the hosts' views: unhealthy when a
/// strict majority of the hosts that probe it say so. A tie keeps it in
/// (one host's bad link must not take a backend out of every host).
pub fn majority(votes: impl IntoIterator<Item = bool>) -> Verdict {
    let (mut voters, mut unhealthy) = (0u32, 0u32);
    for healthy in votes {
        voters += 1;
        if !healthy {
            unhealthy += 1;
        }
    }
    Verdict {
        healthy: unhealthy * 2 <= voters,
        unhealthy_votes: unhealthy,
        voters,
    }
}

/// The fleet's verdicts of every probed backend, from the hosts' reports.
pub fn verdicts<'a>(
    reports: impl IntoIterator<Item = &'a HostReport> + Clone,
) -> BTreeMap<String, BTreeMap<IpAddr, Verdict>> {
    let mut out: BTreeMap<String, BTreeMap<IpAddr, Vec<bool>>> = BTreeMap::new();
    for r in reports {
        for (svc, view) in &r.health {
            for (addr, healthy) in view {
                out.entry(svc.clone())
                    .or_default()
                    .entry(*addr)
                    .or_default()
                    .push(*healthy);
            }
        }
    }
    out.into_iter()
        .map(|(svc, m)| (svc, m.into_iter().map(|(a, v)| (a, majority(v))).collect()))
        .collect()
}

/// The agreement line of one service: how many live hosts apply the
/// desired generation and weight.
pub fn agreement(
    service: &str,
    desired_generation: u64,
    desired: WeightBp,
    hosts: &[FleetHost],
    silent: usize,
) -> FleetAgreement {
    let agreeing = hosts
        .iter()
        .filter(|h| {
            h.applied
                .get(service)
                .is_some_and(|a| a.generation == desired_generation && a.weight_bp == desired.bp())
        })
        .count();
    let total = hosts.len() + silent;
    let mut line =
        format!("{agreeing}/{total} hosts apply {desired}, generation {desired_generation}");
    if silent > 0 {
        line += &format!(" ({silent} silent)");
    }
    FleetAgreement {
        service: service.to_string(),
        hosts: total,
        agreeing,
        percent: desired.percent(),
        generation: desired_generation,
        line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_failing_on_several_hosts_counts_once() {
        let list = |ids: &[u32]| StepClients {
            count: ids.len() as u64,
            clients: ids.iter().map(|&i| (4, [i, 0, 0, 0])).collect(),
        };
        // One client through three hosts: 1, not 3.
        let one = [list(&[7]), list(&[7]), list(&[7])];
        assert_eq!(failing_clients(&one), 1);
        // Distinct clients add up; shared ones count once.
        let some = [list(&[1, 2]), list(&[2, 3]), list(&[])];
        assert_eq!(failing_clients(&some), 3);
        assert_eq!(failing_clients(&[] as &[StepClients]), 0);
        // A host with more clients than it lists: the counts are summed.
        let mut many = list(&[1, 2]);
        many.count = 100;
        assert_eq!(failing_clients(&[many, list(&[1])]), 101);
    }

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("edge-1");
        assert_eq!(k.service("shop"), "/canary/edge-1/services/shop");
        assert_eq!(k.parse(&k.service("shop")), Some(Key::Service("shop")));
        assert_eq!(k.parse(&k.health("shop")), Some(Key::Health("shop")));
        assert_eq!(k.parse(&k.host("lb1")), Some(Key::Host("lb1")));
        assert_eq!(k.parse(&k.member("lb1")), Some(Key::Member("lb1")));
        assert_eq!(k.candidate(0x694d8c), "/canary/edge-1/election/694d8c");
        assert_eq!(k.parse(&k.candidate(0x694d8c)), Some(Key::Candidate));
        // Another cluster's keys, or unknown kinds, are not ours.
        assert_eq!(k.parse("/canary/edge-10/services/shop"), None);
        assert_eq!(k.parse("/canary/edge-1/other/x"), None);
    }

    #[test]
    fn majority_needs_more_than_half() {
        assert!(majority([true, true, false]).healthy);
        assert!(!majority([false, false, true]).healthy);
        // A tie keeps the backend in.
        assert!(majority([false, true]).healthy);
        assert!(!majority([false]).healthy);
        assert!(majority([]).healthy);
        let v = majority([false, false, true]);
        assert_eq!((v.unhealthy_votes, v.voters), (2, 3));
    }

    #[test]
    fn verdicts_count_each_hosts_view() {
        let a: IpAddr = "198.18.1.2".parse().unwrap();
        let b: IpAddr = "198.18.2.2".parse().unwrap();
        let report = |down: &[IpAddr]| HostReport {
            health: BTreeMap::from([(
                "shop".to_string(),
                [a, b].iter().map(|x| (*x, !down.contains(x))).collect(),
            )]),
            ..Default::default()
        };
        let reports = [report(&[a]), report(&[a, b]), report(&[])];
        let v = verdicts(reports.iter());
        assert!(!v["shop"][&a].healthy, "2 of 3 hosts see a down");
        assert!(v["shop"][&b].healthy, "1 of 3 hosts sees b down");
    }

    #[test]
    fn agreement_counts_generation_and_weight() {
        let host = |gen: u64, bp: u32| FleetHost {
            applied: BTreeMap::from([(
                "shop".to_string(),
                crate::control::api::FleetApplied {
                    generation: gen,
                    weight_bp: bp,
                    percent: bp as f64 / 100.0,
                },
            )]),
            ..Default::default()
        };
        let hosts = [host(42, 1000), host(42, 1000), host(41, 500)];
        let a = agreement("shop", 42, WeightBp::from_bp(1000), &hosts, 0);
        assert_eq!((a.agreeing, a.hosts), (2, 3));
        assert_eq!(a.line, "2/3 hosts apply 10.00%, generation 42");
        // A silent host (known, no report) does not agree.
        let a = agreement("shop", 42, WeightBp::from_bp(1000), &hosts[..2], 1);
        assert_eq!((a.agreeing, a.hosts), (2, 3));
        assert_eq!(a.line, "2/3 hosts apply 10.00%, generation 42 (1 silent)");
    }

    #[test]
    fn progress_only_ignores_the_window() {
        let plan = crate::config::Config::parse(crate::config::DEFAULT_CONFIG).unwrap();
        let rp = plan
            .services
            .iter()
            .find_map(|s| s.rollout.clone())
            .expect("the built-in config has a rollout plan");
        let (r, _) = Rollout::start(&rp);
        let a = ServiceDoc {
            rollout: Some(r.clone()),
            ..Default::default()
        };
        let mut moved = r.clone();
        moved.step_elapsed_ms += 500;
        let b = ServiceDoc {
            rollout: Some(moved),
            ..Default::default()
        };
        assert!(a.progress_only(&b));
        assert!(!a.same_state(&b));
        let mut stepped = r;
        stepped.step += 1;
        let c = ServiceDoc {
            rollout: Some(stepped),
            ..Default::default()
        };
        assert!(!a.progress_only(&c));
    }
}

#[cfg(test)]
mod feature_tests {
    use super::PLAN_FEATURES;
    use crate::config::Config;

    /// Every feature a plan can need is one this version reports, and a
    /// plain fixed plan needs none (an older fleet runs it as before).
    #[test]
    fn a_plan_needs_only_features_this_version_reports() {
        let base = "interface: lb-client\nservices:\n  - name: shop\n    vip: 198.18.100.1\n    port: 80\n    protocol: tcp\n    affinity: source-ip\n    canary_weight: 0\n    stable: [198.18.1.2]\n    canary: [198.18.3.2]\n    rollout:\n      interval: 30s\n";
        let plan = |extra: &str| {
            let c = Config::parse(&format!("{base}{extra}")).unwrap();
            c.services[0].rollout.clone().unwrap().features()
        };
        assert!(plan("      steps: [10, 100]\n").is_empty());
        let all = plan(
            "      steps: [10, 100]\n      on_failure: pause\n      cohorts:\n        - {name: staff, sources: [198.18.20.0/24], steps: [100, 100]}\n      analysis:\n        latency: {max_slower_ms: 10, handshake: true}\n        metrics:\n          - {name: m, url: 'http://127.0.0.1:9090', query: 'x{v=\"$version\"}', absolute_limit: 1}\n",
        );
        assert_eq!(all, ["cohorts", "latency", "metrics", "on_failure"]);
        let adaptive = plan(
            "      strategy: adaptive\n      adaptive: {budget: [3000, 7000, 40000]}\n      analysis: {max_canary_vs_stable_ratio: 2}\n",
        );
        assert_eq!(adaptive, ["adaptive"]);
        for f in all.iter().chain(&adaptive) {
            assert!(PLAN_FEATURES.contains(f), "{f}");
        }
    }
}
