//! The control API server: HTTP/1.1 + JSON (axum) on a Unix socket that only
//! root can open (mode 0600), and each request is checked again before
//! anything else of it is looked at (`root_only`): the connecting uid
//! (SO_PEERCRED) and the uid of every process that wrote the connection's
//! bytes (SCM_CREDENTIALS, `transport::CredStream`) must be 0.
//! Connection caps and timeouts: `transport`.
//! Routes and bodies: see `api.rs`.

use crate::control::api::{ApiError, BackendChange, Change, SetWeight};
use crate::control::extract::{no_route, wrong_method, Body, PathOf, QueryOf};
use crate::control::transport;
use crate::daemon::{weight_from_percent, Daemon, OpError, OpResult, Refusal};
use crate::fleet::link::{Link, PublishError};
use anyhow::{Context, Result};
use axum::extract::{ConnectInfo, State};
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

/// Who is at the other end of a request: the uid that connected
/// (SO_PEERCRED) and the writers of the connection's bytes so far (each
/// read's SCM_CREDENTIALS: a socket root opened and handed to another
/// process carries that process's uid on what it writes).
#[derive(Clone, Debug)]
struct Peer {
    /// The connecting process's uid.
    uid: Option<u32>,
    writers: Arc<transport::Writers>,
}

impl Peer {
    /// The uid the request is from: the first writer that was not root,
    /// else the connecting one.
    fn writer(&self) -> Option<u32> {
        match self.writers.foreign() {
            Some(transport::Foreign::Uid(uid)) => Some(uid),
            Some(transport::Foreign::Unknown) => None,
            None => self.uid,
        }
    }
    fn who(&self) -> String {
        match self.writer() {
            Some(uid) => format!("canaryctl (uid {uid})"),
            None => "canaryctl (uid unknown)".to_string(),
        }
    }
    fn is_root(&self) -> bool {
        self.uid == Some(0) && self.writers.foreign().is_none()
    }
    fn check_root(&self) -> Result<(), Fail> {
        if self.is_root() {
            Ok(())
        } else {
            Err(Fail(
                StatusCode::FORBIDDEN,
                "the control API is root-only".into(),
            ))
        }
    }
}

/// A refused request: its status and the one-line reason, answered as
/// `{"error": reason}` (every failure, axum's rejections included: see
/// `extract.rs`).
pub(super) struct Fail(pub(super) StatusCode, pub(super) String);

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
    // SO_PASSCRED before anyone can connect: the first bytes carry their
    // writer's uid too.
    let bound = transport::unix_listener(path);
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
        // What no route takes is answered in the API's error shape too
        // (added before the layer, so a non-root caller still gets 403).
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Outermost: the caller's uid is checked before any route runs its
        // extractors (a bad body from a non-root caller is 403, not 400).
        .layer(axum::middleware::from_fn(root_only))
        .with_state(ctx);
    transport::serve_control(listener, app, |uid, writers| {
        ConnectInfo(Peer { uid, writers })
    })
    .await
    .context("control API")
}

/// The largest request body read: axum's own default limit (the API's
/// bodies are a few bytes of JSON; only root's bodies are read).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Every request: a caller that is not root is refused before its path,
/// query or body is looked at. A root caller's body is read here, within
/// `transport::BODY_TIMEOUT`, and the writers are checked again once it
/// is: bytes another process wrote after root's head refuse the request
/// too. The uid logged is the writer's.
async fn root_only(
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Refusals end the connection (`connection: close`).
    let answer = |code: StatusCode, error: String| {
        let mut r = Fail(code, error).into_response();
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        r
    };
    let refuse = |req: &axum::http::request::Parts| {
        let uid = |u: Option<u32>| u.map_or("unknown".to_string(), |u| u.to_string());
        log::warn!(
            "control API: refused {} {} written by uid {} (connected as uid {})",
            req.method,
            req.uri.path(),
            uid(peer.writer()),
            uid(peer.uid),
        );
        answer(StatusCode::FORBIDDEN, "the control API is root-only".into())
    };
    let (parts, body) = req.into_parts();
    if !peer.is_root() {
        return refuse(&parts);
    }
    let read = axum::body::to_bytes(body, MAX_BODY);
    let body = match tokio::time::timeout(transport::BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over {MAX_BODY} bytes"),
                )
            } else {
                answer(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
            };
        }
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    transport::BODY_TIMEOUT
                ),
            )
        }
    };
    if !peer.is_root() {
        return refuse(&parts);
    }
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

type Reply<T> = Result<Json<T>, Fail>;

fn lock(ctx: &Ctx) -> std::sync::MutexGuard<'_, Daemon> {
    crate::daemon::lock(&ctx.daemon)
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
    PathOf(name): PathOf<String>,
    Body(body): Body<SetWeight>,
) -> Reply<Change> {
    let bp = weight_from_percent(body.percent).map_err(Fail::from)?;
    weight_change(&ctx, &peer, &name, bp).await
}

async fn rollback(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    PathOf(name): PathOf<String>,
) -> Reply<Change> {
    weight_change(&ctx, &peer, &name, WeightBp::ZERO).await
}

async fn promote(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    PathOf(name): PathOf<String>,
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
    PathOf(name): PathOf<String>,
    Body(body): Body<BackendChange>,
) -> Reply<Change> {
    backend_change(&ctx, &peer, &name, body, true).await
}

async fn backend_remove(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    PathOf(name): PathOf<String>,
    Body(body): Body<BackendChange>,
) -> Reply<Change> {
    backend_change(&ctx, &peer, &name, body, false).await
}

async fn rollout(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    PathOf((name, verb)): PathOf<(String, String)>,
) -> Reply<Change> {
    peer.check_root()?;
    let who = peer.who();
    change(&ctx, |d| d.rollout(&name, &verb, &who)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    QueryOf(q): QueryOf<EventsQuery>,
) -> Reply<Vec<crate::daemon::events::Event>> {
    peer.check_root()?;
    // The log is shared outside the daemon's lock: waiting holds no lock.
    let log = lock(&ctx).events.clone();
    let wait = std::time::Duration::from_millis(q.wait_ms.min(60_000));
    Ok(Json(log.wait_after(q.after, wait).await))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    client: String,
}

async fn explain(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    PathOf(name): PathOf<String>,
    QueryOf(q): QueryOf<ExplainQuery>,
) -> Reply<crate::control::api::Explain> {
    peer.check_root()?;
    lock(&ctx)
        .explain(&name, &q.client)
        .map(Json)
        .map_err(Fail::from)
}

async fn reload(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<Peer>) -> Reply<Change> {
    peer.check_root()?;
    // Its own task: a caller that hangs up (canaryctl's timeout) does not
    // cancel a reload half way, between reading the file and applying it.
    let (daemon, who) = (ctx.daemon.clone(), peer.who());
    let changes = tokio::spawn(async move { crate::daemon::reload(&daemon, &who).await })
        .await
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, format!("reload: {e}")))?
        .map_err(Fail::from)?;
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
