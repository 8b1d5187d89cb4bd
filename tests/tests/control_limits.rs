//! The control socket and the metrics endpoint under misbehaving clients:
//! idle and half-sent connections are closed by their header timeout, a
//! flood of them on one listener leaves the other answering, a long poll is
//! not an idle connection, and the control API checks who wrote each
//! request (a socket root opened and handed to another user is not root's).

use anyhow::{ensure, Context, Result};
use canary_tests::{LbConfig, Service, Topology, VIP_V4};
use canary_userspace::control::transport::HEADER_TIMEOUT;
use canary_userspace::dataplane::maps::Maps;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged user and group id (`nobody`/`nogroup` on Debian).
const NOBODY: u32 = 65534;
/// How late after its header timeout a connection may be seen closed.
const SLACK: Duration = Duration::from_secs(2);

fn config() -> String {
    LbConfig::lab()
        .metrics("127.0.0.1:9464")
        .service(Service::tcp("shop", VIP_V4, 80).weight(30.0).lab_pools())
        .yaml()
}

/// Room for the test's own descriptors (2,000 sockets and more).
fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in and out.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// `canaryctl status`, several times: each must answer within a second
/// (it is killed after 10).
fn status_answers_quickly(topo: &Topology, times: usize) -> Result<Vec<Duration>> {
    let mut took = Vec::new();
    for _ in 0..times {
        let t = Instant::now();
        let out = Command::new("timeout")
            .arg("10")
            .arg(canary_tests::bin_path("canaryctl")?)
            .arg("--socket")
            .arg(topo.socket())
            .arg("status")
            .stdin(Stdio::null())
            .output()?;
        let d = t.elapsed();
        ensure!(
            out.status.success(),
            "canaryctl status ({d:?}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        ensure!(d < Duration::from_secs(1), "canaryctl status took {d:?}");
        took.push(d);
    }
    Ok(took)
}

/// Waits (at most `limit`) for the server to close a connection it opened
/// at `opened`: a read returns 0 or ECONNRESET. Returns how long after
/// `opened` that was seen (an upper bound of when the server closed it).
fn closed_within(
    stream: &mut impl Read,
    set_timeout: impl Fn(Duration) -> std::io::Result<()>,
    opened: Instant,
    limit: Duration,
) -> Result<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        // At least one read, however late this is called.
        let left = limit
            .saturating_sub(opened.elapsed())
            .max(Duration::from_millis(10));
        set_timeout(left)?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(opened.elapsed()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(opened.elapsed()),
            // Anything the server sends before closing (nothing expected).
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                anyhow::bail!("still open {:?} after it was opened", opened.elapsed())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one HTTP/1.1 response (with a Content-Length) within `timeout`:
/// its status and body.
fn read_response(stream: &mut UnixStream, timeout: Duration) -> Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .context("status line")?
                .parse()
                .with_context(|| format!("status in {head:?}"))?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                return Ok((status, body));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no complete response within {timeout:?}");
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => anyhow::bail!(
                "closed before a complete response: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e).context("reading the response"),
        }
    }
}

fn weight_request(percent: u32) -> (String, String) {
    let body = format!("{{\"percent\":{percent}}}");
    let head = format!(
        "POST /v1/services/shop/weight HTTP/1.1\r\nHost: canaryd\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head, body)
}

/// 2,000 idle TCP connections to the metrics port (from inside the LB
/// namespace): the control socket keeps answering within a second, the
/// metrics endpoint closes every one of them (beyond its cap at once, the
/// rest after the header timeout), and scrapes work again afterwards.
#[test]
fn idle_metrics_connections_leave_the_control_socket_answering() -> Result<()> {
    raise_fd_limit();
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let d = topo.spawn_canaryd(Some(&config()))?;
    let addr: SocketAddr = "127.0.0.1:9464".parse()?;

    let watch = Watch::start();
    // Bounded: 2,000 connections, 30 s at most.
    let start = Instant::now();
    let failed = topo.lb.run(|| {
        let mut failed = 0;
        for _ in 0..2000 {
            if start.elapsed() > Duration::from_secs(30) {
                break;
            }
            match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(s) => watch.add(s.into()),
                Err(_) => failed += 1,
            }
        }
        failed
    });
    println!(
        "{} idle connections opened to the metrics endpoint in {:?} ({failed} failed)",
        watch.added(),
        start.elapsed()
    );
    ensure!(
        watch.added() >= 1900,
        "only {} connections opened",
        watch.added()
    );

    let took = status_answers_quickly(&topo, 5)?;
    println!("canaryctl status while they are open: {took:?}");

    let closed = watch.finish(HEADER_TIMEOUT + SLACK);
    for l in d
        .log()
        .lines()
        .filter(|l| l.contains("open files") || l.contains("metrics endpoint"))
    {
        println!("canaryd: {l}");
    }
    let report = closed.report();
    println!("metrics connections closed by canaryd: {report}");
    closed.all_within(HEADER_TIMEOUT + SLACK)?;
    ensure!(
        closed.kept_until_timeout() > 0,
        "no connection was kept until its header timeout: is the cap 0?"
    );

    // The endpoint serves again.
    let out = topo.lb.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:9464/metrics",
    ])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.contains("canary_weight_percent{service=\"shop\"} 30"),
        "scrape after the flood: {text}"
    );
    status_answers_quickly(&topo, 2)?;
    Ok(())
}

/// The finding this answers: with canaryd's file limit at 300, 320 idle
/// metrics connections used to take every descriptor and `canaryctl status`
/// hung. canaryd runs under `prlimit --nofile=300:300` (a wrapper script
/// that execs it); its caps follow the limit and the control socket
/// answers.
#[test]
fn a_low_file_limit_still_leaves_the_control_socket_answering() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let wrapper = std::env::temp_dir().join(format!("{}-canaryd-prlimit.sh", topo.instance()));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=300:300 {} \"$@\"\n",
            canary_tests::bin_path("canaryd")?.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let d = canary_tests::Daemon::spawn_bin(&topo, &wrapper, Some(&config()), &[]);
    let _ = std::fs::remove_file(&wrapper);
    let d = d?;
    let addr: SocketAddr = "127.0.0.1:9464".parse()?;
    let watch = Watch::start();
    let start = Instant::now();
    topo.lb.run(|| {
        for _ in 0..320 {
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                watch.add(s.into());
            }
        }
    });
    ensure!(watch.added() == 320, "only {} connections", watch.added());
    let took = status_answers_quickly(&topo, 5)?;
    println!("canaryctl status with 320 idle metrics connections open: {took:?}");
    let closed = watch.finish(HEADER_TIMEOUT + SLACK);
    println!("metrics connections closed by canaryd: {}", closed.report());
    closed.all_within(HEADER_TIMEOUT + SLACK)?;
    let log = d.log();
    let limits = log
        .lines()
        .find(|l| l.contains("open files"))
        .context("no open-files line in the log")?;
    println!("canaryd: {limits}");
    ensure!(limits.contains("soft limit 300 "), "{limits}");
    Ok(())
}

/// Watches a set of client connections for the server closing them: a
/// thread polls them every few milliseconds and records, for each, how long
/// after it was opened a read returned 0 or ECONNRESET.
struct Watch {
    tx: std::sync::mpsc::Sender<(std::os::fd::OwnedFd, Instant)>,
    added: std::sync::atomic::AtomicUsize,
    thread: std::thread::JoinHandle<Closed>,
    done: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

/// Per watched connection: when it was seen closed after it was opened
/// (None: still open when the watch ended).
struct Closed(Vec<Option<Duration>>);

impl Watch {
    fn start() -> Watch {
        let (tx, rx) = std::sync::mpsc::channel::<(std::os::fd::OwnedFd, Instant)>();
        let done = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
        let until = done.clone();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let mut conns: Vec<(Option<std::os::fd::OwnedFd>, Instant)> = Vec::new();
            let mut closed: Vec<Option<Duration>> = Vec::new();
            // Hard bound: two minutes whatever happens.
            let bound = Instant::now() + Duration::from_secs(120);
            loop {
                while let Ok((fd, opened)) = rx.try_recv() {
                    conns.push((Some(fd), opened));
                    closed.push(None);
                }
                let open: Vec<usize> = (0..conns.len()).filter(|&i| conns[i].0.is_some()).collect();
                let end = *until.lock().unwrap();
                if Instant::now() > bound
                    || end.is_some_and(|e| open.is_empty() || Instant::now() > e)
                {
                    return Closed(closed);
                }
                let mut fds: Vec<libc::pollfd> = open
                    .iter()
                    .map(|&i| libc::pollfd {
                        fd: conns[i].0.as_ref().unwrap().as_raw_fd(),
                        events: libc::POLLIN | libc::POLLRDHUP,
                        revents: 0,
                    })
                    .collect();
                // SAFETY: a valid array of pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
                let now = Instant::now();
                for (k, p) in fds.iter().enumerate() {
                    if p.revents == 0 {
                        continue;
                    }
                    let i = open[k];
                    let mut buf = [0u8; 512];
                    // SAFETY: reading into a local buffer from an open fd.
                    let n = unsafe {
                        libc::recv(p.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                    };
                    let reset = n < 0
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECONNRESET);
                    if n == 0 || reset {
                        closed[i] = Some(now - conns[i].1);
                        conns[i].0 = None;
                    }
                }
            }
        });
        Watch {
            tx,
            added: Default::default(),
            thread,
            done,
        }
    }

    fn add(&self, fd: std::os::fd::OwnedFd) {
        self.added.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.tx.send((fd, Instant::now()));
    }

    fn added(&self) -> usize {
        self.added.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until every connection is closed or `wait` has passed (the
    /// remaining ones are closed by the test then).
    fn finish(self, wait: Duration) -> Closed {
        *self.done.lock().unwrap() = Some(Instant::now() + wait);
        drop(self.tx);
        self.thread.join().unwrap()
    }
}

impl Closed {
    fn report(&self) -> String {
        let seen: Vec<Duration> = self.0.iter().flatten().copied().collect();
        let at_once = seen.iter().filter(|t| **t < Duration::from_secs(1)).count();
        let (min, max) = (
            seen.iter().min().copied().unwrap_or_default(),
            seen.iter().max().copied().unwrap_or_default(),
        );
        format!(
            "{} of {}: {at_once} within 1 s of opening, {} after {min:?} to {max:?} \
             (header timeout {HEADER_TIMEOUT:?})",
            seen.len(),
            self.0.len(),
            self.kept_until_timeout(),
            min = seen
                .iter()
                .filter(|t| **t >= Duration::from_secs(1))
                .min()
                .copied()
                .unwrap_or(min),
        )
    }

    fn kept_until_timeout(&self) -> usize {
        self.0
            .iter()
            .flatten()
            .filter(|t| **t >= Duration::from_secs(1))
            .count()
    }

    fn all_within(&self, limit: Duration) -> Result<()> {
        let open = self.0.iter().filter(|t| t.is_none()).count();
        ensure!(open == 0, "{open} connections still open after {limit:?}");
        let late = self.0.iter().flatten().filter(|t| **t > limit).count();
        ensure!(late == 0, "{late} connections closed later than {limit:?}");
        Ok(())
    }
}

/// 1,000 half-sent requests on the control socket: canaryctl still answers
/// within a second and each half-sent connection is closed within the
/// header timeout; so is a keep-alive connection left idle after its
/// answer. A long poll that lasts longer than the header timeout is
/// answered (the server's time to answer is not an idle connection).
#[test]
fn half_sent_control_requests_are_closed() -> Result<()> {
    raise_fd_limit();
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let _d = topo.spawn_canaryd(Some(&config()))?;
    let socket = topo.socket();

    // The long poll runs alongside: no event comes in this quiet lab, so it
    // is answered at its wait_ms.
    let poll_socket = socket.clone();
    let poll = std::thread::spawn(move || -> Result<(u16, Duration)> {
        let mut s = UnixStream::connect(&poll_socket)?;
        let t = Instant::now();
        s.write_all(
            b"GET /v1/events?after=1000000000&wait_ms=8000 HTTP/1.1\r\nHost: canaryd\r\n\r\n",
        )?;
        let (status, _) = read_response(&mut s, Duration::from_secs(15))?;
        Ok((status, t.elapsed()))
    });

    // Bounded: 1,000 connections, 30 s at most.
    let start = Instant::now();
    let watch = Watch::start();
    for i in 0..1000 {
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        let mut s = UnixStream::connect(&socket).with_context(|| format!("connection {i}"))?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: canaryd\r\nX-Half: sen")?;
        watch.add(s.into());
    }
    println!(
        "{} half-sent requests open on the control socket (in {:?})",
        watch.added(),
        start.elapsed()
    );
    ensure!(watch.added() == 1000, "only {} connections", watch.added());

    // A complete request, then nothing: the keep-alive connection is idle.
    let mut idle = UnixStream::connect(&socket)?;
    idle.write_all(b"GET /v1/status HTTP/1.1\r\nHost: canaryd\r\n\r\n")?;
    let (status, _) = read_response(&mut idle, Duration::from_secs(2))?;
    ensure!(status == 200, "status {status}");
    let idle_since = Instant::now();

    let took = status_answers_quickly(&topo, 5)?;
    println!("canaryctl status while they are open: {took:?}");

    let limit = HEADER_TIMEOUT + SLACK;
    let closed = watch.finish(limit);
    println!("half-sent requests closed by canaryd: {}", closed.report());
    closed.all_within(limit)?;
    ensure!(
        closed.kept_until_timeout() == 1000,
        "some half-sent requests were closed before their header timeout"
    );
    let idle2 = idle.try_clone()?;
    let t = closed_within(
        &mut idle,
        |d| idle2.set_read_timeout(Some(d)),
        idle_since,
        limit,
    )
    .context("the idle keep-alive connection")?;
    println!("idle keep-alive connection closed {t:?} after its answer");

    let (status, waited) = poll.join().unwrap()?;
    println!("long poll (wait_ms=8000) answered {status} after {waited:?}");
    ensure!(status == 200, "long poll: {status}");
    ensure!(
        waited > HEADER_TIMEOUT + Duration::from_secs(1),
        "the long poll came back after {waited:?}: did an event end it?"
    );
    status_answers_quickly(&topo, 2)?;
    Ok(())
}

/// Runs `sh` as nobody with `stream` as its stdin and has it write `bytes`
/// there (`printf '%s' ... >&0`).
fn write_as_nobody(stream: &UnixStream, bytes: &str) -> Result<()> {
    let id = NOBODY.to_string();
    let out = Command::new("setpriv")
        .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
        .args(["sh", "-c", "printf '%s' \"$1\" >&0", "sh", bytes])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(stream.try_clone()?)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success(),
        "writing as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A connection root opened and gave to a process of uid nobody: what that
/// process writes is refused (403), whether the whole request or only its
/// body after root's head, and the weight stays; root's own request on a
/// fresh connection works.
#[test]
fn the_writer_of_each_request_is_checked() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let d = topo.spawn_canaryd(Some(&config()))?;
    let socket = topo.socket();
    let maps = Maps::from_pins(&topo.pin_dir())?;
    assert_eq!(maps.services.get(&0, 0)?.weight_bp, 3000);

    // The whole request written by nobody.
    let (head, body) = weight_request(50);
    let mut s = UnixStream::connect(&socket)?;
    write_as_nobody(&s, &format!("{head}{body}"))?;
    let (status, answer) = read_response(&mut s, Duration::from_secs(5))?;
    println!("request written by nobody on root's connection: {status} {answer}");
    ensure!(status == 403, "{status} {answer}");
    ensure!(answer.contains("\"error\""), "{answer}");
    ensure!(
        maps.services.get(&0, 0)?.weight_bp == 3000,
        "weight changed"
    );

    // Root writes the head, nobody the body.
    let (head, body) = weight_request(60);
    let mut s = UnixStream::connect(&socket)?;
    s.write_all(head.as_bytes())?;
    std::thread::sleep(Duration::from_millis(200));
    write_as_nobody(&s, &body)?;
    let (status, answer) = read_response(&mut s, Duration::from_secs(5))?;
    println!("root's head, nobody's body: {status} {answer}");
    ensure!(status == 403, "{status} {answer}");
    ensure!(
        maps.services.get(&0, 0)?.weight_bp == 3000,
        "weight changed"
    );

    let log = d.log();
    ensure!(
        log.contains(&format!("written by uid {NOBODY} (connected as uid 0)")),
        "the refusal names the writer: {log}"
    );

    // Root, on a fresh connection: applied.
    let (head, body) = weight_request(50);
    let mut s = UnixStream::connect(&socket)?;
    s.write_all(format!("{head}{body}").as_bytes())?;
    let (status, answer) = read_response(&mut s, Duration::from_secs(5))?;
    println!("the same from root: {status} {answer}");
    ensure!(status == 200, "{status} {answer}");
    ensure!(
        maps.services.get(&0, 0)?.weight_bp == 5000,
        "weight not set"
    );
    Ok(())
}
