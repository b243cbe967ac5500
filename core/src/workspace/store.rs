//! What the git operations did, recorded: worktrees, checkpoints and pending changes as
//! rows, each step an event on the worktree's stream (`worktree/{id}`), written in the
//! same transaction as its row, so a session's workspace history reads back from the
//! log and shows in the live stream.
//!
//! Event kinds (docs/events.md): `worktree.created`, `worktree.archived`,
//! `checkpoint.created`, `checkpoint.restored`, `change.proposed`, `change.superseded`,
//! `change.applied`, `change.rejected`, `change.reverted`.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Changes, FileChange, Operation, WorktreeInfo};
use crate::{
    Error,
    agent::AgentSessions,
    entity::{checkpoints, pending_changes, session_entries, session_rewinds, worktrees},
    error::Result,
    event::{EventStore, NewEvent, StreamRef},
    task::Task,
    time::{self, Timestamp},
};

/// The stream type of a worktree's events.
pub const STREAM_TYPE: &str = "worktree";

/// A session's worktree, as the API shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Worktree {
    pub id: Uuid,
    pub project: String,
    pub session_id: String,
    /// The project repository, on `host`.
    pub repo: String,
    pub path: String,
    pub branch: String,
    /// The commit the session started from; pending changes are diffs against it.
    pub base_commit: String,
    /// The branch pending changes are applied onto.
    pub target_branch: String,
    /// The host (worker) the worktree lives on.
    pub host: String,
    /// `active` or `archived`.
    pub status: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub archived_at: Option<Timestamp>,
}

impl From<worktrees::Model> for Worktree {
    fn from(m: worktrees::Model) -> Self {
        Worktree {
            id: m.id,
            project: m.project.unwrap_or_default(),
            session_id: m.session_id.unwrap_or_default(),
            repo: m.repo.unwrap_or_default(),
            path: m.path,
            branch: m.branch.unwrap_or_default(),
            base_commit: m.base_commit.unwrap_or_default(),
            target_branch: m.slug.unwrap_or_default(),
            host: m.host.unwrap_or_default(),
            status: m.status,
            created_at: m.created_at,
            archived_at: m.archived_at,
        }
    }
}

/// A checkpoint: the worktree's files before a turn, and where the transcript was.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Checkpoint {
    pub id: Uuid,
    pub worktree_id: Option<Uuid>,
    pub project: String,
    pub session_id: String,
    /// The turn it was taken before.
    pub task_id: Option<Uuid>,
    pub commit_sha: String,
    pub label: Option<String>,
    /// The session transcript's last entry then (absent: the transcript was empty).
    pub entry_id: Option<i64>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

impl From<checkpoints::Model> for Checkpoint {
    fn from(m: checkpoints::Model) -> Self {
        Checkpoint {
            id: m.id,
            worktree_id: m.worktree_id,
            project: m.project.unwrap_or_default(),
            session_id: m.session_id.unwrap_or(m.chat_id),
            task_id: m.task_id,
            commit_sha: m.commit_sha,
            label: m.label,
            entry_id: m.entry_id,
            created_at: m.created_at,
        }
    }
}

/// One file's change, waiting for a person or decided.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PendingChange {
    pub id: Uuid,
    pub worktree_id: Option<Uuid>,
    pub project: String,
    pub session_id: String,
    /// The turn that made it.
    pub task_id: Option<Uuid>,
    pub agent: Option<String>,
    pub path: String,
    /// `create`, `edit` or `delete`.
    pub operation: String,
    /// The unified diff of the file against the worktree's base commit.
    pub diff: String,
    /// `pending`, `applied`, `rejected`, `reverted`, or `superseded` (a later turn
    /// changed the file again; its change is the pending one).
    pub status: String,
    pub decided_by: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub decided_at: Option<Timestamp>,
    /// The commit an applied change landed in.
    pub commit_sha: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

impl From<pending_changes::Model> for PendingChange {
    fn from(m: pending_changes::Model) -> Self {
        PendingChange {
            id: m.id,
            worktree_id: m.worktree_id,
            project: m.project.unwrap_or_default(),
            session_id: m.session_id,
            task_id: m.task_id,
            agent: m.agent,
            path: m.file_path,
            operation: m.operation,
            diff: m.diff,
            status: m.status,
            decided_by: m.decided_by,
            decided_at: m.decided_at,
            commit_sha: m.commit_sha,
            created_at: m.created_at,
        }
    }
}

impl PendingChange {
    /// The change as the git operations take it.
    pub fn file_change(&self) -> FileChange {
        FileChange {
            path: self.path.clone(),
            operation: match self.operation.as_str() {
                "create" => Operation::Create,
                "delete" => Operation::Delete,
                _ => Operation::Edit,
            },
            diff: self.diff.clone(),
        }
    }
}

/// How a person decided a pending change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Committed onto the target branch.
    Applied,
    /// Not wanted; the worktree keeps the file as it is.
    Rejected,
    /// Undone in the worktree.
    Reverted,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Applied => "applied",
            Decision::Rejected => "rejected",
            Decision::Reverted => "reverted",
        }
    }
}

/// Reads and records workspaces. Stateless: each method takes the connection.
pub struct WorkspaceStore;

impl WorkspaceStore {
    /// The active worktree of (`project`, `session_id`), if any.
    pub async fn active<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
    ) -> Result<Option<Worktree>> {
        Ok(worktrees::Entity::find()
            .filter(worktrees::Column::Project.eq(project))
            .filter(worktrees::Column::SessionId.eq(session_id))
            .filter(worktrees::Column::Status.eq("active"))
            .one(db)
            .await?
            .map(Worktree::from))
    }

    /// The worktrees of a session, newest first (the active one and archived ones).
    pub async fn of_session<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
    ) -> Result<Vec<Worktree>> {
        Ok(worktrees::Entity::find()
            .filter(worktrees::Column::Project.eq(project))
            .filter(worktrees::Column::SessionId.eq(session_id))
            .order_by_desc(worktrees::Column::CreatedAt)
            .limit(100)
            .all(db)
            .await?
            .into_iter()
            .map(Worktree::from)
            .collect())
    }

    /// Records a worktree made for a session on `host`. `replaces` is the session's
    /// previous active worktree (on a host that is gone), archived in the same
    /// transaction; the new one starts from its branch.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_created(
        db: &DatabaseConnection,
        project: &str,
        session_id: &str,
        repo: &str,
        info: &WorktreeInfo,
        target_branch: &str,
        host: &str,
        replaces: Option<&Worktree>,
    ) -> Result<Worktree> {
        let txn = db.begin().await?;
        let at = time::now();
        if let Some(old) = replaces {
            Self::archive_in(
                &txn,
                old.id,
                json!({"reason": format!("re-created on host {host}: {} is gone", old.host)}),
                at,
            )
            .await?;
        }
        let id = Uuid::new_v4();
        let row = worktrees::ActiveModel {
            id: Set(id),
            session_id: Set(Some(session_id.to_owned())),
            project: Set(Some(project.to_owned())),
            path: Set(info.path.display().to_string()),
            branch: Set(Some(info.branch.clone())),
            base_commit: Set(Some(info.base_commit.clone())),
            slug: Set(Some(target_branch.to_owned())),
            status: Set("active".into()),
            created_at: Set(at),
            repo: Set(Some(repo.to_owned())),
            host: Set(Some(host.to_owned())),
            archived_at: Set(None),
        };
        let row = worktrees::Entity::insert(row)
            .exec_with_returning(&txn)
            .await?;
        let worktree = Worktree::from(row);
        if let Some(old) = replaces {
            // The pending changes carry over: the new worktree holds the same work (its
            // branch), so its first turn supersedes them file by file, not twice over.
            pending_changes::Entity::update_many()
                .col_expr(pending_changes::Column::WorktreeId, Some(id).into())
                .filter(pending_changes::Column::WorktreeId.eq(old.id))
                .filter(pending_changes::Column::Status.eq("pending"))
                .exec(&txn)
                .await?;
        }
        append(
            &txn,
            id,
            "worktree.created",
            json!({
                "project": project, "session_id": session_id, "repo": repo,
                "path": worktree.path, "branch": worktree.branch,
                "base_commit": worktree.base_commit, "target_branch": target_branch,
                "host": host, "replaces": replaces.map(|w| w.id),
            }),
            at,
        )
        .await?;
        txn.commit().await?;
        Ok(worktree)
    }

    /// Archives a worktree (its directory is removed by the caller). Idempotent.
    pub async fn archive(db: &DatabaseConnection, id: Uuid, by: Option<&str>) -> Result<Worktree> {
        let txn = db.begin().await?;
        Self::archive_in(&txn, id, json!({"by": by}), time::now()).await?;
        let row = worktrees::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("worktree {id} does not exist")))?;
        txn.commit().await?;
        Ok(Worktree::from(row))
    }

    async fn archive_in<C: ConnectionTrait>(
        db: &C,
        id: Uuid,
        data: Value,
        at: Timestamp,
    ) -> Result<()> {
        let archived = worktrees::Entity::update_many()
            .col_expr(worktrees::Column::Status, "archived".into())
            .col_expr(worktrees::Column::ArchivedAt, Some(at).into())
            .filter(worktrees::Column::Id.eq(id))
            .filter(worktrees::Column::Status.eq("active"))
            .exec(db)
            .await?;
        if archived.rows_affected > 0 {
            append(db, id, "worktree.archived", data, at).await?;
        }
        Ok(())
    }

    /// Records a checkpoint taken before `task`'s turn, with the session transcript's
    /// last entry then.
    pub async fn record_checkpoint(
        db: &DatabaseConnection,
        worktree: &Worktree,
        task: &Task,
        commit_sha: &str,
    ) -> Result<Checkpoint> {
        let txn = db.begin().await?;
        let at = time::now();
        let entry_id = last_entry(&txn, &worktree.project, &worktree.session_id).await?;
        let label = format!("before attempt {} of task {}", task.attempt, task.id);
        let row = checkpoints::ActiveModel {
            id: Set(Uuid::new_v4()),
            chat_id: Set(worktree.session_id.clone()),
            session_id: Set(Some(worktree.session_id.clone())),
            worktree_id: Set(Some(worktree.id)),
            message_id: Set(None),
            commit_sha: Set(commit_sha.to_owned()),
            label: Set(Some(label)),
            created_at: Set(at),
            project: Set(Some(worktree.project.clone())),
            task_id: Set(Some(task.id.0)),
            entry_id: Set(entry_id),
        };
        let row = checkpoints::Entity::insert(row)
            .exec_with_returning(&txn)
            .await?;
        let checkpoint = Checkpoint::from(row);
        append(
            &txn,
            worktree.id,
            "checkpoint.created",
            json!({"checkpoint_id": checkpoint.id, "commit_sha": commit_sha,
                   "task_id": task.id, "entry_id": entry_id}),
            at,
        )
        .await?;
        txn.commit().await?;
        Ok(checkpoint)
    }

    /// The checkpoints of a session, newest first.
    pub async fn checkpoints<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
    ) -> Result<Vec<Checkpoint>> {
        Ok(checkpoints::Entity::find()
            .filter(checkpoints::Column::Project.eq(project))
            .filter(checkpoints::Column::SessionId.eq(session_id))
            .order_by_desc(checkpoints::Column::CreatedAt)
            .limit(1000)
            .all(db)
            .await?
            .into_iter()
            .map(Checkpoint::from)
            .collect())
    }

    pub async fn checkpoint<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Checkpoint> {
        checkpoints::Entity::find_by_id(id)
            .one(db)
            .await?
            .map(Checkpoint::from)
            .ok_or_else(|| Error::NotFound(format!("checkpoint {id} does not exist")))
    }

    /// Records a restore of `checkpoint` (its files are already back): the session
    /// transcript is rewound to the checkpoint (the entries written since are hidden
    /// from `load`, never deleted), the session's agent sessions are closed (the next
    /// turn starts a fresh backend conversation from the rewound transcript), and
    /// `checkpoint.restored` is recorded. Returns how many entries were hidden.
    /// `txn` holds the session quiet ([`WorkspaceStore::hold_session`]) since before
    /// the files were put back; it commits here.
    pub async fn record_restore(
        txn: sea_orm::DatabaseTransaction,
        checkpoint: &Checkpoint,
        by: Option<&str>,
    ) -> Result<u64> {
        let at = time::now();
        let project = &checkpoint.project;
        let session = &checkpoint.session_id;
        let last = last_entry(&txn, project, session).await?;
        let after = checkpoint.entry_id.unwrap_or(0);
        let mut hidden = 0;
        if let Some(last) = last.filter(|last| *last > after) {
            hidden = session_entries::Entity::find()
                .select_only()
                .column(session_entries::Column::Id)
                .filter(session_entries::Column::ProjectKey.eq(project.as_str()))
                .filter(session_entries::Column::SessionId.eq(session.as_str()))
                .filter(session_entries::Column::Id.gt(after))
                .filter(session_entries::Column::Id.lte(last))
                .into_tuple::<i64>()
                .all(&txn)
                .await?
                .len() as u64;
            session_rewinds::Entity::insert(session_rewinds::ActiveModel {
                project_key: Set(project.clone()),
                session_id: Set(session.clone()),
                hide_after: Set(after),
                hide_through: Set(last),
                checkpoint_id: Set(Some(checkpoint.id)),
                created_at: Set(at),
                ..Default::default()
            })
            .exec(&txn)
            .await?;
        }
        AgentSessions::close_session(&txn, project, session).await?;
        if let Some(worktree) = checkpoint.worktree_id {
            append(
                &txn,
                worktree,
                "checkpoint.restored",
                json!({"checkpoint_id": checkpoint.id, "commit_sha": checkpoint.commit_sha,
                       "entries_hidden": hidden, "by": by}),
                at,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(hidden)
    }

    /// Records the changes a turn of `task` left in `worktree` (all of the worktree's
    /// changes against its base): a file whose diff is new or differs from its pending
    /// change becomes a new pending change, superseding the earlier one; a file no
    /// longer changed supersedes its pending change with nothing. Returns the new
    /// pending changes.
    pub async fn record_changes(
        db: &DatabaseConnection,
        worktree: &Worktree,
        task: &Task,
        changes: &Changes,
    ) -> Result<Vec<PendingChange>> {
        let txn = db.begin().await?;
        let at = time::now();
        let pending = pending_changes::Entity::find()
            .filter(pending_changes::Column::WorktreeId.eq(worktree.id))
            .filter(pending_changes::Column::Status.eq("pending"))
            .all(&txn)
            .await?;
        // A file whose change a person already applied or rejected is still changed
        // against the base (which never moves): the same diff is that decision, not a
        // new proposal.
        let decided: std::collections::BTreeMap<String, String> = pending_changes::Entity::find()
            .filter(pending_changes::Column::WorktreeId.eq(worktree.id))
            .filter(pending_changes::Column::Status.is_in(["applied", "rejected"]))
            .order_by_asc(pending_changes::Column::DecidedAt)
            .all(&txn)
            .await?
            .into_iter()
            .map(|row| (row.file_path, row.diff))
            .collect();
        let mut proposed = Vec::new();
        for old in &pending {
            let now = changes.files.iter().find(|f| f.path == old.file_path);
            if now.is_none_or(|f| f.diff != old.diff) {
                supersede(&txn, worktree.id, old, at).await?;
            }
        }
        for file in &changes.files {
            let same = pending
                .iter()
                .any(|old| old.file_path == file.path && old.diff == file.diff);
            if same || decided.get(&file.path) == Some(&file.diff) {
                continue;
            }
            let row = pending_changes::ActiveModel {
                id: Set(Uuid::new_v4()),
                session_id: Set(worktree.session_id.clone()),
                task_id: Set(Some(task.id.0)),
                file_path: Set(file.path.clone()),
                operation: Set(file.operation.as_str().to_owned()),
                diff: Set(file.diff.clone()),
                status: Set("pending".into()),
                agent: Set(Some(task.agent.clone())),
                created_at: Set(at),
                project: Set(Some(worktree.project.clone())),
                worktree_id: Set(Some(worktree.id)),
                decided_by: Set(None),
                decided_at: Set(None),
                commit_sha: Set(None),
            };
            let row = pending_changes::Entity::insert(row)
                .exec_with_returning(&txn)
                .await?;
            append(
                &txn,
                worktree.id,
                "change.proposed",
                json!({"change_id": row.id, "path": row.file_path, "operation": row.operation,
                       "task_id": task.id, "agent": task.agent}),
                at,
            )
            .await?;
            proposed.push(PendingChange::from(row));
        }
        for (path, why) in &changes.refused {
            append(
                &txn,
                worktree.id,
                "change.refused",
                json!({"path": path, "why": why, "task_id": task.id}),
                at,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(proposed)
    }

    /// The changes of a session, oldest first; `status` narrows them (`pending`, …).
    pub async fn changes<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
        status: Option<&str>,
    ) -> Result<Vec<PendingChange>> {
        let mut query = pending_changes::Entity::find()
            .filter(pending_changes::Column::Project.eq(project))
            .filter(pending_changes::Column::SessionId.eq(session_id));
        if let Some(status) = status {
            query = query.filter(pending_changes::Column::Status.eq(status));
        }
        Ok(query
            .order_by_asc(pending_changes::Column::CreatedAt)
            .order_by_asc(pending_changes::Column::FilePath)
            .limit(10_000)
            .all(db)
            .await?
            .into_iter()
            .map(PendingChange::from)
            .collect())
    }

    /// The changes made by `task`'s turns (for an arena's comparison).
    pub async fn changes_of_task<C: ConnectionTrait>(
        db: &C,
        task: Uuid,
    ) -> Result<Vec<PendingChange>> {
        Ok(pending_changes::Entity::find()
            .filter(pending_changes::Column::TaskId.eq(task))
            .order_by_asc(pending_changes::Column::FilePath)
            .all(db)
            .await?
            .into_iter()
            .map(PendingChange::from)
            .collect())
    }

    pub async fn change<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<PendingChange> {
        pending_changes::Entity::find_by_id(id)
            .one(db)
            .await?
            .map(PendingChange::from)
            .ok_or_else(|| Error::NotFound(format!("change {id} does not exist")))
    }

    pub async fn worktree<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Worktree> {
        worktrees::Entity::find_by_id(id)
            .one(db)
            .await?
            .map(Worktree::from)
            .ok_or_else(|| Error::NotFound(format!("worktree {id} does not exist")))
    }

    /// Holds pending changes of `worktree` for a person's decision: the chosen ones
    /// (`ids`; `None`: every pending one), each of which must be pending, locked until
    /// [`Held::record`] or drop. With `quiet_session`, also the session's open tasks,
    /// none of which may be running: a turn cannot start (its claim waits) while the
    /// worktree's files are changed. Git runs while it is held, so a change decided or
    /// superseded meanwhile, or a turn starting, cannot slip between the git step and
    /// its record.
    pub async fn hold(
        db: &DatabaseConnection,
        worktree: &Worktree,
        ids: Option<&[Uuid]>,
        quiet_session: bool,
    ) -> Result<Held> {
        let txn = db.begin().await?;
        if quiet_session {
            quiet(&txn, worktree).await?;
        }
        if ids.is_some_and(<[Uuid]>::is_empty) {
            return Err(Error::Invalid(
                "ids is empty: name at least one change".into(),
            ));
        }
        let mut query = pending_changes::Entity::find()
            .filter(pending_changes::Column::WorktreeId.eq(worktree.id))
            .filter(pending_changes::Column::Status.eq("pending"));
        if let Some(ids) = ids {
            query = query.filter(pending_changes::Column::Id.is_in(ids.iter().copied()));
        }
        let rows = query
            .order_by_asc(pending_changes::Column::FilePath)
            .lock(sea_orm::sea_query::LockType::Update)
            .all(&txn)
            .await?;
        if let Some(ids) = ids
            && let Some(missing) = ids.iter().find(|id| !rows.iter().any(|r| r.id == **id))
        {
            let why = match Self::change(&txn, *missing).await {
                Ok(c) if c.session_id != worktree.session_id || c.project != worktree.project => {
                    format!(
                        "change {missing} is not a change of session {}",
                        worktree.session_id
                    )
                }
                Ok(c) => format!(
                    "change {missing} to {} is {}, not pending in the active worktree",
                    c.path, c.status
                ),
                Err(_) => format!("change {missing} does not exist"),
            };
            return Err(Error::Invalid(why));
        }
        if rows.is_empty() {
            return Err(Error::Invalid(format!(
                "session {} has no pending changes",
                worktree.session_id
            )));
        }
        Ok(Held {
            txn,
            changes: rows.into_iter().map(PendingChange::from).collect(),
        })
    }

    /// Holds the session of `worktree` quiet (its open tasks locked, none running) for a
    /// change of its files that is not a decision on changes (a checkpoint restore).
    pub async fn hold_session(
        db: &DatabaseConnection,
        worktree: &Worktree,
    ) -> Result<sea_orm::DatabaseTransaction> {
        let txn = db.begin().await?;
        quiet(&txn, worktree).await?;
        Ok(txn)
    }
}

/// Pending changes held for a decision ([`WorkspaceStore::hold`]).
pub struct Held {
    txn: sea_orm::DatabaseTransaction,
    changes: Vec<PendingChange>,
}

impl Held {
    pub fn changes(&self) -> &[PendingChange] {
        &self.changes
    }

    /// Records the decision on every held change by `by` (and the commit an apply
    /// made), each with its event, and lets them go.
    pub async fn record(
        self,
        decision: Decision,
        by: Option<&str>,
        commit_sha: Option<&str>,
    ) -> Result<Vec<PendingChange>> {
        let at = time::now();
        let ids: Vec<Uuid> = self.changes.iter().map(|c| c.id).collect();
        let rows = pending_changes::Entity::update_many()
            .col_expr(pending_changes::Column::Status, decision.as_str().into())
            .col_expr(
                pending_changes::Column::DecidedBy,
                by.map(str::to_owned).into(),
            )
            .col_expr(pending_changes::Column::DecidedAt, Some(at).into())
            .col_expr(
                pending_changes::Column::CommitSha,
                commit_sha.map(str::to_owned).into(),
            )
            .filter(pending_changes::Column::Id.is_in(ids))
            .exec_with_returning(&self.txn)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(worktree) = row.worktree_id {
                append(
                    &self.txn,
                    worktree,
                    &format!("change.{}", decision.as_str()),
                    json!({"change_id": row.id, "path": row.file_path, "by": by,
                           "commit_sha": commit_sha}),
                    at,
                )
                .await?;
            }
            out.push(PendingChange::from(row));
        }
        self.txn.commit().await?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// Locks the open tasks of the worktree's session; refuses when one is running.
async fn quiet<C: ConnectionTrait>(db: &C, worktree: &Worktree) -> Result<()> {
    use crate::{entity::tasks, task::TaskState};
    let open: Vec<(Uuid, TaskState)> = tasks::Entity::find()
        .select_only()
        .columns([tasks::Column::Id, tasks::Column::State])
        .filter(tasks::Column::Project.eq(worktree.project.as_str()))
        .filter(tasks::Column::SessionId.eq(worktree.session_id.as_str()))
        .filter(tasks::Column::State.is_in([
            TaskState::Pending,
            TaskState::Running,
            TaskState::Blocked,
        ]))
        .lock(sea_orm::sea_query::LockType::Update)
        .into_tuple()
        .all(db)
        .await?;
    match open.iter().find(|(_, state)| *state == TaskState::Running) {
        Some((task, _)) => Err(Error::Conflict(format!(
            "task {task} of the session is running in the worktree: wait for its turn to end"
        ))),
        None => Ok(()),
    }
}

async fn supersede<C: ConnectionTrait>(
    db: &C,
    worktree: Uuid,
    old: &pending_changes::Model,
    at: Timestamp,
) -> Result<()> {
    let superseded = pending_changes::Entity::update_many()
        .col_expr(pending_changes::Column::Status, "superseded".into())
        .col_expr(pending_changes::Column::DecidedAt, Some(at).into())
        .filter(pending_changes::Column::Id.eq(old.id))
        .filter(pending_changes::Column::Status.eq("pending"))
        .exec(db)
        .await?;
    // A person decided it meanwhile (their decision held the row): theirs stands.
    if superseded.rows_affected == 0 {
        return Ok(());
    }
    append(
        db,
        worktree,
        "change.superseded",
        json!({"change_id": old.id, "path": old.file_path}),
        at,
    )
    .await
}

/// The id of the session's last transcript entry (any subpath).
async fn last_entry<C: ConnectionTrait>(
    db: &C,
    project: &str,
    session: &str,
) -> Result<Option<i64>> {
    Ok(session_entries::Entity::find()
        .select_only()
        .column(session_entries::Column::Id)
        .filter(session_entries::Column::ProjectKey.eq(project))
        .filter(session_entries::Column::SessionId.eq(session))
        .order_by_desc(session_entries::Column::Id)
        .into_tuple::<i64>()
        .one(db)
        .await?)
}

/// Appends one event to the worktree's stream, at its next version.
async fn append<C: ConnectionTrait>(
    db: &C,
    worktree: Uuid,
    kind: &str,
    data: Value,
    at: Timestamp,
) -> Result<()> {
    let stream = StreamRef::new(STREAM_TYPE, worktree.to_string());
    let version = EventStore::stream_version(db, &stream).await?;
    let row = EventStore::row(
        &stream,
        crate::StreamVersion(version.0 + 1),
        NewEvent {
            kind: kind.to_owned(),
            data,
            metadata: json!({}),
        },
        at,
    );
    EventStore::insert(db, vec![row]).await
}
