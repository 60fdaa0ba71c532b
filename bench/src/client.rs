//! A minimal HTTP/1.1 client, enough for the runner and the load processes (keep-alive,
//! Content-Length and chunked bodies), plus a blocking one that stands in for a blocking SDK.

use std::io::{self, Read as _, Write as _};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// One answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(io::Error::other)
    }

    /// `(async_request_id, async_request_token)` of a 202.
    pub(crate) fn credentials(&self) -> io::Result<(String, String)> {
        let v = self.json()?;
        match (
            v["async_request_id"].as_str(),
            v["async_request_token"].as_str(),
        ) {
            (Some(id), Some(token)) => Ok((id.to_owned(), token.to_owned())),
            _ => Err(io::Error::other(format!(
                "no credentials in a {} answer: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ))),
        }
    }
}

/// A keep-alive connection.
pub(crate) struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    pub(crate) async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            host: addr.to_owned(),
        })
    }

    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        self.send(path, headers).await?;
        self.receive().await
    }

    /// Writes a GET without reading the answer (for holding many waiting polls at once).
    pub(crate) async fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<()> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await
    }

    pub(crate) async fn receive(&mut self) -> io::Result<Response> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            let len: usize = len.parse().map_err(io::Error::other)?;
            body.resize(len, 0);
            self.stream.read_exact(&mut body).await?;
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(io::Error::other)?;
                let start = body.len();
                body.resize(start + size + 2, 0);
                self.stream.read_exact(&mut body[start..]).await?;
                body.truncate(start + size);
                if size == 0 {
                    break;
                }
            }
        }
        Ok(Response { status, body })
    }
}

/// A GET on a fresh connection, blocking the calling thread until the whole answer is in: what a
/// blocking SDK does inside an async handler.
pub(crate) fn blocking_get(addr: &str, path: &str) -> io::Result<Vec<u8>> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// The same GET, awaited.
pub(crate) async fn async_get(addr: &str, path: &str) -> io::Result<Vec<u8>> {
    let mut conn = Conn::connect(addr).await?;
    Ok(conn.get(path, &[("Connection", "close")]).await?.body)
}
