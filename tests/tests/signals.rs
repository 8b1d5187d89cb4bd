//! Signals a client cannot forge, through the netns topology: during a
//! rollout of a healthy canary at 5 %, one ordinary client address that
//! hashes to the canary sends 100 SYNs with a wrong TCP checksum and 100
//! bare ACKs of no connection. Before, each bad SYN became a handshake
//! timeout against the canary and each ACK a backend RST, and the healthy
//! rollout aborted within seconds; now the bad SYNs are dropped at the
//! load balancer and the ACKs' resets are not judged: no rollback. A canary
//! that resets the connections of one client only is held, not rolled back
//! (a step fails only on failures of 3 distinct clients); one that resets
//! every client's is still rolled back within 2 s.

use anyhow::{ensure, Result};
use canary_common::reason;
use canary_tests::flood::{Shape, SynFlood};
use canary_tests::rollout::{
    analysis_notes, canary_client, canary_input_rule, time_to_weight_zero, time_to_weight_zero_of,
    topology, vip, weight_bp,
};
use canary_tests::{client_v4, LbConfig, Load, LoadBounds, Service, VIP_V4};
use canary_userspace::dataplane::maps::Maps;
use std::net::SocketAddrV4;
use std::time::Duration;

const FIRST_STEP_BP: u32 = 500;

#[test]
fn one_client_cannot_forge_failures_but_a_resetting_canary_is_caught() -> Result<()> {
    let topo = topology(0.0)?;
    // No probes: the resetting canary at the end must be caught by the
    // passive signals alone.
    let yaml = LbConfig::lab()
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .weight(0.0)
                .lab_pools()
                .raw(
                    "    rollout:
      steps: [5, 10, 20, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.1
",
                ),
        )
        .yaml();
    // The forged traffic pins the canary's source-IP hash only with
    // source-IP affinity (the default); with 5-tuple affinity each frame
    // would hash anew.
    let (attacker_index, attacker) = canary_client(&yaml, FIRST_STEP_BP)?;
    let _d = topo.spawn_canaryd(Some(&yaml))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let mut load = Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            pause: Duration::from_millis(2),
            ..LoadBounds::default()
        },
    );
    topo.ctl(&["rollout", "start", "shop"])?;
    ensure!(weight_bp(&maps)? == FIRST_STEP_BP, "step 1 not applied");
    let dp0 = maps.datapath_stats()?;

    // 100 bad-checksum SYNs, then 100 bare ACKs, each over about 0.5 s.
    let dst = SocketAddrV4::new(VIP_V4, 80);
    for shape in [Shape::SynBadChecksum, Shape::BareAck] {
        let mut spec = topo.flood_spec(dst, 1, 100, Duration::from_secs(5), 200)?;
        spec.source = Some(attacker);
        spec.shape = shape;
        let report = SynFlood::start(&topo.client, spec).wait()?;
        println!("{shape:?} from {attacker}: {} sent", report.sent);
        ensure!(report.sent == 100, "{shape:?}: {report:?}");
    }
    // Long enough for every unanswered SYN to time out (handshake_timeout
    // is 3 s) and for the engine (every 250 ms) to judge it.
    std::thread::sleep(Duration::from_secs(5));
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().expect("a rollout");
    let c = &s.signals.canary;
    let dp = maps.datapath_stats()?;
    let d = |r: u32| dp[r as usize] - dp0[r as usize];
    println!(
        "after the forged traffic: phase {}, weight {} bp; canary: {} judged, {} resets ({} judged), \
         {} handshake timeouts; drop_bad_checksum +{}",
        r.phase,
        weight_bp(&maps)?,
        c.judged,
        c.resets,
        c.judged_resets,
        c.handshake_timeouts,
        d(reason::DROP_BAD_CHECKSUM)
    );
    assert_eq!(
        r.phase, "running",
        "a healthy canary was not rolled back: {r:#?}"
    );
    assert_eq!(weight_bp(&maps)?, FIRST_STEP_BP);
    assert_eq!(
        d(reason::DROP_BAD_CHECKSUM),
        100,
        "every bad SYN was dropped at the load balancer"
    );
    assert_eq!(c.handshake_timeouts, 0, "no forged SYN was timed");
    assert_eq!(c.judged_resets, 0, "the bare ACKs' resets were not judged");
    assert!(
        c.resets >= 90,
        "the backend did reset the bare ACKs (shown, not judged): {}",
        c.resets
    );
    assert!(c.judged > 0, "the load's canary connections were judged");

    // The canary resets every connection, but only one client makes any
    // (as a client provoking resets would): its failures hold the step,
    // they do not fail it.
    let (ok1, failed1) = load.stop();
    topo.set_fault("b3", "rst")?;
    let mut one = Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            clients: 1,
            first_client: attacker_index,
            pause: Duration::from_millis(20),
            max_time: Duration::from_secs(3),
            ..LoadBounds::default()
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let (_, one_failed) = one.stop();
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    let notes = analysis_notes(r);
    println!(
        "one client against a resetting canary: {one_failed} of its connections failed, \
         {} judged resets; phase {}; {notes}",
        s.signals.canary.judged_resets, r.phase
    );
    assert!(
        s.signals.canary.judged_resets >= 10,
        "its failures were judged"
    );
    assert_eq!(
        r.phase, "running",
        "one client cannot fail the step: {r:#?}"
    );
    assert!(notes.contains("1 distinct client(s)"), "{notes}");

    // Every client meets the resetting canary: rolled back within 2 s.
    let mut load = Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            pause: Duration::from_millis(2),
            ..LoadBounds::default()
        },
    );
    let took = time_to_weight_zero(&topo, &maps, Duration::from_secs(10), "rst")?;
    let (ok, failed) = load.stop();
    let (ok, failed) = (ok + ok1, failed + failed1);
    let s = topo.service_status("shop")?;
    let r = s.rollout.as_ref().unwrap();
    println!(
        "resetting canary: weight 0 {:.0} ms after the load met it ({}); load: {ok} ok, {failed} failed",
        took.as_secs_f64() * 1e3,
        r.reason.as_deref().unwrap_or("?")
    );
    assert_eq!(r.phase, "aborted");
    assert!(took < Duration::from_secs(2), "rollback took {took:?}");
    assert!(s.signals.canary.judged_resets > 0);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("canary fails"),
        "rolled back by the judged failures: {r:#?}"
    );
    Ok(())
}

/// UDP health without probes: a UDP canary whose service is down answers
/// every datagram with ICMP port unreachable; the load balancer counts
/// those (once per judged flow) against the canary, and the rollout rolls
/// it back. Before, the ICMP passed through untranslated and unjudged: the
/// clients' requests timed out and the rollout saw nothing.
#[test]
fn a_udp_canary_answering_port_unreachable_is_rolled_back_without_probes() -> Result<()> {
    use canary_tests::{udp_request, Topology};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut topo = Topology::new(3)?;
    topo.start_servers(53)?;
    let yaml = LbConfig::lab()
        .service(Service::udp("dns", VIP_V4, 53).weight(0.0).lab_pools().raw(
            "    rollout:
      steps: [10, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.1
",
        ))
        .yaml();
    let _d = topo.spawn_canaryd(Some(&yaml))?;
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let dst = std::net::SocketAddr::new(VIP_V4.into(), 53);

    // Four clients in a loop, each request from the next client address
    // (a new flow each), bounded by a count and a time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..4u32)
        .map(|t| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let netns = topo.client.path();
            std::thread::spawn(move || {
                let file = std::fs::File::open(&netns).expect("open netns");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                {
                    let end = std::time::Instant::now() + Duration::from_secs(40);
                    for i in 0..100_000u32 {
                        if stop.load(Ordering::Relaxed) || std::time::Instant::now() > end {
                            break;
                        }
                        // About 1,000 requests a second per thread.
                        std::thread::sleep(Duration::from_millis(1));
                        let src = client_v4((t * 1000 + i) % 4000);
                        match udp_request(src, dst, "q", Duration::from_millis(200)) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
            })
        })
        .collect();

    topo.ctl(&["rollout", "start", "dns"])?;
    ensure!(weight_bp(&maps)? == 1000, "step 1 not applied");
    // A healthy UDP canary first: judged flows, no failure, no rollback.
    std::thread::sleep(Duration::from_secs(2));
    let s = topo.service_status("dns")?;
    println!(
        "healthy: canary {} judged flows, {} unreachables; {} ok {} failed",
        s.signals.canary.judged,
        s.signals.canary.unreachables,
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    ensure!(s.signals.canary.judged > 0, "no judged canary flow: {s:#?}");
    assert_eq!(s.signals.canary.unreachables, 0);
    assert_eq!(s.rollout.as_ref().unwrap().phase, "running");

    // The canary's service goes down: its kernel answers port unreachable.
    canary_input_rule(
        &topo,
        "inet",
        "cnry_down",
        &[
            "udp",
            "dport",
            "53",
            "reject",
            "with",
            "icmpx",
            "port-unreachable",
        ],
    )?;
    let took = time_to_weight_zero_of(&topo, &maps, "dns", Duration::from_secs(10), "canary down")?;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    let s = topo.service_status("dns")?;
    let r = s.rollout.as_ref().unwrap();
    println!(
        "canary down: weight 0 {:.0} ms later ({}); canary {} unreachables of {} judged flows",
        took.as_secs_f64() * 1e3,
        r.reason.as_deref().unwrap_or("?"),
        s.signals.canary.unreachables,
        s.signals.canary.judged
    );
    assert_eq!(r.phase, "aborted");
    assert!(s.signals.canary.unreachables > 0);
    assert!(took < Duration::from_secs(5), "rollback took {took:?}");
    Ok(())
}
