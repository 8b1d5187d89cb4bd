//! The Grafana dashboard (canary-userspace/packaging/grafana-dashboard.json)
//! against a live canaryd: a rollout under way, HTTP probes, real client
//! traffic with some connections reset, and a real Prometheus scraping
//! canaryd's metrics endpoint every second. Every panel's every query, its
//! template variables filled in as Grafana would for this lab, answers
//! with at least one series; the JSON's shape is checked on the way; and
//! the new handshake histogram agrees with the p50 canaryd's status shows.

use anyhow::{ensure, Context, Result};
use canary_tests::prometheus::Prometheus;
use canary_tests::rollout::{shop, topology, vip};
use canary_tests::{LbConfig, Load, LoadBounds, Netns, Topology};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../canary-userspace/packaging/grafana-dashboard.json"
);
const METRICS: &str = "127.0.0.1:9464";
const JOB: &str = "canaryd";
/// The first step's weight, held for the whole test (interval 300 s).
const WEIGHT: f64 = 20.0;
/// Grafana's `$__rate_interval` for a 1 s scrape interval: 4 scrapes.
const RATE_INTERVAL: &str = "4s";
/// The dashboard's `$window` (error-ratio window) in this test.
const WINDOW: &str = "10s";

/// The value of a query that answers exactly one series.
fn one(prom: &Prometheus, ns: &Netns, promql: &str) -> Result<f64> {
    let r = prom.vector(ns, promql)?;
    ensure!(r.len() == 1, "{promql}: {} series: {r:?}", r.len());
    let v = r[0]["value"][1].as_str().context("value")?;
    Ok(v.parse()?)
}

/// Stops the load on drop (a failing test included).
struct Running(Load);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Every panel, rows' nested panels included, as (path, panel).
fn all_panels(dash: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        out.push((title.clone(), p));
        for n in p["panels"].as_array().into_iter().flatten() {
            out.push((
                format!("{title} / {}", n["title"].as_str().unwrap_or("?")),
                n,
            ));
        }
    }
    out
}

/// The dashboard's datasource: the `datasource` template variable of type
/// `datasource` (Prometheus), referred to as `${datasource}`.
fn check_shape(dash: &Value) -> Result<()> {
    ensure!(dash["refresh"] == "10s", "refresh: {}", dash["refresh"]);
    ensure!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let vars = dash["templating"]["list"]
        .as_array()
        .context("templating")?;
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").context("no datasource variable")?;
    ensure!(
        ds["type"] == "datasource" && ds["query"] == "prometheus",
        "{ds}"
    );
    for name in ["job", "instance", "service"] {
        let v = var(name).with_context(|| format!("no {name} variable"))?;
        ensure!(v["type"] == "query", "{v}");
        ensure!(v["datasource"]["uid"] == "${datasource}", "{v}");
        let q = v["query"]["query"].as_str().context("variable query")?;
        ensure!(
            q.starts_with("label_values(") && q.ends_with(&format!(", {name})")),
            "{name}: {q}"
        );
    }
    let mut ids = BTreeSet::new();
    for (title, p) in all_panels(dash) {
        let id = p["id"]
            .as_u64()
            .with_context(|| format!("{title}: no id"))?;
        ensure!(ids.insert(id), "{title}: panel id {id} used twice");
        let gp = &p["gridPos"];
        ensure!(
            ["h", "w", "x", "y"].iter().all(|k| gp[k].is_u64())
                && gp["x"].as_u64().unwrap() + gp["w"].as_u64().unwrap() <= 24,
            "{title}: gridPos {gp}"
        );
        if p["type"] == "row" {
            ensure!(p.get("targets").is_none(), "{title}: a row with queries");
            continue;
        }
        let is_ours = |d: &Value| d["type"] == "prometheus" && d["uid"] == "${datasource}";
        ensure!(
            is_ours(&p["datasource"]),
            "{title}: datasource {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().context("no targets")?;
        ensure!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            ensure!(is_ours(&t["datasource"]), "{title}: target {t}");
            ensure!(t["expr"].is_string(), "{title}: target without expr {t}");
        }
    }
    Ok(())
}

/// The template variables as Grafana would fill them in for this lab.
fn substitute(expr: &str, range_s: u64) -> String {
    let range = format!("{range_s}s");
    let mut e = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", RATE_INTERVAL),
        ("$__interval", "1s"),
        ("$__range", range.as_str()),
        ("$window", WINDOW),
        ("$job", JOB),
        ("$instance", METRICS),
        ("$service", "shop"),
    ] {
        e = e.replace(&format!("${{{}}}", &var[1..]), value);
        e = e.replace(var, value);
    }
    e
}

#[test]
fn every_dashboard_query_answers_from_a_live_canaryd() -> Result<()> {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD)?)?;
    check_shape(&dash)?;

    // 5 % of every backend's connections reset: the error series carry
    // figures. The plan's first step (20 %) holds for the whole test.
    let topo: Topology = topology(0.05)?;
    let yaml = LbConfig::lab()
        .metrics(METRICS)
        .service(shop(&format!(
            "      steps: [{WEIGHT}, 50, 100]
      interval: 300s
      analysis:
        max_error_ratio: 0.5
"
        )))
        .yaml();
    let _d = topo.spawn_canaryd(Some(&yaml))?;
    let prom = Prometheus::scraping(&topo.lb, &topo.id, "127.0.0.1:9090", JOB, &[METRICS])?;
    let started = Instant::now();
    let mut load = Running(Load::start(
        &topo.client,
        vip(),
        LoadBounds {
            max_time: Duration::from_secs(60),
            ..LoadBounds::default()
        },
    ));
    topo.ctl(&["rollout", "start", "shop"])?;
    let rollout_started = Instant::now();

    // The rate windows (4 s, 10 s) hold only the rollout's traffic, and
    // Prometheus has the probes' verdicts.
    std::thread::sleep(Duration::from_secs(11));
    let ns = &topo.lb;
    let end = Instant::now() + Duration::from_secs(20);
    while prom
        .vector(ns, "canary_backend_healthy")
        .map(|r| r.len())
        .unwrap_or(0)
        < 3
    {
        ensure!(
            Instant::now() < end,
            "no health in Prometheus: {}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every panel's every query.
    let range_s = started.elapsed().as_secs().max(5);
    let mut failures = Vec::new();
    let mut queries = 0;
    for (title, p) in all_panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let q = substitute(expr, range_s);
            queries += 1;
            if q.contains('$') {
                failures.push(format!("{title}: a variable left in {q}"));
                continue;
            }
            match prom.vector(ns, &q) {
                Ok(r) if r.is_empty() => failures.push(format!("{title}: no series from {q}")),
                // A per-version query answers for both versions.
                Ok(r)
                    if q.contains("by (service, version")
                        && ["stable", "canary"]
                            .iter()
                            .any(|v| !r.iter().any(|s| s["metric"]["version"] == *v)) =>
                {
                    failures.push(format!("{title}: not both versions from {q}: {r:?}"))
                }
                Ok(r) => println!(
                    "{title} [{}]: {} series, first {}",
                    t["refId"].as_str().unwrap_or("?"),
                    r.len(),
                    r[0]
                ),
                Err(e) => failures.push(format!("{title}: {q}: {e:#}")),
            }
        }
    }
    println!("{queries} queries");
    ensure!(
        failures.is_empty(),
        "{} of {queries} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    ensure!(queries >= 30, "only {queries} queries in the dashboard");

    // The figures behind a few panels. The share: the window's new
    // connections split at 20 % by client address (source-IP affinity, the
    // load's 4000 clients), within 5 standard deviations of the binomial
    // over at most 4000 distinct clients.
    let sel = format!("job=\"{JOB}\",service=\"shop\"");
    let share = one(&prom,
        ns,
        &format!(
            "100 * sum(rate(canary_version_new_flows_total{{{sel},version=\"canary\"}}[{RATE_INTERVAL}])) / sum(rate(canary_version_new_flows_total{{{sel}}}[{RATE_INTERVAL}]))"
        ),
    )?;
    let n = one(
        &prom,
        ns,
        &format!("sum(increase(canary_version_new_flows_total{{{sel}}}[{RATE_INTERVAL}]))"),
    )?;
    let p = WEIGHT / 100.0;
    let tolerance = 500.0 * (p * (1.0 - p) / n.min(4000.0)).sqrt();
    println!("observed canary share {share:.2} % of {n:.0} connections (weight {WEIGHT} %, tolerance {tolerance:.2})");
    ensure!(n >= 100.0, "too few connections in the window: {n}");
    ensure!(
        (share - WEIGHT).abs() <= tolerance,
        "share {share} % against weight {WEIGHT} %"
    );
    let phase = prom.vector(ns, &format!("canary_rollout_phase{{{sel}}} == 1"))?;
    ensure!(
        phase.len() == 1 && phase[0]["metric"]["phase"] == "running",
        "{phase:?}"
    );
    ensure!(one(&prom, ns, &format!("canary_rollout_step{{{sel}}}"))? == 1.0);
    let resets = one(
        &prom,
        ns,
        &format!(
            "sum(increase(canary_version_resets_total{{{sel},version=\"canary\"}}[{WINDOW}]))"
        ),
    )?;
    ensure!(resets > 0.0, "no canary resets in {WINDOW}");

    // The histogram against status: with the load stopped and two scrapes
    // taken, Prometheus' whole-histogram p50 (interpolated in its bucket)
    // is the p50 canaryd computes from the same buckets, and the +Inf
    // bucket is their total.
    let (ok, failed) = load.0.stop();
    println!(
        "load: {ok} connections ok, {failed} failed (reset) in {:.1} s since the rollout started",
        rollout_started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let status = topo.service_status("shop")?;
    for (version, sig) in [
        ("stable", &status.signals.stable),
        ("canary", &status.signals.canary),
    ] {
        let h = format!("canary_version_handshake_seconds_bucket{{{sel},version=\"{version}\"");
        let total = one(&prom, ns, &format!("{h},le=\"+Inf\"}}"))?;
        let kernel: u64 = sig.handshake_us_log2.iter().sum();
        let p50 = one(&prom, ns, &format!("histogram_quantile(0.5, {h}}})"))?;
        let status_p50 = sig.handshake_p50_ms.context("no p50 in status")? / 1000.0;
        println!(
            "{version}: {total} handshakes timed (status {kernel}); p50 {:.1} µs in Prometheus, {:.1} µs in status",
            p50 * 1e6,
            status_p50 * 1e6
        );
        ensure!(
            total == kernel as f64 && kernel > 100,
            "{version}: {total} vs {kernel}"
        );
        // Both interpolate linearly inside the bucket [2^i, 2^(i+1)) µs;
        // only the first bucket's lower end differs (Prometheus 0, status
        // 1 µs), so there both need only be under its 2 µs.
        if status_p50 >= 2e-6 {
            ensure!(
                (p50 - status_p50).abs() <= 1e-3 * status_p50,
                "{version}: p50 {p50} s vs status {status_p50} s"
            );
        } else {
            ensure!(
                p50 <= 2e-6,
                "{version}: p50 {p50} s vs status {status_p50} s"
            );
        }
        ensure!(p50 > 0.0 && p50 < 0.5, "{version}: p50 {p50} s");
    }
    Ok(())
}
