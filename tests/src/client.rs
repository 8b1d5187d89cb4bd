//! Real TCP and UDP clients, run inside the client namespace (through
//! `Netns::run`), binding chosen source addresses.

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
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
    /// Sends a line and checks it comes back.
    pub fn ping(&mut self, msg: &str) -> Result<()> {
        self.stream
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())?;
        let mut back = String::new();
        self.stream.read_line(&mut back)?;
        if back.trim_end() != msg {
            bail!("echo mismatch: sent {msg:?}, got {back:?}");
        }
        Ok(())
    }
}

/// One datagram from `src` to `dst`; the backend's name from the reply.
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
