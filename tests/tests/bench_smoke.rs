//! The benchmark must not rot: one short iteration of every contender
//! (XDP_PASS floor, canary, nftables DNAT, HAProxy, control-plane timings,
//! the fleet's weight convergence and etcd writes),
//! asserting it runs to the end. Figures are not asserted here: the machine
//! is shared and a smoke run is too short; `cargo xtask bench` reports them.

#[test]
fn bench_smoke_runs_every_contender() {
    let bin = canary_tests::bin_path("canary-bench").expect("canary-bench");
    let out_dir = std::env::temp_dir().join(format!("cnry-{}-bench-smoke", std::process::id()));
    let out = std::process::Command::new(bin)
        .arg("--smoke")
        .arg("--out")
        .arg(&out_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run canary-bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(out.status.success(), "canary-bench --smoke failed:\n{text}");
    for contender in [
        "xdp_pass",
        "plain routing",
        "canary (XDP",
        "nftables",
        "HAProxy",
        "fleet: set-weight on one of 3 hosts",
        "fleet: etcd writes per host per second",
    ] {
        assert!(text.contains(contender), "no {contender:?} row in:\n{text}");
    }
    // setup installs nft and haproxy: every contender really ran.
    assert!(
        !text.contains("is not installed"),
        "a contender was skipped:\n{text}"
    );
}
