//! A rollout's external signals from Prometheus (`GET /api/v1/query`):
//! its metrics (`analysis.metrics`, and the older `analysis.prometheus`
//! read as one metric), each a PromQL query per version polled by its own
//! task, and the latency histograms of `analysis.latency.prometheus`. At
//! every tick the daemon asks [`judge`] what they say, with the latency
//! test (`analysis/latency.rs`) fed there too; the engine acts on the one
//! combined judgement.

use crate::config::{resolved_metrics, Config, Direction, ResolvedMetric, RolloutConfig};
use crate::control::api::MetricStatus;
use crate::rollout::analysis::latency::{Hist, HistReading, LatencyState, Look, Settings};
use crate::rollout::analysis::WindowCounts;
use crate::rollout::engine::Rollout;
use anyhow::{anyhow, bail, Context, Result};
use hyper::{header, Request, Uri};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The latest query results of one metric.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    /// Why the last poll has no canary value (Prometheus down, no data).
    pub error: Option<String>,
}

/// The latest readings of one service: each metric's by name, and the
/// latency histograms' (when `analysis.latency.prometheus` is set).
#[derive(Debug, Clone, Default)]
pub struct ServiceReadings {
    pub metrics: HashMap<String, Reading>,
    pub latency: Option<(Instant, HistReading)>,
}

/// Latest readings by service name, shared by the pollers and the daemon.
pub type Readings = Arc<Mutex<HashMap<String, ServiceReadings>>>;

/// What the external signals say about the canary now.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    Healthy(String),
    Fail(String),
    /// No fresh canary value: a step may not pass on it.
    Unknown(String),
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// A successful answer's data; a failed one's error.
fn api_data(body: &[u8]) -> Result<ApiData> {
    let r: ApiResponse = serde_json::from_slice(body).context("not a Prometheus API answer")?;
    if r.status != "success" {
        bail!("Prometheus: {}", r.error.unwrap_or(r.status));
    }
    r.data.context("Prometheus answer without data")
}

/// The value of an instant query: a scalar, or the first sample of a vector.
/// `None` for an empty vector or NaN (no data yet, 0/0).
pub fn parse_response(body: &[u8]) -> Result<Option<f64>> {
    let data = api_data(body)?;
    // [unix time, "value"]
    let sample = match data.result_type.as_str() {
        "scalar" => Some(data.result),
        "vector" => data
            .result
            .as_array()
            .and_then(|v| v.first())
            .and_then(|s| s.get("value"))
            .cloned(),
        other => bail!("query gives a {other}; an instant vector or scalar is needed"),
    };
    let Some(sample) = sample else {
        return Ok(None);
    };
    let text = sample
        .get(1)
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("malformed sample {sample}"))?;
    let value: f64 = text
        .parse()
        .with_context(|| format!("sample value {text:?}"))?;
    Ok((!value.is_nan()).then_some(value))
}

/// Runs one instant query: its value (a scalar, or a vector's first).
pub async fn query(base: &str, promql: &str, timeout: Duration) -> Result<Option<f64>> {
    parse_response(&query_raw(base, promql, timeout).await?)
}

/// A histogram's cumulative bucket counts: an instant vector by `le` (in
/// seconds, `+Inf` too). None for an empty result.
pub fn parse_buckets(body: &[u8]) -> Result<Option<Hist>> {
    let data = api_data(body)?;
    if data.result_type != "vector" {
        bail!(
            "bucket query gives a {}; an instant vector by le is needed",
            data.result_type
        );
    }
    let mut buckets = Vec::new();
    for s in data.result.as_array().into_iter().flatten() {
        let le = s
            .pointer("/metric/le")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("a bucket series without an le label: {s}"))?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().with_context(|| format!("le {le:?}"))?
        };
        let v = s
            .pointer("/value/1")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("malformed sample {s}"))?;
        let v: f64 = v.parse().with_context(|| format!("sample value {v:?}"))?;
        buckets.push((le, if v.is_nan() { 0.0 } else { v }));
    }
    Ok(Hist::from_cumulative_seconds(&buckets))
}

/// One instant query's answer body.
async fn query_raw(base: &str, promql: &str, timeout: Duration) -> Result<Vec<u8>> {
    let base: Uri = base.parse()?;
    let authority = base.authority().context("URL without host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let path = format!(
        "{}/api/v1/query?{}",
        base.path().trim_end_matches('/'),
        serde_urlencoded::to_string([("query", promql)])?
    );
    tokio::time::timeout(timeout, async {
        // An IPv6 host comes with its brackets ("[::1]").
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to Prometheus at {authority}"))?;
        let request = Request::builder()
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json")
            .body(crate::control::http::empty())?;
        let (_, body) = crate::control::http::exchange(stream, request).await?;
        Ok(body.to_vec())
    })
    .await
    .map_err(|_| anyhow!("Prometheus did not answer within {timeout:?}"))?
}

fn limit_text(m: &ResolvedMetric) -> String {
    let c = &m.check;
    let op = match c.direction {
        Direction::Lower => "<=",
        Direction::Higher => ">=",
    };
    let abs_name = m.absolute_name;
    let mut parts = Vec::new();
    if let Some(a) = c.absolute_limit {
        parts.push(format!("canary {op} {a} ({abs_name})"));
    }
    if let Some(r) = c.relative_limit {
        parts.push(format!("canary {op} {r} x stable"));
    }
    parts.join(", ")
}

/// Judges one metric's reading against its limits. Only a reading taken
/// at or after `not_before` (when the current step's weight was set)
/// counts: an older one describes another weight, or another rollout.
/// The judgement is the metric's own (a metric that is not a gate is
/// turned into "informs" by [`judge`]).
pub fn judge_metric(
    m: &ResolvedMetric,
    reading: Option<&Reading>,
    now: Instant,
    not_before: Instant,
) -> Judgement {
    let (c, label) = (&m.check, &m.label);
    let Some(r) = reading.filter(|r| r.at >= not_before) else {
        return Judgement::Unknown(format!(
            "{label}: no Prometheus reading since the step began"
        ));
    };
    if now.duration_since(r.at) > c.interval * 3 + Duration::from_secs(1) {
        return Judgement::Unknown(format!(
            "{label}: last Prometheus reading is {:.1} s old",
            now.duration_since(r.at).as_secs_f64()
        ));
    }
    let Some(canary) = r.canary else {
        return Judgement::Unknown(format!(
            "{label}: {}",
            r.error
                .clone()
                .unwrap_or_else(|| "no canary value (empty result)".into())
        ));
    };
    let abs_name = m.absolute_name;
    let q = &c.query;
    match c.direction {
        Direction::Lower => {
            if let Some(max) = c.absolute_limit.filter(|max| canary > *max) {
                return Judgement::Fail(format!(
                    "{label}: canary {canary:.4} > {abs_name} {max} (query {q:?})"
                ));
            }
            // Against stable only when stable has a value above 0 (an error
            // ratio of 0 is the usual healthy case): the absolute limit
            // (required with the relative one) bounds the canary then.
            if let (Some(ratio), Some(stable)) = (c.relative_limit, r.stable) {
                if stable > 0.0 && canary > ratio * stable {
                    return Judgement::Fail(format!(
                        "{label}: canary {canary:.4} > {ratio} x stable {stable:.4} (query {q:?})"
                    ));
                }
            }
        }
        Direction::Higher => {
            if let Some(min) = c.absolute_limit.filter(|min| canary < *min) {
                return Judgement::Fail(format!(
                    "{label}: canary {canary:.4} < {abs_name} {min}, higher is better (query {q:?})"
                ));
            }
            if let Some(ratio) = c.relative_limit {
                match r.stable {
                    Some(stable) if canary < ratio * stable => {
                        return Judgement::Fail(format!(
                            "{label}: canary {canary:.4} < {ratio} x stable {stable:.4}, \
                             higher is better (query {q:?})"
                        ));
                    }
                    Some(_) => {}
                    None if c.absolute_limit.is_none() => {
                        return Judgement::Unknown(format!(
                            "{label}: canary {canary:.4}, no stable value to compare with"
                        ));
                    }
                    None => {}
                }
            }
        }
    }
    Judgement::Healthy(format!(
        "{label}: canary {canary:.4}, stable {}",
        r.stable
            .map(|s| format!("{s:.4}"))
            .unwrap_or_else(|| "-".into())
    ))
}

/// Everything the plan's external signals and latency test say at this
/// tick, as one judgement for the engine (None: the plan has neither).
/// A failing gate fails; a gate without a fresh value, or a latency test
/// still gathering its sample, holds the step; a metric that is not a
/// gate is only shown. Updates the rollout's latency test (fed `delta`,
/// this tick's counters, and the latest histogram reading) and the
/// metrics' status.
pub fn judge(
    r: &mut Rollout,
    plan: &RolloutConfig,
    readings: Option<&ServiceReadings>,
    delta: &WindowCounts,
    now: Instant,
    not_before: Instant,
) -> Option<Judgement> {
    let a = &plan.analysis;
    let metrics = resolved_metrics(a);
    if metrics.is_empty() && a.latency.is_none() {
        return None;
    }
    let mut fails = Vec::new();
    let mut waits = Vec::new();
    let mut fine = Vec::new();
    r.metrics.clear();
    for m in &metrics {
        let reading = readings.and_then(|x| x.metrics.get(&m.check.name));
        let j = judge_metric(m, reading, now, not_before);
        let fresh = reading.filter(|x| x.at >= not_before);
        let (state, detail) = match (&j, m.check.gate) {
            (Judgement::Healthy(d), _) => ("ok", d.clone()),
            (Judgement::Fail(d), true) => ("failing", d.clone()),
            (Judgement::Fail(d), false) => ("informs", format!("{d} (not a gate)")),
            (Judgement::Unknown(d), _) => ("waiting", d.clone()),
        };
        r.metrics.push(MetricStatus {
            name: m.check.name.clone(),
            direction: m.check.direction.name().to_string(),
            gate: m.check.gate,
            canary: fresh.and_then(|x| x.canary),
            stable: fresh.and_then(|x| x.stable),
            limit: limit_text(m),
            state: state.to_string(),
            detail,
        });
        match (j, m.check.gate) {
            (Judgement::Fail(d), true) => fails.push(d),
            (Judgement::Unknown(d), true) => waits.push(d),
            (Judgement::Healthy(d), _) => fine.push(d),
            _ => {}
        }
    }
    if let Some(lc) = &a.latency {
        let weight = r.steps[r.step];
        if weight >= 100.0 || weight <= 0.0 {
            // No stable traffic to compare with at 100 %, no canary at 0.
            r.latency = None;
            fine.push(format!("latency: not tested at {weight}%"));
        } else {
            let fresh = r
                .latency
                .as_ref()
                .is_some_and(|l| l.step == r.step && l.weight == weight);
            if !fresh {
                let mut l = LatencyState::new(r.step, lc);
                l.weight = weight;
                r.latency = Some(l);
            }
            let s = Settings::new(
                lc,
                r.planned_steps(),
                a.false_alarm_rate,
                a.power,
                a.min_canary_connections,
            );
            let reading = readings
                .and_then(|x| x.latency.as_ref())
                .filter(|(at, _)| *at >= not_before)
                .map(|(_, h)| h);
            let state = r.latency.as_mut().expect("set above");
            match state.tick(&s, Some((&delta.stable, &delta.canary)), reading) {
                Look::Fail(d) => fails.push(d),
                Look::Wait(d) => waits.push(d),
                Look::Pass(d) => fine.push(d),
            }
        }
    }
    if let Some(f) = fails.into_iter().next() {
        return Some(Judgement::Fail(f));
    }
    if !waits.is_empty() {
        return Some(Judgement::Unknown(waits.join("; ")));
    }
    Some(Judgement::Healthy(fine.join("; ")))
}

/// The running pollers; dropping it stops them.
#[derive(Default)]
pub struct Pollers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Pollers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn store(readings: &Readings, service: &str, f: impl FnOnce(&mut ServiceReadings)) {
    let mut all = readings.lock().unwrap_or_else(|p| p.into_inner());
    f(all.entry(service.to_string()).or_default());
}

/// One poller per metric of each service's plan, and one for its latency
/// histograms.
pub fn spawn(config: &Config, readings: Readings) -> Pollers {
    let mut pollers = Pollers::default();
    for s in &config.services {
        let Some(plan) = s.rollout.as_ref() else {
            continue;
        };
        for m in resolved_metrics(&plan.analysis) {
            let (name, readings) = (s.name.clone(), readings.clone());
            pollers.tasks.push(tokio::spawn(async move {
                let check = &m.check;
                let mut tick = tokio::time::interval(check.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let timeout = check.interval.min(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let (qs, qc) = (
                        check.query.replace("$version", "stable"),
                        check.query.replace("$version", "canary"),
                    );
                    let (stable, canary) =
                        tokio::join!(query(&m.url, &qs, timeout), query(&m.url, &qc, timeout));
                    let error = match &canary {
                        Err(e) => Some(format!("{e:#}")),
                        Ok(None) => Some("no canary value (empty result)".into()),
                        Ok(Some(_)) => None,
                    };
                    let reading = Reading {
                        at: Instant::now(),
                        stable: stable.ok().flatten(),
                        canary: canary.ok().flatten(),
                        error,
                    };
                    store(&readings, &name, |r| {
                        r.metrics.insert(check.name.clone(), reading);
                    });
                }
            }));
        }
        let Some(lc) = plan.analysis.latency.clone() else {
            continue;
        };
        let Some(h) = lc.prometheus.clone() else {
            continue;
        };
        // The quantiles shown are Prometheus' own over the step's interval
        // (at least 10 s: rate() needs several scrapes).
        let range = plan.interval.as_secs().clamp(10, 3600);
        let (name, readings) = (s.name.clone(), readings.clone());
        pollers.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(h.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let timeout = h.interval.min(Duration::from_secs(5));
            let mut seq = 0u64;
            loop {
                tick.tick().await;
                let sel = |v: &str| h.histogram.replace("$version", v);
                let counts = |v: &str| format!("sum by (le) ({})", sel(v));
                let quantile = |v: &str| {
                    format!(
                        "histogram_quantile({}, sum by (le) (rate({}[{range}s])))",
                        lc.quantile,
                        sel(v)
                    )
                };
                let (ks, kc, us, uc) = (
                    counts("stable"),
                    counts("canary"),
                    quantile("stable"),
                    quantile("canary"),
                );
                let (cs, cc, qs, qc) = tokio::join!(
                    query_raw(&h.url, &ks, timeout),
                    query_raw(&h.url, &kc, timeout),
                    query(&h.url, &us, timeout),
                    query(&h.url, &uc, timeout),
                );
                let hist = |r: Result<Vec<u8>>| -> Result<Option<Hist>> { parse_buckets(&r?) };
                let (stable, canary) = (hist(cs), hist(cc));
                let error = match (&stable, &canary) {
                    (Err(e), _) | (_, Err(e)) => Some(format!("{e:#}")),
                    (Ok(None), _) | (_, Ok(None)) => {
                        Some("no histogram buckets (empty result)".into())
                    }
                    _ => None,
                };
                seq += 1;
                let reading = HistReading {
                    seq,
                    stable: stable.ok().flatten(),
                    canary: canary.ok().flatten(),
                    stable_q_ms: qs.ok().flatten().map(|v| v * 1000.0),
                    canary_q_ms: qc.ok().flatten().map(|v| v * 1000.0),
                    error,
                };
                store(&readings, &name, |r| {
                    r.latency = Some((Instant::now(), reading))
                });
            }
        }));
    }
    pollers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricCheck;

    fn metric(
        direction: Direction,
        abs: Option<f64>,
        rel: Option<f64>,
        gate: bool,
    ) -> ResolvedMetric {
        ResolvedMetric {
            check: MetricCheck {
                name: "m".into(),
                query: "x{version=\"$version\"}".into(),
                url: None,
                direction,
                absolute_limit: abs,
                relative_limit: rel,
                gate,
                interval: Duration::from_secs(1),
            },
            url: "http://127.0.0.1:9090".into(),
            label: "metric m".into(),
            absolute_name: "absolute_limit",
        }
    }

    /// The older `prometheus:` check as `resolved_metrics` reads it.
    /// A reading taken at `at`, without error.
    fn reading(at: Instant, stable: Option<f64>, canary: Option<f64>) -> Reading {
        Reading {
            at,
            stable,
            canary,
            error: None,
        }
    }

    fn legacy() -> ResolvedMetric {
        let mut m = metric(Direction::Lower, Some(0.05), Some(2.0), true);
        m.label = "external metric".into();
        m.absolute_name = "max_value";
        m
    }

    #[test]
    fn parses_vectors_scalars_empties_and_errors() {
        // Shapes as Prometheus 2.x answers /api/v1/query.
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"version":"canary"},"value":[1764057600.123,"0.25"]}]}}"#;
        assert_eq!(parse_response(v).unwrap(), Some(0.25));
        let s =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1764057600.1,"3"]}}"#;
        assert_eq!(parse_response(s).unwrap(), Some(3.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_response(empty).unwrap(), None);
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(parse_response(nan).unwrap(), None);
        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert!(parse_response(err)
            .unwrap_err()
            .to_string()
            .contains("parse error"));
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_response(matrix).is_err());
    }

    #[test]
    fn parses_histogram_buckets_by_le() {
        let b = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"le":"+Inf"},"value":[1,"10"]},
            {"metric":{"le":"0.005"},"value":[1,"4"]},
            {"metric":{"le":"0.01"},"value":[1,"8"]}]}}"#;
        let h = parse_buckets(b).unwrap().unwrap();
        assert_eq!(h.upper_ms, vec![5.0, 10.0]);
        assert_eq!(h.counts, vec![4, 4, 2]);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_buckets(empty).unwrap(), None);
        let no_le = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}}"#;
        assert!(parse_buckets(no_le)
            .unwrap_err()
            .to_string()
            .contains("le label"));
    }

    #[test]
    fn judges_against_the_limits_and_freshness() {
        let now = Instant::now();
        let r = |stable, canary| reading(now, stable, canary);
        let c = legacy();
        let judge =
            |c: &ResolvedMetric, r: Option<&Reading>, at: Instant| judge_metric(c, r, at, now);
        assert!(matches!(
            judge(&c, Some(&r(Some(0.01), Some(0.015))), now),
            Judgement::Healthy(_)
        ));
        let Judgement::Fail(why) = judge(&c, Some(&r(Some(0.01), Some(0.06))), now) else {
            panic!("above max_value should fail")
        };
        assert!(
            why.starts_with("external metric: canary 0.0600 > max_value 0.05"),
            "{why}"
        );
        let Judgement::Fail(why) = judge(&c, Some(&r(Some(0.01), Some(0.03))), now) else {
            panic!("ratio 3 > 2 should fail")
        };
        assert!(why.contains("2 x stable"), "{why}");
        assert!(matches!(
            judge(&c, Some(&r(Some(0.0), None)), now),
            Judgement::Unknown(_)
        ));
        assert!(matches!(judge(&c, None, now), Judgement::Unknown(_)));
        let later = now + Duration::from_secs(10);
        assert!(matches!(
            judge(&c, Some(&r(Some(0.0), Some(0.0))), later),
            Judgement::Unknown(_)
        ));
        // A reading from before the step began does not count.
        let step_began = now + Duration::from_millis(1);
        let stale = judge_metric(&c, Some(&r(Some(0.0), Some(0.0))), now, step_began);
        assert!(matches!(stale, Judgement::Unknown(_)), "{stale:?}");
        // Stable at 0 or missing: the absolute limit decides.
        for stable in [Some(0.0), None] {
            let j = judge(&c, Some(&r(stable, Some(0.01))), now);
            assert!(matches!(j, Judgement::Healthy(_)), "{stable:?}: {j:?}");
            let j = judge(&c, Some(&r(stable, Some(0.06))), now);
            assert!(matches!(j, Judgement::Fail(_)), "{stable:?}: {j:?}");
        }
    }

    #[test]
    fn higher_is_better_metrics_fail_below_their_limits() {
        let now = Instant::now();
        let r = |stable, canary| reading(now, stable, canary);
        let j = |m: &ResolvedMetric, s, c| judge_metric(m, Some(&r(s, c)), now, now);
        // Relative: canary >= 0.9 x stable.
        let rel = metric(Direction::Higher, None, Some(0.9), true);
        assert!(matches!(
            j(&rel, Some(0.20), Some(0.19)),
            Judgement::Healthy(_)
        ));
        let Judgement::Fail(why) = j(&rel, Some(0.20), Some(0.05)) else {
            panic!("a conversion drop should fail")
        };
        assert!(
            why.starts_with("metric m: canary 0.0500 < 0.9 x stable 0.2000, higher is better"),
            "{why}"
        );
        // Above stable is fine whatever the amount.
        assert!(matches!(
            j(&rel, Some(0.20), Some(0.90)),
            Judgement::Healthy(_)
        ));
        // No stable value and no absolute limit: cannot say.
        assert!(matches!(j(&rel, None, Some(0.05)), Judgement::Unknown(_)));
        // Absolute: canary >= 0.1.
        let abs = metric(Direction::Higher, Some(0.1), None, true);
        assert!(matches!(j(&abs, None, Some(0.15)), Judgement::Healthy(_)));
        assert!(matches!(j(&abs, None, Some(0.05)), Judgement::Fail(_)));
        // Lower is better, relative: above 1.5 x stable fails, stable 0 does not.
        let low = metric(Direction::Lower, Some(10.0), Some(1.5), true);
        assert!(matches!(
            j(&low, Some(2.0), Some(2.9)),
            Judgement::Healthy(_)
        ));
        assert!(matches!(j(&low, Some(2.0), Some(3.1)), Judgement::Fail(_)));
        assert!(matches!(
            j(&low, Some(0.0), Some(3.1)),
            Judgement::Healthy(_)
        ));
        assert!(matches!(j(&low, Some(0.0), Some(11.0)), Judgement::Fail(_)));
    }

    /// `judge` over a plan: a failing gate fails, a failing metric that is
    /// not a gate only shows, a gate without a value holds the step.
    #[test]
    fn gates_fail_and_informing_metrics_only_show() {
        use crate::config::AnalysisConfig;
        let now = Instant::now();
        let mut gate = metric(Direction::Higher, None, Some(0.9), true).check;
        gate.name = "conversion".into();
        let mut info = metric(Direction::Lower, Some(0.01), None, false).check;
        info.name = "errors".into();
        info.url = Some("http://127.0.0.1:9090".into());
        let plan = RolloutConfig::fixed_for_test(
            vec![10.0, 100.0],
            Duration::from_secs(1),
            AnalysisConfig {
                metrics: vec![gate, info],
                ..Default::default()
            },
        );
        let (mut r, _) = Rollout::start(&plan);
        let reading = |s, c| reading(now, Some(s), Some(c));
        let mut sr = ServiceReadings::default();
        let d = WindowCounts::default();
        // No readings yet: the gate holds the step.
        let j = judge(&mut r, &plan, Some(&sr), &d, now, now);
        assert!(
            matches!(&j, Some(Judgement::Unknown(w)) if w.contains("metric conversion")),
            "{j:?}"
        );
        // The informing metric is far out of its limit: shown, not failing.
        sr.metrics.insert("conversion".into(), reading(0.2, 0.19));
        sr.metrics.insert("errors".into(), reading(0.0, 0.5));
        let j = judge(&mut r, &plan, Some(&sr), &d, now, now);
        assert!(matches!(&j, Some(Judgement::Healthy(_))), "{j:?}");
        assert_eq!(r.metrics[1].state, "informs");
        assert_eq!(r.metrics[0].state, "ok");
        assert_eq!(r.metrics[0].limit, "canary >= 0.9 x stable");
        // The gate drops: the step fails on it.
        sr.metrics.insert("conversion".into(), reading(0.2, 0.05));
        let j = judge(&mut r, &plan, Some(&sr), &d, now, now);
        assert!(
            matches!(&j, Some(Judgement::Fail(w)) if w.starts_with("metric conversion: canary 0.0500 < 0.9 x stable")),
            "{j:?}"
        );
        assert_eq!(r.metrics[0].state, "failing");
        assert_eq!(r.metrics[0].canary, Some(0.05));
        // A plan with no external signal: nothing to say.
        let bare = RolloutConfig {
            analysis: AnalysisConfig::default(),
            ..plan
        };
        assert_eq!(judge(&mut r, &bare, None, &d, now, now), None);
    }
    /// The latency test through `judge`: it holds the step while it
    /// calibrates and gathers its sample, fails a canary whose handshakes
    /// are far slower, and is off at 100 %.
    #[test]
    fn the_latency_test_holds_then_fails_a_slow_canary() {
        use crate::config::{AnalysisConfig, LatencyCheck};
        let now = Instant::now();
        let plan = RolloutConfig::fixed_for_test(
            vec![20.0, 100.0],
            Duration::from_secs(1),
            AnalysisConfig {
                latency: Some(LatencyCheck {
                    quantile: 0.9,
                    max_slower_ratio: None,
                    max_slower_ms: Some(10.0),
                    handshake: true,
                    prometheus: None,
                    false_alarm_rate: None,
                    power: None,
                    min_stable_responses: 200,
                }),
                ..Default::default()
            },
        );
        let (mut r, _) = Rollout::start(&plan);
        // Handshakes of 16-32 µs (bucket 4), or 32-65 ms (bucket 15).
        let window = |stable: u64, canary: u64, slow: bool| {
            let mut w = WindowCounts::default();
            w.stable.handshake_us_log2[4] = stable;
            w.canary.handshake_us_log2[if slow { 15 } else { 4 }] = canary;
            w
        };
        let j = judge(&mut r, &plan, None, &window(100, 25, false), now, now);
        assert!(
            matches!(&j, Some(Judgement::Unknown(w)) if w.contains("calibrating on stable: 100 of 200")),
            "{j:?}"
        );
        let j = judge(&mut r, &plan, None, &window(100, 25, false), now, now);
        assert!(matches!(&j, Some(Judgement::Unknown(_))), "{j:?}");
        let st = &r.latency.as_ref().unwrap().status[0];
        assert_eq!(st.threshold_ms, Some(16.384), "{st:?}");
        assert_eq!(
            st.canary_responses, 0,
            "calibration's canary responses are not tested"
        );
        let mut fail = None;
        for _ in 0..10 {
            if let Some(Judgement::Fail(w)) =
                judge(&mut r, &plan, None, &window(100, 5, true), now, now)
            {
                fail = Some(w);
                break;
            }
        }
        let why = fail.expect("a 32 ms slower canary fails");
        assert!(
            why.starts_with("latency (handshake): canary slower than stable: above 16.384 ms"),
            "{why}"
        );
        // At 100 % there is no stable traffic to compare with.
        r.step = 1;
        let j = judge(&mut r, &plan, None, &window(0, 100, true), now, now);
        assert!(
            matches!(&j, Some(Judgement::Healthy(h)) if h.contains("not tested at 100%")),
            "{j:?}"
        );
        assert_eq!(r.latency, None);
    }
}
