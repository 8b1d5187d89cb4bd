//! Steady client load in the background: short TCP connections to a VIP
//! from a rotating set of client addresses, on a thread inside the client
//! namespace, until stopped or until its bounds (count and time) are hit.

use crate::{client_v4, tcp_connect, Netns};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
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
}

impl Default for LoadBounds {
    fn default() -> Self {
        LoadBounds {
            clients: 4000,
            max_connections: 500_000,
            max_time: Duration::from_secs(120),
            pause: Duration::ZERO,
        }
    }
}

impl Load {
    pub fn start(ns: &Netns, dst: SocketAddr, bounds: LoadBounds) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let path = ns.path();
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let end = Instant::now() + bounds.max_time;
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) && i < bounds.max_connections && Instant::now() < end {
                let src = client_v4((i % bounds.clients as u64) as u32);
                match tcp_connect(src, dst, Duration::from_millis(500)) {
                    Ok(_) => o.fetch_add(1, Ordering::SeqCst),
                    Err(_) => f.fetch_add(1, Ordering::SeqCst),
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
