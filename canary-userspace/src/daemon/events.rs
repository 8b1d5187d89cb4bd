//! The daemon's event log: rollout steps, promotions, rollbacks, health
//! changes, weight changes (not the engine's own steps), backend changes
//! and reloads, numbered so a client can follow it
//! (`GET /v1/events?after=N&wait_ms=M`, `canaryctl events --follow`). Kept in
//! memory (the last 1000); what must survive a restart is in the state file.
//! The numbers of a canaryd start above every number an earlier start gave
//! (the first is the start time in ms x 1000), so a client that follows
//! with `after=N` across a restart (a package upgrade) sees the new events.

pub use crate::control::api::{Event, EventKind};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

const KEEP: usize = 1000;

#[derive(Default)]
pub struct Events {
    log: Mutex<VecDeque<Event>>,
    notify: Notify,
    /// The first event's number (0 means 1).
    first_seq: u64,
}

impl Events {
    /// A log whose numbers start above any an earlier canaryd gave: at the
    /// start time in ms x 1000 (an earlier start would need a thousand
    /// events a millisecond, all its life, to reach it; 2^53, where JSON
    /// readers lose precision, is a quarter-million years away).
    pub fn starting_now() -> Events {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Events {
            first_seq: ms.saturating_mul(1000).max(1),
            ..Events::default()
        }
    }

    pub fn push(&self, service: &str, kind: EventKind, message: impl Into<String>) {
        self.push_event(service, kind, message.into(), None, None);
    }

    /// An event caused by `who` (an operator, a reload).
    pub fn push_by(&self, service: &str, kind: EventKind, who: &str, message: impl Into<String>) {
        self.push_event(service, kind, message.into(), Some(who.to_string()), None);
    }

    /// A weight change not made by the rollout engine: who, from, to.
    pub fn push_weight(&self, service: &str, who: &str, from: f64, to: f64, message: String) {
        self.push_event(
            service,
            EventKind::Weight,
            message,
            Some(who.to_string()),
            Some((from, to)),
        );
    }

    fn push_event(
        &self,
        service: &str,
        kind: EventKind,
        message: String,
        who: Option<String>,
        weight: Option<(f64, f64)>,
    ) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let seq = log.back().map_or(self.first_seq.max(1), |e| e.seq + 1);
        log.push_back(Event {
            seq,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            service: service.to_string(),
            kind,
            message,
            who,
            from_percent: weight.map(|w| w.0),
            to_percent: weight.map(|w| w.1),
        });
        while log.len() > KEEP {
            log.pop_front();
        }
        drop(log);
        self.notify.notify_waiters();
    }

    pub fn after(&self, seq: u64) -> Vec<Event> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().filter(|e| e.seq > seq).cloned().collect()
    }

    /// Events after `seq`, waiting up to `wait` for the first one.
    pub async fn wait_after(&self, seq: u64, wait: Duration) -> Vec<Event> {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = self.after(seq);
        if !now.is_empty() || wait.is_zero() {
            return now;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        self.after(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn followers_wake_on_new_events() {
        let ev = Arc::new(Events::default());
        ev.push("shop", EventKind::Rollout, "started");
        assert_eq!(ev.after(0).len(), 1);
        assert!(ev.after(1).is_empty());
        let e2 = ev.clone();
        let waiter = tokio::spawn(async move { e2.wait_after(1, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        ev.push("shop", EventKind::Rollback, "canary failing");
        let got = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, 2);
        assert_eq!(got[0].kind, EventKind::Rollback);
        // Nothing new: returns empty after the wait.
        assert!(ev.wait_after(2, Duration::from_millis(20)).await.is_empty());
    }

    #[test]
    fn a_restarted_log_numbers_above_the_previous_one() {
        let first = Events::starting_now();
        for i in 0..5000 {
            first.push("shop", EventKind::Weight, format!("change {i}"));
        }
        let last_of_first = first.after(0).last().unwrap().seq;
        std::thread::sleep(Duration::from_millis(10));
        let second = Events::starting_now();
        second.push("shop", EventKind::Reload, "after the restart");
        // A follower still at the first log's last number sees it.
        let seen = second.after(last_of_first);
        assert_eq!(seen.len(), 1, "{last_of_first} vs {:?}", second.after(0));
    }
}
