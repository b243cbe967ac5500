//! Black-box tests of turnq: the real router, dispatcher and workers (or the real
//! `turnq` binary) against real Postgres and Redis. Each test gets its own database,
//! cloned from a migrated template, and its own Redis key prefix.

mod agents;
mod agents_e2e;
mod arenas;
mod auth;
mod batching;
mod cli;
mod event_log;
mod fleet;
mod r#loop;
mod metrics;
mod migrations;
mod openapi;
mod outage;
mod queues;
mod replay;
mod request_ids;
mod runtime_role;
mod scheduling;
mod sessions;
mod slow_clients;
mod stats;
mod storable;
mod stream;
mod supervision;
mod tasks;
mod ui;
mod workers;
