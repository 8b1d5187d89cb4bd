//! The rollout engine of one service: walks the plan's steps, feeds each
//! step's window of counters to the analysis, and says what to do (raise the
//! weight, promote, roll back). It holds no handles: the daemon gives it the
//! counter deltas and carries out its actions, and the whole `Rollout`
//! is saved in the state file after every tick, so a restart resumes the
//! same step with the progress it had.
//!
//! When a step decides:
//! - at any tick, a sequential test that crossed its bound fails the step
//!   at once (valid under continuous monitoring, see `analysis.rs`);
//! - once the step's interval has passed and the canary has the sample the
//!   analysis asks for, the step's final verdict is taken, once: pass (next
//!   step, or promoted after the last) or fail (roll back). Until the sample
//!   is there the step waits, showing its progress.

use crate::config::OnFailure;
use crate::config::{AnalysisConfig, OnRollback, RolloutConfig, Strategy, ADAPTIVE_WARMUP};
use crate::rollout::adaptive::{alpha_share, grouped, pick, prob, AdaptiveRun, PickInput};
use crate::rollout::analysis::{
    analyze_detailed, recent_guard, Analysis, Verdict, VersionCounts, WindowCounts,
};
use crate::rollout::external::Judgement;
use canary_common::weight::WeightBp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    /// Every step passed: the canary carries the last step's weight.
    Promoted,
    /// Rolled back (failed analysis, no healthy canary, or an operator).
    Aborted,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub phase: Phase,
    /// The plan as it was when the rollout started (a config edit does not
    /// change a rollout under way).
    pub steps: Vec<f64>,
    pub interval_ms: u64,
    /// Index into `steps`.
    pub step: usize,
    /// Observation time spent in this step (paused time does not count).
    pub step_elapsed_ms: u64,
    /// Counters of this step's window.
    pub window: WindowCounts,
    /// The last analysis of the window.
    pub last: Option<Analysis>,
    /// Why it was aborted or promoted.
    pub reason: Option<String>,
    /// One line per decided step.
    pub history: Vec<String>,
    /// The external metric's last judgement, when the plan has one.
    #[serde(default)]
    pub external: Option<String>,
    /// The last ticks' deltas (about 10 s): the recent-window guard's data.
    /// Not saved: after a restart it refills within seconds.
    #[serde(skip)]
    recent: VecDeque<WindowCounts>,
    /// Guard looks spent in this step (capped, see `guard_looks_allowed`).
    #[serde(default)]
    guard_looks: u64,
    /// This step's final tests passed (taken once); it waits only for the
    /// external metric now.
    #[serde(default)]
    pub final_passed: bool,
    /// The analysis limits and the rollback policy as they were when the
    /// rollout started: like the steps, a config edit does not change them
    /// for a rollout under way. None in state files written before they
    /// were kept: the current config's are used then (`frozen_plan`).
    #[serde(default)]
    pub analysis: Option<AnalysisConfig>,
    #[serde(default)]
    pub on_rollback: Option<OnRollback>,
    /// An adaptive plan's state (None: fixed plan, or an older state file).
    #[serde(default)]
    pub adaptive: Option<AdaptiveRun>,
    /// The plan's cohorts as they were at the start: (name, weight in
    /// percent per step). Their sources follow the config, as pools do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<(String, Vec<f64>)>,
    /// The plan's failure policy as it was at the start (None in older
    /// state files: rollback).
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Paused by a failed step (`on_failure: pause`): a resume starts the
    /// step's window afresh.
    #[serde(default)]
    pub paused_on_failure: bool,
    /// The latency tests of the current step (`analysis.latency`).
    #[serde(default)]
    pub latency: Option<crate::rollout::analysis::latency::LatencyState>,
    /// The external metrics as last judged (for status).
    #[serde(default)]
    pub metrics: Vec<crate::control::api::MetricStatus>,
}

/// The engine's tick: canaryd calls `Daemon::tick` (and so every running
/// rollout's `tick`) at this interval; the guard's look budget is sized by it.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);
const TICK_MS: u64 = TICK.as_millis() as u64;
/// Deltas kept for the recent-window guard: 40 ticks (10 s).
const RECENT_TICKS: usize = 40;

/// What the daemon must do after a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    None,
    /// Set the canary weight; the message is for the log.
    SetWeight(WeightBp, String),
    /// The last step passed; the weight stays.
    Promoted(String),
    /// Canary weight 0 now.
    Rollback(String),
    /// A step failed under `on_failure: pause`: the weight stays, the
    /// rollout is paused.
    Paused(String),
}

/// A plan step's weight (validated with the config, so in range).
fn bp(percent: f64) -> WeightBp {
    WeightBp::from_percent(percent).unwrap_or(WeightBp::ZERO)
}

/// `Some(why)` when the canary's failures in the step come from fewer
/// distinct clients than the plan needs to fail a step.
fn too_few_failing_clients(
    canary: &VersionCounts,
    limits: &crate::rollout::analysis::Limits,
) -> Option<String> {
    let (have, need) = (canary.failing_clients, limits.min_failing_clients);
    (need > 1 && have < need).then(|| {
        format!("the canary's failures come from {have} distinct client(s), {need} are needed to fail a step")
    })
}

/// Did one of the sequential tests cross its bound?
fn sprt_crossed(a: &Analysis) -> bool {
    [a.ratio_sprt_llr, a.ceiling_sprt_llr]
        .iter()
        .flatten()
        .any(|llr| *llr >= a.sprt_threshold)
}

impl Rollout {
    /// A new rollout at its first step.
    pub fn start(plan: &RolloutConfig) -> (Rollout, Action) {
        let adaptive = match (plan.strategy, &plan.adaptive) {
            (Strategy::Adaptive, Some(a)) => Some(AdaptiveRun::new(a.clone())),
            _ => None,
        };
        let mut r = Rollout {
            phase: Phase::Running,
            // Adaptive: the weights chosen so far, 0 during the warm-up.
            steps: if adaptive.is_some() {
                vec![0.0]
            } else {
                plan.steps.clone()
            },
            interval_ms: plan.interval.as_millis() as u64,
            step: 0,
            step_elapsed_ms: 0,
            window: WindowCounts::default(),
            last: None,
            reason: None,
            history: Vec::new(),
            external: None,
            recent: VecDeque::new(),
            guard_looks: 0,
            final_passed: false,
            analysis: Some(plan.analysis.clone()),
            on_rollback: Some(plan.on_rollback),
            on_failure: Some(plan.on_failure),
            paused_on_failure: false,
            latency: None,
            metrics: Vec::new(),
            adaptive,
            cohorts: plan
                .cohorts
                .iter()
                .map(|c| (c.name.clone(), c.steps.clone()))
                .collect(),
        };
        if let Some(ad) = r.adaptive.as_mut() {
            ad.why = format!(
                "rollout: measuring the connection rate at canary weight 0 ({} s)",
                ADAPTIVE_WARMUP.as_secs()
            );
            let why = ad.why.clone();
            return (r, Action::SetWeight(WeightBp::ZERO, why));
        }
        let action = Action::SetWeight(
            bp(plan.steps[0]),
            format!("rollout step 1/{} ({}%)", plan.steps.len(), plan.steps[0]),
        );
        (r, action)
    }

    /// The plan this rollout runs by: the steps, interval, analysis and
    /// `on_rollback` it started with; `current` (the config's plan now)
    /// only fills in what an older state file did not keep.
    pub fn frozen_plan(&self, current: &RolloutConfig) -> RolloutConfig {
        RolloutConfig {
            steps: self.steps.clone(),
            interval: self.interval(),
            analysis: self
                .analysis
                .clone()
                .unwrap_or_else(|| current.analysis.clone()),
            on_rollback: self.on_rollback.unwrap_or(current.on_rollback),
            strategy: if self.adaptive.is_some() {
                Strategy::Adaptive
            } else {
                Strategy::Fixed
            },
            adaptive: self.adaptive.as_ref().map(|a| a.plan.clone()),
            ..current.clone()
        }
    }

    /// The invariants the engine indexes on, for a rollout read back from
    /// the state file: `field: problem` (relative to this rollout).
    pub fn check(&self) -> Result<(), String> {
        let n = self.steps.len();
        if n == 0 {
            return Err("steps: the plan is empty".to_string());
        }
        for (i, p) in self.steps.iter().enumerate() {
            if let Err(e) = WeightBp::from_percent(*p) {
                return Err(format!("steps[{i}]: {e}"));
            }
        }
        if self.step >= n {
            return Err(format!(
                "step: {} is beyond the plan's {n} steps",
                self.step
            ));
        }
        if let Some(a) = &self.adaptive {
            let l = a.levels();
            if l == 0 || n > l + 1 {
                return Err(format!(
                    "steps: {n} chosen, the adaptive plan has {}",
                    l + 1
                ));
            }
            if self.steps.windows(2).any(|w| w[1] <= w[0]) {
                return Err("steps: the chosen weights do not rise".to_string());
            }
            if a.measuring && self.steps != [0.0] {
                return Err("adaptive.measuring: steps chosen during the warm-up".to_string());
            }
            if a.level as usize > l {
                return Err(format!("adaptive.level: {} is beyond {l}", a.level));
            }
            // Each passed judged step is a level reached: the step index.
            if !a.measuring && a.level as usize != self.step {
                return Err(format!(
                    "adaptive.level: {} does not match step {}",
                    a.level,
                    self.step + 1
                ));
            }
        }
        Ok(())
    }

    pub fn weight(&self) -> WeightBp {
        bp(self.steps[self.step])
    }

    /// The cohorts' weights at this step, by name, in basis points (None:
    /// a plan without cohorts; a cohort with no weight for the step, from a
    /// hand-edited state file, gets 0).
    pub fn cohort_weights(&self) -> Option<std::collections::BTreeMap<String, u32>> {
        if self.cohorts.is_empty() {
            return None;
        }
        Some(
            self.cohorts
                .iter()
                .map(|(name, steps)| {
                    let w = steps.get(self.step).map_or(WeightBp::ZERO, |p| bp(*p));
                    (name.clone(), w.bp())
                })
                .collect(),
        )
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Steps of the plan: the fixed plan's, or an adaptive plan's levels
    /// plus the 100 % step.
    pub fn planned_steps(&self) -> usize {
        match &self.adaptive {
            Some(a) => a.levels() + 1,
            None => self.steps.len(),
        }
    }

    /// Is the current step the plan's last (it promotes on pass)?
    fn is_last_step(&self) -> bool {
        match &self.adaptive {
            Some(_) => self.steps[self.step] >= 100.0,
            None => self.step + 1 == self.steps.len(),
        }
    }

    /// The current step in messages: `step 2/4 (5.34%)`.
    fn here(&self) -> String {
        format!(
            "step {}/{} ({}%)",
            self.step + 1,
            self.planned_steps(),
            self.steps[self.step]
        )
    }

    /// Why the current step has its weight (adaptive plans).
    pub fn why(&self) -> Option<&str> {
        self.adaptive.as_ref().map(|a| a.why.as_str())
    }

    /// Counts exposure while paused (canary traffic still flows then), so an
    /// adaptive plan's budget sees it; fixed plans ignore it.
    pub fn note_exposure(&mut self, delta: &WindowCounts) {
        if let Some(a) = self.adaptive.as_mut() {
            a.total.add(delta);
        }
    }

    /// A new step's window, guard and verdict state.
    fn begin_step(&mut self) {
        self.step_elapsed_ms = 0;
        self.window = WindowCounts::default();
        self.last = None;
        // The guard looks at this step's traffic only.
        self.recent.clear();
        self.guard_looks = 0;
        self.final_passed = false;
    }

    /// Adaptive: picks step `self.step + 1`'s weight (1-based `j`) from the
    /// window just ended, pushes it and says why; Rollback when no weight
    /// fits the budget.
    fn next_adaptive(&mut self, plan: &RolloutConfig) -> Action {
        let elapsed = (self.step_elapsed_ms as f64 / 1000.0).max(1e-3);
        let rate = (self.window.stable.attempts + self.window.canary.attempts) as f64 / elapsed;
        let prev_bp = bp(*self.steps.last().unwrap_or(&0.0)).bp();
        let ad = self.adaptive.as_ref().expect("adaptive");
        let l = ad.levels();
        let level = ad.level as usize;
        let exposed = ad.exposed();
        if level >= l {
            // Every level reached: the 100 % step.
            let a = self
                .analysis
                .clone()
                .unwrap_or_else(|| plan.analysis.clone());
            let who = match a.max_canary_vs_stable_ratio {
                Some(r) => format!("a canary at {r}x stable"),
                None => "a canary at twice the error ceiling".to_string(),
            };
            let why = format!(
                "step {}/{}: 100% — level {l} reached with {} of {} connections: {who} would have \
                 passed all {l} judged step(s) with probability ≤ {}",
                l + 1,
                l + 1,
                grouped(exposed),
                grouped(ad.plan.budget[l - 1]),
                prob((1.0 - a.power).powi(l as i32))
            );
            return self.push_adaptive(WeightBp::FULL, rate, 0, why);
        }
        let limits = self.step_limits(plan, level + 1);
        let input = PickInput {
            plan: &ad.plan,
            limits: &limits,
            interval: self.interval(),
            step: level + 1,
            prev_bp,
            rate,
            stable: (ad.total.stable.failures, ad.total.stable.attempts),
            exposed,
        };
        match pick(&input) {
            Ok(p) => self.push_adaptive(p.weight, rate, p.need, p.why),
            Err(why) => self.stop_at_budget(why),
        }
    }

    fn push_adaptive(&mut self, w: WeightBp, rate: f64, need: u64, why: String) -> Action {
        let a = self.adaptive.as_mut().expect("adaptive");
        if a.measuring {
            a.measuring = false;
            self.steps.clear();
        }
        a.rate = rate;
        a.need = need;
        a.why = why.clone();
        self.steps.push(w.percent());
        self.step = self.steps.len() - 1;
        self.begin_step();
        Action::SetWeight(w, why)
    }

    /// The analysis limits of the 1-based step `j`: an adaptive plan's
    /// front-loaded alpha share, or the even split of a fixed one.
    fn step_limits(&self, plan: &RolloutConfig, j: usize) -> crate::rollout::analysis::Limits {
        let frozen = self.frozen_plan(plan);
        let mut limits = frozen.limits();
        limits.steps = self.planned_steps() as u32;
        if let Some(ad) = &self.adaptive {
            let a = &frozen.analysis;
            let last_tests = a.max_error_ratio.is_some();
            limits.alpha_step = Some(alpha_share(
                a.false_alarm_rate,
                a.power,
                ad.levels(),
                last_tests,
                j,
            ));
        }
        limits
    }

    /// Adaptive, at a tick that decided nothing: the budget of the level
    /// not yet reached, and `max_duration`.
    fn adaptive_limits_hit(&self) -> Option<String> {
        let a = self.adaptive.as_ref()?;
        let here = self.here();
        if let Some(cap) = a.cap() {
            if a.exposed() >= cap {
                return Some(format!(
                    "{here} rolled back: the budget of level {} ({} canary connections) was spent \
                     before it was reached ({} exposed)",
                    a.level + 1,
                    grouped(cap),
                    grouped(a.exposed())
                ));
            }
        }
        let max = a.plan.max_duration.as_millis() as u64;
        if a.elapsed_ms > max {
            return Some(format!(
                "{here} rolled back: the rollout ran past adaptive.max_duration ({:?})",
                a.plan.max_duration
            ));
        }
        None
    }

    /// Looks the recent-window guard may take in one step: four times the
    /// step's interval in ticks (at least 8). Its alpha is split over them.
    fn guard_looks_allowed(&self) -> u64 {
        (4 * self.interval_ms / TICK_MS).max(8)
    }

    /// The guard over every suffix of the recent ticks (the last 250 ms,
    /// the last 500 ms, ... the last 10 s): a burst of failures is seen at
    /// whatever rate the canary's connections arrive. The look's alpha is
    /// split over the suffixes.
    fn guard(&self, limits: &crate::rollout::analysis::Limits, alpha_look: f64) -> Option<String> {
        let alpha_suffix = alpha_look / RECENT_TICKS as f64;
        let mut w = WindowCounts::default();
        for d in self.recent.iter().rev() {
            w.add(d);
            if let Some(why) = recent_guard(&w, limits, alpha_suffix) {
                return Some(why);
            }
        }
        None
    }

    /// Counts `delta` (this tick's counters) and `dt` of observation, and
    /// decides, by the limits the rollout started with (`plan`, the
    /// config's current plan, only stands in for ones an old state file did
    /// not keep). `external` is the external metric's judgement, if the plan
    /// has one: a failure rolls back at once, and a step passes only while
    /// it is healthy.
    pub fn tick(
        &mut self,
        plan: &RolloutConfig,
        delta: &WindowCounts,
        dt: Duration,
        external: Option<&Judgement>,
    ) -> Action {
        if self.phase != Phase::Running {
            return Action::None;
        }
        self.window.add(delta);
        self.step_elapsed_ms += dt.as_millis() as u64;
        if let Some(a) = self.adaptive.as_mut() {
            a.total.add(delta);
            a.elapsed_ms += dt.as_millis() as u64;
            if a.measuring {
                return self.warm_up(plan, external);
            }
        }
        let mut limits = self.step_limits(plan, self.step + 1);
        if self.steps[self.step] >= 100.0 {
            // A 100 % step has no stable traffic to compare with by design,
            // only the stragglers of the previous step: enough of them
            // switched the ratio checks on with a sample need of millions,
            // and the step never ended. The ceiling still applies.
            limits.max_canary_vs_stable_ratio = None;
        }
        let a = analyze_detailed(&self.window, &limits);
        let verdict = a.verdict.clone();
        let crossed = sprt_crossed(&a);
        self.recent.push_back(*delta);
        while self.recent.len() > RECENT_TICKS {
            self.recent.pop_front();
        }
        let mut guard = None;
        if self.guard_looks < self.guard_looks_allowed() && a.checks > 0 {
            self.guard_looks += 1;
            let alpha_look = a.alpha_per_check / self.guard_looks_allowed() as f64;
            guard = self.guard(&limits, alpha_look);
        }
        // One client cannot fail a step: its failures (forged or real)
        // hold the step until enough distinct clients fail.
        let held = too_few_failing_clients(&self.window.canary, &limits);
        let mut a = a;
        if let Some(h) = &held {
            if guard.is_some() || matches!(verdict, Verdict::Fail { .. }) {
                a.notes.push(format!("held, not failed: {h}"));
            }
        }
        self.last = Some(a);
        let n = self.planned_steps();
        let here = self.here();
        if let Some(why) = guard.filter(|_| held.is_none()) {
            let why = format!("{here} failed: {why}");
            return self.fail(why);
        }
        let decide_now = self.step_elapsed_ms >= self.interval_ms;
        let mut external_ok = true;
        match external {
            Some(Judgement::Fail(why)) => {
                self.external = Some(why.clone());
                let why = format!("{here} failed: {why}");
                return self.fail(why);
            }
            Some(Judgement::Unknown(why)) => {
                self.external = Some(format!("waiting: {why}"));
                external_ok = false;
            }
            Some(Judgement::Healthy(what)) => self.external = Some(what.clone()),
            None => {}
        }
        // The final tests are taken once per step: the first tick at which
        // the interval is over and the sample is there. After a pass the
        // step only waits (for the external metric), and only the
        // sequential tests and the guard can still fail it.
        let passes = match verdict {
            // Failing but held (too few distinct clients): neither fails
            // nor passes.
            Verdict::Fail { .. } if held.is_some() => false,
            Verdict::Fail { reason } if crossed || (decide_now && !self.final_passed) => {
                let why = format!("{here} failed: {reason}");
                return self.fail(why);
            }
            _ if self.final_passed => true,
            Verdict::Pass if decide_now => {
                self.final_passed = true;
                true
            }
            _ => false,
        };
        match passes {
            true if external_ok => {
                let c = &self.window.canary;
                let s = &self.window.stable;
                let mut line = format!(
                    "{here} passed after {:.1} s: canary {}/{} failed, stable {}/{} failed",
                    self.step_elapsed_ms as f64 / 1000.0,
                    c.failures,
                    c.attempts,
                    s.failures,
                    s.attempts
                );
                let last = self.is_last_step();
                if let Some(a) = self.adaptive.as_mut().filter(|_| !last) {
                    a.level += 1;
                    a.reached_at.push(a.exposed());
                    line.push_str(&format!(
                        "; level {} reached: {} of {} exposed",
                        a.level,
                        grouped(a.exposed()),
                        grouped(
                            a.plan
                                .budget
                                .get(a.level as usize - 1)
                                .copied()
                                .unwrap_or(0)
                        )
                    ));
                }
                self.history.push(line);
                if last {
                    self.phase = Phase::Promoted;
                    let why = format!("all {n} steps passed; canary at {}%", self.steps[self.step]);
                    self.reason = Some(why.clone());
                    return Action::Promoted(why);
                }
                if self.adaptive.is_some() {
                    return self.next_adaptive(plan);
                }
                self.step += 1;
                self.begin_step();
                Action::SetWeight(
                    self.weight(),
                    format!(
                        "rollout step {}/{n} ({}%)",
                        self.step + 1,
                        self.steps[self.step]
                    ),
                )
            }
            _ => self.within_adaptive_limits(),
        }
    }

    /// The warm-up at weight 0 before an adaptive plan's first step: at
    /// least `ADAPTIVE_WARMUP`, 100 judged connections and a stable error
    /// rate known to ±10 % (or below the sizing floor; at most one
    /// interval), then step 1 is sized on the rate and error rate seen. An external metric's failure still fails.
    fn warm_up(&mut self, plan: &RolloutConfig, external: Option<&Judgement>) -> Action {
        if let Some(Judgement::Fail(why)) = external {
            self.external = Some(why.clone());
            return self.fail(format!("warm-up failed: {why}"));
        }
        let seen = self.window.stable.attempts + self.window.canary.attempts;
        // p̂0 sizes every step: wait for 100 stable failures (±10 %), unless
        // its upper bound is below the sizing floor anyway; at most an interval.
        let (x, n) = (
            self.window.stable.failures as f64,
            self.window.stable.attempts.max(1) as f64,
        );
        let p0_known = x >= 100.0
            || (x + 2.0 * (x + 1.0).sqrt()) / n < crate::rollout::analysis::P0_FLOOR
            || self.step_elapsed_ms >= self.interval_ms;
        if self.step_elapsed_ms >= ADAPTIVE_WARMUP.as_millis() as u64 && seen >= 100 && p0_known {
            return self.next_adaptive(plan);
        }
        self.within_adaptive_limits()
    }

    /// A tick that decided nothing: an adaptive plan past its budget or
    /// its longest duration rolls back.
    fn within_adaptive_limits(&mut self) -> Action {
        match self.adaptive_limits_hit() {
            Some(why) => self.stop_at_budget(why),
            None => Action::None,
        }
    }

    /// An adaptive plan's risk budget or longest duration is spent, or no
    /// weight fits what is left: always a rollback, whatever `on_failure`
    /// says, since pausing would keep exposing clients past the budget.
    fn stop_at_budget(&mut self, why: String) -> Action {
        self.abort(why.clone());
        Action::Rollback(why)
    }

    /// A step failed (`why` names the step and the signal): what the plan's
    /// failure policy does with it.
    fn fail(&mut self, why: String) -> Action {
        if self.on_failure == Some(OnFailure::Pause) {
            // The weight stays; `resume` continues with a fresh window.
            self.phase = Phase::Paused;
            self.paused_on_failure = true;
            self.history.push(format!("paused: {why}"));
            self.reason = Some(why.clone());
            return Action::Paused(why);
        }
        self.abort(why.clone());
        Action::Rollback(why)
    }

    /// Marks the rollout aborted (the caller sets the weight to 0).
    pub fn abort(&mut self, why: String) {
        self.phase = Phase::Aborted;
        self.history.push(format!("aborted: {why}"));
        self.reason = Some(why);
    }

    pub fn pause(&mut self) -> bool {
        if self.phase == Phase::Running {
            self.phase = Phase::Paused;
            return true;
        }
        false
    }

    /// Continues a paused step. Its final tests are taken again on the data
    /// that follows (a pause is often an operator's doubt).
    pub fn resume(&mut self) -> bool {
        if self.phase == Phase::Paused {
            self.phase = Phase::Running;
            self.final_passed = false;
            if std::mem::take(&mut self.paused_on_failure) {
                // A failed step is judged again on new data only: its old
                // counts would fail it again at once.
                self.begin_step();
                self.latency = None;
                self.external = None;
                self.reason = None;
                self.history.push(format!(
                    "step {}/{} resumed with a fresh window",
                    self.step + 1,
                    self.planned_steps()
                ));
            }
            return true;
        }
        false
    }

    /// Active: running or paused (a new rollout may not start over it).
    pub fn active(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AnalysisConfig, OnRollback};

    impl Rollout {
        fn tick_(&mut self, p: &RolloutConfig, d: &WindowCounts, dt: Duration) -> Action {
            self.tick(p, d, dt, None)
        }
    }

    #[test]
    fn the_external_metric_fails_at_once_and_holds_a_step_while_unknown() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p);
        let sec = Duration::from_secs(1);
        let good = counts((5000, 0), (2000, 0));
        let wait = Judgement::Unknown("Prometheus down".into());
        for _ in 0..3 {
            assert_eq!(r.tick(&p, &good, sec, Some(&wait)), Action::None);
        }
        assert_eq!(r.step, 0, "no pass without an external value");
        assert!(
            r.final_passed,
            "the final tests were taken once, and passed"
        );
        // While it waits, a window the final test would now fail does not
        // fail it (that test is not taken again); the SPRT still watches.
        let noisy = counts((5000, 0), (100, 12));
        assert_eq!(r.tick(&p, &noisy, sec, Some(&wait)), Action::None);
        let ok = Judgement::Healthy("canary 0.01".into());
        assert!(matches!(
            r.tick(&p, &good, sec, Some(&ok)),
            Action::SetWeight(w, _) if w.bp() == 5000
        ));
        let bad = Judgement::Fail("external metric: canary 0.3 > max_value 0.05".into());
        let Action::Rollback(why) = r.tick(&p, &good, Duration::from_millis(1), Some(&bad)) else {
            panic!("no rollback")
        };
        assert!(
            why.contains("step 2/3 (50%) failed: external metric"),
            "{why}"
        );
    }

    fn plan() -> RolloutConfig {
        RolloutConfig::fixed_for_test(
            vec![10.0, 50.0, 100.0],
            Duration::from_secs(2),
            AnalysisConfig {
                max_error_ratio: Some(0.05),
                min_canary_connections: 50,
                ..Default::default()
            },
        )
    }

    #[test]
    fn check_names_what_the_engine_would_index_out_of_bounds() {
        let (mut r, _) = Rollout::start(&plan());
        assert_eq!(r.check(), Ok(()));
        r.step = 2;
        assert_eq!(r.check(), Ok(()));
        r.step = 7;
        assert_eq!(
            r.check(),
            Err("step: 7 is beyond the plan's 3 steps".to_string())
        );
        r.step = 0;
        r.steps[1] = 150.0;
        assert!(r.check().unwrap_err().starts_with("steps[1]: "));
        r.steps.clear();
        assert_eq!(r.check(), Err("steps: the plan is empty".to_string()));
    }

    fn counts(stable: (u64, u64), canary: (u64, u64)) -> WindowCounts {
        WindowCounts {
            stable: VersionCounts {
                attempts: stable.0,
                failures: stable.1,
                failing_clients: stable.1,
                ..Default::default()
            },
            canary: VersionCounts {
                attempts: canary.0,
                failures: canary.1,
                failing_clients: canary.1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn healthy_canary_walks_every_step_then_promotes() {
        let p = plan();
        let (mut r, a) = Rollout::start(&p);
        assert_eq!(
            a,
            Action::SetWeight(WeightBp::from_bp(1000), "rollout step 1/3 (10%)".into())
        );
        let sec = Duration::from_secs(1);
        let mut weights = vec![];
        for _ in 0..100 {
            match r.tick_(&p, &counts((900, 0), (400, 0)), sec) {
                Action::SetWeight(w, _) => weights.push(w.bp()),
                Action::Promoted(_) => break,
                Action::Rollback(why) | Action::Paused(why) => panic!("{why}"),
                Action::None => {}
            }
        }
        assert_eq!(weights, vec![5000, 10_000]);
        assert_eq!(r.phase, Phase::Promoted);
        assert_eq!(r.history.len(), 3, "{:?}", r.history);
    }

    #[test]
    fn a_step_waits_for_its_interval_and_its_sample() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p);
        let sec = Duration::from_secs(1);
        // Plenty of sample, but the interval (2 s) has not passed.
        assert_eq!(
            r.tick_(&p, &counts((5000, 0), (2000, 0)), sec),
            Action::None
        );
        let need = r.last.as_ref().unwrap().required_canary_connections;
        assert!((50..2000).contains(&need), "{need}");
        // Interval passed, sample there: next step.
        assert!(matches!(
            r.tick_(&p, &counts((0, 0), (0, 0)), sec),
            Action::SetWeight(w, _) if w.bp() == 5000
        ));
        // Interval passes with too few canary connections: the step waits.
        for _ in 0..5 {
            assert_eq!(r.tick_(&p, &counts((10, 0), (5, 0)), sec), Action::None);
        }
        let last = r.last.as_ref().unwrap();
        assert!(
            matches!(last.verdict, Verdict::NeedMore { have: 25, .. }),
            "{last:?}"
        );
        assert_eq!(r.step, 1);
    }

    /// `on_failure: pause`: a failed step keeps its weight and pauses;
    /// `resume` judges the step again on new data only (the old counts
    /// would fail it at once), and a healthy canary then walks on.
    #[test]
    fn on_failure_pause_keeps_the_weight_and_resume_starts_a_fresh_window() {
        let mut p = plan();
        p.on_failure = OnFailure::Pause;
        let (mut r, _) = Rollout::start(&p);
        let a = r.tick_(&p, &counts((1000, 1), (100, 60)), TICK);
        let Action::Paused(why) = a else {
            panic!("{a:?}")
        };
        assert!(why.contains("step 1/3 (10%) failed"), "{why}");
        assert_eq!(r.phase, Phase::Paused);
        assert_eq!(r.weight().bp(), 1000, "the weight stays");
        assert_eq!(r.reason.as_deref(), Some(why.as_str()));
        assert!(r.history.last().unwrap().starts_with("paused: "));
        // Paused: nothing happens, whatever the traffic.
        assert_eq!(
            r.tick_(&p, &counts((1000, 1), (100, 60)), TICK),
            Action::None
        );
        assert!(r.resume());
        assert_eq!(r.phase, Phase::Running);
        assert_eq!(r.window, WindowCounts::default(), "a fresh window");
        assert_eq!((r.step, r.step_elapsed_ms, r.reason.clone()), (0, 0, None));
        // Healthy data after the resume: no instant failure, the step passes.
        let sec = Duration::from_secs(1);
        assert_eq!(r.tick_(&p, &counts((900, 0), (400, 0)), sec), Action::None);
        assert!(matches!(
            r.tick_(&p, &counts((900, 0), (400, 0)), sec),
            Action::SetWeight(w, _) if w.bp() == 5000
        ));
        // The default stays rollback, and an older state file (no
        // on_failure kept) rolls back too.
        let (mut d, _) = Rollout::start(&plan());
        d.on_failure = None;
        assert!(matches!(
            d.tick_(&plan(), &counts((1000, 1), (100, 60)), TICK),
            Action::Rollback(_)
        ));
    }

    #[test]
    fn a_clear_failure_rolls_back_before_the_interval() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p);
        let a = r.tick_(&p, &counts((1000, 1), (100, 60)), TICK);
        let Action::Rollback(why) = a else {
            panic!("{a:?}")
        };
        assert!(why.contains("step 1/3 (10%) failed"), "{why}");
        assert!(why.contains("60/100"), "{why}");
        assert_eq!(r.phase, Phase::Aborted);
        // Nothing happens after an abort.
        assert_eq!(
            r.tick_(&p, &counts((1, 0), (1, 0)), Duration::from_secs(9)),
            Action::None
        );
    }

    /// 60 failures of 100 from two clients only: held (neither failed nor
    /// passed), with the reason in the analysis' notes; once a third client
    /// fails, the step fails.
    #[test]
    fn failures_of_too_few_distinct_clients_hold_the_step() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p);
        let mut two_clients = counts((1000, 1), (100, 60));
        two_clients.canary.failing_clients = 2;
        for _ in 0..20 {
            let a = r.tick_(&p, &two_clients, Duration::from_millis(250));
            assert_eq!(a, Action::None, "held, not rolled back");
            two_clients.canary.failing_clients = 0; // no new client since
        }
        assert_eq!(r.phase, Phase::Running);
        assert_eq!(r.step, 0, "not passed either");
        let notes = &r.last.as_ref().unwrap().notes;
        assert!(
            notes
                .iter()
                .any(|n| n.contains("2 distinct client(s), 3 are needed")),
            "{notes:?}"
        );
        let mut third = counts((0, 0), (1, 1));
        third.canary.failing_clients = 1;
        let a = r.tick_(&p, &third, TICK);
        assert!(matches!(a, Action::Rollback(_)), "{a:?}");
    }

    #[test]
    fn a_fault_late_in_a_step_is_caught_by_the_recent_window() {
        let mut p = plan();
        p.interval = Duration::from_secs(60);
        let (mut r, _) = Rollout::start(&p);
        let tick = TICK;
        // 40 s of a healthy canary: thousands of successes in the window.
        for _ in 0..160 {
            assert_eq!(r.tick_(&p, &counts((100, 0), (25, 0)), tick), Action::None);
        }
        // Then every canary connection fails, at a trickle (timeouts slow the
        // clients): the whole-step SPRT would need hundreds of failures.
        let mut ticks = 0;
        loop {
            ticks += 1;
            match r.tick_(&p, &counts((20, 0), (1, 1)), tick) {
                Action::Rollback(why) => {
                    assert!(why.contains("last seconds"), "{why}");
                    break;
                }
                Action::None => assert!(ticks < 40, "not caught within 10 s"),
                other => panic!("{other:?}"),
            }
        }
        assert!(ticks <= 10, "caught after {ticks} ticks");
    }

    /// A config edit under way (here: a far stricter `max_error_ratio`)
    /// does not change how the running rollout judges its steps: it keeps
    /// the limits it started with, as it keeps its steps.
    #[test]
    fn a_running_rollout_keeps_the_analysis_it_started_with() {
        let mut started = plan();
        started.analysis.max_error_ratio = Some(0.2);
        let (mut r, _) = Rollout::start(&started);
        let mut edited = started.clone();
        edited.analysis.max_error_ratio = Some(0.001);
        edited.on_rollback = OnRollback::Reset;
        // A canary failing 2 % of its connections: well within 0.2, far
        // above 0.001 (the SPRT would cross at once).
        let sec = Duration::from_secs(1);
        let a = r.tick_(&edited, &counts((5000, 0), (2000, 40)), sec);
        assert_eq!(a, Action::None, "judged by the edited limits: {a:?}");
        assert!(matches!(
            r.tick_(&edited, &counts((0, 0), (0, 0)), sec),
            Action::SetWeight(w, _) if w.bp() == 5000
        ));
    }

    #[test]
    fn the_plan_is_frozen_and_old_state_files_fall_back_to_the_config() {
        let mut started = plan();
        started.analysis.max_error_ratio = Some(0.2);
        let (r, _) = Rollout::start(&started);
        let mut edited = started.clone();
        edited.analysis.max_error_ratio = Some(0.001);
        edited.on_rollback = OnRollback::Reset;
        edited.steps = vec![1.0];
        let frozen = r.frozen_plan(&edited);
        assert_eq!(frozen, started);
        // A state file from before the limits were kept still loads, and
        // then the current config's limits stand in.
        let mut old = serde_json::to_value(&r).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("analysis");
        o.remove("on_rollback");
        let back: Rollout = serde_json::from_value(old).unwrap();
        assert_eq!(back.analysis, None);
        let fallback = back.frozen_plan(&edited);
        assert_eq!(fallback.analysis.max_error_ratio, Some(0.001));
        assert_eq!(fallback.on_rollback, OnRollback::Reset);
    }

    #[test]
    fn paused_time_does_not_count_and_state_round_trips() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p);
        r.tick_(&p, &counts((100, 0), (30, 0)), Duration::from_secs(1));
        assert!(r.pause());
        assert_eq!(
            r.tick_(&p, &counts((900, 0), (300, 0)), Duration::from_secs(5)),
            Action::None
        );
        assert_eq!(r.step_elapsed_ms, 1000);
        assert!(r.resume());
        let saved = serde_json::to_string(&r).unwrap();
        let back: Rollout = serde_json::from_str(&saved).unwrap();
        // The guard's recent ticks are not saved (they refill in seconds).
        r.recent.clear();
        assert_eq!(back, r);
        assert_eq!(back.window.canary.attempts, 30);
    }
    fn adaptive() -> RolloutConfig {
        RolloutConfig::adaptive_for_test(
            vec![3000, 7000, 40000],
            Duration::from_secs(30),
            AnalysisConfig {
                max_canary_vs_stable_ratio: Some(2.0),
                min_failing_clients: 3,
                ..Default::default()
            },
        )
    }

    /// One 250 ms tick at `rate` conn/s split at `w`, 1 % failing on both.
    fn at(w: WeightBp, rate: f64) -> WindowCounts {
        let n = rate / 4.0;
        let c = (n * w.bp() as f64 / 1e4).round() as u64;
        let s = n as u64 - c;
        counts((s, s / 100), (c, c / 100))
    }

    #[test]
    fn adaptive_warms_up_sizes_each_step_and_promotes_within_budget() {
        let p = adaptive();
        let (mut r, a) = Rollout::start(&p);
        assert_eq!(
            a,
            Action::SetWeight(
                WeightBp::ZERO,
                "rollout: measuring the connection rate at canary weight 0 (5 s)".into()
            )
        );
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.planned_steps(), 4);
        let mut w = WeightBp::ZERO;
        let mut whys = vec![];
        for i in 0..2000 {
            match r.tick_(&p, &at(w, 2000.0), TICK) {
                Action::SetWeight(nw, why) => {
                    if whys.is_empty() {
                        assert_eq!(i, 19, "the warm-up lasts 5 s");
                    }
                    w = nw;
                    whys.push(why);
                }
                Action::Promoted(_) => break,
                other => assert_eq!(other, Action::None),
            }
            assert_eq!(r.check(), Ok(()));
        }
        assert_eq!(r.phase, Phase::Promoted, "{:?}", r.history);
        assert_eq!(r.steps.len(), 4, "{:?}", r.steps);
        assert!(
            r.steps[0] > 1.0 && r.steps[0] < r.steps[1] && r.steps[1] < 50.0,
            "{:?}",
            r.steps
        );
        assert_eq!(&r.steps[2..], &[50.0, 100.0]);
        assert!(
            whys[0].starts_with("step 1/4: ") && whys[0].contains("at 2,000 conn/s"),
            "{whys:?}"
        );
        assert!(whys[2].contains("raised to 50%"), "{whys:?}");
        assert!(
            whys[3].starts_with("step 4/4: 100% — level 3 reached"),
            "{whys:?}"
        );
        let ad = r.adaptive.as_ref().unwrap();
        assert_eq!(ad.reached_at.len(), 3);
        for (j, x) in ad.reached_at.iter().enumerate() {
            assert!(
                *x <= p.adaptive.as_ref().unwrap().budget[j],
                "{:?}",
                ad.reached_at
            );
        }
        assert!(r.history[0].contains("level 1 reached"), "{:?}", r.history);
    }

    #[test]
    fn adaptive_rolls_back_when_a_levels_budget_is_spent() {
        let p = adaptive();
        let (mut r, _) = Rollout::start(&p);
        let mut w = WeightBp::ZERO;
        for _ in 0..20 {
            if let Action::SetWeight(nw, _) = r.tick_(&p, &at(w, 2000.0), TICK) {
                w = nw;
            }
        }
        assert!(w.bp() > 0);
        // A surge of canary connections (no failures) before the interval.
        let a = r.tick_(&p, &counts((0, 0), (3000, 0)), TICK);
        let Action::Rollback(why) = a else {
            panic!("{a:?}")
        };
        assert!(
            why.contains("the budget of level 1 (3,000 canary connections) was spent"),
            "{why}"
        );
    }

    #[test]
    fn adaptive_state_round_trips_and_old_state_loads_without_it() {
        let p = adaptive();
        let (mut r, _) = Rollout::start(&p);
        for _ in 0..25 {
            r.tick_(&p, &at(r.weight(), 2000.0), TICK);
        }
        assert!(!r.adaptive.as_ref().unwrap().measuring);
        let saved = serde_json::to_string(&r).unwrap();
        let mut back: Rollout = serde_json::from_str(&saved).unwrap();
        r.recent.clear();
        back.recent.clear();
        assert_eq!(back, r);
        assert_eq!(back.frozen_plan(&plan()).adaptive, p.adaptive);
        assert_eq!(back.frozen_plan(&plan()).strategy, Strategy::Adaptive);
        // A fixed rollout saved before adaptive plans existed.
        let (f, _) = Rollout::start(&plan());
        let mut old = serde_json::to_value(&f).unwrap();
        old.as_object_mut().unwrap().remove("adaptive");
        let back: Rollout = serde_json::from_value(old).unwrap();
        assert_eq!(back.adaptive, None);
        assert_eq!(back.planned_steps(), 3);
        // A corrupted adaptive state is named.
        let mut bad = r.clone();
        bad.steps.push(1.0);
        assert_eq!(
            bad.check(),
            Err("steps: the chosen weights do not rise".into())
        );
    }
}
