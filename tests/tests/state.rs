//! The state file and canaryd's start: run-time changes merged with a
//! changed file, a corrupt state file, a state file that cannot be saved
//! (at start and after a live change). canaryd runs for real in the netns
//! topology.

use anyhow::{Context, Result};
use canary_tests::{daemon::Daemon, LbConfig, Service, Topology, VIP_V4};
use canary_userspace::daemon::state::RuntimeState;
use canary_userspace::dataplane::maps::Maps;
use canary_userspace::rollout::analysis::WindowCounts;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CANARY: &str = canary_tests::config::LAB_CANARY_V4;

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(Service::tcp("shop", VIP_V4, 80).weight(weight).lab_pools())
        .yaml()
}

fn with_plan() -> String {
    LbConfig::lab()
        .service(
            Service::tcp("shop", VIP_V4, 80)
                .weight(0.0)
                .lab_pools()
                .raw(
                    "    rollout:
      steps: [5, 10, 20, 50, 80, 100]
      interval: 60s
",
                ),
        )
        .yaml()
}

fn state_path(topo: &Topology) -> PathBuf {
    RuntimeState::path(&topo.state_dir(), topo.instance())
}

/// Makes every state save fail for real: the temp file the save writes
/// (then renames) is a non-empty directory. Loading is not affected.
fn break_saves(topo: &Topology) -> Result<PathBuf> {
    let tmp = state_path(topo).with_extension("json.tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(
        tmp.join("keep"),
        "a directory where the save's temp file goes",
    )?;
    Ok(tmp)
}

fn canary_in_status(topo: &Topology) -> Result<(f64, bool)> {
    let s = topo.service_status("shop")?;
    let canary: IpAddr = CANARY.parse()?;
    Ok((
        s.weight_percent,
        s.backends.iter().any(|b| b.addr == canary),
    ))
}

/// Defect 1: the canary pool emptied at weight 0 at run time, then the
/// file's weight raised. The file is valid on its own: canaryd starts, and a
/// reload is accepted; the run-time pool that no longer fits is dropped with
/// a line naming the service, the field and why.
#[test]
fn a_valid_file_wins_over_run_time_changes_that_no_longer_fit() -> Result<()> {
    let topo = Topology::new(3)?;
    // Restart: the file raised to 10 % while the run-time canary pool is [].
    let mut d = topo.spawn_canaryd(Some(&config(0.0)))?;
    topo.ctl(&["backends", "remove", "shop", "canary", CANARY])?;
    d.stop();
    let d = topo.spawn_canaryd(Some(&config(10.0)))?;
    let log = d.log();
    assert!(
        log.contains("service shop: run-time canary pool [] dropped"),
        "no line for the dropped override: {log}"
    );
    assert_eq!(canary_in_status(&topo)?, (10.0, true));

    // Reload: run-time weight 0 and canary pool [] under a file at 10 %;
    // the file goes to 20 %: the weight override lapses, the pool is dropped.
    let mut d = d;
    topo.ctl(&["set-weight", "shop", "0"])?;
    topo.ctl(&["backends", "remove", "shop", "canary", CANARY])?;
    assert_eq!(canary_in_status(&topo)?, (0.0, false));
    let got = d.reload(&config(20.0))?;
    assert_eq!(got, Ok(()), "a valid file was refused on reload");
    let log = d.log();
    assert_eq!(
        log.matches("service shop: run-time canary pool [] dropped")
            .count(),
        2,
        "no line for the override dropped on reload: {log}"
    );
    assert_eq!(canary_in_status(&topo)?, (20.0, true));
    let maps = Maps::from_pins(&topo.pin_dir())?;
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 2000);
    // The dropped override is gone from the state file too.
    let saved = RuntimeState::load(&state_path(&topo))?;
    assert!(
        saved
            .services
            .get("shop")
            .is_none_or(|o| o.canary.is_none()),
        "{saved:?}"
    );
    Ok(())
}

/// Writes a state file whose rollout of shop is `steps` at `step`.
fn write_rollout_state(topo: &Topology, steps: &[f64], step: usize) -> Result<PathBuf> {
    let path = state_path(topo);
    let state = serde_json::json!({
        "rollouts": {
            "shop": {
                "phase": "running",
                "steps": steps,
                "interval_ms": 60000,
                "step": step,
                "step_elapsed_ms": 0,
                "window": serde_json::to_value(WindowCounts::default())?,
                "last": null,
                "reason": null,
                "history": [],
            }
        }
    });
    std::fs::create_dir_all(topo.state_dir())?;
    std::fs::write(&path, serde_json::to_vec_pretty(&state)?)?;
    Ok(path)
}

fn assert_one_line_refusal(topo: &Topology, want: &str) -> Result<()> {
    let (status, stderr) = Daemon::run_to_exit(topo, &with_plan(), Duration::from_secs(8))?;
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "canaryd panicked: {stderr}"
    );
    assert!(!status.success(), "canaryd started: {status:?}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(want)).collect();
    assert_eq!(lines.len(), 1, "want one line with {want:?}: {stderr}");
    Ok(())
}

/// Defect 2: a state file whose rollout step is beyond its plan, or whose
/// plan is empty, stops canaryd's start with one line naming the file and
/// the field, never a panic (it used to panic the main loop at every tick).
#[test]
fn an_inconsistent_state_file_is_one_clear_line_not_a_panic() -> Result<()> {
    let topo = Topology::new(3)?;
    let path = write_rollout_state(&topo, &[5.0, 10.0, 20.0, 50.0, 80.0, 100.0], 7)?;
    assert_one_line_refusal(
        &topo,
        &format!(
            "state file {}: rollouts.shop.step: 7 is beyond the plan's 6 steps",
            path.display()
        ),
    )?;
    write_rollout_state(&topo, &[], 0)?;
    assert_one_line_refusal(
        &topo,
        &format!(
            "state file {}: rollouts.shop.steps: the plan is empty",
            path.display()
        ),
    )?;
    // Nothing was attached.
    assert_eq!(xdp_attached(&topo)?, "");
    assert_eq!(pins_left(&topo), Vec::<String>::new());
    Ok(())
}

fn xdp_attached(topo: &Topology) -> Result<String> {
    let out = topo.lb.ip(&["-d", "link", "show"])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    Ok(text
        .lines()
        .filter(|l| l.contains("xdp"))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn pins_left(topo: &Topology) -> Vec<String> {
    std::fs::read_dir(topo.pin_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Defect 3: the first save after a successful first apply fails: canaryd
/// exits with a clear error and removes the data plane it attached (no XDP
/// program on the interface, no pins).
#[test]
fn a_failed_first_save_leaves_no_data_plane_behind() -> Result<()> {
    let topo = Topology::new(3)?;
    break_saves(&topo)?;
    let (status, stderr) = Daemon::run_to_exit(&topo, &config(10.0), Duration::from_secs(15))?;
    assert!(!status.success(), "canaryd started: {stderr}");
    assert_eq!(xdp_attached(&topo)?, "", "an XDP program was left attached");
    assert_eq!(
        pins_left(&topo),
        Vec::<String>::new(),
        "pins left under {}",
        topo.pin_dir().display()
    );
    assert!(
        stderr.contains("canaryd: saving the run-time state")
            && stderr.contains("the data plane this canaryd attached is removed again"),
        "no clear error: {stderr}"
    );
    Ok(())
}

/// Defect 4: a change the maps took whose save then fails is a success
/// (it is live), says that it was not saved, and is saved once saving works
/// again.
#[test]
fn a_live_change_whose_save_fails_is_reported_applied() -> Result<()> {
    let topo = Topology::new(3)?;
    let d = topo.spawn_canaryd(Some(&config(10.0)))?;
    let tmp = break_saves(&topo)?;
    let out = topo.canaryctl(&["set-weight", "shop", "30"], None)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "set-weight refused though applied: {stdout}{stderr}"
    );
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains(&format!(
            "applied, but not saved to {}: writing ",
            state_path(&topo).display()
        )) && said.contains("it will not survive a restart"),
        "the save failure is not said: {said}"
    );
    let maps = Maps::from_pins(&topo.pin_dir())?;
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 3000);
    assert_eq!(topo.service_status("shop")?.weight_percent, 30.0);
    assert!(d.log().contains("applied, but not saved to"), "{}", d.log());

    // Saving works again: the change reaches the state file on its own.
    std::fs::remove_dir_all(&tmp)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let saved = RuntimeState::load(&state_path(&topo))?;
        let bp = saved
            .services
            .get("shop")
            .and_then(|o| o.weight.as_ref())
            .map(|w| w.weight_bp);
        if bp == Some(3000) {
            break;
        }
        assert!(Instant::now() < deadline, "never saved: {saved:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// SIGHUP the moment canaryd says ready reloads (the handler is installed
/// before "ready"; it used to be installed after, and the signal killed it).
#[test]
fn a_reload_right_after_ready_is_a_reload() -> Result<()> {
    let topo = Topology::new(3)?;
    for weight in [20.0, 30.0, 40.0] {
        let mut d = topo.spawn_canaryd(Some(&config(10.0)))?;
        assert_eq!(d.reload(&config(weight))?, Ok(()));
        assert_eq!(topo.service_status("shop")?.weight_percent, weight);
        d.stop();
    }
    Ok(())
}

/// Issue 13, finding 5: errors name their true source. A run-time change
/// saved in the state file that the rules now refuse (a loopback canary
/// backend) is dropped at start with a line naming the state file, and the
/// file's pool runs; a weight override out of range stops the start with
/// one line naming the state file and the field, not the config.
#[test]
fn a_bad_run_time_change_in_the_state_file_is_blamed_on_the_state_file() -> Result<()> {
    let topo = Topology::new(3)?;
    let path = state_path(&topo);
    std::fs::create_dir_all(topo.state_dir())?;
    let pool = serde_json::json!({
        "services": {"shop": {"canary": {"pool": ["127.0.0.1"], "file_pool": [CANARY]}}}
    });
    std::fs::write(&path, serde_json::to_vec(&pool)?)?;
    let d = topo.spawn_canaryd(Some(&config(10.0)))?;
    let log = d.log();
    let want = format!(
        "state file {}: service shop: run-time canary pool [127.0.0.1] dropped",
        path.display()
    );
    let line = log
        .lines()
        .find(|l| l.contains(&want))
        .with_context(|| format!("no line {want:?}: {log}"))?;
    assert!(line.contains("loopback"), "{line}");
    assert_eq!(canary_in_status(&topo)?, (10.0, true));
    let backends: Vec<IpAddr> = topo
        .service_status("shop")?
        .backends
        .iter()
        .map(|b| b.addr)
        .collect();
    assert!(
        !backends.contains(&"127.0.0.1".parse()?),
        "127.0.0.1 is a backend: {backends:?}"
    );
    drop(d);

    let weight = serde_json::json!({
        "services": {"shop": {"weight": {
            "weight_bp": 999_999, "source": "canaryctl (uid 0)", "file_weight_bp": 1000
        }}}
    });
    std::fs::write(&path, serde_json::to_vec(&weight)?)?;
    let (status, stderr) = Daemon::run_to_exit(&topo, &config(10.0), Duration::from_secs(8))?;
    assert!(!status.success(), "canaryd started: {stderr}");
    let want = format!(
        "state file {}: services.shop.weight.weight_bp: 999999 is out of range (0 to 10000)",
        path.display()
    );
    assert!(stderr.contains(&want), "want {want:?}: {stderr}");
    assert!(!stderr.contains("applying the config"), "{stderr}");
    Ok(())
}
