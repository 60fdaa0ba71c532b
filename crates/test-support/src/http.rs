//! An HTTP/1.1 client for tests, on `hyper-util`'s client (the same stack `fantoccini` and axum
//! already bring in, so it costs no extra crates).
//!
//! - [`get`] / [`get_addr`]: one GET on a fresh connection (awaited); [`delete`] the same with
//!   `DELETE`.
//! - [`blocking_get`]: the same GET from plain blocking code (a `#[test]`, or deliberately
//!   blocking inside an async handler as a blocking SDK would): it runs on a helper thread with
//!   its own runtime, so it works inside and outside a Tokio runtime.
//! - [`Conn`]: one keep-alive connection, with [`Conn::send`] and [`Conn::receive`] apart, to
//!   hold many requests open at once (waiting polls).
//!
//! Requests carry no body; answers are read whole (`Content-Length` or chunked).

use std::future::Future;
use std::io;
use std::pin::Pin;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The header fields in order, values as text (lossy).
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Response {
    /// The first header field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    async fn read(answer: hyper::Response<Incoming>) -> io::Result<Response> {
        let (head, body) = answer.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        Ok(Response {
            status: head.status.as_u16(),
            headers: head
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn request(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<hyper::Request<Empty<Bytes>>> {
    request_with(hyper::Method::GET, addr, path, headers)
}

fn request_with(
    method: hyper::Method,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<hyper::Request<Empty<Bytes>>> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.body(Empty::new()).map_err(io::Error::other)
}

/// `GET path` on `127.0.0.1:port` over a fresh connection, with extra header fields.
pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    get_addr(&format!("127.0.0.1:{port}"), path, headers).await
}

/// `GET path` on `addr` (`host:port`) over a fresh connection, with extra header fields.
pub async fn get_addr(addr: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    // A client per call: no connection outlives the call, so no pool task outlives the caller's
    // runtime (each `#[tokio::test]` has its own).
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Empty<Bytes>>();
    let answer = client
        .request(request(addr, path, headers)?)
        .await
        .map_err(io::Error::other)?;
    Response::read(answer).await
}

/// `DELETE path` on `127.0.0.1:port` over a fresh connection, with extra header fields.
pub async fn delete(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Empty<Bytes>>();
    let request = request_with(
        hyper::Method::DELETE,
        &format!("127.0.0.1:{port}"),
        path,
        headers,
    )?;
    let answer = client.request(request).await.map_err(io::Error::other)?;
    Response::read(answer).await
}

/// Bound of a [`blocking_get`]: generous, so a hung server fails the test instead of hanging it.
const BLOCKING_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

/// [`get_addr`] for blocking code: the calling thread waits for the whole answer (at most two
/// minutes, then `TimedOut`).
pub fn blocking_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async {
                        tokio::time::timeout(BLOCKING_BOUND, get_addr(addr, path, headers))
                            .await
                            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
                    })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

type Pending = Pin<Box<dyn Future<Output = hyper::Result<hyper::Response<Incoming>>> + Send>>;

/// One keep-alive HTTP/1.1 connection (must be used inside a Tokio runtime).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: String,
    pending: Option<Pending>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("pending", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to `addr` (`host:port`), with `TCP_NODELAY`.
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(connection);
        Ok(Conn {
            sender,
            addr: addr.to_owned(),
            pending: None,
        })
    }

    /// `GET path` on this connection and its whole answer.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.send(path, headers).await?;
        self.receive().await
    }

    /// Sends a GET without reading the answer (for holding many waiting polls at once); the
    /// next [`receive`](Self::receive) reads it.
    pub async fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(io::Error::other("the previous answer was not received"));
        }
        self.sender.ready().await.map_err(io::Error::other)?;
        let request = request(&self.addr, path, headers)?;
        self.pending = Some(Box::pin(self.sender.send_request(request)));
        Ok(())
    }

    /// The answer to the last [`send`](Self::send).
    pub async fn receive(&mut self) -> io::Result<Response> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| io::Error::other("nothing was sent"))?;
        let answer = pending.await.map_err(io::Error::other)?;
        Response::read(answer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server that answers every request on a connection with `answer`.
    async fn serve(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn reads_chunked_and_sized_bodies() {
        let port = serve(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .await;
        let r = get(port, "/", &[("X-Test", "1")]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{\"a\":1}"));
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.json()["a"], 1);

        let port = serve("HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno").await;
        let r = get(port, "/", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "no"));
        assert!(r.json().is_null());
    }

    #[tokio::test]
    async fn keep_alive_connection_sends_then_receives() {
        let port = serve("HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok").await;
        let mut conn = Conn::connect(&format!("127.0.0.1:{port}")).await.unwrap();
        for _ in 0..3 {
            let r = conn.get("/x", &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (202, "ok"));
        }
        conn.send("/y", &[("Prefer", "wait=1")]).await.unwrap();
        assert_eq!(conn.receive().await.unwrap().status, 202);
    }

    #[test]
    fn blocking_get_works_inside_and_outside_a_runtime() {
        // The server runs on the worker thread of a runtime of its own.
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let port = server.block_on(serve("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"));
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(blocking_get(&addr, "/", &[]).unwrap().body, "x");
        let inner = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        inner.block_on(async { assert_eq!(blocking_get(&addr, "/", &[]).unwrap().body, "x") });
    }
}
