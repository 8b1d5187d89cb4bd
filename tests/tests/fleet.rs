//! A fleet of three load-balancer hosts behind an ECMP router, one rollout,
//! shared state in a real 3-member etcd cluster (`canary_tests::fleet`).
//! Real canaryd on every host, real TCP clients and servers.
//!
//! - a weight set on one host reaches all three (time to the last host's
//!   map, median and max), and each of 1,000 clients, whose connections
//!   ECMP spreads over the hosts, sees one version at every weight of a
//!   ramp 0 -> 10 -> 50 -> 100; the split at 10% is within 4 sigma;
//! - a rollout judged on the sum of all hosts' counters is promoted step by
//!   step; a canary that starts resetting connections is rolled back on all
//!   three hosts within 2 s;
//! - the leader's canaryd killed mid-step: another host leads within the
//!   lease TTL + 1 s, at the same step; no step twice, none skipped; the
//!   killed host's canaryd started again rejoins with the fleet's state;
//! - one health view: a backend failing every host's probes leaves every
//!   host's tables; one host's bad link to a backend does not;
//! - `on_rollback: reset` decided on one host resets the open canary
//!   connections on every host;
//! - one LB host lost with 200 connections open (servers pushing): ECMP
//!   moves them and at least 99% keep working both ways;
//! - etcd: one member killed changes nothing; quorum lost: the data plane
//!   is unchanged, status says so, a raise is refused, a rollback applies
//!   here at once and reaches etcd when quorum returns.
//!
//! Each builds a whole fleet (11 namespaces, 3 etcd members, 3 canaryd):
//! they take a lock and run one at a time.

use anyhow::{bail, Context, Result};
use canary_tests::client::PushConn;
use canary_tests::fleet::FleetTopology;
use canary_tests::rollout::{analysis_notes, canary_client, shop, HEALTH_PORT};
use canary_tests::{
    client_v4, tcp_connect, Daemon, Load, LoadBounds, Netns, ServerOptions, Service, VIP_V4,
};
use canary_userspace::control::api::{FleetStatus, ServiceStatus, Status};
use canary_userspace::dataplane::maps::Maps;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

/// A rollout plan nobody starts (the tests that set weights by hand).
const IDLE_PLAN: &str = "      steps: [10, 100]\n      interval: 60s\n";

/// A fleet of three hosts, canaryd on each with `shop` (stable b1 b2,
/// canary b3, HTTP-probed) and `rollout` as its plan.
struct Fleet {
    // Daemons before the topology: they stop first.
    daemons: Vec<Option<Daemon>>,
    yamls: Vec<String>,
    maps: Vec<Maps>,
    topo: FleetTopology,
}

impl Fleet {
    fn new(rollout: &str, lease_ttl: &str) -> Result<Fleet> {
        let mut topo = FleetTopology::new(3, 3)?;
        topo.start_servers_with(80, &ServerOptions::probed())?;
        let mut daemons = Vec::new();
        let mut maps = Vec::new();
        let mut yamls = Vec::new();
        for k in 0..3 {
            let yaml = topo
                .lb_config(k)
                .fleet(topo.fleet_section(k, "lab").lease_ttl(lease_ttl))
                .service(shop(rollout))
                .yaml();
            let d = topo.spawn_canaryd(k, &yaml)?;
            maps.push(Maps::from_pins(&topo.lbs[k].pin_dir())?);
            daemons.push(Some(d));
            yamls.push(yaml);
        }
        let f = Fleet {
            daemons,
            yamls,
            maps,
            topo,
        };
        // Every host connected, one leader, every report seen by every host.
        f.wait(Duration::from_secs(20), "the fleet to form", |s| {
            let Some(fl) = &s.fleet else { return false };
            fl.connected && fl.leader.is_some() && fl.hosts.len() == 3
        })?;
        Ok(f)
    }

    fn status(&self, k: usize) -> Result<Status> {
        self.topo.status(k)
    }

    fn fleet(&self, k: usize) -> Result<FleetStatus> {
        self.status(k)?.fleet.context("no fleet in status")
    }

    fn shop(&self, k: usize) -> Result<ServiceStatus> {
        self.status(k)?
            .services
            .into_iter()
            .find(|s| s.name == "shop")
            .context("no shop")
    }

    /// Waits until `ok` holds for the status of every live host.
    fn wait(&self, limit: Duration, what: &str, ok: impl Fn(&Status) -> bool) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            let mut all = true;
            for k in 0..3 {
                if self.daemons[k].is_none() {
                    continue;
                }
                if !self.status(k).map(|s| ok(&s)).unwrap_or(false) {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > end {
                let mut dump = String::new();
                for k in 0..3 {
                    if self.daemons[k].is_some() {
                        dump += &format!(
                            "--- lb{} ---\n{}\n",
                            k + 1,
                            self.topo.ctl(k, &["status"]).unwrap_or_default()
                        );
                    }
                }
                bail!("waited {limit:?} for {what}:\n{dump}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn weight_bp(&self, k: usize) -> Result<u32> {
        canary_tests::rollout::weight_bp(&self.maps[k])
    }

    /// Time from now until every live host's map has `bp`.
    fn converge(&self, bp: u32, limit: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let mut all = true;
            for k in 0..3 {
                if self.daemons[k].is_some() && self.weight_bp(k)? != bp {
                    all = false;
                }
            }
            if all {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                let got: Vec<u32> = (0..3).map(|k| self.weight_bp(k).unwrap_or(0)).collect();
                bail!("weight {bp} bp not on every host after {limit:?}: {got:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn leader(&self) -> Result<usize> {
        for k in 0..3 {
            if self.daemons[k].is_some() && self.fleet(k)?.leading {
                return Ok(k);
            }
        }
        bail!("no host leads")
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A client's index and, per connection, whether it reached canary.
type ClientVersions = (u32, Vec<bool>);

/// Each client's version per connection: `per_client` connections from each
/// of `clients` addresses (different source ports, so ECMP spreads them),
/// on 8 threads.
fn versions(client: &Netns, clients: u32, per_client: usize) -> Result<Vec<Vec<bool>>> {
    let chunks: Vec<Vec<u32>> = (0..8u32)
        .map(|t| (0..clients).filter(|i| i % 8 == t).collect())
        .collect();
    let mut out = vec![Vec::new(); clients as usize];
    let results: Vec<Result<Vec<ClientVersions>>> = std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || -> Result<Vec<ClientVersions>> {
                    client.run(|| {
                        let mut r = Vec::new();
                        for &i in chunk {
                            let mut seen = Vec::new();
                            for _ in 0..per_client {
                                let mut c =
                                    tcp_connect(client_v4(i), vip(), Duration::from_secs(3))
                                        .with_context(|| format!("client {i}"))?;
                                c.ping("hello")?;
                                seen.push(c.backend == "b3");
                            }
                            r.push((i, seen));
                        }
                        Ok(r)
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        for (i, seen) in r? {
            out[i as usize] = seen;
        }
    }
    Ok(out)
}

/// New connections each host has seen so far (its report's counters).
fn per_host_connections(f: &FleetStatus) -> HashMap<String, u64> {
    f.hosts
        .iter()
        .map(|h| {
            let [s, c] = h.new_connections.get("shop").copied().unwrap_or_default();
            (h.name.clone(), s + c)
        })
        .collect()
}

#[test]
fn one_weight_for_the_fleet_and_one_version_per_client() -> Result<()> {
    let _s = serial();
    let f = Fleet::new(IDLE_PLAN, "3s")?;

    // set-weight on one host (each in turn): how long the call takes (it
    // returns once etcd has the change), and the time from its return to
    // the last host's map having it.
    let mut calls = Vec::new();
    let mut times = Vec::new();
    for i in 0..21 {
        let k = i % 3;
        let pct = if i % 2 == 0 { "12.5" } else { "7.25" };
        let bp = if i % 2 == 0 { 1250 } else { 725 };
        let t0 = Instant::now();
        f.topo.ctl(k, &["set-weight", "shop", pct])?;
        calls.push(t0.elapsed());
        times.push(f.converge(bp, Duration::from_secs(5))?);
    }
    let call = median(&mut calls);
    println!(
        "canaryctl set-weight (process start to exit, etcd write included): median {:.1} ms",
        call.as_secs_f64() * 1e3
    );
    let max = *times.iter().max().unwrap();
    let med = median(&mut times);
    println!(
        "set-weight on one host -> applied on all 3: median {:.1} ms, max {:.1} ms (21 changes)",
        med.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(
        med < Duration::from_millis(200),
        "median convergence {med:?}"
    );
    assert!(max < Duration::from_secs(1), "max convergence {max:?}");
    // Every host says the fleet agrees, with the same generation.
    f.wait(Duration::from_secs(5), "agreement on 12.50%", |s| {
        s.fleet.as_ref().is_some_and(|fl| {
            fl.agreement.iter().any(|a| {
                a.service == "shop" && a.agreeing == 3 && a.line.contains("3/3 hosts apply 12.50%")
            })
        })
    })?;
    let gens: Vec<u64> = (0..3)
        .map(|k| f.fleet(k).map(|fl| fl.agreement[0].generation))
        .collect::<Result<_>>()?;
    assert!(gens.iter().all(|g| *g == gens[0] && *g >= 21), "{gens:?}");

    // The ramp: 1,000 clients, 2 connections each per weight.
    let before = per_host_connections(&f.fleet(0)?);
    let mut canary_at: Vec<Vec<bool>> = Vec::new();
    for (k, pct, bp) in [
        (0, "0", 0),
        (1, "10", 1000),
        (2, "50", 5000),
        (0, "100", 10000),
    ] {
        f.topo.ctl(k, &["set-weight", "shop", pct])?;
        f.converge(bp, Duration::from_secs(5))?;
        let seen = versions(&f.topo.client, 1000, 2)?;
        let flips = seen.iter().filter(|v| v.iter().any(|c| *c != v[0])).count();
        assert_eq!(flips, 0, "clients that saw both versions at {pct}%");
        let canary = seen.iter().filter(|v| v[0]).count();
        println!("weight {pct}%: {canary} of 1000 clients on canary, 0 flips");
        canary_at.push(seen.iter().map(|v| v[0]).collect());
        match bp {
            0 => assert_eq!(canary, 0),
            10000 => assert_eq!(canary, 1000),
            1000 => {
                // Binomial(1000, 0.10): sigma = sqrt(0.1 * 0.9 / 1000) =
                // 0.95%; 4 sigma = 3.8% (a false alarm about 1 in 16,000).
                let share = canary as f64 / 1000.0;
                assert!((share - 0.10).abs() <= 0.038, "share at 10%: {share}");
            }
            _ => {}
        }
    }
    // A client on canary stays there as the weight rises.
    for w in canary_at.windows(2) {
        let lost = w[0].iter().zip(&w[1]).filter(|(a, b)| **a && !**b).count();
        assert_eq!(lost, 0, "clients that left canary as the weight rose");
    }
    // ECMP spread the connections over all three hosts (reports are a
    // second apart: wait for the last).
    std::thread::sleep(Duration::from_millis(2500));
    let after = per_host_connections(&f.fleet(0)?);
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    for (h, n) in &after {
        let d = n - before.get(h).copied().unwrap_or(0);
        println!("{h}: {d} of {total} connections");
        // A third each by the hash; at least 15% each says ECMP spread them.
        assert!(d * 100 > total * 15, "{h} carried {d} of {total}");
    }
    Ok(())
}

/// The history's passed steps, in order ("step 2/3 (50%) passed ...").
fn passed_steps(history: &[String]) -> Vec<usize> {
    history
        .iter()
        .filter(|l| l.contains(" passed"))
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            rest.split('/').next()?.parse().ok()
        })
        .collect()
}

fn assert_each_step_once(history: &[String], steps: usize) {
    let passed = passed_steps(history);
    let want: Vec<usize> = (1..=passed.len()).collect();
    assert_eq!(passed, want, "steps twice or skipped: {history:#?}");
    assert!(passed.len() + 1 >= steps, "steps missing: {history:#?}");
}

#[test]
fn a_fleet_rollout_is_promoted_and_rolled_back_everywhere() -> Result<()> {
    let _s = serial();
    let f = Fleet::new(
        "      steps: [10, 50, 100]
      interval: 2s
      analysis:
        max_error_ratio: 0.2
        min_canary_connections: 30
",
        "3s",
    )?;
    let mut load = Load::start(&f.topo.client, vip(), LoadBounds::default());
    let before = per_host_connections(&f.fleet(0)?);
    let leader = f.leader()?;
    // Started on a host that does not lead: the leader runs it.
    let starter = (leader + 1) % 3;
    f.topo.ctl(starter, &["rollout", "start", "shop"])?;
    f.wait(Duration::from_secs(60), "the rollout to be promoted", |s| {
        s.services[0]
            .rollout
            .as_ref()
            .is_some_and(|r| r.phase == "promoted" || r.phase == "aborted")
    })?;
    let s = f.shop(leader)?;
    let r = s.rollout.context("rollout")?;
    assert_eq!(r.phase, "promoted", "{r:#?}");
    assert_each_step_once(&r.history, 3);
    f.converge(10000, Duration::from_secs(2))?;
    // Judged on the fleet's counters: the steps' windows hold far more
    // connections than the leader alone carried.
    let after = per_host_connections(&f.fleet(0)?);
    let leader_name = format!("lb{}", leader + 1);
    let leader_own = after[&leader_name] - before.get(&leader_name).copied().unwrap_or(0);
    let judged: u64 = r
        .history
        .iter()
        .filter(|l| l.contains(" passed"))
        .filter_map(|l| {
            // "... canary F/A failed, stable F/A failed"
            let nums: Vec<u64> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|x| x.parse().ok())
                .collect();
            let n = nums.len();
            (n >= 4).then(|| nums[n - 3] + nums[n - 1])
        })
        .sum();
    println!(
        "rollout promoted: judged {judged} connections; the leader alone carried {leader_own}"
    );
    assert!(
        judged * 2 > leader_own * 3,
        "judged {judged} vs the leader's own {leader_own}: not the fleet's sum"
    );

    // A second rollout (the same plan: its first step lasts at least 2 s,
    // the fault strikes 1 s into it); its canary starts resetting.
    f.topo.ctl(leader, &["set-weight", "shop", "0"])?;
    f.converge(0, Duration::from_secs(2))?;
    f.topo.ctl(starter, &["rollout", "start", "shop"])?;
    f.converge(1000, Duration::from_secs(3))?;
    std::thread::sleep(Duration::from_secs(1));
    f.topo.set_fault("b3", "rst")?;
    let t = f.converge(0, Duration::from_secs(10))?;
    println!(
        "canary resets: weight 0 on all 3 hosts {:.0} ms after the fault",
        t.as_secs_f64() * 1e3
    );
    assert!(t < Duration::from_secs(2), "rollback took {t:?}");
    let (ok, failed) = load.stop();
    println!("load: {ok} connections ok, {failed} failed");
    Ok(())
}

/// One client whose connections ECMP spreads over all three hosts is one
/// failing client for the fleet, not three: against a canary that resets
/// every connection, it holds the step (`min_failing_clients` is 3); the
/// whole load's clients then fail it. (Summed per host, as before, the one
/// client counted three times and rolled the canary back.)
#[test]
fn one_client_failing_through_every_host_counts_once() -> Result<()> {
    let _s = serial();
    let f = Fleet::new(
        "      steps: [10, 50, 100]
      interval: 60s
      analysis:
        max_error_ratio: 0.1
",
        "3s",
    )?;
    let (index, addr) = canary_client(&f.yamls[0], 1000)?;
    let leader = f.leader()?;
    f.topo.ctl(leader, &["rollout", "start", "shop"])?;
    f.converge(1000, Duration::from_secs(3))?;
    // Its probes pass: only the passive signals see the failures.
    f.topo.set_fault("b3", "rst-service")?;
    let before = per_host_connections(&f.fleet(leader)?);
    // The one client runs until the leader's tests find the canary failing
    // (and hold it): a host counts a reset only when the backend's reply
    // returns through it (README, fleet), so with ECMP returns about a
    // third of them are seen and the crossing takes a varying time.
    let mut one = Load::start(
        &f.topo.client,
        vip(),
        LoadBounds {
            clients: 1,
            first_client: index,
            pause: Duration::from_millis(20),
            max_time: Duration::from_secs(15),
            ..LoadBounds::default()
        },
    );
    let began = Instant::now();
    let mut held = None;
    let mut last = None;
    while held.is_none() && began.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(250));
        let r = f.shop(leader)?.rollout.context("rollout")?;
        last = r.analysis.clone();
        if r.phase != "running" {
            held = Some(r);
            break;
        }
        // Failing, and the client's failure lists counted (they come with
        // the reports, a second apart: until then the count is 0).
        let failing = r.analysis.as_ref().is_some_and(|a| {
            matches!(
                a.verdict,
                canary_userspace::control::api::Verdict::Fail { .. }
            ) && !a.notes.iter().any(|n| n.contains("from 0 distinct"))
        });
        if failing {
            held = Some(r);
        }
    }
    let (one_ok, one_failed) = one.stop();
    // Every host's report (each second), so each one's share is counted.
    std::thread::sleep(Duration::from_millis(1500));
    let after = per_host_connections(&f.fleet(leader)?);
    let spread: Vec<u64> = (1..=3)
        .map(|k| {
            let h = format!("lb{k}");
            after.get(&h).copied().unwrap_or(0) - before.get(&h).copied().unwrap_or(0)
        })
        .collect();
    let r = held.unwrap_or_else(|| {
        panic!("the leader's tests never found the one client's canary failing: {last:?}")
    });
    let notes = analysis_notes(&r);
    println!(
        "client {addr}: {one_ok} ok, {one_failed} failed in {:.1} s; its connections per host \
         {spread:?}; phase {}; {notes}\nanalysis: {:?}",
        began.elapsed().as_secs_f64(),
        r.phase,
        r.analysis
    );
    assert!(
        spread.iter().all(|&n| n > 0),
        "ECMP spread the one client over every host: {spread:?}"
    );
    assert!(one_failed >= 20, "the canary reset its connections");
    assert_eq!(
        r.phase, "running",
        "one client cannot fail the step: {r:#?}"
    );
    assert!(notes.contains("from 1 distinct client(s)"), "{notes}");
    let r = f.shop(leader)?.rollout.context("rollout")?;
    assert_eq!(r.phase, "running", "still held: {r:#?}");
    assert_eq!(f.weight_bp(leader)?, 1000);

    // The whole load's clients meet the resetting canary: rolled back.
    let mut load = Load::start(&f.topo.client, vip(), LoadBounds::default());
    let t = f.converge(0, Duration::from_secs(10))?;
    let (ok, failed) = load.stop();
    println!(
        "every client: weight 0 on all 3 hosts {:.0} ms after the load began; load {ok} ok, {failed} failed",
        t.as_secs_f64() * 1e3
    );
    let r = f.shop(leader)?.rollout.context("rollout")?;
    assert_eq!(r.phase, "aborted", "{r:#?}");
    Ok(())
}

#[test]
fn the_leader_killed_mid_step_hands_over_at_the_same_step() -> Result<()> {
    let _s = serial();
    let mut f = Fleet::new(
        "      steps: [10, 20, 30, 100]
      interval: 5s
      analysis:
        max_error_ratio: 0.2
        min_canary_connections: 20
",
        "3s",
    )?;
    let mut load = Load::start(&f.topo.client, vip(), LoadBounds::default());
    let leader = f.leader()?;
    f.topo.ctl(leader, &["rollout", "start", "shop"])?;
    // Into step 2, 1.5 s.
    f.converge(2000, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(1500));
    let step_before = f.shop(leader)?.rollout.context("rollout")?.step;
    let pid = f.daemons[leader].as_ref().unwrap().pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    f.daemons[leader] = None;
    let others: Vec<usize> = (0..3).filter(|k| *k != leader).collect();
    let new_leader = loop {
        if let Some(k) = others
            .iter()
            .copied()
            .find(|k| f.fleet(*k).map(|fl| fl.leading).unwrap_or(false))
        {
            break k;
        }
        if killed.elapsed() > Duration::from_secs(10) {
            bail!("no new leader 10 s after the leader was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    let step_after = f.shop(new_leader)?.rollout.context("rollout")?.step;
    println!(
        "leader lb{} killed at step {step_before}: lb{} leads {:.2} s later, at step {step_after}",
        leader + 1,
        new_leader + 1,
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(4),
        "takeover took {took:?} (TTL 3 s + 1 s)"
    );
    assert_eq!(step_after, step_before, "the new leader is at another step");
    f.wait(Duration::from_secs(60), "the rollout to end", |s| {
        s.services[0]
            .rollout
            .as_ref()
            .is_some_and(|r| r.phase == "promoted" || r.phase == "aborted")
    })?;
    let r = f.shop(new_leader)?.rollout.context("rollout")?;
    assert_eq!(r.phase, "promoted", "{r:#?}");
    assert_each_step_once(&r.history, 4);
    load.stop();
    // The dead host is not forgotten: its data plane still forwards with
    // the weight it had, and status says so.
    let dead = format!("lb{}", leader + 1);
    let fl = f.fleet(new_leader)?;
    assert!(
        fl.silent.iter().any(|h| h.name == dead),
        "{dead} not listed as silent: {fl:#?}"
    );
    let line = &fl.agreement[0].line;
    assert!(
        line.starts_with("2/3 hosts apply 100.00%") && line.ends_with("(1 silent)"),
        "{line}"
    );
    let text = f.topo.ctl(new_leader, &["status"])?;
    assert!(
        text.contains(&format!("host {dead}")) && text.contains("SILENT"),
        "{text}"
    );
    // The killed host's canaryd started again: it takes its data plane
    // over, reads the fleet's state and rejoins (weight 100 after the
    // promotion, reached while it was gone).
    // Its map, sampled all along: from the weight it had when killed
    // straight to the fleet's, never through the config file's 0%.
    let before_restart = f.weight_bp(leader)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let own_maps = Maps::from_pins(&f.topo.lbs[leader].pin_dir())?;
    let (seen, spawned) = std::thread::scope(|s| {
        let (stop, own_maps) = (&stop, &own_maps);
        let sampler = s.spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let end = Instant::now() + Duration::from_secs(15);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                if let Ok(bp) = canary_tests::rollout::weight_bp(own_maps) {
                    seen.insert(bp);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        let spawned = f
            .topo
            .spawn_canaryd(leader, &f.yamls[leader])
            .and_then(|d| {
                let t = Instant::now();
                while f.weight_bp(leader)? != 10000 && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(500));
                Ok(d)
            });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (sampler.join().unwrap(), spawned)
    });
    f.daemons[leader] = Some(spawned?);
    println!(
        "restarted lb{}: its map went through {seen:?} bp",
        leader + 1
    );
    let allowed = std::collections::BTreeSet::from([before_restart, 10000]);
    assert!(seen.is_subset(&allowed), "{seen:?} (from {before_restart})");
    f.wait(Duration::from_secs(10), "3/3 hosts again", |s| {
        s.fleet.as_ref().is_some_and(|fl| {
            fl.agreement
                .iter()
                .any(|a| a.agreeing == 3 && a.line.starts_with("3/3 hosts apply 100.00%"))
        })
    })?;
    assert_eq!(f.weight_bp(leader)?, 10000);
    let rejoined = f
        .shop(leader)?
        .rollout
        .context("rollout on the rejoined host")?;
    assert_eq!(rejoined.phase, "promoted");
    Ok(())
}

#[test]
fn a_lost_lb_host_breaks_no_connection() -> Result<()> {
    let _s = serial();
    let mut topo = FleetTopology::new(3, 3)?;
    topo.start_push_servers(80, 100)?;
    let mut daemons = Vec::new();
    for k in 0..3 {
        let yaml = topo
            .lb_config(k)
            .fleet(topo.fleet_section(k, "lab").lease_ttl("3s"))
            .service(
                // No health probes (the push servers serve none).
                Service::tcp("shop", VIP_V4, 80).weight(30.0).lab_pools(),
            )
            .yaml();
        daemons.push(topo.spawn_canaryd(k, &yaml)?);
    }
    let conns: Vec<PushConn> = topo.client.run(|| {
        (0..200)
            .map(|i| PushConn::open(client_v4(i), vip(), Duration::from_secs(3)))
            .collect::<Result<_>>()
    })?;
    // Every server pushes every 100 ms: all of them within a second.
    let before: Vec<u64> = conns.iter().map(|c| c.health().pushes).collect();
    std::thread::sleep(Duration::from_secs(1));
    for (c, b) in conns.iter().zip(&before) {
        anyhow::ensure!(c.health().pushes >= b + 3, "no pushes on {}", c.local);
    }
    let rx_before = canary_tests::Topology::link_stats(&topo.lbs[1].ns, &topo.lbs[1].front_if)?;
    assert!(rx_before.0 > 0, "lb2 carried nothing");
    let inserts = |topo: &FleetTopology| -> Result<u64> {
        let mut n = 0;
        for k in [0, 2] {
            n += topo
                .status(k)?
                .datapath
                .get("flow_insert")
                .copied()
                .unwrap_or(0);
        }
        Ok(n)
    };
    let inserts_before = inserts(&topo)?;
    topo.host_down(1)?;
    let down = Instant::now();
    // Both directions, for 5 s after the loss.
    let mut conns = conns;
    while down.elapsed() < Duration::from_secs(5) {
        for c in conns.iter_mut() {
            let _ = c.send("ping");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Then one more second: pushes still coming, every echo answered.
    let before: Vec<u64> = conns.iter().map(|c| c.health().pushes).collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut working = 0;
    let mut broken = Vec::new();
    for (c, b) in conns.iter().zip(&before) {
        let echoes = c.wait_echoes(Duration::from_millis(500));
        let h = c.health();
        if h.pushes >= b + 3 && echoes && h.error.is_none() {
            working += 1;
        } else {
            broken.push(format!("{} on {}: {h:?}", c.local, c.backend));
        }
    }
    // The connections lb2 carried now have entries on lb1 and lb3, made by
    // their next client packet (a third of 200 by the hash).
    let moved = inserts(&topo)? - inserts_before;
    println!(
        "lb2 lost: {moved} connections moved to lb1 and lb3; {working} of 200 keep working both ways"
    );
    assert!(moved >= 30, "only {moved} connections moved off lb2");
    assert!(working >= 198, "{} broken: {broken:#?}", 200 - working);
    drop(daemons);
    Ok(())
}

#[test]
fn etcd_member_and_quorum_loss() -> Result<()> {
    let _s = serial();
    let mut f = Fleet::new(IDLE_PLAN, "3s")?;
    // One member gone: nothing changes.
    f.topo.etcd.kill(0)?;
    f.topo.ctl(0, &["set-weight", "shop", "10"])?;
    f.converge(1000, Duration::from_secs(3))?;
    std::thread::sleep(Duration::from_secs(2));
    for k in 0..3 {
        // Not even briefly cut off: the host moved to another member.
        let events = f.topo.ctl(k, &["events"])?;
        assert!(!events.contains("CUT OFF"), "lb{}: {events}", k + 1);
        let fl = f.fleet(k)?;
        assert!(
            fl.connected && fl.cut_off_since_ms.is_none(),
            "lb{}: {fl:#?}",
            k + 1
        );
    }
    // Quorum gone: every host says it is cut off; the maps keep 10%.
    f.topo.etcd.kill(1)?;
    f.wait(
        Duration::from_secs(10),
        "every host to say it is cut off",
        |s| {
            s.fleet
                .as_ref()
                .is_some_and(|fl| fl.cut_off_since_ms.is_some())
        },
    )?;
    for k in 0..3 {
        assert_eq!(f.weight_bp(k)?, 1000, "lb{} changed its weight", k + 1);
    }
    let text = f.topo.ctl(0, &["status"])?;
    assert!(text.contains("CUT OFF from etcd since"), "{text}");
    // A raise is refused, in one line.
    let out = f.topo.ctl_output(0, &["set-weight", "shop", "50"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cut off from etcd"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(f.weight_bp(0)?, 1000);
    // A rollback applies here at once.
    let t0 = Instant::now();
    f.topo.ctl(1, &["rollback", "shop"])?;
    let applied = loop {
        if f.weight_bp(1)? == 0 {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(1) {
            bail!("rollback not applied on lb2 while cut off");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    println!(
        "rollback while cut off: on lb2's map {:.1} ms after canaryctl started",
        applied.as_secs_f64() * 1e3
    );
    assert!(applied < Duration::from_millis(100), "{applied:?}");
    assert_eq!(f.weight_bp(0)?, 1000, "lb1 cannot know yet");
    let pending = f.fleet(1)?.pending_rollbacks;
    assert_eq!(pending, vec!["shop".to_string()]);
    // A restart while still cut off keeps it (it is in the state file).
    f.daemons[1] = None;
    f.daemons[1] = Some(f.topo.spawn_canaryd(1, &f.yamls[1])?);
    assert_eq!(f.weight_bp(1)?, 0, "lb2 restarted cut off");
    assert_eq!(f.fleet(1)?.pending_rollbacks, vec!["shop".to_string()]);
    // Quorum back: the rollback reaches etcd and every host.
    let t0 = Instant::now();
    f.topo.etcd.restart(0)?;
    f.topo.etcd.restart(1)?;
    let members_back = t0.elapsed();
    f.converge(0, Duration::from_secs(20))?;
    println!(
        "quorum back: members up after {:.2} s, weight 0 on every host {:.2} s after the restart began",
        members_back.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    f.wait(Duration::from_secs(10), "every host connected again", |s| {
        s.fleet
            .as_ref()
            .is_some_and(|fl| fl.connected && fl.pending_rollbacks.is_empty())
    })?;
    let _ = &mut f;
    Ok(())
}

#[test]
fn one_health_view_decided_by_majority() -> Result<()> {
    let _s = serial();
    let f = Fleet::new(IDLE_PLAN, "3s")?;
    f.topo.ctl(0, &["set-weight", "shop", "10"])?;
    f.converge(1000, Duration::from_secs(3))?;
    // lb3 alone cannot reach b1's health port: only its own view says down.
    let lb3 = &f.topo.lbs[2].ns;
    lb3.exec(&["nft", "add", "table", "ip", "cnry_probe"])?;
    lb3.exec(&[
        "nft",
        "add",
        "chain",
        "ip",
        "cnry_probe",
        "out",
        "{ type filter hook output priority 0 ; }",
    ])?;
    let port = HEALTH_PORT.to_string();
    lb3.exec(&[
        "nft",
        "add",
        "rule",
        "ip",
        "cnry_probe",
        "out",
        "ip",
        "daddr",
        "198.18.1.2",
        "tcp",
        "dport",
        &port,
        "drop",
    ])?;
    // b2 fails its probes from every host.
    f.topo.set_fault("b2", "http500")?;
    let backend = |s: &Status, addr: &str| {
        s.services[0]
            .backends
            .iter()
            .find(|b| b.addr.to_string() == addr)
            .and_then(|b| b.healthy)
    };
    let lb3_sees_b1_down = |s: &Status| {
        s.fleet.as_ref().is_some_and(|fl| {
            fl.hosts
                .iter()
                .any(|h| h.name == "lb3" && h.unhealthy.contains(&"shop/198.18.1.2".to_string()))
        })
    };
    f.wait(
        Duration::from_secs(15),
        "b2 out of every host, and lb3's own probes seeing b1 down",
        |s| backend(s, "198.18.2.2") == Some(false) && lb3_sees_b1_down(s),
    )?;
    // One host's view is not the fleet's: b1 stays in everywhere.
    std::thread::sleep(Duration::from_secs(2));
    for k in 0..3 {
        assert_eq!(
            backend(&f.status(k)?, "198.18.1.2"),
            Some(true),
            "b1 on lb{}",
            k + 1
        );
    }
    let own = f.fleet(2)?;
    let lb3_view = own.hosts.iter().find(|h| h.name == "lb3").context("lb3")?;
    assert!(
        lb3_view.unhealthy.contains(&"shop/198.18.1.2".to_string()),
        "lb3's own view: {lb3_view:?}"
    );
    let detail = f.shop(0)?.backends[1]
        .health_detail
        .clone()
        .unwrap_or_default();
    println!("b2 on lb1: {detail}");
    assert!(detail.starts_with("fleet: unhealthy ("), "{detail}");
    // Every host's data plane: no new connection reaches b2; b1 still serves.
    let got = f.topo.client.run(|| {
        let sources: Vec<_> = (0..300).map(client_v4).collect();
        canary_tests::burst(&sources, vip(), Duration::from_secs(30))
    })?;
    let on = |b: &str| got.iter().filter(|(_, x)| x == b).count();
    println!(
        "300 clients with b2 out: b1 {}, b2 {}, b3 {}",
        on("b1"),
        on("b2"),
        on("b3")
    );
    assert_eq!(on("b2"), 0);
    assert!(on("b1") > 100);
    // b2 healthy again: back on every host.
    f.topo.set_fault("b2", "")?;
    f.wait(Duration::from_secs(15), "b2 back on every host", |s| {
        backend(s, "198.18.2.2") == Some(true)
    })?;
    Ok(())
}

#[test]
fn on_rollback_reset_resets_canary_connections_on_every_host() -> Result<()> {
    let _s = serial();
    let mut topo = FleetTopology::new(3, 3)?;
    topo.start_push_servers_with(80, &ServerOptions::probed(), 100)?;
    let mut daemons = Vec::new();
    for k in 0..3 {
        let yaml = topo
            .lb_config(k)
            .fleet(topo.fleet_section(k, "lab").lease_ttl("3s"))
            .service(shop(
                "      steps: [50, 100]\n      interval: 600s\n      on_rollback: reset\n",
            ))
            .yaml();
        daemons.push(topo.spawn_canaryd(k, &yaml)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    topo.ctl(1, &["rollout", "start", "shop"])?;
    let maps: Vec<Maps> = (0..3)
        .map(|k| Maps::from_pins(&topo.lbs[k].pin_dir()))
        .collect::<Result<_>>()?;
    let end = Instant::now() + Duration::from_secs(5);
    while maps
        .iter()
        .any(|m| canary_tests::rollout::weight_bp(m).unwrap_or(0) != 5000)
    {
        anyhow::ensure!(Instant::now() < end, "step 1 not applied everywhere");
        std::thread::sleep(Duration::from_millis(20));
    }
    let conns: Vec<PushConn> = topo.client.run(|| {
        (0..90)
            .map(|i| PushConn::open(client_v4(i), vip(), Duration::from_secs(3)))
            .collect::<Result<_>>()
    })?;
    std::thread::sleep(Duration::from_secs(1));
    // Aborted on lb1: weight 0, and open canary connections reset on every
    // host (their client packets reach all three by ECMP).
    topo.ctl(0, &["rollout", "abort", "shop"])?;
    let mut conns = conns;
    for _ in 0..4 {
        for c in conns.iter_mut() {
            let _ = c.send("ping");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (mut canary, mut canary_reset, mut stable, mut stable_ok) = (0, 0, 0, 0);
    for c in &conns {
        let h = c.health();
        if c.backend == "b3" {
            canary += 1;
            canary_reset += usize::from(h.error.is_some());
        } else {
            stable += 1;
            stable_ok += usize::from(h.error.is_none() && c.wait_echoes(Duration::from_secs(1)));
        }
    }
    println!(
        "rollout aborted on lb1 with on_rollback: reset: {canary_reset} of {canary} canary \
         connections reset, {stable_ok} of {stable} stable ones working"
    );
    assert!(canary >= 20, "only {canary} canary connections");
    assert_eq!(canary_reset, canary, "canary connections left open");
    assert_eq!(stable_ok, stable, "stable connections broken");
    // Then the service's document rests: no host keeps writing it.
    let version = || -> Result<u64> {
        let out = topo
            .etcd
            .etcdctl(&["get", "/canary/lab/services/shop", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["kvs"][0]["version"].as_u64().context("no version")
    };
    let v0 = version()?;
    std::thread::sleep(Duration::from_secs(2));
    let v1 = version()?;
    assert_eq!(
        v1,
        v0,
        "shop's document written {} times in 2 s at rest",
        v1 - v0
    );
    drop(daemons);
    Ok(())
}

/// A rolling upgrade half done: a host whose report lists no rollout
/// features (an older canaryd, as etcd sees it) keeps a plan that needs one
/// (`on_failure: pause`) from starting, with a line naming the host; once
/// the host is gone the plan starts.
#[test]
fn a_plan_needing_a_feature_waits_for_every_host() -> Result<()> {
    let _s = serial();
    let f = Fleet::new(
        "      steps: [10, 100]\n      interval: 600s\n      on_failure: pause\n",
        "3s",
    )?;
    let older =
        |at_ms: u128| format!(r#"{{"host":"lb-old","session":7,"at_ms":{at_ms},"leader":false}}"#);
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    // Written as a host's report would be (without its lease: deleted below).
    f.topo
        .etcd
        .etcdctl(&["put", "/canary/lab/hosts/lb-old", &older(now_ms())])?;
    let mut refused = None;
    let end = Instant::now() + Duration::from_secs(5);
    while refused.is_none() && Instant::now() < end {
        let out = f.topo.ctl_output(0, &["rollout", "start", "shop"])?;
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).to_string());
        } else {
            // The report had not arrived yet: undo and look again.
            f.topo.ctl(0, &["rollout", "abort", "shop"])?;
            f.topo
                .etcd
                .etcdctl(&["put", "/canary/lab/hosts/lb-old", &older(now_ms())])?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let err = refused.context("the plan started beside an older host")?;
    println!("{}", err.trim_end());
    assert!(
        err.contains("host lb-old runs a canaryd without on_failure"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(f.shop(0)?.rollout.is_none_or(|r| r.phase != "running"));
    f.topo.etcd.etcdctl(&["del", "/canary/lab/hosts/lb-old"])?;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let out = f.topo.ctl_output(0, &["rollout", "start", "shop"])?;
        if out.status.success() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < end,
            "still refused with lb-old gone: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    f.topo.ctl(0, &["rollout", "abort", "shop"])?;
    Ok(())
}
