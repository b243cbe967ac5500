//! Usage statistics: tasks, tokens and cost from the `tasks` projection, grouped by
//! project, agent or day.
//!
//! Every task counts, whatever its state: a failed or retried attempt spent tokens too.
//! Usage lands on a task as its attempts end, so the numbers of running tasks grow.
//!
//! Depends on the database layer only; knows no HTTP.

use std::{fmt, str::FromStr};

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Alias, Expr, ExprTrait, Func, Order, extension::postgres::PgExpr},
};
use serde::{Deserialize, Serialize};

use crate::{
    Error,
    entity::tasks::{self, Column},
    error::Result,
    time::Timestamp,
};

/// What to group usage by.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Project,
    Agent,
    /// The UTC day a task was created, as `YYYY-MM-DD`.
    Day,
    /// The agent session, as `project/session_id` (tasks without a session are left out).
    Session,
}

impl GroupBy {
    pub const ALL: [GroupBy; 4] = [
        GroupBy::Project,
        GroupBy::Agent,
        GroupBy::Day,
        GroupBy::Session,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Project => "project",
            GroupBy::Agent => "agent",
            GroupBy::Day => "day",
            GroupBy::Session => "session",
        }
    }

    /// The expression the rows are keyed and grouped by. It appears in the SELECT list,
    /// the GROUP BY and the ORDER BY, which Postgres matches by expression, so its
    /// strings are constants written into the SQL: three bound parameters would be three
    /// different expressions.
    fn key(self) -> Expr {
        let text = |s: &str| Expr::Constant(s.into());
        match self {
            GroupBy::Project => Expr::col(Column::Project),
            GroupBy::Agent => Expr::col(Column::Agent),
            // `timezone('UTC', t)` is `t AT TIME ZONE 'UTC'`: the session's TimeZone
            // must not move a task to another day.
            GroupBy::Day => Func::cust("to_char")
                .arg(
                    Func::cust("date_trunc").arg(text("day")).arg(
                        Func::cust("timezone")
                            .arg(text("UTC"))
                            .arg(Expr::col(Column::CreatedAt)),
                    ),
                )
                .arg(text("YYYY-MM-DD"))
                .into(),
            // A session is keyed by its project.
            GroupBy::Session => Expr::col(Column::Project)
                .concatenate(text("/"))
                .concatenate(Expr::col(Column::SessionId)),
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupBy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        GroupBy::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "group_by {s:?} is not one of project, agent, day, session"
                ))
            })
    }
}

/// The usage of one group.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, FromQueryResult)]
pub struct UsageRow {
    /// The project, the agent, the day (`YYYY-MM-DD`, UTC) or the session
    /// (`project/session_id`).
    pub key: String,
    pub tasks: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

pub struct UsageStats;

/// The total cost of a group's tasks.
fn cost() -> Expr {
    Expr::from(Func::sum(Expr::col(Column::CostUsd)))
}

/// The columns of a [`UsageRow`] per group, the group named by `key` (the caller groups).
fn usage_keyed_by(key: Expr) -> sea_orm::Select<tasks::Entity> {
    // SUM of a bigint is a numeric in Postgres; cast back so it reads as i64.
    let sum_i64 =
        |c: Column| Expr::from(Func::cast_as(Func::sum(Expr::col(c)), Alias::new("bigint")));
    tasks::Entity::find()
        .select_only()
        .column_as(key, "key")
        .column_as(Expr::col(Column::Id).count(), "tasks")
        .column_as(sum_i64(Column::InputTokens), "input_tokens")
        .column_as(sum_i64(Column::OutputTokens), "output_tokens")
        .column_as(cost(), "cost_usd")
}

impl UsageStats {
    /// Usage of the tasks created at or after `since` (all when `None`), one row per
    /// group: by day in day order, by project or agent most expensive first (ties by key).
    pub async fn group_by<C: ConnectionTrait>(
        db: &C,
        group_by: GroupBy,
        since: Option<Timestamp>,
    ) -> Result<Vec<UsageRow>> {
        let mut query = usage_keyed_by(group_by.key()).group_by(group_by.key());
        if let Some(since) = since {
            // The id bound walks the primary key (ids are UUIDv7, made at creation)
            // instead of reading every task; created_at keeps the meaning exact.
            query = query
                .filter(
                    Column::Id.gte(crate::TaskId::first_at(since - chrono::Duration::seconds(1)).0),
                )
                .filter(Column::CreatedAt.gte(since));
        }
        if group_by == GroupBy::Session {
            query = query.filter(Column::SessionId.is_not_null());
        }
        query = match group_by {
            GroupBy::Day => query.order_by(group_by.key(), Order::Asc),
            GroupBy::Project | GroupBy::Agent | GroupBy::Session => query
                .order_by(cost(), Order::Desc)
                .order_by(group_by.key(), Order::Asc),
        };
        Ok(query.into_model::<UsageRow>().all(db).await?)
    }
}

impl UsageStats {
    /// The usage of each session of `project` (keyed by session id, most expensive
    /// first): the turns that ran in it, their tokens and cost. Reads the project's
    /// session tasks through `tasks_session_idx`, never the whole table.
    pub async fn sessions_of<C: ConnectionTrait>(db: &C, project: &str) -> Result<Vec<UsageRow>> {
        Ok(usage_keyed_by(Expr::col(Column::SessionId))
            .filter(Column::Project.eq(project))
            .filter(Column::SessionId.is_not_null())
            .group_by(Column::SessionId)
            .order_by(cost(), Order::Desc)
            .order_by(Column::SessionId, Order::Asc)
            .into_model::<UsageRow>()
            .all(db)
            .await?)
    }
}

/// Tasks that ended in one minute, by how.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MinuteCounts {
    pub minute: Timestamp,
    pub completed: i64,
    pub failed: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_parses_its_names_and_refuses_others() {
        for g in GroupBy::ALL {
            assert_eq!(g.as_str().parse::<GroupBy>().unwrap(), g);
        }
        let err = "week".parse::<GroupBy>().unwrap_err().to_string();
        assert_eq!(
            err,
            r#"group_by "week" is not one of project, agent, day, session"#
        );
    }

    /// The keys built in SQL: `project/session_id`, and the UTC day of creation.
    #[tokio::test]
    async fn sessions_are_keyed_by_project_and_days_by_their_utc_date() -> anyhow::Result<()> {
        use crate::task::{NewTaskRequest, TaskStore};
        let t = turnq_testkit::TestDb::new().await?;
        let now = crate::time::now();
        let mut days = std::collections::BTreeMap::<String, i64>::new();
        for body in [
            serde_json::json!({"input": 1, "project": "p", "session_id": "s"}),
            serde_json::json!({"input": 2, "project": "p", "session_id": "s"}),
            serde_json::json!({"input": 3, "project": "q", "session_id": "s"}),
            serde_json::json!({"input": 4}),
        ] {
            let task = serde_json::from_value::<NewTaskRequest>(body)?.validate(now)?;
            let task = TaskStore::submit(&t.db, task, &serde_json::json!({}))
                .await?
                .task;
            *days
                .entry(task.created_at.format("%Y-%m-%d").to_string())
                .or_default() += 1;
        }
        let keys = |rows: Vec<UsageRow>| -> Vec<(String, i64)> {
            rows.into_iter().map(|r| (r.key, r.tasks)).collect()
        };
        assert_eq!(
            keys(UsageStats::group_by(&t.db, GroupBy::Session, None).await?),
            [("p/s".to_owned(), 2), ("q/s".to_owned(), 1)]
        );
        assert_eq!(
            keys(UsageStats::group_by(&t.db, GroupBy::Day, None).await?),
            days.into_iter().collect::<Vec<_>>()
        );
        Ok(())
    }
}
