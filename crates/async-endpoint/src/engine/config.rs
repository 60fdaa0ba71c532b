//! The endpoint's settings: one struct with documented defaults, and one check per setting.

use std::time::Duration;

use crate::error::Error;
use crate::failure::{
    DEFAULT_CANCELLED_MESSAGE, DEFAULT_INTERNAL_MESSAGE, DEFAULT_TIMEOUT_MESSAGE,
};

/// Settings of an endpoint (the builder's table lists them with their meanings).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Time from start until an unfinished request fails (per-task override). Default 60 s.
    pub(crate) deadline: Duration,
    /// How long a record (and its token) lives after its last write. Default 1 h.
    pub(crate) ttl: Duration,
    /// Largest serialized params. Default 64 KiB.
    pub(crate) max_params_bytes: usize,
    /// Cap on `Prefer: wait=N`; zero disables waiting polls. Default 25 s.
    pub(crate) max_wait: Duration,
    /// `Retry-After` sent with 202 (whole seconds). Default 1 s.
    pub(crate) retry_after: Duration,
    /// Tasks run at once per worker process. Default 64.
    pub(crate) concurrency: usize,
    /// Minimum time between two progress writes of one request. Default 250 ms.
    pub(crate) progress_interval: Duration,
    /// Time running tasks get to finish on shutdown. Default 30 s.
    pub(crate) shutdown_grace: Duration,
    /// Threads of the runtime tasks run on; 0 runs them on the app's. Default: CPUs, at least 2.
    pub(crate) task_threads: usize,
    /// Whether this process runs workers. Default `true`.
    pub(crate) in_process_workers: bool,
    /// The client's message for panics and internal errors. Default: a generic sentence.
    pub(crate) internal_error_message: String,
    /// The client's message for a passed deadline. Default: a generic sentence.
    pub(crate) timeout_message: String,
    /// The client's message for a cancelled request. Default: a generic sentence.
    pub(crate) cancelled_message: String,
    /// Most pending requests of one owner (starts with an owner only); `None` is no limit.
    /// Default 200.
    pub(crate) max_pending_per_owner: Option<u32>,
    /// Most pending requests of one task, all owners together; `None` is no limit. Default none.
    pub(crate) max_pending_per_task: Option<u32>,
    /// Where the layer serves the event stream (`POST`). Default `/async-endpoint/stream`.
    pub(crate) stream_path: String,
    /// Most requests one event stream follows. Default 100.
    pub(crate) stream_max_requests: usize,
    /// How long one event stream stays open before the client reconnects. Default 55 s.
    pub(crate) stream_lifetime: Duration,
    /// Time between heartbeats (SSE comments) on an event stream. Default 15 s.
    pub(crate) stream_heartbeat: Duration,
}

/// The default of `max_pending_per_owner`: far above what one page or user needs (dozens of
/// pending requests), low enough that one owner flooding starts cannot queue more than this
/// many jobs ahead of everyone else's.
pub(crate) const DEFAULT_MAX_PENDING_PER_OWNER: u32 = 200;

impl Default for Config {
    fn default() -> Self {
        Config {
            deadline: Duration::from_secs(60),
            ttl: Duration::from_secs(3600),
            max_params_bytes: 64 * 1024,
            max_wait: Duration::from_secs(25),
            retry_after: Duration::from_secs(1),
            concurrency: 64,
            progress_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(30),
            task_threads: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            in_process_workers: true,
            internal_error_message: DEFAULT_INTERNAL_MESSAGE.to_owned(),
            timeout_message: DEFAULT_TIMEOUT_MESSAGE.to_owned(),
            cancelled_message: DEFAULT_CANCELLED_MESSAGE.to_owned(),
            max_pending_per_owner: Some(DEFAULT_MAX_PENDING_PER_OWNER),
            max_pending_per_task: None,
            stream_path: super::DEFAULT_STREAM_PATH.to_owned(),
            stream_max_requests: 100,
            stream_lifetime: Duration::from_secs(55),
            stream_heartbeat: Duration::from_secs(15),
        }
    }
}

/// The error naming `setting`.
pub(crate) fn bad(setting: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        setting,
        reason: reason.into(),
    }
}

impl Config {
    /// Checks every setting; the error names the first bad one.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        self.check_deadline()?;
        self.check_ttl()?;
        self.check_max_params_bytes()?;
        self.check_concurrency()?;
        self.check_max_wait()?;
        self.check_pending_limits()?;
        self.check_stream()?;
        self.check_messages()
    }

    fn check_pending_limits(&self) -> Result<(), Error> {
        let zero = "must be at least 1 (pass None to turn the limit off)";
        if self.max_pending_per_owner == Some(0) {
            return Err(bad("max_pending_per_owner", zero));
        }
        if self.max_pending_per_task == Some(0) {
            return Err(bad("max_pending_per_task", zero));
        }
        Ok(())
    }

    /// The pending limits every start carries.
    pub(crate) fn pending_limits(&self) -> crate::backend::PendingLimits {
        crate::backend::PendingLimits {
            per_owner: self.max_pending_per_owner,
            per_task: self.max_pending_per_task,
        }
    }

    fn check_deadline(&self) -> Result<(), Error> {
        if self.deadline.is_zero() {
            return Err(bad("deadline", "must be above zero"));
        }
        Ok(())
    }

    fn check_ttl(&self) -> Result<(), Error> {
        if self.ttl <= self.deadline {
            return Err(bad(
                "ttl",
                format!(
                    "{:?} must exceed the deadline ({:?}) so records outlive their requests",
                    self.ttl, self.deadline
                ),
            ));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(bad(
                "ttl",
                "must be at least one second (tokens count whole seconds)",
            ));
        }
        Ok(())
    }

    /// A task's own deadline must fit in the TTL like the endpoint's (checked per task).
    pub(crate) fn check_task_deadline(&self, task: &str, deadline: Duration) -> Result<(), Error> {
        if deadline.is_zero() || deadline >= self.ttl {
            return Err(bad(
                "task",
                format!("deadline of task {task:?} must be above zero and below the ttl"),
            ));
        }
        Ok(())
    }

    fn check_max_params_bytes(&self) -> Result<(), Error> {
        if self.max_params_bytes == 0 {
            return Err(bad("max_params_bytes", "must be above zero"));
        }
        Ok(())
    }

    fn check_concurrency(&self) -> Result<(), Error> {
        if self.concurrency == 0 {
            return Err(bad("concurrency", "must be at least 1"));
        }
        Ok(())
    }

    fn check_max_wait(&self) -> Result<(), Error> {
        if self.max_wait > Duration::from_secs(300) {
            return Err(bad(
                "max_wait",
                "at most 300 s; proxies cut longer requests",
            ));
        }
        Ok(())
    }

    fn check_stream(&self) -> Result<(), Error> {
        let path = &self.stream_path;
        if !path.starts_with('/') || path.contains(['?', '#']) || path.parse::<http::Uri>().is_err()
        {
            return Err(bad(
                "stream_path",
                "must be an absolute path without query or fragment",
            ));
        }
        if self.stream_max_requests == 0 || self.stream_max_requests > 10_000 {
            return Err(bad("stream_max_requests", "must be between 1 and 10000"));
        }
        if self.stream_lifetime < Duration::from_secs(1)
            || self.stream_lifetime > Duration::from_secs(3600)
        {
            return Err(bad("stream_lifetime", "must be between 1 s and 1 h"));
        }
        if self.stream_heartbeat < Duration::from_millis(100) {
            return Err(bad("stream_heartbeat", "must be at least 100 ms"));
        }
        Ok(())
    }

    fn check_messages(&self) -> Result<(), Error> {
        if self.internal_error_message.is_empty() {
            return Err(bad("internal_error_message", "must not be empty"));
        }
        if self.timeout_message.is_empty() {
            return Err(bad("timeout_message", "must not be empty"));
        }
        if self.cancelled_message.is_empty() {
            return Err(bad("cancelled_message", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_check_names_its_setting() {
        assert!(Config::default().validate().is_ok());
        let setting = |change: fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            match config.validate() {
                Err(Error::Config { setting, .. }) => setting,
                other => panic!("expected a config error, got {other:?}"),
            }
        };
        assert_eq!(setting(|c| c.deadline = Duration::ZERO), "deadline");
        assert_eq!(setting(|c| c.ttl = c.deadline), "ttl");
        assert_eq!(setting(|c| c.max_params_bytes = 0), "max_params_bytes");
        assert_eq!(setting(|c| c.concurrency = 0), "concurrency");
        assert_eq!(
            setting(|c| c.max_wait = Duration::from_secs(301)),
            "max_wait"
        );
        assert_eq!(
            setting(|c| c.internal_error_message.clear()),
            "internal_error_message"
        );
        assert_eq!(setting(|c| c.timeout_message.clear()), "timeout_message");
        assert_eq!(
            setting(|c| c.cancelled_message.clear()),
            "cancelled_message"
        );
        assert_eq!(
            setting(|c| c.max_pending_per_owner = Some(0)),
            "max_pending_per_owner"
        );
        assert_eq!(
            setting(|c| c.max_pending_per_task = Some(0)),
            "max_pending_per_task"
        );
        assert_eq!(setting(|c| c.stream_path = "x?y".into()), "stream_path");
        assert_eq!(
            setting(|c| c.stream_max_requests = 0),
            "stream_max_requests"
        );
        assert_eq!(
            setting(|c| c.stream_lifetime = Duration::ZERO),
            "stream_lifetime"
        );
        assert_eq!(
            setting(|c| c.stream_heartbeat = Duration::ZERO),
            "stream_heartbeat"
        );
    }
}
