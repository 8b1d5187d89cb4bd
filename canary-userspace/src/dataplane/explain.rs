//! `canaryctl explain`: which version and backend a client gets now, and why,
//! computed from the maps the kernel reads with the decision functions the
//! kernel runs (`canary_common::split`), in the kernel's order: flow table,
//! then source-prefix override, then hash bucket against the weight.

use crate::config::{ServiceConfig, Version};
pub use crate::control::api::parse_client;
use crate::control::api::Explain;
use crate::dataplane::keys::{affinity_flag, flow_key, override_lookup_key};
use crate::dataplane::maps::Maps;
use anyhow::{bail, Context, Result};
use canary_common::addr::from_words;
use canary_common::weight::WeightBp;
use canary_common::{
    backend_hash, bucket, choose_version, maglev_base, maglev_slot, split_hash, AFFINITY_FLOW,
    BACKEND_NONE,
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

    // 2. Source-prefix override (the kernel's LPM lookup), else 3. the hash.
    let (version, decided_by, reason, cidr) = match maps
        .overrides
        .get(&override_lookup_key(service_id, client), 0)
    {
        Ok(v) => {
            let version = Version::from_index(v.version);
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
            (version, "override", reason, cidr)
        }
        Err(_) => {
            let version = Version::from_index(choose_version(h, state.weight_bp));
            let cmp = if version == Version::Canary {
                "<"
            } else {
                ">="
            };
            let key = if affinity == AFFINITY_FLOW {
                "connection"
            } else {
                "client address"
            };
            let reason = format!(
                "hash bucket of the {key} is {b} {cmp} weight {} ({}): {}",
                state.weight_bp,
                WeightBp::from_bp(state.weight_bp),
                version.name()
            );
            (version, "hash", reason, None)
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
        ..base(version, decided_by, reason, cidr)
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
