//! The optional external metric of a rollout: a PromQL query per version
//! against the Prometheus HTTP API (`GET /api/v1/query`), polled by one task
//! per service; the rollout engine reads the latest values at every tick.

use crate::config::{Config, PrometheusCheck};
use anyhow::{anyhow, bail, Context, Result};
use hyper::{header, Request, Uri};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The latest query results of one service.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    /// Why the last poll has no canary value (Prometheus down, no data).
    pub error: Option<String>,
}

/// Latest readings by service name, shared by the pollers and the daemon.
pub type Readings = Arc<Mutex<HashMap<String, Reading>>>;

/// What the external metric says about the canary now.
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

/// The value of an instant query: a scalar, or the first sample of a vector.
/// `None` for an empty vector or NaN (no data yet, 0/0).
pub fn parse_response(body: &[u8]) -> Result<Option<f64>> {
    let r: ApiResponse = serde_json::from_slice(body).context("not a Prometheus API answer")?;
    if r.status != "success" {
        bail!("Prometheus: {}", r.error.unwrap_or(r.status));
    }
    let data = r.data.context("Prometheus answer without data")?;
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

/// Runs one instant query.
pub async fn query(base: &str, promql: &str, timeout: Duration) -> Result<Option<f64>> {
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
        parse_response(&body)
    })
    .await
    .map_err(|_| anyhow!("Prometheus did not answer within {timeout:?}"))?
}

/// Judges a reading against the check's limits. Only a reading taken at or
/// after `not_before` (when the current step's weight was set) counts: an
/// older one describes another weight, or another rollout.
pub fn judge(
    check: &PrometheusCheck,
    reading: Option<&Reading>,
    now: Instant,
    not_before: Instant,
) -> Judgement {
    let Some(r) = reading.filter(|r| r.at >= not_before) else {
        return Judgement::Unknown("no Prometheus reading since the step began".into());
    };
    if now.duration_since(r.at) > check.interval * 3 + Duration::from_secs(1) {
        return Judgement::Unknown(format!(
            "last Prometheus reading is {:.1} s old",
            now.duration_since(r.at).as_secs_f64()
        ));
    }
    let Some(canary) = r.canary else {
        return Judgement::Unknown(
            r.error
                .clone()
                .unwrap_or_else(|| "no canary value (empty result)".into()),
        );
    };
    if let Some(max) = check.max_value {
        if canary > max {
            return Judgement::Fail(format!(
                "external metric: canary {canary:.4} > max_value {max} (query {:?})",
                check.query
            ));
        }
    }
    // Against stable only when stable has a value above 0 (an error ratio of
    // 0 is the usual healthy case): `max_value` (required with the ratio)
    // bounds the canary then.
    if let (Some(ratio), Some(stable)) = (check.max_canary_vs_stable_ratio, r.stable) {
        if stable > 0.0 && canary > ratio * stable {
            return Judgement::Fail(format!(
                "external metric: canary {canary:.4} > {ratio} x stable {stable:.4} (query {:?})",
                check.query
            ));
        }
    }
    Judgement::Healthy(format!(
        "external metric: canary {canary:.4}, stable {}",
        r.stable
            .map(|s| format!("{s:.4}"))
            .unwrap_or_else(|| "-".into())
    ))
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

/// One poller per service whose rollout has a `prometheus:` check.
pub fn spawn(config: &Config, readings: Readings) -> Pollers {
    let mut pollers = Pollers::default();
    for s in &config.services {
        let Some(check) = s
            .rollout
            .as_ref()
            .and_then(|r| r.analysis.prometheus.clone())
        else {
            continue;
        };
        let (name, readings) = (s.name.clone(), readings.clone());
        pollers.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let timeout = check.interval.min(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let (qs, qc) = (
                    check.query.replace("$version", "stable"),
                    check.query.replace("$version", "canary"),
                );
                let (stable, canary) = tokio::join!(
                    query(&check.url, &qs, timeout),
                    query(&check.url, &qc, timeout)
                );
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
                readings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), reading);
            }
        }));
    }
    pollers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> PrometheusCheck {
        PrometheusCheck {
            url: "http://127.0.0.1:9090".into(),
            query: "x{version=\"$version\"}".into(),
            max_value: Some(0.05),
            max_canary_vs_stable_ratio: Some(2.0),
            interval: Duration::from_secs(1),
        }
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
    fn judges_against_the_limits_and_freshness() {
        let now = Instant::now();
        let r = |stable, canary| Reading {
            at: now,
            stable,
            canary,
            error: None,
        };
        let c = check();
        let judge = |c: &PrometheusCheck, r: Option<&Reading>, at: Instant| judge(c, r, at, now);
        assert!(matches!(
            judge(&c, Some(&r(Some(0.01), Some(0.015))), now),
            Judgement::Healthy(_)
        ));
        assert!(matches!(
            judge(&c, Some(&r(Some(0.01), Some(0.06))), now),
            Judgement::Fail(_)
        ));
        let Judgement::Fail(why) = judge(&c, Some(&r(Some(0.01), Some(0.03))), now) else {
            panic!("ratio 3 > 2 should fail")
        };
        assert!(why.contains("2 x stable"), "{why}");
        // Stable at 0: only the absolute limit applies.
        assert!(matches!(
            judge(&c, Some(&r(Some(0.0), Some(0.01))), now),
            Judgement::Healthy(_)
        ));
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
        let stale = super::judge(&c, Some(&r(Some(0.0), Some(0.0))), now, step_began);
        assert!(matches!(stale, Judgement::Unknown(_)), "{stale:?}");
        // Stable at 0 or missing: the absolute limit decides.
        for stable in [Some(0.0), None] {
            let j = judge(&c, Some(&r(stable, Some(0.01))), now);
            assert!(matches!(j, Judgement::Healthy(_)), "{stable:?}: {j:?}");
            let j = judge(&c, Some(&r(stable, Some(0.06))), now);
            assert!(matches!(j, Judgement::Fail(_)), "{stable:?}: {j:?}");
        }
    }
}
