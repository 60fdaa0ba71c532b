//! What a request is doing: its status and its progress.

use serde::{Deserialize, Serialize};

use super::RequestId;

/// The state of an async request. `Done` and `Failed` are terminal: the first one written wins.
///
/// Serialized in lowercase (`"queued"`, `"running"`, …), as in the 202 body.
///
/// ```
/// use async_endpoint::Status;
///
/// assert_eq!(serde_json::to_string(&Status::Retrying).unwrap(), "\"retrying\"");
/// assert!(Status::Failed.is_terminal());
/// assert!(!Status::Running.is_terminal());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Stored and enqueued; no worker has started it yet.
    Queued,
    /// A worker is executing the task.
    Running,
    /// An attempt failed and another one is scheduled.
    Retrying,
    /// Finished with an output.
    Done,
    /// Finished with a failure (the task's, an internal one, or the deadline).
    Failed,
}

impl Status {
    /// `Done` or `Failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Failed)
    }

    /// The lowercase name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    /// Parses the lowercase name.
    pub fn from_name(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "retrying" => Status::Retrying,
            "done" => Status::Done,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

/// Progress reported by a task through [`TaskContext::progress`](crate::TaskContext::progress).
///
/// On the wire it is `{at, total, percent, message}`, `percent` derived from `at / total`.
///
/// ```
/// use async_endpoint::Progress;
///
/// let p = Progress::new(1, Some(4), "calling the API");
/// assert_eq!(p.percent(), Some(25));
/// let json = serde_json::to_value(&p).unwrap();
/// assert_eq!(json["percent"], 25);
/// assert_eq!(json["message"], "calling the API");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Progress {
    /// Units done so far.
    pub at: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// What the task is doing, for the user.
    pub message: String,
}

impl Progress {
    /// Longest message kept; longer ones are cut at a character boundary.
    pub const MAX_MESSAGE_BYTES: usize = 512;

    /// A progress value; the message is cut to [`Self::MAX_MESSAGE_BYTES`].
    pub fn new(at: u64, total: Option<u64>, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > Self::MAX_MESSAGE_BYTES {
            let mut cut = Self::MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Progress { at, total, message }
    }

    /// `at / total` as a whole percentage (0–100), when `total` is known and non-zero.
    pub fn percent(&self) -> Option<u8> {
        match self.total {
            Some(total) if total > 0 => {
                Some((u128::from(self.at.min(total)) * 100 / u128::from(total)) as u8)
            }
            _ => None,
        }
    }
}

impl Serialize for Progress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Progress", 4)?;
        st.serialize_field("at", &self.at)?;
        st.serialize_field("total", &self.total)?;
        st.serialize_field("percent", &self.percent())?;
        st.serialize_field("message", &self.message)?;
        st.end()
    }
}

/// The body of every 202: `{async_request_id, async_request_token, status, progress}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StatusBody {
    pub(crate) async_request_id: RequestId,
    pub(crate) async_request_token: String,
    pub(crate) status: Status,
    pub(crate) progress: Option<Progress>,
}

impl StatusBody {
    /// The JSON of the body, as `serde_json` writes it (same fields, same order), written
    /// directly: the id is hex, the status a fixed word, and a token is written as is when it is
    /// URL-safe base64 (every token the engine makes; any other string goes through
    /// `serde_json`). Every 202 is one of these, so this is on the path of every poll.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let token = &self.async_request_token;
        // The exact length without progress (108 bytes of names and punctuation), so the body
        // becomes `Bytes` without another allocation.
        let progress = if self.progress.is_some() { 128 } else { 0 };
        let status = self.status.as_str();
        let mut out = Vec::with_capacity(108 + token.len() + status.len() + progress);
        out.extend_from_slice(b"{\"async_request_id\":\"");
        out.extend_from_slice(&self.async_request_id.hex());
        out.extend_from_slice(b"\",\"async_request_token\":");
        if token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            out.push(b'"');
            out.extend_from_slice(token.as_bytes());
            out.push(b'"');
        } else {
            // A string always serializes.
            let _ = serde_json::to_writer(&mut out, token);
        }
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\",\"progress\":");
        match &self.progress {
            None => out.extend_from_slice(b"null"),
            // Numbers and a string always serialize.
            Some(progress) => {
                let _ = serde_json::to_writer(&mut out, progress);
            }
        }
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_body_is_what_serde_json_writes() {
        let id = RequestId::random();
        for (token, progress) in [
            ("AQAAAABpKbmA-_0123456789abcdefABCDEF", None),
            (
                "",
                Some(Progress::new(3, Some(4), "with \"quotes\" and é\n")),
            ),
            ("not \"base64\" \\ at all", Some(Progress::new(1, None, ""))),
        ] {
            for status in [Status::Queued, Status::Running, Status::Retrying] {
                let body = StatusBody {
                    async_request_id: id,
                    async_request_token: token.to_owned(),
                    status,
                    progress: progress.clone(),
                };
                let json = body.to_json();
                if body.progress.is_none() && !token.contains(' ') {
                    assert_eq!(json.len(), json.capacity());
                }
                assert_eq!(
                    String::from_utf8(json).unwrap(),
                    serde_json::to_string(&body).unwrap()
                );
            }
        }
    }
}
