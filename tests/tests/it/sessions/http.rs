//! The HTTP face's own rules: bad input, body limits, scopes and route overlaps.

use super::*;

async fn session_rows(db: &DatabaseConnection) -> Result<(i64, i64)> {
    Ok((
        count(db, "session_entries").await?,
        count(db, "session_summaries").await?,
    ))
}

#[tokio::test]
async fn bad_session_input_is_a_4xx_in_the_envelope_and_writes_nothing() -> Result<()> {
    // The store refuses it before any SQL: its input types validate on construction.
    let invalid = [
        SessionKey::new("", "s", None).err(),
        SessionKey::new("p".repeat(257), "s", None).err(),
        SessionKey::new("p", "a\nb", None).err(),
        SessionKey::new("p", "s", Some("a/../b".into())).err(),
        SessionKey::new("p", "s", Some(String::new())).err(),
        SessionKey::new("p", "s", Some("x".repeat(513))).err(),
        Entries::new(vec![json!("text")]).err(),
        Entries::new(vec![json!({}); 10_001]).err(),
    ];
    for e in invalid {
        ensure!(matches!(e, Some(Error::Invalid(_))), "{e:?}");
    }

    let app = TestApp::spawn_without_workers().await?;
    let entries = "/v1/sessions/proj/sess/entries";
    app.post(entries, &json!({"entries": [{"uuid": "seed"}]}))
        .await?;
    let before = session_rows(&app.db).await?;
    let long = "p".repeat(257);
    let posts: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (
            entries.into(),
            b"{not json".to_vec(),
            400,
            "parse the request body as JSON",
        ),
        (
            entries.into(),
            br#"{"entries": {}}"#.to_vec(),
            422,
            "entries",
        ),
        (entries.into(), br#"{}"#.to_vec(), 422, "entries"),
        (
            entries.into(),
            br#"{"entries": [], "extra": 1}"#.to_vec(),
            422,
            "extra",
        ),
        (
            entries.into(),
            br#"{"entries": [{"uuid": "ok"}, "text"]}"#.to_vec(),
            400,
            "entries[1] is a string, not a JSON object",
        ),
        (
            entries.into(),
            br#"{"entries": [{"uuid": "ok"}, {"a": "nul\u0000"}]}"#.to_vec(),
            400,
            "U+0000",
        ),
        (
            entries.into(),
            serde_json::to_vec(&json!({"entries": vec![json!({}); 10_001]}))?,
            400,
            "limit is 10000",
        ),
        (
            format!("/v1/sessions/{long}/sess/entries"),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "project key is 257 characters",
        ),
        (
            format!("/v1/sessions/proj/{long}/entries"),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "session id is 257 characters",
        ),
        (
            "/v1/sessions/proj/a%0Ab/entries".into(),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "control characters",
        ),
        (
            "/v1/sessions/proj/sess/entries?subpath=a/../b".into(),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "`..` segment",
        ),
        (
            "/v1/sessions/proj/sess/entries?subpath=..%2Fup".into(),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "`..` segment",
        ),
        (
            "/v1/sessions/proj/sess/entries?subpath=".into(),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "omit it for the main transcript",
        ),
        (
            format!("/v1/sessions/proj/sess/entries?subpath={}", "x".repeat(513)),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "subpath is 513 characters",
        ),
        (
            "/v1/sessions/proj/sess/entries?sub=x".into(),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "sub",
        ),
        (
            "/v1/sessions/proj/%FF/entries".into(),
            b"{\"entries\": [{}]}".to_vec(),
            400,
            "UTF-8",
        ),
    ];
    for (path, body, want, needle) in posts {
        let (status, answer) = app.post_raw(&path, body, "application/json").await?;
        ensure!(status == want, "POST {path}: {status} {answer}");
        ensure!(answer["error"]["code"].is_string(), "POST {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains(needle),
            "POST {path}: wanted {needle:?} in {message:?}"
        );
    }
    let (status, answer) = app
        .post_raw(entries, br#"{"entries": []}"#.to_vec(), "text/plain")
        .await?;
    ensure!(
        status == 415 && answer["error"]["code"] == "unsupported_media_type",
        "{answer}"
    );

    let gets = [
        ("/v1/sessions/proj/nope/entries", 404, "has no entries"),
        (
            "/v1/sessions/proj/sess/entries?subpath=..",
            400,
            "`..` segment",
        ),
        ("/v1/sessions/proj/sess/entries?limit=1", 400, "limit"),
        ("/v1/sessions/proj/a%01b/subkeys", 400, "control characters"),
    ];
    for (path, want, needle) in gets {
        let (status, answer) = app.get(path).await?;
        ensure!(status == want, "GET {path}: {status} {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains(needle),
            "GET {path}: wanted {needle:?} in {message:?}"
        );
    }
    let response = app
        .http
        .delete(app.url("/v1/sessions/proj/sess?subpath=../x"))
        .send()
        .await?;
    ensure!(
        response.status() == 400,
        "DELETE answered {}",
        response.status()
    );
    ensure!(
        session_rows(&app.db).await? == before,
        "a bad request wrote or deleted"
    );
    app.stop().await?;
    Ok(())
}

/// The bytes of `{"entries":[{"pad":""}]}`.
const FRAME: usize = 24;

/// A body of `{"entries":[{"pad":"xxx…"}]}` of exactly `bytes` bytes.
fn body_of(bytes: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({"entries": [{"pad": "x".repeat(bytes - FRAME)}]}))
        .unwrap_or_default()
}

#[tokio::test]
async fn session_bodies_up_to_16_mib_are_accepted_and_larger_ones_are_413() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let limit = turnq_api::DEFAULT_SESSION_BODY_LIMIT;
    ensure!(limit == 16 * 1024 * 1024);
    let path = "/v1/sessions/proj/big/entries";
    // Over axum's 2 MB default, so the route's own limit is the one in force.
    let big = body_of(limit);
    ensure!(big.len() == limit, "the body is {} bytes", big.len());
    let (status, answer) = app.post_raw(path, big, "application/json").await?;
    ensure!(status == 204, "{status} {answer}");
    let (_, loaded) = app.get(path).await?;
    ensure!(loaded["entries"][0]["pad"].as_str().map(str::len) == Some(limit - FRAME));

    let before = session_rows(&app.db).await?;
    let (status, answer) = app
        .post_raw(path, body_of(limit + 1), "application/json")
        .await?;
    ensure!(status == 413, "{status} {answer}");
    ensure!(answer["error"]["code"] == "payload_too_large", "{answer}");
    ensure!(session_rows(&app.db).await? == before);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_session_body_limit_is_a_setting_of_the_api() -> Result<()> {
    let app = TestApp::spawn_with_api(turnq_api::ApiConfig {
        session_body_limit: 4096,
        ..Default::default()
    })
    .await?;
    let url = app.url("/v1/sessions/p/s/entries");
    let post = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(app.token())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = post(body_of(4096)).await?;
    ensure!(ok.status() == 204, "{}", ok.status());
    let refused = post(body_of(4097)).await?;
    ensure!(refused.status() == 413, "{}", refused.status());
    let answer: Value = refused.json().await?;
    ensure!(answer["error"]["code"] == "payload_too_large", "{answer}");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn session_routes_need_read_to_get_submit_to_append_and_admin_to_delete() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let (read, _) = TokenStore::create(&app.db, "reader", &[Scope::Read]).await?;
    let (submit, _) = TokenStore::create(&app.db, "agent", &[Scope::Submit]).await?;
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut request = reqwest::Client::new().request(method, app.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.json(&json!({"entries": [{"uuid": "u"}]})).send()
    };
    use reqwest::Method as M;
    let entries = "/v1/sessions/proj/sess/entries";
    for (method, path) in [
        (M::POST, entries),
        (M::GET, entries),
        (M::GET, "/v1/sessions/proj"),
        (M::GET, "/v1/sessions/proj/summaries"),
        (M::GET, "/v1/sessions/proj/sess/subkeys"),
        (M::DELETE, "/v1/sessions/proj/sess"),
    ] {
        let status = call(method.clone(), path, None).await?.status();
        ensure!(status == 401, "{method} {path} without a token: {status}");
    }
    let cases = [
        (M::POST, entries, read.expose(), 403),
        (M::POST, entries, submit.expose(), 204),
        (M::GET, entries, submit.expose(), 403),
        (M::GET, entries, read.expose(), 200),
        (M::GET, "/v1/sessions/proj", read.expose(), 200),
        (M::GET, "/v1/sessions/proj/summaries", read.expose(), 200),
        (M::GET, "/v1/sessions/proj/sess/subkeys", read.expose(), 200),
        (M::DELETE, "/v1/sessions/proj/sess", read.expose(), 403),
        (M::DELETE, "/v1/sessions/proj/sess", submit.expose(), 403),
        (M::DELETE, "/v1/sessions/proj/sess", app.token(), 204),
    ];
    for (method, path, token, want) in cases {
        let response = call(method.clone(), path, Some(token)).await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        ensure!(status == want, "{method} {path}: {status} {body}");
        if status == 403 {
            ensure!(body.contains("\"forbidden\""), "{body}");
        }
    }
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_session_named_summaries_is_still_reachable_beside_the_summaries_route() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    for path in [
        "/v1/sessions/proj/summaries/entries",
        "/v1/sessions/proj/summaries/entries?subpath=subagents/agent-1",
        "/v1/sessions/proj/other/entries",
    ] {
        let (status, answer) = app.post(path, &json!({"entries": [{"n": 1}]})).await?;
        ensure!(status == 204, "POST {path}: {status} {answer}");
    }
    let (status, answer) = app.get("/v1/sessions/proj/summaries/entries").await?;
    ensure!(
        status == 200 && answer["entries"] == json!([{"n": 1}]),
        "{status} {answer}"
    );
    let (_, answer) = app.get("/v1/sessions/proj/summaries/subkeys").await?;
    ensure!(
        answer["subkeys"] == json!(["subagents/agent-1"]),
        "{answer}"
    );
    let (_, answer) = app.get("/v1/sessions/proj/summaries").await?;
    let ids: Vec<&str> = answer["summaries"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["session_id"].as_str()).collect())
        .unwrap_or_default();
    ensure!(ids.len() == 2 && ids.contains(&"summaries"), "{answer}");
    let (_, answer) = app.get("/v1/sessions/proj").await?;
    ensure!(
        answer["sessions"].as_array().map(Vec::len) == Some(2),
        "{answer}"
    );

    let deleted = app
        .http
        .delete(app.url("/v1/sessions/proj/summaries?subpath=subagents/agent-1"))
        .send()
        .await?;
    ensure!(deleted.status() == 204, "{}", deleted.status());
    let (_, answer) = app.get("/v1/sessions/proj/summaries/subkeys").await?;
    ensure!(answer["subkeys"] == json!([]), "{answer}");
    let deleted = app
        .http
        .delete(app.url("/v1/sessions/proj/summaries"))
        .send()
        .await?;
    ensure!(deleted.status() == 204, "{}", deleted.status());
    let (status, _) = app.get("/v1/sessions/proj/summaries/entries").await?;
    ensure!(status == 404);
    let (_, answer) = app.get("/v1/sessions/proj").await?;
    ensure!(
        answer["sessions"]
            == json!([{"session_id": "other", "mtime": answer["sessions"][0]["mtime"]}]),
        "{answer}"
    );

    // Percent-encoded segments reach the store decoded: a project key may hold `/`.
    let (status, _) = app
        .post(
            "/v1/sessions/a%2Fb/s%20id/entries",
            &json!({"entries": [{"n": 2}]}),
        )
        .await?;
    ensure!(status == 204);
    let (_, answer) = app.get("/v1/sessions/a%2Fb").await?;
    ensure!(answer["sessions"][0]["session_id"] == "s id", "{answer}");
    app.stop().await?;
    Ok(())
}

/// The fixture: a transcript and what each SDK's own fold makes of it.
fn sdk_folds() -> Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/sessions/sdk-folds.json"
    );
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[tokio::test]
async fn summaries_are_served_in_the_form_each_sdk_folds_and_reads() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let fixture = sdk_folds()?;
    let entries = fixture["entries"].as_array().context("entries")?;
    let split = fixture["first_batch"].as_u64().context("first_batch")? as usize;
    for batch in [&entries[..split], &entries[split..]] {
        let (status, answer) = app
            .post(
                "/v1/sessions/proj/sess/entries",
                &json!({ "entries": batch }),
            )
            .await?;
        ensure!(status == 204, "{status} {answer}");
    }
    // turnq's own additions, which neither SDK reads.
    let sdk_fields = |data: &Value, extras: [&str; 2]| -> Value {
        let mut data = data.clone();
        if let Some(fields) = data.as_object_mut() {
            for extra in extras {
                fields.remove(extra);
            }
        }
        data
    };
    for (query, style, extras) in [
        ("", "python", ["entry_count", "last_entry"]),
        ("?style=python", "python", ["entry_count", "last_entry"]),
        (
            "?style=typescript",
            "typescript",
            ["entryCount", "lastEntry"],
        ),
    ] {
        let (status, answer) = app
            .get(&format!("/v1/sessions/proj/summaries{query}"))
            .await?;
        ensure!(status == 200, "{query}: {status} {answer}");
        let summary = &answer["summaries"][0];
        ensure!(summary["session_id"] == "sess", "{answer}");
        ensure!(
            sdk_fields(&summary["data"], extras) == fixture[style],
            "{query}: served {}\nthe {style} SDK folds {}",
            summary["data"],
            fixture[style]
        );
        ensure!(summary["data"][extras[0]] == entries.len(), "{answer}");
    }
    let (status, answer) = app.get("/v1/sessions/proj/summaries?style=go").await?;
    ensure!(
        status == 400
            && answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("style"),
        "{status} {answer}"
    );
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_query_value_that_is_not_utf8_is_refused_not_read_as_another_value() -> Result<()> {
    let app = TestApp::spawn_without_workers().await?;
    let before = session_rows(&app.db).await?;
    // %FF decodes to no character: read lossily it would be stored under "\u{FFFD}".
    let (status, answer) = app
        .post(
            "/v1/sessions/proj/sess/entries?subpath=sub%FFagent",
            &json!({"entries": [{"n": 1}]}),
        )
        .await?;
    ensure!(status == 400, "{status} {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("subpath") && message.contains("UTF-8"),
        "{message}"
    );
    ensure!(
        session_rows(&app.db).await? == before,
        "nothing was written"
    );
    for path in [
        "/v1/sessions/proj/sess/entries?subpath=%C3%28",
        "/v1/tasks?project=%FF",
        "/v1/tasks?%FF=1",
    ] {
        let (status, answer) = app.get(path).await?;
        ensure!(status == 400, "GET {path}: {status} {answer}");
        ensure!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("UTF-8"),
            "GET {path}: {answer}"
        );
    }
    // Percent-encoded UTF-8 is fine.
    let (status, answer) = app
        .post(
            "/v1/sessions/proj/sess/entries?subpath=sub%C3%A9",
            &json!({"entries": [{"n": 1}]}),
        )
        .await?;
    ensure!(status == 204, "{status} {answer}");
    app.stop().await?;
    Ok(())
}
