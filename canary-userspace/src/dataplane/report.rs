//! Counter snapshots: what the data plane did, per service, version and
//! backend, with the observed canary share beside the set weight.

use crate::config::Version;
use crate::dataplane::DataPlane;
use anyhow::Result;
use canary_common::weight::WeightBp;
use canary_common::{reason, BackendStats, VersionStats, VERSION_CANARY, VERSION_STABLE};
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct BackendReport {
    pub addr: IpAddr,
    pub version: Version,
    pub id: u32,
    pub stats: BackendStats,
    /// A former stable backend of a finished release (`rollout finish`):
    /// counted while its open connections last, no new ones.
    pub draining: bool,
}

#[derive(Debug, Clone)]
pub struct ServiceReport {
    pub name: String,
    pub id: u32,
    pub weight_bp: u32,
    pub stable: VersionStats,
    pub canary: VersionStats,
    pub backends: Vec<BackendReport>,
}

impl ServiceReport {
    /// Canary share of the new flows counted so far, if any.
    pub fn observed_canary_share(&self) -> Option<f64> {
        let total = self.stable.new_flows + self.canary.new_flows;
        (total > 0).then(|| self.canary.new_flows as f64 / total as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub services: Vec<ServiceReport>,
    pub datapath: [u64; reason::COUNT as usize],
}

pub fn snapshot(dp: &DataPlane) -> Result<Snapshot> {
    let mut services = Vec::new();
    if let Some(config) = dp.applied() {
        for s in &config.services {
            let Some(&id) = dp.ids().services.get(&s.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for v in [Version::Stable, Version::Canary] {
                for addr in s.pool(v) {
                    if let Some(&bid) = dp.ids().backends.get(&(id, *addr)) {
                        backends.push(BackendReport {
                            addr: *addr,
                            version: v,
                            id: bid,
                            stats: dp.maps.backend_stats(bid)?,
                            draining: false,
                        });
                    }
                }
            }
            // Listed as stable: their flows and replies count there.
            for addr in s
                .draining
                .iter()
                .filter(|a| !s.stable.contains(a) && !s.canary.contains(a))
            {
                if let Some(&bid) = dp.ids().backends.get(&(id, *addr)) {
                    backends.push(BackendReport {
                        addr: *addr,
                        version: Version::Stable,
                        id: bid,
                        stats: dp.maps.backend_stats(bid)?,
                        draining: true,
                    });
                }
            }
            services.push(ServiceReport {
                name: s.name.clone(),
                id,
                weight_bp: s.weight_bp(),
                stable: dp.maps.version_stats(id, VERSION_STABLE)?,
                canary: dp.maps.version_stats(id, VERSION_CANARY)?,
                backends,
            });
        }
    }
    Ok(Snapshot {
        services,
        datapath: dp.maps.datapath_stats()?,
    })
}

impl Snapshot {
    /// One line per service and one for the data path's other outcomes.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.services {
            let share = s
                .observed_canary_share()
                .map(|x| format!("{:.2}%", x * 100.0))
                .unwrap_or_else(|| "n/a".into());
            out.push(format!(
                "service {}: weight {}, observed canary share of new flows {} | stable: {} pkts {} bytes {} new flows | canary: {} pkts {} bytes {} new flows",
                s.name,
                WeightBp::from_bp(s.weight_bp),
                share,
                s.stable.packets,
                s.stable.bytes,
                s.stable.new_flows,
                s.canary.packets,
                s.canary.bytes,
                s.canary.new_flows
            ));
        }
        let others: Vec<String> = self
            .datapath
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| format!("{}={n}", reason::NAMES[i]))
            .collect();
        if !others.is_empty() {
            out.push(format!("data path: {}", others.join(" ")));
        }
        out
    }
}
