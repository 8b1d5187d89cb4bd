//! A real etcd cluster (Debian's `/usr/bin/etcd`, 3.4) for fleet tests:
//! members in their own namespaces on a bridged management network, the
//! same as a fleet's hosts would see it.
//!
//! ```text
//!  switch ns: br0 198.19.255.254/24 ── etcdI ns: eth0 198.19.255.(10+I)/24  (I = 1..)
//!                                   └─ any host `attach`ed: 198.19.255.x/24
//! ```
//! Members listen on 2379 (clients) and 2380 (peers) of their address,
//! with test timeouts (50 ms heartbeat, 500 ms election). Member indices
//! are 0-based (member 0 is `e1` in `etcd1`). Everything is killed by pid
//! and removed on drop.

use crate::netns::{run, Netns};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// The switch's own address: etcdctl runs from there, off every host a
/// test may take down.
pub const SWITCH_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

/// Member `i`'s (0-based) address.
pub fn member_v4(i: usize) -> Ipv4Addr {
    assert!(i < 9);
    Ipv4Addr::new(198, 19, 255, 11 + i as u8)
}

struct Member {
    name: String,
    ns: Netns,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    token: String,
    // Field order is drop order (after `Drop::drop` killed the members):
    // members' namespaces, then the switch.
    members: Vec<Member>,
    pub switch: Netns,
}

/// Where the members keep their data: tmpfs if there is one, so that a
/// busy disk's fsync cannot stall the raft log past the 500 ms election
/// timeout (and cause elections mid-test).
pub(crate) fn data_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl EtcdCluster {
    /// `launch`, then waits up to 30 s until every member is healthy.
    pub fn start(id: &str, members: usize) -> Result<EtcdCluster> {
        let c = EtcdCluster::launch(id, members)?;
        c.wait_healthy(Duration::from_secs(30))?;
        Ok(c)
    }

    /// Creates the switch (`<id>-sw`) and the members' namespaces
    /// (`<id>-etcd1..`) and starts the members without waiting for them
    /// (a fleet wires its hosts meanwhile; see `wait_healthy`).
    pub fn launch(id: &str, members: usize) -> Result<EtcdCluster> {
        anyhow::ensure!((1..=9).contains(&members), "1 to 9 etcd members");
        let switch = Netns::create(&format!("{id}-sw"))?;
        switch.ip_batch(&format!(
            "link add br0 type bridge\nlink set br0 up\naddr add {SWITCH_V4}/24 dev br0\n"
        ))?;
        let mut c = EtcdCluster {
            token: id.to_string(),
            members: Vec::new(),
            switch,
        };
        for i in 0..members {
            let ns = Netns::create(&format!("{id}-etcd{}", i + 1))?;
            let name = format!("e{}", i + 1);
            let data_dir = data_root().join(format!("{id}-{name}.etcd"));
            let _ = std::fs::remove_dir_all(&data_dir);
            let log_path = std::env::temp_dir().join(format!("{id}-{name}.etcd.log"));
            c.members.push(Member {
                name,
                ns,
                data_dir,
                log_path,
                child: None,
            });
            let m = &c.members[i];
            c.attach(&m.ns, "eth0", member_v4(i))?;
        }
        for i in 0..members {
            c.spawn(i, "new")?;
        }
        Ok(c)
    }

    /// Plugs `ns` into the management bridge: `ifname` there with `addr`/24,
    /// a port named after the namespace's last part (`lb1`, `etcd2`) here.
    pub fn attach(&self, ns: &Netns, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        let port = ns.name.rsplit('-').next().context("namespace name")?;
        run(Command::new("ip").args([
            "link",
            "add",
            ifname,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.switch.name,
        ]))?;
        self.switch
            .ip_batch(&format!("link set {port} master br0\nlink set {port} up\n"))?;
        ns.ip_batch(&format!(
            "addr add {addr}/24 dev {ifname}\nlink set {ifname} up\n"
        ))?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URLs, `http://198.19.255.11:2379`, ... (for `fleet.etcd`).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(Self::endpoint).collect()
    }

    fn endpoint(i: usize) -> String {
        format!("http://{}:2379", member_v4(i))
    }

    fn peer_url(i: usize) -> String {
        format!("http://{}:2380", member_v4(i))
    }

    /// Member `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// What member `i` wrote so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log_path).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<()> {
        let initial: Vec<String> = (0..self.members.len())
            .map(|j| format!("{}={}", self.members[j].name, Self::peer_url(j)))
            .collect();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)?;
        let (client, peer) = (Self::endpoint(i), Self::peer_url(i));
        let mut cmd = m.ns.command(ETCD_BIN);
        // The caller's ETCD_* settings would override the flags.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting etcd")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// SIGKILL member `i` by its pid (a crash, not a clean stop) and reap it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let mut child = self.members[i]
            .child
            .take()
            .with_context(|| format!("etcd member {i} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts member `i` again on its data dir (`--initial-cluster-state
    /// existing`) and waits up to 20 s until it is healthy.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        anyhow::ensure!(
            self.members[i].child.is_none(),
            "etcd member {i} still runs"
        );
        self.spawn(i, "existing")?;
        self.wait_endpoints_healthy(&[Self::endpoint(i)], Duration::from_secs(20))
            .with_context(|| {
                format!(
                    "etcd member {i} after restart; its log (end):\n{}",
                    tail(&self.log(i), 30)
                )
            })
    }

    /// The client URLs of the members that run (not `kill`ed).
    pub fn running_endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(Self::endpoint)
            .collect()
    }

    /// Waits until every running member answers a quorum read (so there is
    /// a leader), at most `timeout`. After a `kill` of the leader, a write
    /// made before this returns may hang until its deadline: etcd drops
    /// proposals in flight across a leader change and etcdctl does not
    /// retry a put.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        self.wait_endpoints_healthy(&self.running_endpoints(), timeout)
            .with_context(|| {
                let logs: Vec<String> = (0..self.members.len())
                    .map(|i| {
                        format!(
                            "--- {} ---\n{}",
                            self.members[i].name,
                            tail(&self.log(i), 30)
                        )
                    })
                    .collect();
                format!("etcd did not become healthy; logs:\n{}", logs.join("\n"))
            })
    }

    /// The index of the member that leads now (asked of the running ones).
    pub fn leader(&self) -> Result<usize> {
        let out = self.etcdctl(&[
            "--endpoints",
            &self.running_endpoints().join(","),
            "endpoint",
            "status",
            "-w",
            "json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("endpoint status")?;
        let statuses = v.as_array().context("endpoint status: not a list")?;
        let leader = statuses
            .iter()
            .find(|e| {
                let s = &e["Status"];
                s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
            })
            .with_context(|| format!("no member leads: {out}"))?;
        let ep = leader["Endpoint"].as_str().unwrap_or_default();
        (0..self.members.len())
            .find(|&i| Self::endpoint(i) == ep)
            .with_context(|| format!("leader {ep} is not a member"))
    }

    fn wait_endpoints_healthy(&self, endpoints: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let eps = endpoints.join(",");
        let mut last = String::new();
        // At most one try per 100 ms, each bounded by etcdctl's timeouts.
        for _ in 0..(timeout.as_millis() / 100).max(1) {
            let out = self.etcdctl_output(&[
                "--endpoints",
                &eps,
                "--dial-timeout=500ms",
                "--command-timeout=1s",
                "endpoint",
                "health",
            ])?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("not healthy after {timeout:?}: {last}")
    }

    /// `ETCDCTL_API=3 etcdctl --endpoints <all> args...` from the switch
    /// (without ours when `args` has an `--endpoints`: a second one would
    /// add to the first): its stdout, or an error carrying its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let eps = self.endpoints().join(",");
        let mut all = Vec::new();
        if !args.iter().any(|a| a.starts_with("--endpoints")) {
            all.extend(["--endpoints", eps.as_str()]);
        }
        all.extend_from_slice(args);
        let out = self.etcdctl_output(&all)?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `ETCDCTL_API=3 etcdctl args...` from the switch (no endpoints
    /// added), whatever its exit status.
    pub fn etcdctl_output(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.switch.command(ETCDCTL_BIN);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl")
    }
}

/// The last `n` lines of `text` (etcd logs a lot).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let panicking = std::thread::panicking();
        for (i, m) in self.members.iter().enumerate() {
            if panicking {
                eprintln!(
                    "--- etcd {} log (end) ---\n{}",
                    m.name,
                    tail(&self.log(i), 30)
                );
            }
            let _ = std::fs::remove_dir_all(&m.data_dir);
            let _ = std::fs::remove_file(&m.log_path);
        }
        // Namespaces go when the fields drop.
    }
}
