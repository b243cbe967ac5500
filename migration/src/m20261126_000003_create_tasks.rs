//! Creates `tasks`, the current-state projection of each task's event stream, with the
//! indexes its hot paths need (dispatch scan, lease sweep, listings, idempotent submit).
//!
//! The CHECK constraints encode which columns each state implies (a running task has a
//! worker, a lease and a start time; only terminal tasks have `ended_at`, ...), so a buggy
//! projection fails loudly at write time instead of leaving a task no code path can move.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    Project,
    ParentTaskId,
    ArenaId,
    Queue,
    Priority,
    State,
    Input,
    OutputSummary,
    Agent,
    Model,
    Backend,
    WorktreePath,
    SessionId,
    ChatId,
    ModeId,
    ThinkingOptionId,
    FeatureValues,
    InputTokens,
    OutputTokens,
    CostUsd,
    RunAt,
    Attempt,
    MaxAttempts,
    IdempotencyKey,
    QueuedAt,
    LeaseUntil,
    WorkerId,
    LastError,
    Version,
    CreatedAt,
    StartedAt,
    EndedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Tasks::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Tasks::Project).text().not_null())
                    .col(ColumnDef::new(Tasks::ParentTaskId).uuid().null())
                    .col(ColumnDef::new(Tasks::ArenaId).uuid().null())
                    .col(ColumnDef::new(Tasks::Queue).text().not_null())
                    .col(
                        ColumnDef::new(Tasks::Priority)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Tasks::State).text().not_null())
                    .col(ColumnDef::new(Tasks::Input).json_binary().not_null())
                    .col(ColumnDef::new(Tasks::OutputSummary).text().null())
                    .col(ColumnDef::new(Tasks::Agent).text().not_null())
                    .col(ColumnDef::new(Tasks::Model).text().null())
                    // The seed's execution_path, generalised to any backend.
                    .col(ColumnDef::new(Tasks::Backend).text().null())
                    .col(ColumnDef::new(Tasks::WorktreePath).text().null())
                    .col(ColumnDef::new(Tasks::SessionId).text().null())
                    .col(ColumnDef::new(Tasks::ChatId).text().null())
                    .col(ColumnDef::new(Tasks::ModeId).text().null())
                    .col(ColumnDef::new(Tasks::ThinkingOptionId).text().null())
                    .col(ColumnDef::new(Tasks::FeatureValues).json_binary().null())
                    .col(
                        ColumnDef::new(Tasks::InputTokens)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Tasks::OutputTokens)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Tasks::CostUsd)
                            .double()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Tasks::RunAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Tasks::Attempt)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Tasks::MaxAttempts).integer().not_null())
                    .col(ColumnDef::new(Tasks::IdempotencyKey).text().null())
                    // Set while the task sits in Redis waiting to start, so the dispatcher
                    // does not hand the same task over twice.
                    .col(
                        ColumnDef::new(Tasks::QueuedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Tasks::LeaseUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Tasks::WorkerId).text().null())
                    .col(ColumnDef::new(Tasks::LastError).text().null())
                    // Version of the task's event stream this row reflects, so a projector
                    // can tell a stale write from a fresh one.
                    .col(ColumnDef::new(Tasks::Version).big_integer().not_null())
                    .col(
                        ColumnDef::new(Tasks::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Tasks::StartedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Tasks::EndedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Tasks::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    // Named as Postgres would name an inline REFERENCES, so the name is
                    // predictable for later migrations that need to alter it. SET NULL keeps
                    // a child's history when its parent is removed.
                    .foreign_key(
                        ForeignKey::create()
                            .name("tasks_parent_task_id_fkey")
                            .from(Tasks::Table, Tasks::ParentTaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .check((
                        "tasks_state_chk",
                        Expr::cust(
                            "state IN ('pending','running','completed','failed','blocked','cancelled')",
                        ),
                    ))
                    .check((
                        "tasks_attempt_chk",
                        Expr::cust(
                            "attempt >= 0 AND max_attempts >= 1 AND attempt <= max_attempts",
                        ),
                    ))
                    .check((
                        "tasks_priority_chk",
                        Expr::cust("priority BETWEEN -1000 AND 1000"),
                    ))
                    .check((
                        "tasks_usage_chk",
                        Expr::cust("input_tokens >= 0 AND output_tokens >= 0 AND cost_usd >= 0"),
                    ))
                    .check(("tasks_version_chk", Expr::cust("version >= 1")))
                    // Queue names become Redis keys, so keep them short and unambiguous.
                    .check((
                        "tasks_queue_chk",
                        Expr::cust("queue ~ '^[A-Za-z0-9_.-]{1,64}$'"),
                    ))
                    // The columns each state implies; see the module doc.
                    .check((
                        "tasks_running_chk",
                        Expr::cust(
                            "state <> 'running' OR (worker_id IS NOT NULL AND lease_until IS NOT NULL AND started_at IS NOT NULL AND attempt >= 1)",
                        ),
                    ))
                    .check((
                        "tasks_lease_chk",
                        Expr::cust("state = 'running' OR lease_until IS NULL"),
                    ))
                    .check((
                        "tasks_queued_chk",
                        Expr::cust("state = 'pending' OR queued_at IS NULL"),
                    ))
                    .check((
                        "tasks_ended_chk",
                        Expr::cust(
                            "(state IN ('completed','failed','cancelled')) = (ended_at IS NOT NULL)",
                        ),
                    ))
                    .to_owned(),
            )
            .await?;

        // Idempotent submit: a retried request with the same key finds the existing task.
        // Partial, because most tasks carry no key and NULLs need no uniqueness.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_project_idempotency_key_uidx")
                    .table(Tasks::Table)
                    .unique()
                    .col(Tasks::Project)
                    .col(Tasks::IdempotencyKey)
                    .and_where(Expr::col(Tasks::IdempotencyKey).is_not_null())
                    .to_owned(),
            )
            .await?;

        // The dispatcher's scan: due pending tasks not yet handed to Redis, in the order it
        // takes them. Partial, so the index stays as small as the backlog, not the history.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_dispatch_idx")
                    .table(Tasks::Table)
                    .col((Tasks::Priority, IndexOrder::Desc))
                    .col(Tasks::RunAt)
                    .col(Tasks::CreatedAt)
                    .and_where(
                        Expr::col(Tasks::State)
                            .eq("pending")
                            .and(Expr::col(Tasks::QueuedAt).is_null()),
                    )
                    .to_owned(),
            )
            .await?;

        // Lease sweeps look only at running tasks.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_lease_idx")
                    .table(Tasks::Table)
                    .col(Tasks::LeaseUntil)
                    .and_where(Expr::col(Tasks::State).eq("running"))
                    .to_owned(),
            )
            .await?;

        // Listings page with the cursor (created_at DESC, id DESC); id breaks ties between
        // tasks created in the same microsecond.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_created_idx")
                    .table(Tasks::Table)
                    .col((Tasks::CreatedAt, IndexOrder::Desc))
                    .col((Tasks::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await?;

        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_state_created_idx")
                    .table(Tasks::Table)
                    .col(Tasks::State)
                    .col((Tasks::CreatedAt, IndexOrder::Desc))
                    .col((Tasks::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await?;

        // Parent and session lookups only ever ask for a value, so rows without one stay out.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_parent_idx")
                    .table(Tasks::Table)
                    .col(Tasks::ParentTaskId)
                    .and_where(Expr::col(Tasks::ParentTaskId).is_not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("tasks_session_idx")
                    .table(Tasks::Table)
                    .col(Tasks::SessionId)
                    .and_where(Expr::col(Tasks::SessionId).is_not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The indexes go with the table.
        manager
            .drop_table(Table::drop().table(Tasks::Table).if_exists().to_owned())
            .await
    }
}
