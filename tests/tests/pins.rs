//! Pins removed while canaryd runs (an operator's `rm -r`, a cleanup
//! script): canaryd pins its maps and links again from the objects it holds
//! within about a second, says so in its log, and a restart afterwards
//! adopts the live data plane: open connections keep working.
//!
//! - `removed_pins_are_restored_and_a_restart_keeps_open_connections`: the
//!   real canaryd in the netns topology, 20 open connections, the whole pin
//!   directory removed; then a restart with the canary weight raised from 0
//!   to 100, so a connection whose flow entry was lost is decided again onto
//!   the canary backend, which resets it (as in upgrade.rs). Before the
//!   watcher the pins stayed gone and 3 of 20 connections broke.
//! - `replaced_and_unrestorable_pins_are_said_not_adopted`: the data plane
//!   in-process (`xdp_lab`), `check_pins` called directly: another map
//!   pinned under a map's or a link's name is reported and left alone, a
//!   pin that cannot be made again is reported, and both are restored once
//!   the way is clear.
//!
//! Needs root. Run: `cargo test -p canary-tests --test pins -- --nocapture`.

use anyhow::{ensure, Context, Result};
use aya::maps::{MapData, MapInfo};
use canary_tests::xdp_lab::run_lab;
use canary_tests::{client_v4, ping_all, tcp_connect, LbConfig, Service, Topology, VIP_V4};
use canary_userspace::dataplane::pins::Found;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONNS: u32 = 20;
/// How long a restore may take (canaryd checks once a second).
const RESTORE_WITHIN: Duration = Duration::from_secs(2);

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(Service::tcp("shop", VIP_V4, 80).weight(weight).lab_pools())
        .yaml()
}

/// Every pin under `dir` (`FLOWS`, `links/lb-client`, ...) with the id of
/// the object pinned there (a map's id for maps, the link's for links).
fn pins_with_ids(dir: &Path) -> Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type()?.is_dir() {
            continue;
        }
        out.insert(name, MapInfo::from_pin(e.path())?.id());
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for e in entries {
            let e = e?;
            let link = aya::programs::links::FdLink::from(
                aya::programs::links::PinnedLink::from_pin(e.path())?,
            );
            out.insert(
                format!("links/{}", e.file_name().to_string_lossy()),
                link.info()?.id(),
            );
        }
    }
    Ok(out)
}

#[test]
fn removed_pins_are_restored_and_a_restart_keeps_open_connections() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let dir = topo.pin_dir();
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let timeout = Duration::from_secs(3);

    // Weight 0: every connection on a stable backend.
    let mut d = topo.spawn_canaryd(Some(&config(0.0)))?;
    let before = pins_with_ids(&dir)?;
    ensure!(
        before.contains_key("FLOWS") && before.contains_key("links/lb-client"),
        "canaryd pinned {:?}",
        before.keys()
    );
    let mut conns = topo.open_v4(100, CONNS, vip, timeout)?;
    for c in &conns {
        ensure!(c.backend == "b1" || c.backend == "b2", "on {}", c.backend);
    }
    let broken = ping_all(&mut conns, "before");
    ensure!(broken.is_empty(), "before: {broken:?}");

    // New connections all along, from the removal to after the restart:
    // none may fail (bounded: at most 600, one every 10 ms).
    let done = AtomicBool::new(false);
    let mut problems = Vec::new();
    let (opened, failed) = std::thread::scope(|s| -> Result<(u32, Vec<String>)> {
        let opener = s.spawn(|| {
            topo.client.run(|| {
                let (mut opened, mut failed) = (0u32, Vec::new());
                let mut i = 0;
                while !done.load(Ordering::SeqCst) && i < 600 {
                    match tcp_connect(client_v4(1000 + i), vip, timeout) {
                        Ok(_) => opened += 1,
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                (opened, failed)
            })
        });
        let result = (|| -> Result<()> {
            // `rm -r` of the instance's pin directory: every map pin, every
            // link pin, the directories too.
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            let removed = Instant::now();
            let mut restored = None;
            while removed.elapsed() < RESTORE_WITHIN + Duration::from_secs(1) {
                if pins_with_ids(&dir).ok().as_ref() == Some(&before) {
                    restored = Some(removed.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            match restored {
                Some(t) => {
                    println!(
                        "pins: {} pins restored {t:?} after the removal",
                        before.len()
                    );
                    if t > RESTORE_WITHIN {
                        problems.push(format!("restored only after {t:?}"));
                    }
                }
                None => problems.push(format!(
                    "the pins were not restored (as they were) within {RESTORE_WITHIN:?}: \
                     now {:?}",
                    pins_with_ids(&dir).map(|p| p.into_keys().collect::<Vec<_>>())
                )),
            }
            // The log says what was missing and that it was restored.
            let deadline = Instant::now() + Duration::from_secs(1);
            let line = loop {
                let log = d.log();
                let line = log
                    .lines()
                    .find(|l| l.contains("PINS REMOVED"))
                    .map(str::to_string);
                if line.is_some() || Instant::now() > deadline {
                    break line;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match line {
                Some(l) => {
                    println!("pins: canaryd said: {l}");
                    for p in ["FLOWS", "SERVICES", "links/lb-client", "links/lb-b3"] {
                        if !l.contains(p) {
                            problems.push(format!("the log line does not name {p}: {l}"));
                        }
                    }
                    if !l.contains(&format!("{} restored", before.len())) {
                        problems.push(format!("not {} restored: {l}", before.len()));
                    }
                }
                None => problems.push("canaryd's log says nothing of the removal".into()),
            }
            // Status and metrics count them.
            let status: serde_json::Value =
                serde_json::from_str(&topo.ctl(&["--json", "status"])?)?;
            let pins = &status["pins"];
            if pins["restored_total"].as_u64() != Some(before.len() as u64)
                || pins["at_risk"].as_array().is_none_or(|a| !a.is_empty())
            {
                problems.push(format!("status: pins {pins}"));
            }
            let broken = ping_all(&mut conns, "after the removal");
            if !broken.is_empty() {
                problems.push(format!("after the removal: {broken:?}"));
            }

            // The restart, stopped by pid, started again with weight 100: a
            // connection decided again goes to the canary, which resets it.
            let status = d.stop();
            ensure!(
                status.is_some_and(|s| s.success()),
                "canaryd exited with {status:?}"
            );
            d = topo.spawn_canaryd(Some(&config(100.0)))?;
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        })();
        done.store(true, Ordering::SeqCst);
        let counts = opener.join().expect("opener thread");
        result.map(|()| counts)
    })?;
    println!(
        "pins: {opened} new connections opened from the removal through the restart, {} failed",
        failed.len()
    );
    if !failed.is_empty() {
        problems.push(format!(
            "{} of {} new connections failed: {:?}",
            failed.len(),
            opened as usize + failed.len(),
            &failed[..failed.len().min(3)]
        ));
    }
    let log = d.log();
    if !log.contains("adopting the pinned data plane") {
        problems.push("the restarted canaryd did not adopt the pinned data plane".into());
    }
    let broken = ping_all(&mut conns, "after the restart");
    println!(
        "pins: {} of {CONNS} open connections broken by the restart",
        broken.len()
    );
    if !broken.is_empty() {
        problems.push(format!(
            "{} of {CONNS} open connections broken by the restart: {broken:?}",
            broken.len()
        ));
    }
    // The same maps and links, adopted.
    match pins_with_ids(&dir) {
        Ok(after) if after == before => {}
        other => problems.push(format!(
            "after the restart the pins are {other:?}, before {before:?}"
        )),
    }
    // New connections follow weight 100.
    let fresh = topo.open_v4(2000, 10, vip, timeout);
    match fresh {
        Ok(mut fresh) => {
            let off: Vec<_> = fresh.iter().filter(|c| c.backend != "b3").collect();
            if !off.is_empty() {
                problems.push(format!(
                    "{} new connections not on b3 at weight 100",
                    off.len()
                ));
            }
            let broken = ping_all(&mut fresh, "new");
            if !broken.is_empty() {
                problems.push(format!("new connections: {broken:?}"));
            }
        }
        Err(e) => problems.push(format!("a new connection failed: {e:#}")),
    }
    std::thread::sleep(Duration::from_millis(500));
    let broken = ping_all(&mut conns, "later");
    if !broken.is_empty() {
        problems.push(format!("later: {broken:?}"));
    }
    ensure!(
        problems.is_empty(),
        "{}\n--- canaryd log ---\n{log}",
        problems.join("\n")
    );
    drop(d);
    Ok(())
}

/// The check's findings, pins at `Ours` left out.
fn not_ours(r: &canary_userspace::dataplane::pins::PinReport) -> BTreeMap<String, Found> {
    r.pins
        .iter()
        .filter(|(_, f)| **f != Found::Ours)
        .map(|(p, f)| (p.clone(), f.clone()))
        .collect()
}

#[test]
fn replaced_and_unrestorable_pins_are_said_not_adopted() {
    run_lab(&config(10.0), None, |lab| {
        let dir = lab.dp().pin_dir().to_path_buf();
        let first = lab.dp_mut().check_pins();
        assert!(not_ours(&first).is_empty(), "{first:?}");

        // Watched: every map the object pinned (whatever the list in
        // canary-common says) and every link.
        let pinned = pins_with_ids(&dir).unwrap();
        let watched: Vec<&String> = first.pins.keys().collect();
        assert_eq!(watched, pinned.keys().collect::<Vec<_>>());
        let maps = lab.dp().watched_maps();
        assert!(maps.len() >= 16, "{maps:?}");
        assert!(first.pins.contains_key("links/lb-client"));

        // Everything removed: restored, the same objects, in one check.
        std::fs::remove_dir_all(&dir).unwrap();
        let r = lab.dp_mut().check_pins();
        println!(
            "pins: {} pins checked and all restored in {:?}",
            r.pins.len(),
            r.took
        );
        assert_eq!(r.restored().len(), pinned.len(), "{r:?}");
        assert_eq!(pins_with_ids(&dir).unwrap(), pinned);
        let quiet = lab.dp_mut().check_pins();
        println!("pins: a check with nothing to do took {:?}", quiet.took);
        assert!(not_ours(&quiet).is_empty(), "{quiet:?}");
        assert_eq!(lab.dp().pin_status().restored_total, pinned.len() as u64);

        // Another map (ours, VIPS) pinned under FLOWS: reported, left alone.
        let flows = dir.join("FLOWS");
        std::fs::remove_file(&flows).unwrap();
        MapData::from_pin(dir.join("VIPS"))
            .unwrap()
            .pin(&flows)
            .unwrap();
        let r = lab.dp_mut().check_pins();
        match r.pins.get("FLOWS") {
            Some(Found::Foreign(what)) => assert!(what.contains("VIPS"), "{what}"),
            other => panic!("FLOWS: {other:?}"),
        }
        assert_eq!(not_ours(&r).len(), 1, "{r:?}");
        assert_eq!(MapInfo::from_pin(&flows).unwrap().id(), pinned["VIPS"]);
        assert_eq!(lab.dp().pin_status().at_risk, ["FLOWS"]);
        // Cleared by hand: ours again at the next check.
        std::fs::remove_file(&flows).unwrap();
        let r = lab.dp_mut().check_pins();
        assert_eq!(r.pins["FLOWS"], Found::Restored);
        assert_eq!(MapInfo::from_pin(&flows).unwrap().id(), pinned["FLOWS"]);

        // A map pinned under a link's name: not taken for the link.
        let link = dir.join("links/lb-client");
        std::fs::remove_file(&link).unwrap();
        MapData::from_pin(dir.join("VIPS"))
            .unwrap()
            .pin(&link)
            .unwrap();
        let r = lab.dp_mut().check_pins();
        assert!(
            matches!(&r.pins["links/lb-client"], Found::Foreign(w) if w.contains("not an XDP link")),
            "{r:?}"
        );
        std::fs::remove_file(&link).unwrap();
        assert_eq!(
            lab.dp_mut().check_pins().pins["links/lb-client"],
            Found::Restored
        );

        // links/ made impossible (a map pinned in its place): the link pins
        // cannot be restored, and the check says so; the maps' can.
        let vips = MapData::from_pin(dir.join("VIPS")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        vips.pin(dir.join("links")).unwrap();
        let r = lab.dp_mut().check_pins();
        let lost: Vec<_> = r
            .pins
            .iter()
            .filter(
                |(_, f)| matches!(f, Found::Unrestorable(why) if why.contains("not a directory")),
            )
            .map(|(p, _)| p.clone())
            .collect();
        let links: Vec<_> = pinned
            .keys()
            .filter(|p| p.starts_with("links/"))
            .cloned()
            .collect();
        assert_eq!(lost, links, "{r:?}");
        assert_eq!(r.restored().len(), pinned.len() - links.len(), "{r:?}");
        std::fs::remove_file(dir.join("links")).unwrap();
        let r = lab.dp_mut().check_pins();
        assert_eq!(r.restored(), links, "{r:?}");
        assert_eq!(pins_with_ids(&dir).unwrap(), pinned);

        // Torn down: its pins go on purpose, and stay gone.
        lab.dp_mut().teardown().unwrap();
        assert!(lab.dp_mut().check_pins().pins.is_empty());
        assert!(!dir.exists());
    });
}
