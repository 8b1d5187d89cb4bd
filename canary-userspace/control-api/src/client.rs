//! The control API's client (used by `canaryctl`): HTTP/1.1 + JSON over the
//! Unix socket with hyper. Every failure becomes one line an operator can
//! act on: no daemon, not root, unknown service, the daemon's refusal, a
//! daemon that does not answer in time (`timeout`, default 10 s, on top of
//! a long poll's own wait).

use crate::api::{
    ApiError, BackendChange, Change, Event, Explain, RolloutVerb, SetWeight, Status, Version,
};
use anyhow::{anyhow, bail, Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

/// How long a call may take (connect, request, answer) unless told
/// otherwise: canaryd answers in milliseconds; a fleet change waits for
/// etcd, which has its own shorter deadlines.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    socket: PathBuf,
    /// Per call; zero waits for ever.
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Each call (connect, request, whole answer) must end within
    /// `timeout`, plus the wait a long poll asks for; zero waits for ever.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connect(&self) -> Result<UnixStream> {
        let path = self.socket.display();
        UnixStream::connect(&self.socket).await.map_err(|e| match e.kind() {
            ErrorKind::NotFound => anyhow!(
                "no control socket at {path}: is canaryd running? (--socket or CANARY_SOCKET names another)"
            ),
            ErrorKind::PermissionDenied => {
                anyhow!("permission denied: {path} is root-only (run canaryctl as root)")
            }
            ErrorKind::ConnectionRefused => {
                anyhow!("canaryd is not running ({path} is left from an earlier one)")
            }
            _ => anyhow!("connecting to {path}: {e}"),
        })
    }

    /// One request on its own connection (canaryctl makes one or a few).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        self.call_waiting(method, uri, body, Duration::ZERO).await
    }

    /// `call` for a request that asks canaryd to wait up to `wait` before it
    /// answers (a long poll): the timeout starts after that wait.
    async fn call_waiting<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        wait: Duration,
    ) -> Result<T> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "canaryd")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let exchange = async {
            let stream = self.connect().await?;
            crate::http::exchange(stream, request)
                .await
                .context("canaryd closed the connection")
        };
        let (status, bytes) = if self.timeout.is_zero() {
            exchange.await?
        } else {
            match tokio::time::timeout(self.timeout + wait, exchange).await {
                Ok(answer) => answer?,
                Err(_) => bail!("{}", self.no_answer(wait)),
            }
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("canaryd's answer to {uri} does not parse"));
        }
        let said = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        match status {
            StatusCode::FORBIDDEN => bail!("permission denied: {said}"),
            _ if said.is_empty() => bail!("canaryd answered {status}"),
            _ => bail!("{said}"),
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, uri: &str, body: &B) -> Result<T> {
        self.call(Method::POST, uri, Some(serde_json::to_vec(body)?))
            .await
    }

    pub async fn status(&self) -> Result<Status> {
        self.call(Method::GET, "/v1/status", None).await
    }

    pub async fn set_weight(&self, service: &str, percent: f64) -> Result<Change> {
        self.post(&service_uri(service, "weight")?, &SetWeight { percent })
            .await
    }

    pub async fn rollback(&self, service: &str) -> Result<Change> {
        self.post(&service_uri(service, "rollback")?, &()).await
    }

    pub async fn promote(&self, service: &str) -> Result<Change> {
        self.post(&service_uri(service, "promote")?, &()).await
    }

    pub async fn change_backend(
        &self,
        service: &str,
        add: bool,
        pool: Version,
        addr: IpAddr,
    ) -> Result<Change> {
        let what = if add {
            "backends/add"
        } else {
            "backends/remove"
        };
        self.post(&service_uri(service, what)?, &BackendChange { pool, addr })
            .await
    }

    pub async fn explain(&self, service: &str, client: &str) -> Result<Explain> {
        let query = serde_urlencoded::to_string([("client", client)])?;
        let uri = format!("{}?{query}", service_uri(service, "explain")?);
        self.call(Method::GET, &uri, None).await
    }

    pub async fn rollout(&self, service: &str, verb: RolloutVerb) -> Result<Change> {
        self.post(&service_uri(service, &format!("rollout/{verb}"))?, &())
            .await
    }

    /// Events after `after`, waiting up to `wait_ms` for one.
    pub async fn events(&self, after: u64, wait_ms: u64) -> Result<Vec<Event>> {
        self.call_waiting(
            Method::GET,
            &format!("/v1/events?after={after}&wait_ms={wait_ms}"),
            None,
            Duration::from_millis(wait_ms),
        )
        .await
    }

    /// The one line for a call that timed out.
    fn no_answer(&self, wait: Duration) -> String {
        let after = if wait.is_zero() {
            String::new()
        } else {
            format!(" after its {} long poll", seconds(wait))
        };
        format!(
            "canaryd did not answer within {}{after} on {} (is it stuck? see its log; \
             --timeout waits longer)",
            seconds(self.timeout),
            self.socket.display()
        )
    }

    pub async fn reload(&self) -> Result<Change> {
        self.post("/v1/reload", &()).await
    }

    pub async fn teardown(&self) -> Result<Change> {
        self.post("/v1/teardown", &()).await
    }
}

/// "10s", "1.5s", "0.2s".
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Service names are config names (letters, digits, `-`, `_`, `.`); anything
/// else cannot name a service and would not make a valid path.
fn service_uri(service: &str, what: &str) -> Result<String> {
    let ok = !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("unknown service: {service:?} is not a service name");
    }
    Ok(format!("/v1/services/{service}/{what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_become_paths_or_errors() {
        assert_eq!(
            service_uri("shop-v6", "weight").unwrap(),
            "/v1/services/shop-v6/weight"
        );
        for bad in ["", "a/b", "shop?x=1", "sh op"] {
            assert!(service_uri(bad, "weight").is_err(), "{bad:?}");
        }
    }

    /// A "daemon" that accepts and never answers: the call ends after the
    /// timeout with one line saying so (and, for a long poll, after its
    /// wait too).
    #[tokio::test]
    async fn a_silent_daemon_times_out_with_one_line() {
        let dir = std::env::temp_dir().join(format!("canary-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        let c = Client::new(&path).with_timeout(Duration::from_millis(200));
        let start = std::time::Instant::now();
        let e = c.status().await.unwrap_err().to_string();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(
            e,
            format!(
                "canaryd did not answer within 0.2s on {} (is it stuck? see its log; \
                 --timeout waits longer)",
                path.display()
            )
        );
        let start = std::time::Instant::now();
        let e = c.events(0, 300).await.unwrap_err().to_string();
        assert!(start.elapsed() >= Duration::from_millis(500), "{e}");
        assert!(
            e.starts_with("canaryd did not answer within 0.2s after its 0.3s long poll on "),
            "{e}"
        );
        assert_eq!(Client::new(&path).timeout(), DEFAULT_TIMEOUT);
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_missing_socket_says_so() {
        let c = Client::new("/nonexistent/canary-test.sock");
        let e = c.status().await.unwrap_err().to_string();
        assert!(
            e.contains("no control socket at /nonexistent/canary-test.sock"),
            "{e}"
        );
    }
}
