//! The rollout tests' lab: the one-service config they use (service
//! `shop`, id 0, HTTP-probed pools, a plan given per test), its topology and
//! faults, and watching a rollout: the weight in the map, the time until a
//! rollback sets it to 0, and the rollout's end as status reports it.

use crate::{LbConfig, ServerOptions, Service, Topology, VIP_V4};
use anyhow::{bail, Context, Result};
use canary_userspace::control::api::{RolloutStatus, ServiceStatus};
use canary_userspace::dataplane::maps::Maps;
use std::net::SocketAddr;
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
    time_to_weight_zero_of(topo, maps, "shop", limit, fault)
}

/// `time_to_weight_zero` of the first service's map entry, whose status
/// (as `service`) goes into the error.
pub fn time_to_weight_zero_of(
    topo: &Topology,
    maps: &Maps,
    service: &str,
    limit: Duration,
    fault: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    while weight_bp(maps)? != 0 {
        if t0.elapsed() > limit {
            bail!(
                "{fault}: no rollback {limit:?} after the fault: {:#?}",
                topo.service_status(service)?
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

/// `runs` rollouts of shop one after the other, each from weight 0 to its
/// end (`during(run)` is called once each has started); the runs that
/// rolled back, each printed with its reason. A/A tests count these.
pub fn rollouts_rolled_back(
    topo: &Topology,
    runs: usize,
    mut during: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<usize>> {
    let mut rolled_back = Vec::new();
    for run in 0..runs {
        topo.ctl(&["set-weight", "shop", "0"])?;
        topo.ctl(&["rollout", "start", "shop"])?;
        during(run)?;
        let (s, _) = wait_rollout_end(topo, Duration::from_secs(60))?;
        let r = s.rollout.as_ref().context("no rollout in status")?;
        if r.phase == "aborted" {
            println!(
                "run {run}: rolled back: {}",
                r.reason.as_deref().unwrap_or("?")
            );
            rolled_back.push(run);
        }
    }
    Ok(rolled_back)
}

pub const HEALTH_PORT: u16 = 8080;

/// One service, `shop`, with an HTTP-probed pool and the given rollout
/// (its keys, indented six spaces).
pub fn config(rollout: &str) -> String {
    LbConfig::lab().service(shop(rollout)).yaml()
}

/// The service of `config`.
pub fn shop(rollout: &str) -> Service {
    Service::tcp("shop", VIP_V4, 80)
        .weight(0.0)
        .lab_pools()
        .raw(&format!(
            "    health:
      probe: http
      port: {HEALTH_PORT}
      path: /healthz
      interval: 250ms
      timeout: 200ms
      unhealthy_after: 3
      healthy_after: 2
    rollout:
{rollout}"
        ))
}

pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

pub fn topology(rst_fraction: f64) -> Result<Topology> {
    let mut topo = Topology::new(3)?;
    topo.start_servers_with(
        80,
        &ServerOptions {
            rst_fraction,
            ..ServerOptions::probed()
        },
    )?;
    Ok(topo)
}

/// The canary server (b3) drops every SYN to port 80 from now on (its
/// namespace, and the rule, go with the topology).
pub fn blackhole_canary_port(topo: &Topology) -> Result<()> {
    canary_input_rule(
        topo,
        "ip",
        "cnry_blackhole",
        &["tcp", "dport", "80", "drop"],
    )
}

/// An nftables rule on the canary server's (b3) input, in a table of its
/// own (`family` ip, ip6 or inet): it goes with the topology's namespace.
pub fn canary_input_rule(topo: &Topology, family: &str, table: &str, rule: &[&str]) -> Result<()> {
    let b3 = &topo.backends[2].ns;
    b3.exec(&["nft", "add", "table", family, table])?;
    b3.exec(&[
        "nft",
        "add",
        "chain",
        family,
        table,
        "in",
        "{ type filter hook input priority 0 ; }",
    ])?;
    let mut args = vec!["nft", "add", "rule", family, table, "in"];
    args.extend_from_slice(rule);
    b3.exec(&args)?;
    Ok(())
}

/// A client address outside the load's (`client_v4(0..4000)`) that the
/// first service of `yaml` (source-IP affinity) sends to the canary at
/// weight `bp`, and its index.
pub fn canary_client(yaml: &str, bp: u32) -> Result<(u32, std::net::Ipv4Addr)> {
    let cfg = canary_userspace::config::Config::parse(yaml)?;
    let s = &cfg.services[0];
    let flag = canary_userspace::dataplane::affinity_flag(s.affinity);
    for i in 4000..4096 {
        let std::net::IpAddr::V4(a) = crate::client_v4(i) else {
            unreachable!()
        };
        if splits_to_canary(a, flag, s.seed(), bp) {
            return Ok((i, a));
        }
    }
    bail!("no client address of 96 hashes to the canary at {bp} bp")
}

/// Whether the shared split decision (what the kernel runs) sends a TCP
/// connection from `client` port 40000 to the lab's VIP:80 to the canary,
/// at weight `bp` with affinity `flag` and the service's `seed`.
pub fn splits_to_canary(client: std::net::Ipv4Addr, flag: u32, seed: u32, bp: u32) -> bool {
    use canary_common::{choose_version, split_hash, FlowKey, FAMILY_V4, PROTO_TCP};
    let key = FlowKey::new(
        [u32::from_ne_bytes(client.octets()), 0, 0, 0],
        [u32::from_ne_bytes(VIP_V4.octets()), 0, 0, 0],
        40000u16.to_be(),
        80u16.to_be(),
        PROTO_TCP,
        FAMILY_V4,
    );
    choose_version(split_hash(&key, flag, seed), bp) == 1
}

/// The notes of a rollout's last analysis, on one line ("" without one).
pub fn analysis_notes(r: &RolloutStatus) -> String {
    r.analysis
        .as_ref()
        .map(|a| a.notes.join("; "))
        .unwrap_or_default()
}
