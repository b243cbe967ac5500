//! Agents and sessions end to end: registered agents run by the real `turnq worker`
//! binary as separate processes. An `openai` agent talks to a small OpenAI-compatible
//! server of the test's own, and a session resumes on another worker process with its
//! history; `command` agents run real child processes (output, crash and retry,
//! cancellation killing the child); a worker restricted by `--agents` leaves the other
//! agents' tasks alone.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use turnq_core::agent::AgentSessions;

use turnq_tests::{TestApp, WorkerProcess, eventually};

// ---------------------------------------------------------------------------------------
// A small OpenAI-compatible server
// ---------------------------------------------------------------------------------------

/// An OpenAI-compatible chat server on port 0 that records every request body and
/// answers the n-th request (1-based) with `reply n`, streamed, with usage
/// `10 * n` prompt tokens and 3 completion tokens.
struct FakeOpenAi {
    base_url: String,
    received: Arc<Mutex<Vec<Value>>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    async fn start() -> Result<FakeOpenAi> {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/models", get(models))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeOpenAi {
            base_url,
            received,
            server,
        })
    }

    /// The request bodies received so far, in order.
    fn requests(&self) -> Vec<Value> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The agent spec of an `openai` agent on this server.
    fn agent_spec(&self) -> Value {
        json!({"backend": "openai", "config": {"base_url": self.base_url, "model": "test-model"}})
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "test-model", "object": "model"}]}))
}

async fn completions(
    State(received): State<Arc<Mutex<Vec<Value>>>>,
    Json(body): Json<Value>,
) -> Response {
    let n = match received.lock() {
        Ok(mut received) => {
            received.push(body);
            received.len()
        }
        Err(_) => 0,
    };
    let delta = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}}]});
    let events = [
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        delta("reply"),
        delta(" "),
        delta(&n.to_string()),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 10 * n, "completion_tokens": 3}}),
    ];
    let mut sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    sse.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `PUT /v1/agents/{name}`, expecting 201 or 200.
async fn put_agent(app: &TestApp, name: &str, spec: Value) -> Result<Value> {
    let response = app
        .http
        .put(app.url(&format!("/v1/agents/{name}")))
        .json(&spec)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    ensure!(
        status == 201 || status == 200,
        "PUT /v1/agents/{name} answered {status}: {body}"
    );
    Ok(body)
}

/// A `command` agent running `bash -c <script> bash <extra args…>`. (`sh` is dash here,
/// which has no `--version` to probe; bash has.)
fn bash_agent(script: &str, extra_args: &[&str]) -> Value {
    let mut args = vec!["-c".to_owned(), script.to_owned(), "bash".to_owned()];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    json!({"backend": "command", "config": {"program": "bash", "args": args, "mode": "text"}})
}

/// The task's events, oldest first.
async fn events(app: &TestApp, id: &str) -> Result<Vec<Value>> {
    let (status, body) = app.get(&format!("/v1/tasks/{id}/events")).await?;
    ensure!(
        status == 200,
        "GET events of {id} answered {status}: {body}"
    );
    Ok(body["events"]
        .as_array()
        .context("events is an array")?
        .clone())
}

/// The worker ids of the task's `task.started` events.
async fn started_by(app: &TestApp, id: &str) -> Result<Vec<String>> {
    Ok(events(app, id)
        .await?
        .iter()
        .filter(|e| e["kind"] == "task.started")
        .map(|e| e["data"]["worker_id"].as_str().unwrap_or("").to_owned())
        .collect())
}

fn id_of(task: &Value) -> Result<String> {
    Ok(task["id"]
        .as_str()
        .with_context(|| format!("the task has an id: {task}"))?
        .to_owned())
}

/// Waits for `state`; on a timeout, says whether the worker process is still alive (a
/// worker that exited at start is the usual reason nothing ran).
async fn wait_on_worker(
    app: &TestApp,
    worker: &mut WorkerProcess,
    id: &str,
    state: &str,
) -> Result<Value> {
    match app.wait_for_state(id, state).await {
        Ok(task) => Ok(task),
        Err(e) => {
            let exited = worker.process.exited()?;
            let kinds = app.event_kinds(id).await.unwrap_or_default();
            bail!(
                "{e:#}\nworker {} exited: {exited:?}; the task's events: {kinds:?}",
                worker.host
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_session_resumes_on_another_worker_process_with_its_history() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let server = FakeOpenAi::start().await?;
    put_agent(&app, "gpt", server.agent_spec()).await?;

    let mut a = app.worker_process("host-a", &[])?;
    let first = app
        .submit(
            json!({"input": "first question", "agent": "gpt", "project": "p", "session_id": "s1"}),
        )
        .await?;
    let first = id_of(&first)?;
    let done_1 = wait_on_worker(&app, &mut a, &first, "completed").await?;
    a.process.terminate()?;
    let status = a.process.wait_exit().await?;
    ensure!(
        status.success(),
        "worker host-a exited with {status} on SIGTERM"
    );

    let mut b = app.worker_process("host-b", &[])?;
    let second = app
        .submit(
            json!({"input": "second question", "agent": "gpt", "project": "p", "session_id": "s1"}),
        )
        .await?;
    let second = id_of(&second)?;
    let done_2 = wait_on_worker(&app, &mut b, &second, "completed").await?;

    // Two processes on two hosts ran the two turns.
    let (by_1, by_2) = (
        started_by(&app, &first).await?,
        started_by(&app, &second).await?,
    );
    assert_eq!(by_1.len(), 1, "turn 1 started once: {by_1:?}");
    assert_eq!(by_2.len(), 1, "turn 2 started once: {by_2:?}");
    assert!(
        a.owns(&by_1[0]),
        "turn 1 was started by {} (host-a's ids start {})",
        by_1[0],
        a.id_prefix()
    );
    assert!(
        b.owns(&by_2[0]),
        "turn 2 was started by {} (host-b's ids start {})",
        by_2[0],
        b.id_prefix()
    );
    assert_ne!(by_1[0], by_2[0]);

    // The second request replayed the first turn before the new question.
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        2,
        "the server got these requests: {requests:#?}"
    );
    assert_eq!(requests[1]["model"], "test-model");
    assert_eq!(
        requests[0]["messages"],
        json!([{"role": "user", "content": "first question"}]),
        "the first request: {}",
        requests[0]
    );
    assert_eq!(
        requests[1]["messages"],
        json!([
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "reply 1"},
            {"role": "user", "content": "second question"},
        ]),
        "the second request: {}",
        requests[1]
    );

    // The session store holds both turns, in order.
    let (status, body) = app.get("/v1/sessions/p/s1/entries").await?;
    assert_eq!(status, 200, "GET entries answered {status}: {body}");
    let entries: Vec<(String, String)> = body["entries"]
        .as_array()
        .context("entries is an array")?
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("?").to_owned(),
                e["message"]["content"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("user", "first question"),
            ("assistant", "reply 1"),
            ("user", "second question"),
            ("assistant", "reply 2"),
        ]
        .map(|(t, c)| (t.to_owned(), c.to_owned())),
        "the session's entries: {body}"
    );

    // Usage per task, per agent, and per agent session.
    assert_eq!(done_1["output_summary"], "reply 1");
    assert_eq!(done_2["output_summary"], "reply 2");
    assert_eq!(
        done_1["usage"],
        json!({"input_tokens": 10, "output_tokens": 3, "cost_usd": 0.0})
    );
    assert_eq!(
        done_2["usage"],
        json!({"input_tokens": 20, "output_tokens": 3, "cost_usd": 0.0})
    );
    let (status, stats) = app.get("/v1/stats/usage?group_by=agent").await?;
    assert_eq!(status, 200, "usage stats answered {status}: {stats}");
    let gpt = stats["rows"]
        .as_array()
        .context("rows is an array")?
        .iter()
        .find(|r| r["key"] == "gpt")
        .with_context(|| format!("no gpt row in {stats}"))?;
    assert_eq!(
        (&gpt["tasks"], &gpt["input_tokens"], &gpt["output_tokens"]),
        (&json!(2), &json!(30), &json!(6)),
        "the gpt row: {gpt}"
    );
    let (_, by_session) = app.get("/v1/stats/usage?group_by=session").await?;
    assert_eq!(
        by_session["rows"],
        json!([{"key": "p/s1", "tasks": 2, "input_tokens": 30, "output_tokens": 6, "cost_usd": 0.0}]),
        "usage per session"
    );
    let session = AgentSessions::get(&app.db, "p", "s1", "gpt")
        .await?
        .context("the runner recorded no agent session (s1, gpt)")?;
    assert_eq!(
        (
            session.backend.as_str(),
            session.input_tokens,
            session.output_tokens
        ),
        ("openai", 30, 6),
        "the agent session: {session:?}"
    );
    // Active while a turn ran, idle once it completed.
    assert_eq!(
        session.status,
        turnq_core::agent::AgentStatus::Idle,
        "{session:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_command_agent_runs_a_real_child_process_and_a_crash_is_retried_with_its_stderr()
-> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    put_agent(
        &app,
        "shell",
        bash_agent("echo 'line one'; echo 'line two'; echo 'line three'", &[]),
    )
    .await?;
    put_agent(
        &app,
        "crasher",
        bash_agent(
            "echo 'partial output'; echo 'boom: the tool broke' >&2; exit 3",
            &[],
        ),
    )
    .await?;
    let mut worker = app.worker_process("host-a", &[])?;

    let ok = id_of(&app.submit(json!({"input": "hi", "agent": "shell"})).await?)?;
    let done = wait_on_worker(&app, &mut worker, &ok, "completed").await?;
    assert_eq!(done["output_summary"], "line one\nline two\nline three");
    let chunks: Vec<(String, String)> = events(&app, &ok)
        .await?
        .iter()
        .filter(|e| e["kind"] == "task.output")
        .flat_map(|e| e["data"]["chunks"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["stream"].as_str().unwrap_or("?").to_owned(),
                c["text"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        chunks,
        ["line one\n", "line two\n", "line three\n"].map(|l| ("text".to_owned(), l.to_owned())),
        "the output chunks"
    );

    let crash = id_of(
        &app.submit(json!({"input": "hi", "agent": "crasher", "max_attempts": 2}))
            .await?,
    )?;
    let failed = wait_on_worker(&app, &mut worker, &crash, "failed").await?;
    let kinds: Vec<String> = app
        .event_kinds(&crash)
        .await?
        .into_iter()
        .filter(|k| k != "task.output")
        .collect();
    assert_eq!(
        kinds,
        [
            "task.submitted",
            "task.queued",
            "task.started",
            "task.retrying",
            "task.queued",
            "task.started",
            "task.failed"
        ],
        "the crashing task's events"
    );
    assert_eq!(failed["attempt"], 2, "{failed}");
    let error = failed["last_error"].as_str().unwrap_or("");
    for want in ["exit status", "3", "boom: the tool broke"] {
        assert!(error.contains(want), "last_error lacks {want:?}: {error:?}");
    }
    Ok(())
}

/// Reads the pids in `path` (one a line), when it holds `n` of them.
fn pids_in(path: &PathBuf, n: usize) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    ensure!(pids.len() == n, "{path:?} holds {text:?}");
    Ok(pids)
}

/// Whether `pid` is a process that has not exited: a zombie (exited, not yet reaped
/// by whoever adopted it) does not count.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state …`: the state follows the last ')'.
            let after = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(after != 'Z' && after != 'X')
        })
        .unwrap_or(false)
}

/// Whether `kill -0 pid` succeeds: the pid exists, zombie or not.
fn exists(pid: u32) -> bool {
    std::process::Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills (SIGKILL) pids a failing test left running, and removes the pid file.
struct Leftovers {
    pid_file: PathBuf,
    pids: Vec<u32>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in &self.pids {
            if running(*pid) {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[tokio::test]
async fn cancelling_a_command_turn_kills_its_child_process() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let pid_file =
        std::env::temp_dir().join(format!("turnq-e2e-{}.pids", uuid::Uuid::new_v4().simple()));
    let mut leftovers = Leftovers {
        pid_file: pid_file.clone(),
        pids: Vec::new(),
    };
    let pid_arg = pid_file.to_str().context("the temp path is UTF-8")?;
    // The child's own pid, then its grandchild's (a `sleep` in the background): killing
    // the child alone would leave the grandchild running. Both would run for an hour,
    // far past the test's patience: if they are gone, they were killed.
    put_agent(
        &app,
        "sleeper",
        bash_agent(
            "echo $$ > \"$1.tmp\"; sleep 3600 & echo $! >> \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait",
            &[pid_arg],
        ),
    )
    .await?;
    let mut worker = app.worker_process("host-a", &[])?;

    let id = id_of(
        &app.submit(json!({"input": "hi", "agent": "sleeper"}))
            .await?,
    )?;
    wait_on_worker(&app, &mut worker, &id, "running").await?;
    let pids = eventually("the turn writes its pids", || async {
        pids_in(&pid_file, 2)
    })
    .await?;
    leftovers.pids = pids.clone();
    let (child, grandchild) = (pids[0], pids[1]);
    ensure!(
        exists(child) && running(grandchild),
        "the turn's processes run before the cancel: child {child}, grandchild {grandchild}"
    );

    let (status, body) = app
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({"reason": "e2e"}))
        .await?;
    assert_eq!(status, 200, "cancel answered {status}: {body}");
    assert_eq!(body["state"], "cancelled", "{body}");
    let cancelled_at = Instant::now();
    eventually("the turn's processes are killed", || async {
        ensure!(
            !exists(child),
            "child {child} exists (kill -0 succeeds; running: {})",
            running(child)
        );
        ensure!(!running(grandchild), "grandchild {grandchild} runs");
        Ok(())
    })
    .await
    .with_context(|| format!("the turn's processes after the cancel of {id}"))?;
    eprintln!(
        "the child and grandchild were gone {:?} after the cancel",
        cancelled_at.elapsed()
    );
    assert_eq!(app.task(&id).await?["state"], "cancelled");
    Ok(())
}

#[tokio::test]
async fn a_worker_without_the_agent_leaves_its_tasks_alone() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let server = FakeOpenAi::start().await?;
    put_agent(&app, "gpt", server.agent_spec()).await?;
    let mut scripts_only = app.worker_process("host-a", &["--agents", "script"])?;

    let gpt = id_of(
        &app.submit(json!({"input": "hello", "agent": "gpt", "project": "p"}))
            .await?,
    )?;
    let script = id_of(
        &app.submit(json!({"input": {"script": {"chunks": ["ok"]}}, "agent": "script"}))
            .await?,
    )?;
    wait_on_worker(&app, &mut scripts_only, &script, "completed").await?;
    // The gpt task was submitted first and has been queued for as long: a worker that
    // took it would have started it by now.
    let waiting = app.task(&gpt).await?;
    let kinds = app.event_kinds(&gpt).await?;
    assert_eq!(
        waiting["state"], "pending",
        "the gpt task after the script task completed: {waiting}; events {kinds:?}"
    );
    assert!(
        !kinds.iter().any(|k| k == "task.started"),
        "the gpt task was started: {kinds:?}"
    );
    assert!(
        server.requests().is_empty(),
        "the server got requests: {:?}",
        server.requests()
    );

    let mut all = app.worker_process("host-b", &[])?;
    let done = wait_on_worker(&app, &mut all, &gpt, "completed").await?;
    assert_eq!(done["output_summary"], "reply 1");
    let by = started_by(&app, &gpt).await?;
    assert!(
        by.len() == 1 && all.owns(&by[0]),
        "the gpt task was started by {by:?} (host-b's ids start {}, host-a's {})",
        all.id_prefix(),
        scripts_only.id_prefix()
    );
    Ok(())
}

/// The names of the agents the app's (one) worker says it runs.
async fn worker_agents(app: &TestApp) -> Result<Vec<String>> {
    let (status, body) = app.get("/v1/workers").await?;
    anyhow::ensure!(status == 200, "{body}");
    Ok(body["workers"][0]["agents"]
        .as_array()
        .context("agents")?
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect())
}

/// Runs one task of `agent` to its end and returns its output summary.
async fn one_turn(app: &TestApp, agent: &str) -> Result<String> {
    let task = app.submit(json!({"input": "x", "agent": agent})).await?;
    let done = app
        .wait_for_state(task["id"].as_str().context("id")?, "completed")
        .await?;
    Ok(done["output_summary"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_worker_takes_up_a_new_changed_or_removed_agent_without_a_restart() -> Result<()>
{
    let app = TestApp::spawn().await?;
    let echo = |text: &str| json!({"backend": "command", "config": {"program": "bash", "args": ["-c", format!("echo {text}")], "mode": "text"}});
    // Registered after the worker started: probed and run, no restart.
    put_agent(&app, "late", echo("late-v1")).await?;
    eventually("the worker runs the new agent", || async {
        let agents = worker_agents(&app).await?;
        anyhow::ensure!(agents.iter().any(|a| a == "late"), "{agents:?}");
        Ok(())
    })
    .await?;
    assert_eq!(one_turn(&app, "late").await?, "late-v1");

    // Its config changes: the next turns run the new one.
    put_agent(&app, "late", echo("late-v2")).await?;
    eventually("a turn runs the changed config", || async {
        let output = one_turn(&app, "late").await?;
        anyhow::ensure!(output == "late-v2", "still {output:?}");
        Ok(())
    })
    .await?;

    // Removed: the worker stops consuming its queue.
    let response = app.http.delete(app.url("/v1/agents/late")).send().await?;
    assert_eq!(response.status(), 204);
    eventually("the worker no longer runs it", || async {
        let agents = worker_agents(&app).await?;
        anyhow::ensure!(!agents.iter().any(|a| a == "late"), "{agents:?}");
        Ok(())
    })
    .await?;
    // Its other agents run on.
    assert!(!one_turn(&app, "script").await?.is_empty());
    app.stop().await
}
