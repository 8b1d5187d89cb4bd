//! The adaptive plan (`rollout.strategy: adaptive`): the engine picks each
//! judged step's weight from the measured connection rate, so the step
//! collects the sample its analysis needs within its interval, and the
//! canary connections exposed stay within the operator's budget per level
//! of confidence.
//!
//! Symbols (README, "Adaptive plans"): R the total judged connection rate,
//! T the interval, w a step's weight, n(w) the canary connections the step
//! needs (`step_need`, the final test's sample at the step's alpha and
//! power), N_j the budget of level j (canary connections exposed before j
//! judged steps have passed). A step at w exposes E(w) = max(n(w), w·R·T).
//!
//! Rule for step j (basis points):
//! - lo = max(min_step, prev + min_step, 100 - (L+1-j)·max_step),
//!   hi = min(prev + max_step, 100 - min_step);
//! - w* = least w in [lo, hi] with w·R·T ≥ n(w) (collects its need in T);
//! - w* when it fits the budget left (n(w*) and w*·R·T ≤ 0.95·(N_j - exposed)),
//!   else the fastest weight that fits, else roll back.

use super::analysis::{step_need, Limits, WindowCounts};
use crate::config::AdaptiveConfig;
use canary_common::weight::WeightBp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An adaptive rollout's state (`Rollout::adaptive`; None for fixed plans
/// and in state files written before adaptive plans existed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveRun {
    /// The plan as started (frozen like the analysis).
    pub plan: AdaptiveConfig,
    /// The warm-up at weight 0 that measures the rate before step 1.
    pub measuring: bool,
    /// Levels reached: judged steps passed.
    pub level: u32,
    /// Counters since the start: exposure = `total.canary.attempts`.
    pub total: WindowCounts,
    /// Observation time since the start (paused time excluded).
    pub elapsed_ms: u64,
    /// The total judged connection rate the current step was sized on.
    pub rate: f64,
    /// The current step's planned need.
    pub need: u64,
    /// Why the current step has its weight.
    pub why: String,
    /// Exposure when each level was reached.
    #[serde(default)]
    pub reached_at: Vec<u64>,
}

impl AdaptiveRun {
    pub fn new(plan: AdaptiveConfig) -> AdaptiveRun {
        AdaptiveRun {
            plan,
            measuring: true,
            level: 0,
            total: WindowCounts::default(),
            elapsed_ms: 0,
            rate: 0.0,
            need: 0,
            why: String::new(),
            reached_at: Vec::new(),
        }
    }

    pub fn levels(&self) -> usize {
        self.plan.levels()
    }

    /// Canary connections exposed since the start.
    pub fn exposed(&self) -> u64 {
        self.total.canary.attempts
    }

    /// The budget of the next level, None once every level is reached.
    pub fn cap(&self) -> Option<u64> {
        self.plan.budget.get(self.level as usize).copied()
    }
}

/// Step `j`'s (1-based) share of the rollout's `alpha`: proportional to
/// max((1 - power)^(j-1), 0.01) over the steps that test anything (the L
/// levels, plus the 100 % step when it keeps a check: `last_tests`). A
/// canary at the limit reaches step j with probability ≤ (1-power)^(j-1);
/// its expected failures before the SPRT stops it grow like ln(1/α_j), and
/// minimising Σ π_j ln(1/α_j) under Σ α_j = α gives α_j ∝ π_j.
pub fn alpha_share(alpha: f64, power: f64, levels: usize, last_tests: bool, j: usize) -> f64 {
    let s = |i: usize| (1.0 - power).powi(i as i32 - 1).max(0.01);
    let judged = levels + last_tests as usize;
    let sum: f64 = (1..=judged).map(s).sum();
    alpha * s(j.min(judged.max(1))) / sum
}

/// What a judged step is to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub weight: WeightBp,
    pub need: u64,
    pub why: String,
}

/// What the rule reads.
pub struct PickInput<'a> {
    pub plan: &'a AdaptiveConfig,
    /// The analysis limits with this step's `alpha_step` set.
    pub limits: &'a Limits,
    pub interval: Duration,
    /// 1-based step (= the level it leads to).
    pub step: usize,
    /// The weight before, basis points.
    pub prev_bp: u32,
    /// Total judged connections per second.
    pub rate: f64,
    /// Stable failures and attempts since the start (p̂0).
    pub stable: (u64, u64),
    /// Canary connections exposed so far.
    pub exposed: u64,
}

/// `1234567` as `1,234,567`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A probability, short: 0.001, 1e-5.
pub fn prob(p: f64) -> String {
    if p >= 1e-4 {
        let s = format!("{p:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{p:.0e}")
    }
}

/// A percent as the operator writes it: 3.95, 50.
fn pct(bp: u32) -> String {
    WeightBp::from_bp(bp).percent().to_string()
}

fn secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// The rule of the module docs.
pub fn pick(i: &PickInput) -> Result<Pick, String> {
    let l = i.plan.levels();
    let j = i.step;
    let steps = l + 1;
    let (min_bp, max_bp) = (i.plan.min_step_bp(), i.plan.max_step_bp());
    let envelope = 10_000i64 - (steps - j) as i64 * max_bp as i64;
    let lo = (min_bp as i64)
        .max((i.prev_bp + min_bp) as i64)
        .max(envelope)
        .clamp(1, 10_000) as u32;
    let hi = (i.prev_bp + max_bp).min(10_000 - min_bp);
    let t = i.interval.as_secs_f64();
    let r = i.rate.max(1e-9);
    let cap = i.plan.budget[j - 1];
    let left = cap.saturating_sub(i.exposed);
    let room = 0.95 * left as f64;
    let here = format!("step {j}/{steps}");
    let (xs, ns) = i.stable;
    let p0 = if ns > 0 { xs as f64 / ns as f64 } else { 0.0 };
    // n(w) at a T-long step's expected counts, the stable rate 2 SE low:
    // the step sizes itself 1 SE below its own estimate, so the need met
    // at T rarely exceeds the plan.
    let need = |bp: u32| -> u64 {
        let w = bp as f64 / 10_000.0;
        let ns = ((1.0 - w) * r * t).round() as u64;
        let nc = (w * r * t).round() as u64;
        let xs = (p0 * ns as f64).round() as u64;
        step_need(i.limits, nc, ns, xs, 2.0)
    };
    let in_t = |bp: u32| bp as f64 / 10_000.0 * r * t;
    let fits = |bp: u32| need(bp) as f64 <= room && in_t(bp) <= room;
    let budget_left = format!(
        "{} of {} connections of the budget left (level {j})",
        grouped(left),
        grouped(cap)
    );
    let head = |bp: u32, n: u64| {
        format!(
            "{here}: {}% — needs {} canary connections within {} at {} conn/s",
            pct(bp),
            grouped(n),
            secs(t),
            grouped(r.round() as u64)
        )
    };
    if lo > hi {
        return Err(format!(
            "{here}: no weight between {}% and {}% is allowed",
            pct(lo),
            pct(hi)
        ));
    }
    let mut star = None;
    for bp in lo..=hi {
        let n = need(bp);
        if in_t(bp) >= n as f64 {
            star = Some((bp, n));
            break;
        }
    }
    if let Some((bp, n)) = star.filter(|(bp, _)| fits(*bp)) {
        // Name the bound that raised it above the least that collects in T.
        let mut clause = String::new();
        if bp == lo && (bp <= 1 || in_t(bp - 1) >= need(bp - 1) as f64) {
            clause = if lo as i64 == envelope && lo > min_bp {
                format!(
                    "; raised to {}%: the rise to 100% is at most {} points ({} in {})",
                    pct(bp),
                    i.plan.max_step,
                    grouped(in_t(bp).round() as u64),
                    secs(t)
                )
            } else if lo > min_bp {
                format!("; at least step {} + {} point(s)", j - 1, i.plan.min_step)
            } else {
                format!(
                    "; at least min_step ({} point(s)): {} in {}",
                    i.plan.min_step,
                    grouped(in_t(bp).round() as u64),
                    secs(t)
                )
            };
        }
        return Ok(Pick {
            weight: WeightBp::from_bp(bp),
            need: n,
            why: format!("{}{clause}; {budget_left}", head(bp, n)),
        });
    }
    // None collects its need in T within the budget: the fastest that fits
    // with the 5 % margin, else without it (p̂0 is an estimate too: the
    // step's own may ask for less; the hard cap still stops it).
    let mut best: Option<(f64, u32, u64)> = None;
    for room in [room, left as f64] {
        for bp in lo..=hi {
            let n = need(bp);
            if n as f64 > room || in_t(bp) > room {
                continue;
            }
            let dur = (n as f64 / (bp as f64 / 10_000.0 * r)).max(t);
            if best.is_none_or(|(d, _, _)| dur < d) {
                best = Some((dur, bp, n));
            }
        }
        if best.is_some() {
            break;
        }
    }
    let Some((dur, bp, n)) = best else {
        return Err(format!(
            "{here}: level {j}'s budget cannot hold a step: at the least allowed weight ({}%) \
             it needs {} canary connections and gets {} in {} at {} conn/s; {} of {} are left",
            pct(lo),
            grouped(need(lo)),
            grouped(in_t(lo).round() as u64),
            secs(t),
            grouped(r.round() as u64),
            grouped(left),
            grouped(cap)
        ));
    };
    let bound = if star.is_some() || (bp < hi && !fits(bp + 1)) {
        "the budget".to_string()
    } else if bp == i.prev_bp + max_bp {
        format!("a rise of {} points", i.plan.max_step)
    } else {
        "the least time".to_string()
    };
    Ok(Pick {
        weight: WeightBp::from_bp(bp),
        need: n,
        why: format!(
            "{}; at most {}%: {bound}; collects them in ~{}; {budget_left}",
            head(bp, n),
            pct(bp),
            secs(dur)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> AdaptiveConfig {
        AdaptiveConfig::for_test(vec![3000, 7000, 40000])
    }

    fn limits(j: usize) -> Limits {
        Limits {
            max_canary_vs_stable_ratio: Some(2.0),
            alpha_step: Some(alpha_share(0.01, 0.9, 3, false, j)),
            min_failing_clients: 3,
            ..Default::default()
        }
    }

    fn input<'a>(
        p: &'a AdaptiveConfig,
        l: &'a Limits,
        j: usize,
        prev: u32,
        rate: f64,
        exposed: u64,
    ) -> PickInput<'a> {
        PickInput {
            plan: p,
            limits: l,
            interval: Duration::from_secs(30),
            step: j,
            prev_bp: prev,
            rate,
            stable: (10_000, 1_000_000),
            exposed,
        }
    }

    #[test]
    fn alpha_is_front_loaded_and_sums_to_the_rollouts() {
        let a: Vec<f64> = (1..=3)
            .map(|j| alpha_share(0.01, 0.9, 3, false, j))
            .collect();
        assert!((a.iter().sum::<f64>() - 0.01).abs() < 1e-12);
        assert!((a[0] - 0.01 / 1.11).abs() < 1e-12, "{a:?}");
        assert!((a[1] / a[0] - 0.1).abs() < 1e-12);
        // With a ceiling the 100 % step tests too and gets a share.
        let b: f64 = (1..=4).map(|j| alpha_share(0.01, 0.9, 3, true, j)).sum();
        assert!((b - 0.01).abs() < 1e-12);
    }

    #[test]
    fn grouped_numbers() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
    }

    #[test]
    fn probabilities_print_short() {
        assert_eq!(prob(0.1f64.powi(3)), "0.001");
        assert_eq!(prob(0.01), "0.01");
        assert_eq!(prob(1e-5), "1e-5");
    }

    /// A fast service's step 1 would collect its need below 1 %: min_step
    /// sets it, and says so.
    #[test]
    fn min_step_is_named_when_it_sets_the_weight() {
        let p = plan();
        let l = limits(1);
        let e = pick(&input(&p, &l, 1, 0, 60_000.0, 0)).unwrap_err();
        assert!(e.contains("(1%) it needs 2,"), "{e}");
        assert!(
            e.contains("and gets 18,000 in 30 s at 60,000 conn/s; 3,000 of 3,000 are left"),
            "{e}"
        );
        let mut p = p;
        p.budget = vec![30_000, 70_000, 400_000];
        let pk = pick(&input(&p, &l, 1, 0, 60_000.0, 0)).unwrap();
        assert_eq!(pk.weight.bp(), 100, "{pk:?}");
        assert!(
            pk.why
                .contains("; at least min_step (1 point(s)): 18,000 in 30 s; "),
            "{}",
            pk.why
        );
    }

    /// Step 1 at 2,000 conn/s takes the least weight whose 30 s collect its
    /// need, and a weight 1 bp lower would not.
    #[test]
    fn the_least_weight_that_collects_its_need_in_the_interval() {
        let p = plan();
        let l = limits(1);
        let pk = pick(&input(&p, &l, 1, 0, 2000.0, 0)).unwrap();
        let bp = pk.weight.bp();
        assert!((300..500).contains(&bp), "{pk:?}");
        assert!(bp as f64 / 1e4 * 2000.0 * 30.0 >= pk.need as f64);
        // n(w) rises with w: one bp less would not collect its own need.
        assert!(((bp - 1) as f64 / 1e4 * 60_000.0) < pk.need as f64);
        assert!(
            pk.why.starts_with(&format!(
                "step 1/4: {}% — needs {} canary connections within 30 s at 2,000 conn/s; 3,000 of 3,000",
                pk.weight.percent(),
                grouped(pk.need)
            )),
            "{}",
            pk.why
        );
        // Higher rate, smaller weight.
        let fast = pick(&input(&p, &l, 1, 0, 6400.0, 0)).unwrap();
        assert!(fast.weight.bp() < bp, "{fast:?}");
    }

    #[test]
    fn the_last_judged_step_is_raised_to_reach_100() {
        let p = plan();
        let l = limits(3);
        let pk = pick(&input(&p, &l, 3, 535, 2000.0, 5000)).unwrap();
        assert_eq!(pk.weight.bp(), 5000, "{pk:?}");
        assert!(
            pk.why
                .contains("raised to 50%: the rise to 100% is at most 50 points"),
            "{}",
            pk.why
        );
        assert!(
            pk.why
                .ends_with("35,000 of 40,000 connections of the budget left (level 3)"),
            "{}",
            pk.why
        );
    }

    /// At 500 conn/s no weight collects step 1's need in 30 s inside 3,000:
    /// the fastest that fits, said so; nothing fits: an error with figures.
    #[test]
    fn the_budget_caps_a_slow_service_and_an_empty_budget_refuses() {
        let p = plan();
        let l = limits(1);
        let pk = pick(&input(&p, &l, 1, 0, 500.0, 0)).unwrap();
        assert!(pk.need as f64 <= 0.95 * 3000.0, "{pk:?}");
        assert!(
            pk.why.contains("the budget; collects them in ~"),
            "{}",
            pk.why
        );
        let e = pick(&input(&p, &l, 1, 0, 500.0, 2000)).unwrap_err();
        assert!(
            e.starts_with("step 1/4: level 1's budget cannot hold a step"),
            "{e}"
        );
        assert!(e.ends_with("1,000 of 3,000 are left"), "{e}");
    }
}
