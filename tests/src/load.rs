//! Steady client load in the background: short TCP connections to a VIP
//! from a rotating set of client addresses, on a thread inside the client
//! namespace, until stopped or until its bounds (count and time) are hit.

use crate::{client_v4, tcp_connect, Netns};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    /// The first few failures, as (connection number, error).
    pub errors: Arc<Mutex<Vec<(u64, String)>>>,
    handle: Option<JoinHandle<()>>,
}

/// Bounds of a load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadBounds {
    /// Distinct client addresses (client_v4(0..clients)).
    pub clients: u32,
    pub max_connections: u64,
    pub max_time: Duration,
    /// Pause between connections (0: back to back).
    pub pause: Duration,
    /// The first client address: client_v4(first_client + i % clients).
    pub first_client: u32,
    /// Connect (and banner) timeout of each connection.
    pub timeout: Duration,
    /// Also send a line and wait for its echo before closing.
    pub ping: bool,
}

impl Default for LoadBounds {
    fn default() -> Self {
        LoadBounds {
            clients: 4000,
            max_connections: 500_000,
            max_time: Duration::from_secs(120),
            pause: Duration::ZERO,
            first_client: 0,
            timeout: Duration::from_millis(500),
            ping: false,
        }
    }
}

impl Load {
    pub fn start(ns: &Netns, dst: SocketAddr, bounds: LoadBounds) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let path = ns.path();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, errs) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let end = Instant::now() + bounds.max_time;
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) && i < bounds.max_connections && Instant::now() < end {
                let src = client_v4(bounds.first_client + (i % bounds.clients as u64) as u32);
                let r = tcp_connect(src, dst, bounds.timeout).and_then(|mut c| {
                    if bounds.ping {
                        c.ping(&format!("load {i}"))?;
                    }
                    Ok(())
                });
                match r {
                    Ok(()) => o.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        let mut errs = errs.lock().unwrap();
                        if errs.len() < 10 {
                            errs.push((i, format!("{e:#}")));
                        }
                        f.fetch_add(1, Ordering::SeqCst)
                    }
                };
                i += 1;
                if !bounds.pause.is_zero() {
                    std::thread::sleep(bounds.pause);
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            errors,
            handle: Some(handle),
        }
    }

    /// Stops and waits; (succeeded, failed).
    pub fn stop(&mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}
