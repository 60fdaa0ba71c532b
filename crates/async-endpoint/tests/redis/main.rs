//! The Redis backend's tests, one binary (feature `redis`; each test starts its own private
//! `redis-server`, skipped loudly without one, failing in CI): the conformance suite, the
//! backend through HTTP, faults (Redis frozen, restarted, flooded) and several processes.
#![cfg(feature = "redis")]

#[path = "../conformance/suite.rs"]
mod conformance;
mod conformance_cluster;
mod conformance_redis;
#[path = "../common/node_log.rs"]
mod node_log;
mod redis_backend;
mod redis_cluster;
mod redis_faults;
mod redis_processes;
mod redis_sentinel;
mod redis_stream;
mod redis_tls;
