//! Real TCP and UDP clients, run inside the client namespace (through
//! `Netns::run`), binding chosen source addresses.

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connection and the name of the backend that answered it.
pub struct Conn {
    pub stream: BufReader<TcpStream>,
    pub backend: String,
}

/// Connects from `src` (any port) to `dst` and reads the backend's name.
pub fn tcp_connect(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<Conn> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&dst.into(), timeout)
        .with_context(|| format!("connecting {src} -> {dst}"))?;
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut stream = BufReader::new(stream);
    let mut name = String::new();
    stream
        .read_line(&mut name)
        .with_context(|| format!("reading the banner {src} -> {dst}"))?;
    if name.is_empty() {
        bail!("{src} -> {dst}: closed before the banner");
    }
    Ok(Conn {
        stream,
        backend: name.trim().to_string(),
    })
}

impl Conn {
    /// Sends a line and checks it comes back (skipping the unprompted
    /// `push K` lines of a pushing server).
    pub fn ping(&mut self, msg: &str) -> Result<()> {
        self.stream
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())?;
        let mut back = String::new();
        loop {
            back.clear();
            self.stream.read_line(&mut back)?;
            if !back.starts_with("push ") || msg.starts_with("push ") {
                break;
            }
        }
        if back.trim_end() != msg {
            bail!("echo mismatch: sent {msg:?}, got {back:?}");
        }
        Ok(())
    }
}

/// One datagram from `src` to `dst`; the backend's name from the reply.
/// A line each way on every connection; the indexes of those that fail,
/// with the error.
pub fn ping_all(conns: &mut [Conn], what: &str) -> Vec<(usize, String)> {
    conns
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| {
            c.ping(&format!("{what} {i}"))
                .err()
                .map(|e| (i, format!("{e:#}")))
        })
        .collect()
}

pub fn udp_request(
    src: IpAddr,
    dst: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> Result<String> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload.as_bytes(), dst)?;
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf)?;
    if from != dst {
        bail!("reply from {from}, expected {dst}");
    }
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (name, echo) = text.split_once(' ').context("reply without payload")?;
    if echo != payload {
        bail!("udp echo mismatch: {echo:?}");
    }
    Ok(name.to_string())
}

/// Opens `sources.len()` short connections in turn (connect, banner, one
/// ping, close), bounded by `deadline`. Per connection: (source, backend).
pub fn burst(
    sources: &[IpAddr],
    dst: SocketAddr,
    deadline: Duration,
) -> Result<Vec<(IpAddr, String)>> {
    let end = Instant::now() + deadline;
    let mut out = Vec::with_capacity(sources.len());
    for (i, src) in sources.iter().enumerate() {
        if Instant::now() > end {
            bail!(
                "burst ran out of time after {i} of {} connections",
                sources.len()
            );
        }
        let mut c = tcp_connect(*src, dst, Duration::from_secs(3))?;
        c.ping("hello")?;
        out.push((*src, c.backend));
    }
    Ok(out)
}

/// A long-lived connection to a pushing server (`canary-testsrv
/// --push-ms`): a reader thread sorts what arrives into the server's
/// unprompted `push K` lines and the echoes of what we sent, checks both
/// are in order, and times the gaps between pushes. A connection is broken
/// when it is reset or closed, a line comes out of order, an echo does not
/// come back, or the pushes stop.
pub struct PushConn {
    pub backend: String,
    /// The client's address and port (the flow's source).
    pub local: SocketAddr,
    writer: TcpStream,
    shared: Arc<PushShared>,
    reader: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct PushShared {
    pushes: AtomicU64,
    /// ms since `start` of the last push (or of the last `mark`).
    last_push_ms: AtomicU64,
    /// Largest gap between pushes since the last `mark`.
    max_gap_ms: AtomicU64,
    echoes: AtomicU64,
    expected: Mutex<VecDeque<String>>,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// What a `PushConn` saw.
#[derive(Debug, Clone)]
pub struct PushHealth {
    pub pushes: u64,
    pub echoes: u64,
    /// Lines sent whose echo has not come back yet.
    pub pending: usize,
    /// Largest gap between two pushes (or since `mark`) so far.
    pub max_gap: Duration,
    /// Time since the last push (or `mark`).
    pub since_last_push: Duration,
    pub error: Option<String>,
}

impl PushShared {
    fn now_ms(&self) -> u64 {
        START.elapsed().as_millis() as u64
    }

    fn fail(&self, why: String) {
        let mut e = self.error.lock().unwrap();
        if e.is_none() {
            *e = Some(why);
        }
    }

    fn line(&self, line: &str) {
        if let Some(k) = line.strip_prefix("push ") {
            let want = self.pushes.load(Ordering::SeqCst);
            if k.parse::<u64>().ok() != Some(want) {
                return self.fail(format!("push {k:?} out of order (want {want})"));
            }
            let now = self.now_ms();
            let last = self.last_push_ms.swap(now, Ordering::SeqCst);
            self.max_gap_ms
                .fetch_max(now.saturating_sub(last), Ordering::SeqCst);
            self.pushes.fetch_add(1, Ordering::SeqCst);
        } else {
            let want = self.expected.lock().unwrap().pop_front();
            if want.as_deref() != Some(line) {
                return self.fail(format!("echo {line:?}, expected {want:?}"));
            }
            self.echoes.fetch_add(1, Ordering::SeqCst);
        }
    }
}

static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

impl PushConn {
    /// Connects from `src` to `dst`, reads the banner and starts reading.
    pub fn open(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<PushConn> {
        let c = tcp_connect(src, dst, timeout)?;
        let local = c.stream.get_ref().local_addr()?;
        // The reader wakes up this often to see whether it should stop.
        c.stream
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        // Whatever the banner's read buffered already (a first push) stays
        // in the BufReader the reader thread takes over.
        let writer = c.stream.get_ref().try_clone()?;
        let shared = Arc::new(PushShared::default());
        shared.last_push_ms.store(shared.now_ms(), Ordering::SeqCst);
        let s = shared.clone();
        let mut stream = c.stream;
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            while !s.stop.load(Ordering::SeqCst) {
                match stream.read_until(b'\n', &mut buf) {
                    Ok(0) => return s.fail("closed by the server".into()),
                    Ok(_) if buf.ends_with(b"\n") => {
                        s.line(String::from_utf8_lossy(&buf).trim_end());
                        buf.clear();
                    }
                    Ok(_) => {} // a partial line before a timeout: keep it
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return s.fail(format!("read: {e}")),
                }
            }
        });
        Ok(PushConn {
            backend: c.backend,
            local,
            writer,
            shared,
            reader: Some(reader),
        })
    }

    /// Sends a line (no `push ` prefix, no newline); its echo is checked
    /// when it comes.
    pub fn send(&mut self, msg: &str) -> Result<()> {
        self.shared
            .expected
            .lock()
            .unwrap()
            .push_back(msg.to_string());
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .with_context(|| format!("sending from {}", self.local))
    }

    /// Restarts the gap measurement: the largest gap from now on.
    pub fn mark(&self) {
        let s = &self.shared;
        s.last_push_ms.store(s.now_ms(), Ordering::SeqCst);
        s.max_gap_ms.store(0, Ordering::SeqCst);
    }

    pub fn health(&self) -> PushHealth {
        let s = &self.shared;
        let since = s
            .now_ms()
            .saturating_sub(s.last_push_ms.load(Ordering::SeqCst));
        PushHealth {
            pushes: s.pushes.load(Ordering::SeqCst),
            echoes: s.echoes.load(Ordering::SeqCst),
            pending: s.expected.lock().unwrap().len(),
            max_gap: Duration::from_millis(s.max_gap_ms.load(Ordering::SeqCst).max(since)),
            since_last_push: Duration::from_millis(since),
            error: s.error.lock().unwrap().clone(),
        }
    }

    /// Waits until every line sent has come back (or an error, or
    /// `timeout`); whether they all did.
    pub fn wait_echoes(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let h = self.health();
            if h.pending == 0 {
                return true;
            }
            if h.error.is_some() || Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `n` more pushes (or an error, or `timeout`); whether they came.
    pub fn wait_pushes(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let want = self.health().pushes + n;
        loop {
            let h = self.health();
            if h.pushes >= want {
                return true;
            }
            if h.error.is_some() || Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PushConn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}
