//! The arena store: creating an arena with its contestants' tasks, reading arenas back
//! with how each contestant is doing, and picking the winner.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Select, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func},
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ArenaEvent, ArenaView, ChangeCounts, ContestantView, NewArena, STREAM_TYPE, WinnerPicked,
};
use crate::{
    ArenaId, Error, StreamVersion, TaskId,
    agent::AgentRegistry,
    entity::{arenas, pending_changes, tasks},
    error::Result,
    event::{EventStore, NewEvent, StreamRef, Usage},
    task::{LISTED_INPUT_BYTES, PREVIEW_CHARS, TaskState, TaskStore},
    time::{self, Timestamp},
};

/// The most arenas one list returns.
pub const MAX_LIST: u64 = 200;

fn stream_of(id: ArenaId) -> StreamRef {
    StreamRef::new(STREAM_TYPE, id.to_string())
}

fn event_row(
    id: ArenaId,
    version: i64,
    event: &ArenaEvent,
    metadata: &Value,
    at: Timestamp,
) -> crate::entity::events::ActiveModel {
    let (kind, data) = event.to_parts();
    EventStore::row(
        &stream_of(id),
        StreamVersion(version),
        NewEvent {
            kind: kind.into(),
            data,
            metadata: metadata.clone(),
        },
        at,
    )
}

fn not_found(id: ArenaId) -> Error {
    Error::NotFound(format!("arena {id} does not exist"))
}

/// The columns of a contestant's task that the arena shows (not its input, which is
/// the arena's).
#[derive(Debug, FromQueryResult)]
struct ContestantRow {
    id: Uuid,
    arena_id: Option<Uuid>,
    agent: String,
    model: Option<String>,
    state: TaskState,
    session_id: Option<String>,
    output_summary: Option<String>,
    output_truncated: bool,
    last_error: Option<String>,
    started_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
}

/// Creates, reads and decides arenas. Stateless: each method takes the connection.
pub struct ArenaStore;

impl ArenaStore {
    /// Creates the arena in ONE transaction: its row, its `arena.created` event, and
    /// one task per contestant with each task's `task.submitted`, or nothing. An agent
    /// that is not registered refuses the whole arena.
    pub async fn create(
        db: &DatabaseConnection,
        new: NewArena,
        metadata: &Value,
    ) -> Result<ArenaView> {
        let NewArena {
            id,
            mut created,
            tasks,
        } = new;
        let at = time::now();
        let txn = db.begin().await?;
        AgentRegistry::ensure_known(&txn, tasks.iter().map(|t| t.agent.as_str())).await?;
        arenas::Entity::insert(arenas::ActiveModel {
            id: Set(id.0),
            project: Set(created.project.clone()),
            queue: Set(created.queue.clone()),
            input: Set(created.input.clone()),
            contestants: Set(serde_json::to_value(&created.contestants)
                .unwrap_or_else(|e| unreachable!("contestants of strings always serialise: {e}"))),
            winner_task_id: Set(None),
            decided_by: Set(None),
            decided_at: Set(None),
            created_at: Set(at),
        })
        .exec_without_returning(&txn)
        .await?;
        // The tasks first, so the event can name them; all in one transaction.
        let submitted = TaskStore::submit_batch_in(&txn, &tasks, metadata, None, Some(id)).await?;
        created.task_ids = submitted.iter().map(|s| s.task.id).collect();
        let event = ArenaEvent::Created(Box::new(created));
        EventStore::insert(&txn, vec![event_row(id, 1, &event, metadata, at)]).await?;
        txn.commit().await?;
        Self::get(db, id).await
    }

    /// One arena with its contestants; `NotFound` when there is none.
    pub async fn get<C: ConnectionTrait>(db: &C, id: ArenaId) -> Result<ArenaView> {
        let row = arenas::Entity::find_by_id(id.0)
            .one(db)
            .await?
            .ok_or_else(|| not_found(id))?;
        let mut views = Self::views(db, vec![(row, false)], false).await?;
        views.pop().ok_or_else(|| not_found(id))
    }

    /// The newest `limit` arenas (of `project` when given), newest first, as lists
    /// show them: an input over 1 KiB and output summaries over 1,000 characters are
    /// previews, cut in Postgres.
    pub async fn list<C: ConnectionTrait>(
        db: &C,
        project: Option<&str>,
        limit: u64,
    ) -> Result<Vec<ArenaView>> {
        let mut query = arenas::Entity::find();
        if let Some(project) = project {
            // No arena has such a project, but Postgres cannot even compare a text
            // holding NUL.
            crate::storable::no_nul("project", project)?;
            query = query.filter(arenas::Column::Project.eq(project));
        }
        let query = query
            .order_by_desc(arenas::Column::CreatedAt)
            .order_by_desc(arenas::Column::Id)
            .limit(Ord::min(limit, MAX_LIST));
        let rows = listed(query, db).await?;
        Self::views(db, rows, true).await
    }

    /// Picks `task` as the arena's winner, for `by` (the name of their token). Refused,
    /// writing nothing: a task that is not one of the arena's contestants or that did
    /// not complete ([`Error::Invalid`]), an arena already decided
    /// ([`Error::ArenaDecided`]). The row and `arena.winner_picked` are written in one
    /// transaction, conditional on no winner yet, so of two people picking at once one
    /// wins and the other is told who did.
    pub async fn pick_winner(
        db: &DatabaseConnection,
        id: ArenaId,
        task: TaskId,
        by: &str,
        metadata: &Value,
    ) -> Result<ArenaView> {
        let row = arenas::Entity::find_by_id(id.0)
            .one(db)
            .await?
            .ok_or_else(|| not_found(id))?;
        if let Some(decided) = decided(&row) {
            return Err(decided);
        }
        let contestant = tasks::Entity::find_by_id(task.0)
            .select_only()
            .columns([tasks::Column::ArenaId, tasks::Column::State])
            .into_tuple::<(Option<Uuid>, TaskState)>()
            .one(db)
            .await?;
        match contestant {
            Some((Some(arena), TaskState::Completed)) if arena == id.0 => {}
            Some((Some(arena), state)) if arena == id.0 => {
                return Err(Error::Invalid(format!(
                    "task {task} is {state}: only a contestant that completed can win"
                )));
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "task {task} is not a contestant of arena {id}"
                )));
            }
        }
        let at = time::now();
        let txn = db.begin().await?;
        let updated = arenas::Entity::update_many()
            .col_expr(arenas::Column::WinnerTaskId, Expr::value(task.0))
            .col_expr(arenas::Column::DecidedBy, Expr::value(by))
            .col_expr(arenas::Column::DecidedAt, Expr::value(at))
            .filter(arenas::Column::Id.eq(id.0))
            .filter(arenas::Column::WinnerTaskId.is_null())
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            // Someone picked one between our read and our write.
            drop(txn);
            let row = arenas::Entity::find_by_id(id.0)
                .one(db)
                .await?
                .ok_or_else(|| not_found(id))?;
            return Err(decided(&row).unwrap_or_else(|| {
                Error::Corrupt(format!(
                    "arena {id} refused a winner but has none; try again"
                ))
            }));
        }
        let event = ArenaEvent::WinnerPicked(WinnerPicked {
            task_id: task,
            by: by.to_owned(),
        });
        EventStore::insert(&txn, vec![event_row(id, 2, &event, metadata, at)]).await?;
        txn.commit().await?;
        Self::get(db, id).await
    }

    /// The arena's events, oldest first.
    pub async fn events<C: ConnectionTrait>(
        db: &C,
        id: ArenaId,
    ) -> Result<Vec<crate::event::RecordedEvent>> {
        EventStore::read_stream(db, &stream_of(id), StreamVersion::NEW, 100).await
    }

    /// `rows` (each with whether its input is a preview) as views with their
    /// contestants: two queries however many arenas, through `tasks_arena_idx` and
    /// `pending_changes_task_idx`.
    async fn views<C: ConnectionTrait>(
        db: &C,
        rows: Vec<(arenas::Model, bool)>,
        listed: bool,
    ) -> Result<Vec<ArenaView>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows.iter().map(|(r, _)| r.id).collect();
        let (summary, truncated) = if listed {
            (
                format!("left(output_summary, {PREVIEW_CHARS})"),
                format!("coalesce(char_length(output_summary) > {PREVIEW_CHARS}, false)"),
            )
        } else {
            ("output_summary".to_owned(), "false".to_owned())
        };
        use tasks::Column as T;
        let contestants: Vec<ContestantRow> = tasks::Entity::find()
            .select_only()
            .columns([
                T::Id,
                T::ArenaId,
                T::Agent,
                T::Model,
                T::State,
                T::SessionId,
                T::LastError,
                T::StartedAt,
                T::EndedAt,
                T::InputTokens,
                T::OutputTokens,
                T::CostUsd,
            ])
            .column_as(Expr::cust(summary), "output_summary")
            .column_as(Expr::cust(truncated), "output_truncated")
            .filter(T::ArenaId.is_in(ids))
            .into_model::<ContestantRow>()
            .all(db)
            .await?;
        let mut changes: BTreeMap<Uuid, ChangeCounts> = BTreeMap::new();
        let task_ids: Vec<Uuid> = contestants.iter().map(|c| c.id).collect();
        use pending_changes::Column as P;
        for (task, status, n) in pending_changes::Entity::find()
            .select_only()
            .columns([P::TaskId, P::Status])
            .expr(Expr::from(Func::count(Expr::col(P::Id))).cast_as("bigint"))
            .filter(P::TaskId.is_in(task_ids))
            .group_by(P::TaskId)
            .group_by(P::Status)
            .into_tuple::<(Uuid, String, i64)>()
            .all(db)
            .await?
        {
            let counts = changes.entry(task).or_default();
            match status.as_str() {
                "pending" => counts.pending += n,
                "applied" => counts.applied += n,
                "rejected" => counts.rejected += n,
                "reverted" => counts.reverted += n,
                other => {
                    return Err(Error::Corrupt(format!(
                        "pending change of task {task} has status {other:?}"
                    )));
                }
            }
        }
        let mut by_arena: BTreeMap<Uuid, Vec<ContestantRow>> = BTreeMap::new();
        for c in contestants {
            if let Some(arena) = c.arena_id {
                by_arena.entry(arena).or_default().push(c);
            }
        }
        Ok(rows
            .into_iter()
            .map(|(row, input_truncated)| {
                let id = ArenaId(row.id);
                let mut contestants = by_arena.remove(&row.id).unwrap_or_default();
                // In the order they were submitted: contestant `i` runs in session
                // `arena-{id}-{i}`.
                let prefix = format!("arena-{id}-");
                contestants.sort_by_key(|c| {
                    let index = c
                        .session_id
                        .as_deref()
                        .and_then(|s| s.strip_prefix(&prefix))
                        .and_then(|i| i.parse::<usize>().ok());
                    (index, c.id)
                });
                let contestants: Vec<ContestantView> = contestants
                    .into_iter()
                    .map(|c| ContestantView {
                        task_id: TaskId(c.id),
                        agent: c.agent,
                        model: c.model,
                        state: c.state,
                        output_summary: c.output_summary,
                        output_truncated: c.output_truncated,
                        last_error: c.last_error,
                        started_at: c.started_at,
                        ended_at: c.ended_at,
                        duration_ms: c
                            .started_at
                            .zip(c.ended_at)
                            .map(|(s, e)| Ord::max((e - s).num_milliseconds(), 0)),
                        usage: Usage {
                            input_tokens: c.input_tokens,
                            output_tokens: c.output_tokens,
                            cost_usd: c.cost_usd,
                        },
                        changes: changes.get(&c.id).copied().unwrap_or_default(),
                        winner: row.winner_task_id == Some(c.id),
                        session_id: c.session_id,
                    })
                    .collect();
                ArenaView {
                    id,
                    project: row.project,
                    queue: row.queue,
                    input: row.input,
                    input_truncated,
                    ended: contestants.iter().all(|c| c.ended_at.is_some()),
                    contestants,
                    winner_task_id: row.winner_task_id.map(TaskId),
                    decided_by: row.decided_by,
                    decided_at: row.decided_at,
                    created_at: row.created_at,
                }
            })
            .collect())
    }
}

/// The refusal of a second winner, if `row` has one already.
fn decided(row: &arenas::Model) -> Option<Error> {
    row.winner_task_id.map(|winner| Error::ArenaDecided {
        arena: ArenaId(row.id),
        winner: TaskId(winner),
        by: row.decided_by.clone().unwrap_or_default(),
    })
}

/// The arenas `query` finds, each with whether its input is a preview: an input over
/// [`LISTED_INPUT_BYTES`] as JSON text is replaced in Postgres by the first
/// [`PREVIEW_CHARS`] characters of that text, as the task list does.
async fn listed<C: ConnectionTrait>(
    query: Select<arenas::Entity>,
    db: &C,
) -> Result<Vec<(arenas::Model, bool)>> {
    let listed_input = format!(
        "(SELECT CASE WHEN octet_length(t) > {LISTED_INPUT_BYTES} \
           THEN jsonb_build_object('preview', left(t, {PREVIEW_CHARS})) \
           ELSE jsonb_build_object('input', i) END \
         FROM (SELECT input AS i, input::text AS t OFFSET 0) AS listed)"
    );
    use arenas::Column as A;
    let query = query
        .select_only()
        .columns([
            A::Id,
            A::Project,
            A::Queue,
            A::Contestants,
            A::WinnerTaskId,
            A::DecidedBy,
            A::DecidedAt,
            A::CreatedAt,
        ])
        .column_as(Expr::cust(listed_input), "input");
    let statement = query.build(db.get_database_backend());
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|r| {
            let mut row = arenas::Model::from_query_result(r, "")?;
            let Value::Object(mut listed) = std::mem::take(&mut row.input) else {
                return Err(Error::Corrupt(format!(
                    "the listed input of arena {} is not an object",
                    row.id
                )));
            };
            let truncated = match listed.remove("preview") {
                Some(preview) => {
                    row.input = preview;
                    true
                }
                None => {
                    row.input = listed.remove("input").unwrap_or_default();
                    false
                }
            };
            Ok((row, truncated))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::{Context, Result};
    use sea_orm::{ActiveModelTrait, EntityTrait, PaginatorTrait};
    use serde_json::{Value, json};
    use turnq_testkit::TestDb;

    use super::*;
    use crate::{
        WorkerId,
        arena::NewArenaRequest,
        entity::events,
        event::{Completed, ErrorClass, Failed, TaskEvent, TaskFailure},
        task::NewTaskRequest,
    };

    fn meta() -> Value {
        json!({"actor": "test"})
    }

    fn arena(body: Value) -> NewArena {
        serde_json::from_value::<NewArenaRequest>(body)
            .expect("the test's arena parses")
            .validate(time::now())
            .expect("the test's arena is valid")
    }

    fn three() -> NewArena {
        arena(json!({"input": {"prompt": "fix it"}, "project": "p",
            "contestants": [{"agent": "script"}, {"agent": "script", "model": "m2"}, {"agent": "script", "model": "m3"}]}))
    }

    /// Rows of (arenas, tasks, events).
    async fn counts(db: &DatabaseConnection) -> Result<(u64, u64, u64)> {
        Ok((
            arenas::Entity::find().count(db).await?,
            tasks::Entity::find().count(db).await?,
            events::Entity::find().count(db).await?,
        ))
    }

    /// Runs `task` to its end through a worker's writes: `end` is the event that ends it.
    async fn finish(db: &DatabaseConnection, task: TaskId, end: TaskEvent) -> Result<()> {
        let worker = WorkerId("w".into());
        TaskStore::claim(db, task, 0, &worker, Duration::from_secs(3600), &meta())
            .await?
            .context("a fresh contestant is claimable")?;
        TaskStore::record(db, task, 1, &worker, &end, &meta()).await?;
        Ok(())
    }

    fn completed(usage: Usage) -> TaskEvent {
        TaskEvent::Completed(Completed {
            attempt: 1,
            output_summary: "patched".into(),
            usage,
        })
    }

    fn failed() -> TaskEvent {
        TaskEvent::Failed(Failed {
            attempt: 1,
            error: TaskFailure {
                class: ErrorClass::Fatal,
                message: "gave up".into(),
            },
            usage: Usage::default(),
        })
    }

    #[tokio::test]
    async fn an_arena_is_its_row_its_event_and_a_task_per_contestant_in_one_go() -> Result<()> {
        let t = TestDb::new().await?;
        let new = three();
        let id = new.id();
        let view = ArenaStore::create(&t.db, new, &meta()).await?;
        assert_eq!(counts(&t.db).await?, (1, 3, 4));
        assert_eq!(
            (view.project.as_str(), view.queue.as_str()),
            ("p", "default")
        );
        let models: Vec<Option<&str>> = view
            .contestants
            .iter()
            .map(|c| c.model.as_deref())
            .collect();
        assert_eq!(
            models,
            [None, Some("m2"), Some("m3")],
            "in submission order"
        );
        assert!(
            view.contestants
                .iter()
                .all(|c| c.state == TaskState::Pending && !c.winner)
        );
        assert!(!view.ended && view.winner_task_id.is_none());
        for (i, c) in view.contestants.iter().enumerate() {
            let task = TaskStore::get(&t.db, c.task_id).await?;
            assert_eq!(task.arena_id, Some(id.0));
            assert_eq!(task.session_id, Some(format!("arena-{id}-{i}")));
            assert_eq!(task.input, json!({"prompt": "fix it"}));
        }
        let events = ArenaStore::events(&t.db, id).await?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].version, StreamVersion(1));
        let ArenaEvent::Created(created) =
            ArenaEvent::from_parts(&events[0].kind, &events[0].data).map_err(anyhow::Error::msg)?
        else {
            anyhow::bail!("not arena.created: {:?}", events[0]);
        };
        let ids: Vec<TaskId> = view.contestants.iter().map(|c| c.task_id).collect();
        assert_eq!(created.task_ids, ids);
        assert_eq!(created.contestants.len(), 3);
        assert_eq!(events[0].metadata, meta());
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_agent_refuses_the_whole_arena_and_writes_nothing() -> Result<()> {
        let t = TestDb::new().await?;
        let new =
            arena(json!({"input": "x", "contestants": [{"agent": "script"}, {"agent": "ghost"}]}));
        let err = ArenaStore::create(&t.db, new, &meta()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Invalid(m) if m.contains("agent \"ghost\" is not registered")),
            "{err}"
        );
        assert_eq!(counts(&t.db).await?, (0, 0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn a_task_joins_an_arena_only_when_the_arena_is_created() -> Result<()> {
        let t = TestDb::new().await?;
        let view = ArenaStore::create(&t.db, three(), &meta()).await?;
        let before = counts(&t.db).await?;
        for arena_id in [view.id.0, Uuid::now_v7()] {
            let task = serde_json::from_value::<NewTaskRequest>(
                json!({"input": "sneak in", "arena_id": arena_id}),
            )?
            .validate(time::now())?;
            let err = TaskStore::submit(&t.db, task, &meta()).await.unwrap_err();
            assert!(
                matches!(&err, Error::Invalid(m) if m.contains("joins an arena only")),
                "{err}"
            );
        }
        assert_eq!(counts(&t.db).await?, before);
        Ok(())
    }

    #[tokio::test]
    async fn the_winner_is_a_completed_contestant_picked_once() -> Result<()> {
        let t = TestDb::new().await?;
        let view = ArenaStore::create(&t.db, three(), &meta()).await?;
        let id = view.id;
        let [done, gave_up, waiting] = [0, 1, 2].map(|i| view.contestants[i].task_id);
        let usage = Usage {
            input_tokens: 120,
            output_tokens: 30,
            cost_usd: 0.25,
        };
        finish(&t.db, done, completed(usage)).await?;
        finish(&t.db, gave_up, failed()).await?;
        let outsider = TaskStore::submit(
            &t.db,
            serde_json::from_value::<NewTaskRequest>(json!({"input": "other"}))?
                .validate(time::now())?,
            &meta(),
        )
        .await?
        .task
        .id;
        let before = counts(&t.db).await?;
        for (task, expected) in [
            (outsider, "is not a contestant of arena"),
            (TaskId::new(), "is not a contestant of arena"),
            (
                gave_up,
                "is failed: only a contestant that completed can win",
            ),
            (
                waiting,
                "is pending: only a contestant that completed can win",
            ),
        ] {
            let err = ArenaStore::pick_winner(&t.db, id, task, "alice", &meta())
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::Invalid(m) if m.contains(expected)),
                "{err}"
            );
        }
        assert_eq!(
            counts(&t.db).await?,
            before,
            "a refused pick writes nothing"
        );

        let decided = ArenaStore::pick_winner(&t.db, id, done, "alice", &meta()).await?;
        assert_eq!(decided.winner_task_id, Some(done));
        assert_eq!(decided.decided_by.as_deref(), Some("alice"));
        assert!(decided.decided_at.is_some());
        let winners: Vec<bool> = decided.contestants.iter().map(|c| c.winner).collect();
        assert_eq!(winners, [true, false, false]);
        let winner = &decided.contestants[0];
        assert_eq!(winner.usage, usage);
        assert_eq!(winner.output_summary.as_deref(), Some("patched"));
        assert!(winner.duration_ms.is_some_and(|ms| ms >= 0));
        assert_eq!(
            decided.contestants[1].last_error.as_deref(),
            Some("gave up")
        );
        assert!(decided.contestants[2].duration_ms.is_none());
        let kinds: Vec<String> = ArenaStore::events(&t.db, id)
            .await?
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["arena.created", "arena.winner_picked"]);

        let after = counts(&t.db).await?;
        let err = ArenaStore::pick_winner(&t.db, id, done, "bob", &meta())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ArenaDecided { winner, by, .. } if *winner == done && by == "alice"),
            "{err}"
        );
        assert_eq!(counts(&t.db).await?, after);
        assert!(matches!(
            ArenaStore::pick_winner(&t.db, ArenaId::new(), done, "bob", &meta()).await,
            Err(Error::NotFound(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn each_contestant_counts_the_changes_it_proposed_by_status() -> Result<()> {
        let t = TestDb::new().await?;
        let view = ArenaStore::create(&t.db, three(), &meta()).await?;
        let first = view.contestants[0].task_id;
        for status in ["pending", "pending", "applied", "reverted"] {
            pending_changes::ActiveModel {
                id: Set(Uuid::now_v7()),
                session_id: Set("s".into()),
                task_id: Set(Some(first.0)),
                file_path: Set("src/lib.rs".into()),
                operation: Set("edit".into()),
                diff: Set("diff --git".into()),
                status: Set(status.into()),
                agent: Set(None),
                created_at: Set(time::now()),
                project: Set(None),
                worktree_id: Set(None),
                decided_by: Set(None),
                decided_at: Set(None),
                commit_sha: Set(None),
            }
            .insert(&t.db)
            .await?;
        }
        let view = ArenaStore::get(&t.db, view.id).await?;
        let counts = view.contestants[0].changes;
        assert_eq!(
            (
                counts.pending,
                counts.applied,
                counts.rejected,
                counts.reverted
            ),
            (2, 1, 0, 1)
        );
        assert_eq!(counts.total(), 4);
        assert_eq!(view.contestants[1].changes, ChangeCounts::default());
        Ok(())
    }

    #[tokio::test]
    async fn lists_are_newest_first_per_project_with_large_inputs_previewed() -> Result<()> {
        let t = TestDb::new().await?;
        let big = "y".repeat(LISTED_INPUT_BYTES + 10);
        let old = ArenaStore::create(&t.db, three(), &meta()).await?;
        let other = ArenaStore::create(
            &t.db,
            arena(json!({"input": big, "project": "q", "contestants": [{"agent": "script"}, {"agent": "script"}]})),
            &meta(),
        )
        .await?;
        let new = ArenaStore::create(&t.db, three(), &meta()).await?;
        let all: Vec<ArenaId> = ArenaStore::list(&t.db, None, 50)
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(all, [new.id, other.id, old.id]);
        let of_p: Vec<ArenaId> = ArenaStore::list(&t.db, Some("p"), 50)
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(of_p, [new.id, old.id]);
        assert_eq!(ArenaStore::list(&t.db, None, 1).await?.len(), 1);
        let listed = ArenaStore::list(&t.db, Some("q"), 50).await?;
        assert!(listed[0].input_truncated);
        assert_eq!(
            listed[0].input.as_str().map(|s| s.chars().count()),
            Some(PREVIEW_CHARS)
        );
        assert_eq!(listed[0].contestants.len(), 2);
        let whole = ArenaStore::get(&t.db, other.id).await?;
        assert!(!whole.input_truncated && whole.input == json!(big));
        assert!(matches!(
            ArenaStore::get(&t.db, ArenaId::new()).await,
            Err(Error::NotFound(_))
        ));
        Ok(())
    }
}
