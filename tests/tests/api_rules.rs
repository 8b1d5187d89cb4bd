//! The control API keeps its own rules: every failure is `{"error": "one
//! line"}` with the status the README gives (400 for any bad body or query,
//! 404 for what does not exist, 405 for a wrong method), request bodies
//! refuse unknown fields, weights have at most two decimals and an
//! out-of-range one is said in a short line; nothing bad changes the data
//! plane. canaryctl stops quietly when its reader goes (`| head -1`) and
//! gives up, in one line, on a daemon that does not answer.

use anyhow::{Context, Result};
use canary_tests::daemon::curl;
use canary_tests::{bin_path, LbConfig, Service, Topology, VIP_V4};
use canary_userspace::dataplane::maps::Maps;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged user and group id (`nobody`/`nogroup` on Debian).
const NOBODY: u32 = 65534;

fn config(weight: f64) -> String {
    LbConfig::lab()
        .service(Service::tcp("shop", VIP_V4, 80).weight(weight).lab_pools())
        .yaml()
}

/// The body is `{"error": "<one non-empty line>"}` and nothing else.
fn error_of(body: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("not JSON: {body:?}"))?;
    let obj = v
        .as_object()
        .with_context(|| format!("not an object: {body}"))?;
    anyhow::ensure!(obj.len() == 1, "more than `error`: {body}");
    let msg = obj
        .get("error")
        .and_then(|e| e.as_str())
        .with_context(|| format!("no error string: {body}"))?;
    anyhow::ensure!(!msg.trim().is_empty(), "empty error: {body}");
    anyhow::ensure!(!msg.contains('\n'), "more than one line: {body}");
    Ok(msg.to_string())
}

const JSON: &[&str] = &["content-type: application/json"];

/// A bad request: method, path, headers, body, the status it must get and a
/// word its message must have.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [&'a str],
    Option<&'a str>,
    u16,
    &'a str,
);

/// Every kind of bad request, from root: the status the README gives, the
/// one error shape, a short message; the weight in the maps never moves. A
/// good request still works afterwards, and a non-root caller still gets
/// 403 (JSON too) whatever it asks, unknown routes included.
#[test]
fn every_bad_request_gets_the_one_error_shape_and_changes_nothing() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let _d = topo.spawn_canaryd(Some(&config(30.0)))?;
    let socket = topo.socket();
    let maps = Maps::from_pins(&topo.pin_dir())?;
    let weight = || -> Result<u32> { Ok(maps.services.get(&0, 0)?.weight_bp) };
    assert_eq!(weight()?, 3000);

    const W: &str = "/v1/services/shop/weight";
    const ADD: &str = "/v1/services/shop/backends/add";
    let no_type: &[&str] = &["content-type:"];
    let text: &[&str] = &["content-type: text/plain"];
    let cases: Vec<Case> = vec![
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":"50"}"#),
            400,
            "invalid type",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":10,"evil":1}"#),
            400,
            "unknown field `evil`",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":1e-300}"#),
            400,
            "more than two decimals",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":33.333}"#),
            400,
            "more than two decimals",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":1e308}"#),
            400,
            "1e308 is out of range",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":100.001}"#),
            400,
            "out of range",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":-0.01}"#),
            400,
            "out of range",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent":1e400}"#),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            W,
            JSON,
            Some(r#"{"percent": "#),
            400,
            "not valid JSON",
        ),
        ("POST", W, JSON, Some("not json"), 400, "not valid JSON"),
        ("POST", W, JSON, None, 400, "not valid JSON"),
        ("POST", W, JSON, Some("{}"), 400, "missing field `percent`"),
        (
            "POST",
            W,
            text,
            Some(r#"{"percent":10}"#),
            400,
            "Content-Type",
        ),
        (
            "POST",
            W,
            no_type,
            Some(r#"{"percent":10}"#),
            400,
            "Content-Type",
        ),
        (
            "POST",
            W,
            &[],
            Some(r#"{"percent":10}"#),
            400,
            "Content-Type",
        ),
        (
            "POST",
            ADD,
            JSON,
            Some(r#"{"pool":"canary","addr":"198.18.4.2","weight":1}"#),
            400,
            "unknown field `weight`",
        ),
        (
            "POST",
            ADD,
            JSON,
            Some(r#"{"pool":"x","addr":"198.18.4.2"}"#),
            400,
            "pool",
        ),
        (
            "POST",
            ADD,
            JSON,
            Some(r#"{"pool":"canary","addr":"nope"}"#),
            400,
            "addr",
        ),
        (
            "GET",
            "/v1/events?after=soon",
            &[],
            None,
            400,
            "bad query string",
        ),
        (
            "GET",
            "/v1/events?evil=1",
            &[],
            None,
            400,
            "unknown field `evil`",
        ),
        (
            "GET",
            "/v1/services/shop/explain",
            &[],
            None,
            400,
            "missing field `client`",
        ),
        (
            "GET",
            "/v1/services/shop/explain?client=bogus",
            &[],
            None,
            400,
            "bogus",
        ),
        (
            "POST",
            "/v1/services/shop/rollout/sideways",
            JSON,
            None,
            400,
            "sideways",
        ),
        (
            "POST",
            "/v1/services/nosuch/weight",
            JSON,
            Some(r#"{"percent":10}"#),
            404,
            "nosuch",
        ),
        (
            "POST",
            "/v1/services/nosuch/rollback",
            JSON,
            None,
            404,
            "nosuch",
        ),
        ("GET", "/v1/nosuch", &[], None, 404, "no such route"),
        ("GET", "/", &[], None, 404, "no such route"),
        (
            "POST",
            "/v2/services/shop/weight",
            JSON,
            Some(r#"{"percent":10}"#),
            404,
            "/v2/",
        ),
        ("GET", W, &[], None, 405, "GET is not allowed"),
        ("DELETE", "/v1/status", &[], None, 405, "DELETE"),
        ("POST", "/v1/status", JSON, Some("{}"), 405, "POST"),
        ("PUT", "/v1/reload", &[], None, 405, "PUT"),
    ];
    for (method, path, headers, body, want, needle) in &cases {
        let (code, answer) = curl(&socket, None, method, path, headers, *body)?;
        let what = format!("{method} {path} {headers:?} {body:?}");
        let msg = error_of(&answer).with_context(|| format!("{what}: {code}"))?;
        println!("{code} {what}: {msg}");
        assert_eq!(code, *want, "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
        assert!(msg.len() < 200, "{what}: {} chars: {msg}", msg.len());
        assert_eq!(weight()?, 3000, "{what} changed the weight");
    }

    // A good body is still taken, with or without a charset.
    let (code, answer) = curl(
        &socket,
        None,
        "POST",
        W,
        &["content-type: application/json; charset=utf-8"],
        Some(r#"{"percent": 12.5}"#),
    )?;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(weight()?, 1250);

    // Not root: 403 in the same shape, before anything else is looked at.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    for (method, path, body) in [
        ("GET", "/v1/nosuch", None),
        ("GET", W, None),
        ("POST", W, Some(r#"{"percent":10,"evil":1}"#)),
    ] {
        let (code, answer) = curl(&socket, Some(NOBODY), method, path, JSON, body)?;
        assert_eq!(code, 403, "nobody: {method} {path}: {answer}");
        error_of(&answer)?;
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    assert_eq!(weight()?, 1250, "nothing else changed");
    Ok(())
}

/// canaryctl's exit status when its output goes through `sh -c "... |
/// READER"`: `{ canaryctl ...; echo "status $?" >&2; } | READER`, so the
/// status is canaryctl's (141 when SIGPIPE killed it), not the reader's.
fn piped(socket: &Path, args: &str, reader: &str) -> Result<(i32, String)> {
    let script = format!(r#"{{ "$0" --socket "$1" {args}; echo "status $?" >&2; }} | {reader}"#);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(bin_path("canaryctl")?)
        .arg(socket)
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let status = err
        .lines()
        .find_map(|l| l.strip_prefix("status "))
        .with_context(|| format!("{script}: no status in {err:?}"))?
        .trim()
        .parse()?;
    Ok((status, err))
}

/// `canaryctl events | head -1` and friends: canaryctl ends with status 0
/// (or SIGPIPE's 141), without "Broken pipe", a panic or a backtrace, both
/// when the reader goes after one line and when it is gone before the first.
/// `events --follow` notices at its next event.
#[test]
fn canaryctl_stops_quietly_when_its_reader_goes() -> Result<()> {
    let mut topo = Topology::new(3)?;
    topo.start_servers(80)?;
    let _d = topo.spawn_canaryd(Some(&config(30.0)))?;
    let socket = topo.socket();
    // Enough events for several lines.
    for w in ["10", "20", "30", "40"] {
        topo.ctl(&["set-weight", "shop", w])?;
    }
    assert!(topo.ctl(&["events"])?.lines().count() >= 4);
    for args in [
        "events",
        "--json events",
        "status",
        "--json status",
        "explain shop 198.18.0.77:4242",
    ] {
        for reader in ["head -1", "true", "head -c 1"] {
            let (status, err) = piped(&socket, args, reader)?;
            println!("canaryctl {args} | {reader}: status {status}");
            assert!(
                status == 0 || status == 141,
                "{args} | {reader}: status {status}: {err}"
            );
            for bad in ["panicked", "Broken pipe", "backtrace", "canaryctl:"] {
                assert!(!err.contains(bad), "{args} | {reader}: {err}");
            }
            assert_eq!(err.trim().lines().count(), 1, "{args} | {reader}: {err}");
        }
    }

    // --follow: head has its line; the next event ends canaryctl.
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .process_group(0)
        .arg("-c")
        .arg(r#"{ "$0" --socket "$1" events --follow; echo "status $?" >&2; } | head -1"#)
        .arg(bin_path("canaryctl")?)
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    topo.ctl(&["set-weight", "shop", "50"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !done {
        // Our own pipeline only: its process group (sh, canaryctl, head).
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    assert!(done, "events --follow | head -1 still running: {err}");
    let status = err
        .lines()
        .find_map(|l| l.strip_prefix("status "))
        .context("no status")?;
    assert!(status == "0" || status == "141", "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    Ok(())
}

/// A "daemon" that accepts and never answers: canaryctl gives up after its
/// `--timeout` (or `CANARY_TIMEOUT`), with one line naming the wait and the
/// socket, and a non-zero status.
#[test]
fn canaryctl_gives_up_on_a_daemon_that_does_not_answer() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cnry-{}-api-rules", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    // Accepts and holds every connection, says nothing. The thread ends
    // with the test process.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let run = |args: &[&str], env: Option<&str>| -> Result<(std::process::Output, Duration)> {
        let mut cmd = Command::new(bin_path("canaryctl")?);
        cmd.arg("--socket").arg(&path).args(args);
        cmd.env_remove("CANARY_TIMEOUT");
        if let Some(t) = env {
            cmd.env("CANARY_TIMEOUT", t);
        }
        let start = Instant::now();
        let out = cmd.stdin(Stdio::null()).output()?;
        Ok((out, start.elapsed()))
    };
    for (args, env) in [
        (vec!["--timeout", "1s", "status"], None),
        (vec!["status", "--timeout", "1s"], None),
        (vec!["--timeout", "1s", "set-weight", "shop", "10"], None),
        (vec!["--timeout", "1s", "events"], None),
        (vec!["status"], Some("1s")),
    ] {
        let (out, took) = run(&args, env)?;
        let err = String::from_utf8_lossy(&out.stderr);
        println!("canaryctl {args:?} (CANARY_TIMEOUT={env:?}): {took:?}: {err}");
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "{args:?} took {took:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("did not answer within 1s") && err.contains(&path.display().to_string()),
            "{args:?}: {err}"
        );
    }
    // Nonsense for a timeout is refused before anything is sent.
    let (out, _) = run(&["--timeout", "soon", "status"], None)?;
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
