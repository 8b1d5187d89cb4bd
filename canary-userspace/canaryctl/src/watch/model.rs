//! The live view's state without a terminal: what canaryd last said, the
//! history behind the sparklines (kept here, client-side: ~60 polls), the
//! recent events, which service is picked, and the plain and JSON lines
//! written when stdout is not a terminal. Pure: unit-tested below; `ui.rs`
//! draws it.

use canary_control::api::{
    Event, FleetStatus, RolloutStatus, ServiceStatus, Status, VersionSignals, VersionStatus,
};
use std::collections::{BTreeMap, VecDeque};

use crate::render::{error_ratio, share, step_count};

/// Polls kept per service (one a second: the last minute).
pub const HISTORY: usize = 60;

/// Events kept (the view shows the newest that fit).
pub const EVENTS_KEPT: usize = 50;

/// Per-second rate of a counter between two polls, `(seconds, value)`
/// each; None without an earlier poll, when no time passed, or when the
/// counter went back (canaryd restarted, the service was re-created).
pub fn counter_rate(prev: Option<(f64, u64)>, now: (f64, u64)) -> Option<f64> {
    let (t0, v0) = prev?;
    let (t1, v1) = now;
    let dt = t1 - t0;
    if dt <= 0.0 || v1 < v0 {
        return None;
    }
    Some((v1 - v0) as f64 / dt)
}

/// One version of a service at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionPoint {
    /// New connections since canaryd started.
    pub new_flows: u64,
    /// New connections per second between the previous poll and this one
    /// (canaryd's own last-second rate for the first poll or after a
    /// counter reset).
    pub per_sec: f64,
    /// canaryd's recent error ratio (judged resets, unreachables and
    /// handshake timeouts over judged connections, last ≤10 s).
    pub error_ratio: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One service at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the view started.
    pub t: f64,
    pub weight_percent: f64,
    pub share: Option<f64>,
    pub stable: VersionPoint,
    pub canary: VersionPoint,
}

/// The last `HISTORY` samples of one service.
#[derive(Debug, Clone, Default)]
pub struct ServiceHistory {
    samples: VecDeque<Sample>,
}

impl ServiceHistory {
    /// Adds the service as polled at `t` seconds; rates come from the
    /// counters' change since the previous sample.
    pub fn push(&mut self, t: f64, s: &ServiceStatus) -> &Sample {
        let prev = self.samples.back();
        let point = |v: &VersionStatus, sig: &VersionSignals, before: Option<&VersionPoint>| {
            let earlier = prev.zip(before).map(|(p, b)| (p.t, b.new_flows));
            VersionPoint {
                new_flows: v.new_flows,
                per_sec: counter_rate(earlier, (t, v.new_flows)).unwrap_or(v.new_flows_per_sec),
                error_ratio: sig.recent_error_ratio,
                p99_ms: sig.recent_handshake_p99_ms,
            }
        };
        let sample = Sample {
            t,
            weight_percent: s.weight_percent,
            share: s.observed_canary_share,
            stable: point(&s.stable, &s.signals.stable, prev.map(|p| &p.stable)),
            canary: point(&s.canary, &s.signals.canary, prev.map(|p| &p.canary)),
        };
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.samples.back().expect("just pushed")
    }

    pub fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// A figure of every sample, oldest first (None where it has none).
    pub fn series(&self, f: impl Fn(&Sample) -> Option<f64>) -> Vec<Option<f64>> {
        self.samples.iter().map(f).collect()
    }
}

/// The live view's state.
#[derive(Debug, Default)]
pub struct Model {
    /// The service named on the command line, if any.
    pub named: Option<String>,
    /// canaryd's last answer (only the named service when one is named).
    pub status: Option<Status>,
    /// Why the last poll failed ("canaryd not answering: ..."); None once it
    /// answers again.
    pub error: Option<String>,
    /// When canaryd last answered (RFC 3339) and when it was last asked.
    pub answered_at: Option<String>,
    pub polled_at: Option<String>,
    /// Something to say about the named service (gone after a reload).
    pub note: Option<String>,
    pub histories: BTreeMap<String, ServiceHistory>,
    /// Oldest first.
    events: VecDeque<Event>,
    /// The highest event sequence number seen.
    pub events_after: u64,
    /// Index of the picked service (when several are shown).
    pub selected: usize,
}

impl Model {
    pub fn new(named: Option<&str>) -> Model {
        Model {
            named: named.map(String::from),
            ..Default::default()
        }
    }

    /// A poll's answer at `t` seconds (`now`: its wall-clock time). An
    /// error only when the service named on the command line is not in
    /// canaryd's first answer (a typo); once seen, a service that goes away
    /// is a note and the view goes on.
    pub fn apply_status(
        &mut self,
        t: f64,
        now: &str,
        answer: anyhow::Result<Status>,
    ) -> anyhow::Result<()> {
        self.polled_at = Some(now.to_string());
        let mut status = match answer {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{e:#}").replace('\n', " ");
                self.error = Some(format!("canaryd not answering: {msg}"));
                return Ok(());
            }
        };
        self.error = None;
        self.note = None;
        if let Some(name) = &self.named {
            status.services.retain(|s| &s.name == name);
            if status.services.is_empty() {
                if self.answered_at.is_none() {
                    anyhow::bail!("unknown service: {name}");
                }
                self.note = Some(format!(
                    "service {name} is not in canaryd's status now (removed by a reload?)"
                ));
            }
        }
        self.answered_at = Some(now.to_string());
        self.histories
            .retain(|name, _| status.services.iter().any(|s| &s.name == name));
        for s in &status.services {
            self.histories.entry(s.name.clone()).or_default().push(t, s);
        }
        if !status.services.is_empty() {
            self.selected = self.selected.min(status.services.len() - 1);
        }
        self.status = Some(status);
        Ok(())
    }

    /// Events after `events_after`, oldest first, as the API gives them.
    pub fn apply_events(&mut self, events: Vec<Event>) {
        for e in events {
            if e.seq <= self.events_after {
                continue;
            }
            self.events_after = e.seq;
            if self.events.len() == EVENTS_KEPT {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
    }

    /// Events about `service` (or host-wide, service `*`), newest first.
    pub fn recent_events<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events
            .iter()
            .rev()
            .filter(move |e| e.service == service || e.service == "*")
    }

    pub fn services(&self) -> &[ServiceStatus] {
        self.status
            .as_ref()
            .map(|s| s.services.as_slice())
            .unwrap_or(&[])
    }

    pub fn selected_service(&self) -> Option<&ServiceStatus> {
        let services = self.services();
        services.get(self.selected.min(services.len().saturating_sub(1)))
    }

    /// Up/down or tab: the next or previous service, wrapping around.
    pub fn select(&mut self, forward: bool) {
        let n = self.services().len();
        if n == 0 {
            return;
        }
        self.selected = if forward {
            (self.selected + 1) % n
        } else {
            (self.selected + n - 1) % n
        };
    }
}

/// The weight of the rollout's current step, in percent.
pub fn step_weight(r: &RolloutStatus) -> Option<f64> {
    r.step.checked_sub(1).and_then(|i| r.steps.get(i)).copied()
}

/// "running step 2/6 12/30 s", and " sample 45/120" when the step needs a
/// sample.
pub fn rollout_words(r: &RolloutStatus) -> String {
    let mut out = format!(
        "{} step {}/{} {:.0}/{:.0} s",
        r.phase,
        r.step,
        step_count(r),
        r.step_elapsed_s,
        r.step_interval_s
    );
    if let Some(need) = r.required_canary_connections {
        out.push_str(&format!(" sample {}/{need}", r.canary_connections));
    }
    out
}

/// One service as a plain line (stdout not a terminal):
/// `2026-11-30T16:00:01Z shop weight 10.00% share 9.8% stable 120.0/s err
/// 0.00% canary 13.1/s err 0.00% rollout running step 2/6 12/30 s`.
pub fn plain_line(time: &str, s: &ServiceStatus, sample: &Sample) -> String {
    let rollout = s
        .rollout
        .as_ref()
        .map(rollout_words)
        .unwrap_or_else(|| "none".into());
    format!(
        "{time} {} weight {:.2}% share {} stable {:.1}/s err {} canary {:.1}/s err {} rollout {rollout}",
        s.name,
        s.weight_percent,
        share(s.observed_canary_share),
        sample.stable.per_sec,
        error_ratio(sample.stable.error_ratio),
        sample.canary.per_sec,
        error_ratio(sample.canary.error_ratio),
    )
}

/// `x` to `digits` decimals (JSON figures without float noise).
fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

/// The plain line's figures as one JSON object (`--json`).
pub fn json_line(time: &str, s: &ServiceStatus, sample: &Sample) -> serde_json::Value {
    let version = |p: &VersionPoint| {
        serde_json::json!({
            "new_connections": p.new_flows,
            "per_sec": round(p.per_sec, 2),
            "error_ratio": p.error_ratio,
            "handshake_p99_ms": p.p99_ms.map(|ms| round(ms, 4)),
        })
    };
    let rollout = s.rollout.as_ref().map(|r| {
        serde_json::json!({
            "phase": r.phase,
            "step": r.step,
            "steps": step_count(r),
            "step_weight_percent": step_weight(r),
            "step_elapsed_s": r.step_elapsed_s,
            "step_interval_s": r.step_interval_s,
            "canary_connections": r.canary_connections,
            "required_canary_connections": r.required_canary_connections,
            "verdict": r.verdict,
        })
    });
    serde_json::json!({
        "time": time,
        "service": s.name,
        "weight_percent": s.weight_percent,
        "observed_canary_share": s.observed_canary_share,
        "observed_canary_share_total": s.observed_canary_share_total,
        "stable": version(&sample.stable),
        "canary": version(&sample.canary),
        "rollout": rollout,
    })
}

/// The fleet in one line, with `service`'s agreement when it has one.
pub fn fleet_line(f: &FleetStatus, service: Option<&str>) -> String {
    let mut out = format!(
        "{}, {} hosts reporting",
        crate::render::fleet_header(f),
        f.hosts.len()
    );
    if !f.silent.is_empty() {
        let names: Vec<&str> = f.silent.iter().map(|h| h.name.as_str()).collect();
        out.push_str(&format!(", SILENT {}", names.join(" ")));
    }
    if f.cut_off_since_ms.is_some() {
        out.push_str(", CUT OFF from etcd");
    }
    if let Some(a) = service.and_then(|name| f.agreement.iter().find(|a| a.service == name)) {
        out.push_str(&format!("; {}: {}", a.service, a.line));
    }
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use canary_control::api::{EventKind, Signals};

    pub fn service(name: &str, weight: f64, stable: u64, canary: u64) -> ServiceStatus {
        let v = |n: u64| VersionStatus {
            new_flows: n,
            packets: n * 10,
            new_flows_per_sec: 7.0,
            ..Default::default()
        };
        let mut signals = Signals::default();
        signals.stable.recent_error_ratio = Some(0.0);
        signals.canary.recent_error_ratio = Some(0.0125);
        signals.canary.recent_handshake_p99_ms = Some(1.5);
        ServiceStatus {
            name: name.into(),
            vip: "198.18.100.1".parse().unwrap(),
            port: 80,
            protocol: "tcp".into(),
            affinity: "source-ip".into(),
            weight_percent: weight,
            weight_source: "rollout".into(),
            stable: v(stable),
            canary: v(canary),
            observed_canary_share: Some(0.098),
            observed_canary_share_total: Some(0.101),
            backends: vec![],
            signals,
            rollout: None,
            rollbacks: 0,
            cohorts: None,
        }
    }

    pub fn rollout() -> RolloutStatus {
        serde_json::from_value(serde_json::json!({
            "phase": "running",
            "step": 2,
            "steps": [5.0, 10.0],
            "planned_steps": 6,
            "step_elapsed_s": 12.4,
            "step_interval_s": 30.0,
            "time_left_s": 17.6,
            "canary_connections": 45,
            "canary_failures": 0,
            "stable_connections": 400,
            "stable_failures": 1,
            "required_canary_connections": 120,
            "verdict": "need more: 45 of 120 canary connections",
            "analysis": null,
            "reason": null,
            "history": ["step 1 (5%) passed"],
        }))
        .unwrap()
    }

    pub fn status(services: Vec<ServiceStatus>) -> Status {
        Status {
            instance: "edge-1".into(),
            services,
            datapath: Default::default(),
            flow_table: Default::default(),
            fleet: None,
            interfaces: vec![],
            pins: Default::default(),
        }
    }

    pub fn event(seq: u64, service: &str, message: &str) -> Event {
        Event {
            seq,
            time: format!("2026-11-30T16:00:{:02}Z", seq % 60),
            service: service.into(),
            kind: EventKind::Step,
            message: message.into(),
            who: None,
            from_percent: None,
            to_percent: None,
        }
    }

    #[test]
    fn rates_are_the_counters_change_per_second() {
        assert_eq!(counter_rate(None, (1.0, 10)), None);
        assert_eq!(counter_rate(Some((1.0, 10)), (3.0, 50)), Some(20.0));
        assert_eq!(counter_rate(Some((1.0, 10)), (1.5, 10)), Some(0.0));
        assert_eq!(counter_rate(Some((2.0, 10)), (2.0, 50)), None, "no time");
        assert_eq!(counter_rate(Some((1.0, 50)), (2.0, 10)), None, "reset");
        assert_eq!(round(2934.662228277768, 2), 2934.66);
        assert_eq!(round(0.019504000000000087, 4), 0.0195);
    }

    #[test]
    fn history_keeps_the_last_minute_with_rates_from_deltas() {
        let mut h = ServiceHistory::default();
        // First poll: canaryd's own rate (7/s in the fixture).
        let first = h.push(0.0, &service("shop", 10.0, 1000, 100)).clone();
        assert_eq!(first.stable.per_sec, 7.0);
        // 0.5 s later, 60 more stable and 5 more canary connections.
        let s = h.push(0.5, &service("shop", 10.0, 1060, 105)).clone();
        assert_eq!(s.stable.per_sec, 120.0);
        assert_eq!(s.canary.per_sec, 10.0);
        assert_eq!(s.canary.error_ratio, Some(0.0125));
        // canaryd restarted: the counters went back, its own rate again.
        let s = h.push(1.5, &service("shop", 10.0, 3, 1)).clone();
        assert_eq!((s.stable.per_sec, s.canary.per_sec), (7.0, 7.0));
        for i in 0..100u64 {
            h.push(2.0 + i as f64, &service("shop", 10.0, 10 + i * 3, 1 + i));
        }
        assert_eq!(h.len(), HISTORY);
        let rates = h.series(|s| Some(s.stable.per_sec));
        assert_eq!(rates.len(), HISTORY);
        assert!(rates.iter().all(|r| *r == Some(3.0)), "{rates:?}");
        assert_eq!(h.last().unwrap().t, 101.0);
    }

    #[test]
    fn the_plain_line_has_every_figure() {
        let mut h = ServiceHistory::default();
        h.push(0.0, &service("shop", 10.0, 1000, 100));
        let mut s = service("shop", 10.0, 1120, 113);
        let sample = h.push(1.0, &s).clone();
        assert_eq!(
            plain_line("2026-11-30T16:00:01Z", &s, &sample),
            "2026-11-30T16:00:01Z shop weight 10.00% share 9.8% stable 120.0/s err 0.00% \
             canary 13.0/s err 1.25% rollout none"
        );
        s.rollout = Some(rollout());
        s.observed_canary_share = None;
        s.signals.stable.recent_error_ratio = None;
        let sample = h.push(2.0, &s).clone();
        assert_eq!(
            plain_line("2026-11-30T16:00:02Z", &s, &sample),
            "2026-11-30T16:00:02Z shop weight 10.00% share - stable 0.0/s err - \
             canary 0.0/s err 1.25% rollout running step 2/6 12/30 s sample 45/120"
        );
        let j = json_line("2026-11-30T16:00:02Z", &s, &sample);
        assert_eq!(j["service"], "shop");
        assert_eq!(j["weight_percent"], 10.0);
        assert_eq!(j["observed_canary_share"], serde_json::Value::Null);
        assert_eq!(j["canary"]["new_connections"], 113);
        assert_eq!(j["canary"]["per_sec"], 0.0);
        assert_eq!(j["canary"]["handshake_p99_ms"], 1.5);
        assert_eq!(j["rollout"]["step"], 2);
        assert_eq!(j["rollout"]["steps"], 6);
        assert_eq!(j["rollout"]["step_weight_percent"], 10.0);
        assert_eq!(j["rollout"]["required_canary_connections"], 120);
        assert!(!j.to_string().contains('\n'));
    }

    #[test]
    fn a_named_service_must_exist_at_first_then_may_go() {
        let mut m = Model::new(Some("api"));
        let e = m
            .apply_status(0.0, "t0", Ok(status(vec![service("shop", 1.0, 0, 0)])))
            .unwrap_err();
        assert_eq!(e.to_string(), "unknown service: api");

        let mut m = Model::new(Some("api"));
        let both = || status(vec![service("shop", 1.0, 0, 0), service("api", 2.0, 0, 0)]);
        m.apply_status(0.0, "t0", Ok(both())).unwrap();
        assert_eq!(m.services().len(), 1);
        assert_eq!(m.selected_service().unwrap().name, "api");
        m.apply_status(1.0, "t1", Ok(status(vec![service("shop", 1.0, 0, 0)])))
            .unwrap();
        assert!(m.note.as_deref().unwrap().contains("api is not in"));
        assert!(m.histories.is_empty());
        assert!(m.selected_service().is_none());
    }

    #[test]
    fn a_silent_daemon_is_said_and_the_last_answer_kept() {
        let mut m = Model::new(None);
        m.apply_status(0.0, "t0", Ok(status(vec![service("shop", 1.0, 5, 1)])))
            .unwrap();
        m.apply_status(1.0, "t1", Err(anyhow::anyhow!("no control socket at /x")))
            .unwrap();
        assert_eq!(
            m.error.as_deref(),
            Some("canaryd not answering: no control socket at /x")
        );
        assert_eq!(m.answered_at.as_deref(), Some("t0"));
        assert_eq!(m.selected_service().unwrap().name, "shop");
        assert_eq!(m.histories["shop"].len(), 1);
        m.apply_status(2.0, "t2", Ok(status(vec![service("shop", 1.0, 9, 1)])))
            .unwrap();
        assert_eq!(m.error, None);
        assert_eq!(m.histories["shop"].len(), 2);
    }

    #[test]
    fn selection_wraps_and_survives_fewer_services() {
        let mut m = Model::new(None);
        let three = status(vec![
            service("a", 1.0, 0, 0),
            service("b", 1.0, 0, 0),
            service("c", 1.0, 0, 0),
        ]);
        m.select(true); // nothing to pick yet
        m.apply_status(0.0, "t", Ok(three)).unwrap();
        m.select(false);
        assert_eq!(m.selected_service().unwrap().name, "c");
        m.select(true);
        m.select(true);
        assert_eq!(m.selected_service().unwrap().name, "b");
        m.select(true);
        m.apply_status(1.0, "t", Ok(status(vec![service("a", 1.0, 0, 0)])))
            .unwrap();
        assert_eq!(m.selected_service().unwrap().name, "a");
    }

    #[test]
    fn events_newest_first_for_the_service_and_host_wide() {
        let mut m = Model::new(None);
        m.apply_events(vec![
            event(1, "shop", "one"),
            event(2, "api", "two"),
            event(3, "*", "reload"),
        ]);
        // A repeat of an event already seen is not kept twice.
        m.apply_events(vec![event(3, "*", "reload"), event(4, "shop", "four")]);
        assert_eq!(m.events_after, 4);
        let shown: Vec<&str> = m
            .recent_events("shop")
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(shown, ["four", "reload", "one"]);
        m.apply_events((5..200).map(|i| event(i, "shop", "x")).collect());
        assert_eq!(m.recent_events("shop").count(), EVENTS_KEPT);
        assert_eq!(m.recent_events("shop").next().unwrap().seq, 199);
    }

    #[test]
    fn rollout_words_and_step_weight() {
        let mut r = rollout();
        assert_eq!(step_weight(&r), Some(10.0));
        assert_eq!(rollout_words(&r), "running step 2/6 12/30 s sample 45/120");
        r.required_canary_connections = None;
        r.planned_steps = None;
        r.step = 0;
        assert_eq!(step_weight(&r), None);
        assert_eq!(rollout_words(&r), "running step 0/2 12/30 s");
    }
}
