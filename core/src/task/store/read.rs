//! Reading tasks and their events.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, Iterable, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Select, sea_query::Expr,
};

use super::{TaskStore, stream_of};
use crate::{
    Error, StreamVersion, TaskId,
    entity::tasks::{self, Column},
    error::Result,
    event::{EventStore, RecordedEvent},
    task::{
        Task, TaskState,
        model::{LISTED_INPUT_BYTES, PREVIEW_CHARS},
    },
    time::Timestamp,
};

/// Filters of `GET /v1/tasks` and the UI; every one given must match.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub agent: Option<String>,
    pub project: Option<String>,
    pub queue: Option<String>,
    pub session: Option<String>,
    /// Created at or after this time; through the primary key (ids are UUIDv7).
    pub created_from: Option<Timestamp>,
    /// Created before this time.
    pub created_to: Option<Timestamp>,
    /// Text the input contains (case-insensitive), searched among the most recent
    /// [`SEARCH_WINDOW`] tasks only, so a search costs the same with a billion tasks.
    pub text: Option<String>,
}

/// How many of the most recent tasks a text search reads. Measured by `turnq bench
/// --scale`: a search over this window stays within the UI's page budget.
pub const SEARCH_WINDOW: u64 = 100_000;

/// `text` as an ILIKE pattern that matches it literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// One page of tasks, newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, serde::Serialize)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<TaskId>,
}

/// The tasks `query` finds, as lists show them ([`Task::listed`]): the previews are cut
/// in Postgres, so a page of tasks with 1 MiB inputs reads a few KiB each, not the
/// inputs (six pages of 500 such tasks once took the API to 2.5 GB).
async fn listed<C: ConnectionTrait>(query: Select<tasks::Entity>, db: &C) -> Result<Vec<Task>> {
    // The input's text is made once per row (`OFFSET 0` keeps Postgres from inlining
    // the subquery, which would serialize it again for each use): measuring it, cutting
    // it and testing it separately made a page of 200 KB inputs 5.7 times slower. The
    // answer is `{"preview": …}` or `{"input": …}`, unwrapped below.
    let listed_input = format!(
        "(SELECT CASE WHEN octet_length(t) > {LISTED_INPUT_BYTES} \
           THEN jsonb_build_object('preview', left(t, {PREVIEW_CHARS})) \
           ELSE jsonb_build_object('input', i) END \
         FROM (SELECT input AS i, input::text AS t OFFSET 0) AS listed)"
    );
    let query = query
        .select_only()
        .columns(Column::iter().filter(|c| !matches!(c, Column::Input | Column::OutputSummary)))
        .column_as(Expr::cust(listed_input), "input")
        .column_as(
            Expr::cust(format!("left(output_summary, {PREVIEW_CHARS})")),
            "output_summary",
        )
        .column_as(
            Expr::cust(format!(
                "coalesce(char_length(output_summary) > {PREVIEW_CHARS}, false)"
            )),
            "output_truncated",
        );
    let statement = query.build(db.get_database_backend());
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| {
            let mut task = Task::from(tasks::Model::from_query_result(row, "")?);
            let serde_json::Value::Object(mut listed) = std::mem::take(&mut task.input) else {
                return Err(Error::Corrupt(format!(
                    "the listed input of task {} is not an object",
                    task.id
                )));
            };
            (task.input, task.input_truncated) = match listed.remove("preview") {
                Some(preview) => (preview, true),
                None => (listed.remove("input").unwrap_or_default(), false),
            };
            task.output_truncated = row.try_get("", "output_truncated")?;
            Ok(task)
        })
        .collect()
}

impl TaskStore {
    pub async fn get<C: ConnectionTrait>(db: &C, id: TaskId) -> Result<Task> {
        tasks::Entity::find_by_id(id.0)
            .one(db)
            .await?
            .map(Task::from)
            .ok_or(Error::TaskNotFound(id))
    }

    /// Tasks newest first, `limit` at a time, after `cursor` (the last id of the previous
    /// page). Ids are UUIDv7, so id order is creation order.
    pub async fn list<C: ConnectionTrait>(
        db: &C,
        filter: &TaskFilter,
        cursor: Option<TaskId>,
        limit: u64,
    ) -> Result<TaskPage> {
        let mut query = Self::matching(db, filter).await?;
        if let Some(cursor) = cursor {
            query = query.filter(Column::Id.lt(cursor.0));
        }
        let mut rows = listed(query.order_by_desc(Column::Id).limit(limit + 1), db).await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let tasks = rows;
        let next_cursor = if more {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    /// The sub-tasks of `parent` (tasks naming it as `parent_task_id`), oldest first.
    pub async fn children<C: ConnectionTrait>(
        db: &C,
        parent: TaskId,
        limit: u64,
    ) -> Result<Vec<Task>> {
        listed(
            tasks::Entity::find()
                .filter(Column::ParentTaskId.eq(parent.0))
                .order_by_asc(Column::Id)
                .limit(limit),
            db,
        )
        .await
    }

    /// The tree under `root`: the root, then its sub-tasks and theirs, level by level
    /// (oldest first within a parent). At most `max` tasks below the root; the flag
    /// says whether more were left out. Each task names its parent, so a client can
    /// rebuild the tree.
    pub async fn tree<C: ConnectionTrait>(
        db: &C,
        root: TaskId,
        max: usize,
    ) -> Result<(Vec<Task>, bool)> {
        let mut out = vec![Self::get(db, root).await?.listed()];
        let mut frontier = vec![root.0];
        while !frontier.is_empty() {
            let room = max.saturating_sub(out.len() - 1);
            if room == 0 {
                let more = tasks::Entity::find()
                    .select_only()
                    .column(Column::Id)
                    .filter(Column::ParentTaskId.is_in(frontier))
                    .into_tuple::<uuid::Uuid>()
                    .one(db)
                    .await?;
                return Ok((out, more.is_some()));
            }
            let level = listed(
                tasks::Entity::find()
                    .filter(Column::ParentTaskId.is_in(frontier))
                    .order_by_asc(Column::ParentTaskId)
                    .order_by_asc(Column::Id)
                    .limit(room as u64 + 1),
                db,
            )
            .await?;
            let truncated = level.len() > room;
            frontier = level.iter().take(room).map(|t| t.id.0).collect();
            out.extend(level.into_iter().take(room));
            if truncated {
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    /// How many tasks match `filter`, counting no further than `cap` (so a count over
    /// millions of tasks stops early); `cap` when there are at least that many.
    pub async fn count_up_to<C: ConnectionTrait>(
        db: &C,
        filter: &TaskFilter,
        cap: u64,
    ) -> Result<u64> {
        let ids = Self::matching(db, filter)
            .await?
            .select_only()
            .column(Column::Id)
            .limit(cap)
            .into_tuple::<uuid::Uuid>()
            .all(db)
            .await?;
        Ok(ids.len() as u64)
    }

    /// The ids of up to `limit` tasks matching `filter`, newest first.
    pub async fn ids_matching<C: ConnectionTrait>(
        db: &C,
        filter: &TaskFilter,
        limit: u64,
    ) -> Result<Vec<TaskId>> {
        let ids = Self::matching(db, filter)
            .await?
            .select_only()
            .column(Column::Id)
            .order_by_desc(Column::Id)
            .limit(limit)
            .into_tuple::<uuid::Uuid>()
            .all(db)
            .await?;
        Ok(ids.into_iter().map(TaskId).collect())
    }

    /// How many tasks there are, estimated from the planner's statistics (a count(*)
    /// reads the whole table).
    pub async fn estimated_total<C: ConnectionTrait>(db: &C) -> Result<u64> {
        let found = tasks::Entity::find()
            .select_only()
            .expr(Expr::cust(
                "(SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'tasks'::regclass)",
            ))
            .limit(1)
            .into_tuple::<i64>()
            .one(db)
            .await?;
        Ok(found.unwrap_or(0).max(0) as u64)
    }

    /// The query of the tasks matching `filter`.
    async fn matching<C: ConnectionTrait>(
        db: &C,
        filter: &TaskFilter,
    ) -> Result<Select<tasks::Entity>> {
        // No task has such a value, but Postgres cannot even compare a text holding NUL.
        for (field, value) in [
            ("agent", &filter.agent),
            ("project", &filter.project),
            ("queue", &filter.queue),
            ("session", &filter.session),
            ("text", &filter.text),
        ] {
            if let Some(value) = value {
                crate::storable::no_nul(field, value)?;
            }
        }
        let mut query = tasks::Entity::find();
        if !filter.states.is_empty() {
            query = query.filter(Column::State.is_in(filter.states.iter().copied()));
        }
        if let Some(agent) = &filter.agent {
            query = query.filter(Column::Agent.eq(agent.as_str()));
        }
        if let Some(project) = &filter.project {
            query = query.filter(Column::Project.eq(project.as_str()));
        }
        if let Some(queue) = &filter.queue {
            query = query.filter(Column::Queue.eq(queue.as_str()));
        }
        if let Some(session) = &filter.session {
            query = query.filter(Column::SessionId.eq(session.as_str()));
        }
        if let Some(from) = filter.created_from {
            // The id bound lets Postgres walk the primary key; the created_at one keeps
            // the meaning exact whatever clock made the id.
            query = query
                .filter(Column::Id.gte(TaskId::first_at(from - chrono::Duration::seconds(1)).0))
                .filter(Column::CreatedAt.gte(from));
        }
        if let Some(to) = filter.created_to {
            query = query
                .filter(Column::Id.lt(TaskId::first_at(to + chrono::Duration::seconds(1)).0))
                .filter(Column::CreatedAt.lt(to));
        }
        if let Some(text) = filter.text.as_deref().filter(|t| !t.is_empty()) {
            let window_start = tasks::Entity::find()
                .select_only()
                .column(Column::Id)
                .order_by_desc(Column::Id)
                .offset(SEARCH_WINDOW - 1)
                .limit(1)
                .into_tuple::<uuid::Uuid>()
                .one(db)
                .await?;
            if let Some(start) = window_start {
                query = query.filter(Column::Id.gte(start));
            }
            query = query.filter(Expr::cust_with_values(
                "input::text ILIKE $1",
                [contains_pattern(text)],
            ));
        }
        Ok(query)
    }

    /// The task's events after `after`, oldest first.
    pub async fn events<C: ConnectionTrait>(
        db: &C,
        id: TaskId,
        after: StreamVersion,
        limit: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let events = EventStore::read_stream(db, &stream_of(id), after, limit).await?;
        if events.is_empty() && after == StreamVersion::NEW {
            // Every task has its `task.submitted`; no events means no task.
            Self::get(db, id).await?;
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Result;
    use serde_json::json;
    use turnq_testkit::TestDb;

    use super::super::fixtures::{meta, running, submitted, worker};
    use super::*;

    #[tokio::test]
    async fn an_unknown_task_is_not_found_by_get_or_events() -> Result<()> {
        let t = TestDb::new().await?;
        let id = TaskId::new();
        assert!(matches!(
            TaskStore::get(&t.db, id).await,
            Err(Error::TaskNotFound(missing)) if missing == id
        ));
        assert!(matches!(
            TaskStore::events(&t.db, id, StreamVersion::NEW, 10).await,
            Err(Error::TaskNotFound(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn events_after_a_version_are_the_later_ones_oldest_first() -> Result<()> {
        let t = TestDb::new().await?;
        let task = running(&t.db, json!({"input": "x"}), &worker("w")).await?;
        TaskStore::cancel(&t.db, task.id, None, &meta()).await?;
        let later = TaskStore::events(&t.db, task.id, StreamVersion(1), 10).await?;
        let seen: Vec<(i64, &str)> = later
            .iter()
            .map(|e| (e.version.0, e.kind.as_str()))
            .collect();
        assert_eq!(seen, [(2, "task.started"), (3, "task.cancelled")]);
        assert!(
            TaskStore::events(&t.db, task.id, StreamVersion(3), 10)
                .await?
                .is_empty(),
            "nothing after the last version, and no error"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_listing_keeps_only_tasks_matching_every_filter_given() -> Result<()> {
        let t = TestDb::new().await?;
        let a = submitted(&t.db, json!({"input": 1, "agent": "a", "queue": "q1"})).await?;
        let b = submitted(&t.db, json!({"input": 2, "agent": "b", "project": "p"})).await?;
        let c = submitted(&t.db, json!({"input": 3, "agent": "a", "project": "p"})).await?;
        TaskStore::cancel(&t.db, c.id, None, &meta()).await?;
        let db = &t.db;
        let ids = move |filter: TaskFilter| async move {
            let page = TaskStore::list(db, &filter, None, 10).await?;
            anyhow::Ok(page.tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        };
        assert_eq!(ids(TaskFilter::default()).await?, [c.id, b.id, a.id]);
        let by_agent = TaskFilter {
            agent: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(ids(by_agent).await?, [c.id, a.id]);
        let by_state = TaskFilter {
            states: vec![TaskState::Cancelled, TaskState::Running],
            ..Default::default()
        };
        assert_eq!(ids(by_state).await?, [c.id]);
        let by_project_and_state = TaskFilter {
            states: vec![TaskState::Pending],
            project: Some("p".into()),
            ..Default::default()
        };
        assert_eq!(ids(by_project_and_state).await?, [b.id]);
        let by_queue = TaskFilter {
            queue: Some("q1".into()),
            ..Default::default()
        };
        assert_eq!(ids(by_queue).await?, [a.id]);
        Ok(())
    }

    #[tokio::test]
    async fn session_time_and_text_filters_keep_only_what_matches() -> Result<()> {
        let t = TestDb::new().await?;
        let a = submitted(
            &t.db,
            json!({"input": "Deploy the 100% build_1", "session_id": "s1"}),
        )
        .await?;
        let b = submitted(
            &t.db,
            json!({"input": {"prompt": "deploy again"}, "session_id": "s2"}),
        )
        .await?;
        let c = submitted(&t.db, json!({"input": "unrelated"})).await?;
        let db = &t.db;
        let ids = move |filter: TaskFilter| async move {
            let page = TaskStore::list(db, &filter, None, 10).await?;
            anyhow::Ok(page.tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        };
        let text = |q: &str| TaskFilter {
            text: Some(q.into()),
            ..Default::default()
        };
        assert_eq!(
            ids(text("DEPLOY")).await?,
            [b.id, a.id],
            "case-insensitive, in JSON too"
        );
        assert_eq!(
            ids(text("100%")).await?,
            [a.id],
            "% is a character, not a wildcard"
        );
        assert_eq!(ids(text("d_1")).await?, [a.id], "_ too");
        assert!(ids(text("0%b")).await?.is_empty());
        let session = TaskFilter {
            session: Some("s2".into()),
            ..Default::default()
        };
        assert_eq!(ids(session).await?, [b.id]);
        let from_b = TaskFilter {
            created_from: Some(b.created_at),
            ..Default::default()
        };
        assert_eq!(ids(from_b).await?, [c.id, b.id]);
        let before_b = TaskFilter {
            created_to: Some(b.created_at),
            ..Default::default()
        };
        assert_eq!(ids(before_b).await?, [a.id]);
        assert_eq!(
            TaskStore::count_up_to(&t.db, &TaskFilter::default(), 2).await?,
            2
        );
        assert_eq!(
            TaskStore::count_up_to(&t.db, &TaskFilter::default(), 10).await?,
            3
        );
        let nul = TaskFilter {
            session: Some("a\0b".into()),
            ..Default::default()
        };
        assert!(matches!(
            TaskStore::list(&t.db, &nul, None, 10).await,
            Err(Error::Invalid(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_tasks_children_are_the_tasks_naming_it_their_parent() -> Result<()> {
        let t = TestDb::new().await?;
        let parent = submitted(&t.db, json!({"input": "p"})).await?;
        let child = submitted(&t.db, json!({"input": "c", "parent_task_id": parent.id})).await?;
        submitted(&t.db, json!({"input": "other"})).await?;
        let children = TaskStore::children(&t.db, parent.id, 10).await?;
        assert_eq!(
            children.iter().map(|c| c.id).collect::<Vec<_>>(),
            [child.id]
        );
        assert!(TaskStore::children(&t.db, child.id, 10).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn pages_run_newest_first_and_the_cursor_continues_after_the_last_task() -> Result<()> {
        let t = TestDb::new().await?;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(submitted(&t.db, json!({"input": i})).await?.id);
        }
        ids.reverse();
        let mut pages = Vec::new();
        let mut cursor = None;
        loop {
            let page = TaskStore::list(&t.db, &TaskFilter::default(), cursor, 2).await?;
            pages.push(page.tasks.iter().map(|t| t.id).collect::<Vec<_>>());
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(
            pages,
            [ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..].to_vec()]
        );
        Ok(())
    }
}
