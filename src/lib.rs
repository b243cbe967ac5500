//! turnq, the library behind the `turnq` binary: the app assembled from its parts.
//!
//! # Layout
//!
//! - [`app`]: [`App::build`] and [`App::run`], the one way turnq is started: by the
//!   binary's `up`, `api` and `worker` commands, by `turnq bench`, and by the black-box
//!   tests (`turnq-tests`).
//! - [`client`]: a client of the live event stream, reconnecting from its cursor, for
//!   the command line and the tests.
//! - [`config`]: the settings of each part as the command line takes them, every one a
//!   flag and an environment variable.
//!
//! The parts themselves live in `turnq-core` (the domain), `turnq-api` (HTTP and the
//! dispatcher) and `turnq-worker` (the worker pool); only this crate wires them
//! together, so `turnq-api` and `turnq-worker` never depend on each other.

pub mod app;
pub mod client;
pub mod config;

pub use app::{ApiPart, App, AppConfig, AppError};
