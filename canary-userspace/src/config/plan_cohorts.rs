//! `rollout.cohorts:`: ordered source-network cohorts, each with its own
//! canary weight per step (listed first = gets the canary first). Clients in
//! no cohort ("everyone") follow `rollout.steps`.
//!
//! In the data plane a cohort's source is an `OVERRIDES` entry whose value
//! carries the cohort's index and its weight now (`canary_common::split::
//! cohort_value`); the service entry's `SVC_COHORTS_LIVE` bit says whether
//! those weights apply. No map of its own: one LPM lookup as before.

use super::{ServiceConfig, Strategy, Version};
use anyhow::{bail, Context, Result};
use canary_common::weight::WeightBp;
use canary_common::{cohort_value, forced_value, MAX_COHORTS, SVC_COHORTS_LIVE, SVC_PREFIXES};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The name of the clients in no cohort (reserved).
pub const EVERYONE: &str = "everyone";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    pub name: String,
    pub sources: Vec<IpNet>,
    /// Canary weight in percent at each of the plan's steps.
    pub steps: Vec<f64>,
    /// The weight in force now (basis points), set at run time from the
    /// rollout's step (`ServiceConfig::set_cohort_weights`); None: cohorts
    /// are off and its clients follow the service's weight.
    #[serde(skip)]
    pub live_bp: Option<u32>,
}

/// The rules of `rollout.cohorts` for service `s`.
pub(super) fn validate(r: &super::RolloutConfig, s: &ServiceConfig) -> Result<()> {
    if r.cohorts.is_empty() {
        return Ok(());
    }
    if r.strategy != Strategy::Fixed {
        bail!("cohorts: only with strategy: fixed (an adaptive plan picks its own weights)");
    }
    if r.cohorts.len() > MAX_COHORTS {
        bail!(
            "cohorts: {} cohorts, at most {MAX_COHORTS}",
            r.cohorts.len()
        );
    }
    // Every prefix of the service's LPM entries and what holds it.
    let mut owner: HashMap<IpNet, String> = HashMap::new();
    for (j, o) in s.overrides.iter().enumerate() {
        owner.insert(o.cidr, format!("overrides[{j}]"));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (k, c) in r.cohorts.iter().enumerate() {
        let at = format!("cohorts[{k}]");
        if !super::validate::plain_name(&c.name, 32, &[]) {
            bail!(
                "{at}.name: {:?} must be 1 to 32 letters, digits, '-' or '_'",
                c.name
            );
        }
        if c.name == EVERYONE {
            bail!("{at}.name: {EVERYONE:?} is reserved for the clients in no cohort (they follow steps)");
        }
        if let Some(first) = names.insert(c.name.as_str(), k) {
            bail!("{at}.name: {:?} is already cohorts[{first}]'s name", c.name);
        }
        if c.sources.is_empty() {
            bail!("{at}.sources: a cohort needs at least one source network");
        }
        for (j, net) in c.sources.iter().enumerate() {
            let field = format!("{at}.sources[{j}]");
            if net.addr().is_ipv4() != s.vip.is_ipv4() {
                bail!(
                    "{field}: {net} is not the same address family as the VIP {}",
                    s.vip
                );
            }
            if net.trunc() != *net {
                bail!(
                    "{field}: {net} has host bits set (did you mean {}?)",
                    net.trunc()
                );
            }
            if let Some(other) = owner.insert(*net, field.clone()) {
                bail!("{field}: {net} is already {other} (a prefix decides one way)");
            }
        }
        if c.steps.len() != r.steps.len() {
            bail!(
                "{at}.steps: {} weights, but the plan has {} steps (one weight per step)",
                c.steps.len(),
                r.steps.len()
            );
        }
        for (i, w) in c.steps.iter().enumerate() {
            let field = format!("{at}.steps[{i}]");
            WeightBp::from_percent(*w).with_context(|| field.clone())?;
            if i > 0 && *w < c.steps[i - 1] {
                bail!(
                    "{field}: {w} is below the step before ({}); a cohort's weight never falls",
                    c.steps[i - 1]
                );
            }
            if *w < r.steps[i] {
                bail!(
                    "{field}: {w} is below steps[{i}] ({}); a cohort gets the canary no later than everyone",
                    r.steps[i]
                );
            }
            if k > 0 && *w > r.cohorts[k - 1].steps[i] {
                bail!(
                    "{field}: {w} is above cohorts[{}] ({})'s {}; a cohort listed first gets the canary first",
                    k - 1,
                    r.cohorts[k - 1].name,
                    r.cohorts[k - 1].steps[i]
                );
            }
        }
        if c.live_bp.is_some_and(|bp| bp > 0) && s.canary.is_empty() {
            bail!(
                "{at}: a live weight of {} but the canary pool is empty",
                WeightBp::from_bp(c.live_bp.unwrap_or(0))
            );
        }
    }
    Ok(())
}

impl ServiceConfig {
    /// The plan's cohorts (none without a plan).
    pub fn cohorts(&self) -> &[CohortConfig] {
        self.rollout.as_ref().map_or(&[], |r| &r.cohorts)
    }

    /// Sets the live cohort weights by name (`None`: cohorts off); call it
    /// after the weight. A name the config has no cohort of is ignored; a
    /// cohort the map does not name (added to the file while a rollout
    /// runs) follows everyone's weight.
    pub fn set_cohort_weights(&mut self, weights: Option<&BTreeMap<String, u32>>) {
        let everyone = self.weight_bp();
        if let Some(r) = self.rollout.as_mut() {
            for c in &mut r.cohorts {
                c.live_bp = weights.map(|w| w.get(&c.name).copied().unwrap_or(everyone));
            }
        }
    }

    /// Do the cohorts' own weights apply now?
    pub fn cohorts_live(&self) -> bool {
        self.cohorts().iter().any(|c| c.live_bp.is_some())
    }

    /// The live cohort weights by name (None: cohorts off).
    pub fn cohort_weights(&self) -> Option<BTreeMap<String, u32>> {
        self.cohorts_live().then(|| {
            self.cohorts()
                .iter()
                .map(|c| (c.name.clone(), c.live_bp.unwrap_or(0)))
                .collect()
        })
    }

    /// Every `OVERRIDES` entry of the service: each plain override with
    /// its forced version, each cohort source with its cohort's index and
    /// live weight (0 while cohorts are off).
    pub fn lpm_entries(&self) -> Vec<(IpNet, u32)> {
        let mut out: Vec<(IpNet, u32)> = self
            .overrides
            .iter()
            .map(|o| {
                // A finished release keeps its canary overrides: stable
                // until a canary backend is added (an empty pool drops).
                let v = if o.version == Version::Canary && self.canary.is_empty() {
                    Version::Stable
                } else {
                    o.version
                };
                (o.cidr, forced_value(v.index()))
            })
            .collect();
        for (k, c) in self.cohorts().iter().enumerate() {
            let value = cohort_value(k as u32, c.live_bp.unwrap_or(0));
            out.extend(c.sources.iter().map(|n| (*n, value)));
        }
        out
    }

    /// `ServiceState::has_overrides` for this service.
    pub fn override_flags(&self) -> u32 {
        let prefixes = !self.overrides.is_empty() || !self.cohorts().is_empty();
        let mut flags = if prefixes { SVC_PREFIXES } else { 0 };
        if self.cohorts_live() {
            flags |= SVC_COHORTS_LIVE;
        }
        flags
    }

    /// For status: "staff 100.00%, beta 25.00%, everyone 5.00%", or
    /// "off (...)"; None without cohorts.
    pub fn cohorts_line(&self) -> Option<String> {
        if self.cohorts().is_empty() {
            return None;
        }
        if !self.cohorts_live() {
            return Some(format!(
                "off (every client follows the canary weight {})",
                self.weight()
            ));
        }
        let mut parts: Vec<String> = self
            .cohorts()
            .iter()
            .map(|c| format!("{} {}", c.name, WeightBp::from_bp(c.live_bp.unwrap_or(0))))
            .collect();
        parts.push(format!("{EVERYONE} {}", self.weight()));
        Some(parts.join(", "))
    }

    /// The cohort a client belongs to (the longest prefix among the
    /// cohorts' sources), with that prefix.
    pub fn cohort_of(&self, client: std::net::IpAddr) -> Option<(usize, IpNet)> {
        self.cohorts()
            .iter()
            .enumerate()
            .flat_map(|(k, c)| c.sources.iter().map(move |n| (k, *n)))
            .filter(|(_, n)| n.contains(&client))
            .max_by_key(|(_, n)| n.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    stable: [198.18.1.2]
    canary: [198.18.3.2]
    overrides:
      - {cidr: 198.18.30.0/24, version: stable}
    rollout:
      steps: [5, 50, 100]
      interval: 1s
      cohorts:
"#;

    fn with(cohorts: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{cohorts}")).map_err(|e| format!("{e:#}"))
    }

    fn refused(cohorts: &str, want: &str) {
        let err = with(cohorts).expect_err(cohorts);
        assert!(err.contains(want), "{err}\nwanted: {want}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn a_valid_plan_with_two_cohorts() {
        let c = with(
            "        - {name: staff, sources: [198.18.20.0/24], steps: [100, 100, 100]}\n\
             \x20       - {name: beta, sources: [198.18.21.0/24, 198.18.22.0/23], steps: [5, 50, 100]}\n",
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.cohorts().len(), 2);
        assert!(!s.cohorts_live());
        // Off: one entry per prefix, the cohorts at weight 0, no live bit.
        assert_eq!(s.lpm_entries().len(), 4);
        assert_eq!(s.override_flags(), canary_common::SVC_PREFIXES);
        assert_eq!(
            s.cohort_of("198.18.20.7".parse().unwrap()).map(|(k, _)| k),
            Some(0)
        );
        assert_eq!(s.cohort_of("198.18.17.1".parse().unwrap()), None);
    }

    #[test]
    fn each_rule_names_its_field() {
        let staff = "        - {name: staff, sources: [198.18.20.0/24], steps: [100, 100, 100]}\n";
        let cases = [
            (
                format!("{staff}        - {{name: staff, sources: [198.18.21.0/24], steps: [5, 50, 100]}}\n"),
                "cohorts[1].name: \"staff\" is already cohorts[0]'s name",
            ),
            (
                "        - {name: everyone, sources: [198.18.21.0/24], steps: [5, 50, 100]}\n".into(),
                "cohorts[0].name: \"everyone\" is reserved",
            ),
            (
                "        - {name: 'a b', sources: [198.18.21.0/24], steps: [5, 50, 100]}\n".into(),
                "cohorts[0].name: \"a b\" must be 1 to 32 letters",
            ),
            (
                "        - {name: staff, sources: [], steps: [5, 50, 100]}\n".into(),
                "cohorts[0].sources: a cohort needs at least one source network",
            ),
            (
                "        - {name: staff, sources: ['2001:db8::/48'], steps: [5, 50, 100]}\n".into(),
                "cohorts[0].sources[0]: 2001:db8::/48 is not the same address family as the VIP",
            ),
            (
                "        - {name: staff, sources: [198.18.20.1/24], steps: [5, 50, 100]}\n".into(),
                "cohorts[0].sources[0]: 198.18.20.1/24 has host bits set (did you mean 198.18.20.0/24?)",
            ),
            (
                "        - {name: staff, sources: [198.18.30.0/24], steps: [5, 50, 100]}\n".into(),
                "cohorts[0].sources[0]: 198.18.30.0/24 is already overrides[0]",
            ),
            (
                format!("{staff}        - {{name: beta, sources: [198.18.20.0/24], steps: [5, 50, 100]}}\n"),
                "cohorts[1].sources[0]: 198.18.20.0/24 is already cohorts[0].sources[0]",
            ),
            (
                "        - {name: staff, sources: [198.18.20.0/24], steps: [100, 100]}\n".into(),
                "cohorts[0].steps: 2 weights, but the plan has 3 steps",
            ),
            (
                "        - {name: staff, sources: [198.18.20.0/24], steps: [100, 60, 100]}\n".into(),
                "cohorts[0].steps[1]: 60 is below the step before (100)",
            ),
            (
                "        - {name: staff, sources: [198.18.20.0/24], steps: [1, 50, 100]}\n".into(),
                "cohorts[0].steps[0]: 1 is below steps[0] (5)",
            ),
            (
                "        - {name: staff, sources: [198.18.20.0/24], steps: [5, 150, 150]}\n".into(),
                "cohorts[0].steps[1]",
            ),
            (
                format!("        - {{name: beta, sources: [198.18.21.0/24], steps: [5, 50, 100]}}\n{}",
                    staff.replace("[100, 100, 100]", "[10, 60, 100]")),
                "cohorts[1].steps[0]: 10 is above cohorts[0] (beta)'s 5; a cohort listed first gets the canary first",
            ),
        ];
        for (yaml, want) in cases {
            refused(&yaml, want);
        }
    }

    #[test]
    fn only_with_a_fixed_plan() {
        let yaml = format!(
            "{}        - {{name: staff, sources: [198.18.20.0/24], steps: []}}\n",
            BASE.replace(
                "steps: [5, 50, 100]",
                "strategy: adaptive\n      adaptive: {budget: [200, 2000]}\n      \
                 analysis: {max_error_ratio: 0.05}"
            )
        );
        let err = format!("{:#}", Config::parse(&yaml).unwrap_err());
        assert!(
            err.ends_with(
                "rollout: cohorts: only with strategy: fixed (an adaptive plan picks its own weights)"
            ),
            "{err}"
        );
    }

    #[test]
    fn live_weights_make_the_values_and_the_bit() {
        let mut c =
            with("        - {name: staff, sources: [198.18.20.0/24], steps: [100, 100, 100]}\n")
                .unwrap();
        let s = &mut c.services[0];
        // A cohort the weights do not name follows everyone's.
        s.set_weight(canary_common::weight::WeightBp::from_bp(700));
        s.set_cohort_weights(Some(&Default::default()));
        assert_eq!(s.cohorts()[0].live_bp, Some(700));
        s.set_weight(canary_common::weight::WeightBp::ZERO);
        assert!(
            !s.cohorts_live(),
            "setting the weight alone turns cohorts off"
        );
        let w: std::collections::BTreeMap<String, u32> =
            [("staff".to_string(), 10_000), ("gone".to_string(), 500)].into();
        s.set_cohort_weights(Some(&w));
        assert!(s.cohorts_live());
        assert_eq!(
            s.override_flags(),
            canary_common::SVC_PREFIXES | canary_common::SVC_COHORTS_LIVE
        );
        let staff: ipnet::IpNet = "198.18.20.0/24".parse().unwrap();
        let v = s
            .lpm_entries()
            .into_iter()
            .find(|(n, _)| *n == staff)
            .unwrap()
            .1;
        assert_eq!(canary_common::cohort_of(v), Some((0, 10_000)));
        assert_eq!(s.cohorts_line().unwrap(), "staff 100.00%, everyone 0.00%");
        // A live weight with an empty canary pool is refused.
        s.canary.clear();
        let err = format!("{:#}", c.validate().unwrap_err());
        assert!(
            err.contains("cohorts[0]: a live weight of 100.00% but the canary pool is empty"),
            "{err}"
        );
        let s = &mut c.services[0];
        s.set_cohort_weights(None);
        assert!(!s.cohorts_live());
        assert!(s.cohorts_line().unwrap().starts_with("off (every client"));
        c.validate().unwrap();
    }
}
