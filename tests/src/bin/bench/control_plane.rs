//! Control plane: weight change to the first connection observing it, and
//! canaryd's reload time for a weight-only change and a 1000-backend swap.

use crate::end_to_end::{canary_config, default_stable, VIP_TCP};
use crate::report::Report;
use crate::{median, Size};
use anyhow::{anyhow, bail, Context, Result};
use canary_tests::{client_v4, tcp_connect, Topology};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const G_SEEN: &str = "control plane: weight change seen by new connections, limit = design bound";
const G_CTL: &str =
    "control plane: canaryd reload, SIGHUP -> 'canaryd applied config', limit = weight-only change";

/// Connections from fresh sources until one lands on b3 (bounded): the
/// time from `since` to that connection.
fn first_canary(topo: &Topology, base: u32, since: Instant) -> Option<Duration> {
    let dst = SocketAddr::new(VIP_TCP.into(), 80);
    topo.client.run(|| {
        for i in 0..2000u32 {
            if since.elapsed() > Duration::from_secs(3) {
                return None;
            }
            if let Ok(c) = tcp_connect(
                client_v4((base + i) % 4096),
                dst,
                Duration::from_millis(500),
            ) {
                if c.backend == "b3" {
                    return Some(since.elapsed());
                }
            }
        }
        None
    })
}

pub fn control_plane(
    size: Size,
    report: &mut Report,
    topo: &Topology,
    d: &mut canary_tests::Daemon,
) -> Result<()> {
    println!("{G_SEEN}");
    report.add(
        G_SEEN,
        "design bound (DESIGN.md: weight 0 within a second)",
        1000.0,
        "ms",
        "",
    );
    let reload = |d: &mut canary_tests::Daemon, yaml: &str| -> Result<Duration> {
        let t = Instant::now();
        d.reload(yaml)?
            .map_err(|e| anyhow!("reload rejected: {e}"))?;
        Ok(t.elapsed())
    };
    // Weight 0 -> 100 through canaryctl, then the same through SIGHUP reload.
    reload(d, &canary_config(0.0, &default_stable()))?;
    let out = topo.canaryctl(&["set-weight", "shop", "100"], None)?;
    let returned = Instant::now();
    anyhow::ensure!(
        out.status.success(),
        "canaryctl set-weight: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let via_ctl = first_canary(topo, 100, returned).context(
        "no new connection reached canary within 3 s of `canaryctl set-weight shop 100`",
    )?;
    // Back to the config's weight: canaryctl again (a reload would keep the
    // run-time weight while the file's value is unchanged).
    let out = topo.canaryctl(&["set-weight", "shop", "0"], None)?;
    anyhow::ensure!(out.status.success(), "canaryctl set-weight 0");
    let took = reload(d, &canary_config(100.0, &default_stable()))?;
    let applied = Instant::now();
    let first = first_canary(topo, 200, applied);
    report.add(
        G_SEEN,
        "canaryctl set-weight returned -> first new conn on it",
        via_ctl.as_secs_f64() * 1e3,
        "ms",
        "",
    );
    match first {
        Some(t) => report.add(
            G_SEEN,
            "SIGHUP reload -> first new conn on it",
            (took + t).as_secs_f64() * 1e3,
            "ms",
            format!(
                "{:.2} ms to 'applied config', then {:.2} ms",
                took.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3
            ),
        ),
        None => report.skip(
            G_SEEN,
            "SIGHUP reload -> first new conn on it",
            "no connection reached canary within 3 s",
        ),
    }
    println!("{G_CTL}");
    report.add(
        G_CTL,
        "weight change only (0 -> 100 %)",
        took.as_secs_f64() * 1e3,
        "ms",
        "",
    );
    // Maglev swap: the stable pool becomes 1000 backends (two alternating
    // sets, so each reload really changes the table), timed SIGHUP -> applied.
    let pool = |shift: u32| -> Vec<String> {
        let mut v = default_stable();
        for i in 0..998u32 {
            v.push(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 2)) + i + shift).to_string(),
            );
        }
        v
    };
    let mut times = Vec::new();
    for k in 0..size.swaps.max(1) {
        times.push(reload(d, &canary_config(10.0, &pool((k % 2) as u32)))?.as_secs_f64() * 1e3);
    }
    let n = times.len();
    report.add(
        G_CTL,
        "swap to a 1000-backend stable pool (Maglev)",
        median(times),
        "ms",
        format!("median of {n}"),
    );
    reload(d, &canary_config(10.0, &default_stable()))?;
    // Still forwarding after the swaps.
    let c = topo.client.run(|| {
        tcp_connect(
            client_v4(3333),
            SocketAddr::new(VIP_TCP.into(), 80),
            Duration::from_secs(2),
        )
    });
    if let Err(e) = c {
        bail!("no connection through canary after the swaps: {e:#}");
    }
    Ok(())
}
