//! Usage statistics: the store over tasks driven through the task store, and
//! `/v1/stats/usage` through the real router.

use std::time::Duration;

use anyhow::Result;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use turnq_core::{
    WorkerId,
    event::{Completed, TaskEvent, Usage},
    stats::{GroupBy, UsageRow, UsageStats},
    task::{NewTaskRequest, TaskStore},
    time,
};

use turnq_tests::{TestApp, TestDb};

/// Submits one task per `(project, agent, usage)`, and runs to completion (with that
/// usage) those that have one; the others stay pending. All in one session-less batch.
async fn tasks(db: &DatabaseConnection, specs: &[(&str, &str, Option<Usage>)]) -> Result<()> {
    let batch = specs
        .iter()
        .map(|(project, agent, _)| {
            let request: NewTaskRequest =
                serde_json::from_value(json!({"input": "x", "project": project, "agent": agent}))?;
            Ok(request.validate(time::now())?)
        })
        .collect::<Result<Vec<_>>>()?;
    let submitted = TaskStore::submit_batch(db, batch, &json!({})).await?;
    // Under a TestApp its own dispatcher may queue some first; either way every task
    // ends up queued and claimable.
    TaskStore::dispatch_due(db, 100, Duration::from_secs(300), &json!({}), |_| async {
        Ok(())
    })
    .await?;
    let worker = WorkerId("w1".into());
    for (submitted, (_, _, usage)) in submitted.iter().zip(specs) {
        let Some(usage) = usage else { continue };
        let id = submitted.task.id;
        let claimed = TaskStore::claim(db, id, 0, &worker, Duration::from_secs(60), &json!({}))
            .await?
            .expect("a queued task is claimable");
        let done = TaskEvent::Completed(Completed {
            attempt: claimed.task.attempt,
            output_summary: "ok".into(),
            usage: *usage,
        });
        TaskStore::record(db, id, claimed.task.attempt, &worker, &done, &json!({})).await?;
    }
    Ok(())
}

fn usage(input_tokens: i64, output_tokens: i64, cost_usd: f64) -> Option<Usage> {
    Some(Usage {
        input_tokens,
        output_tokens,
        cost_usd,
    })
}

fn row(key: &str, tasks: i64, input_tokens: i64, output_tokens: i64, cost_usd: f64) -> UsageRow {
    UsageRow {
        key: key.into(),
        tasks,
        input_tokens,
        output_tokens,
        cost_usd,
    }
}

async fn seed(db: &DatabaseConnection) -> Result<()> {
    tasks(
        db,
        &[
            ("alpha", "claude", usage(100, 10, 0.5)),
            ("alpha", "codex", usage(50, 5, 0.25)),
            ("beta", "claude", usage(1000, 100, 2.0)),
            // Still pending: counts as a task, with no usage yet.
            ("gamma", "codex", None),
        ],
    )
    .await
}

#[tokio::test]
async fn usage_stats_group_by_project_agent_and_day() -> Result<()> {
    let t = TestDb::new().await?;
    seed(&t.db).await?;

    let by_project = UsageStats::group_by(&t.db, GroupBy::Project, None).await?;
    assert_eq!(
        by_project,
        [
            row("beta", 1, 1000, 100, 2.0),
            row("alpha", 2, 150, 15, 0.75),
            row("gamma", 1, 0, 0, 0.0),
        ],
        "most expensive first"
    );

    let by_agent = UsageStats::group_by(&t.db, GroupBy::Agent, None).await?;
    assert_eq!(
        by_agent,
        [
            row("claude", 2, 1100, 110, 2.5),
            row("codex", 2, 50, 5, 0.25),
        ]
    );

    let today = time::now().format("%Y-%m-%d").to_string();
    let by_day = UsageStats::group_by(&t.db, GroupBy::Day, None).await?;
    assert_eq!(by_day, [row(&today, 4, 1150, 115, 2.75)]);

    let future: time::Timestamp = "2999-01-01T00:00:00Z".parse()?;
    assert!(
        UsageStats::group_by(&t.db, GroupBy::Day, Some(future))
            .await?
            .is_empty()
    );
    let past: time::Timestamp = "2000-01-01T00:00:00Z".parse()?;
    assert_eq!(
        UsageStats::group_by(&t.db, GroupBy::Agent, Some(past)).await?,
        by_agent
    );
    Ok(())
}

#[tokio::test]
async fn usage_stats_of_no_tasks_are_empty() -> Result<()> {
    let t = TestDb::new().await?;
    for g in GroupBy::ALL {
        assert!(UsageStats::group_by(&t.db, g, None).await?.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn usage_endpoint_groups_and_refuses_unknown_group_by() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    seed(&app.db).await?;

    let (status, body) = app.get("/v1/stats/usage?group_by=agent").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["group_by"], "agent");
    assert_eq!(
        body["rows"],
        json!([
            {"key": "claude", "tasks": 2, "input_tokens": 1100, "output_tokens": 110, "cost_usd": 2.5},
            {"key": "codex", "tasks": 2, "input_tokens": 50, "output_tokens": 5, "cost_usd": 0.25},
        ])
    );

    let (status, body) = app
        .get("/v1/stats/usage?group_by=day&since=2999-01-01T00:00:00Z")
        .await?;
    assert_eq!((status, &body["rows"]), (200, &json!([])));

    let (status, body) = app
        .get("/v1/stats/usage?group_by=project&since=2000-01-01T00:00:00%2B02:00")
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["key"], "beta");

    for (query, want) in [
        ("group_by=week", "not one of project, agent, day, session"),
        (
            "",
            "group_by is required: one of project, agent, day, session",
        ),
        (
            "group_by=day&since=yesterday",
            "since \"yesterday\" is not an RFC 3339 time",
        ),
        ("group_by=day&until=x", "unknown field `until`"),
    ] {
        let (status, body): (u16, Value) = app.get(&format!("/v1/stats/usage?{query}")).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(want), "{query}: {message}");
    }
    Ok(())
}
