//! What canaryd must not forget across a restart: changes made at run time
//! (canaryctl, the rollout engine) on top of the config file.
//!
//! The rule an operator can predict: a run-time change to a service's weight
//! or to one of its pools stays in force until the config file's own value
//! for that field changes (an edit of the file wins from then on).

use crate::config::{Config, Version};
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
}

impl RuntimeState {
    pub fn path(state_dir: &Path, instance: &str) -> PathBuf {
        state_dir.join(format!("{instance}.state.json"))
    }

    /// The saved state, or an empty one when there is none yet.
    pub fn load(path: &Path) -> Result<RuntimeState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading state file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RuntimeState::default()),
            Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
        }
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
    /// dropped from `self`.
    pub fn effective(&mut self, file: &Config) -> Config {
        let mut out = file.clone();
        self.services
            .retain(|name, _| file.services.iter().any(|s| &s.name == name));
        self.rollouts
            .retain(|name, _| file.services.iter().any(|s| &s.name == name));
        for s in out.services.iter_mut() {
            let Some(o) = self.services.get_mut(&s.name) else {
                continue;
            };
            let file_bp = s.weight_bp();
            match &o.weight {
                Some(w) if w.file_weight_bp == file_bp => {
                    s.set_weight(WeightBp::from_bp(w.weight_bp))
                }
                Some(_) => o.weight = None,
                None => {}
            }
            for v in [Version::Stable, Version::Canary] {
                let slot = match v {
                    Version::Stable => &mut o.stable,
                    Version::Canary => &mut o.canary,
                };
                let file_pool = match v {
                    Version::Stable => &s.stable,
                    Version::Canary => &s.canary,
                };
                match slot {
                    Some(p) if &p.file_pool == file_pool => {
                        let pool = p.pool.clone();
                        match v {
                            Version::Stable => s.stable = pool,
                            Version::Canary => s.canary = pool,
                        }
                    }
                    Some(_) => *slot = None,
                    None => {}
                }
            }
        }
        self.services
            .retain(|_, o| o.weight.is_some() || o.stable.is_some() || o.canary.is_some());
        out
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
                }),
                stable: Some(PoolOverride {
                    pool: vec!["198.18.1.2".parse().unwrap()],
                    file_pool: file.services[0].stable.clone(),
                }),
                canary: None,
            },
        );
        let eff = st.effective(&file);
        assert_eq!(eff.services[0].weight_bp(), 3000);
        assert_eq!(eff.services[0].stable.len(), 1);
        assert_eq!(st.weight_source("shop"), "canaryctl (uid 0)");

        // The file's weight is edited: the file wins, the pool override stays.
        let edited =
            Config::parse(&FILE.replace("canary_weight: 10", "canary_weight: 20")).unwrap();
        let eff = st.effective(&edited);
        assert_eq!(eff.services[0].weight_bp(), 2000);
        assert_eq!(eff.services[0].stable.len(), 1);
        assert_eq!(st.weight_source("shop"), "config");
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
