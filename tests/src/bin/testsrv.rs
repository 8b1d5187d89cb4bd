//! A backend for the tests: answers TCP connections with its name and then
//! echoes lines; answers UDP datagrams with "NAME payload". Dual-stack.
//!
//! Options for health tests:
//! - `--http-port P`: an HTTP/1.1 endpoint: `GET /metrics` answers the
//!   application's counters in the Prometheus text format
//!   (`app_requests_total`, `app_errors_total`: one request per service
//!   connection; `app_visits_total` and `app_checkouts_total`, a shop's
//!   conversion: every connection is a visit, every 5th checks out; the
//!   histogram `app_request_duration_seconds`: the time from accepting a
//!   connection to its banner sent), any other GET `200` and the name (the
//!   health check);
//! - `--fault-file F`: read for every new connection, it switches faults on
//!   at run time: `rst` (every connection on both ports is reset),
//!   `rst-service` (service connections are reset, the health endpoint
//!   answers as usual: an application failing behind a passing check),
//!   `http500` (the health endpoint answers 500), `silent` (connections are
//!   accepted but never answered), `errors` (connections are served as
//!   usual but counted as application errors: a fault only the
//!   application's own metrics show), `slow` (every response, the banner
//!   and each echo, is sent 30 ms late; the kernel's handshake is as fast
//!   as ever), `low-conversion` (one visit in 20 checks out instead of one
//!   in 5: a business regression nothing else shows), anything else:
//!   healthy;
//! - `--rst-fraction X`: reset this fraction of service connections at
//!   random (a baseline error rate, the same on every backend).
//!
//! Option for flow-table tests:
//! - `--push-ms N`: the server also speaks unprompted: every N ms it writes
//!   `push K` (K = 0, 1, ...) on every service connection, between echoed
//!   lines (never inside one). A line `quiet MS` is echoed and holds this
//!   connection's pushes for MS milliseconds (an idle but open connection).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    Rst,
    RstService,
    Http500,
    Silent,
    Errors,
    Slow,
    LowConversion,
}

/// What `slow` adds to every response.
const SLOW: Duration = Duration::from_millis(30);

/// `app_request_duration_seconds` bucket bounds (seconds).
const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The application's own counters, exposed on `/metrics`.
#[derive(Default)]
struct AppStats {
    requests: AtomicUsize,
    errors: AtomicUsize,
    visits: AtomicUsize,
    checkouts: AtomicUsize,
    /// Per bucket of BOUNDS (not cumulative), then the rest; and the sum.
    latency: Mutex<([u64; BOUNDS.len() + 1], f64)>,
}

impl AppStats {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        let mut l = self.latency.lock().unwrap();
        l.0[i] += 1;
        l.1 += secs;
    }

    /// The Prometheus text of every counter.
    fn text(&self) -> String {
        let mut t = format!(
            "# TYPE app_requests_total counter\napp_requests_total {}\n\
             # TYPE app_errors_total counter\napp_errors_total {}\n\
             # TYPE app_visits_total counter\napp_visits_total {}\n\
             # TYPE app_checkouts_total counter\napp_checkouts_total {}\n\
             # TYPE app_request_duration_seconds histogram\n",
            self.requests.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
            self.visits.load(Ordering::SeqCst),
            self.checkouts.load(Ordering::SeqCst),
        );
        let (counts, sum) = *self.latency.lock().unwrap();
        let mut cum = 0;
        for (b, c) in BOUNDS.iter().zip(counts.iter()) {
            cum += c;
            t.push_str(&format!(
                "app_request_duration_seconds_bucket{{le=\"{b}\"}} {cum}\n"
            ));
        }
        cum += counts[BOUNDS.len()];
        t.push_str(&format!(
            "app_request_duration_seconds_bucket{{le=\"+Inf\"}} {cum}\n\
             app_request_duration_seconds_sum {sum}\napp_request_duration_seconds_count {cum}\n"
        ));
        t
    }
}

fn fault(file: &Option<PathBuf>) -> Fault {
    let Some(f) = file else { return Fault::None };
    match std::fs::read_to_string(f).unwrap_or_default().trim() {
        "rst" => Fault::Rst,
        "rst-service" => Fault::RstService,
        "http500" => Fault::Http500,
        "silent" => Fault::Silent,
        "errors" => Fault::Errors,
        "slow" => Fault::Slow,
        "low-conversion" => Fault::LowConversion,
        _ => Fault::None,
    }
}

/// A uniform number in [0, 1) (RandomState is randomly keyed per instance).
fn uniform() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Closes with a RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Holds a connection open without answering until the peer goes away
/// (bounded: 60 s).
fn hang(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 512];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

fn listener(port: u16) -> TcpListener {
    let any: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let tcp = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    tcp.set_only_v6(false).unwrap();
    tcp.set_reuse_address(true).unwrap();
    tcp.bind(&any.into()).unwrap();
    tcp.listen(1024).unwrap();
    tcp.into()
}

fn http_health(l: TcpListener, name: String, faults: Option<PathBuf>, stats: Arc<AppStats>) {
    for stream in l.incoming() {
        let Ok(mut stream) = stream else { continue };
        let (name, faults, stats) = (name.clone(), faults.clone(), stats.clone());
        std::thread::spawn(move || {
            let f = fault(&faults);
            match f {
                Fault::Rst => return reset(stream),
                Fault::Silent => return hang(stream),
                _ => {}
            }
            // Read the request head (bounded), then answer and close.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                match stream.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let metrics = head.starts_with(b"GET /metrics ");
            let (code, text, body) = if metrics {
                (200, "OK", stats.text())
            } else if f == Fault::Http500 {
                (500, "Internal Server Error", name.clone())
            } else {
                (200, "OK", name.clone())
            };
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 {code} {text}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let usage = "usage: canary-testsrv --name NAME --port PORT [--http-port P] [--fault-file F] [--rst-fraction X] [--push-ms N]";
    let name = opt("--name").expect(usage);
    let port: u16 = opt("--port").expect(usage).parse().expect("port");
    let faults = opt("--fault-file").map(PathBuf::from);
    let rst_fraction: f64 = opt("--rst-fraction")
        .map(|x| x.parse().expect("fraction"))
        .unwrap_or(0.0);
    let push_ms: u64 = opt("--push-ms")
        .map(|x| x.parse().expect("push interval"))
        .unwrap_or(0);

    let tcp = listener(port);
    let any: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let udp = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
    udp.set_only_v6(false).unwrap();
    udp.bind(&any.into()).unwrap();
    let udp: UdpSocket = udp.into();
    let stats = Arc::new(AppStats::default());
    if let Some(p) = opt("--http-port") {
        let l = listener(p.parse().expect("http port"));
        let (name, faults, stats) = (name.clone(), faults.clone(), stats.clone());
        std::thread::spawn(move || http_health(l, name, faults, stats));
    }

    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = format!("{udp_name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from);
        }
    });
    println!("listening");
    let _ = std::io::stdout().flush();

    let open = Arc::new(AtomicUsize::new(0));
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        let accepted = Instant::now();
        stats.requests.fetch_add(1, Ordering::SeqCst);
        let f = fault(&faults);
        // Every connection is a visit; every 5th checks out (every 20th
        // under `low-conversion`): exact ratios, no noise to judge.
        let visit = stats.visits.fetch_add(1, Ordering::SeqCst) + 1;
        let every = if f == Fault::LowConversion { 20 } else { 5 };
        if visit % every == 0 {
            stats.checkouts.fetch_add(1, Ordering::SeqCst);
        }
        let delay = if f == Fault::Slow {
            SLOW
        } else {
            Duration::ZERO
        };
        match f {
            Fault::Errors => {
                stats.errors.fetch_add(1, Ordering::SeqCst);
            }
            Fault::Rst | Fault::RstService => {
                reset(stream);
                continue;
            }
            Fault::Silent => {
                std::thread::spawn(move || hang(stream));
                continue;
            }
            _ => {}
        }
        if rst_fraction > 0.0 && uniform() < rst_fraction {
            reset(stream);
            continue;
        }
        if open.load(Ordering::SeqCst) >= 4096 {
            continue; // dropped: closes the connection
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (name, open, stats) = (name.clone(), open.clone(), stats.clone());
        if push_ms > 0 {
            std::thread::spawn(move || {
                serve_pushing(stream, &name, Duration::from_millis(push_ms));
                open.fetch_sub(1, Ordering::SeqCst);
            });
            continue;
        }
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = stream.write_all(format!("{name}\n").as_bytes());
            stats.observe(accepted.elapsed());
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                std::thread::sleep(delay);
                if stream.write_all(line.as_bytes()).is_err() {
                    break;
                }
                line.clear();
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// `--push-ms`: the banner, then echoed lines and, every `every`, an
/// unprompted `push K` line; the two writers share the stream under a lock
/// so lines never interleave. Ends when the peer closes or a write fails.
fn serve_pushing(stream: TcpStream, name: &str, every: Duration) {
    let writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    if writer
        .lock()
        .unwrap()
        .write_all(format!("{name}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let done = Arc::new(AtomicBool::new(false));
    let quiet_until = Arc::new(Mutex::new(Instant::now()));
    let pusher = {
        let (writer, done, quiet_until) = (writer.clone(), done.clone(), quiet_until.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            let mut next = Instant::now() + every;
            while !done.load(Ordering::SeqCst) {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep((next - now).min(Duration::from_millis(20)));
                    continue;
                }
                next += every;
                if next < now {
                    next = now + every; // fell behind: no burst to catch up
                }
                if *quiet_until.lock().unwrap() > now {
                    continue;
                }
                if writer
                    .lock()
                    .unwrap()
                    .write_all(format!("push {k}\n").as_bytes())
                    .is_err()
                {
                    break;
                }
                k += 1;
            }
        })
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if let Some(ms) = line.trim_end().strip_prefix("quiet ") {
            let ms: u64 = ms.parse().unwrap_or(0);
            *quiet_until.lock().unwrap() = Instant::now() + Duration::from_millis(ms);
        }
        if writer.lock().unwrap().write_all(line.as_bytes()).is_err() {
            break;
        }
        line.clear();
    }
    done.store(true, Ordering::SeqCst);
    let _ = pusher.join();
}
