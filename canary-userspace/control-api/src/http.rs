//! One HTTP/1.1 request over a connection opened for it, with hyper's
//! client connection API. canaryctl's calls to the control socket, the
//! health probes and the Prometheus queries all go this way.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Sends `request` on `stream` and reads the whole answer: its status and
/// body. The connection ends with the call.
pub async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let answer = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
    .await;
    conn.abort();
    answer
}

/// A request with an empty body.
pub fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}
