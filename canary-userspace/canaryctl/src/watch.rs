//! `canaryctl status --watch [SERVICE]`: canaryd polled every second.
//!
//! - stdout a terminal: a live view (ratatui, `ui.rs`) of each service's
//!   weight against its observed canary share, per-version connection
//!   rates and error ratios with sparklines (history kept here, the last
//!   minute), the rollout's progress toward its step's interval and sample,
//!   recent events and the fleet. q, Esc or Ctrl-C quits; up/down or tab
//!   picks a service when several are shown. The terminal is restored on
//!   quit, error, signal and panic.
//! - stdout not a terminal: one plain line per service per second (or one
//!   JSON object with `--json`), with a timestamp, for grep and scripts.
//! - `--host NAME` (fleet): that host's own view, as `status --host` prints
//!   it, every second.
//!
//! A daemon that stops answering is said ("canaryd not answering: ...")
//! and asked again a second later; the view does not exit.

mod model;
mod ui;

use anyhow::Result;
use canary_control::api::{Event, Status};
use canary_control::client::Client;
use ratatui::crossterm::event as term;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use self::model::Model;
use self::ui::Action;
use crate::render;
use crate::{out, outln};

const EVERY: Duration = Duration::from_secs(1);

pub async fn run(
    client: &Client,
    service: Option<&str>,
    host: Option<&str>,
    json: bool,
) -> Result<()> {
    if let Some(name) = host {
        return host_lines(client, name, json).await;
    }
    if !json && std::io::stdout().is_terminal() {
        return live(client, service).await;
    }
    lines(client, service, json).await
}

/// "2026-11-30T16:00:01Z".
fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A timer for one poll a second (a slow answer delays the next one
/// rather than bunching them up).
fn ticker() -> tokio::time::Interval {
    let mut t = tokio::time::interval(EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Status and the events since `after` (the events are best effort: a
/// failure there shows as the status' failure or not at all).
async fn poll(client: &Client, after: u64) -> (Result<Status>, Vec<Event>) {
    let status = client.status().await;
    let events = match &status {
        Ok(_) => client.events(after, 0).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    (status, events)
}

/// One status a second, for the line modes: a Ctrl-C, also during a slow
/// poll, ends them (one handler for the whole run).
struct Polls {
    tick: tokio::time::Interval,
    int: tokio::signal::unix::Signal,
}

impl Polls {
    fn new() -> Result<Polls> {
        Ok(Polls {
            tick: ticker(),
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next answer and when it was asked; None after a Ctrl-C.
    async fn next(&mut self, client: &Client) -> Option<(String, Result<Status>)> {
        tokio::select! {
            _ = self.tick.tick() => {}
            _ = self.int.recv() => return None,
        }
        let time = now();
        tokio::select! {
            a = client.status() => Some((time, a)),
            _ = self.int.recv() => None,
        }
    }
}

/// Plain lines (or JSON objects), one per service per poll.
async fn lines(client: &Client, service: Option<&str>, json: bool) -> Result<()> {
    let mut m = Model::new(service);
    let start = Instant::now();
    let mut polls = Polls::new()?;
    while let Some((time, answer)) = polls.next(client).await {
        let t = start.elapsed().as_secs_f64();
        m.apply_status(t, &time, answer)?;
        if let Some(e) = &m.error {
            if json {
                let obj = serde_json::json!({ "time": time, "error": e });
                outln!("{obj}");
            } else {
                outln!("{time} {e}");
            }
            continue;
        }
        if let Some(note) = &m.note {
            if json {
                outln!("{}", serde_json::json!({ "time": time, "note": note }));
            } else {
                outln!("{time} {note}");
            }
        }
        for s in m.services() {
            let Some(sample) = m.histories.get(&s.name).and_then(|h| h.last()) else {
                continue;
            };
            if json {
                outln!("{}", model::json_line(&time, s, sample));
            } else {
                outln!("{}", model::plain_line(&time, s, sample));
            }
        }
    }
    Ok(())
}

/// `--host NAME`: the host's own view every second, under a timestamp
/// (JSON: one object per line).
async fn host_lines(client: &Client, name: &str, json: bool) -> Result<()> {
    let mut polls = Polls::new()?;
    while let Some((time, answer)) = polls.next(client).await {
        let h = match answer {
            Ok(status) => render::fleet_host(&status, name),
            Err(e) => {
                let e = format!("canaryd not answering: {e:#}").replace('\n', " ");
                if json {
                    outln!("{}", serde_json::json!({ "time": time, "error": e }));
                } else {
                    outln!("{time} {e}");
                }
                continue;
            }
        };
        match (h, json) {
            (Ok(h), true) => {
                let mut v = serde_json::to_value(&h)?;
                v["time"] = time.into();
                outln!("{v}");
            }
            (Ok(h), false) => out!("{time}\n{}", render::render_fleet_host(&h)),
            (Err(e), true) => {
                outln!(
                    "{}",
                    serde_json::json!({ "time": time, "error": format!("{e:#}") })
                )
            }
            (Err(e), false) => outln!("{time} {e:#}"),
        }
    }
    Ok(())
}

/// Restores the terminal when the live view ends, however it ends (a
/// panic is covered by the hook `ratatui::try_init` installs).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The terminal's events, read on a thread of their own (crossterm reads
/// block) and handed to the async loop. On drop the thread is told to stop
/// but not waited for: on a terminal that hung up (tmux killed, ssh gone)
/// crossterm's poll may never return, and canaryctl exits right after.
struct Keys {
    rx: mpsc::UnboundedReceiver<term::Event>,
    stop: Arc<AtomicBool>,
}

impl Keys {
    fn spawn() -> Keys {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match term::poll(Duration::from_millis(100)) {
                    Ok(false) => {}
                    Ok(true) => match term::read() {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    },
                    Err(_) => return,
                }
            }
        });
        Keys { rx, stop }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The live view: draws after every poll and key; a poll that takes long
/// (a stuck daemon, up to `--timeout`) does not hold up the keys.
async fn live(client: &Client, service: Option<&str>) -> Result<()> {
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    // Declared after `_restore`, so dropped (its thread told to stop)
    // before the terminal is restored.
    let mut keys = Keys::spawn();
    let mut term_sig = signal(SignalKind::terminate())?;
    let mut hup_sig = signal(SignalKind::hangup())?;
    let mut int_sig = signal(SignalKind::interrupt())?;
    let mut m = Model::new(service);
    let start = Instant::now();
    let mut tick = ticker();
    terminal.draw(|f| ui::draw(f, &m))?;
    // The poll under way, with when it was asked; keys and signals are
    // handled all the while, and the next tick waits for it.
    type Answer<'a> = Pin<Box<dyn Future<Output = (Result<Status>, Vec<Event>)> + 'a>>;
    let mut inflight: Option<(f64, String, Answer)> = None;
    loop {
        tokio::select! {
            _ = tick.tick(), if inflight.is_none() => {
                let t = start.elapsed().as_secs_f64();
                inflight = Some((t, now(), Box::pin(poll(client, m.events_after))));
            }
            (status, events) = async { inflight.as_mut().expect("guarded").2.as_mut().await },
                if inflight.is_some() =>
            {
                let (t, time, _) = inflight.take().expect("guarded");
                m.apply_status(t, &time, status)?;
                m.apply_events(events);
                terminal.draw(|f| ui::draw(f, &m))?;
            }
            Some(ev) = keys.rx.recv() => {
                if handle(&mut m, &ev) {
                    return Ok(());
                }
                terminal.draw(|f| ui::draw(f, &m))?;
            }
            _ = term_sig.recv() => return Ok(()),
            _ = hup_sig.recv() => return Ok(()),
            _ = int_sig.recv() => return Ok(()),
        }
    }
}

/// A terminal event: true to quit.
fn handle(m: &mut Model, ev: &term::Event) -> bool {
    match ui::action(ev) {
        Some(Action::Quit) => return true,
        Some(Action::Next) if m.named.is_none() => m.select(true),
        Some(Action::Prev) if m.named.is_none() => m.select(false),
        _ => {}
    }
    false
}
