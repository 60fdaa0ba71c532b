//! Jobs begun by the statement that fetched them, kept until the worker asks for their begin.
//!
//! A fetch leases its jobs and begins them in one `UPDATE` (one row version per job instead of
//! two). The worker then watches each job and calls `begin_many`, which answers from here
//! without a round trip, unless the request may have changed since the fetch: a change this
//! process wrote or heard announced (a cancel is always announced) is "touched" here, and a
//! touched job is read again before it runs. Touches are kept in a bounded log, so one announced
//! before the fetch's reply was read still counts; a log that overflowed, or a listener that
//! reconnected (announcements may be lost), makes every job kept before it count as touched.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::Begin;
use crate::protocol::RequestId;

/// Most touches remembered; older ones are summarized as "everything before may have changed".
const LOG: usize = 4096;
/// Kept jobs beyond which those older than the lease are dropped (a caller that fetched and
/// neither began nor handed back): their lease ran out, so they may have been delivered again.
const KEPT: usize = 4096;

/// What the fetch answered for one job.
#[derive(Debug, Clone)]
pub(super) struct Kept {
    /// The begin the fetch's statement made (or why it did not run the job).
    pub(super) begin: Begin,
    /// The status the request had before the fetch began it (to undo the begin on a hand-back).
    pub(super) was: i16,
    /// Whether a change may have reached the request since the fetch.
    pub(super) touched: bool,
}

#[derive(Default)]
struct State {
    /// Touches made so far.
    seq: u64,
    /// The last `LOG` touches: (its number, the request).
    log: VecDeque<(u64, RequestId)>,
    /// Every job kept before this touch number counts as touched.
    all_before: u64,
    /// The number of the last touch that fell off the log.
    dropped: u64,
    /// (id, delivery) → (touch number when its fetch was sent, when kept, what it answered).
    kept: HashMap<(RequestId, i32), (u64, Instant, Kept)>,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Prebegun {
    state: Mutex<State>,
}

impl Prebegun {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole; a panic inside one cannot split it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The touch number to give `keep` for jobs of a fetch about to be sent.
    pub(super) fn mark(&self) -> u64 {
        self.lock().seq
    }

    /// Keeps what the fetch sent at `mark` answered for job (`id`, `delivery`).
    pub(super) fn keep(
        &self,
        id: RequestId,
        delivery: i32,
        mark: u64,
        kept: Kept,
        lease: Duration,
    ) {
        let mut state = self.lock();
        if state.kept.len() >= KEPT {
            state.kept.retain(|_, (_, at, _)| at.elapsed() < lease);
        }
        state
            .kept
            .insert((id, delivery), (mark, Instant::now(), kept));
    }

    /// Takes what was kept for each job, with whether it was touched since its fetch.
    pub(super) fn take(&self, jobs: impl Iterator<Item = (RequestId, i32)>) -> Vec<Option<Kept>> {
        let mut state = self.lock();
        let taken: Vec<Option<(RequestId, u64, Kept)>> = jobs
            .map(|key| {
                let (mark, _, kept) = state.kept.remove(&key)?;
                Some((key.0, mark, kept))
            })
            .collect();
        let oldest = taken.iter().flatten().map(|(_, mark, _)| *mark).min();
        let since: HashSet<RequestId> = oldest.map_or_else(HashSet::new, |oldest| {
            state
                .log
                .iter()
                .rev()
                .take_while(|(seq, _)| *seq > oldest)
                .map(|(_, id)| *id)
                .collect()
        });
        taken
            .into_iter()
            .map(|entry| {
                entry.map(|(id, mark, mut kept)| {
                    // A touch after the fetch that fell off the log is unknown: count it.
                    kept.touched |=
                        mark < state.all_before || state.dropped > mark || since.contains(&id);
                    kept
                })
            })
            .collect()
    }

    /// Forgets what was kept for a job handed back unbegun; returns it.
    pub(super) fn drop_one(&self, id: RequestId, delivery: i32) -> Option<Kept> {
        self.lock()
            .kept
            .remove(&(id, delivery))
            .map(|(_, _, kept)| kept)
    }

    /// A change to `id` was written by this process or announced to it.
    pub(super) fn touch(&self, id: RequestId) {
        self.touch_many(std::iter::once(id));
    }

    /// Changes to each of `ids`.
    pub(super) fn touch_many(&self, ids: impl Iterator<Item = RequestId>) {
        let mut state = self.lock();
        for id in ids {
            state.seq += 1;
            let seq = state.seq;
            state.log.push_back((seq, id));
            if state.log.len() > LOG {
                if let Some((dropped, _)) = state.log.pop_front() {
                    state.dropped = dropped;
                }
            }
        }
    }

    /// Any request may have changed (announcements were lost).
    pub(super) fn touch_all(&self) {
        let mut state = self.lock();
        state.seq += 1;
        state.all_before = state.seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Kept {
        Kept {
            begin: Begin::Run {
                params: "{}".into(),
                attempt: 1,
                deadline_ms: u64::MAX,
                traceparent: None,
            },
            was: 0,
            touched: false,
        }
    }

    const LEASE: Duration = Duration::from_secs(30);

    fn touched(p: &Prebegun, id: RequestId) -> bool {
        p.take(std::iter::once((id, 1)))[0]
            .as_ref()
            .expect("kept")
            .touched
    }

    #[test]
    fn a_touch_after_the_fetch_was_sent_counts_even_before_the_job_was_kept() {
        let p = Prebegun::default();
        let (a, b) = (RequestId::random(), RequestId::random());
        p.touch(a); // before the fetch: does not count
        let mark = p.mark();
        p.touch(b); // after the fetch was sent, before its reply was read
        p.keep(a, 1, mark, run(), LEASE);
        p.keep(b, 1, mark, run(), LEASE);
        assert!(!touched(&p, a));
        assert!(touched(&p, b));
        assert!(p.take(std::iter::once((a, 1)))[0].is_none(), "taken once");
    }

    #[test]
    fn a_forgotten_touch_or_a_lost_announcement_counts_for_everyone() {
        let p = Prebegun::default();
        let a = RequestId::random();
        let mark = p.mark();
        p.keep(a, 1, mark, run(), LEASE);
        for _ in 0..=LOG {
            p.touch(RequestId::random());
        }
        assert!(touched(&p, a), "the log overflowed after the fetch");
        let mark = p.mark();
        p.keep(a, 1, mark, run(), LEASE);
        assert!(!touched(&p, a), "nothing since");
        p.keep(a, 1, mark, run(), LEASE);
        p.touch_all();
        assert!(touched(&p, a), "the listener reconnected");
    }

    #[test]
    fn a_hand_back_takes_what_was_kept() {
        let p = Prebegun::default();
        let a = RequestId::random();
        p.keep(a, 1, p.mark(), run(), LEASE);
        assert!(p.drop_one(a, 2).is_none(), "another delivery");
        assert!(p.drop_one(a, 1).is_some());
        assert!(p.take(std::iter::once((a, 1)))[0].is_none());
    }
}
