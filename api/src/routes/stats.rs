//! `/v1/stats`: usage statistics (see `docs/agents.md`).

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use turnq_core::{
    stats::{GroupBy, UsageRow, UsageStats},
    time::Timestamp,
};

use crate::{ApiError, AppState, extract::Query};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageQuery {
    /// What to group by (required).
    // Optional here so that leaving it out gets the message naming the allowed values.
    #[param(value_type = GroupBy, required = true)]
    group_by: Option<String>,
    /// Only tasks created at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
}

/// Usage, one row per group.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct UsageReport {
    group_by: GroupBy,
    /// By day in day order; by project, agent or session most expensive first.
    rows: Vec<UsageRow>,
}

/// `GET /v1/stats/usage?group_by=project|agent|day|session[&since=RFC3339]`:
/// `{"group_by": …, "rows": [{"key","tasks","input_tokens","output_tokens","cost_usd"}]}`.
#[utoipa::path(
    get,
    path = "/v1/stats/usage",
    tag = "stats",
    operation_id = "usage_stats",
    summary = "Tasks, tokens and cost, grouped",
    description = "Scope `read`.",
    params(UsageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The usage.", body = UsageReport),
        (status = 400, response = crate::openapi::responses::BadRequest),
        (status = 401, response = crate::openapi::responses::Unauthorized),
        (status = 403, response = crate::openapi::responses::Forbidden),
        (status = 500, response = crate::openapi::responses::Internal),
        (status = 503, response = crate::openapi::responses::Unavailable),
    ),
)]
pub(super) async fn usage(
    State(state): State<AppState>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
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
    Ok(Json(UsageReport { group_by, rows }))
}
