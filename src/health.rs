//! Plain-HTTP health endpoints for probes: `GET /live` (the process serves requests) and
//! `GET /ready` (200 when the readiness check passes, else 503 with the reason in the body).
//!
//! Used by the agent (ready once the authority is loaded and the socket is bound) and by the helper
//! (ready once files are written and fresh). The endpoints reveal no identity or key material.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Whether the component is ready; `Err` carries the reason a probe reports.
/// `Ok(Some(note))` is ready with something to report (e.g. a SPIRE server that cannot be reached
/// while cached SVIDs are still valid).
pub type ReadyCheck = Arc<dyn Fn() -> Result<Option<String>, String> + Send + Sync>;

/// Renders `/metrics` (OpenMetrics text), where the component exports metrics.
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// How long one probe connection may take in all.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Why the health listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("health endpoint {addr}: {source} (set another address, or disable it)")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the health listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `/live`, `/ready` and (with `metrics`) `/metrics` until shutdown.
pub async fn serve(
    listener: TcpListener,
    ready: ReadyCheck,
    metrics: Option<MetricsText>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "health accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::shutdown::signalled(&mut shutdown) => return,
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (ready, metrics) = (ready.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(answer(&req, &ready, metrics.as_ref())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    ready: &ReadyCheck,
    metrics: Option<&MetricsText>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, "live\n".into()),
        "/ready" => match ready() {
            Ok(None) => reply(StatusCode::OK, "ready\n".into()),
            Ok(Some(note)) => reply(StatusCode::OK, format!("ready; {note}\n")),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" if metrics.is_some() => {
            let mut resp = reply(StatusCode::OK, metrics.map(|m| m()).unwrap_or_default());
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => reply(StatusCode::NOT_FOUND, "try /live or /ready\n".into()),
    }
}

/// Parses a health address: `host:port`, or `off` to disable (`None`).
pub fn parse_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("{text:?} is not an address; expected IP:PORT such as 127.0.0.1:8788, or \"off\"")
    })
}

/// A one-shot `GET` of `path` on a health endpoint: (status code, body). Used by the tests.
pub async fn probe(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_ready_and_unknown_paths() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let check: ReadyCheck = {
            let flag = flag.clone();
            Arc::new(move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(None)
                } else {
                    Err("authority not loaded".into())
                }
            })
        };
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, check, None, rx));
        assert_eq!(probe(addr, "/live").await.unwrap().0, 200);
        let (code, body) = probe(addr, "/ready").await.unwrap();
        assert_eq!(code, 503);
        assert!(body.contains("authority not loaded"), "{body}");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(probe(addr, "/ready").await.unwrap().0, 200);
        assert_eq!(probe(addr, "/nope").await.unwrap().0, 404);
        tx.send(true).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("off").unwrap(), None);
        assert!(parse_addr("127.0.0.1:8788").unwrap().is_some());
        assert!(parse_addr("localhost").unwrap_err().contains("localhost"));
    }
}
