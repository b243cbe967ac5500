//! The Postgres [`AgentSessionLookup`]: reads `agent_sessions` through the core's
//! [`AgentSessions`] store. Kept apart from the backends, which never know Postgres.

use futures::{FutureExt, future::BoxFuture};
use sea_orm::DatabaseConnection;
use turnq_core::agent::AgentSessions;

use super::AgentSessionLookup;

/// Agent sessions as stored in Postgres.
#[derive(Clone, Debug)]
pub struct PgAgentSessions {
    db: DatabaseConnection,
}

impl PgAgentSessions {
    pub fn new(db: DatabaseConnection) -> Self {
        PgAgentSessions { db }
    }
}

impl AgentSessionLookup for PgAgentSessions {
    fn backend_session_id<'a>(
        &'a self,
        project: &'a str,
        session_id: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, turnq_core::Error>> {
        async move {
            Ok(AgentSessions::get(&self.db, project, session_id, agent)
                .await?
                .and_then(|s| s.backend_session_id))
        }
        .boxed()
    }
}
