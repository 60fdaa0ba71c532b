//! Cancellation: `DELETE` with a request's id and token (`Engine::cancel`).
//!
//! The framework adapter does not know which task a route serves (a `DELETE` is answered before
//! the app's routing, so it also works where the app routes only `GET`), so the token is checked
//! against every registered task: HMAC is cheap, and nothing reaches the backend for credentials
//! that are not genuine. Then the backend cancels atomically (the first terminal state wins) and
//! the answer says what stands.

use crate::backend::{Backend, Snapshot};
use crate::clock::now_ms;
use crate::failure::FailureKind;
use crate::protocol::token::{Claims, TokenError};
use crate::protocol::{Problem, RequestId, Status};

use super::{Answer, Engine};

impl Engine {
    /// Cancels the request that `id` and `token` name for `owner`: 202 with its status body
    /// (`failed`) once it is cancelled, by this call or an earlier one (a `DELETE` is
    /// idempotent); 409 when it finished otherwise (its result stays readable); 404 for anything
    /// a poll would answer 404 (unknown, forged, another task's or owner's), 410 for an expired
    /// token, 503 while the backend is unreachable.
    pub(crate) async fn cancel(&self, id: &str, token: &str, owner: Option<&str>) -> Answer<()> {
        let Ok(id) = id.parse::<RequestId>() else {
            return Answer::Problem(Problem::NotFound);
        };
        let task = match self.token_task(&id, token, owner) {
            Ok(task) => task,
            Err(problem) => return Answer::Problem(problem),
        };
        let snapshot = match self.backend.cancel(id, now_ms()).await {
            Ok(Some(snapshot)) if snapshot.task == task => snapshot,
            Ok(_) => return Answer::Problem(Problem::NotFound),
            Err(error) => return Answer::Problem(self.backend_error(&error)),
        };
        if is_cancelled(&snapshot) {
            tracing::info!(request_id = %id, task, "request cancelled");
            self.accepted(id, token.to_owned(), Status::Failed, snapshot.progress)
        } else {
            tracing::debug!(request_id = %id, task, status = snapshot.status.as_str(), "cancel of a finished request refused");
            Answer::Problem(Problem::Finished)
        }
    }

    /// The registered task whose claims `token` carries for `id` and `owner`: 404 unless one
    /// does (one body for every kind of bad credentials), 410 if it is genuine but expired.
    fn token_task(
        &self,
        id: &RequestId,
        token: &str,
        owner: Option<&str>,
    ) -> Result<&'static str, Problem> {
        let now_secs = now_ms() / 1000;
        let mut expired = false;
        for &task in &self.task_names {
            let claims = Claims { id, task, owner };
            match self.keys.verify(token, &claims, now_secs) {
                Ok(()) => return Ok(task),
                Err(TokenError::Expired) => expired = true,
                Err(TokenError::Invalid) => {}
            }
        }
        Err(if expired {
            Problem::Gone
        } else {
            Problem::NotFound
        })
    }
}

/// Whether the request stands cancelled.
pub(crate) fn is_cancelled(snapshot: &Snapshot) -> bool {
    snapshot.status == Status::Failed
        && snapshot
            .failure
            .as_ref()
            .is_some_and(|failure| failure.kind == FailureKind::Cancelled)
}
