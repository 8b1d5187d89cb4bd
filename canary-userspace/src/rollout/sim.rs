//! Seeded simulations of the real engine (`Rollout::start` / `tick`, as the
//! daemon drives them every 250 ms): the fixed plan [5, 10, 15, 20, 50, 100]
//! against the adaptive plan, same interval, power and false-alarm rate.
//!
//! Traffic: per tick, Poisson arrivals at the total rate split by the
//! current weight (thinning: canary and stable counts are independent
//! Poisson). Common random numbers: whether the k-th canary (stable)
//! connection fails is fixed per seed, whatever the plan, so each seed is a
//! paired comparison of the two plans on the same failures.

use super::engine::{Action, Rollout, TICK};
use crate::config::{AnalysisConfig, RolloutConfig};
use crate::rollout::analysis::{VersionCounts, WindowCounts};
use canary_common::weight::WeightBp;
use std::time::Duration;

use super::test_rng::Rng;

/// Outcomes of one version's connections in order: failure positions drawn
/// as geometric gaps (cost per failure, not per connection).
struct Outcomes {
    rng: Rng,
    p: f64,
    /// Connections taken so far.
    at: u64,
    /// Index of the next failing connection.
    next_fail: u64,
}
impl Outcomes {
    fn new(seed: u64, p: f64) -> Outcomes {
        let mut o = Outcomes {
            rng: Rng::new(seed),
            p,
            at: 0,
            next_fail: 0,
        };
        o.next_fail = o.gap();
        o
    }
    fn gap(&mut self) -> u64 {
        if self.p <= 0.0 {
            return u64::MAX / 2;
        }
        (self.rng.uniform_pos().ln() / (1.0 - self.p).ln()).floor() as u64
    }
    /// Failures among the next `n` connections.
    fn take(&mut self, n: u64) -> u64 {
        let end = self.at + n;
        let mut x = 0;
        while self.next_fail < end {
            x += 1;
            self.next_fail += 1 + self.gap();
        }
        self.at = end;
        x
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// Total judged connections per second.
    pub rate: f64,
    pub p_stable: f64,
    pub p_canary: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    /// Rolled back by the step analysis (SPRT or final test).
    Analysis,
    /// By the recent-window guard.
    Guard,
    /// An adaptive plan's budget.
    Budget,
    /// An adaptive plan's max_duration.
    Time,
    /// Neither after an hour of simulated time.
    Stuck,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub outcome: Outcome,
    pub weights: Vec<f64>,
    pub exposed_before_100: u64,
    pub exposed_total: u64,
    pub secs_to_100: Option<f64>,
    pub secs_to_end: f64,
    /// 1-based judged step of the rollback.
    pub caught_at_step: Option<usize>,
    /// Failed canary connections up to the end.
    pub canary_failures: u64,
    pub reached_at: Vec<u64>,
    pub reason: Option<String>,
    /// The engine's reasons for each weight (SetWeight's message).
    pub whys: Vec<String>,
}

fn analysis() -> AnalysisConfig {
    AnalysisConfig {
        max_canary_vs_stable_ratio: Some(2.0),
        false_alarm_rate: 0.01,
        power: 0.9,
        min_canary_connections: 100,
        min_failing_clients: 3,
        ..Default::default()
    }
}

pub fn fixed_plan() -> RolloutConfig {
    RolloutConfig::fixed_for_test(
        vec![5.0, 10.0, 15.0, 20.0, 50.0, 100.0],
        Duration::from_secs(30),
        analysis(),
    )
}

pub fn adaptive_plan(budget: Vec<u64>) -> RolloutConfig {
    RolloutConfig::adaptive_for_test(budget, Duration::from_secs(30), analysis())
}

fn counts(attempts: u64, failures: u64) -> VersionCounts {
    VersionCounts {
        attempts,
        failures,
        failing_clients: failures,
        ..Default::default()
    }
}

/// One rollout of `plan` on `t`, the real engine ticking every 250 ms; an
/// action's weight applies from the next tick, as in the daemon.
pub fn simulate(plan: &RolloutConfig, t: Traffic, seed: u64) -> Run {
    let mut arrivals = Rng::new(seed.wrapping_mul(3) ^ 0xa5a5);
    let mut canary = Outcomes::new(seed.wrapping_mul(5) ^ 0x5a5a, t.p_canary);
    let mut stable = Outcomes::new(seed.wrapping_mul(7) ^ 0x3c3c, t.p_stable);
    let (mut r, first) = Rollout::start(plan);
    let mut w = match first {
        Action::SetWeight(w, _) => w,
        other => panic!("start: {other:?}"),
    };
    let dt = TICK.as_secs_f64();
    let mut run = Run {
        outcome: Outcome::Stuck,
        weights: Vec::new(),
        exposed_before_100: 0,
        exposed_total: 0,
        secs_to_100: None,
        secs_to_end: 0.0,
        caught_at_step: None,
        canary_failures: 0,
        reached_at: Vec::new(),
        reason: None,
        whys: Vec::new(),
    };
    if w.bp() > 0 {
        run.weights.push(w.percent());
    }
    let mut now = 0.0;
    while now < 3600.0 {
        let share = w.bp() as f64 / 10_000.0;
        let nc = arrivals.poisson(share * t.rate * dt);
        let ns = arrivals.poisson((1.0 - share) * t.rate * dt);
        let (xc, xs) = (canary.take(nc), stable.take(ns));
        run.exposed_total += nc;
        if w != WeightBp::FULL {
            run.exposed_before_100 += nc;
        }
        run.canary_failures += xc;
        now += dt;
        let delta = WindowCounts {
            stable: counts(ns, xs),
            canary: counts(nc, xc),
        };
        match r.tick(plan, &delta, TICK, None) {
            Action::None => {}
            Action::SetWeight(nw, why) => {
                run.whys.push(why);
                w = nw;
                run.weights.push(w.percent());
                if w == WeightBp::FULL {
                    run.secs_to_100 = Some(now);
                }
            }
            Action::Promoted(_) => {
                run.outcome = Outcome::Promoted;
                break;
            }
            // The plans here roll back on failure (Paused: `on_failure: pause`).
            Action::Rollback(why) | Action::Paused(why) => {
                run.outcome = if why.contains("budget") {
                    Outcome::Budget
                } else if why.contains("max_duration") {
                    Outcome::Time
                } else if why.contains("last seconds") {
                    Outcome::Guard
                } else {
                    Outcome::Analysis
                };
                run.caught_at_step = Some(r.step + 1);
                run.reason = Some(why);
                break;
            }
        }
    }
    run.secs_to_end = now;
    run.reached_at = r.adaptive.map(|a| a.reached_at).unwrap_or_default();
    run
}

fn mean(xs: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let v: Vec<f64> = xs.collect();
    let n = v.len();
    let m = v.iter().sum::<f64>() / n.max(1) as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    (m, (var / n.max(1) as f64).sqrt(), n)
}

fn budget_for(rate: f64) -> Vec<u64> {
    if rate > 5000.0 {
        vec![3000, 8000, 120_000]
    } else {
        vec![3000, 7000, 40_000]
    }
}

/// The must-show at 2,000 conn/s, 1 % stable errors, ratio 2, alpha 0.01,
/// power 0.9, interval 30 s.
#[test]
fn sim_adaptive_beats_fixed() {
    let rate = 2000.0;
    let budget = budget_for(rate);
    let (fixed, adaptive) = (fixed_plan(), adaptive_plan(budget.clone()));
    let healthy = Traffic {
        rate,
        p_stable: 0.01,
        p_canary: 0.01,
    };
    let bad = Traffic {
        p_canary: 0.02,
        ..healthy
    };
    let seeds = 50u64;
    let hf: Vec<Run> = (0..seeds).map(|s| simulate(&fixed, healthy, s)).collect();
    let ha: Vec<Run> = (0..seeds)
        .map(|s| simulate(&adaptive, healthy, s))
        .collect();
    // 3. False alarms: each plan promises P(rollback of a healthy canary)
    // ≤ alpha = 0.01; over 50 runs that is ≤ 0.5 expected, and 3 or more
    // has probability ≤ 1.4 % (Poisson 0.5) even at the bound.
    for (name, runs) in [("fixed", &hf), ("adaptive", &ha)] {
        let alarms = runs
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Analysis | Outcome::Guard))
            .count();
        assert!(
            alarms <= 2,
            "{name}: {alarms} of {seeds} healthy rollouts rolled back"
        );
    }
    // 2. Budget: never exceeded at any level (hard); the overshoot the
    // engine allows is one tick, so a stop of a healthy canary should be
    // rare: at most 1 of 50.
    for r in &ha {
        for (j, at) in r.reached_at.iter().enumerate() {
            assert!(
                *at <= budget[j],
                "level {} reached at {at} > {}: {r:?}",
                j + 1,
                budget[j]
            );
        }
    }
    let stops = ha.iter().filter(|r| r.outcome != Outcome::Promoted).count();
    assert!(stops <= 1, "{stops} healthy adaptive runs not promoted");
    // 1. Exposure before 100 %, promoted runs.
    let exp = |runs: &[Run]| {
        mean(
            runs.iter()
                .filter(|r| r.outcome == Outcome::Promoted)
                .map(|r| r.exposed_before_100 as f64),
        )
    };
    let (ef, ea) = (exp(&hf), exp(&ha));
    eprintln!("healthy: exposure before 100%: fixed {ef:?}, adaptive {ea:?}");
    assert!(ea.0 <= 0.70 * ef.0, "adaptive {} vs fixed {}", ea.0, ef.0);

    // 4./5. A 2x regression, paired seeds.
    let n = 300u64;
    let bf: Vec<Run> = (0..n).map(|s| simulate(&fixed, bad, 1000 + s)).collect();
    let ba: Vec<Run> = (0..n).map(|s| simulate(&adaptive, bad, 1000 + s)).collect();
    for (name, runs) in [("fixed", &bf), ("adaptive", &ba)] {
        let first = runs.iter().filter(|r| r.caught_at_step == Some(1)).count();
        let caught = runs
            .iter()
            .filter(|r| r.outcome != Outcome::Promoted)
            .count();
        // Power 0.9 at the first step: the share caught there is within 3
        // SE of ≥ 0.9 (SE = √(0.09/300) = 0.017), so ≥ 0.848. Every judged
        // step is a 0.9 chance: missing all three has probability ≤ 1e-3,
        // and 4 or more misses of 300 has probability < 0.04 %.
        assert!(
            first as f64 >= 0.848 * n as f64,
            "{name}: {first}/{n} caught at step 1"
        );
        assert!(caught as u64 >= n - 3, "{name}: {caught}/{n} caught");
    }
    let diff = mean(
        bf.iter()
            .zip(&ba)
            .map(|(f, a)| f.canary_failures as f64 - a.canary_failures as f64),
    );
    let t = diff.0 / diff.1;
    eprintln!("2x: failed canary connections, fixed - adaptive: {diff:?}, t = {t:.1}");
    assert!(diff.0 > 0.0 && t >= 3.0, "paired difference {diff:?}");
}

/// The table of the closing note: `cargo test -p canary-userspace --release
/// sim_table -- --ignored --nocapture`.
#[test]
#[ignore]
fn sim_table() {
    println!("| rate | canary | plan | weights (typical) | canary conns before 100% | to 100% | failed canary conns | to rollback | outcome |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // At 500 conn/s also a looser budget: level 2's need there (~4,200)
    // barely fits in [3000, 7000, 40000].
    let cells = [
        (500.0, budget_for(500.0)),
        (500.0, vec![4000, 10_000, 40_000]),
        (2000.0, budget_for(2000.0)),
        (6400.0, budget_for(6400.0)),
    ];
    for (rate, budget) in cells {
        for p_canary in [0.01, 0.02] {
            let t = Traffic {
                rate,
                p_stable: 0.01,
                p_canary,
            };
            let seeds = if p_canary == 0.01 { 200 } else { 1000 };
            let label = format!("adaptive {budget:?}");
            let plans = [
                ("fixed", fixed_plan()),
                (label.as_str(), adaptive_plan(budget.clone())),
            ];
            let runs: Vec<Vec<Run>> = plans
                .iter()
                .map(|(_, p)| (0..seeds).map(|s| simulate(p, t, 7000 + s)).collect())
                .collect();
            for ((name, _), rs) in plans.iter().zip(&runs) {
                let promoted: Vec<&Run> = rs
                    .iter()
                    .filter(|r| r.outcome == Outcome::Promoted)
                    .collect();
                let back: Vec<&Run> = rs
                    .iter()
                    .filter(|r| r.outcome != Outcome::Promoted)
                    .collect();
                let typical = rs[0]
                    .weights
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let (e, _, _) = mean(promoted.iter().map(|r| r.exposed_before_100 as f64));
                let (s100, _, _) = mean(promoted.iter().filter_map(|r| r.secs_to_100));
                let (fail, fse, _) = mean(back.iter().map(|r| r.canary_failures as f64));
                let (tb, _, _) = mean(back.iter().map(|r| r.secs_to_end));
                let mut kinds = std::collections::BTreeMap::new();
                for r in rs {
                    *kinds.entry(format!("{:?}", r.outcome)).or_insert(0) += 1;
                }
                let healthy = p_canary == 0.01;
                println!(
                    "| {rate} | {} | {name} | {typical} | {} | {} | {} | {} | {kinds:?} of {seeds} |",
                    if healthy { "healthy" } else { "2x" },
                    if promoted.is_empty() { "–".into() } else { format!("{e:.0}") },
                    if promoted.is_empty() { "–".into() } else { format!("{s100:.0} s") },
                    if healthy { "–".into() } else { format!("{fail:.1} ± {fse:.1}") },
                    if back.is_empty() { "–".into() } else { format!("{tb:.1} s") },
                );
            }
            if p_canary == 0.01 && rate == 2000.0 {
                for why in &runs[1][0].whys {
                    println!("  {why}");
                }
            }
            if p_canary == 0.02 {
                let d = mean(
                    runs[0]
                        .iter()
                        .zip(&runs[1])
                        .map(|(f, a)| f.canary_failures as f64 - a.canary_failures as f64),
                );
                let better = runs[0]
                    .iter()
                    .zip(&runs[1])
                    .filter(|(f, a)| a.canary_failures <= f.canary_failures)
                    .count();
                println!(
                    "| {rate} | 2x | paired | fixed − adaptive failures: {:.1} ± {:.1} (t = {:.1}); adaptive ≤ fixed in {better}/{seeds} | | | | | |",
                    d.0,
                    d.1,
                    d.0 / d.1
                );
            }
        }
    }
}
