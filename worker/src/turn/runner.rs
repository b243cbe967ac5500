//! Runs the jobs this worker receives: claim their tasks (grouped), then each task's
//! turn to its recorded end, holding one slot of the process' concurrency per turn.

use std::sync::Arc;

use futures::FutureExt;
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tracing::Instrument;
use turnq_core::{
    TaskId, WorkerId,
    agent::{AgentSessions, AgentStatus, Turn as AgentTurn, config_hash},
    delivery::Job,
    error::chain as error_chain,
    event::{Released, TaskEvent, Usage},
    metrics as names,
    session::{PgSessionStore, SessionStore},
    supervise::Supervisor,
    task::{Task, TaskStore},
    time,
};

use crate::{
    WorkerConfig,
    backend::{AgentEntry, Backends, PgSubTasks},
    delivery::Handled,
    record::{GroupClaimer, GroupWriter, PostgresHealth},
    turn::{
        control::Turns,
        drive::{CANCEL_GRACE, drive_turn_reporting},
        workspace::Workspaces,
        write::{DbRecorder, TurnSettings, WRITE_PATIENCE, write_end},
    },
};

/// Runs the jobs this worker receives.
pub(crate) struct Runner {
    db: DatabaseConnection,
    /// Every write of a running turn goes through it (group commit).
    writer: GroupWriter,
    /// Every claim goes through it (claims of concurrent jobs share a transaction).
    claimer: GroupClaimer,
    /// Handed to every turn; on the same connection pool as the task writes.
    sessions: Arc<dyn SessionStore>,
    health: Arc<PostgresHealth>,
    /// The agents this worker runs; replaced when the agent registry changes (a turn
    /// keeps the backend it started with).
    backends: std::sync::RwLock<Arc<Backends>>,
    settings: TurnSettings,
    turns: Turns,
    /// The metadata of every event this worker writes.
    metadata: serde_json::Value,
    /// The git worktrees of tasks that name a repository.
    workspaces: Workspaces,
}

impl Runner {
    pub(crate) fn new(
        db: DatabaseConnection,
        worker: WorkerId,
        config: &WorkerConfig,
        backends: Backends,
        health: Arc<PostgresHealth>,
        tasks: &Supervisor,
    ) -> Self {
        let metadata = json!({"actor": "worker", "worker_id": worker.0});
        let subtasks = Arc::new(PgSubTasks::new(db.clone()));
        let workspaces = Workspaces::new(
            db.clone(),
            config.repo_roots.clone(),
            config.worktree_dir.clone(),
            config.host_name(),
        );
        Runner {
            workspaces,
            sessions: Arc::new(PgSessionStore::new(db.clone())),
            writer: GroupWriter::start(db.clone(), worker.clone(), metadata.clone(), tasks),
            claimer: GroupClaimer::start(
                db.clone(),
                worker.clone(),
                config.lease,
                metadata.clone(),
                tasks,
            ),
            metadata,
            db,
            health,
            backends: std::sync::RwLock::new(Arc::new(backends)),
            settings: TurnSettings {
                worker,
                output_flush: config.output_flush,
                turn_timeout: config.turn_timeout,
                cancel_grace: CANCEL_GRACE,
                write_patience: WRITE_PATIENCE,
                subtasks,
            },
            turns: Turns::default(),
        }
    }

    pub(crate) fn turns(&self) -> &Turns {
        &self.turns
    }

    /// The agents this worker runs now.
    pub(crate) fn backends(&self) -> Arc<Backends> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `backends` from now on (turns already running keep theirs).
    pub(crate) fn set_backends(&self, backends: Backends) {
        *self.backends.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(backends);
    }

    /// Handles one delivery: claims its tasks in one statement and runs their turns
    /// side by side, each holding one of `slots` (one per task of the job) until its turn
    /// ends. It never fails: whatever happened is recorded in Postgres, or a task is
    /// still queued there and is delivered again. When Postgres cannot be reached nothing
    /// was started: Postgres is marked down and the job is to be put back on its queue
    /// ([`Handled::PostgresUnavailable`]).
    pub(crate) async fn run_job(&self, job: Job, mut slots: Vec<OwnedSemaphorePermit>) -> Handled {
        let worker = &self.settings.worker;
        let wanted: Vec<(TaskId, i32)> = job.tasks.iter().map(|t| (t.task_id, t.attempt)).collect();
        let claimed = self.claimer.claim(wanted.clone()).await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) if e.is_unavailable() => {
                // Logged once per outage by `health`; the job goes back to its queue.
                tracing::debug!(tasks = wanted.len(), worker_id = %worker,
                    "Postgres is unreachable, so the job's tasks cannot be claimed");
                self.health.down(&e);
                return Handled::PostgresUnavailable;
            }
            Err(e) if e.is_permanent_refusal() => self.claim_each(&wanted).await,
            Err(e) => {
                tracing::error!(tasks = ?wanted, worker_id = %worker,
                    error = %error_chain(&e), "claiming the job's tasks failed; they stay queued and are delivered again");
                return Handled::Done;
            }
        };
        metrics::counter!(names::WORKER_CLAIMS, "result" => "claimed")
            .increment(claimed.len() as u64);
        metrics::counter!(names::WORKER_CLAIMS, "result" => "skipped")
            .increment(wanted.len().saturating_sub(claimed.len()) as u64);
        if claimed.len() < wanted.len() {
            tracing::debug!(claimed = claimed.len(), delivered = wanted.len(), worker_id = %worker,
                "some tasks were not claimed: their jobs are stale or duplicates (the task is no \
                 longer pending at that attempt), or another turn of their session is running \
                 (they stay queued and are delivered again)");
        }
        // The slots of tasks not claimed are free at once, not when the job's turns end.
        slots.truncate(claimed.len());
        let turns = claimed.into_iter().map(|task| {
            // A task's slot is freed when its own turn ends, not when the job's last does.
            let slot = slots.pop();
            async move { self.run_turn(task, slot).await }
        });
        futures::future::join_all(turns).await;
        Handled::Done
    }

    /// Claims the tasks of a job whose claim together Postgres refused for good, one by
    /// one: the ones whose own claim is refused for good can never start, and end
    /// `failed` with the reason (in the inbox) instead of being delivered and refused
    /// again forever; the others are claimed and run.
    async fn claim_each(&self, wanted: &[(TaskId, i32)]) -> Vec<Task> {
        let worker = &self.settings.worker;
        let mut claimed = Vec::new();
        for &(task, attempt) in wanted {
            match self.claimer.claim(vec![(task, attempt)]).await {
                Ok(one) => claimed.extend(one),
                Err(e) if e.is_permanent_refusal() => {
                    let reason = error_chain(&e);
                    tracing::error!(task_id = %task, attempt, worker_id = %worker, error = %reason,
                        "Postgres refuses to start the task for good: failing it");
                    if let Err(e) = TaskStore::fail_unstartable(
                        &self.db,
                        task,
                        attempt,
                        &reason,
                        &self.metadata,
                    )
                    .await
                    {
                        tracing::warn!(task_id = %task, error = %error_chain(&e),
                            "could not record that the task cannot start; it is delivered again");
                    }
                }
                Err(e) => {
                    tracing::warn!(task_id = %task, worker_id = %worker, error = %error_chain(&e),
                        "claiming the task failed; it stays queued and is delivered again");
                }
            }
        }
        claimed
    }

    /// Runs the turn of a task this worker has just claimed, to its recorded end. Its
    /// `slot` is freed as soon as the backend has returned: recording the end needs no
    /// agent, and the next turn can start meanwhile.
    async fn run_turn(&self, task: Task, slot: Option<OwnedSemaphorePermit>) {
        let worker = &self.settings.worker;
        let started = Instant::now();
        let attempt = task.attempt;
        let labels = [("queue", task.queue.clone()), ("agent", task.agent.clone())];
        metrics::counter!(names::TASKS_STARTED, &labels).increment(1);
        // Due since its run_at, or since it was submitted if that came later.
        let due = task.run_at.max(task.created_at);
        let pickup = (time::now() - due).to_std().unwrap_or_default();
        metrics::histogram!(names::PICKUP_SECONDS, &labels).record(pickup.as_secs_f64());
        let running = metrics::gauge!(names::WORKER_TURNS_RUNNING);
        running.increment(1.0);
        let guard = self.turns.register(task.id, attempt);
        let recorder = DbRecorder {
            writer: &self.writer,
            task: task.id,
            attempt,
        };
        // Every log line of the turn, however deep, names the task, attempt and worker.
        let span = tracing::info_span!("turn", task_id = %task.id, attempt, worker_id = %worker);
        let backends = self.backends();
        let (backend_name, ending, usage) = async {
            match backends.for_task(&task) {
                Ok(entry) => {
                    // The agent session is active while its turn runs.
                    self.record_agent_session(
                        &task,
                        entry,
                        None,
                        (AgentStatus::Active, Usage::default()),
                    )
                    .await;
                    let prepared = match self.workspaces.prepare(&task).await {
                        Ok(prepared) => prepared,
                        Err(e) => {
                            let outcome = self
                                .end_unstarted(&recorder, &task, e, guard.control())
                                .await;
                            return (entry.backend.name(), outcome, Usage::default());
                        }
                    };
                    // The backend runs in the worktree (the `command` backend's working
                    // directory; the `script` backend writes its `files` there).
                    let mut turn_task = task.clone();
                    if let Some(prepared) = &prepared {
                        turn_task.worktree_path = Some(prepared.worktree.path.clone());
                    }
                    let report = drive_turn_reporting(
                        &recorder,
                        entry.backend.clone(),
                        turn_task,
                        self.sessions.clone(),
                        guard.control(),
                        &self.settings,
                        slot,
                        |result, backend_session_id| {
                            let (task, prepared) = (&task, &prepared);
                            async move {
                                if let Some(prepared) = prepared {
                                    self.workspaces.finish(prepared, task).await;
                                }
                                self.record_agent_session(task, entry, backend_session_id, result)
                                    .await;
                            }
                            .boxed()
                        },
                    )
                    .await;
                    let usage = report.result.map(|(_, usage)| usage).unwrap_or_default();
                    (entry.backend.name(), report.outcome, usage)
                }
                // The job's agent is not among the ones this worker runs now: it was
                // removed (the registry changed) after the job was fetched. The task goes
                // back to wait for a worker that runs it; it has not failed.
                Err(message) => {
                    let event = TaskEvent::Released(Released {
                        attempt,
                        worker_id: worker.0.clone(),
                        reason: message,
                    });
                    guard.control().mark_ending();
                    let outcome = write_end(&recorder, event, "released", &self.settings).await;
                    ("none", outcome, Usage::default())
                }
            }
        }
        .instrument(span)
        .await;
        running.decrement(1.0);
        turn_metrics(&task, ending, usage, started.elapsed());
        tracing::info!(
            task_id = %task.id,
            attempt,
            worker_id = %worker,
            backend = backend_name,
            outcome = ending,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "turn ended"
        );
    }

    /// Ends a turn that could not start (its worktree could not be prepared) the way
    /// its error's class says: fatal fails it, retryable retries it with backoff.
    async fn end_unstarted(
        &self,
        recorder: &DbRecorder<'_>,
        task: &Task,
        error: crate::backend::TurnError,
        control: &crate::turn::control::TurnControl,
    ) -> &'static str {
        tracing::warn!(task_id = %task.id, error = %error, "the turn's workspace could not be prepared");
        let Some((event, outcome)) = crate::turn::outcome::ending_event(
            task,
            &self.settings.worker,
            Err(error),
            None,
            self.settings.turn_timeout,
            "workspace",
            time::now(),
            {
                use rand::RngExt;
                rand::rng().random::<f64>()
            },
        ) else {
            return "stopped";
        };
        control.mark_ending();
        write_end(recorder, event, outcome, &self.settings).await
    }

    /// Records the turn in the agent session of (`task.session_id`, `task.agent`) when the
    /// task has a session: `active` when it starts, then `idle` or `crashed` with its
    /// usage when it ends in a result. Logs a failure, never returns one: the task's own
    /// record is what counts.
    async fn record_agent_session(
        &self,
        task: &Task,
        entry: &AgentEntry,
        backend_session_id: Option<String>,
        (status, usage): (AgentStatus, Usage),
    ) {
        let Some(session_id) = &task.session_id else {
            return;
        };
        let turn = AgentTurn {
            project: task.project.clone(),
            session_id: session_id.clone(),
            agent: entry.agent.name.clone(),
            backend: entry.agent.backend.clone(),
            backend_session_id,
            config_hash: config_hash(&entry.agent),
            usage,
            status,
            at: time::now(),
        };
        if let Err(e) = AgentSessions::record_turn(&self.db, turn).await {
            tracing::warn!(task_id = %task.id, session_id = %session_id, agent = %entry.agent.name,
                error = %error_chain(&e),
                "could not record the turn in its agent session; the task is recorded regardless");
        }
    }
}

/// The counters and histograms of a turn that ended with `outcome` (see
/// `drive_turn_reporting`).
fn turn_metrics(task: &Task, outcome: &'static str, usage: Usage, ran: std::time::Duration) {
    let (queue, agent) = (task.queue.clone(), task.agent.clone());
    let labels = [("queue", queue.clone()), ("agent", agent.clone())];
    match outcome {
        "completed" => metrics::counter!(names::TASKS_COMPLETED, &labels).increment(1),
        "failed" => metrics::counter!(names::TASKS_FAILED, &labels).increment(1),
        "blocked" => metrics::counter!(names::TASKS_BLOCKED, &labels).increment(1),
        "retrying" => {
            metrics::counter!(names::TASKS_RETRIED, "queue" => queue.clone(), "agent" => agent.clone(), "by" => "worker")
                .increment(1)
        }
        _ => {}
    }
    metrics::histogram!(names::TURN_SECONDS, "queue" => queue, "agent" => agent.clone(), "outcome" => outcome)
        .record(ran.as_secs_f64());
    metrics::counter!(names::TOKENS, "agent" => agent.clone(), "kind" => "input")
        .increment(u64::try_from(usage.input_tokens).unwrap_or(0));
    metrics::counter!(names::TOKENS, "agent" => agent.clone(), "kind" => "output")
        .increment(u64::try_from(usage.output_tokens).unwrap_or(0));
    // The facade's counters are integers: cost counts whole millionths of a dollar.
    metrics::counter!(names::COST, "agent" => agent)
        .increment((usage.cost_usd.max(0.0) * 1e6).round() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_claim_that_cannot_reach_postgres_marks_it_down_and_asks_for_a_hand_back() {
        // Nothing listens on port 1; the pool connects lazily, so the claim fails.
        let mut options = sea_orm::ConnectOptions::new("postgres://postgres@127.0.0.1:1/none");
        options
            .connect_lazy(true)
            .connect_timeout(Duration::from_millis(200))
            .acquire_timeout(Duration::from_millis(200))
            .sqlx_logging(false);
        let db = sea_orm::Database::connect(options).await.unwrap();
        let health = Arc::new(PostgresHealth::default());
        // Already stopping: the claimer and writer end with the runner, as expected.
        let stopping = tokio_util::sync::CancellationToken::new();
        stopping.cancel();
        let runner = Runner::new(
            db,
            WorkerId("w-1".into()),
            &WorkerConfig::default(),
            Backends::builtin(),
            health.clone(),
            &Supervisor::new(stopping),
        );
        let job = Job::one(TaskId::new(), 0);
        assert_eq!(
            runner.run_job(job, Vec::new()).await,
            Handled::PostgresUnavailable
        );
        assert!(!health.is_up());
        assert!(runner.turns().snapshot().is_empty(), "nothing was started");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_agent_this_worker_no_longer_runs_hands_its_task_back() {
        use turnq_core::task::{NewTaskRequest, TaskState, TaskStore};
        let test = turnq_testkit::TestDb::new().await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = Supervisor::new(stop.clone());
        let runner = Runner::new(
            test.db.clone(),
            WorkerId("w-1".into()),
            &WorkerConfig::default(),
            Backends::builtin(),
            Arc::new(PostgresHealth::default()),
            &tasks,
        );
        // Fetched while `gone` was still run here; then the registry changed.
        let new = NewTaskRequest {
            input: json!("x"),
            agent: Some("gone".into()),
            ..Default::default()
        }
        .validate(time::now())
        .unwrap();
        let task = TaskStore::submit(&test.db, new, &json!({"actor": "test"}))
            .await
            .unwrap()
            .task;
        assert_eq!(
            runner.run_job(Job::one(task.id, 0), Vec::new()).await,
            Handled::Done
        );
        let after = TaskStore::get(&test.db, task.id).await.unwrap();
        assert_eq!(after.state, TaskState::Pending, "handed back, not failed");
        let events = TaskStore::events(&test.db, task.id, turnq_core::StreamVersion::NEW, 10)
            .await
            .unwrap();
        assert_eq!(
            events.last().map(|e| e.kind.as_str()),
            Some("task.released")
        );
        stop.cancel();
    }
}
