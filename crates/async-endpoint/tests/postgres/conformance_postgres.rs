//! The backend conformance suite against the PostgreSQL backend: one private server shared by
//! the tests running at once, a fresh schema per test (skipped with a loud message when
//! PostgreSQL is not installed; failing under `CI=true`).

use crate::conformance;

use std::sync::Arc;
use std::time::Duration;

use async_endpoint::backend::{
    Backend, Begin, Created, Job, NewRequest, Outcome, PostgresBackend, Snapshot, Update, Watch,
};
use async_endpoint::{Error, RequestId, Status};
use test_support::postgres::PostgresServer;

/// A backend that holds its server, so the server lives as long as the test.
struct Served {
    backend: PostgresBackend,
    _server: Arc<PostgresServer>,
}

async fn served() -> Option<Served> {
    let server = crate::support::shared_server()?;
    let backend = PostgresBackend::builder(server.url())
        .schema(crate::support::fresh_schema("conf"))
        .claim_idle(Duration::from_secs(5))
        .pool_size(4)
        .build()
        .expect("valid settings");
    backend.migrate().await.expect("migrated");
    Some(Served {
        backend,
        _server: server,
    })
}

conformance::suite!(served());

impl Backend for Served {
    async fn create(&self, request: NewRequest) -> Result<Created, Error> {
        self.backend.create(request).await
    }
    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.backend.poll(id, now_ms).await
    }
    fn watch(&self, id: RequestId) -> Watch {
        self.backend.watch(id)
    }
    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, Error> {
        self.backend.fetch(tasks, max, block).await
    }
    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
        self.backend.begin(job, now_ms).await
    }
    async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
        self.backend.update(id, update).await
    }
    async fn finish(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Result<Status, Error> {
        self.backend.finish(job, outcome, now_ms).await
    }
    async fn release(&self, job: &Job) -> Result<(), Error> {
        self.backend.release(job).await
    }
    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.backend.cancel(id, now_ms).await
    }
    async fn queue_depth(&self, task: &'static str) -> Result<Option<u64>, Error> {
        self.backend.queue_depth(task).await
    }
    async fn begin_many(&self, jobs: &[Job], now_ms: u64) -> Result<Vec<Begin>, Error> {
        self.backend.begin_many(jobs, now_ms).await
    }
    async fn finish_many(
        &self,
        finished: &[(Job, Outcome)],
        now_ms: u64,
    ) -> Result<Vec<Status>, Error> {
        self.backend.finish_many(finished, now_ms).await
    }
}
