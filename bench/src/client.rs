//! The runner's and the load processes' HTTP client: test-support's (on hyper), with a keep-alive
//! connection whose send and receive are apart, plus a blocking GET that stands in for a blocking
//! SDK.

use std::io;

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
pub(crate) struct Conn(test_support::http::Conn);

impl Conn {
    pub(crate) async fn connect(addr: &str) -> io::Result<Conn> {
        test_support::http::Conn::connect(addr).await.map(Conn)
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
        self.0.send(path, headers).await
    }

    pub(crate) async fn receive(&mut self) -> io::Result<Response> {
        let answer = self.0.receive().await?;
        Ok(Response {
            status: answer.status,
            body: answer.body.into_bytes(),
        })
    }
}

/// A GET on a fresh connection, blocking the calling thread until the whole answer is in: what a
/// blocking SDK does inside an async handler. Gives the body.
pub(crate) fn blocking_get(addr: &str, path: &str) -> io::Result<Vec<u8>> {
    Ok(test_support::http::blocking_get(addr, path, &[])?
        .body
        .into_bytes())
}

/// The same GET, awaited.
pub(crate) async fn async_get(addr: &str, path: &str) -> io::Result<Vec<u8>> {
    Ok(test_support::http::get_addr(addr, path, &[])
        .await?
        .body
        .into_bytes())
}
