//! The rollout's further signals and its failure policy: `analysis.metrics:`
//! (several external metrics, business ones included), `analysis.latency:`
//! (canary against stable on response time) and `on_failure:`.
//!
//! ```yaml
//! on_failure: pause                 # or rollback (the default)
//! analysis:
//!   latency:                        # canary vs stable response time
//!     quantile: 0.9
//!     max_slower_ratio: 1.5         # the canary's p90 may be 1.5 x stable's,
//!     max_slower_ms: 10             # or 10 ms above it, whichever is larger
//!     handshake: true               # in-kernel SYN -> SYN-ACK histogram
//!     prometheus:                   # and/or an application histogram
//!       url: http://127.0.0.1:9090
//!       histogram: 'app_request_duration_seconds_bucket{version="$version"}'
//!   metrics:
//!     - name: conversion
//!       query: 'sum(rate(app_checkouts_total{version="$version"}[10s])) / sum(rate(app_visits_total{version="$version"}[10s]))'
//!       url: http://127.0.0.1:9090  # omitted: the first url given
//!       direction: higher           # higher is better
//!       relative_limit: 0.9         # canary >= 0.9 x stable
//!       gate: true                  # false: shown in status only
//! ```

use super::AnalysisConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a failed step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Canary weight 0 at once.
    #[default]
    Rollback,
    /// Keep the current weight, pause the rollout, raise an event.
    Pause,
}

impl OnFailure {
    pub fn name(self) -> &'static str {
        match self {
            OnFailure::Rollback => "rollback",
            OnFailure::Pause => "pause",
        }
    }
}

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Error ratios, latencies: the canary fails above its limit.
    #[default]
    Lower,
    /// Conversion, revenue per visit: the canary fails below its limit.
    Higher,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Lower => "lower is better",
            Direction::Higher => "higher is better",
        }
    }
}

fn yes() -> bool {
    true
}

fn default_metric_interval() -> Duration {
    Duration::from_secs(1)
}

/// One entry of `analysis.metrics:`: a PromQL query run per version
/// (`$version` replaced by `stable` and `canary`), judged against an
/// absolute limit and/or a multiple of stable's value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricCheck {
    /// Shown in status and in the reason of a failed step.
    pub name: String,
    pub query: String,
    /// Prometheus base URL; omitted: the first `url` of the other metrics
    /// (or of `analysis.prometheus`, or of `latency.prometheus`).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub direction: Direction,
    /// Lower is better: the canary fails above it; higher: below it.
    #[serde(default)]
    pub absolute_limit: Option<f64>,
    /// A multiple of stable's value: lower is better: canary <= r x stable
    /// (r >= 1); higher: canary >= r x stable (0 < r <= 1).
    #[serde(default)]
    pub relative_limit: Option<f64>,
    /// Whether it can fail a step (and hold one until it has a value);
    /// false: shown in status only.
    #[serde(default = "yes")]
    pub gate: bool,
    #[serde(default = "default_metric_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_quantile() -> f64 {
    0.9
}

fn default_min_stable_responses() -> u64 {
    200
}

/// `analysis.latency.prometheus`: an application latency histogram per
/// version (its `_bucket` series, `le` in seconds).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyHistogram {
    pub url: String,
    /// A series selector of the `_bucket` counters with `$version`.
    pub histogram: String,
    #[serde(default = "default_metric_interval", with = "humantime_serde")]
    pub interval: Duration,
}

/// `analysis.latency`: the canary against stable on response time, by a
/// sequential test (see `rollout/analysis/latency.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyCheck {
    /// The quantile compared (0.5 ..= 0.99).
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// The canary's quantile may be this multiple of stable's (> 1) ...
    #[serde(default)]
    pub max_slower_ratio: Option<f64>,
    /// ... or this many milliseconds above it, whichever allows more.
    #[serde(default)]
    pub max_slower_ms: Option<f64>,
    /// Test the in-kernel SYN -> SYN-ACK histogram (TCP services).
    #[serde(default)]
    pub handshake: bool,
    /// Test an application histogram from Prometheus.
    #[serde(default)]
    pub prometheus: Option<LatencyHistogram>,
    /// This signal's false-alarm budget per rollout (split over the steps,
    /// the sources and two checks). Default: `analysis.false_alarm_rate`.
    #[serde(default)]
    pub false_alarm_rate: Option<f64>,
    /// Power at the limit. Default: `analysis.power`.
    #[serde(default)]
    pub power: Option<f64>,
    /// Stable responses measured before the threshold is set, each step.
    #[serde(default = "default_min_stable_responses")]
    pub min_stable_responses: u64,
}

/// A metric with its URL resolved: what the pollers and the judge use.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMetric {
    pub check: MetricCheck,
    pub url: String,
    /// The judgement's label: "external metric" for the older
    /// `analysis.prometheus:`, else "metric NAME".
    pub label: String,
    /// The config's name of its absolute limit, for messages: `max_value`
    /// for the older `analysis.prometheus:`, else `absolute_limit`.
    pub absolute_name: &'static str,
}

/// Every metric of a plan, `analysis.prometheus:` first (as one metric:
/// lower is better, `max_value` absolute, its ratio relative, a gate).
pub fn resolved_metrics(a: &AnalysisConfig) -> Vec<ResolvedMetric> {
    let mut out = Vec::new();
    if let Some(p) = &a.prometheus {
        out.push(ResolvedMetric {
            check: MetricCheck {
                name: "prometheus".into(),
                query: p.query.clone(),
                url: Some(p.url.clone()),
                direction: Direction::Lower,
                absolute_limit: p.max_value,
                relative_limit: p.max_canary_vs_stable_ratio,
                gate: true,
                interval: p.interval,
            },
            url: p.url.clone(),
            label: "external metric".into(),
            absolute_name: "max_value",
        });
    }
    let shared = a
        .metrics
        .iter()
        .find_map(|m| m.url.clone())
        .or_else(|| a.prometheus.as_ref().map(|p| p.url.clone()))
        .or_else(|| {
            a.latency
                .as_ref()
                .and_then(|l| l.prometheus.as_ref())
                .map(|p| p.url.clone())
        })
        .unwrap_or_default();
    for m in &a.metrics {
        out.push(ResolvedMetric {
            check: m.clone(),
            url: m.url.clone().unwrap_or_else(|| shared.clone()),
            label: format!("metric {}", m.name),
            absolute_name: "absolute_limit",
        });
    }
    out
}

fn check_url(field: &str, url: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{field}: {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        anyhow::bail!("{field}: {url:?} must be an http:// URL with a host");
    }
    Ok(())
}

fn positive(field: &str, v: f64) -> anyhow::Result<()> {
    if !(v.is_finite() && v > 0.0) {
        anyhow::bail!("{field}: {v} must be above 0");
    }
    Ok(())
}

/// The rules of `analysis.metrics`, `analysis.latency` and `on_failure`.
pub(super) fn validate(r: &super::RolloutConfig) -> anyhow::Result<()> {
    let a = &r.analysis;
    let mut names = std::collections::HashSet::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let f = format!("analysis.metrics[{i}]");
        if !super::validate::plain_name(&m.name, 63, &['.']) {
            anyhow::bail!(
                "{f}.name: {:?} must be 1-63 letters, digits, '_', '-' or '.'",
                m.name
            );
        }
        if !names.insert(m.name.as_str()) {
            anyhow::bail!("{f}.name: {:?} is used twice", m.name);
        }
        if m.name == "prometheus" && a.prometheus.is_some() {
            anyhow::bail!(
                "{f}.name: \"prometheus\" is the name analysis.prometheus is shown under; choose another"
            );
        }
        if !m.query.contains("$version") {
            anyhow::bail!("{f}.query: must contain $version (replaced by stable or canary)");
        }
        if m.absolute_limit.is_none() && m.relative_limit.is_none() {
            anyhow::bail!("{f}: give absolute_limit, relative_limit or both");
        }
        if let Some(v) = m.absolute_limit {
            if !v.is_finite() {
                anyhow::bail!("{f}.absolute_limit: {v} must be a finite number");
            }
        }
        if let Some(rel) = m.relative_limit {
            match m.direction {
                Direction::Lower if !(rel.is_finite() && rel >= 1.0) => anyhow::bail!(
                    "{f}.relative_limit: {rel} must be at least 1 (lower is better: canary <= {rel} x stable)"
                ),
                Direction::Higher if !(rel > 0.0 && rel <= 1.0) => anyhow::bail!(
                    "{f}.relative_limit: {rel} must be in (0, 1] (higher is better: canary >= {rel} x stable)"
                ),
                _ => {}
            }
            // Lower is better with stable at 0 (a healthy error ratio): no
            // multiple of 0 judges a canary, the absolute limit must.
            if m.direction == Direction::Lower && m.absolute_limit.is_none() {
                anyhow::bail!(
                    "{f}.absolute_limit: required with relative_limit when lower is better (stable's value may be 0)"
                );
            }
        }
        if m.interval < Duration::from_millis(100) {
            anyhow::bail!("{f}.interval: {:?} is below 100ms", m.interval);
        }
        if let Some(u) = &m.url {
            check_url(&format!("{f}.url"), u)?;
        }
    }
    for (i, m) in resolved_metrics(a).iter().enumerate() {
        if m.url.is_empty() {
            let i = i - a.prometheus.is_some() as usize;
            anyhow::bail!(
                "analysis.metrics[{i}].url: missing, and no other metric gives one to share"
            );
        }
    }
    if let Some(l) = &a.latency {
        if !(l.quantile >= 0.5 && l.quantile <= 0.99) {
            anyhow::bail!(
                "analysis.latency.quantile: {} must be between 0.5 and 0.99",
                l.quantile
            );
        }
        if l.max_slower_ratio.is_none() && l.max_slower_ms.is_none() {
            anyhow::bail!("analysis.latency: give max_slower_ratio, max_slower_ms or both");
        }
        if let Some(x) = l.max_slower_ratio {
            if !(x.is_finite() && x > 1.0) {
                anyhow::bail!("analysis.latency.max_slower_ratio: {x} must be above 1");
            }
        }
        if let Some(ms) = l.max_slower_ms {
            positive("analysis.latency.max_slower_ms", ms)?;
        }
        if !l.handshake && l.prometheus.is_none() {
            anyhow::bail!("analysis.latency: no source: set handshake: true and/or prometheus:");
        }
        if let Some(p) = &l.prometheus {
            check_url("analysis.latency.prometheus.url", &p.url)?;
            if !p.histogram.contains("$version") {
                anyhow::bail!(
                    "analysis.latency.prometheus.histogram: must contain $version (a _bucket series selector)"
                );
            }
            if p.interval < Duration::from_millis(100) {
                anyhow::bail!(
                    "analysis.latency.prometheus.interval: {:?} is below 100ms",
                    p.interval
                );
            }
        }
        if let Some(x) = l.false_alarm_rate {
            if !(x > 0.0 && x < 0.5) {
                anyhow::bail!("analysis.latency.false_alarm_rate: {x} must be between 0 and 0.5");
            }
        }
        if let Some(x) = l.power {
            if !(x > 0.5 && x < 1.0) {
                anyhow::bail!("analysis.latency.power: {x} must be between 0.5 and 1");
            }
        }
        if l.min_stable_responses < 20 {
            anyhow::bail!(
                "analysis.latency.min_stable_responses: {} is below 20",
                l.min_stable_responses
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn yaml(rollout: &str) -> String {
        format!(
            r#"
interface: lb-client
services:
  - name: shop
    vip: 198.18.100.1
    port: 80
    protocol: tcp
    affinity: source-ip
    canary_weight: 0
    stable: [198.18.1.2]
    canary: [198.18.3.2]
    rollout:
      steps: [10, 50, 100]
      interval: 2s
{rollout}"#
        )
    }

    fn err(rollout: &str) -> String {
        format!("{:#}", Config::parse(&yaml(rollout)).unwrap_err())
    }

    #[test]
    fn signals_config_parses_with_defaults() {
        let c = Config::parse(&yaml(
            r#"      on_failure: pause
      analysis:
        latency:
          max_slower_ms: 10
          handshake: true
          prometheus:
            url: http://127.0.0.1:9090
            histogram: 'x_bucket{version="$version"}'
        metrics:
          - name: conversion
            query: 'conv{version="$version"}'
            direction: higher
            relative_limit: 0.9
          - name: errors
            query: 'err{version="$version"}'
            url: http://127.0.0.1:9091
            absolute_limit: 0.05
            gate: false
"#,
        ))
        .unwrap();
        let r = c.services[0].rollout.as_ref().unwrap();
        assert_eq!(r.on_failure, super::OnFailure::Pause);
        let l = r.analysis.latency.as_ref().unwrap();
        assert_eq!((l.quantile, l.min_stable_responses), (0.9, 200));
        let m = super::resolved_metrics(&r.analysis);
        assert_eq!(m.len(), 2);
        // The first metric has no url: the first one given is shared.
        assert_eq!(m[0].url, "http://127.0.0.1:9091");
        assert_eq!(m[0].check.direction, super::Direction::Higher);
        assert!(m[0].check.gate && !m[1].check.gate);
        assert_eq!(m[1].label, "metric errors");
    }

    #[test]
    fn the_older_prometheus_check_is_read_as_one_metric() {
        let c = Config::parse(&yaml(
            r#"      analysis:
        prometheus:
          url: http://127.0.0.1:9090
          query: 'e{version="$version"}'
          max_value: 0.05
          max_canary_vs_stable_ratio: 2
"#,
        ))
        .unwrap();
        let r = c.services[0].rollout.as_ref().unwrap();
        assert_eq!(r.on_failure, super::OnFailure::Rollback, "the default");
        let m = super::resolved_metrics(&r.analysis);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].label, "external metric");
        assert_eq!(m[0].check.absolute_limit, Some(0.05));
        assert_eq!(m[0].check.relative_limit, Some(2.0));
        assert_eq!(m[0].check.direction, super::Direction::Lower);
    }

    #[test]
    fn a_metric_may_not_take_the_older_checks_name() {
        let e = err("      analysis:\n        prometheus: {url: 'http://127.0.0.1:9090', query: 'x{v=\"$version\"}', max_value: 1}\n        metrics:\n          - {name: prometheus, query: 'y{v=\"$version\"}', absolute_limit: 1}\n");
        assert!(
            e.contains("analysis.metrics[0].name: \"prometheus\" is the name"),
            "{e}"
        );
    }

    #[test]
    fn a_udp_service_has_no_handshake_latency() {
        let udp = yaml("      analysis:\n        latency: {max_slower_ms: 20, handshake: true}\n")
            .replace("protocol: tcp", "protocol: udp");
        let e = format!("{:#}", Config::parse(&udp).unwrap_err());
        assert!(
            e.contains("analysis.latency.handshake: a UDP service"),
            "{e}"
        );
        assert!(Config::parse(&udp.replace("protocol: udp", "protocol: tcp")).is_ok());
    }

    #[test]
    fn bad_signals_are_refused_naming_the_field() {
        let metric = |body: &str| {
            err(&format!(
                "      analysis:\n        metrics:\n          - name: m\n            url: http://127.0.0.1:9090\n{body}"
            ))
        };
        for (body, want) in [
            (
                "            query: 'x'\n            absolute_limit: 1\n",
                "analysis.metrics[0].query: must contain $version",
            ),
            (
                "            query: 'x{v=\"$version\"}'\n",
                "analysis.metrics[0]: give absolute_limit, relative_limit or both",
            ),
            (
                "            query: 'x{v=\"$version\"}'\n            direction: higher\n            relative_limit: 1.5\n",
                "analysis.metrics[0].relative_limit: 1.5 must be in (0, 1]",
            ),
            (
                "            query: 'x{v=\"$version\"}'\n            relative_limit: 0.5\n            absolute_limit: 1\n",
                "analysis.metrics[0].relative_limit: 0.5 must be at least 1",
            ),
            (
                "            query: 'x{v=\"$version\"}'\n            relative_limit: 2\n",
                "analysis.metrics[0].absolute_limit: required with relative_limit",
            ),
            (
                "            query: 'x{v=\"$version\"}'\n            absolute_limit: 1\n            direction: sideways\n",
                "unknown variant `sideways`",
            ),
        ] {
            let e = metric(body);
            assert!(e.contains(want), "{body}: {e}");
        }
        let e = err("      analysis:\n        metrics:\n          - name: m\n            query: 'x{v=\"$version\"}'\n            absolute_limit: 1\n");
        assert!(e.contains("analysis.metrics[0].url: missing"), "{e}");
        let e = err("      analysis:\n        metrics:\n          - {name: m, url: 'http://a:1', query: '$version', absolute_limit: 1}\n          - {name: m, query: '$version', absolute_limit: 1}\n");
        assert!(
            e.contains("analysis.metrics[1].name: \"m\" is used twice"),
            "{e}"
        );
        let latency = |body: &str| err(&format!("      analysis:\n        latency:\n{body}"));
        for (body, want) in [
            (
                "          handshake: true\n",
                "analysis.latency: give max_slower_ratio, max_slower_ms or both",
            ),
            (
                "          max_slower_ms: 5\n",
                "analysis.latency: no source",
            ),
            (
                "          max_slower_ratio: 0.8\n          handshake: true\n",
                "analysis.latency.max_slower_ratio: 0.8 must be above 1",
            ),
            (
                "          max_slower_ms: 5\n          handshake: true\n          quantile: 0.999\n",
                "analysis.latency.quantile: 0.999 must be between 0.5 and 0.99",
            ),
            (
                "          max_slower_ms: 5\n          prometheus: {url: 'http://a:1', histogram: 'x_bucket'}\n",
                "analysis.latency.prometheus.histogram: must contain $version",
            ),
            (
                "          max_slower_ms: 5\n          prometheus: {url: 'ftp://a', histogram: '$version'}\n",
                "analysis.latency.prometheus.url: \"ftp://a\" must be an http:// URL",
            ),
            (
                "          max_slower_ms: 5\n          handshake: true\n          false_alarm_rate: 0.7\n",
                "analysis.latency.false_alarm_rate: 0.7",
            ),
        ] {
            let e = latency(body);
            assert!(e.contains(want), "{body}: {e}");
        }
        let e = err("      on_failure: stop\n");
        assert!(
            e.contains("on_failure") && e.contains("unknown variant `stop`"),
            "{e}"
        );
    }
}
