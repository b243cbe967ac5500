//! The agent registry and agent sessions: the stores against a real database, and
//! `/v1/agents` through the real router.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use turnq_core::{
    agent::{AgentRegistry, AgentSessions, AgentSpec, AgentStatus, Turn, config_hash},
    auth::{Scope, TokenStore},
    event::Usage,
    time,
};

use turnq_tests::{TestApp, TestDb, count, eventually};

fn spec(body: Value) -> Result<AgentSpec> {
    Ok(serde_json::from_value(body)?)
}

#[tokio::test]
async fn agent_put_creates_then_updates_and_keeps_probe_results() -> Result<()> {
    let t = TestDb::new().await?;
    let first = AgentRegistry::put(
        &t.db,
        "claude",
        spec(json!({"backend": "command", "config": {"program": "claude", "args": ["--model", "opus"]}, "models": ["opus"]}))?,
        time::now(),
    )
    .await?;
    assert!(first.created);
    assert_eq!(
        first.agent.config,
        json!({"program": "claude", "args": ["--model", "opus"]})
    );
    assert_eq!(first.agent.models, json!(["opus"]));
    assert_eq!(first.agent.version, None);

    let probed_at = time::now();
    let probed = AgentRegistry::record_probe(&t.db, "claude", Some("2.1.0".into()), probed_at)
        .await?
        .expect("the agent exists");
    assert_eq!(probed.version.as_deref(), Some("2.1.0"));
    assert_eq!(probed.last_probed_at, Some(probed_at));
    assert!(
        AgentRegistry::record_probe(&t.db, "nobody", None, probed_at)
            .await?
            .is_none()
    );

    let second = AgentRegistry::put(
        &t.db,
        "claude",
        spec(json!({"backend": "command", "label": "Claude", "config": {"program": "claude", "args": ["--model", "sonnet"]}}))?,
        time::now(),
    )
    .await?;
    assert!(!second.created);
    assert_eq!(second.agent.label.as_deref(), Some("Claude"));
    assert_eq!(
        second.agent.config,
        json!({"program": "claude", "args": ["--model", "sonnet"]})
    );
    assert_eq!(
        second.agent.models,
        json!(["opus"]),
        "omitted models are kept"
    );
    assert_eq!(
        second.agent.version.as_deref(),
        Some("2.1.0"),
        "probe results are kept"
    );
    assert_eq!(second.agent.created_at, first.agent.created_at);
    assert!(second.agent.updated_at >= first.agent.updated_at);
    assert_ne!(config_hash(&first.agent), config_hash(&second.agent));

    assert_eq!(
        AgentRegistry::list(&t.db).await?,
        std::slice::from_ref(&second.agent)
    );
    assert_eq!(
        AgentRegistry::get(&t.db, "claude").await?,
        Some(second.agent)
    );
    assert_eq!(AgentRegistry::get(&t.db, "codex").await?, None);
    Ok(())
}

fn turn(backend_session_id: Option<&str>, hash: &str, usage: Usage, status: AgentStatus) -> Turn {
    Turn {
        project: "p".into(),
        session_id: "s1".into(),
        agent: "claude".into(),
        backend: "claude-code".into(),
        backend_session_id: backend_session_id.map(str::to_owned),
        config_hash: hash.into(),
        usage,
        status,
        at: time::now(),
    }
}

fn usage(input_tokens: i64, output_tokens: i64, cost_usd: f64) -> Usage {
    Usage {
        input_tokens,
        output_tokens,
        cost_usd,
    }
}

#[tokio::test]
async fn agent_session_record_turn_accumulates_usage_and_resets_on_config_change() -> Result<()> {
    let t = TestDb::new().await?;
    let first = AgentSessions::record_turn(
        &t.db,
        turn(Some("b-1"), "h1", usage(10, 5, 0.25), AgentStatus::Active),
    )
    .await?;
    assert_eq!(
        (first.input_tokens, first.output_tokens, first.cost_usd),
        (10, 5, 0.25)
    );
    assert_eq!(first.status, AgentStatus::Active);

    // Same config, no id reported: the stored backend session carries on.
    let second =
        AgentSessions::record_turn(&t.db, turn(None, "h1", usage(7, 3, 0.5), AgentStatus::Idle))
            .await?;
    assert_eq!(
        (second.input_tokens, second.output_tokens, second.cost_usd),
        (17, 8, 0.75)
    );
    assert_eq!(second.backend_session_id.as_deref(), Some("b-1"));
    assert_eq!(second.status, AgentStatus::Idle);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.last_active_at >= first.last_active_at);

    // A changed config starts a fresh backend session, even before it reports an id...
    let third =
        AgentSessions::record_turn(&t.db, turn(None, "h2", usage(1, 1, 0.0), AgentStatus::Idle))
            .await?;
    assert_eq!(third.backend_session_id, None);
    assert_eq!(third.config_hash.as_deref(), Some("h2"));
    assert_eq!((third.input_tokens, third.output_tokens), (18, 9));

    // ...and then keeps the one the fresh session reports.
    let fourth = AgentSessions::record_turn(
        &t.db,
        turn(Some("b-2"), "h2", usage(0, 0, 0.0), AgentStatus::Idle),
    )
    .await?;
    assert_eq!(fourth.backend_session_id.as_deref(), Some("b-2"));
    let changed = AgentSessions::record_turn(
        &t.db,
        turn(Some("b-3"), "h3", usage(0, 0, 0.0), AgentStatus::Crashed),
    )
    .await?;
    assert_eq!(changed.backend_session_id.as_deref(), Some("b-3"));

    assert_eq!(
        AgentSessions::get(&t.db, "p", "s1", "claude").await?,
        Some(changed.clone())
    );
    assert_eq!(AgentSessions::get(&t.db, "p", "s1", "codex").await?, None);
    // The same session id in another project is another agent session: its turns
    // neither resume this backend session nor add to its usage.
    let mut elsewhere = turn(Some("q-1"), "h2", usage(2, 2, 0.0), AgentStatus::Idle);
    elsewhere.project = "q".into();
    AgentSessions::record_turn(&t.db, elsewhere).await?;
    assert_eq!(
        AgentSessions::get(&t.db, "p", "s1", "claude").await?,
        Some(changed.clone())
    );
    let theirs = AgentSessions::get(&t.db, "q", "s1", "claude")
        .await?
        .context("q's agent session")?;
    assert_eq!(
        (theirs.backend_session_id.as_deref(), theirs.input_tokens),
        (Some("q-1"), 2)
    );
    let mut other = turn(None, "h1", usage(1, 1, 0.0), AgentStatus::Idle);
    other.agent = "codex".into();
    AgentSessions::record_turn(&t.db, other).await?;
    let listed = AgentSessions::list_for_session(&t.db, "p", "s1").await?;
    let agents: Vec<&str> = listed.iter().map(|s| s.agent.as_str()).collect();
    assert_eq!(agents, ["claude", "codex"]);
    assert!(
        AgentSessions::list_for_session(&t.db, "p", "s2")
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn agent_session_refuses_negative_usage_and_bad_names() -> Result<()> {
    let t = TestDb::new().await?;
    let negative = turn(None, "h", usage(-1, 0, 0.0), AgentStatus::Idle);
    let err = AgentSessions::record_turn(&t.db, negative)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must not be negative"), "{err}");
    let mut bad = turn(None, "h", usage(0, 0, 0.0), AgentStatus::Idle);
    bad.agent = "no spaces".into();
    assert!(AgentSessions::record_turn(&t.db, bad).await.is_err());
    assert_eq!(count(&t.db, "agent_sessions").await?, 0);
    Ok(())
}

async fn put(app: &TestApp, name: &str, body: &Value) -> Result<(u16, Value)> {
    let response = app
        .http
        .put(app.url(&format!("/v1/agents/{name}")))
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn agent_put_over_http_is_201_then_200_and_lists() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (status, created) = put(
        &app,
        "claude",
        &json!({"backend": "command", "config": {"program": "claude", "args": ["--permission-mode", "plan"]}, "models": ["opus", "sonnet"], "capabilities": {"resume": true}}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "claude");
    assert_eq!(
        created["config"],
        json!({"program": "claude", "args": ["--permission-mode", "plan"]})
    );
    assert_eq!(created["commands"], json!([]));
    assert_eq!(created["last_probed_at"], Value::Null);

    let (status, updated) = put(
        &app,
        "claude",
        &json!({"backend": "script", "label": "Claude"}),
    )
    .await?;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["label"], "Claude");
    assert_eq!(updated["config"], json!({}));
    assert_eq!(updated["models"], json!(["opus", "sonnet"]));

    put(&app, "codex", &json!({"backend": "openai", "config": {"base_url": "http://127.0.0.1:9/v1", "model": "codex"}})).await?;
    let (status, list) = app.get("/v1/agents").await?;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["claude", "codex"]);

    let (status, one) = app.get("/v1/agents/claude").await?;
    assert_eq!((status, one), (200, updated));
    let (status, missing) = app.get("/v1/agents/nobody").await?;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");
    Ok(())
}

#[tokio::test]
async fn agent_put_with_a_bad_spec_is_400_and_writes_nothing() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let cases = [
        (
            "claude",
            json!({"backend": "x", "extra": 1}),
            "unknown field `extra`",
        ),
        ("claude", json!({"config": {}}), "missing field `backend`"),
        (
            "bad%20name",
            json!({"backend": "x"}),
            "agent name \"bad name\" contains ' '",
        ),
        (
            "claude",
            json!({"backend": "x", "config": [1]}),
            "config must be a JSON object",
        ),
        (
            "claude",
            json!({"backend": "x", "models": ["a", 2]}),
            "models[1] must be a string",
        ),
        (
            "claude",
            json!({"backend": "bad/backend"}),
            "backend \"bad/backend\" contains '/'",
        ),
        (
            // The built-in simulated agent cannot be replaced by a registration.
            "script",
            json!({"backend": "command", "config": {"program": "echo"}}),
            "`script` is turnq's built-in simulated agent and its name is reserved",
        ),
    ];
    for (name, body, want) in cases {
        let (status, error) = put(&app, name, &body).await?;
        assert_eq!(status, 400, "{name} {body}: {error}");
        assert_eq!(error["error"]["code"], "invalid_request", "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(want), "{body}: {message}");
    }
    let response = app
        .http
        .put(app.url("/v1/agents/claude"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(count(&app.db, "agents").await?, 0);
    Ok(())
}

#[tokio::test]
async fn agent_put_needs_admin_but_reading_agents_needs_only_read() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (reader, _) = TokenStore::create(&app.db, "reader", &[Scope::Read, Scope::Submit]).await?;
    let client = reqwest::Client::new();
    let status = client
        .put(app.url("/v1/agents/claude"))
        .bearer_auth(reader.expose())
        .json(&json!({"backend": "x"}))
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 403);
    assert_eq!(count(&app.db, "agents").await?, 0);
    let status = client
        .get(app.url("/v1/agents"))
        .bearer_auth(reader.expose())
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn a_closed_agent_session_is_not_resumed_and_its_next_turn_starts_fresh() -> Result<()> {
    let t = TestDb::new().await?;
    AgentSessions::record_turn(
        &t.db,
        turn(Some("b-1"), "h1", usage(10, 5, 0.25), AgentStatus::Idle),
    )
    .await?;
    let mut other = turn(Some("o-1"), "h1", usage(0, 0, 0.0), AgentStatus::Crashed);
    other.agent = "codex".into();
    AgentSessions::record_turn(&t.db, other).await?;
    let mut elsewhere = turn(Some("e-1"), "h1", usage(0, 0, 0.0), AgentStatus::Idle);
    elsewhere.session_id = "s2".into();
    AgentSessions::record_turn(&t.db, elsewhere).await?;

    assert_eq!(AgentSessions::close_session(&t.db, "p", "s1").await?, 2);
    // Closing again changes nothing; another session is not touched.
    assert_eq!(AgentSessions::close_session(&t.db, "p", "s1").await?, 0);
    assert_eq!(
        AgentSessions::get(&t.db, "p", "s2", "claude")
            .await?
            .map(|s| s.status),
        Some(AgentStatus::Idle)
    );

    // A turn that was running when the session closed ends without reopening it: its
    // usage counts, its backend session is not stored.
    let ended = AgentSessions::record_turn(
        &t.db,
        turn(Some("b-late"), "h1", usage(1, 1, 0.25), AgentStatus::Idle),
    )
    .await?;
    assert_eq!(ended.status, AgentStatus::Closed);
    assert_eq!(ended.backend_session_id.as_deref(), Some("b-1"));
    assert_eq!((ended.input_tokens, ended.cost_usd), (11, 0.5));

    // The next turn starts (`active`, as the worker records it) with the same config and
    // still does not resume: the backend session id is cleared...
    let started = AgentSessions::record_turn(
        &t.db,
        turn(None, "h1", usage(0, 0, 0.0), AgentStatus::Active),
    )
    .await?;
    assert_eq!(started.status, AgentStatus::Active);
    assert_eq!(started.backend_session_id, None);
    assert_eq!(started.input_tokens, 11, "the totals carry on");

    // ...and the fresh session's id is kept from then on, as usual.
    let reported = AgentSessions::record_turn(
        &t.db,
        turn(Some("b-2"), "h1", usage(0, 0, 0.0), AgentStatus::Idle),
    )
    .await?;
    assert_eq!(
        (reported.status, reported.backend_session_id.as_deref()),
        (AgentStatus::Idle, Some("b-2"))
    );
    let kept = AgentSessions::record_turn(
        &t.db,
        turn(None, "h1", usage(0, 0, 0.0), AgentStatus::Active),
    )
    .await?;
    assert_eq!(kept.backend_session_id.as_deref(), Some("b-2"));
    Ok(())
}

/// `PUT /v1/agents/{name}`, expecting 201 or 200.
/// An agent as an earlier version registered it, whatever its config (written to the
/// table directly: the registry now refuses such a config).
async fn legacy(app: &TestApp, name: &str, backend: &str, config: Value) -> Result<()> {
    use sea_orm::ConnectionTrait;
    app.db
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "INSERT INTO agents (name, backend, config, models, capabilities, commands, created_at, updated_at) \
             VALUES ($1, $2, $3, '[]', '{}', '[]', now(), now())",
            [name.into(), backend.into(), config.into()],
        ))
        .await?;
    Ok(())
}

async fn declare(app: &TestApp, name: &str, spec: Value) -> Result<()> {
    let (status, body) = put(app, name, &spec).await?;
    ensure!(
        status == 201 || status == 200,
        "PUT /v1/agents/{name} answered {status}: {body}"
    );
    Ok(())
}

#[tokio::test]
async fn the_worker_registry_lists_the_agents_each_worker_runs() -> Result<()> {
    let mut app = TestApp::spawn_without_workers().await?;
    // `bash`, not `sh`: dash has no `--version` to probe.
    declare(
        &app,
        "shell",
        json!({"backend": "command", "config": {"program": "bash", "args": ["-c", "echo hi"]}}),
    )
    .await?;
    // Fails its probe, has a backend no worker has, is not a command: none is run.
    declare(
        &app,
        "broken",
        json!({"backend": "command", "config": {"program": "/nonexistent/agent"}}),
    )
    .await?;
    // Registered before configs were checked at registration: still in the registry,
    // and a worker still refuses to run them.
    legacy(&app, "claude", "claude-code", json!({})).await?;
    legacy(&app, "bad-config", "command", json!({})).await?;
    app.start_worker(&[]).await?;

    let workers = eventually("the worker registers with its agents", || async {
        let (status, body) = app.get("/v1/workers").await?;
        ensure!(status == 200, "GET /v1/workers answered {status}: {body}");
        let workers = body["workers"].as_array().context("workers")?.clone();
        ensure!(workers.len() == 1, "{body}");
        Ok(workers)
    })
    .await?;
    let agents = workers[0]["agents"].as_array().context("agents")?;
    assert_eq!(agents.len(), 2, "{agents:?}");
    assert_eq!(agents[0]["name"], "script");
    assert_eq!(agents[0]["backend"], "script");
    assert_eq!(agents[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(agents[1]["name"], "shell");
    assert_eq!(agents[1]["backend"], "command");
    let version = agents[1]["version"].as_str().unwrap_or("");
    assert!(
        version.starts_with("GNU bash"),
        "the probed version: {version:?}"
    );

    // A worker narrowed by `--agents` lists only its own.
    app.start_worker(&["--agents", "shell"]).await?;
    let narrowed = eventually("the narrowed worker registers", || async {
        let (_, body) = app.get("/v1/workers").await?;
        let workers = body["workers"].as_array().context("workers")?.clone();
        ensure!(workers.len() == 2, "{body}");
        workers
            .into_iter()
            .find(|w| w["agents"].as_array().is_some_and(|a| a.len() == 1))
            .context("a worker running one agent")
    })
    .await?;
    assert_eq!(narrowed["agents"][0]["name"], "shell");
    app.stop().await?;
    Ok(())
}

/// A Claude-Code-like `command` agent in `jsonl` mode: reports the provider session
/// `prov-<input>` and answers with the arguments that followed its input, so the
/// summary shows whether it was asked to resume.
fn resuming_agent() -> Value {
    let script = r#"n=$1; shift
printf '{"type":"system","subtype":"init","session_id":"prov-%s"}\n' "$n"
printf '{"type":"result","subtype":"success","is_error":false,"result":"args:[%s]"}\n' "$*""#;
    json!({"backend": "command", "config": {
        "program": "bash",
        "args": ["-c", script, "bash", "{input}"],
        "resume_args": ["--resume", "{backend_session_id}"],
        "mode": "jsonl",
    }})
}

/// Runs a turn of `resumer` in session `s1`; returns its summary once the agent session
/// has recorded the turn's end (the runner records it after the task's last event).
async fn resumer_turn(app: &TestApp, input: &str) -> Result<String> {
    let task = app
        .submit(json!({"input": input, "agent": "resumer", "session_id": "s1"}))
        .await?;
    let id = task["id"].as_str().context("id")?;
    let done = app.wait_for_state(id, "completed").await?;
    // Recorded before `task.completed`: the session's next turn, which may start the
    // moment that event commits, finds the backend session id at once.
    let want = format!("prov-{input}");
    let session = AgentSessions::get(&app.db, "default", "s1", "resumer")
        .await?
        .context("the agent session")?;
    ensure!(
        session.status == AgentStatus::Idle
            && session.backend_session_id.as_deref() == Some(want.as_str()),
        "when the task completed, its agent session was {session:?}"
    );
    Ok(done["output_summary"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_command_agent_resumes_its_backend_session_until_the_session_is_deleted() -> Result<()> {
    let mut app = TestApp::spawn_without_workers().await?;
    declare(&app, "resumer", resuming_agent()).await?;
    app.start_worker(&["--agents", "resumer"]).await?;

    assert_eq!(
        resumer_turn(&app, "1").await?,
        "args:[]",
        "turn 1 has nothing to resume"
    );
    assert_eq!(
        resumer_turn(&app, "2").await?,
        "args:[--resume prov-1]",
        "turn 2 resumes the provider session turn 1 reported"
    );

    // Deleting the session over HTTP closes its agent session...
    let response = app
        .http
        .delete(app.url("/v1/sessions/default/s1"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 204);
    let closed = AgentSessions::get(&app.db, "default", "s1", "resumer")
        .await?
        .context("the agent session")?;
    assert_eq!(closed.status, AgentStatus::Closed);

    // ...so the next turn starts a fresh backend session, and the one after resumes it.
    assert_eq!(
        resumer_turn(&app, "3").await?,
        "args:[]",
        "turn 3 starts fresh"
    );
    assert_eq!(resumer_turn(&app, "4").await?, "args:[--resume prov-3]");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_whose_config_no_worker_could_run_is_refused_at_put_and_writes_nothing()
-> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    for (spec, needle) in [
        (
            json!({"backend": "claude-code"}),
            "there is no \"claude-code\" backend",
        ),
        (
            json!({"backend": "command", "config": {}}),
            "missing field `program`",
        ),
        (
            json!({"backend": "command", "config": {"program": "x", "mode": "xml"}}),
            "unknown variant `xml`",
        ),
        (
            json!({"backend": "openai", "config": {"base_url": "ftp://h", "model": "m"}}),
            "not http(s)",
        ),
        (
            json!({"backend": "openai", "config": {"base_url": "http://h/v1"}}),
            "missing field `model`",
        ),
    ] {
        let (status, body) = put(&app, "candidate", &spec).await?;
        assert_eq!(status, 400, "{spec}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle) && message.contains("candidate"),
            "{spec}: {message}"
        );
    }
    let (status, _) = app.get("/v1/agents/candidate").await?;
    assert_eq!(status, 404, "nothing was registered");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_can_be_removed_and_then_takes_no_new_tasks() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    declare(
        &app,
        "temp",
        json!({"backend": "command", "config": {"program": "temp-cli"}}),
    )
    .await?;
    let waiting = app.submit(json!({"input": "x", "agent": "temp"})).await?;
    let delete = |name: &'static str| {
        let app = &app;
        async move {
            let response = app
                .http
                .delete(app.url(&format!("/v1/agents/{name}")))
                .send()
                .await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            anyhow::Ok((status, text))
        }
    };
    assert_eq!(delete("temp").await?.0, 204);
    let (status, _) = app.get("/v1/agents/temp").await?;
    assert_eq!(status, 404);
    // Its waiting task stays; a new one is refused, naming the agents that exist.
    assert_eq!(
        app.task(waiting["id"].as_str().unwrap()).await?["state"],
        "pending"
    );
    let (status, body) = app
        .post("/v1/tasks", &json!({"input": "y", "agent": "temp"}))
        .await?;
    assert_eq!(status, 400, "{body}");
    // Gone already, or never there, or built in.
    let (status, body) = delete("temp").await?;
    assert!(
        status == 404 && body.contains("no agent named"),
        "{status} {body}"
    );
    let (status, body) = delete("script").await?;
    assert!(
        status == 400 && body.contains("built-in"),
        "{status} {body}"
    );
    // Removing needs admin.
    let (secret, _) = turnq_core::auth::TokenStore::create(
        &app.db,
        "submitter",
        &[
            turnq_core::auth::Scope::Submit,
            turnq_core::auth::Scope::Read,
        ],
    )
    .await?;
    let status = reqwest::Client::new()
        .delete(app.url("/v1/agents/anything"))
        .bearer_auth(secret.expose())
        .send()
        .await?
        .status();
    assert_eq!(status, 403);
    app.stop().await?;
    Ok(())
}
