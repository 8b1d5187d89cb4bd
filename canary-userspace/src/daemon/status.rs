//! The status views: the per-second counter samples, and the `Status` the
//! control API and the metrics endpoint serve (rates, observed canary
//! share, passive health signals, rollout progress).

use super::*;

impl Daemon {
    pub(super) fn rollout_status(&self, service: &str) -> Option<RolloutStatus> {
        let r = self.state.rollouts.get(service)?;
        let elapsed = r.step_elapsed_ms as f64 / 1000.0;
        let interval = r.interval_ms as f64 / 1000.0;
        let a = r.last.clone();
        let verdict = match (&r.phase, &a) {
            (Phase::Promoted, _) => "promoted".to_string(),
            (Phase::Aborted, _) => "rolled back".to_string(),
            (_, _) if r.final_passed => "passed; waiting for the external metric".to_string(),
            (_, _) if r.adaptive.as_ref().is_some_and(|a| a.measuring) => {
                "measuring the connection rate at canary weight 0".to_string()
            }
            (_, None) => "no data yet".to_string(),
            (_, Some(a)) => match &a.verdict {
                crate::rollout::analysis::Verdict::Pass => "pass (waiting for the interval)".into(),
                crate::rollout::analysis::Verdict::NeedMore { have, need } => {
                    format!("need more canary connections: {have} of {need}")
                }
                crate::rollout::analysis::Verdict::Fail { reason } => format!("failing: {reason}"),
            },
        };
        Some(RolloutStatus {
            phase: r.phase.name().to_string(),
            step: r.step + 1,
            steps: r.steps.clone(),
            step_elapsed_s: elapsed,
            step_interval_s: interval,
            time_left_s: (interval - elapsed).max(0.0),
            canary_connections: r.window.canary.attempts,
            canary_failures: r.window.canary.failures,
            stable_connections: r.window.stable.attempts,
            stable_failures: r.window.stable.failures,
            required_canary_connections: a.as_ref().map(|a| a.required_canary_connections),
            verdict,
            analysis: a,
            reason: r.reason.clone(),
            history: r.history.clone(),
            external: r.external.clone(),
            planned_steps: Some(r.planned_steps()),
            why: r.why().map(str::to_string),
            budget: r
                .adaptive
                .as_ref()
                .map(|ad| crate::control::api::BudgetStatus {
                    unit: "judged canary connections".to_string(),
                    level: ad.level,
                    levels: ad.levels() as u32,
                    cap: ad.cap(),
                    exposed: ad.exposed(),
                    left: ad.cap().map(|c| c.saturating_sub(ad.exposed())),
                }),
            on_failure: r.on_failure.map(|f| f.name().to_string()),
            metrics: r.metrics.clone(),
            latency: r
                .latency
                .as_ref()
                .map(|l| l.status.clone())
                .unwrap_or_default(),
        })
    }

    pub(super) fn signals(&self, service: &str) -> Signals {
        if self.dp.service_id(service).is_none() {
            return Signals::default();
        }
        let one = |v: u32| {
            let hs = self.dp.health_counters(service, v).unwrap_or_default();
            let sig = self.dp.signals(service, v).unwrap_or_default();
            VersionSignals {
                syn_acks: hs.syn_acks,
                resets: hs.rsts,
                judged: sig.judged,
                judged_resets: sig.resets,
                unreachables: sig.unreachables,
                not_judged: sig.over_budget,
                handshake_timeouts: self
                    .timeouts
                    .get(&(service.to_string(), v))
                    .copied()
                    .unwrap_or(0),
                handshake_p50_ms: histogram_quantile(&hs.handshake_us_log2, 0.5)
                    .map(|us| us / 1000.0),
                handshake_p99_ms: histogram_quantile(&hs.handshake_us_log2, 0.99)
                    .map(|us| us / 1000.0),
                handshake_us_log2: hs.handshake_us_log2.to_vec(),
                ..Default::default()
            }
        };
        let mut out = Signals {
            stable: one(0),
            canary: one(1),
        };
        // Rates and quantiles from the oldest recent sample (up to 10 s ago)
        // to now.
        if let (Some((t0, first)), Some(b)) = (self.recent.front(), self.cumulative(service)) {
            if let Some(a) = first.get(service) {
                let b = &b;
                let dt = t0.elapsed().as_secs_f64();
                if dt > 0.0 {
                    let d = b.since(a);
                    for (sig, v) in [(&mut out.stable, &d.stable), (&mut out.canary, &d.canary)] {
                        sig.recent_window_s = dt;
                        sig.recent_connections_per_sec = v.attempts as f64 / dt;
                        sig.recent_failures_per_sec = v.failures as f64 / dt;
                        sig.recent_error_ratio = v.error_rate().map(|r| r.min(1.0));
                        sig.recent_handshake_p50_ms =
                            histogram_quantile(&v.handshake_us_log2, 0.5).map(|us| us / 1000.0);
                        sig.recent_handshake_p99_ms =
                            histogram_quantile(&v.handshake_us_log2, 0.99).map(|us| us / 1000.0);
                    }
                }
            }
        }
        out
    }

    /// Takes a counter snapshot (every second, from the daemon's loop).
    pub fn sample(&mut self) -> Result<()> {
        let snap = report::snapshot(&self.dp)?;
        self.prev = self.last.take();
        self.last = Some((Instant::now(), snap));
        let counts = self
            .running
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), self.cumulative(&s.name)?)))
            .collect();
        self.recent.push_back((Instant::now(), counts));
        while self.recent.len() > 11 {
            self.recent.pop_front();
        }
        Ok(())
    }

    pub fn status(&self) -> Result<Status> {
        let now = report::snapshot(&self.dp)?;
        // Rates over the last full sampling interval.
        let (dt, before, after) = match (&self.prev, &self.last) {
            (Some((t0, a)), Some((t1, b))) => {
                ((*t1 - *t0).as_secs_f64().max(1e-3), Some(a), Some(b))
            }
            _ => (1.0, None, None),
        };
        let mut services = Vec::new();
        for s in &now.services {
            let Some(cfg) = self.running.services.iter().find(|c| c.name == s.name) else {
                continue;
            };
            let prev_s = before.and_then(|b| b.services.iter().find(|x| x.name == s.name));
            let last_s = after.and_then(|b| b.services.iter().find(|x| x.name == s.name));
            let rate = |f: &dyn Fn(&report::ServiceReport) -> u64| match (prev_s, last_s) {
                (Some(p), Some(l)) => l_minus(f(l), f(p)) as f64 / dt,
                _ => 0.0,
            };
            let version = |v: &canary_common::VersionStats, pps: f64, nps: f64| VersionStatus {
                packets: v.packets,
                bytes: v.bytes,
                new_flows: v.new_flows,
                reply_packets: v.reply_packets,
                reply_bytes: v.reply_bytes,
                packets_per_sec: pps,
                new_flows_per_sec: nps,
            };
            let stable_nps = rate(&|x| x.stable.new_flows);
            let canary_nps = rate(&|x| x.canary.new_flows);
            let observed = match (prev_s, last_s) {
                (Some(p), Some(l)) => {
                    let c = l_minus(l.canary.new_flows, p.canary.new_flows);
                    let t = c + l_minus(l.stable.new_flows, p.stable.new_flows);
                    (t > 0).then(|| c as f64 / t as f64)
                }
                _ => None,
            };
            let backends = s
                .backends
                .iter()
                .map(|b| {
                    let find = |snap: Option<&report::ServiceReport>| {
                        snap.and_then(|x| x.backends.iter().find(|y| y.addr == b.addr))
                            .map(|y| y.stats)
                    };
                    let (pps, nps) = match (find(prev_s), find(last_s)) {
                        (Some(p), Some(l)) => (
                            l_minus(l.packets, p.packets) as f64 / dt,
                            l_minus(l.new_flows, p.new_flows) as f64 / dt,
                        ),
                        _ => (0.0, 0.0),
                    };
                    BackendStatus {
                        addr: b.addr,
                        version: b.version,
                        packets: b.stats.packets,
                        bytes: b.stats.bytes,
                        new_flows: b.stats.new_flows,
                        reply_packets: b.stats.reply_packets,
                        packets_per_sec: pps,
                        new_flows_per_sec: nps,
                        healthy: cfg.health.as_ref().map(|_| match &self.fleet {
                            // In a fleet: the verdict the data plane applies.
                            Some(_) => !self.dp.is_unhealthy(&s.name, b.addr),
                            None => self
                                .health
                                .get(&(s.name.clone(), b.addr))
                                .map(|h| h.healthy)
                                .unwrap_or(true),
                        }),
                        health_detail: self.backend_health_detail(&s.name, b.addr),
                        draining: b.draining.then(|| self.drain_status(&s.name, b.addr, b.id)),
                    }
                })
                .collect();
            services.push(ServiceStatus {
                name: s.name.clone(),
                vip: cfg.vip,
                port: cfg.port,
                protocol: match cfg.protocol {
                    Protocol::Tcp => "tcp".into(),
                    Protocol::Udp => "udp".into(),
                },
                affinity: match cfg.affinity {
                    crate::config::Affinity::SourceIp => "source-ip".into(),
                    crate::config::Affinity::Flow => "flow".into(),
                },
                weight_percent: WeightBp::from_bp(s.weight_bp).percent(),
                weight_source: self.state.weight_source(&s.name),
                stable: version(&s.stable, rate(&|x| x.stable.packets), stable_nps),
                canary: version(&s.canary, rate(&|x| x.canary.packets), canary_nps),
                observed_canary_share: observed,
                observed_canary_share_total: s.observed_canary_share(),
                backends,
                signals: self.signals(&s.name),
                rollout: self.rollout_status(&s.name),
                rollbacks: self.state.rollbacks.get(&s.name).copied().unwrap_or(0),
                cohorts: cfg.cohorts_line(),
            });
        }
        let datapath = reason::NAMES
            .iter()
            .zip(now.datapath.iter())
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        Ok(Status {
            instance: self.instance.clone(),
            services,
            datapath,
            flow_table: self.flow_table_status(&now.datapath),
            fleet: self.fleet_status(),
            interfaces: self.dp.interface_status(),
            pins: self.dp.pin_status(),
        })
    }
}

/// Counter difference that tolerates a counter reset (a fresh id).
fn l_minus(a: u64, b: u64) -> u64 {
    a.saturating_sub(b)
}
