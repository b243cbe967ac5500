//! The worker registry: which worker processes exist, where, and whether they are alive.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, sea_query::OnConflict,
};
use serde::{Deserialize, Serialize};

use crate::{
    Error, WorkerId,
    entity::workers::{self, Column},
    error::Result,
    time::{self, Timestamp},
};

/// A worker process as it registers itself.
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub host: String,
    pub pid: i32,
    pub queues: Vec<String>,
    pub concurrency: i32,
    pub version: String,
    /// The agents the worker runs (takes the work of), by name.
    pub agents: Vec<WorkerAgent>,
}

/// One agent a worker runs, as the registry lists it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAgent {
    /// The agent's name (the `agent` of the tasks the worker takes).
    pub name: String,
    /// Its backend kind (`script`, `command`, `openai`).
    pub backend: String,
    /// The version its probe found at the worker's start; `None` when the worker did not
    /// probe it (agents given to `run_with_backends`) and the registry knew none.
    pub version: Option<String>,
}

/// A worker that has not beaten for this long is stale: killed, hung or cut off (a live
/// one beats every few seconds).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a worker runs, from its heartbeat.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// It beat within [`STALE_AFTER`].
    Live,
    /// It has not beaten for [`STALE_AFTER`] and did not say it stopped (kill -9, a hung
    /// host, a network cut); its leases expire and its tasks run elsewhere.
    Stale,
    /// It shut down and said so.
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Live => "live",
            WorkerState::Stale => "stale",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// A row of the registry, as readers see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Serialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub queues: serde_json::Value,
    pub concurrency: i32,
    pub version: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub started_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_heartbeat_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub stopped_at: Option<Timestamp>,
    /// From `stopped_at` and the heartbeat, when it was read.
    pub state: WorkerState,
    /// The agents it runs; empty for a worker registered before the registry listed them.
    pub agents: Vec<WorkerAgent>,
}

impl TryFrom<workers::Model> for Worker {
    type Error = Error;

    fn try_from(m: workers::Model) -> Result<Self> {
        let agents = serde_json::from_value(m.agents).map_err(|e| {
            Error::Corrupt(format!(
                "worker {} has an `agents` column that is not a list of agents: {e}",
                m.id
            ))
        })?;
        let stale_before =
            time::now() - chrono::TimeDelta::from_std(STALE_AFTER).unwrap_or_default();
        let state = if m.stopped_at.is_some() {
            WorkerState::Stopped
        } else if m.last_heartbeat_at < stale_before {
            WorkerState::Stale
        } else {
            WorkerState::Live
        };
        Ok(Worker {
            state,
            id: m.id,
            host: m.host,
            pid: m.pid,
            queues: m.queues,
            concurrency: m.concurrency,
            version: m.version,
            started_at: m.started_at,
            last_heartbeat_at: m.last_heartbeat_at,
            stopped_at: m.stopped_at,
            agents,
        })
    }
}

pub struct WorkerRegistry;

impl WorkerRegistry {
    pub async fn register<C: ConnectionTrait>(db: &C, info: &WorkerInfo) -> Result<()> {
        let at = time::now();
        let row = workers::ActiveModel {
            id: Set(info.id.0.clone()),
            host: Set(info.host.clone()),
            pid: Set(info.pid),
            queues: Set(serde_json::json!(info.queues)),
            concurrency: Set(info.concurrency),
            version: Set(info.version.clone()),
            started_at: Set(at),
            last_heartbeat_at: Set(at),
            stopped_at: Set(None),
            agents: Set(serde_json::json!(info.agents)),
        };
        workers::Entity::insert(row)
            .on_conflict(
                OnConflict::column(Column::Id)
                    .update_columns([Column::LastHeartbeatAt])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        Ok(())
    }

    pub async fn heartbeat<C: ConnectionTrait>(db: &C, id: &WorkerId) -> Result<()> {
        workers::Entity::update_many()
            .col_expr(Column::LastHeartbeatAt, time::now().into())
            .filter(Column::Id.eq(id.0.as_str()))
            .exec(db)
            .await?;
        Ok(())
    }

    /// Records the agents a worker runs now (it reloaded them after a change of the
    /// agent registry).
    pub async fn set_agents<C: ConnectionTrait>(
        db: &C,
        id: &WorkerId,
        agents: &[WorkerAgent],
    ) -> Result<()> {
        workers::Entity::update_many()
            .col_expr(
                Column::Agents,
                sea_orm::sea_query::Expr::value(serde_json::to_value(agents).unwrap_or_default()),
            )
            .filter(Column::Id.eq(id.0.as_str()))
            .exec(db)
            .await?;
        Ok(())
    }

    pub async fn stopped<C: ConnectionTrait>(db: &C, id: &WorkerId) -> Result<()> {
        let row = workers::ActiveModel {
            id: Set(id.0.clone()),
            stopped_at: Set(Some(time::now())),
            ..Default::default()
        };
        row.update(db).await?;
        Ok(())
    }

    /// Workers that have not stopped, split by whether their last heartbeat is newer than
    /// `stale_after`: (live, dead).
    pub async fn live_and_dead<C: ConnectionTrait>(
        db: &C,
        stale_after: std::time::Duration,
    ) -> Result<(u64, u64)> {
        let cutoff = time::now()
            - chrono::TimeDelta::from_std(stale_after).unwrap_or(chrono::TimeDelta::MAX);
        let running = || workers::Entity::find().filter(Column::StoppedAt.is_null());
        let live = running()
            .filter(Column::LastHeartbeatAt.gte(cutoff))
            .count(db)
            .await?;
        let dead = running()
            .filter(Column::LastHeartbeatAt.lt(cutoff))
            .count(db)
            .await?;
        Ok((live, dead))
    }

    /// The (queue, agent) pairs some live worker serves: not stopped, and heard from
    /// within [`STALE_AFTER`]. A task of a pair outside it waits for a worker nobody
    /// runs.
    pub async fn served_pairs<C: ConnectionTrait>(
        db: &C,
    ) -> Result<std::collections::BTreeSet<(String, String)>> {
        let mut pairs = std::collections::BTreeSet::new();
        for (queues, agents, _) in Self::serving(db, STALE_AFTER).await? {
            for queue in &queues {
                for agent in &agents {
                    pairs.insert((queue.clone(), agent.name.clone()));
                }
            }
        }
        Ok(pairs)
    }

    /// The pairs pinned to a host ([`crate::delivery::pinned_agent`]) that a worker of
    /// that host, heard from within `within`, takes: a session's task may be pushed to
    /// its worktree's host exactly when its pinned pair is in it.
    pub async fn pinned_pairs<C: ConnectionTrait>(
        db: &C,
        within: std::time::Duration,
    ) -> Result<std::collections::BTreeSet<(String, String)>> {
        let mut pairs = std::collections::BTreeSet::new();
        for (queues, agents, host) in Self::serving(db, within).await? {
            for queue in &queues {
                for agent in &agents {
                    let pinned = crate::delivery::pinned_agent(&agent.name, &host);
                    pairs.insert((queue.clone(), pinned));
                }
            }
        }
        Ok(pairs)
    }

    /// The queues, agents and host of each worker not stopped and heard from within
    /// `within`.
    async fn serving<C: ConnectionTrait>(
        db: &C,
        within: std::time::Duration,
    ) -> Result<Vec<(Vec<String>, Vec<WorkerAgent>, String)>> {
        let cutoff =
            time::now() - chrono::TimeDelta::from_std(within).unwrap_or(chrono::TimeDelta::MAX);
        let live: Vec<(serde_json::Value, serde_json::Value, String)> = workers::Entity::find()
            .select_only()
            .columns([Column::Queues, Column::Agents, Column::Host])
            .filter(Column::StoppedAt.is_null())
            .filter(Column::LastHeartbeatAt.gte(cutoff))
            .into_tuple()
            .all(db)
            .await?;
        Ok(live
            .into_iter()
            .map(|(queues, agents, host)| {
                (
                    serde_json::from_value(queues).unwrap_or_default(),
                    serde_json::from_value(agents).unwrap_or_default(),
                    host,
                )
            })
            .collect())
    }

    /// Every worker that ever registered, newest heartbeat first.
    pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<Worker>> {
        Self::heard_from_since(db, None).await
    }

    /// The workers heard from (a heartbeat, or their stop) within `within`, newest first:
    /// a worker killed or stopped long ago drops out of the listing.
    pub async fn recent<C: ConnectionTrait>(
        db: &C,
        within: std::time::Duration,
    ) -> Result<Vec<Worker>> {
        let since =
            time::now() - chrono::TimeDelta::from_std(within).unwrap_or(chrono::TimeDelta::MAX);
        Self::heard_from_since(db, Some(since)).await
    }

    async fn heard_from_since<C: ConnectionTrait>(
        db: &C,
        since: Option<Timestamp>,
    ) -> Result<Vec<Worker>> {
        let mut query = workers::Entity::find();
        if let Some(since) = since {
            // The heartbeat is at least as new as the stop (it is written up to it).
            query = query.filter(Column::LastHeartbeatAt.gte(since));
        }
        query
            .order_by_desc(Column::LastHeartbeatAt)
            .all(db)
            .await?
            .into_iter()
            .map(Worker::try_from)
            .collect()
    }
}
