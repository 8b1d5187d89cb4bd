//! `canaryctl explain`: which version and backend a client gets now, and why,
//! computed from the maps the kernel reads with the decision functions the
//! kernel runs (`canary_common::split`), in the kernel's order: flow table,
//! then the one LPM lookup (a source-prefix override, or a cohort's source
//! with its weight while cohorts are live), then the hash against the weight.

use crate::config::{ServiceConfig, Version, EVERYONE};
pub use crate::control::api::parse_client;
use crate::control::api::Explain;
use crate::dataplane::keys::{affinity_flag, flow_key, override_lookup_key};
use crate::dataplane::maps::Maps;
use anyhow::{bail, Context, Result};
use canary_common::addr::from_words;
use canary_common::weight::WeightBp;
use canary_common::{
    backend_hash, bucket, cohort_of, decide_version, maglev_base, maglev_slot, split_hash, By,
    AFFINITY_FLOW, BACKEND_NONE, SVC_COHORTS_LIVE, SVC_PREFIXES,
};
use std::net::IpAddr;

/// Parses `IP`, `IPv4:PORT` or `[IPv6]:PORT`.
pub fn explain(
    maps: &Maps,
    service_id: u32,
    s: &ServiceConfig,
    client: IpAddr,
    port: Option<u16>,
) -> Result<Explain> {
    if client.is_ipv4() != s.vip.is_ipv4() {
        bail!(
            "client {client} is not the same address family as the VIP {}",
            s.vip
        );
    }
    let affinity = affinity_flag(s.affinity);
    if affinity == AFFINITY_FLOW && port.is_none() {
        bail!(
            "service {} splits per connection (affinity: flow): give CLIENT_IP:PORT",
            s.name
        );
    }
    let state = maps
        .services
        .get(&service_id, 0)
        .context("reading SERVICES")?;
    let flow = flow_key(s, client, port);
    let h = split_hash(&flow, affinity, state.seed);
    let b = bucket(h);

    let backend_addr = |id: u32| -> Result<IpAddr> {
        let info = maps.backends.get(&id, 0).context("reading BACKENDS")?;
        Ok(from_words(info.addr, info.family as u8))
    };
    let base = |version: Version, decided_by: &str, reason: String, cidr: Option<String>| Explain {
        service: s.name.clone(),
        client,
        client_port: port,
        version,
        backend: client,
        decided_by: decided_by.to_string(),
        reason,
        bucket: b,
        weight_bp: state.weight_bp,
        override_cidr: cidr,
        cohort: None,
    };

    // 1. An open connection keeps its backend.
    if port.is_some() {
        // An entry idle past its timeout is gone for the data path too.
        let timeouts = maps.settings().map(|x| x.timeouts).unwrap_or_default();
        let live = maps.flows.get(&flow, 0).ok().filter(|f| {
            !canary_common::flow::expired(f, flow.proto, super::monotonic_s(), &timeouts)
        });
        if let Some(f) = live {
            let version = Version::from_index(f.version as u32);
            let backend = backend_addr(f.backend_id)?;
            return Ok(Explain {
                backend,
                // For information only: the entry decided, not the cohort.
                cohort: s
                    .cohort_of(client)
                    .and_then(|(k, _)| s.cohorts().get(k))
                    .map(|c| c.name.clone()),
                ..base(
                    version,
                    "flow-table",
                    format!(
                        "open connection in the flow table: stays on {} backend {backend} whatever the weight",
                        version.name()
                    ),
                    None,
                )
            });
        }
    }

    // 2. The kernel's one LPM lookup and `decide_version`: a plain
    // override, a live cohort, or the hash against the weight.
    let ov = if state.has_overrides & SVC_PREFIXES != 0 {
        maps.overrides
            .get(&override_lookup_key(service_id, client), 0)
            .ok()
            .map(|v| v.version)
    } else {
        None
    };
    let (v, by) = decide_version(h, &state, ov);
    let version = Version::from_index(v);
    let live = state.has_overrides & SVC_COHORTS_LIVE != 0;
    // The cohort named from the running config (the one apply wrote).
    let cohort = s.cohort_of(client);
    let cohort_name = |k: usize| {
        s.cohorts()
            .get(k)
            .map_or_else(|| format!("#{k}"), |c| c.name.clone())
    };
    let cmp = |w: u32| if b < w { "<" } else { ">=" };
    let key = if affinity == AFFINITY_FLOW {
        "connection"
    } else {
        "client address"
    };
    let (decided_by, reason, cidr, cohort_out) = match by {
        By::Forced => {
            let cidr = s
                .overrides
                .iter()
                .filter(|o| o.cidr.contains(&client))
                .max_by_key(|o| o.cidr.prefix_len())
                .map(|o| o.cidr.to_string());
            let reason = format!(
                "source-prefix override {} forces {}",
                cidr.as_deref().unwrap_or("(set at run time)"),
                version.name()
            );
            let named = cohort.map(|(k, _)| cohort_name(k));
            ("override".to_string(), reason, cidr, named)
        }
        By::Cohort(k) => {
            let w = ov.and_then(cohort_of).map_or(0, |(_, w)| w);
            let name = cohort_name(k as usize);
            let net = cohort.map_or_else(String::new, |(_, n)| format!(" ({n})"));
            let reason = format!(
                "client in cohort {name}{net}: hash bucket of the {key} is {b} {} cohort weight {w} ({}): {}",
                cmp(w),
                WeightBp::from_bp(w),
                version.name()
            );
            (format!("cohort {name}"), reason, None, Some(name))
        }
        By::Hash => {
            let w = state.weight_bp;
            let figures = format!(
                "hash bucket of the {key} is {b} {} weight {w} ({}): {}",
                cmp(w),
                WeightBp::from_bp(w),
                version.name()
            );
            match (s.cohorts().is_empty(), live, cohort) {
                // No cohorts in the plan: as before.
                (true, _, _) => ("hash".to_string(), figures, None, None),
                (false, true, _) => (
                    format!("cohort {EVERYONE}"),
                    format!("client in no cohort ({EVERYONE} follows the plan's weight): {figures}"),
                    None,
                    Some(EVERYONE.to_string()),
                ),
                (false, false, Some((k, n))) => (
                    "hash".to_string(),
                    format!(
                        "client in cohort {} ({n}), but cohorts are off (rolled back or set by hand): {figures}",
                        cohort_name(k)
                    ),
                    None,
                    Some(cohort_name(k)),
                ),
                (false, false, None) => (
                    "hash".to_string(),
                    format!("client in no cohort, cohorts are off: {figures}"),
                    None,
                    Some(EVERYONE.to_string()),
                ),
            }
        }
    };
    let vi = version.index() as usize;
    if state.pool_size[vi] == 0 {
        bail!(
            "the {} pool of {} is empty: new connections would be dropped",
            version.name(),
            s.name
        );
    }
    let slot = maglev_slot(backend_hash(&flow, affinity, state.seed));
    let idx = maglev_base(service_id, version.index(), state.live_gen[vi] & 1) + slot;
    let id = maps.maglev.get(&idx, 0).context("reading MAGLEV")?;
    if id == BACKEND_NONE {
        bail!(
            "the {} pool of {} has no backend in its live table",
            version.name(),
            s.name
        );
    }
    let backend = backend_addr(id)?;
    Ok(Explain {
        backend,
        cohort: cohort_out,
        ..base(version, &decided_by, reason, cidr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_forms() {
        assert_eq!(
            parse_client("198.18.16.5").unwrap(),
            ("198.18.16.5".parse().unwrap(), None)
        );
        assert_eq!(parse_client("198.18.16.5:4000").unwrap().1, Some(4000));
        assert_eq!(parse_client("2001:db8::5").unwrap().1, None);
        assert_eq!(parse_client("[2001:db8::5]:80").unwrap().1, Some(80));
        assert!(parse_client("198.18.16").is_err());
        assert!(parse_client("shop").is_err());
    }
}
