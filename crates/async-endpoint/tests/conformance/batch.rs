//! Batched transitions: [`Backend::begin_many`] and [`Backend::finish_many`] behave as one
//! `begin` / `finish` per job, in order, and a cancel is announced to a worker that watched its
//! job before beginning it (without polling).

use super::*;

/// Fetches every job of `ids` (one fetch takes them all at once), in `ids`' order.
async fn fetch_all<B: Backend>(b: &B, ids: &[RequestId]) -> Vec<Job> {
    let mut found: Vec<Option<Job>> = vec![None; ids.len()];
    for _ in 0..20 {
        let jobs = b
            .fetch(&[TASK], 100, Duration::from_millis(500))
            .await
            .expect("fetch");
        for job in jobs {
            if let Some(at) = ids.iter().position(|id| *id == job.id) {
                found[at] = Some(job);
            }
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
    }
    panic!("not every job of {ids:?} was delivered: {found:?}");
}

pub async fn begin_many_is_one_begin_per_job_in_order<B: Backend + 'static>(b: Arc<B>) {
    let queued = create(&*b, 60_000).await;
    let cancelled = create(&*b, 60_000).await;
    let overdue = create(&*b, -1).await;
    let finished = create(&*b, 60_000).await;
    let second = create(&*b, 60_000).await;
    let ids = [queued.id, cancelled.id, overdue.id, finished.id, second.id];
    let jobs = fetch_all(&*b, &ids).await;
    // `finished` ran and finished on an earlier delivery; `cancelled` was cancelled.
    run(&*b, &jobs[3]).await;
    b.finish(&jobs[3], Outcome::Done("1".into()), now())
        .await
        .unwrap();
    b.cancel(cancelled.id, now()).await.unwrap();

    let begun = b.begin_many(&jobs, now()).await.expect("begin_many");
    assert_eq!(begun.len(), jobs.len(), "one answer per job");
    for (at, request) in [(0, &queued), (4, &second)] {
        match &begun[at] {
            Begin::Run {
                params, attempt, ..
            } => {
                assert_eq!(params, &request.params);
                assert_eq!(*attempt, 1);
            }
            other => panic!("job {at}: expected Run, got {other:?}"),
        }
        assert_eq!(status(&*b, request.id).await, Status::Running);
    }
    assert_eq!(begun[1], Begin::Skip, "a cancelled request does not run");
    assert_eq!(begun[2], Begin::Skip, "an overdue request does not run");
    assert_eq!(begun[3], Begin::Skip, "a finished request does not run");
    let s = b.poll(overdue.id, now()).await.unwrap().unwrap();
    assert_eq!(
        s.failure,
        Some(timeout_failure()),
        "overdue became a timeout"
    );
    assert_eq!(status(&*b, finished.id).await, Status::Done);
    assert!(b.begin_many(&[], now()).await.unwrap().is_empty());
}

pub async fn finish_many_is_one_finish_per_job_in_order<B: Backend + 'static>(b: Arc<B>) {
    let done = create(&*b, 60_000).await;
    let failed = create(&*b, 60_000).await;
    let cancelled = create(&*b, 60_000).await;
    let late = create(&*b, 60_000).await;
    let ids = [done.id, failed.id, cancelled.id, late.id];
    let jobs = fetch_all(&*b, &ids).await;
    b.begin_many(&jobs, now()).await.unwrap();
    b.cancel(cancelled.id, now()).await.unwrap();
    let big = format!("\"{}\"", "x".repeat(20_000));
    let outcomes = [
        (jobs[0].clone(), Outcome::Done(big.clone())),
        (
            jobs[1].clone(),
            Outcome::Failed(StoredFailure::task("declined")),
        ),
        (jobs[2].clone(), Outcome::Done("2".into())),
        (jobs[3].clone(), Outcome::Done("3".into())),
    ];
    // `late` is past its deadline at this `now`, so its outcome becomes a timeout; the others'
    // deadlines are the same, so write them with a `now` before it and `late` alone after.
    let stands = b
        .finish_many(&outcomes[..3], now())
        .await
        .expect("finish_many");
    assert_eq!(stands, vec![Status::Done, Status::Failed, Status::Failed]);
    let late_stands = b
        .finish_many(&outcomes[3..], late.deadline_ms + 1)
        .await
        .unwrap();
    assert_eq!(late_stands, vec![Status::Failed]);

    let s = b.poll(done.id, now()).await.unwrap().unwrap();
    assert_eq!(s.output.as_deref(), Some(big.as_str()));
    let s = b.poll(failed.id, now()).await.unwrap().unwrap();
    assert_eq!(message(&s), Some("declined"));
    let s = b.poll(cancelled.id, now()).await.unwrap().unwrap();
    assert!(is_cancelled(&s), "the cancel stands: {s:?}");
    let s = b.poll(late.id, now()).await.unwrap().unwrap();
    assert_eq!(s.failure, Some(timeout_failure()));

    // Written again (a retry after a lost reply), nothing changes.
    let again = b.finish_many(&outcomes[..3], now()).await.unwrap();
    assert_eq!(again, stands);
    let s = b.poll(done.id, now()).await.unwrap().unwrap();
    assert_eq!(s.output.as_deref(), Some(big.as_str()));
    assert!(b.finish_many(&[], now()).await.unwrap().is_empty());
    // Every job is acknowledged: none is delivered again.
    let redelivered = b
        .fetch(&[TASK], 100, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        redelivered.iter().all(|j| !ids.contains(&j.id)),
        "{redelivered:?}"
    );
}

/// A worker watches its jobs before beginning them and never polls them: a cancel still wakes it.
pub async fn cancel_wakes_a_watch_taken_before_begin<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    let mut watch = b.watch(r.id);
    let begun = b
        .begin_many(std::slice::from_ref(&job), now())
        .await
        .unwrap();
    assert!(matches!(begun[0], Begin::Run { .. }), "{begun:?}");
    b.update(r.id, Update::Progress(Progress::new(1, Some(2), "half")))
        .await
        .unwrap();
    let canceller = {
        let b = b.clone();
        tokio::spawn(async move { b.cancel(r.id, now()).await.unwrap() })
    };
    let until = tokio::time::Instant::now() + LONG;
    // The watch may fire for the writes before the cancel too (a backend may announce them);
    // it must fire for the cancel, so wait until one wake-up finds it cancelled.
    loop {
        tokio::time::timeout_at(until, watch.changed())
            .await
            .expect("the cancel wakes the worker's watch");
        if is_cancelled(&b.poll(r.id, now()).await.unwrap().unwrap()) {
            break;
        }
    }
    assert!(is_cancelled(&canceller.await.unwrap().unwrap()));
}
