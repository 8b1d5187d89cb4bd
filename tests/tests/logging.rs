//! canaryd's log forms, from a live daemon in the netns topology: with
//! `--log-format json` every stderr line is one JSON object with its level,
//! syslog priority, module and message, and an operator's change is among
//! them; with `--log-format journal` every line carries the `<N>` priority
//! prefix journald reads (a warning `<4>`, an info line `<6>`), the error
//! that ends a start included (`<3>`).

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

    // The error that ends a start is the journal's error line too (the
    // format from the environment, as a unit's Environment= would set it;
    // this binary's only test, so no other test sees the variable).
    std::env::set_var("CANARY_LOG_FORMAT", "journal");
    let missing = config().replace("interface: lb-client", "interface: nosuch0");
    ensure!(
        missing != config(),
        "the lab config has no `interface: lb-client`"
    );
    let ended = Daemon::run_to_exit(&topo, &missing, std::time::Duration::from_secs(20));
    std::env::remove_var("CANARY_LOG_FORMAT");
    let (status, err) = ended?;
    ensure!(!status.success(), "started on a missing interface: {err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    ensure!(
        last.starts_with("<3>canaryd: ") && last.contains("nosuch0"),
        "the fatal error is not an error-priority journal line: {last:?}\n{err}"
    );
    Ok(())
}
