//! The test topology: a client namespace, a load-balancer namespace and N
//! backend namespaces, joined by veth links, with the addresses below. The
//! embedded default config of canaryd targets exactly this layout.
//!
//! ```text
//!  client eth0 198.18.0.2 ── lb-client 198.18.0.1 [LB] lb-bI 198.18.I.1 ── eth0 198.18.I.2 backend bI
//!         2001:db8::2             2001:db8::1          2001:db8:I::1       2001:db8:I::2
//! ```
//! The client may use any source in 198.18.16.0/20 and 2001:db8:1000::/64
//! (local routes plus non-local bind). VIPs are routed to the LB by default.

use crate::cleanup;
use crate::client::{tcp_connect, Conn};
use crate::daemon::Daemon;
use crate::netns::Netns;
use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

/// Distinct client source addresses (i < 4096).
pub fn client_v4(i: u32) -> IpAddr {
    assert!(i < 4096);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i))
}

pub fn client_v6(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x1000,
        0,
        0,
        0,
        (i >> 16) as u16,
        (i & 0xffff) as u16 + 1,
    ))
}

pub struct Backend {
    pub name: String,
    pub ns: Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

pub struct Topology {
    pub id: String,
    // Field order is drop order: processes first, then namespaces.
    servers: Vec<Child>,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Backend>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where a harness binary (canaryd, canaryctl, canary-testsrv) lives:
/// CANARY_BIN_DIR, else next to the running executable (test binaries run
/// from target/<profile>/deps, the bins sit in target/<profile>).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("CANARY_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe()?;
            let mut dir = exe.parent().context("exe dir")?.to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: run `cargo xtask build` first",
        p.display()
    );
    Ok(p)
}

/// Extra behaviour of the backends' servers.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Also serve an HTTP health endpoint on this port.
    pub http_port: Option<u16>,
    /// Reset this fraction of service connections at random.
    pub rst_fraction: f64,
}

impl ServerOptions {
    /// Servers that answer the HTTP health probes of `rollout::shop`.
    pub fn probed() -> ServerOptions {
        ServerOptions {
            http_port: Some(crate::rollout::HEALTH_PORT),
            rst_fraction: 0.0,
        }
    }

    /// `canary-testsrv`'s arguments for these options, its fault switch
    /// file, and `more` of its own.
    pub fn args(&self, fault_file: &std::path::Path, more: &[String]) -> Vec<String> {
        let mut args = vec!["--fault-file".into(), fault_file.display().to_string()];
        if let Some(p) = self.http_port {
            args.extend(["--http-port".into(), p.to_string()]);
        }
        if self.rst_fraction > 0.0 {
            args.extend(["--rst-fraction".into(), self.rst_fraction.to_string()]);
        }
        args.extend(more.iter().cloned());
        args
    }
}

/// A topology with options: `Topology::builder(3).default_offloads().build()`.
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    backends: usize,
    default_offloads: bool,
}

impl TopologyBuilder {
    /// Leaves every veth's offloads at the kernel's defaults (TX checksum
    /// offload on, GRO off: a fresh user's topology) instead of setting what
    /// XDP forwarding needs (`tx off gro on` on the LB's peers, `tx off` on
    /// the LB's side).
    pub fn default_offloads(mut self) -> TopologyBuilder {
        self.default_offloads = true;
        self
    }

    pub fn build(self) -> Result<Topology> {
        Topology::create(&self)
    }
}

impl Topology {
    pub fn new(backends: usize) -> Result<Topology> {
        Topology::builder(backends).build()
    }

    /// `new` with options (see `TopologyBuilder`).
    pub fn builder(backends: usize) -> TopologyBuilder {
        TopologyBuilder {
            backends,
            default_offloads: false,
        }
    }

    fn create(opts: &TopologyBuilder) -> Result<Topology> {
        let backends = opts.backends;
        cleanup::leftovers();
        let id = format!(
            "cnry-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let client = Netns::create(&format!("{id}-client"))?;
        let lb = Netns::create(&format!("{id}-lb"))?;
        let mut topo = Topology {
            id: id.clone(),
            servers: Vec::new(),
            client,
            lb,
            backends: Vec::new(),
        };
        for i in 1..=backends {
            let ns = Netns::create(&format!("{id}-b{i}"))?;
            topo.backends.push(Backend {
                name: format!("b{i}"),
                ns,
                v4: format!("198.18.{i}.2").parse()?,
                v6: format!("2001:db8:{i}::2").parse()?,
            });
        }
        topo.wire(opts)?;
        Ok(topo)
    }

    fn wire(&self, opts: &TopologyBuilder) -> Result<()> {
        // What XDP forwarding through a veth needs (README: "Running on veth
        // and in containers"), unless the test wants the defaults.
        let offloads = |ns: &Netns, args: &[&str]| -> Result<()> {
            if !opts.default_offloads {
                ns.exec(&[&["ethtool", "-K"], args].concat())?;
            }
            Ok(())
        };
        let (c, lb) = (&self.client, &self.lb);
        for ns in std::iter::once(c)
            .chain(std::iter::once(lb))
            .chain(self.backends.iter().map(|b| &b.ns))
        {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0")?;
            ns.sysctl("net.ipv6.conf.all.accept_ra", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_ra", "0")?;
            // No duplicate address detection, on link-local addresses too:
            // a tentative fe80:: address stalls neighbour discovery for a
            // second or two after link-up. Set before the links exist.
            for scope in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
                ns.sysctl(&format!("net.ipv6.conf.{scope}.dad_transmits"), "0")?;
            }
        }
        veth(c, "eth0", lb, "lb-client")?;
        c.ip(&["addr", "add", "198.18.0.2/24", "dev", "eth0"])?;
        c.ip(&["addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"])?;
        c.ip(&["link", "set", "eth0", "up"])?;
        c.ip(&["route", "add", "default", "via", "198.18.0.1"])?;
        c.ip(&["-6", "route", "add", "default", "via", "2001:db8::1"])?;
        c.ip(&["route", "add", "local", "198.18.16.0/20", "dev", "lo"])?;
        c.ip(&[
            "-6",
            "route",
            "add",
            "local",
            "2001:db8:1000::/64",
            "dev",
            "lo",
        ])?;
        c.sysctl("net.ipv4.ip_nonlocal_bind", "1")?;
        c.sysctl("net.ipv6.ip_nonlocal_bind", "1")?;
        // Full checksums like frames off a wire (the XDP program updates
        // them incrementally), and NAPI on so XDP-redirected frames arrive.
        offloads(c, &["eth0", "tx", "off", "gro", "on"])?;

        lb.ip(&["addr", "add", "198.18.0.1/24", "dev", "lb-client"])?;
        lb.ip(&["addr", "add", "2001:db8::1/64", "dev", "lb-client", "nodad"])?;
        lb.ip(&["link", "set", "lb-client", "up"])?;
        offloads(lb, &["lb-client", "tx", "off"])?;
        lb.sysctl("net.ipv4.ip_forward", "1")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        lb.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        lb.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        lb.ip(&["route", "add", "198.18.16.0/20", "via", "198.18.0.2"])?;
        lb.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:1000::/64",
            "via",
            "2001:db8::2",
        ])?;

        for (i, b) in self.backends.iter().enumerate() {
            let i = i + 1;
            let lbif = format!("lb-b{i}");
            veth(&b.ns, "eth0", lb, &lbif)?;
            lb.ip(&["addr", "add", &format!("198.18.{i}.1/24"), "dev", &lbif])?;
            lb.ip(&[
                "addr",
                "add",
                &format!("2001:db8:{i}::1/64"),
                "dev",
                &lbif,
                "nodad",
            ])?;
            lb.ip(&["link", "set", &lbif, "up"])?;
            offloads(lb, &[&lbif, "tx", "off"])?;
            lb.sysctl(&format!("net.ipv4.conf.{lbif}.rp_filter"), "0")?;
            b.ns.ip(&["addr", "add", &format!("198.18.{i}.2/24"), "dev", "eth0"])?;
            b.ns.ip(&[
                "addr",
                "add",
                &format!("2001:db8:{i}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            b.ns.ip(&["link", "set", "eth0", "up"])?;
            b.ns.ip(&["route", "add", "default", "via", &format!("198.18.{i}.1")])?;
            b.ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:db8:{i}::1"),
            ])?;
            offloads(&b.ns, &["eth0", "tx", "off", "gro", "on"])?;
        }
        Ok(())
    }

    pub fn instance(&self) -> &str {
        &self.id
    }

    pub fn pin_dir(&self) -> PathBuf {
        canary_userspace::dataplane::maps::pin_dir(&self.id)
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/canary/{}.sock", self.id))
    }

    pub fn state_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-state", self.id))
    }

    /// Starts `canary-testsrv` (TCP and UDP, answering with the backend's
    /// name) on `port` in every backend namespace.
    pub fn start_servers(&mut self, port: u16) -> Result<()> {
        self.start_servers_with(port, &ServerOptions::default())
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

    /// Starts servers that also push a line unprompted every `push_ms` on
    /// each service connection (`canary-testsrv --push-ms`; read them with
    /// `client::PushConn`).
    pub fn start_push_servers(&mut self, port: u16, push_ms: u64) -> Result<()> {
        self.spawn_servers(
            port,
            &ServerOptions::default(),
            &["--push-ms".into(), push_ms.to_string()],
        )
    }

    pub fn start_servers_with(&mut self, port: u16, opts: &ServerOptions) -> Result<()> {
        self.spawn_servers(port, opts, &[])
    }

    fn spawn_servers(&mut self, port: u16, opts: &ServerOptions, more: &[String]) -> Result<()> {
        for b in &self.backends {
            let fault_file = self.fault_file(&b.name);
            std::fs::write(&fault_file, "")?;
            let args = opts.args(&fault_file, more);
            let child = crate::fleet::spawn_testsrv(&b.ns, &b.name, port, &args)?;
            self.servers.push(child);
        }
        Ok(())
    }

    /// Starts canaryd in the LB namespace (instance = this topology's id,
    /// its own control socket and state dir). Without a config it runs its
    /// built-in one.
    pub fn spawn_canaryd(&self, config_yaml: Option<&str>) -> Result<Daemon> {
        Daemon::spawn(self, config_yaml, &[])
    }

    /// Opens `n` TCP connections to `dst` from the client namespace, from
    /// `client_v4(first)`, `client_v4(first + 1)`, ... and keeps them open;
    /// the first that fails is the error.
    pub fn open_v4(
        &self,
        first: u32,
        n: u32,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<Vec<Conn>> {
        self.client.run(|| {
            (first..first + n)
                .map(|i| tcp_connect(client_v4(i), dst, timeout))
                .collect()
        })
    }

    /// Routes for a spoofed-SYN flood from `flood::FLOOD_NET`: the LB sends
    /// what comes back for those sources (the backends' SYN-ACKs, reverse-
    /// NATed) to the client namespace, which drops it (a blackhole route; it
    /// does not forward either). Nothing leaves the lab's namespaces.
    pub fn route_flood_sources(&self) -> Result<()> {
        let net = format!(
            "{}/{}",
            crate::flood::FLOOD_NET,
            crate::flood::FLOOD_PREFIX_LEN
        );
        self.lb.ip(&["route", "add", &net, "via", "198.18.0.2"])?;
        self.client.ip(&["route", "add", "blackhole", &net])?;
        // The client's eth0 is the lab's "internet" and the flood's only
        // way out. The generator writes faster than the link to the LB
        // drains (a 256-packet veth ring, with back pressure to a qdisc when
        // there is one): in one FIFO the legitimate clients' packets would be
        // dropped there, before the LB ever sees them, and the handshake ACK
        // of a connection a backend answered with a SYN cookie is never
        // retransmitted. So the flood (skb priority 1, "filler", see
        // `flood::run`) queues in the lowest band of a pfifo_fast qdisc
        // (band 2 of its default priomap) and the clients' packets
        // (priority 0) in the band above (band 1): it is the LB's
        // behaviour under the flood that is measured, not this queue's.
        self.client
            .exec(&["tc", "qdisc", "add", "dev", "eth0", "root", "pfifo_fast"])?;
        Ok(())
    }

    /// A flood from the client's `eth0` to `dst` (IPv4), frames addressed to
    /// the LB's `lb-client`; run it with `flood::SynFlood::start(&topo.client, spec)`.
    pub fn flood_spec(
        &self,
        dst: std::net::SocketAddrV4,
        sources: u32,
        max_packets: u64,
        max_time: Duration,
        pps: u64,
    ) -> Result<crate::flood::FloodSpec> {
        Ok(crate::flood::FloodSpec {
            ifname: "eth0".into(),
            src_mac: mac(&self.client, "eth0")?,
            dst_mac: mac(&self.lb, "lb-client")?,
            dst,
            sources,
            max_packets,
            max_time,
            pps,
            source: None,
            shape: Default::default(),
        })
    }

    /// An interface's packet counters in a namespace:
    /// (rx_packets, rx_dropped, tx_packets, tx_dropped).
    pub fn link_stats(ns: &Netns, ifname: &str) -> Result<(u64, u64, u64, u64)> {
        let out = ns.ip(&["-s", "-j", "link", "show", ifname])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let s = &v[0]["stats64"];
        let n = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
        Ok((
            n("rx", "packets"),
            n("rx", "dropped"),
            n("tx", "packets"),
            n("tx", "dropped"),
        ))
    }

    /// `canaryctl args...` as root: its stdout, or an error carrying its
    /// stderr when it fails.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = self.canaryctl(args, None)?;
        anyhow::ensure!(
            out.status.success(),
            "canaryctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// One service as `canaryctl --json status SERVICE` reports it.
    pub fn service_status(
        &self,
        service: &str,
    ) -> Result<canary_userspace::control::api::ServiceStatus> {
        let out = self.ctl(&["--json", "status", service])?;
        let status: canary_userspace::control::api::Status = serde_json::from_str(&out)?;
        status
            .services
            .into_iter()
            .next()
            .with_context(|| format!("no service {service} in the status"))
    }

    /// Runs `canaryctl --socket <ours> args...` (as root, or as the numeric
    /// `as_uid` (and gid) through setpriv) and returns its output whatever
    /// the exit status.
    pub fn canaryctl(&self, args: &[&str], as_uid: Option<u32>) -> Result<std::process::Output> {
        crate::daemon::canaryctl(self, args, as_uid)
    }
}

/// The MAC address of `ifname` in `ns`.
pub fn mac(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {ifname}"))?;
    let mut m = [0u8; 6];
    for (i, part) in text.split(':').enumerate() {
        anyhow::ensure!(i < 6, "MAC {text}");
        m[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(m)
}

fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    crate::netns::run(Command::new("ip").args([
        "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name, "netns",
        &b.name,
    ]))?;
    Ok(())
}

impl Drop for Topology {
    fn drop(&mut self) {
        for child in &mut self.servers {
            crate::daemon::stop_child(child);
        }
        // Pins first: removing the link pins detaches the program.
        let _ = canary_userspace::dataplane::remove_pins(&self.pin_dir());
        let _ = std::fs::remove_dir_all(self.state_dir());
        let _ = std::fs::remove_file(self.socket());
        for b in &self.backends {
            let _ = std::fs::remove_file(self.fault_file(&b.name));
        }
        // Namespaces go when the fields drop.
    }
}
