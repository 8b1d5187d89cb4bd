//! Cohorts in the daemon: a rollout step sets the cohorts' weights with the
//! canary weight (`WeightOverride::cohorts`, one commit); everything else
//! that sets the weight (an operator, promote, a rollback, a finish) turns
//! them off (`ServiceConfig::set_weight`).

use super::state::ServiceOverrides;
use canary_common::weight::WeightBp;
use std::collections::BTreeMap;

/// ", cohorts staff 100.00%, beta 25.00%" for a step's log line and event.
pub(super) fn step_note(cohorts: Option<&BTreeMap<String, u32>>) -> String {
    match cohorts {
        Some(c) if !c.is_empty() => {
            let parts: Vec<String> = c
                .iter()
                .map(|(name, bp)| format!("{name} {}", WeightBp::from_bp(*bp)))
                .collect();
            format!(", cohorts {}", parts.join(", "))
        }
        _ => String::new(),
    }
}

/// Does this run-time state send some new connections to the canary: a
/// weight above 0 (`file` when there is no run-time weight), or a live
/// cohort above 0?
pub(super) fn exposes(o: Option<&ServiceOverrides>, file: WeightBp) -> bool {
    let w = o.and_then(|o| o.weight.as_ref());
    let weight = w.map_or(file, |w| WeightBp::from_bp(w.weight_bp));
    let cohort = w
        .and_then(|w| w.cohorts.as_ref())
        .is_some_and(|c| c.values().any(|bp| *bp > 0));
    weight > WeightBp::ZERO || cohort
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::daemon::state::{RuntimeState, WeightOverride};

    const FILE: &str = r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    stable: [198.18.1.2]
    canary: [198.18.3.2]
    rollout:
      steps: [5, 100]
      interval: 1s
      cohorts:
        - {name: staff, sources: [198.18.20.0/24], steps: [100, 100]}
"#;

    fn step(weight_bp: u32, staff: u32, file_weight_bp: u32) -> WeightOverride {
        WeightOverride {
            weight_bp,
            source: "rollout".into(),
            file_weight_bp,
            cohorts: Some([("staff".to_string(), staff)].into()),
        }
    }

    #[test]
    fn a_step_makes_them_live_and_they_lapse_with_the_weight() {
        let file = Config::parse(FILE).unwrap();
        let mut st = RuntimeState::default();
        st.services.entry("shop".into()).or_default().weight = Some(step(500, 10_000, 0));
        let eff = st.effective(&file, &[]).config;
        let s = &eff.services[0];
        assert_eq!(s.weight_bp(), 500);
        assert_eq!(s.cohorts()[0].live_bp, Some(10_000));
        assert!(s.cohorts_live());
        // The saved state round-trips the cohorts.
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"cohorts\":{\"staff\":10000}"), "{json}");
        assert_eq!(serde_json::from_str::<RuntimeState>(&json).unwrap(), st);
        // An older state file (no cohorts field) loads with cohorts off.
        let old = json.replace(",\"cohorts\":{\"staff\":10000}", "");
        let old: RuntimeState = serde_json::from_str(&old).unwrap();
        assert_eq!(old.services["shop"].weight.as_ref().unwrap().cohorts, None);

        // The file's weight is edited: the weight override lapses, and the
        // cohorts with it.
        let edited = Config::parse(&FILE.replace(
            "canary: [198.18.3.2]",
            "canary: [198.18.3.2]\n    canary_weight: 1",
        ))
        .unwrap();
        let eff = st.effective(&edited, &[]).config;
        assert_eq!(eff.services[0].weight_bp(), 100);
        assert!(!eff.services[0].cohorts_live());
    }

    #[test]
    fn a_rollback_turns_them_off() {
        let file = Config::parse(FILE).unwrap();
        let mut st = RuntimeState::default();
        st.services.entry("shop".into()).or_default().weight = Some(step(500, 10_000, 0));
        assert!(exposes(st.services.get("shop"), WeightBp::ZERO));
        st.record_rollback("shop", "test", "rolled back", 0);
        let w = st.services["shop"].weight.clone().unwrap();
        assert_eq!((w.weight_bp, w.cohorts), (0, None));
        let eff = st.effective(&file, &[]).config;
        assert!(!eff.services[0].cohorts_live());
        assert_eq!(
            eff.services[0].override_flags(),
            canary_common::SVC_PREFIXES,
            "the live bit is clear"
        );
        assert!(!exposes(st.services.get("shop"), WeightBp::ZERO));
        // Everyone at 0 but staff at 100 still exposes the canary.
        st.services.get_mut("shop").unwrap().weight = Some(step(0, 10_000, 0));
        assert!(exposes(st.services.get("shop"), WeightBp::ZERO));
        // No run-time weight: the file's.
        assert!(exposes(None, WeightBp::from_bp(1)));
        assert!(!exposes(None, WeightBp::ZERO));
    }

    #[test]
    fn a_rollout_freezes_its_cohorts() {
        use crate::rollout::engine::Rollout;
        let file = Config::parse(FILE).unwrap();
        let plan = file.services[0].rollout.clone().unwrap();
        let (r, _) = Rollout::start(&plan);
        assert_eq!(r.cohorts, vec![("staff".to_string(), vec![100.0, 100.0])]);
        let want: BTreeMap<String, u32> = [("staff".to_string(), 10_000)].into();
        assert_eq!(r.cohort_weights(), Some(want));
        // Saved and read back; a state file from before cohorts has none.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<Rollout>(json.clone()).unwrap(), r);
        let mut old = json;
        old.as_object_mut().unwrap().remove("cohorts");
        let old: Rollout = serde_json::from_value(old).unwrap();
        assert_eq!(old.cohort_weights(), None);
        // A plan without cohorts: None (the step turns them off).
        let mut bare = plan.clone();
        bare.cohorts.clear();
        assert_eq!(Rollout::start(&bare).0.cohort_weights(), None);
    }

    #[test]
    fn the_step_note() {
        assert_eq!(step_note(None), "");
        let c: BTreeMap<String, u32> =
            [("beta".to_string(), 2500), ("staff".to_string(), 10_000)].into();
        assert_eq!(step_note(Some(&c)), ", cohorts beta 25.00%, staff 100.00%");
    }
}
