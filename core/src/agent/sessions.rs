//! Agent sessions (table `agent_sessions`): per (project, turnq session, agent), the
//! backend's own session id, a status and the running usage. A session id names a
//! session within its project, as tasks give it: two projects using the same id have
//! two agent sessions.

use std::{fmt, str::FromStr};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DeriveActiveEnum, EntityTrait, EnumIter, QueryFilter, QueryOrder,
    Set,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};
use serde::{Deserialize, Serialize};

use crate::task::check_name;
use crate::{
    Error,
    entity::agent_sessions::{self, Column},
    error::Result,
    event::Usage,
    session::MAX_ID_CHARS,
    time::Timestamp,
};

/// Where an agent's backend session stands. The type of `agent_sessions.status`, a
/// `text` column whose CHECK allows exactly these names (the same in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, EnumIter, DeriveActiveEnum)]
#[serde(rename_all = "lowercase")]
#[sea_orm(rs_type = "String", db_type = "Text", rename_all = "lowercase")]
pub enum AgentStatus {
    /// No turn is running; the next one resumes the backend session.
    Idle,
    /// A turn is running.
    Active,
    /// The backend process died mid-turn; its session may not resume cleanly.
    Crashed,
    /// Ended on purpose; nothing resumes it.
    Closed,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 4] = [
        AgentStatus::Idle,
        AgentStatus::Active,
        AgentStatus::Crashed,
        AgentStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Active => "active",
            AgentStatus::Crashed => "crashed",
            AgentStatus::Closed => "closed",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        AgentStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "agent session status {s:?} is not one of {}",
                    AgentStatus::ALL.map(AgentStatus::as_str).join(", ")
                ))
            })
    }
}

/// A row of `agent_sessions`, as readers see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSession {
    pub project: String,
    pub session_id: String,
    pub agent: String,
    pub backend: String,
    /// The backend's own id of the conversation, to resume it; `None` until the backend
    /// reports one, and again after a config change until the fresh session reports one.
    pub backend_session_id: Option<String>,
    pub worktree_id: Option<uuid::Uuid>,
    pub status: AgentStatus,
    /// The [`super::config_hash`] of the agent when the last turn ran.
    pub config_hash: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub last_active_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl From<agent_sessions::Model> for AgentSession {
    fn from(m: agent_sessions::Model) -> Self {
        AgentSession {
            status: m.status,
            project: m.project,
            session_id: m.session_id,
            agent: m.agent,
            backend: m.backend,
            backend_session_id: m.backend_session_id,
            worktree_id: m.worktree_id,
            config_hash: m.config_hash,
            input_tokens: m.input_tokens,
            output_tokens: m.output_tokens,
            cost_usd: m.cost_usd,
            last_active_at: m.last_active_at,
            created_at: m.created_at,
        }
    }
}

/// One turn's outcome, as [`AgentSessions::record_turn`] takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    /// The project of the task the turn ran for.
    pub project: String,
    pub session_id: String,
    pub agent: String,
    pub backend: String,
    /// The backend session the turn ran in, if the backend reported one.
    pub backend_session_id: Option<String>,
    /// The [`super::config_hash`] of the agent the turn ran with.
    pub config_hash: String,
    pub usage: Usage,
    /// The status after the turn.
    pub status: AgentStatus,
    pub at: Timestamp,
}

impl Turn {
    fn validate(&self) -> Result<()> {
        if self.session_id.is_empty() {
            return Err(Error::Invalid("session id must not be empty".into()));
        }
        let chars = self.session_id.chars().count();
        if chars > MAX_ID_CHARS {
            return Err(Error::Invalid(format!(
                "session id is {chars} characters long; the limit is {MAX_ID_CHARS}"
            )));
        }
        check_name("agent name", &self.agent)?;
        check_name("backend", &self.backend)?;
        let Usage {
            input_tokens,
            output_tokens,
            cost_usd,
        } = self.usage;
        // Finite first: NaN passes the CHECK (`NaN >= 0` is true in Postgres).
        if input_tokens < 0 || output_tokens < 0 || !cost_usd.is_finite() || cost_usd < 0.0 {
            return Err(Error::Invalid(format!(
                "usage must not be negative: {input_tokens} input tokens, {output_tokens} output tokens, {cost_usd} USD"
            )));
        }
        Ok(())
    }
}

pub struct AgentSessions;

impl AgentSessions {
    /// Records a turn of `agent` in `session_id`, in ONE statement (so two turns recorded
    /// at once both count): creates the row, or adds the turn's usage to the running
    /// totals and sets status, backend, config hash and last activity. A turn whose
    /// config hash differs from the stored one (or finds none stored) starts a fresh
    /// backend session: `backend_session_id` becomes the turn's, even when that is
    /// `None`. With the same config, a turn without one keeps the stored id.
    ///
    /// A `closed` session (see [`AgentSessions::close_session`]) is never resumed:
    /// a turn recorded `active` in it starts a fresh backend session whatever the config
    /// (`backend_session_id` becomes the turn's, status `active`); any other status
    /// (the end of a turn that was running when the session was closed) adds its usage
    /// but leaves the row `closed` with its backend session id.
    pub async fn record_turn<C: ConnectionTrait>(db: &C, turn: Turn) -> Result<AgentSession> {
        turn.validate()?;
        let row = agent_sessions::ActiveModel {
            project: Set(turn.project),
            session_id: Set(turn.session_id),
            agent: Set(turn.agent),
            backend: Set(turn.backend),
            backend_session_id: Set(turn.backend_session_id),
            status: Set(turn.status),
            config_hash: Set(Some(turn.config_hash)),
            input_tokens: Set(turn.usage.input_tokens),
            output_tokens: Set(turn.usage.output_tokens),
            cost_usd: Set(turn.usage.cost_usd),
            last_active_at: Set(Some(turn.at)),
            created_at: Set(turn.at),
            ..Default::default()
        };
        let stored = |c: Column| Expr::col((agent_sessions::Entity, c));
        let excluded = |c: Column| Expr::col((Alias::new("excluded"), c));
        let was_closed = || stored(Column::Status).eq(AgentStatus::Closed);
        let starts = || excluded(Column::Status).eq(AgentStatus::Active);
        // `=` is NULL for a stored NULL hash, so CASE takes the fresh-session branch.
        let same_config = stored(Column::ConfigHash).eq(excluded(Column::ConfigHash));
        // A closed session is never resumed: a turn starting in it (`active`) starts a
        // fresh backend session; a turn that was already running when the session was
        // closed ends without reopening it, so the close is not lost.
        let backend_session_id = Expr::case(
            was_closed().and(starts()),
            excluded(Column::BackendSessionId),
        )
        .case(was_closed(), stored(Column::BackendSessionId))
        .case(
            same_config,
            excluded(Column::BackendSessionId).if_null(stored(Column::BackendSessionId)),
        )
        .finally(excluded(Column::BackendSessionId));
        let status = Expr::case(
            was_closed().and(starts().not()),
            Expr::val(AgentStatus::Closed),
        )
        .finally(excluded(Column::Status));
        let model = agent_sessions::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([Column::Project, Column::SessionId, Column::Agent])
                    // Order matters only to the reader: every right-hand side sees the
                    // row as stored before this statement.
                    .value(
                        Column::InputTokens,
                        stored(Column::InputTokens).add(excluded(Column::InputTokens)),
                    )
                    .value(
                        Column::OutputTokens,
                        stored(Column::OutputTokens).add(excluded(Column::OutputTokens)),
                    )
                    .value(
                        Column::CostUsd,
                        stored(Column::CostUsd).add(excluded(Column::CostUsd)),
                    )
                    .value(Column::BackendSessionId, backend_session_id)
                    .value(Column::Status, status)
                    .update_columns([Column::Backend, Column::ConfigHash, Column::LastActiveAt])
                    .to_owned(),
            )
            .exec_with_returning(db)
            .await?;
        Ok(model.into())
    }

    /// Marks every agent session of `session_id` in `project` `closed`; returns how
    /// many changed. The session store calls it when a session's main transcript is
    /// deleted, in the same transaction. Sessions of the same id in other projects are
    /// not touched.
    pub async fn close_session<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
    ) -> Result<u64> {
        let result = agent_sessions::Entity::update_many()
            .col_expr(Column::Status, Expr::val(AgentStatus::Closed))
            .filter(Column::Project.eq(project))
            .filter(Column::SessionId.eq(session_id))
            .filter(Column::Status.ne(AgentStatus::Closed))
            .exec(db)
            .await?;
        Ok(result.rows_affected)
    }

    pub async fn get<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
        agent: &str,
    ) -> Result<Option<AgentSession>> {
        Ok(agent_sessions::Entity::find_by_id((
            project.to_owned(),
            session_id.to_owned(),
            agent.to_owned(),
        ))
        .one(db)
        .await?
        .map(AgentSession::from))
    }

    /// The agents of a session of `project`, by agent name.
    pub async fn list_for_session<C: ConnectionTrait>(
        db: &C,
        project: &str,
        session_id: &str,
    ) -> Result<Vec<AgentSession>> {
        Ok(agent_sessions::Entity::find()
            .filter(Column::Project.eq(project))
            .filter(Column::SessionId.eq(session_id))
            .order_by_asc(Column::Agent)
            .all(db)
            .await?
            .into_iter()
            .map(AgentSession::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_text_json_and_the_column() {
        use sea_orm::{ActiveEnum, Iterable};
        assert_eq!(AgentStatus::iter().collect::<Vec<_>>(), AgentStatus::ALL);
        for status in AgentStatus::ALL {
            assert_eq!(status.as_str().parse::<AgentStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
            assert_eq!(status.to_value(), status.as_str());
        }
        assert!("running".parse::<AgentStatus>().is_err());
    }
}
