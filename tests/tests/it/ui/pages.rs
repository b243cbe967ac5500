//! The UI's pages and actions over plain HTTP: sign-in, what each page shows, scopes,
//! CSRF, bulk actions and bad input.

use anyhow::Result;
use serde_json::{Value, json};
use turnq_core::{
    auth::Scope,
    stats::{GroupBy, UsageStats},
};
use turnq_tests::TestApp;

use super::{client, csrf, page, post_form, sign_in, token};

/// A task that fails at once, in `project` (the test app's worker serves the default
/// queue only).
fn failing(project: &str) -> Value {
    json!({"input": {"prompt": "deploy", "script": {"outcome": "fail", "message": "no such cluster"}},
           "project": project, "max_attempts": 1})
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_need_a_sign_in_kept_in_an_http_only_strict_cookie() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let anonymous = client()?.get(app.url("/tasks?state=failed")).send().await?;
    assert_eq!(anonymous.status(), 303);
    assert_eq!(
        anonymous.headers()["location"],
        "/signin?next=%2Ftasks%3Fstate%3Dfailed",
        "after signing in, the viewer comes back to the page they asked for"
    );
    let csp = anonymous.headers()["content-security-policy"].to_str()?;
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    let wrong = client()?
        .post(app.url("/signin"))
        .form(&[("token", "tq_nope"), ("next", "/")])
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await?.contains("unknown or revoked"));

    let offsite = client()?
        .post(app.url("/signin"))
        .form(&[("token", app.token()), ("next", "//evil.example/")])
        .send()
        .await?;
    assert_eq!(offsite.status(), 303);
    assert_eq!(
        offsite.headers()["location"],
        "/",
        "never sent to another site"
    );
    let cookie = offsite.headers()["set-cookie"].to_str()?;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }

    let cookie = sign_in(&app, app.token()).await?;
    for (path, shows) in [
        ("/", "Overview"),
        ("/tasks", "Tasks"),
        ("/inbox", "Inbox"),
        ("/workers", "Workers"),
        ("/sessions", "Sessions"),
        ("/agents", "Agents"),
        ("/arenas", "Arenas"),
    ] {
        let (status, html) = page(&app, &cookie, path).await?;
        assert_eq!(status, 200, "{path}: {html}");
        assert!(
            html.contains(&format!("<h1>{shows}")),
            "{path} shows {shows}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("style=\""),
            "{path} has inline code"
        );
    }
    // Empty states say what to do next.
    let (_, overview) = page(&app, &cookie, "/").await?;
    assert!(overview.contains("turnq submit"), "{overview}");

    // Signing out forgets the cookie.
    let (_, html) = page(&app, &cookie, "/").await?;
    let out = post_form(&app, &cookie, "/signout", &[("csrf", &csrf(&html)?)]).await?;
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_shows_what_postgres_holds() -> Result<()> {
    let app = TestApp::spawn().await?;
    let done = app
        .submit(json!({"input": {"prompt": "summarise the repo", "script": {"chunks": ["alpha ", "omega"], "output_tokens": 7}},
                       "project": "web", "session_id": "s-1"}))
        .await?;
    let failed = app.submit(failing("web")).await?;
    let blocked = app
        .submit(json!({"input": {"script": {"outcome": "block", "message": "needs a human"}}, "project": "web"}))
        .await?;
    let (done_id, failed_id, blocked_id) = (
        done["id"].as_str().unwrap_or_default(),
        failed["id"].as_str().unwrap_or_default(),
        blocked["id"].as_str().unwrap_or_default(),
    );
    app.wait_for_state(done_id, "completed").await?;
    app.wait_for_state(failed_id, "failed").await?;
    app.wait_for_state(blocked_id, "blocked").await?;
    let (status, _) = app
        .post(
            "/v1/sessions/web/s-1/entries",
            &json!({"entries": [
                {"type": "user", "uuid": "00000000-0000-4000-8000-000000000001", "message": {"role": "user", "content": "summarise the repo"}},
                {"type": "assistant", "uuid": "00000000-0000-4000-8000-000000000002", "message": {"role": "assistant", "content": [
                    {"type": "text", "text": "Reading it now."},
                    {"type": "tool_use", "id": "t1", "name": "Grep", "input": {"pattern": "fn main"}}]}},
            ]}),
        )
        .await?;
    assert_eq!(status, 204);
    let cookie = sign_in(&app, app.token()).await?;

    let (_, overview) = page(&app, &cookie, "/").await?;
    assert!(
        overview.contains("default") && overview.contains("Throughput"),
        "{overview}"
    );
    // Today's usage, kept from the log, is what Postgres sums.
    let midnight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let rows = UsageStats::group_by(&app.db, GroupBy::Day, Some(midnight)).await?;
    let tokens: i64 = rows.iter().map(|r| r.input_tokens + r.output_tokens).sum();
    let tasks: i64 = rows.iter().map(|r| r.tasks).sum();
    assert!(tokens > 0 && tasks == 3, "{rows:?}");
    turnq_tests::eventually("the overview shows today's usage", || async {
        let (_, html) = page(&app, &cookie, "/").await.map_err(|e| e.to_string())?;
        let (want, over) = (format!("{tokens} tokens"), format!("over {tasks} tasks"));
        if html.contains(&want) && html.contains(&over) {
            Ok(())
        } else {
            Err(format!("no {want:?} {over:?}"))
        }
    })
    .await?;
    let (_, tasks) = page(&app, &cookie, "/tasks?project=web").await?;
    for id in [done_id, failed_id, blocked_id] {
        assert!(
            tasks.contains(&format!("/tasks/{id}")),
            "the list links {id}"
        );
    }
    let (_, only_failed) = page(&app, &cookie, "/tasks?project=web&state=failed").await?;
    assert!(only_failed.contains(failed_id) && !only_failed.contains(done_id));
    let (_, found) = page(&app, &cookie, "/tasks?q=summarise").await?;
    assert!(
        found.contains(done_id) && !found.contains(failed_id),
        "text search"
    );
    let jump = client()?
        .get(app.url(&format!("/tasks?q={done_id}")))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(
        jump.headers()["location"].to_str()?,
        format!("/tasks/{done_id}")
    );

    let (_, task) = page(&app, &cookie, &format!("/tasks/{done_id}")).await?;
    for shows in [
        "task.submitted",
        "task.started",
        "task.completed",
        "alpha omega",
        "Attempts",
        "Session transcript",
        "tool call",
    ] {
        assert!(task.contains(shows), "the task page shows {shows}");
    }
    let (_, failures) = page(
        &app,
        &cookie,
        &format!("/tasks/{failed_id}?events=failures"),
    )
    .await?;
    assert!(failures.contains("task.failed") && failures.contains("no such cluster"));
    assert!(
        !failures.contains("<code>task.started</code>"),
        "the failure filter hides the rest"
    );

    let (_, inbox) = page(&app, &cookie, "/inbox").await?;
    assert!(
        inbox.contains("needs a human") && inbox.contains("no such cluster"),
        "{inbox}"
    );
    assert!(!inbox.contains(done_id));
    let (_, workers) = page(&app, &cookie, "/workers").await?;
    assert!(workers.contains("worker-live"), "{workers}");
    let (_, sessions) = page(&app, &cookie, "/sessions?project=web").await?;
    assert!(sessions.contains("/sessions/web/s-1"), "{sessions}");
    assert!(
        sessions.contains("<td class=\"n\">7</td>"),
        "the session's tokens: {sessions}"
    );
    let (_, transcript) = page(&app, &cookie, "/sessions/web/s-1").await?;
    assert!(
        transcript.contains("Reading it now.")
            && transcript.contains("Grep")
            && transcript.contains(done_id)
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_viewer_sees_no_actions_and_the_server_refuses_them() -> Result<()> {
    let app = TestApp::spawn().await?;
    let failed = app.submit(failing("default")).await?;
    let id = failed["id"].as_str().unwrap_or_default();
    app.wait_for_state(id, "failed").await?;
    let reader = token(&app, "reader", &[Scope::Read]).await?;
    let cookie = sign_in(&app, &reader).await?;
    let (_, html) = page(&app, &cookie, &format!("/tasks/{id}")).await?;
    assert!(
        !html.contains("/ui/tasks/"),
        "no action forms for a reader: {html}"
    );
    let (_, list) = page(&app, &cookie, "/tasks").await?;
    assert!(!list.contains("Submit a task") && !list.contains("retry-all"));
    let refused = post_form(
        &app,
        &cookie,
        &format!("/ui/tasks/{id}/retry"),
        &[("csrf", &csrf(&html)?)],
    )
    .await?;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await?.contains("lacks the `admin` scope"));
    assert_eq!(app.task(id).await?["state"], "failed", "nothing changed");
    // The cookie reads the JSON API (the pages' live stream does), but never writes.
    let read = client()?
        .get(app.url("/v1/tasks"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(read.status(), 200);
    let admin_cookie = sign_in(&app, app.token()).await?;
    let write = client()?
        .post(app.url(&format!("/v1/tasks/{id}/retry")))
        .header("cookie", &admin_cookie)
        .send()
        .await?;
    assert_eq!(write.status(), 401, "a cookie alone never changes anything");
    assert_eq!(app.task(id).await?["state"], "failed");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_without_the_csrf_value_or_from_another_site_change_nothing() -> Result<()> {
    let app = TestApp::spawn().await?;
    let failed = app.submit(failing("default")).await?;
    let id = failed["id"].as_str().unwrap_or_default();
    app.wait_for_state(id, "failed").await?;
    let cookie = sign_in(&app, app.token()).await?;
    let (_, html) = page(&app, &cookie, &format!("/tasks/{id}")).await?;
    let path = format!("/ui/tasks/{id}/retry");
    let missing = post_form(&app, &cookie, &path, &[]).await?;
    assert_eq!(missing.status(), 403);
    let forged = post_form(&app, &cookie, &path, &[("csrf", "0000")]).await?;
    assert_eq!(forged.status(), 403);
    let cross_site = client()?
        .post(app.url(&path))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf(&html)?.as_str())])
        .send()
        .await?;
    assert_eq!(cross_site.status(), 403);
    assert_eq!(
        app.task(id).await?["state"],
        "failed",
        "none of them retried it"
    );
    let real = post_form(&app, &cookie, &path, &[("csrf", &csrf(&html)?)]).await?;
    assert_eq!(real.status(), 303);
    assert_eq!(real.headers()["location"].to_str()?, format!("/tasks/{id}"));
    let kinds = app.event_kinds(id).await?;
    assert!(kinds.contains(&"task.retried".to_owned()), "{kinds:?}");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_retry_of_a_filter_says_how_many_then_retries_each_and_no_other() -> Result<()> {
    let app = TestApp::spawn().await?;
    let mut ours = Vec::new();
    for _ in 0..3 {
        ours.push(
            app.submit(failing("bulk-p")).await?["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let other = app.submit(failing("other-p")).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for id in ours.iter().chain([&other]) {
        app.wait_for_state(id, "failed").await?;
    }
    let cookie = sign_in(&app, app.token()).await?;
    let (_, html) = page(&app, &cookie, "/tasks?project=bulk-p").await?;
    let token = csrf(&html)?;
    let confirm = post_form(
        &app,
        &cookie,
        "/ui/tasks/bulk",
        &[
            ("csrf", &token),
            ("project", "bulk-p"),
            ("action", "retry-all"),
        ],
    )
    .await?;
    assert_eq!(confirm.status(), 200);
    let confirm = confirm.text().await?;
    assert!(confirm.contains(r#"data-matching="3""#), "{confirm}");
    for id in &ours {
        assert_eq!(
            app.task(id).await?["state"],
            "failed",
            "nothing happens before the confirmation"
        );
    }
    let done = post_form(
        &app,
        &cookie,
        "/ui/tasks/bulk",
        &[
            ("csrf", &token),
            ("project", "bulk-p"),
            ("action", "retry-all"),
            ("confirm", "yes"),
        ],
    )
    .await?;
    let done = done.text().await?;
    assert!(done.contains("Retry: 3 of 3 tasks"), "{done}");
    for id in &ours {
        let kinds = app.event_kinds(id).await?;
        assert!(
            kinds.contains(&"task.retried".to_owned()),
            "{id}: {kinds:?}"
        );
    }
    assert!(
        !app.event_kinds(&other)
            .await?
            .contains(&"task.retried".to_owned()),
        "another project's task was retried"
    );

    // Selected tasks: only those ticked.
    let selected = post_form(
        &app,
        &cookie,
        "/ui/tasks/bulk",
        &[("csrf", &token), ("action", "cancel-selected")],
    )
    .await?;
    assert_eq!(selected.status(), 400, "nothing ticked is a clear error");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_filters_and_forms_get_a_400_that_says_what_is_wrong() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let cookie = sign_in(&app, app.token()).await?;
    for (path, says) in [
        ("/tasks?state=bogus", "bogus"),
        ("/tasks?from=yesterday", "yesterday&quot; is not a time"),
        (
            "/tasks?project=%00",
            "project contains the character U+0000",
        ),
        ("/tasks?cursor=nope", "nope&quot; is not a task id"),
        ("/tasks/not-a-uuid", "not a UUID"),
    ] {
        let (status, html) = page(&app, &cookie, path).await?;
        assert_eq!(status, 400, "{path}: {html}");
        assert!(html.contains(says), "{path} should say {says:?}: {html}");
    }
    let (status, _) = page(&app, &cookie, &format!("/tasks/{}", uuid::Uuid::now_v7())).await?;
    assert_eq!(status, 404);
    let (_, html) = page(&app, &cookie, "/tasks").await?;
    let token = csrf(&html)?;
    let empty = post_form(
        &app,
        &cookie,
        "/ui/tasks",
        &[("csrf", &token), ("input", "  ")],
    )
    .await?;
    assert_eq!(empty.status(), 400);
    let bad_queue = post_form(
        &app,
        &cookie,
        "/ui/tasks",
        &[
            ("csrf", &token),
            ("input", "hi"),
            ("queue", "no spaces allowed"),
        ],
    )
    .await?;
    assert_eq!(bad_queue.status(), 400, "{}", bad_queue.text().await?);
    let (tasks, _) = app.counts().await?;
    assert_eq!(tasks, 0, "no bad form wrote anything");
    let made = post_form(
        &app,
        &cookie,
        "/ui/tasks",
        &[
            ("csrf", &token),
            ("input", "{\"steps\": 1}"),
            ("queue", "ui-q"),
        ],
    )
    .await?;
    assert_eq!(made.status(), 303);
    let id = made.headers()["location"]
        .to_str()?
        .trim_start_matches("/tasks/")
        .to_owned();
    let task = app.task(&id).await?;
    assert_eq!(
        (task["queue"].clone(), task["input"].clone()),
        (json!("ui-q"), json!({"steps": 1}))
    );
    app.stop().await
}

/// A task whose turn asks permission to run `rm -rf build` with bash.
fn asking_permission() -> Value {
    json!({"input": {"prompt": "clean up", "script": {"chunks": ["thinking"], "request": {
        "kind": "permission", "prompt": "run rm?", "tool": "bash",
        "tool_input": {"cmd": "rm -rf build"}, "timeout_ms": 600_000}}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_does_not_fit_the_request_changes_nothing_and_says_why() -> Result<()> {
    let app = TestApp::spawn().await?;
    let task = app.submit(asking_permission()).await?;
    let id = task["id"].as_str().unwrap_or_default();
    app.wait_for_state(id, "blocked").await?;
    let cookie = sign_in(&app, app.token()).await?;
    let (_, inbox) = page(&app, &cookie, "/inbox").await?;
    let action = format!("/ui/tasks/{id}/respond");
    for shows in [
        action.as_str(),
        "run rm?",
        "rm -rf build",
        r#"value="allow""#,
        r#"value="deny""#,
        "then: <strong>deny</strong>",
    ] {
        assert!(inbox.contains(shows), "the inbox shows {shows:?}: {inbox}");
    }
    assert!(
        !inbox.contains(&format!("/ui/tasks/{id}/approve")),
        "a request is answered, not approved"
    );
    let token = csrf(&inbox)?;
    let version = app.task(id).await?["version"].to_string();
    let form = |choice: &'static str, input: &'static str| {
        vec![
            ("csrf", token.clone()),
            ("back", "inbox".to_owned()),
            ("version", version.clone()),
            ("choice", choice.to_owned()),
            ("input", input.to_owned()),
        ]
    };
    let send = |fields: Vec<(&'static str, String)>| {
        let (app, cookie, action) = (&app, &cookie, &action);
        async move {
            let borrowed: Vec<(&str, &str)> =
                fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(app, cookie, action, &borrowed).await
        }
    };
    for (fields, status, says) in [
        (form("allow", "{\"cmd\": \"rm -rf build"), 400, "not JSON"),
        (form("maybe", "{}"), 400, "is not one of the request"),
        (
            form("allow", "{}")
                .into_iter()
                .filter(|(k, _)| *k != "csrf")
                .collect(),
            403,
            "did not come from this page",
        ),
        (
            form("allow", "{}")
                .into_iter()
                .map(|(k, v)| (k, if k == "version" { "1".to_owned() } else { v }))
                .collect(),
            409,
            "changed since this form was shown",
        ),
    ] {
        let response = send(fields).await?;
        assert_eq!(response.status(), status);
        let html = response.text().await?;
        assert!(html.contains(says), "{says:?} in {html}");
        assert!(
            status == 403 || html.contains(&format!("href=\"/tasks/{id}\"")),
            "the error page leads back to the task: {html}"
        );
    }
    let reader = token_cookie(&app, "reader", &[Scope::Read]).await?;
    let refused = post_form(
        &app,
        &reader.0,
        &action,
        &[("csrf", &reader.1), ("choice", "allow")],
    )
    .await?;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await?.contains("lacks the `submit` scope"));
    let after = app.task(id).await?;
    assert_eq!(after["state"], "blocked", "nothing was answered: {after}");
    assert!(after.get("response").is_none(), "{after}");
    assert!(
        !app.event_kinds(id)
            .await?
            .contains(&"task.responded".to_owned())
    );

    // A denial ignores a half-edited input; the answer is the viewer's.
    let denied = send(form("deny", "{\"cmd\":")).await?;
    assert_eq!(denied.status(), 303);
    assert_eq!(denied.headers()["location"], "/inbox");
    let done = app.wait_for_state(id, "completed").await?;
    let summary: Value = serde_json::from_str(done["output_summary"].as_str().unwrap_or_default())?;
    assert_eq!(summary, json!({"choice": "deny", "by": "test"}), "{done}");
    let (_, task_page) = page(&app, &cookie, &format!("/tasks/{id}")).await?;
    assert!(
        task_page.contains("<strong class=\"danger\">Deny</strong>")
            && task_page.contains(">test<"),
        "the task page shows who answered what: {task_page}"
    );

    // A text request: a textarea and Send; blank is refused, an answer is recorded.
    let text = app
        .submit(json!({"input": {"script": {"request": {"kind": "text", "prompt": "Name the release"}}}}))
        .await?;
    let text = text["id"].as_str().unwrap_or_default();
    app.wait_for_state(text, "blocked").await?;
    let (_, html) = page(&app, &cookie, &format!("/tasks/{text}")).await?;
    assert!(
        html.contains(r#"<textarea name="text" rows="4" required>"#) && html.contains(">Send<"),
        "{html}"
    );
    let action = format!("/ui/tasks/{text}/respond");
    let blank = post_form(&app, &cookie, &action, &[("csrf", &token), ("text", "  ")]).await?;
    assert_eq!(blank.status(), 400);
    assert!(blank.text().await?.contains("wants a text answer"));
    let sent = post_form(
        &app,
        &cookie,
        &action,
        &[("csrf", &token), ("text", "Aurora"), ("back", "task")],
    )
    .await?;
    assert_eq!(sent.status(), 303);
    assert_eq!(
        sent.headers()["location"].to_str()?,
        format!("/tasks/{text}")
    );
    let done = app.wait_for_state(text, "completed").await?;
    assert!(
        done["output_summary"]
            .as_str()
            .unwrap_or_default()
            .contains("Aurora"),
        "{done}"
    );
    app.stop().await
}

/// A session cookie for a new token named `name` with `scopes`, and its CSRF value.
async fn token_cookie(app: &TestApp, name: &str, scopes: &[Scope]) -> Result<(String, String)> {
    let secret = token(app, name, scopes).await?;
    let cookie = sign_in(app, &secret).await?;
    let (_, html) = page(app, &cookie, "/").await?;
    let value = csrf(&html)?;
    Ok((cookie, value))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_arena_page_compares_contestants_and_picks_a_winner_through_a_checked_form() -> Result<()>
{
    let app = TestApp::spawn().await?;
    let arena = app
        .create_arena(json!({"input": {"prompt": "tidy up", "script": {"chunks": ["tidied"], "output_tokens": 12,
                "by_model": {"flaky": {"outcome": "fail", "message": "lost the thread"}}}},
            "project": "cmp", "max_attempts": 1,
            "contestants": [{"agent": "script", "model": "steady"}, {"agent": "script", "model": "flaky"}]}))
        .await?;
    let id = arena["id"].as_str().unwrap_or_default().to_owned();
    let arena = app.wait_for_arena_to_end(&id).await?;
    let task = |i: usize| {
        arena["contestants"][i]["task_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (steady, flaky) = (task(0), task(1));
    let cookie = sign_in(&app, app.token()).await?;

    let (status, list) = page(&app, &cookie, "/arenas?project=cmp").await?;
    assert_eq!(status, 200);
    assert!(list.contains(&format!("/arenas/{id}")), "{list}");
    let (_, none) = page(&app, &cookie, "/arenas?project=elsewhere").await?;
    assert!(none.contains("No arena in this project."));

    let (status, html) = page(&app, &cookie, &format!("/arenas/{id}")).await?;
    assert_eq!(status, 200);
    for shows in [
        "steady",
        "flaky",
        "tidied",
        "lost the thread",
        "12 out",
        "Pick as winner",
    ] {
        assert!(html.contains(shows), "the arena page shows {shows}");
    }
    assert!(
        !html.contains("style=\"") && !html.contains("<script>"),
        "no inline code"
    );
    // One pick button: the failed contestant cannot win.
    assert_eq!(html.matches("name=\"task_id\"").count(), 1, "{html}");
    assert!(html.contains(&format!("value=\"{steady}\"")));
    // A contestant's task page links back to its arena.
    let (_, task_page) = page(&app, &cookie, &format!("/tasks/{flaky}")).await?;
    assert!(task_page.contains(&format!("/arenas/{id}")), "{task_page}");

    // A reader sees no button, and the server refuses the form anyway.
    let reader = token(&app, "reader", &[Scope::Read]).await?;
    let reader_cookie = sign_in(&app, &reader).await?;
    let (_, as_reader) = page(&app, &reader_cookie, &format!("/arenas/{id}")).await?;
    assert!(!as_reader.contains("Pick as winner"));
    let action = format!("/ui/arenas/{id}/winner");
    let refused = post_form(
        &app,
        &reader_cookie,
        &action,
        &[("csrf", &csrf(&as_reader)?), ("task_id", &steady)],
    )
    .await?;
    assert_eq!(refused.status(), 403);
    // Without the CSRF value, or naming the failed contestant: refused, nothing written.
    let no_csrf = post_form(&app, &cookie, &action, &[("task_id", &steady)]).await?;
    assert_eq!(no_csrf.status(), 403);
    let token_csrf = csrf(&html)?;
    let lost = post_form(
        &app,
        &cookie,
        &action,
        &[("csrf", &token_csrf), ("task_id", &flaky)],
    )
    .await?;
    assert_eq!(lost.status(), 400);
    assert!(
        lost.text()
            .await?
            .contains("only a contestant that completed can win")
    );
    let junk = post_form(
        &app,
        &cookie,
        &action,
        &[("csrf", &token_csrf), ("task_id", "nope")],
    )
    .await?;
    assert_eq!(junk.status(), 400);
    assert!(app.arena(&id).await?["winner_task_id"].is_null());

    let picked = post_form(
        &app,
        &cookie,
        &action,
        &[("csrf", &token_csrf), ("task_id", &steady)],
    )
    .await?;
    assert_eq!(picked.status(), 303);
    assert_eq!(picked.headers()["location"], format!("/arenas/{id}"));
    let decided = app.arena(&id).await?;
    assert_eq!(decided["winner_task_id"], steady.as_str());
    assert_eq!(decided["decided_by"], "test", "the signed-in token's name");
    let (_, html) = page(&app, &cookie, &format!("/arenas/{id}")).await?;
    assert!(
        html.contains("picked by") && !html.contains("Pick as winner"),
        "{html}"
    );
    let again = post_form(
        &app,
        &cookie,
        &action,
        &[("csrf", &token_csrf), ("task_id", &steady)],
    )
    .await?;
    assert_eq!(again.status(), 409);
    let (status, _) = page(&app, &cookie, &format!("/arenas/{}", uuid::Uuid::now_v7())).await?;
    assert_eq!(status, 404);
    let (status, _) = page(&app, &cookie, "/arenas/not-a-uuid").await?;
    assert_eq!(status, 400);
    app.stop().await
}
