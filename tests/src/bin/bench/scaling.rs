//! Scaling: the flow-table hit against the number of flows in `FLOWS`, the
//! new-flow path against backends per pool, and the apply time of each.

use crate::per_packet::{fresh_v4, lab_backend, with_dp, Lab, LAB_VIP4};
use crate::report::Report;
use anyhow::{Context, Result};
use canary_common::{FlowState, PROTO_TCP};
use canary_tests::packet::{flow_key, tcp, Tcp as Kind};
use canary_tests::prog_run::action_name as action;
use std::net::IpAddr;
use std::time::Instant;

const G_FLOWS: &str = "scaling: established packet vs flows in FLOWS, limit = smallest";
const G_BACKENDS: &str = "scaling: new-flow SYN vs backends per pool, limit = smallest";
const G_APPLY: &str = "control plane: DataPlane::apply of a config (in process), limit = smallest";

pub fn micro_scaling(lab: &Lab, report: &mut Report) -> Result<()> {
    let size = lab.size;
    println!("{G_FLOWS}");
    for &flows in size.flows {
        // 25 % headroom: an LRU map evicts before it is full.
        let table = (flows + flows / 4).max(1024);
        with_dp(lab, &format!("flows{flows}"), table, 2, |dp, _| {
            let ids = dp.ids();
            let sid = *ids.services.get("web").context("no service web")?;
            let bid = *ids
                .backends
                .get(&(sid, IpAddr::V4(lab_backend(false, 0))))
                .context("no backend id")?;
            // Answered connections, seen now (an idle-expired entry would
            // be decided again: a miss, not the hit measured here).
            let state = FlowState {
                backend_id: bid,
                version: 0,
                flags: canary_common::flow::FLOW_REPLIED,
                last_seen: canary_tests::xdp_lab::monotonic_secs(),
                ..FlowState::default()
            };
            let vip = IpAddr::V4(LAB_VIP4);
            let t = Instant::now();
            for i in 0..flows as usize {
                let (s, p) = fresh_v4(i);
                dp.maps_mut()
                    .flows
                    .insert(flow_key(s, p, vip, 80, PROTO_TCP), state, 0)?;
            }
            let fill = t.elapsed();
            let stats0 = dp.maps().version_stats(sid, 0)?.new_flows
                + dp.maps().version_stats(sid, 1)?.new_flows;
            // Established packets of pre-filled flows, spread over the table.
            // One untimed pass first: a connection's first packet looks its
            // route up and caches the next hop in its flow entry; the timed
            // pass is the steady state (a flow pays one lookup per second,
            // when its cached next hop ages out).
            let step = (flows as usize / size.single.max(1)).max(1) | 1;
            let canary = dp.program()?;
            let mut established = |n: usize| {
                let (s, p) = fresh_v4((n * step) % flows as usize);
                tcp(0, s, p, vip, 80, Kind::Ack)
            };
            let mut warm = 0usize;
            lab.single(canary, 0, &mut established, &mut warm)?;
            let mut n = 0usize;
            let (k, a) = lab.single(canary, 0, &mut established, &mut n)?;
            let stats1 = dp.maps().version_stats(sid, 0)?.new_flows
                + dp.maps().version_stats(sid, 1)?.new_flows;
            let misses = stats1 - stats0;
            report.add(
                G_FLOWS,
                format!("established, {flows} flows (table {table})"),
                k,
                "ns/pkt",
                format!(
                    "{}, {misses} misses of {n}, filled in {:.1} s",
                    action(a),
                    fill.as_secs_f64()
                ),
            );
            Ok(())
        })?;
    }
    println!("{G_BACKENDS}");
    let mut applies = Vec::new();
    for &b in size.backends {
        with_dp(lab, &format!("backends{b}"), 1 << 21, b, |dp, took| {
            applies.push((b, took));
            let canary = dp.program()?;
            let vip = IpAddr::V4(LAB_VIP4);
            let (k, a) = lab.new_flow_syns(canary, vip)?;
            report.add(
                G_BACKENDS,
                format!("new-flow SYN, {b} backends per pool"),
                k,
                "ns/pkt",
                action(a),
            );
            Ok(())
        })?;
    }
    println!("{G_APPLY}");
    for (b, took) in applies {
        report.add(
            G_APPLY,
            format!("first apply, {b} backends per pool"),
            took.as_secs_f64() * 1e3,
            "ms",
            "2 pools, Maglev tables built and written",
        );
    }
    Ok(())
}

const G_SVC_EST: &str =
    "scaling: established packet vs services configured (16 backends each), limit = 2 services";
const G_SVC_SYN: &str =
    "scaling: new-flow SYN vs services configured (16 backends each), limit = 2 services";

/// A config of `services` TCP services with 8 stable and 8 canary backends
/// each. Service 0 (VIP 198.18.128.1) has the lab's neighboured backends
/// (so its packets are really forwarded); the others' backends are in
/// 198.19.0.0/16 and never routed. 1,024 services make 16,384 backends,
/// the most a config may have.
fn services_config(services: usize, limit: usize) -> canary_tests::LbConfig {
    use canary_tests::Service;
    use std::net::Ipv4Addr;
    let mut cfg = canary_tests::LbConfig::lab()
        .backend_interfaces(&["lb-b1", "lb-b2"])
        .limit_services(limit as u32);
    for i in 0..services {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 1)) + i as u32);
        let pool = |canary: bool| -> Vec<Ipv4Addr> {
            (0..8)
                .map(|j| {
                    if i == 0 {
                        lab_backend(canary, j)
                    } else {
                        let k = (i * 16 + canary as usize * 8 + j) as u32;
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + k)
                    }
                })
                .collect()
        };
        cfg = cfg.service(
            Service::tcp(&format!("svc{i}"), vip, 80)
                .affinity("flow")
                .weight(10.0)
                .stable(pool(false))
                .canary(pool(true)),
        );
    }
    cfg
}

/// The per-packet paths with 2 services and with 1,024 services / 16,384
/// backends (128 in the smoke run), in data planes loaded alike
/// (limits.services = the most): the id space and the Maglev array grow,
/// the per-packet work must not.
pub fn micro_services(lab: &Lab, report: &mut Report) -> Result<()> {
    use canary_tests::packet::Tcp as Kind;
    use canary_userspace::dataplane::{DataPlane, LoadOptions};
    println!("{G_SVC_EST} / {G_SVC_SYN}");
    let most = lab.size.services;
    for services in [2usize, most] {
        let instance = format!("cnry-{}-bench-svc{services}", std::process::id());
        let mut dp = DataPlane::load_with(
            &instance,
            LoadOptions {
                flow_table_size: 1 << 20,
                services: most as u32,
            },
        )?;
        let result = (|| -> Result<()> {
            let mut config = services_config(services, most).config();
            config.flow_table.syn_flood_threshold = 0;
            let t = Instant::now();
            dp.apply(&config)?;
            let took = t.elapsed();
            let prog = dp.program()?;
            let vip = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 128, 1));
            let (syn, a) = lab.new_flow_syns(prog, vip)?;
            let client: IpAddr = "198.18.16.5".parse()?;
            let _ = canary_tests::prog_run::test_run(
                prog,
                &tcp(0, client, 40000, vip, 80, Kind::Syn),
                lab.ifindex[0],
                1,
            )?;
            let ack = tcp(0, client, 40000, vip, 80, Kind::Ack);
            let mut n = 0usize;
            let (est, a2) = lab.single(prog, 0, &mut |_| ack.clone(), &mut n)?;
            let what = format!("{services} services, {} backends", services * 16);
            report.add(
                G_SVC_EST,
                format!("established packet, {what}"),
                est,
                "ns/pkt",
                action(a2),
            );
            report.add(
                G_SVC_SYN,
                format!("new-flow SYN, {what}"),
                syn,
                "ns/pkt",
                format!("{}, applied in {:.2} s", action(a), took.as_secs_f64()),
            );
            Ok(())
        })();
        let _ = dp.teardown();
        let dir = canary_userspace::dataplane::maps::pin_dir(&instance);
        let _ = canary_userspace::dataplane::remove_pins(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result?;
    }
    Ok(())
}
