//! What canaryd must not forget across a restart: changes made at run time
//! (canaryctl, the rollout engine) on top of the config file.
//!
//! The rule an operator can predict: a run-time change to a service's weight
//! or to one of its pools stays in force until the config file's own value
//! for that field changes (an edit of the file wins from then on).

use crate::config::{Config, ServiceConfig};
use crate::rollout::engine::Rollout;
use anyhow::{Context, Result};
use canary_common::weight::WeightBp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/canary";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightOverride {
    pub weight_bp: u32,
    /// Who set it ("canaryctl (uid 0)", "rollout").
    pub source: String,
    /// The file's weight when it was set: the override lapses once the file
    /// says something else.
    pub file_weight_bp: u32,
    /// The cohorts' weights by name, set by a rollout step with the weight
    /// (they lapse with it). None: cohorts off, as any other setter of the
    /// weight leaves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<BTreeMap<String, u32>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolOverride {
    pub pool: Vec<IpAddr>,
    pub file_pool: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceOverrides {
    #[serde(default)]
    pub weight: Option<WeightOverride>,
    #[serde(default)]
    pub stable: Option<PoolOverride>,
    #[serde(default)]
    pub canary: Option<PoolOverride>,
    /// Former stable backends of a finished release, still serving their
    /// open connections (see `daemon/finish.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<Vec<Drain>>,
}

/// One draining backend: it ends at `until_ms` (Unix time), later while
/// flow entries still name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub addr: IpAddr,
    pub until_ms: u64,
}

/// What `RuntimeState::effective` settled on.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The config to run (valid).
    pub config: Config,
    /// One line per run-time override dropped because the config it made
    /// with the file was invalid (service, field, and why): to be logged.
    pub dropped: Vec<String>,
}

/// A field a run-time override can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Weight,
    Stable,
    Canary,
}

impl Field {
    const ALL: [Field; 3] = [Field::Weight, Field::Stable, Field::Canary];

    fn get(self, o: &ServiceOverrides) -> bool {
        match self {
            Field::Weight => o.weight.is_some(),
            Field::Stable => o.stable.is_some(),
            Field::Canary => o.canary.is_some(),
        }
    }

    fn clear(self, o: &mut ServiceOverrides) {
        match self {
            Field::Weight => o.weight = None,
            Field::Stable => o.stable = None,
            Field::Canary => o.canary = None,
        }
    }

    fn apply(self, o: &ServiceOverrides, s: &mut ServiceConfig) {
        match self {
            Field::Weight => {
                if let Some(w) = &o.weight {
                    s.set_weight(WeightBp::from_bp(w.weight_bp));
                    s.set_cohort_weights(w.cohorts.as_ref());
                }
            }
            Field::Stable => {
                if let Some(p) = &o.stable {
                    s.stable = p.pool.clone();
                }
            }
            Field::Canary => {
                if let Some(p) = &o.canary {
                    s.canary = p.pool.clone();
                }
            }
        }
    }

    fn describe(self, o: &ServiceOverrides) -> String {
        let pool = |p: &Option<PoolOverride>| {
            let list: Vec<String> = p
                .iter()
                .flat_map(|p| p.pool.iter().map(|a| a.to_string()))
                .collect();
            format!("[{}]", list.join(", "))
        };
        match self {
            Field::Weight => format!(
                "canary weight {}",
                WeightBp::from_bp(o.weight.as_ref().map(|w| w.weight_bp).unwrap_or(0))
            ),
            Field::Stable => format!("stable pool {}", pool(&o.stable)),
            Field::Canary => format!("canary pool {}", pool(&o.canary)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeState {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceOverrides>,
    /// The latest rollout of each service: running, paused, or how it ended.
    #[serde(default)]
    pub rollouts: BTreeMap<String, Rollout>,
    /// Automatic and manual rollbacks so far, per service (a metric).
    #[serde(default)]
    pub rollbacks: BTreeMap<String, u64>,
    /// In a fleet: rollbacks made here that etcd does not have yet (cut
    /// off, or a write that did not land); made again on top of etcd's
    /// state and written when it can be. Saved: a restart keeps them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub fleet_pending_rollbacks: std::collections::BTreeSet<String>,
    /// Rollbacks that reset open canary connections (`on_rollback: reset`),
    /// per service: in a fleet every host resets when the count it applies
    /// grows, not only the host that decided.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub canary_resets: BTreeMap<String, u64>,
}

impl RuntimeState {
    /// A rollback of `service`, recorded: its rollout (if under way)
    /// aborted with `why`, one more rollback counted, and a run-time weight
    /// of 0 set by `source`.
    pub fn record_rollback(&mut self, service: &str, why: &str, source: &str, file_weight_bp: u32) {
        if let Some(r) = self.rollouts.get_mut(service) {
            if r.active() {
                r.abort(why.to_string());
            }
        }
        *self.rollbacks.entry(service.to_string()).or_default() += 1;
        // Cohorts off: everyone, staff too, at 0.
        self.services.entry(service.to_string()).or_default().weight = Some(WeightOverride {
            weight_bp: 0,
            source: source.to_string(),
            file_weight_bp,
            cohorts: None,
        });
    }

    pub fn path(state_dir: &Path, instance: &str) -> PathBuf {
        state_dir.join(format!("{instance}.state.json"))
    }

    /// The saved state, or an empty one when there is none yet. A file that
    /// does not parse, or whose values break an invariant the daemon relies
    /// on (a rollout step beyond its plan, a weight out of range), is an
    /// error naming the file and the field: one line, never a panic later.
    pub fn load(path: &Path) -> Result<RuntimeState> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RuntimeState::default())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading state file {}", path.display()))
            }
        };
        let state: RuntimeState = serde_json::from_slice(&bytes)
            .with_context(|| format!("state file {}", path.display()))?;
        state
            .check()
            .map_err(|e| anyhow::anyhow!("state file {}: {e}", path.display()))?;
        Ok(state)
    }

    /// The invariants of a loaded state, as `field: problem`.
    pub fn check(&self) -> std::result::Result<(), String> {
        let max = WeightBp::FULL.bp();
        for (name, o) in &self.services {
            if let Some(w) = &o.weight {
                let cohorts = w.cohorts.iter().flatten();
                for (field, bp) in [
                    ("weight_bp".to_string(), w.weight_bp),
                    ("file_weight_bp".to_string(), w.file_weight_bp),
                ]
                .into_iter()
                .chain(cohorts.map(|(c, bp)| (format!("cohorts.{c}"), *bp)))
                {
                    if bp > max {
                        return Err(format!(
                            "services.{name}.weight.{field}: {bp} is out of range (0 to {max})"
                        ));
                    }
                }
            }
        }
        for (name, r) in &self.rollouts {
            r.check().map_err(|e| format!("rollouts.{name}.{e}"))?;
        }
        Ok(())
    }

    /// Writes atomically (temp file + rename), so a crash leaves either the
    /// old or the new state, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// The config to run: the file plus the overrides that still hold.
    /// Overrides the file has since changed (or whose service is gone) are
    /// dropped from `self`. So are overrides that, merged with the file,
    /// would make the config invalid (the file alone is valid, so the result
    /// always is): service by service in file order, the largest set of a
    /// service's overrides that validates is kept (on a tie the weight is
    /// kept before the stable pool, the stable pool before the canary pool),
    /// and each dropped one gets a line in `Effective::dropped` for the
    /// caller to log.
    ///
    /// `host` is this host's addresses with their interfaces: a run-time
    /// pool holding one of them is dropped like any invalid override (a
    /// fleet passes none: its pools are the fleet's, the same on every
    /// host; see `daemon::effective_here`).
    pub fn effective(&mut self, file: &Config, host: &[(IpAddr, String)]) -> Effective {
        self.services
            .retain(|name, _| file.services.iter().any(|s| &s.name == name));
        self.rollouts
            .retain(|name, _| file.services.iter().any(|s| &s.name == name));
        // Overrides of a field the file has changed since lapse.
        for s in &file.services {
            let Some(o) = self.services.get_mut(&s.name) else {
                continue;
            };
            if o.weight
                .as_ref()
                .is_some_and(|w| w.file_weight_bp != s.weight_bp())
            {
                o.weight = None;
            }
            if o.stable.as_ref().is_some_and(|p| p.file_pool != s.stable) {
                o.stable = None;
            }
            if o.canary.as_ref().is_some_and(|p| p.file_pool != s.canary) {
                o.canary = None;
            }
        }
        let mut out = file.clone();
        let mut dropped = Vec::new();
        for i in 0..out.services.len() {
            let name = out.services[i].name.clone();
            let Some(o) = self.services.get_mut(&name) else {
                continue;
            };
            let present: Vec<Field> = Field::ALL.into_iter().filter(|f| f.get(o)).collect();
            // Subsets of the present overrides, largest first; among equal
            // sizes the one keeping the earlier fields first.
            let n = present.len();
            let mut masks: Vec<u32> = (0..(1u32 << n)).collect();
            masks.sort_by_key(|m| {
                let keep_order: Vec<bool> = (0..n).map(|b| m & (1 << b) == 0).collect();
                (std::cmp::Reverse(m.count_ones()), keep_order)
            });
            let attempt = |mask: u32| -> std::result::Result<Config, String> {
                let mut c = out.clone();
                for (b, f) in present.iter().enumerate() {
                    if mask & (1 << b) != 0 {
                        f.apply(o, &mut c.services[i]);
                    }
                }
                c.validate()
                    .and_then(|()| c.check_service_not_on_host(i, host))
                    .map(|()| c)
                    .map_err(|e| format!("{e:#}"))
            };
            let full = (1u32 << n) - 1;
            let mut chosen = None;
            for &m in &masks {
                if let Ok(c) = attempt(m) {
                    chosen = Some((m, c));
                    break;
                }
            }
            // The empty set is the file's own service: it validates (its
            // backends were checked against this host's addresses before,
            // blaming the file).
            let (mask, config) = chosen.unwrap_or_else(|| (0, out.clone()));
            for (b, f) in present.iter().enumerate() {
                if mask & (1 << b) != 0 {
                    continue;
                }
                let why = attempt(mask | (1 << b))
                    .err()
                    .or_else(|| attempt(full).err())
                    .unwrap_or_default();
                dropped.push(format!(
                    "service {name}: run-time {} dropped: with the config file it is invalid: {why}",
                    f.describe(o)
                ));
            }
            for (b, f) in present.iter().enumerate() {
                if mask & (1 << b) == 0 {
                    f.clear(o);
                }
            }
            out = config;
        }
        dropped.extend(super::finish::settle_drains(&mut self.services, &mut out));
        self.services.retain(|_, o| {
            o.weight.is_some() || o.stable.is_some() || o.canary.is_some() || o.draining.is_some()
        });
        Effective {
            config: out,
            dropped,
        }
    }

    /// Where the weight of `service` comes from, for status.
    pub fn weight_source(&self, service: &str) -> String {
        self.services
            .get(service)
            .and_then(|o| o.weight.as_ref())
            .map(|w| w.source.clone())
            .unwrap_or_else(|| "config".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    canary_weight: 10
    stable: [198.18.1.2, 198.18.2.2]
    canary: [198.18.3.2]
"#;

    #[test]
    fn override_holds_until_the_file_changes_that_field() {
        let file = Config::parse(FILE).unwrap();
        let mut st = RuntimeState::default();
        st.services.insert(
            "shop".into(),
            ServiceOverrides {
                weight: Some(WeightOverride {
                    weight_bp: 3000,
                    source: "canaryctl (uid 0)".into(),
                    file_weight_bp: 1000,
                    cohorts: None,
                }),
                stable: Some(PoolOverride {
                    pool: vec!["198.18.1.2".parse().unwrap()],
                    file_pool: file.services[0].stable.clone(),
                }),
                canary: None,
                draining: None,
            },
        );
        let eff = st.effective(&file, &[]).config;
        assert_eq!(eff.services[0].weight_bp(), 3000);
        assert_eq!(eff.services[0].stable.len(), 1);
        assert_eq!(st.weight_source("shop"), "canaryctl (uid 0)");

        // The file's weight is edited: the file wins, the pool override stays.
        let edited =
            Config::parse(&FILE.replace("canary_weight: 10", "canary_weight: 20")).unwrap();
        let eff = st.effective(&edited, &[]).config;
        assert_eq!(eff.services[0].weight_bp(), 2000);
        assert_eq!(eff.services[0].stable.len(), 1);
        assert_eq!(st.weight_source("shop"), "config");
    }

    fn canary_pool_override(pool: &[&str], file: &Config) -> PoolOverride {
        PoolOverride {
            pool: pool.iter().map(|a| a.parse().unwrap()).collect(),
            file_pool: file.services[0].canary.clone(),
        }
    }

    #[test]
    fn an_override_the_file_no_longer_fits_is_dropped_with_a_line() {
        // At run time: weight 0 (file 0), then the canary pool emptied. The
        // file then says 10 %: the weight override lapses, and the empty
        // pool with the file's 10 % is invalid: dropped, the file runs.
        let zero = Config::parse(&FILE.replace("canary_weight: 10", "canary_weight: 0")).unwrap();
        let file = Config::parse(FILE).unwrap();
        let mut st = RuntimeState::default();
        st.services.insert(
            "shop".into(),
            ServiceOverrides {
                weight: Some(WeightOverride {
                    weight_bp: 0,
                    source: "canaryctl (uid 0)".into(),
                    file_weight_bp: 0,
                    cohorts: None,
                }),
                stable: None,
                canary: Some(canary_pool_override(&[], &zero)),
                draining: None,
            },
        );
        let eff = st.effective(&file, &[]);
        assert_eq!(eff.config, file);
        assert_eq!(eff.dropped.len(), 1, "{:?}", eff.dropped);
        assert!(
            eff.dropped[0].starts_with("service shop: run-time canary pool [] dropped: "),
            "{}",
            eff.dropped[0]
        );
        assert!(
            eff.dropped[0].contains("canary pool is empty"),
            "{}",
            eff.dropped[0]
        );
        assert!(st.services.is_empty(), "{st:?}");
    }

    #[test]
    fn the_largest_valid_set_of_overrides_is_kept_weight_first() {
        // Weight 30 % and canary pool [] both still hold against the file,
        // but not together: the weight is kept, the pool dropped.
        let file = Config::parse(FILE).unwrap();
        let mut st = RuntimeState::default();
        st.services.insert(
            "shop".into(),
            ServiceOverrides {
                weight: Some(WeightOverride {
                    weight_bp: 3000,
                    source: "rollout".into(),
                    file_weight_bp: 1000,
                    cohorts: None,
                }),
                stable: Some(PoolOverride {
                    pool: vec!["198.18.1.2".parse().unwrap()],
                    file_pool: file.services[0].stable.clone(),
                }),
                canary: Some(canary_pool_override(&[], &file)),
                draining: None,
            },
        );
        let eff = st.effective(&file, &[]);
        eff.config.validate().unwrap();
        assert_eq!(eff.config.services[0].weight_bp(), 3000);
        assert_eq!(eff.config.services[0].stable.len(), 1);
        assert_eq!(eff.config.services[0].canary, file.services[0].canary);
        assert_eq!(eff.dropped.len(), 1, "{:?}", eff.dropped);
        assert!(eff.dropped[0].contains("run-time canary pool [] dropped"));
        let o = &st.services["shop"];
        assert!(o.weight.is_some() && o.stable.is_some() && o.canary.is_none());
        // Deterministic: the same again gives the same, and drops nothing more.
        let again = st.effective(&file, &[]);
        assert_eq!(again.config, eff.config);
        assert!(again.dropped.is_empty());
    }

    #[test]
    fn load_refuses_state_the_engine_would_panic_on() {
        let dir = std::env::temp_dir().join(format!("canary-state-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = RuntimeState::path(&dir, "x");
        let window =
            serde_json::to_value(crate::rollout::analysis::WindowCounts::default()).unwrap();
        let rollout = |steps: serde_json::Value, step: u64| {
            serde_json::json!({"rollouts": {"shop": {
                "phase": "running", "steps": steps, "interval_ms": 1000, "step": step,
                "step_elapsed_ms": 0, "window": window, "last": null, "reason": null,
                "history": []}}})
        };
        let cases = [
            (
                rollout(serde_json::json!([5, 10, 20, 50, 80, 100]), 7),
                "rollouts.shop.step: 7 is beyond the plan's 6 steps".to_string(),
            ),
            (
                rollout(serde_json::json!([]), 0),
                "rollouts.shop.steps: the plan is empty".to_string(),
            ),
            (
                serde_json::json!({"services": {"shop": {"weight": {
                    "weight_bp": 20000, "source": "x", "file_weight_bp": 0}}}}),
                "services.shop.weight.weight_bp: 20000 is out of range (0 to 10000)".to_string(),
            ),
        ];
        for (json, field) in cases {
            std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
            let err = format!("{:#}", RuntimeState::load(&path).unwrap_err());
            assert_eq!(err, format!("state file {}: {field}", path.display()));
        }
        std::fs::write(&path, b"{not json").unwrap();
        let err = format!("{:#}", RuntimeState::load(&path).unwrap_err());
        assert!(
            err.starts_with(&format!("state file {}: ", path.display())),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("canary-state-test-{}", std::process::id()));
        let path = RuntimeState::path(&dir, "t");
        let mut st = RuntimeState::default();
        st.services
            .insert("shop".into(), ServiceOverrides::default());
        st.save(&path).unwrap();
        assert_eq!(RuntimeState::load(&path).unwrap(), st);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(RuntimeState::load(&path).unwrap(), RuntimeState::default());
    }
}
