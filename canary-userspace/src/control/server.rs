//! The control API server: HTTP/1.1 + JSON (axum) on a Unix socket that only
//! root can open (mode 0600, and each request's peer uid is checked again,
//! before anything else of the request is read: `root_only`).
//! Routes and bodies: see `api.rs`.

use crate::control::api::{ApiError, BackendChange, Change, SetWeight};
use crate::daemon::{weight_from_percent, Daemon, OpError, OpResult, Refusal};
use crate::fleet::link::{Link, PublishError};
use anyhow::{Context, Result};
use axum::extract::{connect_info, ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use canary_common::weight::WeightBp;
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// The shared daemon, locked per request (no request awaits while holding it).
pub type Shared = Arc<Mutex<Daemon>>;

#[derive(Clone)]
struct Ctx {
    daemon: Shared,
    /// Asks the main loop to tear down and exit.
    teardown: mpsc::Sender<()>,
    /// The fleet's etcd link (`fleet:` in the config): changes are
    /// published there before the answer.
    fleet: Option<Link>,
}

/// The peer's credentials, from SO_PEERCRED.
#[derive(Clone, Debug)]
struct Peer {
    uid: Option<u32>,
}

impl connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Peer {
    fn who(&self) -> String {
        match self.uid {
            Some(uid) => format!("canaryctl (uid {uid})"),
            None => "canaryctl (uid unknown)".to_string(),
        }
    }
    fn check_root(&self) -> Result<(), Fail> {
        if self.uid == Some(0) {
            Ok(())
        } else {
            Err(Fail(
                StatusCode::FORBIDDEN,
                "the control API is root-only".into(),
            ))
        }
    }
}

/// A refused request: its status and the one-line reason.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<OpError> for Fail {
    fn from(e: OpError) -> Fail {
        let code = match e.kind {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Fail(code, e.message)
    }
}

/// Binds the socket: parent directory 0755 created if missing, a stale
/// socket file replaced, the new one chmod 0600 before anyone can connect
/// (it is created under a 0077 umask).
pub fn bind(path: &FsPath) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // A live canaryd would answer; refuse to steal its socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by a running canaryd", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener =
        bound.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    daemon: Shared,
    teardown_tx: mpsc::Sender<()>,
    fleet: Option<Link>,
) -> Result<()> {
    let ctx = Ctx {
        daemon,
        teardown: teardown_tx,
        fleet,
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services/{name}/weight", post(set_weight))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/services/{name}/promote", post(promote))
        .route("/v1/services/{name}/backends/add", post(backend_add))
        .route("/v1/services/{name}/backends/remove", post(backend_remove))
        .route("/v1/services/{name}/explain", get(explain))
        .route("/v1/services/{name}/rollout/{verb}", post(rollout))
        .route("/v1/events", get(events))
        .route("/v1/reload", post(reload))
        .route("/v1/teardown", post(teardown_handler))
        // Outermost: the caller's uid is checked before any route runs its
        // extractors (a bad body from a non-root caller is 403, not 400).
        .layer(axum::middleware::from_fn(root_only))
        .with_state(ctx);
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .await
        .context("control API")
}

/// Every request: a caller that is not root is refused before its path,
/// query or body is looked at.
async fn root_only(
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match peer.check_root() {
        Ok(()) => next.run(req).await,
        Err(fail) => fail.into_response(),
    }
}

type Reply<T> = Result<Json<T>, Fail>;

fn lock(ctx: &Ctx) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic while holding the lock poisons it; the state is still the
    // last consistent one (every change commits at its end), so go on.
    ctx.daemon.lock().unwrap_or_else(|p| p.into_inner())
}

async fn status(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Reply<crate::control::api::Status> {
    peer.check_root()?;
    let d = lock(&ctx);
    d.status()
        .map(Json)
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
}

/// Runs an operation on the daemon and, in a fleet, publishes what it
/// changed to etcd before answering: the answer means the fleet has it. A
/// publish that lost a race with another host's write is retried on the
/// newer state (the operation runs again); cut off from etcd, only a
/// rollback stands (applied here, published when etcd returns).
async fn change(ctx: &Ctx, op: impl Fn(&mut Daemon) -> OpResult<Vec<String>>) -> Reply<Change> {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let (mut changes, items) = {
            let mut d = lock(ctx);
            let changes = op(&mut d).map_err(Fail::from)?;
            (changes, d.fleet_outbox())
        };
        let services: Vec<String> = items.iter().map(|i| i.service().to_string()).collect();
        let Some(link) = &ctx.fleet else {
            return Ok(Json(Change { changes }));
        };
        if items.is_empty() {
            changes.extend(lock(ctx).fleet_cut_off_note());
            return Ok(Json(Change { changes }));
        }
        match link.publish(items).await {
            Ok(()) => {
                changes.push("written to etcd: every host of the fleet applies it".into());
                return Ok(Json(Change { changes }));
            }
            Err(PublishError::Conflict(m)) if attempt < ATTEMPTS => {
                log::info!("{m}: running the change again on the newer state");
                // The watch brings the newer document within milliseconds.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(PublishError::Conflict(m)) => return Err(Fail(StatusCode::CONFLICT, m)),
            Err(PublishError::CutOff(m)) => {
                return if lock(ctx).fleet_pending_among(&services) {
                    changes.push(format!(
                        "applied on this host only: etcd cannot be reached ({m}); \
                         the rollback is written to etcd when it returns"
                    ));
                    Ok(Json(Change { changes }))
                } else {
                    Err(Fail(
                        StatusCode::CONFLICT,
                        format!("not applied: etcd cannot be reached ({m})"),
                    ))
                };
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn weight_change(ctx: &Ctx, peer: &Peer, name: &str, bp: WeightBp) -> Reply<Change> {
    peer.check_root()?;
    let who = peer.who();
    change(ctx, |d| d.operator_weight(name, bp, &who)).await
}

async fn set_weight(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Json(body): Json<SetWeight>,
) -> Reply<Change> {
    let bp = weight_from_percent(body.percent).map_err(Fail::from)?;
    weight_change(&ctx, &peer, &name, bp).await
}

async fn rollback(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Reply<Change> {
    weight_change(&ctx, &peer, &name, WeightBp::ZERO).await
}

async fn promote(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Reply<Change> {
    weight_change(&ctx, &peer, &name, WeightBp::FULL).await
}

async fn backend_change(
    ctx: &Ctx,
    peer: &Peer,
    name: &str,
    body: BackendChange,
    add: bool,
) -> Reply<Change> {
    peer.check_root()?;
    let who = peer.who();
    change(ctx, |d| {
        d.change_backend(name, body.pool, body.addr, add, &who)
    })
    .await
}

async fn backend_add(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Json(body): Json<BackendChange>,
) -> Reply<Change> {
    backend_change(&ctx, &peer, &name, body, true).await
}

async fn backend_remove(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Json(body): Json<BackendChange>,
) -> Reply<Change> {
    backend_change(&ctx, &peer, &name, body, false).await
}

async fn rollout(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((name, verb)): Path<(String, String)>,
) -> Reply<Change> {
    peer.check_root()?;
    let who = peer.who();
    change(&ctx, |d| d.rollout(&name, &verb, &who)).await
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    /// Long poll: wait up to this long (at most 60 s) for a new event.
    #[serde(default)]
    wait_ms: u64,
}

async fn events(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<EventsQuery>,
) -> Reply<Vec<crate::daemon::events::Event>> {
    peer.check_root()?;
    // The log is shared outside the daemon's lock: waiting holds no lock.
    let log = lock(&ctx).events.clone();
    let wait = std::time::Duration::from_millis(q.wait_ms.min(60_000));
    Ok(Json(log.wait_after(q.after, wait).await))
}

#[derive(Deserialize)]
struct ExplainQuery {
    client: String,
}

async fn explain(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Query(q): Query<ExplainQuery>,
) -> Reply<crate::control::api::Explain> {
    peer.check_root()?;
    lock(&ctx)
        .explain(&name, &q.client)
        .map(Json)
        .map_err(Fail::from)
}

async fn reload(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Reply<Change> {
    peer.check_root()?;
    let changes = lock(&ctx).reload(&peer.who()).map_err(Fail::from)?;
    Ok(Json(Change { changes }))
}

async fn teardown_handler(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Reply<Change> {
    peer.check_root()?;
    log::info!("teardown requested by {}", peer.who());
    let _ = ctx.teardown.send(()).await;
    Ok(Json(Change {
        changes: vec!["canaryd detaches the data plane, removes its pins and exits".into()],
    }))
}

/// The socket path: the command line wins over the config file.
pub fn socket_path(cli: Option<PathBuf>, config: &crate::config::Config) -> PathBuf {
    cli.or_else(|| config.control_socket.clone())
        .unwrap_or_else(|| PathBuf::from(crate::control::api::DEFAULT_SOCKET))
}
