//! The PostgreSQL backend's tests, one binary (feature `postgres`; they start private PostgreSQL
//! servers with initdb + pg_ctl, skipped loudly without PostgreSQL, failing in CI): the
//! conformance suite, several processes, faults and expiry.
#![cfg(feature = "postgres")]

#[path = "../conformance/suite.rs"]
mod conformance;
mod conformance_postgres;
#[path = "../common/node_log.rs"]
mod node_log;
mod postgres_processes;
mod support;
