//! A tiny HTTP/1.1 responder for `/metrics`, `/healthz` and `/readyz`.
//!
//! One request per connection (`Connection: close`), the request head capped at 8 KiB and
//! 5 s, so a slow or hostile client costs one small task and no more. Scrapers and kubelet
//! probes need nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Maps a path to a response; called once per request.
pub trait Routes: Send + Sync + 'static {
    fn respond(&self, path: &str) -> Response;
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds now (so a taken port fails start-up) and returns the bound address and the
/// serving future.
pub async fn bind<R: Routes>(
    addr: SocketAddr,
    routes: Arc<R>,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((local, serve(listener, routes)))
}

async fn serve<R: Routes>(listener: TcpListener, routes: Arc<R>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let routes = routes.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, routes.as_ref()).await {
                        tracing::debug!(cause = %e, "metrics connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait instead of spinning on the error.
                tracing::warn!(cause = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle<R: Routes>(mut stream: TcpStream, routes: &R) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let response = match complete {
        Ok(Ok(true)) => route(&head, routes),
        Ok(Ok(false)) => Response::text(400, "bad request\n"),
        Ok(Err(e)) => return Err(e),
        Err(_) => Response::text(408, "request timeout\n"),
    };
    let head_only = head.starts_with(b"HEAD ");
    write(&mut stream, &response, head_only).await
}

fn route<R: Routes>(head: &[u8], routes: &R) -> Response {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or("");
    routes.respond(path)
}

async fn write(stream: &mut TcpStream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Routes for Fixed {
        fn respond(&self, path: &str) -> Response {
            match path {
                "/healthz" => Response::text(200, "alive\n"),
                _ => Response::text(404, "not found\n"),
            }
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_known_paths_and_refuses_the_rest() {
        let (addr, serving) = bind("127.0.0.1:0".parse().unwrap(), Arc::new(Fixed))
            .await
            .unwrap();
        let task = tokio::spawn(serving);
        let ok = get(addr, "GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nalive\n"), "{ok}");
        let missing = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(addr, "POST /healthz HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let head = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        task.abort();
    }
}
