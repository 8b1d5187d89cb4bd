//! The rollout's further signals and its failure policy: `analysis.metrics:`
//! (several external metrics, business ones included), `analysis.latency:`
//! (canary against stable on response time) and `on_failure:`.

use serde::{Deserialize, Serialize};

/// What a failed step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Canary weight 0 at once.
    #[default]
    Rollback,
    /// Keep the current weight, pause the rollout, raise an event.
    Pause,
}

/// One entry of `analysis.metrics:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricCheck {
    pub name: String,
    pub query: String,
}

/// `analysis.latency:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyCheck {}

/// The rules of `analysis.metrics`, `analysis.latency` and `on_failure`.
pub(super) fn validate(r: &super::RolloutConfig) -> anyhow::Result<()> {
    if !r.analysis.metrics.is_empty() {
        anyhow::bail!("analysis.metrics: not supported yet");
    }
    if r.analysis.latency.is_some() {
        anyhow::bail!("analysis.latency: not supported yet");
    }
    Ok(())
}
