//! sea-orm entities: one module per table. Private to the domain: stores turn these
//! rows into domain types before anything leaves this crate.

pub mod agent_sessions;
pub mod agents;
pub mod api_tokens;
pub mod arenas;
pub mod checkpoints;
pub mod events;
pub mod pending_changes;
pub mod queues;
pub mod session_entries;
pub mod session_rewinds;
pub mod session_summaries;
pub mod tasks;
pub mod workers;
pub mod worktrees;
