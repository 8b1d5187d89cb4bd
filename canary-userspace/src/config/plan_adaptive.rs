//! `rollout.strategy` and `rollout.adaptive:`: the plan whose step weights
//! the engine picks from the observed traffic under a risk budget.

use serde::{Deserialize, Serialize};

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

/// `rollout.adaptive:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Cumulative risk budget: the most canary connections that may be
    /// exposed before confidence level 1, 2, ... is reached.
    pub budget: Vec<u64>,
}

/// The rules of an adaptive plan (`strategy: adaptive`), as
/// `field: problem` errors.
pub(super) fn validate(r: &super::RolloutConfig) -> anyhow::Result<()> {
    if !r.steps.is_empty() {
        anyhow::bail!(
            "steps: not used with strategy: adaptive (the engine picks each step's weight)"
        );
    }
    if r.adaptive.is_none() {
        anyhow::bail!("adaptive: required with strategy: adaptive");
    }
    anyhow::bail!("strategy: adaptive is not supported yet")
}
