//! Watching a rollout of the one-service configs the rollout tests use
//! (service `shop`, id 0): the weight in the map, the time until a rollback
//! sets it to 0, and the rollout's end as status reports it.

use crate::Topology;
use anyhow::{bail, Context, Result};
use canary_userspace::control::api::ServiceStatus;
use canary_userspace::dataplane::maps::Maps;
use std::time::{Duration, Instant};

/// The canary weight of service id 0 in the `SERVICES` map.
pub fn weight_bp(maps: &Maps) -> Result<u32> {
    Ok(maps.services.get(&0, 0)?.weight_bp)
}

/// Time from now (just after a fault was switched on) until the canary
/// weight in the map is 0, polled every 5 ms; after `limit`, an error with
/// the service's status.
pub fn time_to_weight_zero(
    topo: &Topology,
    maps: &Maps,
    limit: Duration,
    fault: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    while weight_bp(maps)? != 0 {
        if t0.elapsed() > limit {
            bail!(
                "{fault}: no rollback {limit:?} after the fault: {:#?}",
                topo.service_status("shop")?
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t0.elapsed())
}

/// Polls status until the rollout is promoted or aborted (or `limit`
/// passes); returns the final status and the steps seen on the way.
pub fn wait_rollout_end(topo: &Topology, limit: Duration) -> Result<(ServiceStatus, Vec<usize>)> {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let s = topo.service_status("shop")?;
        let r = s.rollout.as_ref().context("no rollout in status")?;
        if seen.last() != Some(&r.step) {
            seen.push(r.step);
        }
        if r.phase == "promoted" || r.phase == "aborted" {
            return Ok((s, seen));
        }
        if Instant::now() > end {
            bail!(
                "rollout still {} at step {} after {limit:?}: {r:#?}",
                r.phase,
                r.step
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
