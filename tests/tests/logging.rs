//! canaryd's log forms, from a live daemon in the netns topology: with
//! `--log-format json` every stderr line is one JSON object with its level,
//! syslog priority, module and message, and an operator's change is among
//! them; with `--log-format journal` every line carries the `<N>` priority
//! prefix journald reads (a warning `<4>`, an info line `<6>`).

use anyhow::{ensure, Context, Result};
use canary_tests::daemon::Daemon;
use canary_tests::{LbConfig, Service, Topology, VIP_V4};

fn config() -> String {
    LbConfig::lab()
        .service(Service::tcp("shop", VIP_V4, 80).weight(0.0).lab_pools())
        .yaml()
}

#[test]
fn json_and_journal_logs_carry_every_line_with_its_level() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;

    let mut d = Daemon::spawn(&topo, Some(&config()), &["--log-format", "json"])?;
    topo.ctl(&["set-weight", "shop", "12.5"])?;
    d.stop();
    let log = d.log();
    let mut records = 0;
    let mut saw_change = false;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("a log line that is not JSON: {line:?}"))?;
        let (level, priority, message) = (
            v["level"].as_str().unwrap_or_default(),
            v["priority"].as_u64().unwrap_or_default(),
            v["message"].as_str().unwrap_or_default(),
        );
        let want = match level {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            _ => 7,
        };
        ensure!(priority == want, "{level} with priority {priority}: {line}");
        ensure!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')) && v["target"].as_str().is_some(),
            "a record without time or target: {line}"
        );
        saw_change |= message.contains("12.5");
        records += 1;
    }
    ensure!(records >= 5, "{records} records: {log}");
    ensure!(
        saw_change,
        "the weight change is not in the JSON log:\n{log}"
    );

    // journald's form: a priority prefix on every line, no time stamp.
    let bad = "services:\n  - name: [";
    let mut d = Daemon::spawn(&topo, Some(&config()), &["--log-format", "journal"])?;
    let refused = d.reload(bad)?;
    ensure!(refused.is_err(), "a broken config was accepted");
    d.stop();
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    ensure!(lines.len() >= 5, "{log}");
    for l in &lines {
        let prio = l
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(p, _)| p);
        ensure!(
            matches!(prio, Some("3" | "4" | "6" | "7")),
            "a line without a journald priority prefix: {l:?}"
        );
    }
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("<3>") && l.contains("reload rejected")),
        "the rejected reload is not an error-priority line:\n{log}"
    );
    Ok(())
}
