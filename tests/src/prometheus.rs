//! A real Prometheus server (Debian's `prometheus`) run by a test inside a
//! namespace: scrapes the given targets every second, answers the HTTP API
//! on a loopback address of that namespace, and is stopped (by pid) and its
//! data removed on drop.

use crate::daemon::stop_child;
use crate::Netns;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// Base URL, e.g. http://127.0.0.1:9090 (inside the namespace).
    pub url: String,
}

impl Prometheus {
    /// The rollout lab's Prometheus (`rollout::topology`): in the LB
    /// namespace on 127.0.0.1:9090, scraping each backend's `/metrics` on
    /// the health port, b1 and b2 labelled `version="stable"`, b3
    /// `version="canary"`.
    pub fn lab(topo: &crate::Topology) -> Result<Prometheus> {
        let port = crate::rollout::HEALTH_PORT;
        let targets: Vec<(String, &str)> = vec![
            (format!("198.18.1.2:{port}"), "stable"),
            (format!("198.18.2.2:{port}"), "stable"),
            (format!("198.18.3.2:{port}"), "canary"),
        ];
        Prometheus::start(&topo.lb, &topo.id, "127.0.0.1:9090", &targets)
    }

    /// An instant query's raw JSON answer (for a test's log), run with
    /// curl in `ns`.
    pub fn query(&self, ns: &Netns, promql: &str) -> Result<String> {
        let out = ns.exec(&[
            "curl",
            "-sf",
            "--get",
            "--data-urlencode",
            &format!("query={promql}"),
            &format!("{}/api/v1/query", self.url),
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `targets`: (host:port, version label) scraped at `/metrics`, job `app`.
    pub fn start(
        ns: &Netns,
        id: &str,
        listen: &str,
        targets: &[(String, &str)],
    ) -> Result<Prometheus> {
        let mut jobs = String::from("  - job_name: app\n    static_configs:\n");
        for (target, version) in targets {
            jobs.push_str(&format!(
                "      - targets: ['{target}']\n        labels: {{version: {version}}}\n"
            ));
        }
        Prometheus::spawn(ns, id, listen, &jobs)
    }

    /// `targets` scraped at `/metrics` as job `job`, with no labels of the
    /// test's own (canaryd's metrics carry their own `version` label, which
    /// a target label of that name would rename to `exported_version`).
    pub fn scraping(
        ns: &Netns,
        id: &str,
        listen: &str,
        job: &str,
        targets: &[&str],
    ) -> Result<Prometheus> {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let jobs = format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        Prometheus::spawn(ns, id, listen, &jobs)
    }

    /// Prometheus with `scrape_configs` (YAML list items), every second.
    fn spawn(ns: &Netns, id: &str, listen: &str, scrape_configs: &str) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!("{id}-prometheus"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let yaml = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
        );
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, yaml)?;
        let log = std::fs::File::create(dir.join("log"))?;
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting prometheus (installed by `cargo xtask setup`)")?;
        let mut p = Prometheus {
            child,
            dir,
            url: format!("http://{listen}"),
        };
        let ready = format!("{}/-/ready", p.url);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let out = ns.exec(&["curl", "-sf", "-o", "/dev/null", &ready]);
            if out.is_ok() {
                return Ok(p);
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!("prometheus exited ({st}): {}", p.log());
            }
            if Instant::now() > end {
                bail!("prometheus not ready after 20 s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query's result vector, or Prometheus' error (a query that
    /// does not parse answers 400 with `status: error`).
    pub fn vector(&self, ns: &Netns, promql: &str) -> Result<Vec<serde_json::Value>> {
        let out = ns.exec(&[
            "curl",
            "-sS",
            "--get",
            "--data-urlencode",
            &format!("query={promql}"),
            &format!("{}/api/v1/query", self.url),
        ])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("answer: {}", String::from_utf8_lossy(&out.stdout)))?;
        if v["status"] != "success" {
            bail!("{}: {}", v["errorType"], v["error"]);
        }
        anyhow::ensure!(v["data"]["resultType"] == "vector", "not a vector: {v}");
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
