//! canaryd's link to etcd: one session at a time (lease, full read, watch,
//! reports, campaign), and one writer that publishes the daemon's changes in
//! order, each a compare-and-swap on its key's revision.
//!
//! Every etcd call has a deadline (`op_timeout`), and the client asks for a
//! member with a raft leader (`require_leader`): a member without quorum
//! answers with an error at once instead of hanging, and the host knows it
//! is cut off.

use super::{Key, Keys};
use crate::config::FleetConfig;
use crate::daemon::{lock, Daemon};
use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use log::{info, warn};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long etcd may refuse before a write fails, or before the host calls
/// itself cut off.
const RETRY_FOR: Duration = Duration::from_secs(2);

/// One change for etcd.
#[derive(Debug, Clone)]
pub enum Publish {
    /// A service's desired state, if its key is still at `base_rev` (0: the
    /// key does not exist yet).
    Doc {
        service: String,
        doc: Box<super::ServiceDoc>,
        base_rev: i64,
        /// The leader's election key: the write lands only while it exists
        /// (a deposed leader's late step does not).
        fence: Option<String>,
    },
    /// The fleet's health verdicts of a service (the leader's).
    Health {
        service: String,
        doc: super::HealthDoc,
    },
}

impl Publish {
    pub fn service(&self) -> &str {
        match self {
            Publish::Doc { service, .. } | Publish::Health { service, .. } => service,
        }
    }
}

/// Why a publish did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// Someone else changed the key first: the caller retries on the newer
    /// state.
    Conflict(String),
    /// etcd is not reachable (or has no quorum).
    CutOff(String),
}

struct Job {
    items: Vec<Publish>,
    reply: Option<oneshot::Sender<Result<(), PublishError>>>,
}

/// A key's value, revisions and whether it was deleted, as the daemon takes
/// it in.
pub struct Change<'a> {
    pub raw_key: &'a str,
    pub key: Key<'a>,
    pub value: Option<&'a [u8]>,
    pub mod_rev: i64,
    pub create_rev: i64,
}

/// The etcd side of one canaryd (cheap to clone).
///
/// One client per endpoint, one in use at a time, the next on failure (as
/// etcd's own client pins an endpoint): a gRPC channel balanced over all of
/// them keeps sending some requests to a dead member.
#[derive(Clone)]
pub struct Link {
    clients: Arc<Vec<Client>>,
    current: Arc<AtomicUsize>,
    pub keys: Keys,
    pub host: String,
    ttl: Duration,
    report_every: Duration,
    op_timeout: Duration,
    writer: mpsc::UnboundedSender<Job>,
    lease: Arc<Mutex<Option<i64>>>,
    /// Counts the writes that failed for want of etcd: the session running
    /// when one fails starts afresh. A count a session subscribes to at its
    /// start, not a stored wake-up: a failure from before a session began
    /// (between sessions) must not end the next one after its fresh read.
    resync: Arc<tokio::sync::watch::Sender<u64>>,
}

async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer within {limit:?}")),
    }
}

impl Link {
    /// The client (no connection is made yet: etcd may be down at start)
    /// and the writer task.
    pub async fn new(cfg: &FleetConfig, daemon: Arc<Mutex<Daemon>>) -> Result<Link> {
        // HTTP/2 pings no more often than etcd allows (its default
        // --grpc-keepalive-min-time is 5 s; more often and it closes the
        // connection): a dead member is found sooner by the reports' and
        // the lease's deadlines, a member without quorum by require_leader.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3))
            .with_require_leader(true);
        let mut clients = Vec::new();
        for e in &cfg.etcd {
            // No connection is made here: etcd may be down at start.
            let c = Client::connect([e], Some(options.clone()))
                .await
                .with_context(|| format!("fleet.etcd {e:?}"))?;
            clients.push(c);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Link {
            clients: Arc::new(clients),
            current: Arc::new(AtomicUsize::new(0)),
            keys: Keys::new(&cfg.cluster),
            host: cfg.host_name(),
            ttl: cfg.lease_ttl,
            report_every: cfg.report_interval,
            op_timeout: Duration::from_secs(1).min(cfg.lease_ttl / 2),
            writer: tx,
            lease: Arc::new(Mutex::new(None)),
            resync: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        tokio::spawn(link.clone().write_loop(rx, daemon));
        Ok(link)
    }

    /// The endpoint in use, and its index.
    fn client(&self) -> (usize, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// The endpoint `i` failed: the next one from now on (unless another
    /// failure moved on already).
    fn next_endpoint(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Publishes and waits for the outcome (operator changes: the caller
    /// answers only once etcd has it).
    pub async fn publish(&self, items: Vec<Publish>) -> Result<(), PublishError> {
        if items.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let job = Job {
            items,
            reply: Some(tx),
        };
        if self.writer.send(job).is_err() {
            return Err(PublishError::CutOff("the etcd writer has stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(PublishError::CutOff("the etcd writer has stopped".into())))
    }

    /// Publishes in the background (the engine's steps, health verdicts).
    pub fn publish_later(&self, items: Vec<Publish>) {
        if !items.is_empty() {
            let _ = self.writer.send(Job { items, reply: None });
        }
    }

    async fn write_loop(self, mut rx: mpsc::UnboundedReceiver<Job>, daemon: Arc<Mutex<Daemon>>) {
        // Per service: the revision a write was based on, and the one it
        // made. A change computed before that write landed carries the old
        // base but already includes it: it goes on top.
        let mut chain: std::collections::HashMap<String, (i64, i64)> = Default::default();
        while let Some(job) = rx.recv().await {
            let mut outcome = Ok(());
            let mut items = job.items.into_iter();
            while let Some(mut item) = items.next() {
                let service = item.service().to_string();
                let mut based_on = None;
                if let Publish::Doc { base_rev, .. } = &mut item {
                    based_on = Some(*base_rev);
                    if let Some((old, new)) = chain.get(&service) {
                        if *old == *base_rev {
                            *base_rev = *new;
                        }
                    }
                }
                match self.write(&item).await {
                    Ok(rev) => {
                        if let Some(b) = based_on {
                            chain.insert(service.clone(), (b, rev));
                        }
                        lock(&daemon).fleet_published(&item, rev)
                    }
                    Err(e) => {
                        if let PublishError::CutOff(_) = &e {
                            // The session finds out whether etcd is gone
                            // (and says so) or comes back with a fresh read.
                            self.resync.send_modify(|n| *n += 1);
                        }
                        let mut d = lock(&daemon);
                        d.fleet_publish_failed(&item, &e);
                        for rest in items.by_ref() {
                            d.fleet_publish_failed(&rest, &e);
                        }
                        outcome = Err(e);
                        break;
                    }
                }
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// One publish, tried on each endpoint in turn, for up to `RETRY_FOR`
    /// (a raft election after a member died takes about a second, and no
    /// member takes writes meanwhile); its new revision.
    async fn write(&self, item: &Publish) -> Result<i64, PublishError> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let (i, c) = self.client();
            match self.write_via(c, item).await {
                Err(PublishError::CutOff(e)) => {
                    self.next_endpoint(i);
                    if Instant::now() >= deadline {
                        return Err(PublishError::CutOff(e));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done => return done,
            }
        }
    }

    async fn write_via(&self, mut c: Client, item: &Publish) -> Result<i64, PublishError> {
        let cut = |e: anyhow::Error| PublishError::CutOff(format!("{e:#}"));
        match item {
            Publish::Doc {
                service,
                doc,
                base_rev,
                fence,
            } => {
                let key = self.keys.service(service);
                let value = serde_json::to_vec(doc).map_err(|e| cut(e.into()))?;
                let mut when = vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *base_rev,
                )];
                if let Some(f) = fence {
                    when.push(Compare::create_revision(f.clone(), CompareOp::Greater, 0));
                }
                let txn = Txn::new()
                    .when(when)
                    .and_then([TxnOp::put(key, value, None)]);
                let resp = within(self.op_timeout, "etcd txn", c.txn(txn))
                    .await
                    .map_err(cut)?;
                if !resp.succeeded() {
                    return Err(PublishError::Conflict(format!(
                        "the fleet's state of {service} changed meanwhile"
                    )));
                }
                Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
            }
            Publish::Health { service, doc } => {
                let key = self.keys.health(service);
                let value = serde_json::to_vec(doc).map_err(|e| cut(e.into()))?;
                let resp = within(self.op_timeout, "etcd put", c.put(key, value, None))
                    .await
                    .map_err(cut)?;
                Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
            }
        }
    }

    /// Keeps a session with etcd for as long as canaryd runs. Once no
    /// session could be made for `RETRY_FOR`, the host is cut off (the data
    /// plane keeps its state) and a new session is tried every half second.
    pub async fn run(self, daemon: Arc<Mutex<Daemon>>) {
        // A session that broke (a member died, say) is retried on the next
        // endpoint at once; the host calls itself cut off only when no
        // session could be made for `RETRY_FOR` (a raft election, which
        // refuses everything meanwhile, takes about a second).
        let mut failing_since: Option<Instant> = None;
        loop {
            let (i, client) = self.client();
            let mut loaded = false;
            let err = self
                .session(client, &daemon, &mut loaded)
                .await
                .unwrap_err();
            self.next_endpoint(i);
            lock(&daemon).fleet_lost_leadership();
            let since = match (loaded, failing_since) {
                (true, _) | (false, None) => *failing_since.insert(Instant::now()),
                (false, Some(t)) => t,
            };
            if since.elapsed() < RETRY_FOR {
                warn!("fleet: etcd session ended ({err:#}); trying the next endpoint");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            lock(&daemon).fleet_cut_off(&format!("{err:#}"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A lease: the one this canaryd holds if it is still alive (its
    /// reports and candidacy survive a short break), else a new one.
    async fn lease(&self, mut c: Client) -> Result<i64> {
        let held = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = held {
            if let Ok(r) = within(
                self.op_timeout,
                "etcd lease",
                c.lease_time_to_live(id, None),
            )
            .await
            {
                if r.ttl() > 0 {
                    return Ok(id);
                }
            }
        }
        let r = within(
            self.op_timeout,
            "etcd lease grant",
            c.lease_grant(self.ttl.as_secs() as i64, None),
        )
        .await?;
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.id());
        Ok(r.id())
    }

    /// Ends this canaryd's lease (on a clean stop): its report and its
    /// candidacy go at once, so another host leads without waiting for the
    /// lease to expire.
    pub async fn resign(&self) {
        let held = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(id) = held {
            let (_, mut c) = self.client();
            match within(self.op_timeout, "etcd lease revoke", c.lease_revoke(id)).await {
                Ok(_) => info!("fleet: lease revoked (leadership and report released)"),
                Err(e) => warn!("fleet: {e:#}"),
            }
        }
    }

    async fn session(
        &self,
        mut c: Client,
        daemon: &Arc<Mutex<Daemon>>,
        loaded: &mut bool,
    ) -> Result<()> {
        let mut resync = self.resync.subscribe();
        let lease = self.lease(c.clone()).await?;
        let (mut keeper, mut renewals) = within(
            self.op_timeout,
            "etcd keep-alive",
            c.lease_keep_alive(lease),
        )
        .await?;
        let prefix = self.keys.prefix().to_string();
        let all = within(
            self.op_timeout,
            "etcd get",
            c.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = all.header().map(|h| h.revision()).unwrap_or(0);
        // This host is a member from now on (no lease: when its reports
        // stop, the others call it silent rather than forget it).
        let member = serde_json::to_vec(&super::MemberDoc {
            host: self.host.clone(),
            joined_ms: super::unix_ms(),
        })?;
        within(
            self.op_timeout,
            "etcd put (member)",
            c.put(self.keys.member(&self.host), member, None),
        )
        .await?;
        {
            let changes: Vec<Change> = all
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let raw_key = kv.key_str().ok()?;
                    Some(Change {
                        raw_key,
                        key: self.keys.parse(raw_key)?,
                        value: Some(kv.value()),
                        mod_rev: kv.mod_revision(),
                        create_rev: kv.create_revision(),
                    })
                })
                .collect();
            let mut d = lock(daemon);
            d.fleet_loaded(&changes, lease);
            self.publish_later(d.fleet_outbox());
            *loaded = true;
        }
        let mut watch = within(
            self.op_timeout,
            "etcd watch",
            c.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            ),
        )
        .await?;
        let mut campaigner = c.clone();
        let (election, host) = (self.keys.election(), self.host.clone());
        let mut campaign =
            tokio::spawn(async move { campaigner.campaign(election, host, lease).await });
        let _abort_campaign = AbortOnDrop(campaign.abort_handle());
        let mut report = tokio::time::interval(self.report_every);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(self.ttl / 3);
        let mut renewed = Instant::now();
        let mut campaigning = true;
        let mut sending: Option<std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>> = None;
        loop {
            // No renewal for half the lease: step down before the lease can
            // expire and another host lead.
            let stale = tokio::time::Instant::from_std(renewed + self.ttl / 2);
            tokio::select! {
                msg = watch.message() => {
                    let msg = msg.map_err(|e| anyhow!("etcd watch: {e}"))?
                        .ok_or_else(|| anyhow!("etcd watch ended"))?;
                    if msg.canceled() {
                        bail!("etcd watch cancelled: {}", msg.cancel_reason());
                    }
                    let mut d = lock(daemon);
                    for ev in msg.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Ok(raw_key) = kv.key_str() else { continue };
                        let Some(key) = self.keys.parse(raw_key) else { continue };
                        let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                        d.fleet_changed(&Change {
                            raw_key,
                            key,
                            value,
                            mod_rev: kv.mod_revision(),
                            create_rev: kv.create_revision(),
                        });
                    }
                    self.publish_later(d.fleet_outbox());
                }
                // The report goes out beside the loop: the watch is read
                // while it is in flight.
                _ = report.tick(), if sending.is_none() => {
                    let value = {
                        let d = lock(daemon);
                        serde_json::to_vec(&d.fleet_report())?
                    };
                    let (mut c, key, limit) = (c.clone(), self.keys.host(&self.host), self.op_timeout);
                    sending = Some(Box::pin(async move {
                        within(
                            limit,
                            "etcd put (report)",
                            c.put(key, value, Some(PutOptions::new().with_lease(lease))),
                        )
                        .await
                        .map(|_| ())
                    }));
                }
                sent = async { sending.as_mut().expect("guarded").await }, if sending.is_some() => {
                    sending = None;
                    sent?;
                    let mut d = lock(daemon);
                    self.publish_later(d.fleet_leader_duties());
                }
                _ = renew.tick() => {
                    within(self.op_timeout, "etcd keep-alive", keeper.keep_alive()).await?;
                }
                r = renewals.message() => {
                    match r.map_err(|e| anyhow!("etcd keep-alive: {e}"))? {
                        Some(r) if r.ttl() > 0 => renewed = Instant::now(),
                        _ => {
                            *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            bail!("this host's etcd lease expired");
                        }
                    }
                }
                r = &mut campaign, if campaigning => {
                    campaigning = false;
                    match r {
                        Ok(Ok(_)) => lock(daemon).fleet_elected(),
                        Ok(Err(e)) => bail!("etcd campaign: {e}"),
                        Err(e) => bail!("etcd campaign: {e}"),
                    }
                }
                _ = resync.changed() => {
                    bail!("an etcd write failed; reading the fleet's state afresh");
                }
                _ = tokio::time::sleep_until(stale) => {
                    bail!("no etcd lease renewal for {:?}", self.ttl / 2);
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
