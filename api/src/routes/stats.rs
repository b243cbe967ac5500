//! `/v1/stats`: usage statistics (see `docs/agents.md`).

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};
use turnq_core::{
    stats::{GroupBy, UsageStats},
    time::Timestamp,
};

use crate::{ApiError, AppState, extract::Query};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    /// Optional here so that leaving it out gets the message naming the allowed values.
    group_by: Option<String>,
    /// RFC 3339.
    since: Option<String>,
}

/// `GET /v1/stats/usage?group_by=project|agent|day|session[&since=RFC3339]`:
/// `{"group_by": …, "rows": [{"key","tasks","input_tokens","output_tokens","cost_usd"}]}`.
pub(super) async fn usage(
    State(state): State<AppState>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let group_by: GroupBy = query
        .group_by
        .as_deref()
        .ok_or_else(|| {
            ApiError::bad_request("group_by is required: one of project, agent, day, session")
        })?
        .parse()?;
    let since: Option<Timestamp> = query
        .since
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "since {s:?} is not an RFC 3339 time (like 2026-11-26T00:00:00Z): {e}"
                    ))
                })
        })
        .transpose()?;
    let rows = UsageStats::group_by(state.db(), group_by, since).await?;
    Ok(Json(json!({ "group_by": group_by, "rows": rows })))
}
