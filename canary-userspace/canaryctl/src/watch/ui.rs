//! The live view's drawing (ratatui) and keys. Everything it shows comes
//! from the `Model`; any terminal size, down to nothing, draws without a
//! panic (what does not fit is cut).

use ratatui::crossterm::event::{Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, LineGauge, Paragraph, Sparkline, Wrap};
use ratatui::Frame;

use super::model::{self, Model, Sample, ServiceHistory};
use crate::render;
use canary_control::api::{RolloutStatus, ServiceStatus};

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Next,
    Prev,
    /// The terminal changed size (or anything else worth a redraw).
    Redraw,
}

/// q, Esc and Ctrl-C quit; down, tab and j pick the next service; up,
/// shift-tab and k the previous one.
pub fn action(event: &TermEvent) -> Option<Action> {
    match event {
        TermEvent::Key(k) if k.kind != KeyEventKind::Release => match k.code {
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Some(Action::Quit),
            KeyCode::Down | KeyCode::Tab | KeyCode::Char('j') => Some(Action::Next),
            KeyCode::Up | KeyCode::BackTab | KeyCode::Char('k') => Some(Action::Prev),
            _ => None,
        },
        TermEvent::Resize(..) => Some(Action::Redraw),
        _ => None,
    }
}

const STABLE: Color = Color::Green;
const CANARY: Color = Color::Yellow;
const ALERT: Color = Color::Red;

/// A gauge's line: thick where filled, thin after.
fn gauge(ratio: f64, label: String, color: Color) -> LineGauge<'static> {
    LineGauge::default()
        .ratio(unit(ratio))
        .label(label)
        .filled_symbol("━")
        .unfilled_symbol("─")
        .filled_style(Style::new().fg(color).add_modifier(Modifier::BOLD))
        .unfilled_style(Style::new().fg(Color::DarkGray))
}

/// A ratio a gauge accepts (0 to 1; NaN is 0).
fn unit(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Several services shown and none named: a list to pick from.
fn shows_list(m: &Model) -> bool {
    m.named.is_none() && m.services().len() > 1
}

pub fn draw(f: &mut Frame, m: &Model) {
    let area = f.area();
    let mut notices: Vec<Line> = Vec::new();
    if let Some(e) = &m.error {
        let since = m
            .answered_at
            .as_deref()
            .map(|t| {
                format!(" (last answer {t}; figures below are from then; retrying every second)")
            })
            .unwrap_or_else(|| " (retrying every second)".into());
        notices.push(Line::styled(
            format!("{e}{since}"),
            Style::new().fg(ALERT).add_modifier(Modifier::BOLD),
        ));
    }
    if let Some(n) = &m.note {
        notices.push(Line::styled(n.clone(), Style::new().fg(CANARY)));
    }
    if let Some(fleet) = m.status.as_ref().and_then(|s| s.fleet.as_ref()) {
        let name = m.selected_service().map(|s| s.name.as_str());
        let cut = !fleet.connected || fleet.cut_off_since_ms.is_some() || !fleet.silent.is_empty();
        let style = if cut {
            Style::new().fg(ALERT)
        } else {
            Style::new()
        };
        notices.push(Line::styled(model::fleet_line(fleet, name), style));
    }
    if m.status.is_none() && m.error.is_none() {
        notices.push(Line::raw("asking canaryd..."));
    }
    // Each notice wraps onto up to three lines (a long error is still
    // read to its end).
    let width = area.width.max(1) as usize;
    let notice_height: u16 = notices
        .iter()
        .map(|l| l.width().div_ceil(width).clamp(1, 3) as u16)
        .sum();
    let list_height = if shows_list(m) {
        m.services().len().min(8) as u16 + 2
    } else {
        0
    };
    let [header, notice_area, list_area, detail] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(notice_height),
        Constraint::Length(list_height),
        Constraint::Fill(1),
    ])
    .areas(area);
    draw_header(f, header, m);
    f.render_widget(
        Paragraph::new(notices).wrap(Wrap { trim: false }),
        notice_area,
    );
    if list_height > 0 {
        draw_list(f, list_area, m);
    }
    if let Some(s) = m.selected_service() {
        let history = m.histories.get(&s.name);
        draw_service(f, detail, m, s, history);
    }
}

fn draw_header(f: &mut Frame, area: Rect, m: &Model) {
    let instance = m
        .status
        .as_ref()
        .map(|s| s.instance.as_str())
        .unwrap_or("?");
    let mut spans = vec![
        Span::styled(
            format!(" canaryd {instance} "),
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
        ),
        Span::raw(format!(
            " {}  every 1 s  q quit",
            m.polled_at.as_deref().unwrap_or("")
        )),
    ];
    if shows_list(m) {
        spans.push(Span::raw("  ↑↓/tab pick a service"));
    }
    f.render_widget(Line::from(spans), area);
}

/// One line per service, the picked one highlighted.
fn draw_list(f: &mut Frame, area: Rect, m: &Model) {
    let services = m.services();
    // Keep the picked one in sight when there are more than fit.
    let rows = area.height.saturating_sub(2).max(1) as usize;
    let first = m.selected.saturating_sub(rows - 1);
    let lines: Vec<Line> = services
        .iter()
        .enumerate()
        .skip(first)
        .take(rows)
        .map(|(i, s)| {
            let last = m.histories.get(&s.name).and_then(ServiceHistory::last);
            let rate = |p: Option<f64>| p.map_or("-".to_string(), |r| format!("{r:.1}/s"));
            let text = format!(
                "{} {:<16} {:<24} weight {:>7} share {:>6}  stable {:>9} canary {:>9}  {}",
                if i == m.selected { ">" } else { " " },
                s.name,
                render::vip_port(s),
                format!("{:.2}%", s.weight_percent),
                render::share(s.observed_canary_share),
                rate(last.map(|l| l.stable.per_sec)),
                rate(last.map(|l| l.canary.per_sec)),
                s.rollout
                    .as_ref()
                    .map(|r| format!(
                        "rollout {} step {}/{}",
                        r.phase,
                        r.step,
                        render::step_count(r)
                    ))
                    .unwrap_or_default()
            );
            let style = if i == m.selected {
                Style::new().add_modifier(Modifier::REVERSED)
            } else {
                Style::new()
            };
            Line::styled(text, style)
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" services ")),
        area,
    );
}

fn draw_service(
    f: &mut Frame,
    area: Rect,
    m: &Model,
    s: &ServiceStatus,
    history: Option<&ServiceHistory>,
) {
    let title = format!(
        " {}  {}/{}  affinity {}  weight set by {}{} ",
        s.name,
        render::vip_port(s),
        s.protocol,
        s.affinity,
        s.weight_source,
        if s.rollbacks > 0 {
            format!("  rollbacks {}", s.rollbacks)
        } else {
            String::new()
        }
    );
    let block = Block::bordered().title(Span::styled(
        title,
        Style::new().add_modifier(Modifier::BOLD),
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rollout_height = if s.rollout.is_some() { 7 } else { 1 };
    let [gauges, _, versions, rollout, events] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Length(rollout_height),
        Constraint::Min(0),
    ])
    .areas(inner);
    draw_gauges(f, gauges, s);
    draw_versions(f, versions, history);
    match &s.rollout {
        Some(r) => draw_rollout(f, rollout, r),
        None => f.render_widget(Line::raw(" no rollout"), rollout),
    }
    draw_events(f, events, m, &s.name);
}

/// The canary weight against the share of new connections canary got.
fn draw_gauges(f: &mut Frame, area: Rect, s: &ServiceStatus) {
    let [w, o] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let weight = format!("weight {:>7}", format!("{:.2}%", s.weight_percent));
    let share = format!("share  {:>7}", render::share(s.observed_canary_share));
    let total = format!(
        " (last second; {} since configured)",
        render::share(s.observed_canary_share_total)
    );
    let width = weight.len().max(share.len() + total.len()) + 1;
    f.render_widget(
        gauge(
            s.weight_percent / 100.0,
            format!("{weight:<width$}"),
            CANARY,
        ),
        w,
    );
    f.render_widget(
        gauge(
            s.observed_canary_share.unwrap_or(0.0),
            format!("{:<width$}", format!("{share}{total}")),
            Color::Cyan,
        ),
        o,
    );
}

/// One version's point of a sample.
type Pick = fn(&Sample) -> &model::VersionPoint;

/// Per version: its figures, then its connection rate and error ratio over
/// the last minute as sparklines.
fn draw_versions(f: &mut Frame, area: Rect, history: Option<&ServiceHistory>) {
    let [head, stable, canary] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(2),
    ])
    .areas(area);
    let columns = |a: Rect| {
        Layout::horizontal([
            Constraint::Length(58),
            Constraint::Fill(2),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas::<4>(a)
    };
    let [_, rate_head, _, err_head] = columns(head);
    let dim = Style::new().fg(Color::DarkGray);
    let seconds = history.map_or(0, ServiceHistory::len);
    f.render_widget(
        Line::styled(format!("new connections/s, last {seconds} polls"), dim),
        rate_head,
    );
    f.render_widget(Line::styled("error ratio", dim), err_head);
    let last = history.and_then(ServiceHistory::last);
    let rows: [(&str, Color, Rect, Pick); 2] = [
        ("stable", STABLE, stable, |s| &s.stable),
        ("canary", CANARY, canary, |s| &s.canary),
    ];
    for (name, color, row, pick) in rows {
        let [text, rate, _, err] = columns(row);
        let figures = match last.map(pick) {
            Some(p) => format!(
                "{:>12} {:>9.1}/s  err {:>6}  p99 {}",
                format!("new {}", p.new_flows),
                p.per_sec,
                render::error_ratio(p.error_ratio),
                p.p99_ms
                    .map(|ms| format!("{ms:.2} ms"))
                    .unwrap_or_else(|| "-".into())
            ),
            None => "-".into(),
        };
        f.render_widget(
            Line::from(vec![
                Span::styled(format!(" {name:<7}"), Style::new().fg(color)),
                Span::raw(figures),
            ]),
            text,
        );
        let Some(h) = history else { continue };
        // The newest samples that fit, scaled: tenths of a connection per
        // second, and basis points of error ratio (at least 1% full height).
        let tail = |v: Vec<Option<f64>>, width: u16| -> Vec<Option<u64>> {
            let skip = v.len().saturating_sub(width as usize);
            v.into_iter()
                .skip(skip)
                .map(|x| x.map(|x| x as u64))
                .collect()
        };
        let rates = tail(
            h.series(|s| Some((pick(s).per_sec * 10.0).round().max(0.0))),
            rate.width,
        );
        let errs = tail(
            h.series(|s| pick(s).error_ratio.map(|r| (r * 10_000.0).round().max(0.0))),
            err.width,
        );
        let max_rate = rates.iter().flatten().copied().max().unwrap_or(0).max(1);
        let max_err = errs.iter().flatten().copied().max().unwrap_or(0).max(100);
        f.render_widget(
            Sparkline::default()
                .data(rates)
                .max(max_rate)
                .style(Style::new().fg(color)),
            rate,
        );
        f.render_widget(
            Sparkline::default()
                .data(errs)
                .max(max_err)
                .style(Style::new().fg(ALERT)),
            err,
        );
    }
}

/// Where the rollout is: phase, step and weight, the step's time against
/// its interval, the canary connections against the sample it needs.
fn draw_rollout(f: &mut Frame, area: Rect, r: &RolloutStatus) {
    let block = Block::bordered().title(" rollout ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [phase, time, sample, verdict, reason] =
        Layout::vertical([Constraint::Length(1); 5]).areas(inner);
    let plan: Vec<String> = r.steps.iter().map(|p| format!("{p}%")).collect();
    let more = if render::step_count(r) > r.steps.len() {
        " -> ..."
    } else {
        ""
    };
    let phase_style = match r.phase.as_str() {
        "aborted" => Style::new().fg(ALERT).add_modifier(Modifier::BOLD),
        "promoted" => Style::new().fg(STABLE).add_modifier(Modifier::BOLD),
        _ => Style::new().add_modifier(Modifier::BOLD),
    };
    f.render_widget(
        Line::from(vec![
            Span::styled(r.phase.to_uppercase(), phase_style),
            Span::raw(format!(
                "  step {}/{}{}  plan {}{more}",
                r.step,
                render::step_count(r),
                model::step_weight(r)
                    .map(|w| format!(" at {w}%"))
                    .unwrap_or_default(),
                plan.join(" -> ")
            )),
        ]),
        phase,
    );
    let label = |text: String| format!("{text:<34}");
    f.render_widget(
        gauge(
            r.step_elapsed_s / r.step_interval_s,
            label(format!(
                "step time {:.0}/{:.0} s ({:.0} s left)",
                r.step_elapsed_s, r.step_interval_s, r.time_left_s
            )),
            Color::Cyan,
        ),
        time,
    );
    match r.required_canary_connections {
        Some(need) => f.render_widget(
            gauge(
                r.canary_connections as f64 / need.max(1) as f64,
                label(format!(
                    "sample {}/{need} canary conns",
                    r.canary_connections
                )),
                CANARY,
            ),
            sample,
        ),
        None => f.render_widget(
            Line::raw(format!(
                "sample {} canary connections (no fixed sample)",
                r.canary_connections
            )),
            sample,
        ),
    }
    f.render_widget(
        Line::raw(format!(
            "last analysis: {}; window canary {}/{} failed, stable {}/{} failed",
            r.verdict,
            r.canary_failures,
            r.canary_connections,
            r.stable_failures,
            r.stable_connections
        )),
        verdict,
    );
    let last = r
        .reason
        .as_deref()
        .or(r.why.as_deref())
        .or(r.history.last().map(String::as_str))
        .unwrap_or("");
    f.render_widget(Line::raw(last.to_string()), reason);
}

fn draw_events(f: &mut Frame, area: Rect, m: &Model, service: &str) {
    let rows = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = m
        .recent_events(service)
        .take(rows)
        .map(|e| {
            // "2026-11-30T16:00:01Z" -> "16:00:01".
            let time = e.time.get(11..19).unwrap_or(&e.time);
            let style = match e.kind.as_str() {
                "rollback" => Style::new().fg(ALERT),
                "promoted" => Style::new().fg(STABLE),
                _ => Style::new(),
            };
            Line::styled(
                format!("{time} {:<9} {:<10} {}", e.kind, e.service, e.message),
                style,
            )
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" events, newest first ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{event, rollout, service, status};
    use super::*;
    use canary_control::api::{FleetAgreement, FleetStatus};
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::KeyEvent;
    use ratatui::Terminal;

    fn text(t: &Terminal<TestBackend>) -> String {
        let buf = t.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn render(m: &Model, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, m)).unwrap();
        text(&t)
    }

    /// A model with everything: two services, a rollout, events, a fleet,
    /// and a daemon that just stopped answering.
    fn full() -> Model {
        let mut m = Model::new(None);
        for i in 0..70u64 {
            let mut shop = service("shop", 10.0, 1000 + i * 120, 100 + i * 13);
            shop.rollout = Some(rollout());
            shop.signals.canary.recent_error_ratio = Some((i % 7) as f64 / 100.0);
            let mut st = status(vec![shop, service("api-v6", 0.0, i, 0)]);
            st.services[1].vip = "2001:db8:100::1".parse().unwrap();
            st.fleet = Some(FleetStatus {
                cluster: "edge".into(),
                host: "lb1".into(),
                leader: Some("lb2".into()),
                connected: true,
                agreement: vec![FleetAgreement {
                    service: "shop".into(),
                    hosts: 3,
                    agreeing: 3,
                    percent: 10.0,
                    generation: 4,
                    line: "3 of 3 hosts apply 10.00% (generation 4)".into(),
                }],
                ..Default::default()
            });
            m.apply_status(
                i as f64,
                &format!("2026-11-30T16:01:{:02}Z", i % 60),
                Ok(st),
            )
            .unwrap();
        }
        m.apply_events(vec![
            event(1, "shop", "step 1 (5%) passed"),
            event(2, "api-v6", "weight 0"),
            event(3, "shop", "step 2: weight 10%"),
        ]);
        m
    }

    #[test]
    fn any_size_draws_without_a_panic() {
        let mut m = full();
        let sizes = [0u16, 1, 2, 3, 5, 8, 13, 20, 40, 80, 160, 300];
        let check = |m: &Model| {
            for w in sizes {
                for h in sizes {
                    render(m, w, h);
                }
            }
        };
        check(&m);
        m.apply_status(71.0, "t", Err(anyhow::anyhow!("no control socket at /x")))
            .unwrap();
        check(&m);
        check(&Model::new(Some("shop")));
        // Odd figures: weights above 100 % or NaN must not reach a gauge.
        let mut odd = service("odd", f64::NAN, 0, 0);
        odd.observed_canary_share = Some(1.5);
        let mut r = rollout();
        r.step_interval_s = 0.0;
        r.required_canary_connections = Some(0);
        r.canary_connections = 5;
        odd.rollout = Some(r);
        let mut m = Model::new(None);
        m.apply_status(0.0, "t", Ok(status(vec![odd]))).unwrap();
        check(&m);
    }

    #[test]
    fn the_view_shows_weight_share_rates_rollout_and_events() {
        let mut m = full();
        let screen = render(&m, 160, 48);
        for needle in [
            "canaryd edge-1",
            "> shop",
            "  api-v6",
            "[2001:db8:100::1]:80",
            "shop  198.18.100.1:80/tcp  affinity source-ip  weight set by rollout",
            "weight  10.00%",
            "share     9.8% (last second; 10.1% since configured)",
            "new 9280     120.0/s  err  0.00%",
            "new 997      13.0/s  err  6.00%  p99 1.50 ms",
            "RUNNING  step 2/6 at 10%  plan 5% -> 10% -> ...",
            "step time 12/30 s (18 s left)",
            "sample 45/120 canary conns",
            "last analysis: need more: 45 of 120 canary connections",
            "fleet edge: this host lb1, leader lb2, etcd connected, 0 hosts reporting; \
             shop: 3 of 3 hosts apply 10.00% (generation 4)",
            "16:00:03 step      shop       step 2: weight 10%",
            "16:00:01 step      shop       step 1 (5%) passed",
            "↑↓/tab pick a service",
        ] {
            assert!(screen.contains(needle), "{needle:?} not in\n{screen}");
        }
        // Newest first; the other service's events are not shown.
        assert!(screen.find("16:00:03 step").unwrap() < screen.find("16:00:01 step").unwrap());
        assert!(!screen.contains("weight 0\n"), "{screen}");
        // Another service picked: its own block.
        m.select(true);
        let screen = render(&m, 160, 48);
        assert!(screen.contains("> api-v6"), "{screen}");
        assert!(
            screen.contains(" api-v6  [2001:db8:100::1]:80/tcp"),
            "{screen}"
        );
        assert!(screen.contains("no rollout"), "{screen}");
        // A silent daemon: said on top, the last figures kept.
        m.apply_status(71.0, "t", Err(anyhow::anyhow!("no control socket at /x")))
            .unwrap();
        let screen = render(&m, 160, 48);
        assert!(
            screen.contains("canaryd not answering: no control socket at /x (last answer"),
            "{screen}"
        );
        assert!(screen.contains("api-v6"), "{screen}");
        // Narrow: the notice wraps, its end still shown.
        let screen = render(&m, 60, 30);
        assert!(screen.contains("every second)"), "{screen}");
    }

    #[test]
    fn a_named_service_has_no_list() {
        let mut m = Model::new(Some("shop"));
        m.apply_status(
            0.0,
            "t",
            Ok(status(vec![
                service("shop", 2.5, 0, 0),
                service("api", 1.0, 0, 0),
            ])),
        )
        .unwrap();
        let screen = render(&m, 100, 30);
        assert!(screen.contains("weight   2.50%"), "{screen}");
        assert!(!screen.contains("services"), "{screen}");
        assert!(!screen.contains("api"), "{screen}");
        assert!(!screen.contains("pick a service"), "{screen}");
    }

    #[test]
    fn keys() {
        let key = |code, modifiers| TermEvent::Key(KeyEvent::new(code, modifiers));
        let none = KeyModifiers::NONE;
        assert_eq!(action(&key(KeyCode::Char('q'), none)), Some(Action::Quit));
        assert_eq!(action(&key(KeyCode::Esc, none)), Some(Action::Quit));
        assert_eq!(
            action(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(&key(KeyCode::Char('c'), none)), None);
        assert_eq!(action(&key(KeyCode::Down, none)), Some(Action::Next));
        assert_eq!(action(&key(KeyCode::Tab, none)), Some(Action::Next));
        assert_eq!(action(&key(KeyCode::Up, none)), Some(Action::Prev));
        assert_eq!(action(&key(KeyCode::BackTab, none)), Some(Action::Prev));
        assert_eq!(action(&TermEvent::Resize(80, 24)), Some(Action::Redraw));
    }
}
