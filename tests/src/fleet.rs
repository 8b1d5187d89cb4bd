//! A fleet of load-balancer hosts behind an ECMP router, sharing the
//! backends, with an etcd cluster on a management network.
//!
//! ```text
//!  client eth0 ── client [router] lbK ── front [lbK] bB ── lbK [backend bB]   (K, B = 1..)
//!                                                   mgmt0 ── br0 [sw] ── eth0 [etcdI]
//! ```
//! | link | router / lb side | far side |
//! | --- | --- | --- |
//! | client–router | 198.18.0.1/24, 2001:db8::1/64 | client 198.18.0.2, 2001:db8::2 |
//! | router–lbK | 198.18.(40+K).1/24, 2001:db8:4K::1/64 | lbK `front` .2, ::2 |
//! | lbK–bB | lbK `bB` 198.18.(50+B).(4K+1)/30, 2001:db8:5B:K::1/64 | bB `lbK` .(4K+2), ::2 |
//! | mgmt | lbK `mgmt0` 198.19.255.K/24 | etcd member I 198.19.255.(10+I) |
//!
//! The client is the single-host topology's (any source in 198.18.16.0/20
//! and 2001:db8:1000::/64). The router spreads the VIP networks
//! 198.18.100.0/24 and 2001:db8:100::/64 over the LBs by ECMP on the L4
//! hash; each backend holds its service address (198.18.B.2, 2001:db8:B::2,
//! as in the single-host topology) on `lo` and sends its replies back by
//! ECMP over all LBs, so a reply may reach another LB than its request did.
//! Both skip a next hop whose link lost carrier (`host_down`).
//!
//! LB indices `k` are 0-based (`lbs[0]` is `lb1`); names are
//! `cnry-<pid>-f<n>-router`, `-client`, `-lbK`, `-bB`, `-sw`, `-etcdI`.

use crate::cleanup;
use crate::config::{FleetSection, LbConfig};
use crate::daemon::{self, Daemon, Host};
use crate::etcd::EtcdCluster;
use crate::netns::{run, Netns};
use crate::topology::{bin_path, Backend, ServerOptions};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One load-balancer host: its namespace, the interfaces canaryd attaches
/// to, and what keeps its canaryd apart from the others'.
pub struct LbHost {
    /// `lb1`, `lb2`, ... (the fleet's host name).
    pub name: String,
    /// `cnry-<pid>-<n>-lbK`: canaryd's instance (pins), socket, state dir.
    pub instance: String,
    pub ns: Netns,
    /// Toward the router (`interface:`).
    pub front_if: String,
    /// Toward backend 1, 2, ... (`backend_interfaces:`).
    pub backend_ifs: Vec<String>,
    /// On the management network.
    pub mgmt_if: String,
    pub mgmt_v4: Ipv4Addr,
    /// Static routes (`ip -batch` lines), applied again by `host_up`: the
    /// kernel drops a route when its interface goes down.
    routes: String,
}

impl Host for LbHost {
    fn netns(&self) -> &Netns {
        &self.ns
    }
    fn instance(&self) -> &str {
        &self.instance
    }
    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/canary/{}.sock", self.instance))
    }
    fn state_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-state", self.instance))
    }
}

impl LbHost {
    pub fn pin_dir(&self) -> PathBuf {
        canary_userspace::dataplane::maps::pin_dir(&self.instance)
    }

    /// Every link of the host: data path and management.
    fn links(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.front_if)
            .chain(&self.backend_ifs)
            .chain(std::iter::once(&self.mgmt_if))
    }
}

impl Drop for LbHost {
    fn drop(&mut self) {
        // Pins first: removing the link pins detaches the program.
        let _ = canary_userspace::dataplane::remove_pins(&self.pin_dir());
        let _ = std::fs::remove_dir_all(self.state_dir());
        let _ = std::fs::remove_file(self.socket());
        // The namespace goes when the field drops.
    }
}

pub struct FleetTopology {
    pub id: String,
    // Field order is drop order (after `Drop::drop` stopped the servers):
    // namespaces and their pins, then etcd and the management network.
    servers: Vec<Child>,
    pub client: Netns,
    pub router: Netns,
    pub lbs: Vec<LbHost>,
    pub backends: Vec<Backend>,
    pub etcd: EtcdCluster,
}

/// Sysctls for every namespace, set before any link exists: IPv6 on, no
/// router advertisements, no duplicate address detection (a tentative
/// address stalls neighbour discovery for a second or two after link-up).
const COMMON_SYSCTLS: &[&str] = &[
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.dad_transmits=0",
    "net.ipv6.conf.default.dad_transmits=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
];

/// Sysctls of a host that spreads by ECMP (router, backends): the L4 hash
/// (one connection, one path; connections from one client spread), and a
/// next hop whose link lost carrier is skipped rather than blackholed.
const ECMP_SYSCTLS: &[&str] = &[
    "net.ipv4.fib_multipath_hash_policy=1",
    "net.ipv6.fib_multipath_hash_policy=1",
    "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
    "net.ipv4.conf.default.ignore_routes_with_linkdown=1",
    "net.ipv6.conf.all.ignore_routes_with_linkdown=1",
    "net.ipv6.conf.default.ignore_routes_with_linkdown=1",
];

/// Sysctls of a forwarding host (router, LBs).
const FORWARDING_SYSCTLS: &[&str] = &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"];

/// An LB keeps its IPv6 addresses while a link is down (`host_down`), as
/// it keeps its IPv4 ones.
const LB_SYSCTLS: &[&str] = &[
    "net.ipv6.conf.all.keep_addr_on_down=1",
    "net.ipv6.conf.default.keep_addr_on_down=1",
];

fn sysctls(ns: &Netns, sets: &[&[&str]]) -> Result<()> {
    let mut args = vec!["sysctl", "-qw"];
    args.extend(sets.iter().flat_map(|s| s.iter().copied()));
    ns.exec(&args)?;
    Ok(())
}

/// Full checksums like frames off a wire on every end that sends into an
/// XDP interface or forwards (the XDP program updates them incrementally),
/// and GRO on, which gives a veth the NAPI that XDP-redirected frames need.
fn offloads(ns: &Netns, ifname: &str, gro: bool) -> Result<()> {
    let mut args = vec!["ethtool", "-K", ifname, "tx", "off"];
    if gro {
        args.extend(["gro", "on"]);
    }
    ns.exec(&args)?;
    Ok(())
}

fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    run(Command::new("ip").args([
        "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name, "netns",
        &b.name,
    ]))?;
    Ok(())
}

/// The router's side of the link to lb `k` (0-based).
fn router_v4(k: usize) -> String {
    format!("198.18.{}.1", 41 + k)
}
fn router_v6(k: usize) -> String {
    format!("2001:db8:4{}::1", k + 1)
}
/// Lb `k`'s front address.
fn front_v4(k: usize) -> String {
    format!("198.18.{}.2", 41 + k)
}
fn front_v6(k: usize) -> String {
    format!("2001:db8:4{}::2", k + 1)
}
/// Lb `k`'s (`side` 1) or backend `b`'s (`side` 2) end of their link.
fn link_v4(k: usize, b: usize, side: u8) -> String {
    format!("198.18.{}.{}", 51 + b, 4 * (k + 1) + side as usize)
}
fn link_v6(k: usize, b: usize, side: u8) -> String {
    format!("2001:db8:5{}:{}::{side}", b + 1, k + 1)
}

/// A fresh id for a fleet's (or a lone etcd cluster's) names, after
/// sweeping the leftovers of crashed runs. `cnry-<pid>-f<n>`: apart from the
/// single-host topologies' `cnry-<pid>-<n>` in the same process, and still
/// recognised by `cleanup::leftovers`.
pub fn next_id() -> String {
    cleanup::leftovers();
    format!(
        "cnry-{}-f{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Starts `canary-testsrv` in `ns` serving `port` as `name` (TCP and UDP;
/// `args` as `canary-testsrv` takes them) and waits until it listens.
pub fn spawn_testsrv(ns: &Netns, name: &str, port: u16, args: &[String]) -> Result<Child> {
    let bin = bin_path("canary-testsrv")?;
    let mut child = ns
        .command(bin.to_str().unwrap())
        .args(["--name", name, "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )?;
    if !line.starts_with("listening") {
        crate::daemon::stop_child(&mut child);
        anyhow::bail!("testsrv on {name}: {line:?}");
    }
    Ok(child)
}

impl FleetTopology {
    /// `lbs` hosts (1 to 9) and `backends` backends (1 to 9), every LB
    /// linked to every backend, and a 3-member etcd cluster, healthy when
    /// this returns.
    pub fn new(lbs: usize, backends: usize) -> Result<FleetTopology> {
        anyhow::ensure!((1..=9).contains(&lbs), "1 to 9 load balancers");
        anyhow::ensure!((1..=9).contains(&backends), "1 to 9 backends");
        let id = next_id();
        // etcd first: its members elect a leader while the rest is wired.
        let etcd = EtcdCluster::launch(&id, 3)?;
        let client = Netns::create(&format!("{id}-client"))?;
        let router = Netns::create(&format!("{id}-router"))?;
        let mut fleet = FleetTopology {
            id: id.clone(),
            servers: Vec::new(),
            client,
            router,
            lbs: Vec::new(),
            backends: Vec::new(),
            etcd,
        };
        for b in 1..=backends {
            let ns = Netns::create(&format!("{id}-b{b}"))?;
            fleet.backends.push(Backend {
                name: format!("b{b}"),
                ns,
                v4: format!("198.18.{b}.2").parse()?,
                v6: format!("2001:db8:{b}::2").parse()?,
            });
        }
        for k in 1..=lbs {
            let instance = format!("{id}-lb{k}");
            let ns = Netns::create(&instance)?;
            fleet.lbs.push(LbHost {
                name: format!("lb{k}"),
                instance,
                ns,
                front_if: "front".into(),
                backend_ifs: (1..=backends).map(|b| format!("b{b}")).collect(),
                mgmt_if: "mgmt0".into(),
                mgmt_v4: Ipv4Addr::new(198, 19, 255, k as u8),
                routes: String::new(),
            });
        }
        fleet.wire()?;
        fleet.etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(fleet)
    }

    fn wire(&mut self) -> Result<()> {
        let (c, r) = (&self.client, &self.router);
        sysctls(c, &[COMMON_SYSCTLS])?;
        sysctls(r, &[COMMON_SYSCTLS, ECMP_SYSCTLS, FORWARDING_SYSCTLS])?;
        for lb in &self.lbs {
            sysctls(&lb.ns, &[COMMON_SYSCTLS, FORWARDING_SYSCTLS, LB_SYSCTLS])?;
        }
        for b in &self.backends {
            sysctls(&b.ns, &[COMMON_SYSCTLS, ECMP_SYSCTLS])?;
        }

        // The client, as in the single-host topology.
        veth(c, "eth0", r, "client")?;
        c.ip_batch(
            "addr add 198.18.0.2/24 dev eth0\n\
             addr add 2001:db8::2/64 dev eth0 nodad\n\
             link set eth0 up\n\
             route add default via 198.18.0.1\n\
             route add ::/0 via 2001:db8::1\n\
             route add local 198.18.16.0/20 dev lo\n\
             route add local 2001:db8:1000::/64 dev lo\n",
        )?;
        c.exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_nonlocal_bind=1",
            "net.ipv6.ip_nonlocal_bind=1",
        ])?;
        offloads(c, "eth0", true)?;

        let mut script = String::from(
            "addr add 198.18.0.1/24 dev client\n\
             addr add 2001:db8::1/64 dev client nodad\n\
             link set client up\n\
             route add 198.18.16.0/20 via 198.18.0.2\n\
             route add 2001:db8:1000::/64 via 2001:db8::2\n",
        );
        for (k, lb) in self.lbs.iter().enumerate() {
            let rif = &lb.name;
            veth(r, rif, &lb.ns, &lb.front_if)?;
            script += &format!(
                "addr add {}/24 dev {rif}\naddr add {}/64 dev {rif} nodad\nlink set {rif} up\n",
                router_v4(k),
                router_v6(k)
            );
        }
        let hops = |f: fn(usize) -> String| -> String {
            (0..self.lbs.len())
                .map(|k| format!(" nexthop via {}", f(k)))
                .collect()
        };
        script += &format!("route add 198.18.100.0/24{}\n", hops(front_v4));
        script += &format!("route add 2001:db8:100::/64{}\n", hops(front_v6));
        r.ip_batch(&script)?;
        offloads(r, "client", true)?;
        for lb in &self.lbs {
            offloads(r, &lb.name, true)?;
        }

        for (b, be) in self.backends.iter().enumerate() {
            let mut script = format!(
                "addr add {}/32 dev lo\naddr add {}/128 dev lo\n",
                be.v4, be.v6
            );
            for (k, lb) in self.lbs.iter().enumerate() {
                let (bif, lif) = (&lb.name, &lb.backend_ifs[b]);
                veth(&be.ns, bif, &lb.ns, lif)?;
                script += &format!(
                    "addr add {}/30 dev {bif}\naddr add {}/64 dev {bif} nodad\nlink set {bif} up\n",
                    link_v4(k, b, 2),
                    link_v6(k, b, 2)
                );
            }
            let back = |f: fn(usize, usize, u8) -> String| -> String {
                (0..self.lbs.len())
                    .map(|k| format!(" nexthop via {}", f(k, b, 1)))
                    .collect()
            };
            for net in ["198.18.16.0/20", "198.18.0.0/24"] {
                script += &format!("route add {net}{}\n", back(link_v4));
            }
            for net in ["2001:db8:1000::/64", "2001:db8::/64"] {
                script += &format!("route add {net}{}\n", back(link_v6));
            }
            be.ns.ip_batch(&script)?;
            for lb in &self.lbs {
                offloads(&be.ns, &lb.name, true)?;
            }
        }

        for k in 0..self.lbs.len() {
            let mut script = String::new();
            let lb = &self.lbs[k];
            let front = &lb.front_if;
            script += &format!(
                "addr add {}/24 dev {front}\naddr add {}/64 dev {front} nodad\nlink set {front} up\n",
                front_v4(k),
                front_v6(k)
            );
            let mut routes = String::new();
            for net in ["198.18.16.0/20", "198.18.0.0/24"] {
                routes += &format!("route replace {net} via {}\n", router_v4(k));
            }
            for net in ["2001:db8:1000::/64", "2001:db8::/64"] {
                routes += &format!("route replace {net} via {}\n", router_v6(k));
            }
            for (b, (lif, be)) in lb.backend_ifs.iter().zip(&self.backends).enumerate() {
                script += &format!(
                    "addr add {}/30 dev {lif}\naddr add {}/64 dev {lif} nodad\nlink set {lif} up\n",
                    link_v4(k, b, 1),
                    link_v6(k, b, 1)
                );
                routes += &format!("route replace {}/32 via {}\n", be.v4, link_v4(k, b, 2));
                routes += &format!("route replace {}/128 via {}\n", be.v6, link_v6(k, b, 2));
            }
            lb.ns.ip_batch(&(script + &routes))?;
            let per_if: Vec<String> = std::iter::once(front)
                .chain(&lb.backend_ifs)
                .map(|i| format!("net.ipv4.conf.{i}.rp_filter=0"))
                .collect();
            let mut args = vec!["sysctl", "-qw"];
            args.extend(per_if.iter().map(|s| s.as_str()));
            lb.ns.exec(&args)?;
            for i in std::iter::once(front).chain(&lb.backend_ifs) {
                offloads(&lb.ns, i, false)?;
            }
            self.etcd.attach(&lb.ns, &lb.mgmt_if, lb.mgmt_v4)?;
            self.lbs[k].routes = routes;
        }
        Ok(())
    }

    /// LB `k`'s interfaces, no services yet (the test adds them).
    pub fn lb_config(&self, k: usize) -> LbConfig {
        let lb = &self.lbs[k];
        LbConfig::lab().interfaces(&lb.front_if, &lb.backend_ifs)
    }

    /// The `fleet:` section for LB `k` in `cluster`: this fleet's etcd,
    /// the host's name (`lb1`, ...), canaryd's default durations.
    pub fn fleet_section(&self, k: usize, cluster: &str) -> FleetSection {
        FleetSection::new(self.etcd.endpoints(), cluster, &self.lbs[k].name)
    }

    /// Starts canaryd in LB `k`'s namespace with its own instance, control
    /// socket and state dir.
    pub fn spawn_canaryd(&self, k: usize, yaml: &str) -> Result<Daemon> {
        Daemon::spawn(&self.lbs[k], Some(yaml), &[])
    }

    /// `canaryctl args...` against LB `k`'s canaryd: its stdout, or an
    /// error carrying its stderr.
    pub fn ctl(&self, k: usize, args: &[&str]) -> Result<String> {
        daemon::ctl(&self.lbs[k], args)
    }

    /// `canaryctl args...` against LB `k`'s canaryd, whatever its exit
    /// status (for refusals).
    pub fn ctl_output(&self, k: usize, args: &[&str]) -> Result<std::process::Output> {
        daemon::canaryctl(&self.lbs[k], args, None)
    }

    /// LB `k`'s `canaryctl --json status`.
    pub fn status(&self, k: usize) -> Result<canary_userspace::control::api::Status> {
        let out = self.ctl(k, &["--json", "status"])?;
        serde_json::from_str(&out).with_context(|| format!("status of {}", self.lbs[k].name))
    }

    /// Where backend `name`'s fault switch lives (see `set_fault`).
    pub fn fault_file(&self, name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{}-{name}.fault", self.id))
    }

    /// Switches a fault on a backend's server at run time: "rst", "http500",
    /// "silent", or "" (healthy). Takes effect for its next connection.
    pub fn set_fault(&self, name: &str, fault: &str) -> Result<()> {
        std::fs::write(self.fault_file(name), fault)?;
        Ok(())
    }

    /// Starts `canary-testsrv` (TCP and UDP, answering with the backend's
    /// name) on `port` on every backend.
    pub fn start_servers(&mut self, port: u16) -> Result<()> {
        self.start_servers_with(port, &ServerOptions::default())
    }

    /// Servers that also push a line every `push_ms` on each connection
    /// (read them with `client::PushConn`).
    pub fn start_push_servers(&mut self, port: u16, push_ms: u64) -> Result<()> {
        self.spawn_servers(
            port,
            &ServerOptions::default(),
            &["--push-ms".into(), push_ms.to_string()],
        )
    }

    /// `start_push_servers` that also serve what `opts` asks for (the HTTP
    /// health endpoint health probes need).
    pub fn start_push_servers_with(
        &mut self,
        port: u16,
        opts: &ServerOptions,
        push_ms: u64,
    ) -> Result<()> {
        self.spawn_servers(port, opts, &["--push-ms".into(), push_ms.to_string()])
    }

    pub fn start_servers_with(&mut self, port: u16, opts: &ServerOptions) -> Result<()> {
        self.spawn_servers(port, opts, &[])
    }

    fn spawn_servers(&mut self, port: u16, opts: &ServerOptions, more: &[String]) -> Result<()> {
        for i in 0..self.backends.len() {
            let name = self.backends[i].name.clone();
            let fault_file = self.fault_file(&name);
            std::fs::write(&fault_file, "")?;
            let args = opts.args(&fault_file, more);
            let child = spawn_testsrv(&self.backends[i].ns, &name, port, &args)?;
            self.servers.push(child);
        }
        Ok(())
    }

    /// Takes LB `k` off the network as a crashed host would be: all its
    /// links down from inside, so the router's, the backends' and the
    /// switch's ends lose carrier (their ECMP skips it). canaryd, if one
    /// runs, keeps running.
    pub fn host_down(&self, k: usize) -> Result<()> {
        let lb = &self.lbs[k];
        let script: String = lb.links().map(|l| format!("link set {l} down\n")).collect();
        lb.ns.ip_batch(&script)
    }

    /// Brings LB `k`'s links back up with their addresses and routes.
    pub fn host_up(&self, k: usize) -> Result<()> {
        let lb = &self.lbs[k];
        let script: String = lb.links().map(|l| format!("link set {l} up\n")).collect();
        lb.ns.ip_batch(&(script + &lb.routes))
    }
}

impl Drop for FleetTopology {
    fn drop(&mut self) {
        for child in &mut self.servers {
            crate::daemon::stop_child(child);
        }
        for b in &self.backends {
            let _ = std::fs::remove_file(self.fault_file(&b.name));
        }
        // LBs' pins and files, namespaces, etcd go when the fields drop.
    }
}
