//! The turnq database schema, as an ordered list of sea-orm-migration migrations.
//!
//! This crate is the only place the schema is written: every table, index, constraint,
//! trigger, function and view the rest of the workspace relies on is created here, so the
//! schema can be read (and rebuilt) from one ordered list instead of being scattered across
//! ad hoc SQL.
//!
//! Rules for changing it:
//! - One concern per migration (a table and the indexes it needs, one trigger, one view),
//!   so that `down` stays small and obviously correct and a failure names the concern.
//! - Never edit a migration that has landed: databases that already ran it will not run it
//!   again, so an edit silently forks the schema. Add a new migration instead.
//! - Every migration has a `down` that exactly undoes its `up`, and both use
//!   `IF [NOT] EXISTS` so a run that stopped half-way can be repeated.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_events;
mod m20261126_000002_events_append_only;
mod m20261126_000003_create_tasks;
mod m20261126_000004_tasks_notify_new;
mod m20261126_000005_create_human_inbox;
mod m20261126_000006_create_workers;
mod m20261126_000007_create_agents;
mod m20261126_000008_create_worktrees;
mod m20261126_000009_create_agent_sessions;
mod m20261126_000010_create_session_entries;
mod m20261126_000011_create_checkpoints;
mod m20261126_000012_create_pending_changes;
mod m20261126_000013_one_running_turn_per_session;
mod m20261126_000014_tasks_queued_index;
mod m20261126_000015_create_api_tokens;
mod m20261126_000016_session_entries_uuid_dedup;
mod m20261126_000017_create_session_summaries;
mod m20261126_000018_session_entries_checks;
mod m20261126_000019_workers_agents;
mod m20261126_000020_tasks_list_index;
mod m20261203_000021_events_xid;
mod m20261203_000022_create_queues;
mod m20261203_000023_tasks_queue_stats_indexes;
mod m20261203_000024_tasks_ui_indexes;
mod m20261203_000025_agent_sessions_per_project;
mod m20261203_000026_events_checks;
mod m20261203_000027_task_requests;
mod m20261203_000028_create_arenas;
mod m20261203_000029_workspaces;

/// A fingerprint of the migrations' source (see `build.rs`): it changes when any
/// migration is added or edited.
pub const SOURCE_HASH: &str = env!("TURNQ_MIGRATIONS_HASH");

/// Runs the turnq migrations, in the order they must be applied.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_events::Migration),
            Box::new(m20261126_000002_events_append_only::Migration),
            Box::new(m20261126_000003_create_tasks::Migration),
            Box::new(m20261126_000004_tasks_notify_new::Migration),
            Box::new(m20261126_000005_create_human_inbox::Migration),
            Box::new(m20261126_000006_create_workers::Migration),
            Box::new(m20261126_000007_create_agents::Migration),
            Box::new(m20261126_000008_create_worktrees::Migration),
            Box::new(m20261126_000009_create_agent_sessions::Migration),
            Box::new(m20261126_000010_create_session_entries::Migration),
            Box::new(m20261126_000011_create_checkpoints::Migration),
            Box::new(m20261126_000012_create_pending_changes::Migration),
            Box::new(m20261126_000013_one_running_turn_per_session::Migration),
            Box::new(m20261126_000014_tasks_queued_index::Migration),
            Box::new(m20261126_000015_create_api_tokens::Migration),
            Box::new(m20261126_000016_session_entries_uuid_dedup::Migration),
            Box::new(m20261126_000017_create_session_summaries::Migration),
            Box::new(m20261126_000018_session_entries_checks::Migration),
            Box::new(m20261126_000019_workers_agents::Migration),
            Box::new(m20261126_000020_tasks_list_index::Migration),
            Box::new(m20261203_000021_events_xid::Migration),
            Box::new(m20261203_000022_create_queues::Migration),
            Box::new(m20261203_000023_tasks_queue_stats_indexes::Migration),
            Box::new(m20261203_000024_tasks_ui_indexes::Migration),
            Box::new(m20261203_000025_agent_sessions_per_project::Migration),
            Box::new(m20261203_000026_events_checks::Migration),
            Box::new(m20261203_000027_task_requests::Migration),
            Box::new(m20261203_000028_create_arenas::Migration),
            Box::new(m20261203_000029_workspaces::Migration),
        ]
    }
}
