//! How the control API and the metrics endpoint take connections: a cap on
//! open connections per listener, timeouts for idle and half-sent requests
//! and for clients that stop reading, and, on the control socket, the uid of
//! the process that wrote each byte of a request.
//!
//! * Connections: each listener has its own cap (a semaphore), derived from
//!   the file-descriptor limit that [`raise_fd_limit`] raises at start, so
//!   the two caps together stay well below it and neither listener can take
//!   the descriptors the other (or the data plane) needs. A full control
//!   socket stops accepting until a connection ends: its clients wait in
//!   the kernel's backlog (until a connection ends, which for an idle or
//!   half-sent one is at most a header timeout, for a long poll up to
//!   60 s), and a client finding the backlog full too is refused at once
//!   (EAGAIN); a full metrics endpoint accepts and closes at once.
//! * Timeouts (hyper's HTTP/1 server, with tokio's timer): a connection
//!   must deliver a complete request head within [`HEADER_TIMEOUT`] of
//!   being accepted or of its previous response (so an idle keep-alive
//!   connection is closed after it too); a client that stops reading the
//!   answer is dropped after [`WRITE_TIMEOUT`]; the control API reads a
//!   request's body within [`BODY_TIMEOUT`] (`server::root_only`). The time
//!   a handler takes to answer (the events long poll: up to 60 s) is no
//!   one's timeout.
//! * Writers (control socket only): the listener has SO_PASSCRED set, which
//!   the accepted sockets inherit, so the kernel attaches the writing
//!   process's credentials to every write (also to the bytes sent before
//!   `accept`) and never merges the bytes of two writers into one read.
//!   [`CredStream`] reads with `recvmsg` and records in [`Writers`] whether
//!   any byte of the connection came from a process other than root (or
//!   without credentials): a socket root opened and handed to another user
//!   does not make that user's requests root's.

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower_service::Service;

/// A complete request head must arrive within this long of the connection's
/// accept or of its previous response; otherwise the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's body (control API: a few bytes of JSON) within this long of
/// its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that reads nothing of the answer for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many control connections, and metrics connections, open at
/// once, whatever the file limit.
pub const MAX_CONTROL_CONNECTIONS: usize = 2048;
pub const MAX_METRICS_CONNECTIONS: usize = 1024;

/// The listen backlog of both listeners (the kernel caps it at
/// net.core.somaxconn): a burst of connections waits there (a full control
/// socket's clients too) rather than being refused.
pub const LISTEN_BACKLOG: u32 = 4096;

/// The soft limit on open files (RLIMIT_NOFILE).
fn fd_limit() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rl.rlim_cur, rl.rlim_max))
}

/// The connection caps (control, metrics) derived from the open-file
/// limit: set by `raise_fd_limit`, else from the limit as the first
/// listener finds it.
static CAPS: OnceLock<(usize, usize)> = OnceLock::new();

/// Raises the soft limit on open files to the hard limit (call once, at
/// start, before the listeners serve), derives the connection caps from
/// the limit in force (both listeners take theirs from it) and logs them.
pub fn raise_fd_limit() {
    let limit = raised_fd_limit();
    let _ = CAPS.set(caps(limit));
}

/// `raise_fd_limit`'s raise and log line: the soft limit in force.
fn raised_fd_limit() -> u64 {
    let (soft, hard) = match fd_limit() {
        Ok(l) => l,
        Err(e) => {
            log::warn!("reading the open-file limit: {e}");
            return 1024;
        }
    };
    let mut now = soft;
    if soft < hard {
        let rl = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } == 0 {
            now = hard;
        } else {
            log::warn!(
                "raising the open-file limit from {soft} to {hard}: {}",
                io::Error::last_os_error()
            );
        }
    }
    let (control, metrics) = caps(now);
    log::info!(
        "open files: soft limit {now} (was {soft}, hard limit {hard}); connections at most \
         {control} on the control socket, {metrics} on the metrics endpoint"
    );
    now
}

/// The connection caps (control, metrics) for a soft file limit: a reserve
/// for everything else canaryd opens (maps, links, netlink, probes, etcd),
/// two thirds of the rest for the control socket, one third for metrics,
/// each at most its `MAX_*`.
fn caps(soft: u64) -> (usize, usize) {
    let soft = soft.min(1 << 20) as usize;
    let reserve = (soft / 4).min(256);
    let budget = soft.saturating_sub(reserve);
    (
        (budget * 2 / 3).clamp(1, MAX_CONTROL_CONNECTIONS),
        (budget / 3).clamp(1, MAX_METRICS_CONNECTIONS),
    )
}

/// The connection caps (control, metrics) in force: `raise_fd_limit`'s,
/// or (not called) those of the limit as it is now.
fn current_caps() -> (usize, usize) {
    *CAPS.get_or_init(|| caps(fd_limit().map(|l| l.0).unwrap_or(1024)))
}

/// Who wrote a connection's bytes, as far as they have been read.
#[derive(Debug, Default)]
pub struct Writers {
    /// The first writer of a byte that was not root (set once).
    foreign: OnceLock<Foreign>,
}

/// A writer other than root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    Uid(u32),
    /// Bytes that came without credentials (should not happen with
    /// SO_PASSCRED set; refused all the same).
    Unknown,
}

impl Writers {
    fn record(&self, uid: Option<u32>) {
        if uid != Some(0) {
            let _ = self.foreign.set(uid.map_or(Foreign::Unknown, Foreign::Uid));
        }
    }

    /// The first writer that was not root, if any.
    pub fn foreign(&self) -> Option<Foreign> {
        self.foreign.get().copied()
    }
}

/// An accepted control connection read with `recvmsg`: every read carries
/// the credentials of the process that wrote its bytes (SO_PASSCRED, which
/// the socket has from its listener: [`unix_listener`]), which go to
/// `writers`.
pub struct CredStream {
    io: UnixStream,
    writers: Arc<Writers>,
    cmsg: Vec<u8>,
}

impl CredStream {
    pub fn new(io: UnixStream, writers: Arc<Writers>) -> CredStream {
        CredStream {
            io,
            writers,
            cmsg: nix::cmsg_space!(libc::ucred),
        }
    }
}

impl AsyncRead for CredStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let io = &this.io;
            let unfilled = buf.initialize_unfilled();
            // try_io clears the readiness on EAGAIN; the loop then waits
            // for the next.
            let cmsg = &mut this.cmsg;
            let got = io.try_io(Interest::READABLE, || {
                recv_on(io.as_raw_fd(), unfilled, cmsg)
            });
            match got {
                Ok((0, _)) => return Poll::Ready(Ok(())),
                Ok((n, uid)) => {
                    this.writers.record(uid);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One `recvmsg` into `buf`: the bytes read and their writer's uid (None:
/// no credentials).
fn recv_on(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<(usize, Option<u32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    // The writer's real uid. Its pid may be 0 (a writer in a PID namespace
    // canaryd cannot see, e.g. root on the host talking to a containerised
    // canaryd): the uid still holds. Bytes sent with no credentials carry
    // the overflow uid (65534), refused like any other non-root writer.
    // Descriptors sent along do not fit (the buffer has room for the
    // credentials only, so the kernel installs none) and truncate the
    // control messages: `cmsgs` refuses them, and the read counts as one
    // without credentials.
    let uid = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.uid()),
            _ => None,
        })
    });
    Ok((msg.bytes, uid))
}

impl AsyncWrite for CredStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection whose writes may not stall: a write (or flush) that makes
/// no progress for `WRITE_TIMEOUT` fails with `TimedOut`, which ends the
/// connection.
struct WriteDeadline<T> {
    io: T,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn new(io: T) -> Self {
        WriteDeadline { io, stalled: None }
    }

    fn stall<R>(&mut self, cx: &mut Context<'_>, got: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match got {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client reads nothing of the answer",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let got = Pin::new(&mut this.io).poll_write(cx, buf);
        this.stall(cx, got)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let got = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.stall(cx, got)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let got = Pin::new(&mut this.io).poll_flush(cx);
        this.stall(cx, got)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The metrics endpoint's read buffer per connection (hyper's minimum is
/// 8 KiB).
const METRICS_READ_BUFFER: usize = 16 * 1024;

/// One listener's door: its connection cap and its HTTP/1 settings.
struct Gate {
    name: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    http: http1::Builder,
    /// When the last "full" line was logged (one every 10 s at most).
    full_logged: Option<Instant>,
    /// Accept errors since the last one logged.
    accept_errors: u64,
}

impl Gate {
    fn new(name: &'static str, max: usize) -> Gate {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true);
        log::debug!("{name}: at most {max} connections");
        Gate {
            name,
            permits: Arc::new(Semaphore::new(max)),
            max,
            http,
            full_logged: None,
            accept_errors: 0,
        }
    }

    fn log_full(&mut self, what: &str) {
        if self
            .full_logged
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.full_logged = Some(Instant::now());
            log::warn!(
                "{}: {} connections open (the limit): {what}",
                self.name,
                self.max
            );
        }
    }

    /// After a failed accept: EMFILE and the like are waited out briefly
    /// (the connection stays in the backlog), others skipped.
    async fn accept_failed(&mut self, e: io::Error) {
        self.accept_errors += 1;
        if self.accept_errors == 1 || self.accept_errors.is_multiple_of(1000) {
            log::warn!("{}: accept: {e} ({} so far)", self.name, self.accept_errors);
        }
        if matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        ) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Serves one connection with `app` on its own task; `ext` goes into
    /// every request's extensions. The permit is returned when it ends.
    fn spawn<T, E>(&self, permit: OwnedSemaphorePermit, io: T, app: Router, ext: E)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ext.clone());
            let mut app = app.clone();
            async move { app.call(req).await }
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(WriteDeadline::new(io)), svc);
        let name = self.name;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("{name}: connection closed: {e}");
            }
            drop(permit);
        });
    }
}

/// Binds and listens on the control socket's path (with the caller's
/// umask): SO_PASSCRED set before `listen`, a backlog of
/// [`LISTEN_BACKLOG`] (clients wait there while the socket is at its cap).
pub fn unix_listener(path: &std::path::Path) -> io::Result<UnixListener> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::PassCred, &true)?;
    bind(fd.as_raw_fd(), &nix::sys::socket::UnixAddr::new(path)?)?;
    // SAFETY: listen on a socket this function owns. (nix's `Backlog`
    // refuses SOMAXCONN itself.)
    if unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG as i32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

/// Serves the control API on its Unix socket, a listener from
/// [`unix_listener`] (SO_PASSCRED, which the sockets it accepts inherit):
/// at most the control cap of connections (when full, the next ones wait
/// in the backlog), each read as a [`CredStream`]. `ext(connecting uid,
/// writers)` is put into each request's extensions (the handlers'
/// `ConnectInfo`).
pub async fn serve_control<E>(
    listener: UnixListener,
    app: Router,
    ext: impl Fn(Option<u32>, Arc<Writers>) -> E,
) -> io::Result<()>
where
    E: Clone + Send + Sync + 'static,
{
    let mut gate = Gate::new("control API", current_caps().0);
    loop {
        let permit = match gate.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                gate.log_full("new ones wait until one closes");
                gate.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                gate.accept_failed(e).await;
                continue;
            }
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let writers = Arc::new(Writers::default());
        let io = CredStream::new(stream, writers.clone());
        gate.spawn(permit, io, app.clone(), ext(uid, writers));
    }
}

/// Serves the metrics endpoint: at most the metrics cap of connections;
/// when full, a new one is accepted and closed at once.
pub async fn serve_metrics(listener: TcpListener, app: Router) -> io::Result<()> {
    let mut gate = Gate::new("metrics endpoint", current_caps().1);
    // A scrape is one short GET: a small read buffer bounds what 1,024
    // connections on a network-facing port can hold (hyper's default is
    // about 400 KB each).
    gate.http.max_buf_size(METRICS_READ_BUFFER);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                gate.accept_failed(e).await;
                continue;
            }
        };
        match gate.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                gate.spawn(permit, stream, app.clone(), ());
            }
            Err(_) => {
                gate.log_full("closing new ones at once");
                drop(stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_stay_below_the_file_limit() {
        for soft in [64u64, 300, 1024, 4096, 20000, 1 << 20, u64::MAX] {
            let (c, m) = caps(soft);
            assert!(c >= 1 && m >= 1);
            assert!(c <= MAX_CONTROL_CONNECTIONS && m <= MAX_METRICS_CONNECTIONS);
            if soft < 1 << 20 {
                assert!(((c + m) as u64) < soft * 4 / 5 + 2, "{soft}: {c} + {m}");
            }
        }
        assert_eq!(caps(20000), (2048, 1024));
        assert_eq!(caps(300), (150, 75));
    }

    #[test]
    fn writers_remember_the_first_foreign_uid() {
        let w = Writers::default();
        w.record(Some(0));
        assert_eq!(w.foreign(), None);
        w.record(Some(65534));
        w.record(Some(0));
        w.record(Some(1000));
        assert_eq!(w.foreign(), Some(Foreign::Uid(65534)));
        let w = Writers::default();
        w.record(None);
        assert_eq!(w.foreign(), Some(Foreign::Unknown));
    }
}
