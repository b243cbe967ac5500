//! The worker registry: which worker processes exist, where, and whether they are alive.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
    sea_query::OnConflict,
};
use serde::Serialize;

use crate::{
    WorkerId,
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
}

/// A row of the registry, as readers see it.
#[derive(Clone, Debug, Serialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub queues: serde_json::Value,
    pub concurrency: i32,
    pub version: String,
    pub started_at: Timestamp,
    pub last_heartbeat_at: Timestamp,
    pub stopped_at: Option<Timestamp>,
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

    pub async fn stopped<C: ConnectionTrait>(db: &C, id: &WorkerId) -> Result<()> {
        let row = workers::ActiveModel {
            id: Set(id.0.clone()),
            stopped_at: Set(Some(time::now())),
            ..Default::default()
        };
        row.update(db).await?;
        Ok(())
    }

    pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<Worker>> {
        Ok(workers::Entity::find()
            .order_by_desc(Column::LastHeartbeatAt)
            .all(db)
            .await?
            .into_iter()
            .map(|m| Worker {
                id: m.id,
                host: m.host,
                pid: m.pid,
                queues: m.queues,
                concurrency: m.concurrency,
                version: m.version,
                started_at: m.started_at,
                last_heartbeat_at: m.last_heartbeat_at,
                stopped_at: m.stopped_at,
            })
            .collect())
    }
}
