//! canary-bench: what the splitter costs, measured side by side in one run
//! (needs root; `cargo xtask bench` builds and runs it).
//!
//! 1. Per-packet cost through `BPF_PROG_TEST_RUN` in a scratch namespace:
//!    the `xdp_pass` floor against each path of the canary program.
//! 2. Scaling: the flow-table hit with 1k/100k/1M flows in `FLOWS`, and the
//!    new-flow path with 2/100/1000 backends per pool.
//! 3. End to end in the client/LB/backend topology: plain routing (the
//!    limit), canary, nftables weighted DNAT, HAProxy (TCP mode).
//! 4. Control plane: weight change to first connection observing it, and
//!    the apply time of a 1000-backend Maglev table swap.
//! 5. Fleet: three canaryd hosts on a 3-member etcd cluster: a weight set on
//!    one host to the last host's map, and etcd writes per host per second
//!    idle and with a rollout running under load.
//!
//! Every figure is printed with its ratio to the limit of its group, and
//! written to `results.json` and `results.svg` in `$CANARY_BENCH_OUT` (or
//! `target/bench`, or `--out DIR`). `--smoke` runs one short iteration of
//! everything (for the test suite, well under 30 s); `--micro` only parts
//! 1 and 2, `--fleet` only part 5 (about 25 s), both flags both.
//!
//! Traffic stays inside namespaces this process creates (198.18.0.0/15,
//! 2001:db8::/32); every loop is bounded in count and time; the namespaces,
//! pins and child processes (canaryd, testsrv, haproxy, etcd) go on drop.

mod control_plane;
mod end_to_end;
mod fleet;
mod per_packet;
mod report;
mod scaling;

use anyhow::{bail, Context, Result};
use report::{chart, fmt_row, Report};
use std::path::PathBuf;
use std::time::Instant;

/// How much of everything: the full run and the smoke run.
#[derive(Clone, Copy)]
pub struct Size {
    pub rounds: usize,
    pub single: usize,
    pub repeat: u32,
    pub flows: &'static [u32],
    pub backends: &'static [usize],
    pub tcp_secs: f64,
    pub udp_secs: f64,
    pub threads: usize,
    pub swaps: usize,
    pub e2e_rounds: usize,
    /// Services in the services-scale rows (16 backends each).
    pub services: usize,
    /// Weight changes in the fleet rows (bounded by 2 windows' time too).
    pub fleet_changes: usize,
    /// Each window of the fleet's etcd-writes rows.
    pub fleet_window_secs: f64,
}

const FULL: Size = Size {
    rounds: 7,
    single: 20_000,
    repeat: 1_000_000,
    flows: &[1_000, 100_000, 1_000_000],
    backends: &[2, 100, 1000],
    tcp_secs: 2.0,
    udp_secs: 1.5,
    threads: 4,
    swaps: 5,
    e2e_rounds: 3,
    services: 1024,
    fleet_changes: 100,
    fleet_window_secs: 10.0,
};

const SMOKE: Size = Size {
    rounds: 3,
    single: 2_000,
    repeat: 10_000,
    flows: &[1_000, 10_000],
    backends: &[2, 1000],
    tcp_secs: 0.5,
    udp_secs: 0.3,
    threads: 2,
    swaps: 1,
    e2e_rounds: 1,
    services: 128,
    fleet_changes: 6,
    fleet_window_secs: 2.0,
};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    // The per-packet and scaling parts only (minutes less; no end to end).
    let micro_only = args.iter().any(|a| a == "--micro");
    // The fleet part only (3 hosts and etcd; about 25 s).
    let fleet_only = args.iter().any(|a| a == "--fleet");
    let out = match args.iter().position(|a| a == "--out") {
        Some(i) => PathBuf::from(args.get(i + 1).expect("--out DIR")),
        None => std::env::var_os("CANARY_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/bench".into()),
    };
    let out = if smoke { out.join("smoke") } else { out };
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: canary-bench [--smoke] [--micro] [--fleet] [--out DIR]   (root)");
        return;
    }
    // Neither flag: everything; otherwise the parts named.
    let all = !micro_only && !fleet_only;
    let parts = Parts {
        micro: all || micro_only,
        end_to_end: all,
        fleet: all || fleet_only,
    };
    match run(if smoke { SMOKE } else { FULL }, smoke, parts, &out) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("canary-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Which parts run: all by default, else the ones `--micro` and `--fleet` name.
#[derive(Clone, Copy)]
struct Parts {
    micro: bool,
    end_to_end: bool,
    fleet: bool,
}

fn run(size: Size, smoke: bool, parts: Parts, out: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    let mut report = Report::default();
    let mut failures = Vec::new();
    println!(
        "canary-bench{} on {} cores",
        if smoke { " --smoke" } else { "" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if !parts.micro {
        println!("(per-packet and scaling parts skipped)");
    } else if let Err(e) = per_packet::micro(size, &mut report) {
        eprintln!("canary-bench: per-packet part failed: {e:#}");
        failures.push(format!("per-packet: {e:#}"));
    }
    if !parts.end_to_end {
        println!("(end-to-end part skipped)");
    } else if let Err(e) = end_to_end::end_to_end(size, &mut report) {
        eprintln!("canary-bench: end-to-end part failed: {e:#}");
        failures.push(format!("end to end: {e:#}"));
    }
    if !parts.fleet {
        println!("(fleet part skipped)");
    } else if let Err(e) = fleet::fleet(size, &mut report) {
        eprintln!("canary-bench: fleet part failed: {e:#}");
        failures.push(format!("fleet: {e:#}"));
    }
    let took = start.elapsed();
    println!("\ncanary-bench results ({:.1} s):", took.as_secs_f64());
    let mut groups: Vec<&str> = Vec::new();
    for r in &report.rows {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    for g in &groups {
        println!("{g}");
        for r in report.rows.iter().filter(|r| r.group == *g) {
            println!("  {}", fmt_row(r));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::json!({
        "smoke": smoke,
        "seconds": took.as_secs_f64(),
        "failures": failures,
        "results": report.rows.iter().map(|r| serde_json::json!({
            "group": r.group,
            "name": r.name,
            "value": if r.value.is_finite() { Some(r.value) } else { None },
            "unit": r.unit,
            "ratio_to_limit": r.ratio,
            "note": r.note,
        })).collect::<Vec<_>>(),
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let svg_path = out.join("results.svg");
    chart(&report, &svg_path)?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    if !failures.is_empty() {
        bail!("{} part(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Per-packet cost: a scratch namespace with LB-like interfaces and
// permanent neighbours, the real data plane loaded and configured.
