//! How a turn's result becomes its last event: the one place that maps it.
//!
//! The class of a failure, never its message, picks the event: a result completes or
//! blocks, a retryable failure retries with backoff until the attempts are spent, a
//! fatal one fails; a turn stopped by its owner writes nothing, one stopped by its
//! timeout is retried, one stopped by shutdown is handed back (`task.released`).

use std::time::Duration;

use turnq_core::{
    WorkerId,
    event::{
        Blocked, Completed, ErrorClass, Failed, Released, Retrying, TaskEvent, TaskFailure, Usage,
    },
    task::Task,
    time::{self, Timestamp},
};

use crate::{
    backend::{TurnError, TurnOutcome},
    turn::control::StopReason,
};

/// The wait before the attempt after `attempt` fails retryably: 1 s doubling with each
/// attempt, capped at 10 minutes, then spread by ±20% (`unit` is uniform in 0..1) so
/// that tasks failing together do not retry in lockstep.
pub(crate) fn retry_backoff(attempt: i32, unit: f64) -> Duration {
    const CAP_SECS: f64 = 600.0;
    let exponent = attempt.saturating_sub(1).clamp(0, 30);
    let base = 2f64.powi(exponent).min(CAP_SECS);
    let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(base * factor)
}

/// The last event of a turn and the outcome to log, or `None` when nothing may be
/// written (the task is no longer ours). `unit` (uniform in 0..1) jitters the backoff.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ending_event(
    task: &Task,
    worker: &WorkerId,
    result: Result<TurnOutcome, TurnError>,
    stop: Option<StopReason>,
    turn_timeout: Duration,
    backend: &str,
    now: Timestamp,
    unit: f64,
) -> Option<(TaskEvent, &'static str)> {
    let attempt = task.attempt;
    if stop == Some(StopReason::Lost) {
        // Someone else owns the task now (or it was cancelled): any write is refused.
        return None;
    }
    let retry_or_fail = |message: String, usage: Usage| {
        let error = TaskFailure {
            class: ErrorClass::Retryable,
            message,
        };
        if attempt < task.max_attempts {
            let wait = chrono::TimeDelta::from_std(retry_backoff(attempt, unit))
                .unwrap_or(chrono::TimeDelta::MAX);
            let event = TaskEvent::Retrying(Retrying {
                attempt,
                error,
                run_at: time::truncate(now + wait),
                usage,
            });
            (event, "retrying")
        } else {
            let event = TaskEvent::Failed(Failed {
                attempt,
                error,
                usage,
            });
            (event, "failed")
        }
    };
    let ending = match result {
        Ok(TurnOutcome::Completed { summary, usage }) => (
            TaskEvent::Completed(Completed {
                attempt,
                output_summary: summary,
                usage,
            }),
            "completed",
        ),
        Ok(TurnOutcome::Blocked {
            reason,
            usage,
            request,
        }) => (
            TaskEvent::Blocked(Blocked {
                attempt,
                reason,
                usage,
                request,
            }),
            "blocked",
        ),
        Err(TurnError::Retryable { message, usage }) => retry_or_fail(message, usage),
        Err(TurnError::Fatal { message, usage }) => (
            TaskEvent::Failed(Failed {
                attempt,
                error: TaskFailure {
                    class: ErrorClass::Fatal,
                    message,
                },
                usage,
            }),
            "failed",
        ),
        Err(TurnError::Cancelled) => match stop {
            Some(StopReason::TimedOut) => retry_or_fail(
                format!(
                    "turn timed out after {}",
                    humantime::format_duration(turn_timeout)
                ),
                Usage::default(),
            ),
            Some(StopReason::Shutdown) => (
                TaskEvent::Released(Released {
                    attempt,
                    worker_id: worker.0.clone(),
                    reason: "the worker shut down before the turn finished".into(),
                }),
                "released",
            ),
            Some(StopReason::Lost) => return None,
            // Nobody stopped it, yet it says it was cancelled: a backend bug. Treat it
            // as a retryable failure so the task does not sit until its lease expires.
            None => retry_or_fail(
                format!(
                    "the {backend} backend returned Cancelled although the turn was not cancelled"
                ),
                Usage::default(),
            ),
        },
    };
    Some(ending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::task;
    use serde_json::json;

    #[test]
    fn backoff_doubles_per_attempt_is_capped_at_ten_minutes_and_jittered_by_a_fifth() {
        let mid = |attempt| retry_backoff(attempt, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(5), Duration::from_secs(16));
        assert_eq!(mid(10), Duration::from_secs(512));
        assert_eq!(mid(11), Duration::from_secs(600));
        assert_eq!(mid(i32::MAX), Duration::from_secs(600));
        assert_eq!(mid(0), Duration::from_secs(1));
        assert_eq!(mid(-3), Duration::from_secs(1));
        assert_eq!(retry_backoff(1, 0.0), Duration::from_millis(800));
        assert_eq!(retry_backoff(1, 1.0), Duration::from_millis(1200));
        assert_eq!(retry_backoff(20, 1.0), Duration::from_secs(720));
        assert_eq!(retry_backoff(3, 7.0), Duration::from_secs_f64(4.8));
    }

    #[test]
    fn each_result_maps_to_its_event() {
        let t = task(json!("x"));
        let worker = WorkerId("w-1".into());
        let now = time::now();
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cost_usd: 0.5,
        };
        let end = |result, stop| {
            ending_event(
                &t,
                &worker,
                result,
                stop,
                Duration::from_secs(90),
                "script",
                now,
                0.5,
            )
        };

        let (event, outcome) = end(
            Ok(TurnOutcome::Completed {
                summary: "s".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(outcome, "completed");
        assert_eq!(
            event,
            TaskEvent::Completed(Completed {
                attempt: 1,
                output_summary: "s".into(),
                usage
            })
        );

        let (event, _) = end(
            Ok(TurnOutcome::Blocked {
                reason: "r".into(),
                usage,
                request: None,
            }),
            None,
        )
        .unwrap();
        assert_eq!(
            event,
            TaskEvent::Blocked(Blocked {
                attempt: 1,
                reason: "r".into(),
                usage,
                request: None,
            })
        );

        let (event, outcome) = end(
            Err(TurnError::Fatal {
                message: "bad".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(outcome, "failed");
        let TaskEvent::Failed(failed) = event else {
            panic!("{event:?}")
        };
        assert_eq!(failed.error.class, ErrorClass::Fatal);
        assert_eq!(failed.usage, usage);

        let (event, outcome) = end(
            Err(TurnError::Retryable {
                message: "busy".into(),
                usage,
            }),
            None,
        )
        .unwrap();
        assert_eq!(outcome, "retrying");
        let TaskEvent::Retrying(retrying) = event else {
            panic!("{event:?}")
        };
        assert_eq!(retrying.error.message, "busy");
        assert_eq!(
            retrying.run_at,
            time::truncate(now + chrono::TimeDelta::seconds(1))
        );
        assert_eq!(retrying.usage, usage);

        // A completion that raced a shutdown or a timeout still counts.
        let (_, outcome) = end(
            Ok(TurnOutcome::Completed {
                summary: "s".into(),
                usage,
            }),
            Some(StopReason::Shutdown),
        )
        .unwrap();
        assert_eq!(outcome, "completed");
    }

    #[test]
    fn the_last_attempt_fails_instead_of_retrying() {
        let mut t = task(json!("x"));
        t.attempt = 3;
        t.max_attempts = 3;
        let (event, outcome) = ending_event(
            &t,
            &WorkerId("w".into()),
            Err(TurnError::retryable("busy")),
            None,
            Duration::from_secs(1),
            "script",
            time::now(),
            0.5,
        )
        .unwrap();
        assert_eq!(outcome, "failed");
        let TaskEvent::Failed(failed) = event else {
            panic!("{event:?}")
        };
        assert_eq!(failed.error.class, ErrorClass::Retryable);
        assert_eq!(failed.attempt, 3);
    }

    #[test]
    fn a_cancelled_turn_is_recorded_by_why_it_was_stopped() {
        let t = task(json!("x"));
        let worker = WorkerId("w-1".into());
        let end = |stop| {
            ending_event(
                &t,
                &worker,
                Err(TurnError::Cancelled),
                stop,
                Duration::from_secs(90),
                "script",
                time::now(),
                0.5,
            )
        };
        assert!(end(Some(StopReason::Lost)).is_none());

        let (event, outcome) = end(Some(StopReason::TimedOut)).unwrap();
        assert_eq!(outcome, "retrying");
        let TaskEvent::Retrying(retrying) = event else {
            panic!("{event:?}")
        };
        assert_eq!(retrying.error.message, "turn timed out after 1m 30s");

        let (event, outcome) = end(Some(StopReason::Shutdown)).unwrap();
        assert_eq!(outcome, "released");
        assert!(matches!(event, TaskEvent::Released(r) if r.worker_id == "w-1" && r.attempt == 1));

        let (event, _) = end(None).unwrap();
        let TaskEvent::Retrying(retrying) = event else {
            panic!("{event:?}")
        };
        assert!(
            retrying.error.message.contains("not cancelled"),
            "{}",
            retrying.error.message
        );

        // Whatever the backend returned, a lost task gets no write.
        let lost = ending_event(
            &t,
            &worker,
            Ok(TurnOutcome::Completed {
                summary: "s".into(),
                usage: Usage::default(),
            }),
            Some(StopReason::Lost),
            Duration::from_secs(1),
            "script",
            time::now(),
            0.5,
        );
        assert!(lost.is_none());
    }
}
