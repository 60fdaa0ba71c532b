//! The HTTP-level tests, one binary: the protocol and security of the endpoint driven through
//! the router, blocking tasks, idempotency keys and races on every backend (the Redis half needs the `redis` feature
//! and a `redis-server`), the README's quick start as a real server, and 10,000 generated polls
//! over TCP, and push-back (pending limits answering 429). With the `actix` feature the protocol
//! suite runs again against the actix-web adapter on a real TCP port (`on_actix`).

mod blocking_task;
mod fuzz_polls;
mod http_cancel;
mod http_idempotency;
mod http_protocol;
mod http_races;
mod http_security;
mod http_stream;
#[cfg(all(feature = "metrics", feature = "testing", feature = "memory"))]
mod metrics;
#[cfg(feature = "actix")]
mod on_actix;
mod push_back;
mod quick_start;
mod support;
#[cfg(feature = "actix")]
mod support_actix;
