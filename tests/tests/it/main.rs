//! Black-box tests of turnq: the real router, dispatcher and workers (or the real
//! `turnq` binary) against real Postgres and Redis. Each test gets its own database,
//! cloned from a migrated template, and its own Redis key prefix.

mod harness;

mod event_log;
mod migrations;
mod replay;
mod tasks;
