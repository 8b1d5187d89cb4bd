//! `cargo xtask demo --fleet`: three load-balancer hosts behind an ECMP
//! router acting as one through a 3-member etcd cluster. One weight set on
//! one host reaches all three; ECMP spreads the clients over the hosts and
//! the split holds; a rollout under load survives its leader's canaryd
//! being killed; an LB host lost breaks no open connection. Everything it
//! creates (namespaces, links, pins, processes) is gone when it exits,
//! whether it succeeds or fails; every wait is bounded.

use anyhow::{bail, Context, Result};
use canary_tests::client::PushConn;
use canary_tests::fleet::FleetTopology;
use canary_tests::rollout::{shop, weight_bp, HEALTH_PORT};
use canary_tests::{client_v4, tcp_connect, Daemon, Load, LoadBounds, Netns, ServerOptions};
use canary_tests::{daemon, VIP_V4};
use canary_userspace::control::api::{FleetStatus, RolloutStatus, ServiceStatus, Status};
use canary_userspace::dataplane::maps::Maps;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const HOSTS: usize = 3;
/// The fleet's lease: a dead leader's lease runs out after this.
const LEASE_TTL: &str = "3s";
const STEPS: [f64; 4] = [10.0, 25.0, 50.0, 100.0];
const STEP_S: u64 = 3;
/// The step during which the leader is killed (1-based), and how far into it.
const KILL_AT_STEP: usize = 2;
const KILL_AFTER_S: f64 = 1.0;
/// Push connections held open while an LB host goes down.
const PUSH_CONNS: u32 = 150;
const PUSH_MS: u64 = 100;

fn plan() -> String {
    let steps: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
    format!(
        "      steps: [{}]
      interval: {STEP_S}s
      analysis:
        max_error_ratio: 0.2
        min_canary_connections: 20
",
        steps.join(", ")
    )
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), 80)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The act's clock, shown in every heading.
struct Clock(Instant);

impl Clock {
    fn heading(&self, text: &str) {
        println!("\n== [{:5.1} s] {text}", self.0.elapsed().as_secs_f64());
    }

    /// A heading of the act, which goes on only if not interrupted.
    fn step(&self, text: &str) -> Result<()> {
        not_interrupted()?;
        self.heading(text);
        Ok(())
    }
}

/// Set by SIGINT or SIGTERM: the act stops at its next check and tears
/// the fleet down as on any failure (rather than dying and leaving it).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { sigaction(sig, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn not_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (SIGINT or SIGTERM)");
    }
    Ok(())
}

/// The fleet: canaryd on each LB host (`None` once killed), each host's
/// maps read from its pins, and the topology. Field order is drop order:
/// daemons stop first, the namespaces and etcd go last.
struct Fleet {
    daemons: Vec<Option<Daemon>>,
    /// Killed canaryd, kept for their logs (reaped when dropped).
    dead: Vec<(usize, Daemon)>,
    maps: Vec<Maps>,
    topo: FleetTopology,
    yaml: Vec<String>,
}

impl Fleet {
    fn name(&self, k: usize) -> &str {
        &self.topo.lbs[k].name
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..HOSTS).filter(|k| self.daemons[*k].is_some())
    }

    fn status(&self, k: usize) -> Result<Status> {
        self.topo.status(k)
    }

    fn fleet(&self, k: usize) -> Result<FleetStatus> {
        self.status(k)?.fleet.context("no fleet in status")
    }

    fn shop(&self, k: usize) -> Result<ServiceStatus> {
        shop_of(self.status(k)?)
    }

    /// Waits until `ok` holds for the status of every live host; after
    /// `limit`, an error with their `canaryctl status`.
    fn wait(&self, limit: Duration, what: &str, ok: impl Fn(&Status) -> bool) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            not_interrupted()?;
            if self
                .live()
                .all(|k| self.status(k).map(|s| ok(&s)).unwrap_or(false))
            {
                return Ok(());
            }
            if Instant::now() > end {
                let mut dump = String::new();
                for k in self.live() {
                    dump += &format!(
                        "--- {} ---\n{}\n",
                        self.name(k),
                        self.topo.ctl(k, &["status"]).unwrap_or_default()
                    );
                }
                bail!("waited {limit:?} for {what}:\n{dump}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leader(&self) -> Result<usize> {
        for k in self.live() {
            if self.fleet(k)?.leading {
                return Ok(k);
            }
        }
        bail!("no host leads")
    }

    /// Each live host's new connections to `shop` so far (its data plane's
    /// counters, read now).
    fn new_flows(&self) -> Result<BTreeMap<usize, u64>> {
        self.live()
            .map(|k| {
                let s = self.shop(k)?;
                Ok((k, s.stable.new_flows + s.canary.new_flows))
            })
            .collect()
    }

    /// The agreement line of `shop` as host `k` sees it.
    fn agreement(&self, k: usize) -> Result<String> {
        let f = self.fleet(k)?;
        let a = f
            .agreement
            .iter()
            .find(|a| a.service == "shop")
            .context("no agreement line for shop")?;
        Ok(a.line.clone())
    }
}

fn shop_of(s: Status) -> Result<ServiceStatus> {
    s.services
        .into_iter()
        .find(|s| s.name == "shop")
        .context("no service shop in status")
}

/// Only the fleet's lines of a `canaryctl status` text (up to the first
/// service's line).
fn fleet_lines(status: &str) -> String {
    status
        .lines()
        .take_while(|l| l.starts_with("fleet ") || l.starts_with("  "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The backends that answered each client's connections: `per_client`
/// connections from each of `clients` addresses from `client_v4(first)`
/// on (each from another source port, so ECMP spreads one client's
/// connections over the hosts), on 8 threads.
fn client_backends(
    client: &Netns,
    first: u32,
    clients: u32,
    per_client: usize,
) -> Result<Vec<Vec<String>>> {
    type Chunk = Result<Vec<(u32, Vec<String>)>>;
    let results: Vec<Chunk> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u32)
            .map(|t| {
                s.spawn(move || {
                    client.run(|| {
                        let mut r = Vec::new();
                        for i in (0..clients).filter(|i| i % 8 == t) {
                            let mut seen = Vec::new();
                            for _ in 0..per_client {
                                let src = client_v4(first + i);
                                let mut c = tcp_connect(src, vip(), Duration::from_secs(3))
                                    .with_context(|| format!("client {src}"))?;
                                c.ping("hello")?;
                                seen.push(c.backend);
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
    let mut out = vec![Vec::new(); clients as usize];
    for r in results {
        for (i, seen) in r? {
            out[i as usize] = seen;
        }
    }
    Ok(out)
}

/// The weights the map of the data plane pinned in `pin_dir` holds, each
/// with when it first held it, sampled every 100 us until `stop`.
fn record_weights(pin_dir: &Path, stop: &AtomicBool) -> Result<Vec<(u32, Instant)>> {
    let maps = Maps::from_pins(pin_dir)?;
    let mut seen: Vec<(u32, Instant)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let bp = weight_bp(&maps)?;
        if seen.last().map(|(b, _)| *b) != Some(bp) {
            seen.push((bp, Instant::now()));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(seen)
}

/// The history's passed steps, in order ("step 2/4 (25%) passed ...").
fn passed_steps(history: &[String]) -> Vec<usize> {
    history
        .iter()
        .filter(|l| l.contains(" passed"))
        .filter_map(|l| l.strip_prefix("step ")?.split('/').next()?.parse().ok())
        .collect()
}

fn rollout_line(
    t: Duration,
    view: &str,
    leader: &str,
    s: &ServiceStatus,
    r: &RolloutStatus,
) -> String {
    format!(
        "  [{:5.1} s] leader {leader:<4} ({view}'s view) {}",
        t.as_secs_f64(),
        crate::rollout_figures(s, r)
    )
}

pub fn run() -> Result<()> {
    catch_signals()?;
    let clock = Clock(Instant::now());
    println!("canary fleet act: three LB hosts, one rollout, shared state in etcd");
    println!(
        "
  client 198.18.0.2 (sources 198.18.16.0/20)
     |
  router 198.18.0.1: VIP net 198.18.100.0/24 by ECMP (L4 hash) over
     |-------------------------|-------------------------|
  lb1 198.18.41.2           lb2 198.18.42.2           lb3 198.18.43.2     canaryd + XDP on each
     |  every LB linked to every backend; replies return by ECMP over all LBs
  b1 198.18.1.2 (stable)    b2 198.18.2.2 (stable)    b3 198.18.3.2 (canary)
  management 198.19.255.0/24: lb1..3 .1-.3, etcd e1 e2 e3 .11-.13"
    );

    clock.heading("building the fleet: router, 3 LB hosts, 3 backends, a 3-member etcd cluster");
    let t = Instant::now();
    let mut topo = FleetTopology::new(HOSTS, 3)?;
    topo.start_push_servers_with(80, &ServerOptions::probed(), PUSH_MS)?;
    println!(
        "  namespaces {}-{{client,router,lb1..3,b1..3,sw,etcd1..3}}; etcd healthy; servers on b1..b3 :80 (HTTP health :{HEALTH_PORT}) ({})",
        topo.id,
        secs(t.elapsed())
    );

    let mut f = Fleet {
        daemons: Vec::new(),
        dead: Vec::new(),
        maps: Vec::new(),
        yaml: Vec::new(),
        topo,
    };
    let result = act(&mut f, &clock);
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        println!("\n== the act failed; the end of each canaryd's log:");
        let dead = f.dead.iter().map(|(k, d)| (*k, d, " (killed)"));
        let live = (0..HOSTS).filter_map(|k| f.daemons[k].as_ref().map(|d| (k, d, "")));
        for (k, d, what) in dead.chain(live) {
            println!("--- {}{what} ---", f.name(k));
            let log = d.log();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(20)..] {
                println!("{l}");
            }
        }
    }

    clock.heading("stopping canaryd and tearing the fleet down");
    let act_time = clock.0.elapsed();
    for d in f.daemons.iter_mut().flatten() {
        d.stop();
    }
    drop(f);
    println!(
        "  done in {} (the act {}): no namespace, link, pin or process left behind",
        secs(clock.0.elapsed()),
        secs(act_time)
    );
    result
}

/// Everything between building the fleet and tearing it down; what it
/// starts on the fleet's hosts is in `f`, stopped by the caller.
fn act(f: &mut Fleet, clock: &Clock) -> Result<()> {
    clock.step(&format!(
        "starting canaryd on lb1, lb2, lb3: service shop {VIP_V4}:80, stable b1 b2, canary b3, HTTP probes, lease {LEASE_TTL}"
    ))?;
    let t = Instant::now();
    for k in 0..HOSTS {
        let yaml = f
            .topo
            .lb_config(k)
            .fleet(f.topo.fleet_section(k, "demo").lease_ttl(LEASE_TTL))
            .service(shop(&plan()))
            .yaml();
        let d = f.topo.spawn_canaryd(k, &yaml)?;
        println!(
            "  {}: canaryd pid {} attached to front and b1..b3, etcd {}",
            f.name(k),
            d.pid(),
            f.topo.etcd.endpoints().join(",")
        );
        f.maps.push(Maps::from_pins(&f.topo.lbs[k].pin_dir())?);
        f.daemons.push(Some(d));
        f.yaml.push(yaml);
    }
    f.wait(Duration::from_secs(20), "the fleet to form", |s| {
        s.fleet
            .as_ref()
            .is_some_and(|fl| fl.connected && fl.leader.is_some() && fl.hosts.len() == HOSTS)
    })?;
    f.wait(Duration::from_secs(10), "every backend healthy", |s| {
        shop_of(s.clone()).is_ok_and(|s| s.backends.iter().all(|b| b.healthy == Some(true)))
    })?;
    println!(
        "  the fleet formed: every host reports, one leads, every probe healthy ({})",
        secs(t.elapsed())
    );

    clock.step("canaryctl status (on lb2)")?;
    print!("{}", f.topo.ctl(1, &["status", "shop"])?);

    clock.step("canaryctl set-weight shop 10 on lb1: every host applies it")?;
    let t0 = Instant::now();
    let mut applied: Vec<Option<Duration>> = vec![None; HOSTS];
    let call = std::thread::scope(|s| -> Result<Duration> {
        let lb1 = &f.topo.lbs[0];
        let h = s.spawn(move || {
            let r = daemon::ctl(lb1, &["set-weight", "shop", "10"]);
            (r, t0.elapsed())
        });
        while applied.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(5) {
            for (a, maps) in applied.iter_mut().zip(&f.maps) {
                if a.is_none() && weight_bp(maps)? == 1000 {
                    *a = Some(t0.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (r, took) = h.join().unwrap();
        print!("{}", r?);
        Ok(took)
    })?;
    println!(
        "  canaryctl returned after {} (etcd holds the change)",
        ms(call)
    );
    for (k, a) in applied.iter().enumerate() {
        match a {
            Some(d) => println!(
                "  {}: 10% in its map {} after canaryctl started",
                f.name(k),
                ms(*d)
            ),
            None => bail!("{} did not apply 10% within 5 s", f.name(k)),
        }
    }
    let last = applied.iter().flatten().max().copied().unwrap_or_default();
    println!(
        "  the last host had it {} after canaryctl started",
        ms(last)
    );
    f.wait(Duration::from_secs(5), "agreement on 10%", |s| {
        s.fleet.as_ref().is_some_and(|fl| {
            fl.agreement.iter().any(|a| {
                a.service == "shop"
                    && a.line
                        .contains(&format!("{HOSTS}/{HOSTS} hosts apply 10.00%"))
            })
        })
    })?;
    println!("  agreement (lb3's view): {}", f.agreement(2)?);

    let (clients, per_client) = (600u32, 3usize);
    clock.step(&format!(
        "{} connections from {clients} client addresses ({per_client} each, other source ports)",
        clients as usize * per_client
    ))?;
    let before = f.new_flows()?;
    let t = Instant::now();
    let seen = client_backends(&f.topo.client, 0, clients, per_client).context("client burst")?;
    let took = t.elapsed();
    let after = f.new_flows()?;
    let total = clients as u64 * per_client as u64;
    println!("  ECMP spread them over the hosts (each host's own counters):");
    let mut counted = 0;
    for k in 0..HOSTS {
        let n = after[&k] - before[&k];
        counted += n;
        println!(
            "    {}: {n:5} connections ({:4.1}%)",
            f.name(k),
            100.0 * n as f64 / total as f64
        );
    }
    let mut by_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for b in seen.iter().flatten() {
        *by_backend.entry(b.as_str()).or_insert(0) += 1;
    }
    println!("  and the backends answered:");
    for (b, n) in &by_backend {
        let role = if *b == "b3" { "canary" } else { "stable" };
        println!("    {b} ({role}) {n:5} connections");
    }
    let canary_conns = by_backend.get("b3").copied().unwrap_or(0);
    let canary_clients = seen.iter().filter(|v| v[0] == "b3").count();
    let flips = seen
        .iter()
        .filter(|v| v.iter().any(|b| (b == "b3") != (v[0] == "b3")))
        .count();
    let share = canary_clients as f64 / clients as f64;
    // Binomial(clients, 0.10): 4 sigma.
    let sigma = (0.1 * 0.9 / clients as f64).sqrt();
    println!(
        "  canary: {canary_conns} of {total} connections ({:.1}%), {canary_clients} of {clients} clients ({:.1}%; weight 10%, 4 sigma = {:.1}%)",
        100.0 * canary_conns as f64 / total as f64,
        100.0 * share,
        400.0 * sigma
    );
    println!(
        "  clients that saw both versions: {flips} (one client, one version, whichever host its connection crossed); {}",
        secs(took)
    );
    anyhow::ensure!(
        counted == total,
        "the hosts counted {counted} new connections, {total} were made"
    );
    for k in 0..HOSTS {
        let n = after[&k] - before[&k];
        anyhow::ensure!(
            n * 100 > total * 15,
            "{} carried only {n} of {total}: ECMP did not spread",
            f.name(k)
        );
    }
    anyhow::ensure!(flips == 0, "{flips} clients saw both versions");
    anyhow::ensure!(
        (share - 0.1).abs() <= 4.0 * sigma,
        "canary share {share:.3} at weight 10%"
    );

    clock.step("a rollout under load, and the leader's canaryd killed mid-step")?;
    f.topo.ctl(0, &["set-weight", "shop", "0"])?;
    f.wait(Duration::from_secs(5), "weight 0 everywhere", |s| {
        shop_of(s.clone()).is_ok_and(|s| s.weight_percent == 0.0)
    })?;
    let steps: Vec<String> = STEPS.iter().map(|s| format!("{s}%")).collect();
    println!(
        "  plan {}, {STEP_S} s per step at least, judged on the sum of all hosts' counters (error ratio <= 20%, >= 20 canary connections)",
        steps.join(" -> ")
    );
    let leader = f.leader()?;
    let starter = (leader + 1) % HOSTS;
    println!(
        "  {} leads; the rollout is started on {} (it runs on the leader)",
        f.name(leader),
        f.name(starter)
    );
    let mut load = Load::start(
        &f.topo.client,
        vip(),
        LoadBounds {
            max_time: Duration::from_secs(60),
            ..LoadBounds::default()
        },
    );
    print!("{}", f.topo.ctl(starter, &["rollout", "start", "shop"])?);
    let started = Instant::now();
    let mut last_key = String::new();
    let mut killed: Option<(usize, Instant, usize)> = None;
    let mut takeover: Option<(usize, Duration)> = None;
    let (view, end) = loop {
        not_interrupted()?;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the rollout did not end within 60 s"
        );
        // The leader's view; while none leads, the first live host's.
        let mut views = Vec::new();
        for k in f.live() {
            if let Ok(s) = f.status(k) {
                views.push((k, s));
            }
        }
        let Some(pos) = views
            .iter()
            .position(|(_, s)| s.fleet.as_ref().is_some_and(|fl| fl.leading))
            .or(if views.is_empty() { None } else { Some(0) })
        else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let (k, s) = views.swap_remove(pos);
        let leading = s.fleet.as_ref().is_some_and(|fl| fl.leading);
        let leader_name = s
            .fleet
            .as_ref()
            .and_then(|fl| fl.leader.clone())
            .unwrap_or_else(|| "none".into());
        let svc = shop_of(s)?;
        let r = svc.rollout.clone().context("no rollout in status")?;
        // A new line when the viewpoint, the leader it names, the step or
        // the kind of verdict changes.
        let key = format!(
            "{k} {leader_name} {} {} {}",
            r.phase,
            r.step,
            r.verdict.split(':').next().unwrap_or("")
        );
        if key != last_key {
            println!(
                "{}",
                rollout_line(started.elapsed(), f.name(k), &leader_name, &svc, &r)
            );
            last_key = key;
        }
        if r.phase == "promoted" || r.phase == "aborted" {
            break (k, r);
        }
        if killed.is_none() && leading && r.step == KILL_AT_STEP && r.step_elapsed_s >= KILL_AFTER_S
        {
            let pid = f.daemons[k].as_ref().map(|d| d.pid()).unwrap_or(0);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let at = Instant::now();
            println!(
                "  >>> SIGKILL to {}'s canaryd (pid {pid}), the leader, {:.1} s into step {}/{} ({}%)",
                f.name(k),
                r.step_elapsed_s,
                r.step,
                r.steps.len(),
                r.steps[r.step - 1]
            );
            // Its pins stay, so its data plane goes on. The Daemon is kept
            // for its log (and reaped when dropped).
            if let Some(d) = f.daemons[k].take() {
                f.dead.push((k, d));
            }
            killed = Some((k, at, r.step));
            continue;
        }
        if let (Some((dead, at, step)), None) = (killed, takeover) {
            if leading && k != dead {
                let took = at.elapsed();
                println!(
                    "  >>> {} leads {} after the kill (lease {LEASE_TTL}), at step {}/{} ({}%): {}",
                    f.name(k),
                    secs(took),
                    r.step,
                    r.steps.len(),
                    r.steps[r.step - 1],
                    if r.step == step {
                        "the same step"
                    } else {
                        "ANOTHER step"
                    }
                );
                anyhow::ensure!(
                    r.step == step,
                    "the new leader is at step {}, the old one was at {step}",
                    r.step
                );
                takeover = Some((k, took));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let (ok, failed) = load.stop();
    println!(
        "  the rollout ended after {}: {} ({} leads)",
        secs(took),
        end.phase,
        f.name(view)
    );
    println!("  history:");
    for h in &end.history {
        println!("    {h}");
    }
    println!("  load: {ok} connections answered, {failed} failed");
    anyhow::ensure!(
        end.phase == "promoted",
        "the rollout was not promoted: {:?}",
        end.reason
    );
    let (dead, _, _) =
        killed.context("the leader was never killed: the rollout ended too early")?;
    anyhow::ensure!(takeover.is_some(), "no other host took over");
    let passed = passed_steps(&end.history);
    let want: Vec<usize> = (1..=STEPS.len()).collect();
    anyhow::ensure!(
        passed == want,
        "steps passed {passed:?}, want each once: {want:?}"
    );
    anyhow::ensure!(
        failed * 200 <= ok + failed,
        "{failed} of {} load connections failed",
        ok + failed
    );
    f.wait(Duration::from_secs(5), "agreement on 100%", |s| {
        s.fleet.as_ref().is_some_and(|fl| {
            fl.agreement
                .iter()
                .any(|a| a.service == "shop" && a.line.contains("apply 100.00%"))
        })
    })?;
    println!(
        "  agreement ({}'s view): {}",
        f.name(view),
        f.agreement(view)?
    );
    println!(
        "  {}: canaryd dead, yet its pinned XDP program forwards on (ECMP still sends it a third of the new",
        f.name(dead)
    );
    println!(
        "       connections) at {:.2}%, the weight it had; the agreement counts only hosts that report",
        weight_bp(&f.maps[dead])? as f64 / 100.0
    );

    clock.step(&format!(
        "{}'s canaryd back: it rejoins and applies the fleet's weight",
        f.name(dead)
    ))?;
    let pin_dir = f.topo.lbs[dead].pin_dir();
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let (restart, seen) = std::thread::scope(|s| {
        let recorder = s.spawn(|| record_weights(&pin_dir, &stop));
        let restart = (|| -> Result<()> {
            let d = f.topo.spawn_canaryd(dead, &f.yaml[dead])?;
            println!(
                "  {}: canaryd pid {} ({} to ready); it adopts the pinned data plane",
                f.name(dead),
                d.pid(),
                secs(t.elapsed())
            );
            f.daemons[dead] = Some(d);
            f.maps[dead] = Maps::from_pins(&f.topo.lbs[dead].pin_dir())?;
            f.wait(Duration::from_secs(10), "every host in agreement", |s| {
                s.fleet.as_ref().is_some_and(|fl| {
                    fl.hosts.len() == HOSTS
                        && fl.agreement.iter().any(|a| {
                            a.service == "shop"
                                && a.line
                                    .contains(&format!("{HOSTS}/{HOSTS} hosts apply 100.00%"))
                        })
                })
            })
        })();
        stop.store(true, Ordering::SeqCst);
        (restart, recorder.join().unwrap())
    });
    restart?;
    let seen = seen?;
    let mut steps = Vec::new();
    for (i, (bp, at)) in seen.iter().enumerate() {
        let pct = format!("{:.2}%", *bp as f64 / 100.0);
        steps.push(match seen.get(i + 1) {
            Some((_, next)) if i > 0 => {
                format!("{pct} (for {:.1} ms)", (*next - *at).as_secs_f64() * 1e3)
            }
            _ => pct,
        });
    }
    let applied = seen
        .last()
        .filter(|(bp, _)| *bp == 10000)
        .map(|(_, at)| secs(*at - t))
        .context("the restarted host does not apply 100%")?;
    println!(
        "  its map from the start until every host agrees: {} (100% {applied} after the start)",
        steps.join(" -> ")
    );
    print!("{}", fleet_lines(&f.topo.ctl(dead, &["status"])?));

    let leader = f.leader()?;
    let lost = (0..HOSTS)
        .find(|k| *k != leader)
        .context("no host but the leader")?;
    let others: Vec<usize> = (0..HOSTS).filter(|k| *k != lost).collect();
    clock.step(&format!(
        "{PUSH_CONNS} long-lived connections (servers push a line every {PUSH_MS} ms), then {} loses all its links",
        f.name(lost)
    ))?;
    let before = f.new_flows()?;
    let mut conns: Vec<PushConn> = f.topo.client.run(|| {
        (0..PUSH_CONNS)
            .map(|i| PushConn::open(client_v4(3000 + i), vip(), Duration::from_secs(3)))
            .collect::<Result<_>>()
    })?;
    let after = f.new_flows()?;
    for k in 0..HOSTS {
        println!(
            "  {}: carries {} of them",
            f.name(k),
            after[&k] - before[&k]
        );
    }
    let carried = after[&lost] - before[&lost];
    anyhow::ensure!(
        carried > 0,
        "{} carries none of the connections",
        f.name(lost)
    );
    let pushes: Vec<u64> = conns.iter().map(|c| c.health().pushes).collect();
    std::thread::sleep(Duration::from_secs(1));
    let flowing = conns
        .iter()
        .zip(&pushes)
        .filter(|(c, p)| c.health().pushes >= *p + 3)
        .count();
    println!("  pushes flowing on {flowing} of {PUSH_CONNS} after 1 s");
    anyhow::ensure!(
        flowing == conns.len(),
        "pushes stopped before any host went down"
    );
    // Flow entries made on the hosts that stay: a connection that comes to
    // a host for the first time gets one with its next packet.
    let inserts = |f: &Fleet| -> Result<Vec<u64>> {
        others
            .iter()
            .map(|&k| {
                let s = f.status(k)?;
                Ok(s.datapath.get("flow_insert").copied().unwrap_or(0))
            })
            .collect()
    };
    let inserts_before = inserts(f)?;
    for c in &conns {
        c.mark();
    }
    f.topo.host_down(lost)?;
    let down = Instant::now();
    println!(
        "  >>> {}: front, b1..b3 and mgmt0 down (the router and the backends lose carrier and skip it)",
        f.name(lost)
    );
    let mut sent = 0;
    while down.elapsed() < Duration::from_secs(5) {
        for c in conns.iter_mut() {
            let _ = c.send(&format!("ping {sent}"));
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let pushes: Vec<u64> = conns.iter().map(|c| c.health().pushes).collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut working = 0;
    let mut max_gap = Duration::ZERO;
    let mut broken = Vec::new();
    for (c, p) in conns.iter().zip(&pushes) {
        let echoes = c.wait_echoes(Duration::from_millis(500));
        let h = c.health();
        max_gap = max_gap.max(h.max_gap);
        if h.pushes >= p + 3 && echoes && h.error.is_none() {
            working += 1;
        } else {
            broken.push(format!("{} on {}: {h:?}", c.local, c.backend));
        }
    }
    let moved: Vec<u64> = inserts(f)?
        .iter()
        .zip(&inserts_before)
        .map(|(a, b)| a - b)
        .collect();
    println!(
        "  6 s later: {working} of {PUSH_CONNS} connections keep working both ways ({sent} lines echoed each, pushes still coming)"
    );
    let moved_total: u64 = moved.iter().sum();
    println!(
        "  connections new to a host (a flow entry made by their next packet): {} +{}, {} +{} = {moved_total}",
        f.name(others[0]),
        moved[0],
        f.name(others[1]),
        moved[1]
    );
    println!(
        "    the {carried} of {}, and those the router's hash-threshold ECMP moved between {} and {}",
        f.name(lost),
        f.name(others[0]),
        f.name(others[1])
    );
    println!(
        "    as its next hops went from 3 to 2 (about a sixth of all); each still reaches the backend it started on"
    );
    println!(
        "  largest gap between two pushes on any connection: {}",
        ms(max_gap)
    );
    for b in broken.iter().take(5) {
        println!("  broken: {b}");
    }
    // The lost host is gone from the fleet once its lease runs out.
    let lost_name = f.name(lost).to_string();
    let t = Instant::now();
    let gone = loop {
        let fl = f.fleet(leader)?;
        if !fl.hosts.iter().any(|h| h.name == lost_name) {
            break true;
        }
        if t.elapsed() > Duration::from_secs(6) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("  canaryctl status on {}, the leader:", f.name(leader));
    print!("{}", fleet_lines(&f.topo.ctl(leader, &["status"])?));
    anyhow::ensure!(
        working == conns.len(),
        "{} of {PUSH_CONNS} connections broke",
        conns.len() - working
    );
    anyhow::ensure!(
        moved_total >= carried,
        "only {moved_total} connections moved, {carried} crossed {lost_name}"
    );
    anyhow::ensure!(gone, "{lost_name} still reports to the fleet");
    drop(conns);

    clock.step(&format!(
        "canaryctl events (on {}, the leader)",
        f.name(leader)
    ))?;
    print!("{}", f.topo.ctl(leader, &["events"])?);
    Ok(())
}
