//! This process' side of Postgres: everything a worker writes goes through the group
//! commit here, and whether Postgres answers is tracked here.
//!
//! - `group`: the group claimer and writer: the claims of concurrent jobs, and the
//!   writes of every running turn, share transactions.
//! - `health`: whether Postgres answers; an outage pauses the Redis consumers until a
//!   probe (or a heartbeat) gets through.

mod group;
mod health;

pub(crate) use group::{GroupClaimer, GroupWriter};
pub(crate) use health::{PostgresHealth, ping, watch};
