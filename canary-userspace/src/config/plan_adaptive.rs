//! `rollout.strategy` and `rollout.adaptive:`: the plan whose step weights
//! the engine picks from the observed traffic under a risk budget
//! (`rollout/adaptive.rs` holds the rule).

use canary_common::weight::WeightBp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a rollout's step weights are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The operator's `steps`, in order.
    #[default]
    Fixed,
    /// The engine picks each step's weight (`adaptive:`).
    Adaptive,
}

/// What `adaptive.budget` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BudgetUnit {
    /// Judged canary connections.
    #[default]
    Connections,
    /// Distinct canary clients: reserved, refused by validation (nothing
    /// counts distinct canary clients yet).
    Clients,
}

/// `rollout.adaptive:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Cumulative risk budget: the most canary connections that may be
    /// exposed before confidence level 1, 2, ... is reached (one level per
    /// judged step passed).
    pub budget: Vec<u64>,
    #[serde(default)]
    pub budget_unit: BudgetUnit,
    /// Least weight of a step and least rise, percent points.
    #[serde(default = "default_min_step")]
    pub min_step: f64,
    /// Largest rise, the last one to 100 % included, percent points.
    #[serde(default = "default_max_step")]
    pub max_step: f64,
    /// Longest rollout (observation time, paused time excluded).
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    pub max_duration: Duration,
}

fn default_min_step() -> f64 {
    1.0
}
fn default_max_step() -> f64 {
    50.0
}
fn default_max_duration() -> Duration {
    Duration::from_secs(30 * 60)
}

/// The warm-up at weight 0 that measures the connection rate before step 1.
pub const ADAPTIVE_WARMUP: Duration = Duration::from_secs(5);
/// Most confidence levels (judged steps) of an adaptive plan.
pub const ADAPTIVE_MAX_LEVELS: usize = 8;

#[cfg(test)]
impl AdaptiveConfig {
    /// For unit tests and simulations: `budget` in connections, steps of 1
    /// to 50 points, within 15 min.
    pub fn for_test(budget: Vec<u64>) -> AdaptiveConfig {
        AdaptiveConfig {
            budget,
            budget_unit: BudgetUnit::Connections,
            min_step: 1.0,
            max_step: 50.0,
            max_duration: Duration::from_secs(15 * 60),
        }
    }
}

impl AdaptiveConfig {
    /// Judged steps before the 100 % one.
    pub fn levels(&self) -> usize {
        self.budget.len()
    }
    pub fn min_step_bp(&self) -> u32 {
        WeightBp::from_percent(self.min_step).map_or(100, |w| w.bp())
    }
    pub fn max_step_bp(&self) -> u32 {
        WeightBp::from_percent(self.max_step).map_or(5000, |w| w.bp())
    }
}

/// The rules of an adaptive plan (`strategy: adaptive`), as
/// `field: problem` errors.
pub(super) fn validate(r: &super::RolloutConfig) -> anyhow::Result<()> {
    use anyhow::bail;
    if !r.steps.is_empty() {
        bail!("steps: not used with strategy: adaptive (the engine picks each step's weight)");
    }
    let Some(ad) = &r.adaptive else {
        bail!("adaptive: required with strategy: adaptive");
    };
    let l = ad.budget.len();
    if l == 0 || l > ADAPTIVE_MAX_LEVELS {
        bail!("adaptive.budget: {l} levels; 1 to {ADAPTIVE_MAX_LEVELS} are allowed");
    }
    let least = r.analysis.min_canary_connections.max(1);
    for (i, b) in ad.budget.iter().enumerate() {
        if *b < least {
            bail!("adaptive.budget[{i}]: {b} is below analysis.min_canary_connections ({least})");
        }
        if i > 0 && *b <= ad.budget[i - 1] {
            bail!(
                "adaptive.budget[{i}]: {b} must be above the level before ({})",
                ad.budget[i - 1]
            );
        }
    }
    if r.on_failure == super::OnFailure::Pause {
        // A paused step keeps its weight: clients would go on reaching the
        // canary past the budget, which is the one thing it promises.
        bail!("on_failure: pause is not allowed with strategy: adaptive (the risk budget must stop the canary)");
    }
    if ad.budget_unit == BudgetUnit::Clients {
        bail!("adaptive.budget_unit: clients are not counted yet; use connections");
    }
    let whole_bp = |p: f64| WeightBp::from_percent(p).is_ok();
    if !(0.01..=50.0).contains(&ad.min_step) || !whole_bp(ad.min_step) {
        bail!(
            "adaptive.min_step: {} must be 0.01 to 50 percent points, at most two decimals",
            ad.min_step
        );
    }
    if !(ad.min_step..=100.0).contains(&ad.max_step) || !whole_bp(ad.max_step) {
        bail!(
            "adaptive.max_step: {} must be from min_step ({}) to 100, at most two decimals",
            ad.max_step,
            ad.min_step
        );
    }
    let steps = (l + 1) as u32;
    if steps * ad.max_step_bp() < 10_000 {
        bail!(
            "adaptive.max_step: {} points a step cannot reach 100% in {steps} steps",
            ad.max_step
        );
    }
    if steps * ad.min_step_bp() > 10_000 {
        bail!(
            "adaptive.min_step: {} points a step overshoot 100% in {steps} steps",
            ad.min_step
        );
    }
    let least_time = r.interval * steps + ADAPTIVE_WARMUP;
    if ad.max_duration < least_time {
        bail!(
            "adaptive.max_duration: {:?} is below {steps} steps of {:?} plus the {:?} warm-up ({:?})",
            ad.max_duration,
            r.interval,
            ADAPTIVE_WARMUP,
            least_time
        );
    }
    if r.analysis.max_canary_vs_stable_ratio.is_none() && r.analysis.max_error_ratio.is_none() {
        bail!(
            "adaptive: steps are sized from analysis.max_canary_vs_stable_ratio or max_error_ratio; set one"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AnalysisConfig, RolloutConfig};

    fn plan() -> RolloutConfig {
        RolloutConfig::adaptive_for_test(
            vec![3000, 7000, 40000],
            Duration::from_secs(30),
            AnalysisConfig {
                max_canary_vs_stable_ratio: Some(2.0),
                ..Default::default()
            },
        )
    }

    fn err(f: impl FnOnce(&mut RolloutConfig)) -> String {
        let mut p = plan();
        f(&mut p);
        format!("{:#}", validate(&p).unwrap_err())
    }

    #[test]
    fn a_good_plan_passes_and_defaults_fill_in() {
        validate(&plan()).unwrap();
        let a: AdaptiveConfig = serde_yaml::from_str("budget: [3000, 7000]").unwrap();
        assert_eq!(a.min_step, 1.0);
        assert_eq!(a.max_step, 50.0);
        assert_eq!(a.max_duration, Duration::from_secs(1800));
        assert_eq!(a.budget_unit, BudgetUnit::Connections);
        assert!(serde_yaml::from_str::<AdaptiveConfig>("budget: [1]\nmax_stp: 3").is_err());
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(
            err(|p| p.steps = vec![5.0]),
            "steps: not used with strategy: adaptive (the engine picks each step's weight)"
        );
        assert_eq!(
            err(|p| p.adaptive = None),
            "adaptive: required with strategy: adaptive"
        );
        assert_eq!(
            err(|p| p.adaptive.as_mut().unwrap().budget = vec![3000, 2500]),
            "adaptive.budget[1]: 2500 must be above the level before (3000)"
        );
        assert_eq!(
            err(|p| p.adaptive.as_mut().unwrap().budget = vec![50]),
            "adaptive.budget[0]: 50 is below analysis.min_canary_connections (100)"
        );
        assert!(err(|p| p.adaptive.as_mut().unwrap().budget = vec![])
            .starts_with("adaptive.budget: 0 levels"));
        assert!(err(|p| p.on_failure = crate::config::OnFailure::Pause)
            .starts_with("on_failure: pause is not allowed with strategy: adaptive"));
        assert_eq!(
            err(|p| p.adaptive.as_mut().unwrap().budget_unit = BudgetUnit::Clients),
            "adaptive.budget_unit: clients are not counted yet; use connections"
        );
        assert!(err(|p| p.adaptive.as_mut().unwrap().min_step = 0.001)
            .starts_with("adaptive.min_step: 0.001 "));
        assert!(err(|p| p.adaptive.as_mut().unwrap().max_step = 0.5)
            .starts_with("adaptive.max_step: 0.5 "));
        assert_eq!(
            err(|p| p.adaptive.as_mut().unwrap().max_step = 20.0),
            "adaptive.max_step: 20 points a step cannot reach 100% in 4 steps"
        );
        assert_eq!(
            err(|p| p.adaptive.as_mut().unwrap().min_step = 30.0),
            "adaptive.min_step: 30 points a step overshoot 100% in 4 steps"
        );
        assert!(
            err(|p| p.adaptive.as_mut().unwrap().max_duration = Duration::from_secs(60))
                .starts_with("adaptive.max_duration: 60s is below 4 steps of 30s")
        );
        assert_eq!(
            err(|p| p.analysis.max_canary_vs_stable_ratio = None),
            "adaptive: steps are sized from analysis.max_canary_vs_stable_ratio or max_error_ratio; set one"
        );
    }
}
