//! `rollout.cohorts:`: ordered source-network cohorts, each with its own
//! canary weight per step (listed first = gets the canary first).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    pub name: String,
    pub sources: Vec<IpNet>,
    /// Canary weight in percent at each of the plan's steps.
    pub steps: Vec<f64>,
}

/// The rules of `rollout.cohorts` for service `s`.
pub(super) fn validate(r: &super::RolloutConfig, _s: &super::ServiceConfig) -> anyhow::Result<()> {
    if !r.cohorts.is_empty() {
        anyhow::bail!("cohorts: not supported yet");
    }
    Ok(())
}
