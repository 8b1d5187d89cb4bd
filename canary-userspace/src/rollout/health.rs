//! Active health probes: one task per backend, a TCP connect or an HTTP GET
//! (hyper) every `interval`, each bounded by `timeout`. A backend turns
//! unhealthy after `unhealthy_after` failures in a row and healthy again
//! after `healthy_after` successes in a row; only those transitions reach the
//! daemon, which takes the backend out of (or back into) its pool's Maglev
//! table.
//!
//! Probes leave from this host's own address, so their replies carry a
//! backend's address and port without being one of the connections the data
//! plane forwarded: the XDP program passes them untouched
//! (`pass_reply_no_flow`).

use crate::config::{Config, HealthConfig, ProbeKind, Version};
use hyper::{header, Request};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// A backend's health changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub service: String,
    pub version: Version,
    pub addr: IpAddr,
    pub healthy: bool,
    /// The last probe's outcome ("connect refused", "HTTP 500", ...).
    pub detail: String,
    /// The probe set it came from: verdicts of a set replaced since (a
    /// reload) are stale and dropped.
    pub epoch: u64,
}

/// Consecutive-result counting for one backend. Starts healthy: a restart
/// or a reload must not pull backends that were serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    pub healthy: bool,
    fails: u32,
    oks: u32,
}

impl Tracker {
    pub fn new(healthy: bool) -> Tracker {
        Tracker {
            healthy,
            fails: 0,
            oks: 0,
        }
    }

    /// Counts one probe; `Some(new state)` when it flips.
    pub fn observe(&mut self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> Option<bool> {
        if ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            if !self.healthy && self.oks >= healthy_after {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
            if self.healthy && self.fails >= unhealthy_after {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// One probe: Ok(latency) or Err(why).
pub async fn probe_once(target: SocketAddr, h: &HealthConfig) -> Result<Duration, String> {
    let started = Instant::now();
    let outcome = tokio::time::timeout(h.timeout, async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if h.probe == ProbeKind::Tcp {
            return Ok(());
        }
        http_get(stream, target, h).await
    })
    .await;
    let latency = started.elapsed();
    match outcome {
        Err(_) => Err(format!("no answer within {:?}", h.timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => match h.max_latency {
            Some(max) if latency > max => Err(format!(
                "answered in {:.1} ms, above max_latency {:?}",
                latency.as_secs_f64() * 1e3,
                max
            )),
            _ => Ok(latency),
        },
    }
}

async fn http_get(stream: TcpStream, target: SocketAddr, h: &HealthConfig) -> Result<(), String> {
    let request = Request::builder()
        .uri(h.path.as_str())
        .header(header::HOST, target.to_string())
        .header(header::USER_AGENT, "canaryd-probe")
        .header(header::CONNECTION, "close")
        .body(crate::control::http::empty())
        .map_err(|e| format!("http request: {e}"))?;
    let (status, _) = crate::control::http::exchange(stream, request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    if status.as_u16() != h.expect_status {
        return Err(format!(
            "HTTP {}, expected {}",
            status.as_u16(),
            h.expect_status
        ));
    }
    Ok(())
}

/// The running probe tasks; dropping it stops them.
#[derive(Default)]
pub struct Probes {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a probe task for every backend of every service with `health:`.
/// `known` is the health the daemon holds now (a reload keeps it).
pub fn spawn(
    config: &Config,
    known: &HashMap<(String, IpAddr), bool>,
    tx: UnboundedSender<Transition>,
    epoch: u64,
) -> Probes {
    let mut probes = Probes::default();
    for s in &config.services {
        let Some(h) = &s.health else { continue };
        for version in [Version::Stable, Version::Canary] {
            for addr in s.pool(version) {
                let healthy = known.get(&(s.name.clone(), *addr)).copied().unwrap_or(true);
                let target = SocketAddr::new(*addr, h.port.unwrap_or(s.port));
                let (h, tx, service, addr) = (h.clone(), tx.clone(), s.name.clone(), *addr);
                probes.tasks.push(tokio::spawn(async move {
                    let mut tracker = Tracker::new(healthy);
                    let mut tick = tokio::time::interval(h.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let result = probe_once(target, &h).await;
                        let ok = result.is_ok();
                        if let Some(healthy) =
                            tracker.observe(ok, h.unhealthy_after, h.healthy_after)
                        {
                            let detail = match result {
                                Ok(l) => format!("probe ok in {:.1} ms", l.as_secs_f64() * 1e3),
                                Err(e) => e,
                            };
                            let t = Transition {
                                service: service.clone(),
                                version,
                                addr,
                                healthy,
                                detail,
                                epoch,
                            };
                            if tx.send(t).is_err() {
                                return;
                            }
                        }
                    }
                }));
            }
        }
    }
    probes
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn flips_after_consecutive_results_only() {
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(false, 3, 2), None);
        assert_eq!(t.observe(false, 3, 2), None);
        assert_eq!(t.observe(true, 3, 2), None); // the run is broken
        assert_eq!(t.observe(false, 3, 2), None);
        assert_eq!(t.observe(false, 3, 2), None);
        assert_eq!(t.observe(false, 3, 2), Some(false));
        assert_eq!(t.observe(false, 3, 2), None); // already unhealthy
        assert_eq!(t.observe(true, 3, 2), None);
        assert_eq!(t.observe(true, 3, 2), Some(true));
        assert!(t.healthy);
    }

    fn http(status: u16) -> HealthConfig {
        HealthConfig {
            probe: ProbeKind::Http,
            port: None,
            path: "/healthz".into(),
            expect_status: status,
            max_latency: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            unhealthy_after: 1,
            healthy_after: 1,
        }
    }

    /// A one-shot HTTP server on loopback answering `status` after `delay`.
    async fn server(status: u16, delay: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_checks_status_latency_and_timeout() {
        let ok = server(200, Duration::ZERO).await;
        assert!(probe_once(ok, &http(200)).await.is_ok());
        let e = probe_once(ok, &http(204)).await.unwrap_err();
        assert!(e.contains("HTTP 200, expected 204"), "{e}");
        let bad = server(500, Duration::ZERO).await;
        assert!(probe_once(bad, &http(200))
            .await
            .unwrap_err()
            .contains("HTTP 500"));
        let slow = server(200, Duration::from_millis(300)).await;
        let mut h = http(200);
        h.max_latency = Some(Duration::from_millis(100));
        assert!(probe_once(slow, &h)
            .await
            .unwrap_err()
            .contains("max_latency"));
        h.max_latency = None;
        h.timeout = Duration::from_millis(100);
        assert!(probe_once(slow, &h)
            .await
            .unwrap_err()
            .contains("no answer within"));
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_a_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut h = http(200);
        h.probe = ProbeKind::Tcp;
        assert!(probe_once(addr, &h).await.is_ok());
        drop(l);
        let e = probe_once(addr, &h).await.unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
