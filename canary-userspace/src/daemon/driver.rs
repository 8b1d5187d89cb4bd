//! The rollout driver: the engine's heartbeat (`tick`), the operator's
//! rollout verbs, and carrying out what the engine decides: step weights,
//! promotion, the rollback (state first, then one map write).

use super::*;

impl Daemon {
    /// Weight 0 in one map write, the rollout (if any) marked aborted, the
    /// reason logged and emitted as an event.
    pub(super) fn rollback_now(&mut self, service: &str, why: String, reset: bool) {
        // The decision first, durably: the rollout aborted and a run-time
        // weight of 0, so a crash before the map write still restarts with
        // the canary at 0.
        let source = rolled_back();
        let file_weight_bp = self.file_weight_bp(service);
        self.state
            .record_rollback(service, &why, &source, file_weight_bp);
        self.save_state();
        // Then the map. Should the whole-config apply fail (an interface
        // gone, say), weight 0 is written straight into the service entry,
        // and the full apply is retried every tick.
        if let Err(e) = self.set_weight(service, WeightBp::ZERO, &source) {
            error!(
                "rolling back {service}: {} (writing weight 0 directly, retrying)",
                e.message
            );
            if let Err(e) = self.dp.force_weight(service, WeightBp::ZERO) {
                error!("rolling back {service}: direct write failed too: {e:#}");
            }
            self.pending_rollbacks.insert(service.to_string());
        }
        error!("service {service}: ROLLED BACK: {why}");
        let mut message = format!("rolled back to canary weight 0: {why}");
        if reset {
            self.dp.reset_flows(service, VERSION_CANARY);
            // Counted: in a fleet the other hosts reset theirs when they
            // apply it.
            *self
                .state
                .canary_resets
                .entry(service.to_string())
                .or_default() += 1;
            self.save_state();
            message.push_str("; open canary connections are being reset (on_rollback: reset)");
        }
        self.events.push(service, EventKind::Rollback, message);
    }

    /// Cumulative counters of a service as the analysis reads them, judged
    /// connections only (see the data plane's `judge.rs`): attempts =
    /// judged new connections, failures = their backends' RSTs, ICMP port
    /// unreachables and unanswered handshakes; and the handshake histogram
    /// (judged SYNs only too).
    pub(super) fn cumulative(&self, service: &str) -> Option<WindowCounts> {
        let version = |v: u32| -> Option<VersionCounts> {
            let hs = self.dp.health_counters(service, v)?;
            let sig = self.dp.signals(service, v)?;
            let timeouts = self
                .timeouts
                .get(&(service.to_string(), v))
                .copied()
                .unwrap_or(0);
            Some(VersionCounts {
                attempts: sig.judged,
                failures: sig.resets + sig.unreachables + timeouts,
                handshake_us_log2: hs.handshake_us_log2,
                failing_clients: self.failing.distinct(service, v),
            })
        };
        Some(WindowCounts {
            stable: version(0)?,
            canary: version(1)?,
        })
    }

    /// What a rollback of `service` does to open canary connections: the
    /// running rollout's own `on_rollback` (kept from its start), else the
    /// config's plan's.
    pub(super) fn on_rollback(&self, service: &str) -> Option<OnRollback> {
        let frozen = self
            .state
            .rollouts
            .get(service)
            .filter(|r| r.active())
            .and_then(|r| r.on_rollback);
        frozen.or_else(|| {
            self.running
                .services
                .iter()
                .find(|s| s.name == service)
                .and_then(|s| s.rollout.as_ref())
                .map(|p| p.on_rollback)
        })
    }

    /// The engine's heartbeat (every `rollout::TICK` from the daemon's loop): expire
    /// unanswered handshakes, feed each running rollout its window, carry
    /// out what it decides, save the progress.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for service in std::mem::take(&mut self.pending_rollbacks) {
            let source = rolled_back();
            if let Err(e) = self.set_weight(&service, WeightBp::ZERO, &source) {
                error!("rolling back {service} still fails: {}", e.message);
                self.pending_rollbacks.insert(service);
            }
        }
        let dt = self.last_tick.map(|t| now - t);
        self.last_tick = Some(now);

        // The scan reads the in-flight table entry by entry: once a second is
        // plenty (a timeout is seconds long) and bounds its cost under a
        // SYN flood (a full table is 64k entries).
        let scan_due = self
            .last_expiry
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        let expired = if scan_due {
            self.last_expiry = Some(now);
            // Drains past their end, once a second too (`finish.rs`).
            self.expire_drains();
            self.expire_handshakes()
        } else {
            Vec::new()
        };
        // Every failure with its client: the timeouts found here and the
        // data plane's judged failures (drained every tick, so the ring
        // never fills).
        let mut failed = Vec::new();
        for (key, sid, v) in expired {
            if let Some(name) = self.dp.service_name(sid) {
                *self.timeouts.entry((name.to_string(), v)).or_default() += 1;
            }
            failed.push((sid, v, failing::client_of_flow(&key)));
        }
        for e in self.dp.drain_failures() {
            failed.push((e.service_id, e.version & 1, failing::client_of_event(&e)));
        }
        // Each service's name looked up once per tick, not per failure.
        let mut names: HashMap<u32, Option<&str>> = HashMap::new();
        for (sid, v, client) in failed {
            let name = *names
                .entry(sid)
                .or_insert_with(|| self.dp.service_name(sid));
            if let Some(name) = name {
                let step = self.step_began.get(name).copied();
                self.failing.note(name, v, client, step);
            }
        }

        let running: Vec<String> = self
            .state
            .rollouts
            .iter()
            .filter(|(_, r)| r.phase == Phase::Running)
            .map(|(n, _)| n.clone())
            .collect();
        if !self.runs_rollouts() {
            // In a fleet only the leader runs rollouts; the others apply
            // what it writes to etcd.
            return;
        }
        let mut changed = false;
        for name in running {
            let Some(delta) = self.window_this_tick(&name) else {
                continue;
            };
            let Some(dt) = dt else {
                continue;
            };
            let plan = self
                .running
                .services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.rollout.clone());
            let Some(plan) = plan else {
                self.rollback_now(
                    &name,
                    "the rollout plan was removed from the config".into(),
                    false,
                );
                continue;
            };
            let Some(mut r) = self.state.rollouts.get(&name).cloned() else {
                continue;
            };
            // The analysis and on_rollback the rollout started with, not
            // the config's now (a reload does not change a rollout under way).
            let plan = r.frozen_plan(&plan);
            let not_before = *self.step_began.entry(name.clone()).or_insert(now);
            // The metrics and the latency test, as one judgement.
            let external = {
                let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
                judge(&mut r, &plan, readings.get(&name), &delta, now, not_before)
            };
            let action = r.tick(&plan, &delta, dt, external.as_ref());
            self.state.rollouts.insert(name.clone(), r);
            changed = true;
            self.act(&name, action, plan.on_rollback == OnRollback::Reset);
        }
        if changed {
            self.save_state();
        }
    }

    /// A running rollout's counters since the previous tick: this host's
    /// alone, or in a fleet the sum of every host's (`fleet_window`). None
    /// on the first tick (it sets the baseline).
    fn window_this_tick(&mut self, name: &str) -> Option<WindowCounts> {
        if self.fleet.is_some() {
            return self.fleet_window(name);
        }
        let cur = self.cumulative(name)?;
        let prev = self.tick_prev.insert(name.to_string(), cur)?;
        Some(cur.since(&prev))
    }

    /// Removes the handshakes older than their service's timeout (default
    /// 3 s) and returns them as (service id, version).
    pub(super) fn expire_handshakes(&mut self) -> Vec<(canary_common::FlowKey, u32, u32)> {
        let timeouts: HashMap<u32, u64> = self
            .running
            .services
            .iter()
            .filter_map(|s| {
                let sid = self.dp.service_id(&s.name)?;
                // A rollout under way keeps the timeout it started with.
                let frozen = self
                    .state
                    .rollouts
                    .get(&s.name)
                    .filter(|r| r.active())
                    .and_then(|r| r.analysis.as_ref());
                let t = frozen
                    .or(s.rollout.as_ref().map(|r| &r.analysis))
                    .map(|a| a.handshake_timeout)
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
                Some((sid, t.as_nanos() as u64))
            })
            .collect();
        let default = DEFAULT_HANDSHAKE_TIMEOUT.as_nanos() as u64;
        self.dp.expire_handshakes(monotonic_ns(), |sid| {
            timeouts.get(&sid).copied().unwrap_or(default)
        })
    }

    pub(super) fn act(&mut self, service: &str, action: Action, reset: bool) {
        match action {
            Action::None => {}
            Action::SetWeight(bp, what) => {
                // The step's cohort weights (the rollout is saved in the
                // state before `act`) go in the same commit as the weight.
                let cohorts = self
                    .state
                    .rollouts
                    .get(service)
                    .and_then(|r| r.cohort_weights());
                let with = super::cohorts::step_note(cohorts.as_ref());
                if let Err(e) = self.set_weights(service, bp, cohorts, ROLLOUT) {
                    // The engine moved on but the data plane did not: a
                    // rollout that cannot apply its steps stops, safely.
                    let why = format!("{what}: the weight could not be applied: {}", e.message);
                    if let Some(r) = self.state.rollouts.get_mut(service) {
                        r.abort(why.clone());
                    }
                    self.rollback_now(service, why, reset);
                    return;
                }
                self.step_began.insert(service.to_string(), Instant::now());
                let msg = format!("{what}: canary weight {bp}{with}");
                info!("service {service}: {msg}");
                self.events.push(service, EventKind::Step, msg);
            }
            Action::Promoted(why) => {
                info!("service {service}: rollout promoted: {why}");
                self.events.push(service, EventKind::Promoted, why);
            }
            Action::Rollback(why) => self.rollback_now(service, why, reset),
            Action::Paused(why) => {
                // on_failure: pause: the weight stays where the step set it.
                let weight = self
                    .state
                    .rollouts
                    .get(service)
                    .map(|r| r.weight().to_string());
                let line = format!(
                    "rollout PAUSED on failure (on_failure: pause), canary weight stays at {}: {why}; \
                     `canaryctl rollout resume {service}` continues with a fresh window, \
                     `canaryctl rollout abort {service}` rolls back",
                    weight.unwrap_or_else(|| "?".into())
                );
                warn!("service {service}: {line}");
                self.events.push(service, EventKind::Rollout, line);
            }
        }
    }

    /// `canaryctl rollout start|pause|resume|abort`.
    /// `verb` is the API's path segment: an unknown service is answered
    /// before an unknown verb.
    pub fn rollout(&mut self, service: &str, verb: &str, who: &str) -> OpResult<Vec<String>> {
        let i = self.service_index(service)?;
        let verb: RolloutVerb = verb
            .parse()
            .map_err(|e| OpError::new(Refusal::BadRequest, format!("{e:#}")))?;
        let svc = self.running.services[i].clone();
        let current = self.state.rollouts.get(service).cloned();
        let line = match verb {
            RolloutVerb::Start => {
                self.fleet_guard("starting a rollout")?;
                let plan = svc.rollout.clone().ok_or_else(|| {
                    OpError::new(
                        Refusal::Conflict,
                        format!("service {service} has no rollout: plan in the config"),
                    )
                })?;
                if let Some(r) = current.as_ref().filter(|r| r.active()) {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!(
                            "a rollout of {service} is already {} at step {}/{}",
                            r.phase.name(),
                            r.step + 1,
                            r.planned_steps()
                        ),
                    ));
                }
                self.fleet_features_guard(&plan.features(), "this rollout plan")?;
                if svc.canary.is_empty() {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!(
                            "service {service}: the canary pool is empty: add one first \
                             (canaryctl backends add {service} canary ADDR)"
                        ),
                    ));
                }
                let canary_down = svc.canary.iter().all(|b| self.dp.is_unhealthy(service, *b));
                if canary_down {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!("service {service}: no healthy canary backend to roll out to"),
                    ));
                }
                let (r, action) = Rollout::start(&plan);
                self.state.rollouts.insert(service.to_string(), r);
                if let Some(cur) = self.cumulative(service) {
                    self.tick_prev.insert(service.to_string(), cur);
                }
                let line = match &plan.adaptive {
                    Some(ad) if plan.strategy == crate::config::Strategy::Adaptive => format!(
                        "service {service}: rollout started by {who}: adaptive, budget {:?} {}, \
                         {} judged steps then 100 %, {:?} per step, at most {:?}",
                        ad.budget,
                        "judged canary connections",
                        ad.levels(),
                        plan.interval,
                        ad.max_duration
                    ),
                    _ => format!(
                        "service {service}: rollout started by {who}: steps {:?} %, {:?} per step",
                        plan.steps, plan.interval
                    ),
                };
                info!("{line}");
                self.events.push(service, EventKind::Rollout, line.clone());
                self.act(service, action, false);
                line
            }
            RolloutVerb::Pause | RolloutVerb::Resume => {
                self.fleet_guard(&format!("{verb} of a rollout"))?;
                let mut r = current.ok_or_else(|| {
                    OpError::new(Refusal::Conflict, format!("no rollout of {service}"))
                })?;
                let done = if verb == RolloutVerb::Pause {
                    r.pause()
                } else {
                    r.resume()
                };
                if !done {
                    return Err(OpError::new(
                        Refusal::Conflict,
                        format!("the rollout of {service} is {}", r.phase.name()),
                    ));
                }
                self.state.rollouts.insert(service.to_string(), r);
                if verb == RolloutVerb::Resume {
                    // The window resumes from now: paused traffic does not
                    // count, and external readings must be newer than this.
                    // An adaptive plan's budget still counts what the
                    // canary got while paused (its next tick checks it).
                    let paused = if self.fleet.is_some() {
                        // The fleet's window is summed from every host's
                        // counters against the leader's baselines.
                        self.fleet_resume_window(service)
                    } else {
                        let cur = self.cumulative(service);
                        let paused = cur
                            .zip(self.tick_prev.get(service))
                            .map(|(cur, prev)| cur.since(prev));
                        if let Some(cur) = cur {
                            self.tick_prev.insert(service.to_string(), cur);
                        }
                        paused
                    };
                    if let (Some(d), Some(r)) = (paused, self.state.rollouts.get_mut(service)) {
                        r.note_exposure(&d);
                    }
                    self.step_began.insert(service.to_string(), Instant::now());
                }
                self.save_state();
                let line = format!("service {service}: rollout {verb}d by {who}");
                info!("{line}");
                self.events.push(service, EventKind::Rollout, line.clone());
                line
            }
            RolloutVerb::Abort => {
                let r = current.filter(|r| r.active()).ok_or_else(|| {
                    OpError::new(
                        Refusal::Conflict,
                        format!("no rollout of {service} is running"),
                    )
                })?;
                let why = format!(
                    "aborted by {who} at step {}/{}",
                    r.step + 1,
                    r.planned_steps()
                );
                self.roll_back_by_policy(service, why.clone());
                format!("service {service}: rollout {why}; canary weight 0")
            }
            RolloutVerb::Finish => return self.finish(service, who),
        };
        // Live either way; a state that could not be saved is said.
        Ok(std::iter::once(line).chain(self.unsaved_note()).collect())
    }
}
