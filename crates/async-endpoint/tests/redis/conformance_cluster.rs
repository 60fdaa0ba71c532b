//! The backend conformance suite against a private Redis Cluster (3 masters, 3 replicas; feature
//! `redis-cluster`). One cluster serves every case (each under a prefix of its own), run one
//! after another in one test, so the suite does not start 6 servers per case.
//!
//! The suite builds requests with random ids and never calls [`Backend::place`], which the
//! engine calls before every start; on a cluster the id names the request's shard, so [`Placed`]
//! places each request as the engine would and translates ids between the suite's and the
//! backend's (every call still goes to the real backend). Three cases start requests carrying
//! both pending limits, which a cluster refuses by design (`both_limits_are_refused` checks
//! that); they are left out here.
#![cfg(feature = "redis-cluster")]

use crate::conformance;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_endpoint::backend::{
    Backend, Begin, Created, Job, NewRequest, Outcome, PendingLimits, RedisBackend, Snapshot,
    Update, Watch,
};
use async_endpoint::{Error, RequestId, Status};

/// The backend under test, with the suite's ids translated to placed ones and back.
struct Placed {
    backend: RedisBackend,
    /// suite id → placed id, and placed id → suite id.
    ids: Mutex<(HashMap<RequestId, RequestId>, HashMap<RequestId, RequestId>)>,
}

impl Placed {
    fn new(backend: RedisBackend) -> Self {
        Placed {
            backend,
            ids: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }
    fn to_backend(&self, id: RequestId) -> RequestId {
        self.ids.lock().unwrap().0.get(&id).copied().unwrap_or(id)
    }
    fn to_suite(&self, id: RequestId) -> RequestId {
        self.ids.lock().unwrap().1.get(&id).copied().unwrap_or(id)
    }
    fn job_to_backend(&self, job: &Job) -> Job {
        let mut job = job.clone();
        job.id = self.to_backend(job.id);
        job
    }
}

impl Backend for Placed {
    async fn create(&self, mut request: NewRequest) -> Result<Created, Error> {
        let suite_id = request.id;
        let known = self.ids.lock().unwrap().0.get(&suite_id).copied();
        match known {
            // The suite re-creates a request it made before (same id): same placement.
            Some(placed) => request.id = placed,
            None => {
                self.backend.place(&mut request);
                let mut ids = self.ids.lock().unwrap();
                ids.0.insert(suite_id, request.id);
                ids.1.insert(request.id, suite_id);
            }
        }
        match self.backend.create(request).await? {
            Created::Existing {
                id,
                created_ms,
                same_params,
            } => Ok(Created::Existing {
                id: self.to_suite(id),
                created_ms,
                same_params,
            }),
            other => Ok(other),
        }
    }
    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.backend.poll(self.to_backend(id), now_ms).await
    }
    fn watch(&self, id: RequestId) -> Watch {
        self.backend.watch(self.to_backend(id))
    }
    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, Error> {
        let mut jobs = self.backend.fetch(tasks, max, block).await?;
        for job in &mut jobs {
            job.id = self.to_suite(job.id);
        }
        Ok(jobs)
    }
    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
        self.backend.begin(&self.job_to_backend(job), now_ms).await
    }
    async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
        self.backend.update(self.to_backend(id), update).await
    }
    async fn finish(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Result<Status, Error> {
        self.backend
            .finish(&self.job_to_backend(job), outcome, now_ms)
            .await
    }
    async fn release(&self, job: &Job) -> Result<(), Error> {
        self.backend.release(&self.job_to_backend(job)).await
    }
    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.backend.cancel(self.to_backend(id), now_ms).await
    }
    async fn queue_depth(&self, task: &'static str) -> Result<Option<u64>, Error> {
        self.backend.queue_depth(task).await
    }
    async fn begin_many(&self, jobs: &[Job], now_ms: u64) -> Result<Vec<Begin>, Error> {
        let jobs: Vec<Job> = jobs.iter().map(|job| self.job_to_backend(job)).collect();
        self.backend.begin_many(&jobs, now_ms).await
    }
    async fn finish_many(
        &self,
        finished: &[(Job, Outcome)],
        now_ms: u64,
    ) -> Result<Vec<Status>, Error> {
        let finished: Vec<(Job, Outcome)> = finished
            .iter()
            .map(|(job, outcome)| (self.job_to_backend(job), outcome.clone()))
            .collect();
        self.backend.finish_many(&finished, now_ms).await
    }
}

/// Cases that start requests carrying both pending limits, which a cluster refuses by design
/// (`both_limits_are_refused`).
const BOTH_LIMITS: [&str; 3] = [
    "finished_request_frees_its_slot",
    "request_past_its_deadline_stops_counting_untouched",
    "cancelled_request_frees_its_slot",
];

/// Runs each named case but [`BOTH_LIMITS`] against a fresh backend (prefix of its own) on
/// `cluster`, counting them in `ran`.
macro_rules! cases {
    ($cluster:expr, $ran:ident; $($case:ident),* $(,)?) => {
        $(
            if !BOTH_LIMITS.contains(&stringify!($case)) {
                $ran += 1;
                let backend = RedisBackend::cluster_builder($cluster.urls())
                    .prefix(format!("c{}", $ran))
                    .claim_idle(Duration::from_secs(5))
                    .build()
                    .expect("valid settings");
                eprintln!("cluster conformance: {}", stringify!($case));
                conformance::$case(Arc::new(Placed::new(backend))).await;
            }
        )*
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_cluster() {
    let Some(cluster) = test_support::redis_cluster::start() else {
        return;
    };
    // The suite's whole list, so a case added to it runs here too.
    let mut ran = 0;
    conformance::for_each_case!(cases; cluster, ran);
    assert_eq!(ran, 48);
    // Every key the cases made expires with its TTL (at most 300 s in the suite): none is left
    // without one.
    for key in cluster.key_names() {
        let master = cluster.master_for(&key);
        let ttl = cluster
            .node(master)
            .command(&format!("PTTL {key}"))
            .unwrap();
        assert!(ttl != ":-1", "{key} has no TTL");
    }
}

#[tokio::test]
async fn both_limits_are_refused() {
    let Some(cluster) = test_support::redis_cluster::start() else {
        return;
    };
    let backend = RedisBackend::cluster_builder(cluster.urls())
        .build()
        .unwrap();
    let mut request = NewRequest::new(
        RequestId::random(),
        "task",
        "{}",
        0,
        60_000,
        Duration::from_secs(60),
    );
    request.owner = Some("alice".into());
    let mut limits = PendingLimits::default();
    limits.per_owner = Some(1);
    limits.per_task = Some(1);
    request.limits = limits;
    backend.place(&mut request);
    match backend.create(request).await {
        Err(Error::Config { setting, .. }) => assert_eq!(setting, "max_pending_per_task"),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(cluster.keys(), 0, "nothing was written");
}

/// A task for the endpoint below; it never runs (nothing connects).
struct Never;

impl async_endpoint::AsyncTask for Never {
    const NAME: &'static str = "never";
    type Params = ();
    type Output = ();

    async fn execute_task(
        &self,
        _params: (),
        _ctx: async_endpoint::TaskContext,
    ) -> Result<(), async_endpoint::Failure> {
        Ok(())
    }
}

/// The endpoint is refused when it is built, not on each start: a developer's mistake is a typed
/// error at startup. Nothing connects while building, so no cluster is needed.
#[tokio::test]
async fn both_limits_are_refused_when_the_endpoint_is_built() {
    let port = test_support::free_port();
    let cluster = || {
        RedisBackend::cluster_builder([format!("redis://127.0.0.1:{port}/")])
            .build()
            .unwrap()
    };
    let endpoint = |owner: bool, per_task: Option<u32>| {
        let builder = async_endpoint::AsyncEndpoint::builder()
            .secret(b"cluster-limits-test-secret-0123456789abcdef")
            .backend(cluster())
            .task(Never)
            .in_process_workers(false)
            .max_pending_per_task(per_task);
        if owner {
            builder.owner(|_| Some("alice".to_owned())).build()
        } else {
            builder.build()
        }
    };
    // An owner hook turns the per-owner limit on (200 by default): with a per-task limit too,
    // the cluster cannot keep both atomic.
    match endpoint(true, Some(10)) {
        Err(Error::Config { setting, reason }) => {
            assert_eq!(setting, "max_pending_per_task");
            assert!(reason.contains("max_pending_per_owner"), "{reason}");
        }
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("expected a config error, got an endpoint"),
    }
    // One limit at a time is kept.
    assert!(endpoint(true, None).is_ok(), "per-owner limit alone");
    assert!(endpoint(false, Some(10)).is_ok(), "per-task limit alone");
    // The backend says the same when asked directly; one server keeps both.
    let mut both = PendingLimits::default();
    both.per_owner = Some(1);
    both.per_task = Some(1);
    assert!(cluster().check_limits(&both).is_err());
    let one = RedisBackend::builder(format!("redis://127.0.0.1:{port}/"))
        .build()
        .unwrap();
    assert!(one.check_limits(&both).is_ok());
}
