//! The split the real program makes, measured through its output: "over
//! 100,000 distinct client addresses fed through the real program with
//! BPF_PROG_TEST_RUN, the canary share at weights 1%, 5%, 10%, 50% and 99%
//! lies within 4 standard deviations of the binomial expectation; and the
//! same clients at 5% are a subset of those at 10% (monotone)."
//!
//! Needs root. Run: `cargo test -p canary-tests --test split_accuracy`.

use canary_common::{choose_version, reason, split_hash, AFFINITY_SOURCE_IP, PROTO_TCP};
use canary_tests::checksum::{fold, rfc1071_sum};
use canary_tests::packet::{dst_addr, flow_key, tcp, v4, Tcp};
use canary_tests::prog_run::XDP_REDIRECT;
use canary_tests::xdp_lab::{assert_reasons, run_lab};
use canary_tests::{LbConfig, Service};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

const N: usize = 100_000;
const VIP: [u8; 4] = [198, 18, 100, 1];
const WEIGHTS_PERCENT: [f64; 5] = [1.0, 5.0, 10.0, 50.0, 99.0];
const STABLE: [&str; 2] = canary_tests::config::LAB_STABLE_V4;
const CANARY: &str = canary_tests::config::LAB_CANARY_V4;

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(
            Service::tcp("split", std::net::Ipv4Addr::from(VIP), 80)
                .affinity("source-ip")
                .weight(weight)
                .lab_pools(),
        )
        .yaml()
}

/// N distinct client addresses in 198.18.0.0/15, leaving out the LB and
/// backend subnets (198.18.0-3.x) and the VIP subnet (198.18.100.x).
fn clients() -> Vec<Ipv4Addr> {
    let start = u32::from(Ipv4Addr::new(198, 18, 4, 0));
    let end = u32::from(Ipv4Addr::new(198, 19, 255, 255));
    let v: Vec<Ipv4Addr> = (start..=end)
        .map(Ipv4Addr::from)
        .filter(|a| !(a.octets()[1] == 18 && a.octets()[2] == 100))
        .take(N)
        .collect();
    assert_eq!(v.len(), N);
    v
}

/// A SYN from `client:sport` to the VIP with valid IPv4 and TCP checksums
/// (RFC 1071, computed here), patched into an etherparse-built template.
fn syn(template: &[u8], client: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut p = template.to_vec();
    p[26..30].copy_from_slice(&client.octets());
    p[34..36].copy_from_slice(&sport.to_be_bytes());
    p[24..26].copy_from_slice(&[0, 0]);
    let c = !fold(rfc1071_sum(&p[14..34], 0));
    p[24..26].copy_from_slice(&c.to_be_bytes());
    let tcp_len = p.len() - 34;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&p[26..34]);
    pseudo.extend_from_slice(&[0, PROTO_TCP]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    p[50..52].copy_from_slice(&[0, 0]);
    let c = !fold(rfc1071_sum(&p[34..], rfc1071_sum(&pseudo, 0)));
    p[50..52].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn canary_share_is_binomial_and_monotone_through_the_real_program() {
    run_lab(&config(WEIGHTS_PERCENT[0]), None, |lab| {
        let clients = clients();
        let distinct: HashSet<_> = clients.iter().collect();
        assert_eq!(distinct.len(), N, "distinct client addresses");
        let template = tcp(0, v4("198.18.4.0"), 1, IpAddr::V4(VIP.into()), 80, Tcp::Syn);
        let vip = IpAddr::V4(VIP.into());
        let canary = v4(CANARY);
        let stable: Vec<IpAddr> = STABLE.iter().map(|s| v4(s)).collect();
        let seed = lab.service("split").seed();

        let mut canary_sets: Vec<HashSet<Ipv4Addr>> = Vec::new();
        for (round, &percent) in WEIGHTS_PERCENT.iter().enumerate() {
            lab.apply_yaml(&config(percent));
            let weight_bp = lab.service("split").weight_bp();
            assert_eq!(weight_bp as f64, percent * 100.0);
            // A source port per weight: every packet is a flow-table miss,
            // decided afresh at this weight (source-ip affinity ignores the
            // port, so each client keeps its bucket across rounds).
            let sport = 20_000 + round as u16;
            let dp0 = lab.datapath();
            let vs0 = [lab.vstats("split", 0), lab.vstats("split", 1)];
            let t = Instant::now();
            let mut in_canary = HashSet::new();
            let mut n_stable = 0u64;
            for &c in &clients {
                let pkt = syn(&template, c, sport);
                let r = lab.run(&pkt, 0);
                assert_eq!(r.action, XDP_REDIRECT, "SYN from {c}");
                let to = dst_addr(&r.out);
                let kernel_canary = if to == canary {
                    in_canary.insert(c);
                    true
                } else {
                    assert!(stable.contains(&to), "{c} sent to {to}");
                    n_stable += 1;
                    false
                };
                // The kernel's decision is the shared one (`canaryctl
                // explain` computes the same).
                let key = flow_key(IpAddr::V4(c), sport, vip, 80, PROTO_TCP);
                let predicted =
                    choose_version(split_hash(&key, AFFINITY_SOURCE_IP, seed), weight_bp);
                assert_eq!(kernel_canary, predicted == 1, "{c} at {percent}%");
            }
            let elapsed = t.elapsed();
            let n_canary = in_canary.len() as u64;
            assert_eq!(n_canary + n_stable, N as u64);

            // Canary count ~ Binomial(n, p): mean n p, sd = sqrt(n p (1-p)).
            // |count - n p| <= 4 sd fails by chance with probability < 7e-5
            // per weight if the hash is uniform.
            let (n, p) = (N as f64, percent / 100.0);
            let mean = n * p;
            let sd = (n * p * (1.0 - p)).sqrt();
            let dev = (n_canary as f64 - mean) / sd;
            println!(
                "weight {percent:>4}%: canary {n_canary:>6} of {N} (expected {mean:.0}, sd {sd:.1}, \
                 {dev:+.2} sd); {N} test runs in {:.2?} ({:.1} us each)",
                elapsed,
                elapsed.as_secs_f64() * 1e6 / n
            );
            assert!(
                dev.abs() <= 4.0,
                "weight {percent}%: {n_canary} canary clients, expected {mean:.0} +- {:.0} (4 sd)",
                4.0 * sd
            );

            // The data plane's own counters agree exactly with the outputs.
            let vs1 = [lab.vstats("split", 0), lab.vstats("split", 1)];
            assert_eq!(
                vs1[1].new_flows - vs0[1].new_flows,
                n_canary,
                "canary new_flows"
            );
            assert_eq!(
                vs1[0].new_flows - vs0[0].new_flows,
                n_stable,
                "stable new_flows"
            );
            assert_eq!(vs1[1].packets - vs0[1].packets, n_canary);
            assert_eq!(vs1[0].packets - vs0[0].packets, n_stable);
            assert_reasons(
                &dp0,
                &lab.datapath(),
                &[
                    (reason::FWD_REDIRECT, N as u64),
                    (reason::FLOW_INSERT, N as u64),
                ],
                &format!("weight {percent}%"),
            );
            canary_sets.push(in_canary);
        }

        // Monotone: raising the weight only adds clients to canary.
        for i in 1..canary_sets.len() {
            let (lo, hi) = (&canary_sets[i - 1], &canary_sets[i]);
            let lost: Vec<_> = lo.difference(hi).take(5).collect();
            assert!(
                lost.is_empty(),
                "{}% -> {}%: clients left canary, e.g. {lost:?}",
                WEIGHTS_PERCENT[i - 1],
                WEIGHTS_PERCENT[i]
            );
        }
        // The words: the clients at 5% are a subset of those at 10%.
        assert!(canary_sets[1].is_subset(&canary_sets[2]));
    });
}
