//! The Prometheus series turnq exposes: their names and descriptions, in one place
//! (`docs/metrics.md` lists the same). The API, the dispatcher and the workers emit them
//! through the `metrics` facade; the process' recorder (in the API crate) renders them
//! at `/metrics` (and a worker's `--metrics-listen`).
//!
//! Counters and histograms are per process, as Prometheus expects (sum them across
//! processes); the gauges named `turnq_queue_*` and `turnq_workers` are read from
//! Postgres at scrape time (cached for a few seconds) and so are the same in every API
//! process.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Tasks accepted by the API. Labels: `queue`, `agent`.
pub const TASKS_SUBMITTED: &str = "turnq_tasks_submitted_total";
/// Turns started (claims that succeeded). Labels: `queue`, `agent`.
pub const TASKS_STARTED: &str = "turnq_tasks_started_total";
/// Turns that completed their task. Labels: `queue`, `agent`.
pub const TASKS_COMPLETED: &str = "turnq_tasks_completed_total";
/// Turns that failed their task for good. Labels: `queue`, `agent`.
pub const TASKS_FAILED: &str = "turnq_tasks_failed_total";
/// Tasks sent back to pending for another attempt: by a worker (a retryable failure),
/// or by a person (`POST …/retry`). Labels: `queue`, `agent`, `by` (`worker`, `person`).
pub const TASKS_RETRIED: &str = "turnq_tasks_retried_total";
/// Tasks cancelled by a person. Labels: `queue`, `agent`.
pub const TASKS_CANCELLED: &str = "turnq_tasks_cancelled_total";
/// Turns that ended blocked (waiting for a person). Labels: `queue`, `agent`.
pub const TASKS_BLOCKED: &str = "turnq_tasks_blocked_total";

/// Seconds from a task being due (its `run_at`, or its submission) to its turn starting.
/// Labels: `queue`, `agent`.
pub const PICKUP_SECONDS: &str = "turnq_task_pickup_seconds";
/// Seconds a turn ran, from its claim to its end being recorded. Labels: `queue`,
/// `agent`, `outcome` (`completed`, `failed`, `retrying`, `blocked`, `released`,
/// `stopped`, `fenced`, `unrecorded`).
pub const TURN_SECONDS: &str = "turnq_turn_duration_seconds";

/// Tokens used by turns. Labels: `agent`, `kind` (`input`, `output`).
pub const TOKENS: &str = "turnq_tokens_total";
/// Money spent by turns, in millionths of a US dollar (the `metrics` facade counts in
/// integers). Labels: `agent`.
pub const COST: &str = "turnq_cost_microdollars_total";

/// Turns running in this worker process now.
pub const WORKER_TURNS_RUNNING: &str = "turnq_worker_turns_running";
/// Claims this worker process made. Labels: `result` (`claimed`: a turn started;
/// `skipped`: the delivery was stale or a duplicate, or its session was busy).
pub const WORKER_CLAIMS: &str = "turnq_worker_claims_total";
/// Turns this worker process stopped because their task was no longer its own
/// (cancelled, or its lease taken over).
pub const WORKER_LEASES_LOST: &str = "turnq_worker_leases_lost_total";
/// Redis failures that made this worker process rebuild a consumer.
pub const WORKER_REDIS_ERRORS: &str = "turnq_worker_redis_errors_total";
/// Postgres outages this worker process noticed (each counted once, when it starts).
pub const WORKER_POSTGRES_ERRORS: &str = "turnq_worker_postgres_errors_total";

/// Tasks of a queue by state, from Postgres. Labels: `queue`, `state` (`pending`,
/// `queued`, `running`, `blocked`, `failed`).
pub const QUEUE_TASKS: &str = "turnq_queue_tasks";
/// How long the longest-due pending task of a queue has been due, in seconds. Labels:
/// `queue`.
pub const QUEUE_OLDEST_PENDING: &str = "turnq_queue_oldest_pending_seconds";
/// Whether a queue is paused (1) or not (0). Labels: `queue`.
pub const QUEUE_PAUSED: &str = "turnq_queue_paused";
/// Workers in the registry by state, from Postgres. Labels: `state` (`live`, `dead`:
/// no heartbeat for a while and never said it stopped; `stopped` is not counted).
pub const WORKERS: &str = "turnq_workers";

/// Registers every description with the process' recorder (call once, after it is
/// installed).
pub fn describe() {
    describe_counter!(TASKS_SUBMITTED, Unit::Count, "Tasks accepted by the API");
    describe_counter!(
        TASKS_STARTED,
        Unit::Count,
        "Turns started (successful claims)"
    );
    describe_counter!(
        TASKS_COMPLETED,
        Unit::Count,
        "Turns that completed their task"
    );
    describe_counter!(
        TASKS_FAILED,
        Unit::Count,
        "Turns that failed their task for good"
    );
    describe_counter!(
        TASKS_RETRIED,
        Unit::Count,
        "Tasks sent back to pending for another attempt, by a worker or a person"
    );
    describe_counter!(TASKS_CANCELLED, Unit::Count, "Tasks cancelled by a person");
    describe_counter!(
        TASKS_BLOCKED,
        Unit::Count,
        "Turns that ended waiting for a person"
    );
    describe_histogram!(
        PICKUP_SECONDS,
        Unit::Seconds,
        "Seconds from a task being due to its turn starting"
    );
    describe_histogram!(
        TURN_SECONDS,
        Unit::Seconds,
        "Seconds a turn ran, from its claim to its recorded end"
    );
    describe_counter!(TOKENS, Unit::Count, "Tokens used by turns");
    describe_counter!(COST, "Money spent by turns, in millionths of a US dollar");
    describe_gauge!(
        WORKER_TURNS_RUNNING,
        Unit::Count,
        "Turns running in this worker process"
    );
    describe_counter!(
        WORKER_CLAIMS,
        Unit::Count,
        "Claims this worker process made"
    );
    describe_counter!(
        WORKER_LEASES_LOST,
        Unit::Count,
        "Turns stopped because their task was no longer this worker's"
    );
    describe_counter!(
        WORKER_REDIS_ERRORS,
        Unit::Count,
        "Redis failures that made this worker rebuild a consumer"
    );
    describe_counter!(
        WORKER_POSTGRES_ERRORS,
        Unit::Count,
        "Postgres outages this worker noticed"
    );
    describe_gauge!(QUEUE_TASKS, Unit::Count, "Tasks of a queue by state");
    describe_gauge!(
        QUEUE_OLDEST_PENDING,
        Unit::Seconds,
        "How long the longest-due pending task of a queue has been due"
    );
    describe_gauge!(QUEUE_PAUSED, "Whether a queue is paused (1) or not (0)");
    describe_gauge!(WORKERS, Unit::Count, "Workers in the registry by state");
}
