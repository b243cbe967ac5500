//! The session store: the Claude Agent SDK's `SessionStore` contract, each rule checked
//! twice, on the Postgres store itself and through the HTTP API (an HTTP client that
//! implements the same trait, as the SDK adapter in `docs/sessions.md` does); then the
//! HTTP face's own rules: bad input, body limits, scopes and route overlaps.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use turnq_core::{
    Error,
    agent::{AgentSession, AgentSessions, AgentStatus, Turn},
    auth::{Scope, TokenStore},
    event::Usage,
    session::{
        Appended, BoxFuture, Entries, PgSessionStore, ProjectKey, SessionId, SessionKey,
        SessionListing, SessionStore, SessionSummary, Subpath,
    },
    time,
};

use turnq_tests::{TestApp, TestDb, count};

// ---------------------------------------------------------------------------------------
// The two faces
// ---------------------------------------------------------------------------------------

/// The HTTP API as a [`SessionStore`]: what an SDK process sees.
#[derive(Clone)]
struct HttpStore {
    http: reqwest::Client,
    base: reqwest::Url,
}

/// A failed HTTP call, as the trait's error type (the tests only need its message).
fn failed(what: impl std::fmt::Display) -> Error {
    Error::Invalid(what.to_string())
}

impl HttpStore {
    fn new(app: &TestApp) -> Result<Self> {
        Ok(HttpStore {
            http: app.http.clone(),
            base: reqwest::Url::parse(&app.base)?,
        })
    }

    /// `/v1/sessions/{segments…}[?subpath=…]`, each segment percent-encoded.
    fn url(&self, segments: &[&str], subpath: Option<&Subpath>) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(["v1", "sessions"]).extend(segments);
        }
        if let Some(subpath) = subpath {
            url.query_pairs_mut()
                .append_pair("subpath", subpath.as_str());
        }
        url
    }

    fn key_url(&self, key: &SessionKey, last: Option<&str>) -> reqwest::Url {
        let mut segments = vec![key.project.as_str(), key.session.as_str()];
        segments.extend(last);
        self.url(&segments, key.subpath.as_ref())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<Value>,
    ) -> turnq_core::error::Result<(u16, Value)> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(failed)?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| failed(format!("{e}: {text}")))?
        };
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<Value>,
        want: u16,
    ) -> turnq_core::error::Result<Value> {
        let what = format!("{method} {url}");
        let (status, answer) = self.call(method, url, body).await?;
        if status != want {
            return Err(failed(format!("{what}: {status} {answer}")));
        }
        Ok(answer)
    }
}

fn array(answer: &Value, field: &str) -> turnq_core::error::Result<Vec<Value>> {
    answer[field]
        .as_array()
        .cloned()
        .ok_or_else(|| failed(format!("{field} is not an array: {answer}")))
}

fn listing(v: &Value) -> turnq_core::error::Result<(String, i64)> {
    match (v["session_id"].as_str(), v["mtime"].as_i64()) {
        (Some(id), Some(mtime)) => Ok((id.to_owned(), mtime)),
        _ => Err(failed(format!("not a session listing: {v}"))),
    }
}

impl SessionStore for HttpStore {
    fn append<'a>(
        &'a self,
        key: &'a SessionKey,
        entries: Entries,
    ) -> BoxFuture<'a, turnq_core::error::Result<Appended>> {
        Box::pin(async move {
            let n = entries.len();
            let body = json!({ "entries": entries.into_vec() });
            let answer = self
                .expect(
                    reqwest::Method::POST,
                    self.key_url(key, Some("entries")),
                    Some(body),
                    204,
                )
                .await?;
            if !answer.is_null() {
                return Err(failed(format!("204 with a body: {answer}")));
            }
            // The HTTP face does not say how many were duplicates.
            Ok(Appended {
                appended: n,
                duplicates: 0,
            })
        })
    }

    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, turnq_core::error::Result<Option<Vec<Value>>>> {
        Box::pin(async move {
            let url = self.key_url(key, Some("entries"));
            match self.call(reqwest::Method::GET, url, None).await? {
                (200, answer) => Ok(Some(array(&answer, "entries")?)),
                (404, answer) if answer["error"]["code"] == "not_found" => Ok(None),
                (status, answer) => Err(failed(format!("load {key}: {status} {answer}"))),
            }
        })
    }

    fn list_sessions<'a>(
        &'a self,
        project: &'a ProjectKey,
    ) -> BoxFuture<'a, turnq_core::error::Result<Vec<SessionListing>>> {
        Box::pin(async move {
            let url = self.url(&[project.as_str()], None);
            let answer = self.expect(reqwest::Method::GET, url, None, 200).await?;
            array(&answer, "sessions")?
                .iter()
                .map(|v| {
                    let (session_id, mtime) = listing(v)?;
                    Ok(SessionListing { session_id, mtime })
                })
                .collect()
        })
    }

    fn list_session_summaries<'a>(
        &'a self,
        project: &'a ProjectKey,
    ) -> BoxFuture<'a, turnq_core::error::Result<Vec<SessionSummary>>> {
        Box::pin(async move {
            let url = self.url(&[project.as_str(), "summaries"], None);
            let answer = self.expect(reqwest::Method::GET, url, None, 200).await?;
            array(&answer, "summaries")?
                .iter()
                .map(|v| {
                    let (session_id, mtime) = listing(v)?;
                    Ok(SessionSummary {
                        session_id,
                        mtime,
                        data: v["data"].clone(),
                    })
                })
                .collect()
        })
    }

    fn list_subkeys<'a>(
        &'a self,
        project: &'a ProjectKey,
        session: &'a SessionId,
    ) -> BoxFuture<'a, turnq_core::error::Result<Vec<Subpath>>> {
        Box::pin(async move {
            let url = self.url(&[project.as_str(), session.as_str(), "subkeys"], None);
            let answer = self.expect(reqwest::Method::GET, url, None, 200).await?;
            array(&answer, "subkeys")?
                .iter()
                .map(|v| Subpath::new(v.as_str().unwrap_or_default()))
                .collect()
        })
    }

    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, turnq_core::error::Result<()>> {
        Box::pin(async move {
            self.expect(reqwest::Method::DELETE, self.key_url(key, None), None, 204)
                .await?;
            Ok(())
        })
    }
}

/// One face of the store, with the database behind it.
struct Face<'a> {
    name: &'static str,
    store: Arc<dyn SessionStore>,
    db: &'a DatabaseConnection,
}

/// The Postgres store on a database of its own, and the HTTP API on another.
struct Faces {
    app: TestApp,
    store_db: TestDb,
}

impl Faces {
    async fn new() -> Result<Faces> {
        Ok(Faces {
            app: TestApp::spawn_without_workers().await?,
            store_db: TestDb::new().await?,
        })
    }

    /// Each face with its name and its database (to look behind the API).
    fn each(&self) -> Result<Vec<Face<'_>>> {
        Ok(vec![
            Face {
                name: "store",
                store: Arc::new(PgSessionStore::new(self.store_db.db.clone())),
                db: &self.store_db.db,
            },
            Face {
                name: "http",
                store: Arc::new(HttpStore::new(&self.app)?),
                db: &self.app.db,
            },
        ])
    }

    async fn stop(self) -> Result<()> {
        self.app.stop().await
    }
}

fn key(project: &str, session: &str) -> Result<SessionKey> {
    Ok(SessionKey::new(project, session, None)?)
}

fn sub(project: &str, session: &str, subpath: &str) -> Result<SessionKey> {
    Ok(SessionKey::new(project, session, Some(subpath.into()))?)
}

fn project(name: &str) -> Result<ProjectKey> {
    Ok(ProjectKey::new(name)?)
}

/// An entry as the SDK writes one (`type` is the only field it always has).
fn e(fields: Value) -> Value {
    let mut entry = json!({"type": "x"});
    if let (Some(entry), Some(fields)) = (entry.as_object_mut(), fields.as_object()) {
        entry.extend(fields.clone());
    }
    entry
}

async fn append(store: &dyn SessionStore, key: &SessionKey, entries: Vec<Value>) -> Result<()> {
    store.append(key, Entries::new(entries)?).await?;
    Ok(())
}

async fn load(store: &dyn SessionStore, key: &SessionKey) -> Result<Option<Vec<Value>>> {
    Ok(store.load(key).await?)
}

async fn session_ids(store: &dyn SessionStore, project_key: &str) -> Result<Vec<String>> {
    let mut ids: Vec<String> = store
        .list_sessions(&project(project_key)?)
        .await?
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    ids.sort();
    Ok(ids)
}

async fn subkeys(
    store: &dyn SessionStore,
    project_key: &str,
    session: &str,
) -> Result<Vec<String>> {
    Ok(store
        .list_subkeys(&project(project_key)?, &SessionId::new(session)?)
        .await?
        .into_iter()
        .map(|s| s.as_str().to_owned())
        .collect())
}

async fn summary_of(
    store: &dyn SessionStore,
    project_key: &str,
    session: &str,
) -> Result<Option<SessionSummary>> {
    Ok(store
        .list_session_summaries(&project(project_key)?)
        .await?
        .into_iter()
        .find(|s| s.session_id == session))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `rule` on each face, naming the face when it fails.
macro_rules! on_both_faces {
    ($faces:expr, |$store:ident, $db:ident| $body:block) => {{
        for face in $faces.each()? {
            let $store: &dyn SessionStore = face.store.as_ref();
            let $db: &DatabaseConnection = face.db;
            let outcome: Result<()> = async { $body }.await;
            outcome.with_context(|| format!("on the {} face", face.name))?;
        }
    }};
}

// ---------------------------------------------------------------------------------------
// append and load
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_entries_load_deep_equal_in_append_call_order() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        let k = key("proj", "sess")?;
        // Key order, nesting, unicode and numbers must survive jsonb.
        let first = vec![
            e(json!({"uuid": "b", "n": 1, "z": {"b": [1, 2.5, null, true], "a": "é"}})),
            e(json!({"uuid": "a", "n": 2})),
        ];
        append(store, &k, first.clone()).await?;
        append(
            store,
            &k,
            vec![e(json!({"uuid": "m", "n": 3})), e(json!({"n": 4}))],
        )
        .await?;
        append(store, &k, vec![e(json!({"uuid": "c", "n": 5}))]).await?;
        let loaded = load(store, &k).await?.context("written key loads")?;
        let want: Vec<Value> = first
            .into_iter()
            .chain([
                e(json!({"uuid": "m", "n": 3})),
                e(json!({"n": 4})),
                e(json!({"uuid": "c", "n": 5})),
            ])
            .collect();
        ensure!(loaded == want, "loaded {loaded:?}");
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn session_key_never_written_loads_as_none_not_empty() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        ensure!(load(store, &key("proj", "nope")?).await?.is_none());
        append(store, &key("proj", "sess")?, vec![e(json!({"uuid": "x"}))]).await?;
        ensure!(load(store, &sub("proj", "sess", "nope")?).await?.is_none());
        ensure!(load(store, &key("other", "sess")?).await?.is_none());
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn session_append_of_no_entries_changes_nothing() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, db| {
        append(store, &key("proj", "never")?, vec![]).await?;
        ensure!(load(store, &key("proj", "never")?).await?.is_none());
        ensure!(session_ids(store, "proj").await?.is_empty());

        let k = key("proj", "sess")?;
        append(store, &k, vec![e(json!({"uuid": "a"}))]).await?;
        let before = summary_of(store, "proj", "sess").await?;
        append(store, &k, vec![]).await?;
        ensure!(load(store, &k).await? == Some(vec![e(json!({"uuid": "a"}))]));
        ensure!(summary_of(store, "proj", "sess").await? == before);
        ensure!(count(db, "session_entries").await? == 1);
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn session_entries_with_a_stored_uuid_are_skipped_even_within_one_batch() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, db| {
        let k = key("proj", "sess")?;
        let batch = vec![
            e(json!({"uuid": "u1", "n": 1})),
            e(json!({"n": "no uuid"})),
            e(json!({"uuid": "u2", "n": 2})),
        ];
        append(store, &k, batch.clone()).await?;
        // The SDK retries a failed batch: the retry must change nothing but the
        // entries without a uuid, which are always appended.
        append(store, &k, batch).await?;
        // Repeats within one batch: the first one wins.
        append(
            store,
            &k,
            vec![
                e(json!({"uuid": "u3", "n": 3})),
                e(json!({"uuid": "u3", "n": 33})),
                e(json!({"uuid": "u1", "n": 11})),
                e(json!({"uuid": 7, "n": "a non-string uuid is no uuid"})),
                e(json!({"uuid": 7, "n": "a non-string uuid is no uuid"})),
            ],
        )
        .await?;
        let loaded = load(store, &k).await?.context("loads")?;
        let want = vec![
            e(json!({"uuid": "u1", "n": 1})),
            e(json!({"n": "no uuid"})),
            e(json!({"uuid": "u2", "n": 2})),
            e(json!({"n": "no uuid"})),
            e(json!({"uuid": "u3", "n": 3})),
            e(json!({"uuid": 7, "n": "a non-string uuid is no uuid"})),
            e(json!({"uuid": 7, "n": "a non-string uuid is no uuid"})),
        ];
        ensure!(loaded == want, "loaded {loaded:#?}");
        let summary = summary_of(store, "proj", "sess")
            .await?
            .context("summary")?;
        ensure!(summary.data["entry_count"] == 7, "{}", summary.data);

        // A uuid is unique per transcript, not globally.
        for other in [
            sub("proj", "sess", "subagents/agent-1")?,
            key("proj", "s2")?,
            key("p2", "sess")?,
        ] {
            append(store, &other, vec![e(json!({"uuid": "u1"}))]).await?;
            ensure!(
                load(store, &other).await? == Some(vec![e(json!({"uuid": "u1"}))]),
                "{other}"
            );
        }
        ensure!(count(db, "session_entries").await? == 10);
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_session_appends_store_each_uuid_once_and_never_interleave() -> Result<()> {
    let faces = Faces::new().await?;
    for Face { name, store, .. } in faces.each()? {
        let k = key("proj", "race")?;
        // Eight writers retry the same batch at once, and eight others append batches
        // of their own: every uuid lands once, and each batch stays in one piece.
        let shared: Vec<Value> = (0..50)
            .map(|i| e(json!({"uuid": format!("s{i}")})))
            .collect();
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..16 {
            let (store, k) = (Arc::clone(&store), k.clone());
            let batch = if w < 8 {
                shared.clone()
            } else {
                (0..20)
                    .map(|i| e(json!({"uuid": format!("w{w}-{i}"), "w": w})))
                    .collect()
            };
            writers.spawn(async move { store.append(&k, Entries::new(batch)?).await });
        }
        while let Some(done) = writers.join_next().await {
            done?.with_context(|| format!("an append on the {name} face"))?;
        }
        let loaded = load(store.as_ref(), &k).await?.context("loads")?;
        ensure!(
            loaded.len() == 50 + 8 * 20,
            "{name}: {} entries",
            loaded.len()
        );
        let mut uuids: Vec<&str> = loaded.iter().filter_map(|x| x["uuid"].as_str()).collect();
        uuids.sort_unstable();
        uuids.dedup();
        ensure!(
            uuids.len() == loaded.len(),
            "{name}: a uuid was stored twice"
        );
        for w in 8..16 {
            let at: Vec<usize> = loaded
                .iter()
                .enumerate()
                .filter(|(_, x)| x["w"] == w)
                .map(|(i, _)| i)
                .collect();
            ensure!(
                at.len() == 20 && at[19] - at[0] == 19,
                "{name}: writer {w}'s batch was split: {at:?}"
            );
        }
        let summary = summary_of(store.as_ref(), "proj", "race")
            .await?
            .context("summary")?;
        ensure!(
            summary.data["entry_count"] == 210,
            "{name}: {}",
            summary.data
        );
    }
    faces.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// keys, listing, subkeys, delete
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_subpaths_and_projects_are_stored_apart() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        let main = key("proj", "sess")?;
        let agent = sub("proj", "sess", "subagents/agent-1")?;
        append(store, &main, vec![e(json!({"uuid": "m"}))]).await?;
        append(store, &agent, vec![e(json!({"uuid": "s"}))]).await?;
        append(store, &key("A", "s1")?, vec![e(json!({"from": "A"}))]).await?;
        append(store, &key("B", "s1")?, vec![e(json!({"from": "B"}))]).await?;
        ensure!(load(store, &main).await? == Some(vec![e(json!({"uuid": "m"}))]));
        ensure!(load(store, &agent).await? == Some(vec![e(json!({"uuid": "s"}))]));
        ensure!(load(store, &key("A", "s1")?).await? == Some(vec![e(json!({"from": "A"}))]));
        ensure!(load(store, &key("B", "s1")?).await? == Some(vec![e(json!({"from": "B"}))]));
        ensure!(session_ids(store, "A").await? == ["s1"]);
        ensure!(session_ids(store, "B").await? == ["s1"]);
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn list_sessions_gives_ids_with_epoch_ms_mtime_and_skips_subpath_only_sessions() -> Result<()>
{
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        let started = now_ms();
        append(store, &key("proj", "a")?, vec![e(json!({"n": 1}))]).await?;
        append(store, &key("proj", "b")?, vec![e(json!({"n": 1}))]).await?;
        append(store, &key("other", "c")?, vec![e(json!({"n": 1}))]).await?;
        append(
            store,
            &sub("proj", "only-sub", "subagents/agent-1")?,
            vec![e(json!({"n": 1}))],
        )
        .await?;
        ensure!(session_ids(store, "proj").await? == ["a", "b"]);
        let listed = store.list_sessions(&project("proj")?).await?;
        for s in &listed {
            ensure!(
                s.mtime > 1_000_000_000_000
                    && (started - 1000..=now_ms() + 1000).contains(&s.mtime),
                "mtime {} is not epoch ms of the write (started {started})",
                s.mtime
            );
        }
        ensure!(
            session_ids(store, "never-appended-project")
                .await?
                .is_empty()
        );

        // A later write moves the session's mtime forward; a subpath write does not
        // make a session appear.
        let a_before = listed.iter().find(|s| s.session_id == "a").map(|s| s.mtime);
        // The next write must land in a later millisecond than the first.
        let first = a_before.unwrap_or_default();
        turnq_tests::eventually("the clock passes the first write's millisecond", || async {
            let now = chrono::Utc::now().timestamp_millis();
            if now > first {
                Ok(())
            } else {
                Err(format!("now {now}"))
            }
        })
        .await?;
        append(store, &key("proj", "a")?, vec![e(json!({"n": 2}))]).await?;
        let a_after = store
            .list_sessions(&project("proj")?)
            .await?
            .into_iter()
            .find(|s| s.session_id == "a")
            .map(|s| s.mtime);
        ensure!(a_after > a_before, "{a_before:?} → {a_after:?}");
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn list_subkeys_gives_a_sessions_subpaths_never_the_main_transcript() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        append(store, &key("proj", "sess")?, vec![e(json!({"n": 1}))]).await?;
        ensure!(subkeys(store, "proj", "sess").await?.is_empty());
        for subpath in [
            "subagents/agent-2",
            "subagents/agent-1",
            "subagents/agent-1",
        ] {
            append(
                store,
                &sub("proj", "sess", subpath)?,
                vec![e(json!({"n": 1}))],
            )
            .await?;
        }
        append(
            store,
            &sub("proj", "other-sess", "subagents/agent-x")?,
            vec![e(json!({}))],
        )
        .await?;
        append(
            store,
            &sub("p2", "sess", "subagents/agent-y")?,
            vec![e(json!({}))],
        )
        .await?;
        ensure!(
            subkeys(store, "proj", "sess").await? == ["subagents/agent-1", "subagents/agent-2"]
        );
        ensure!(subkeys(store, "proj", "never-appended").await?.is_empty());
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_main_session_key_removes_its_subpaths_and_summary_too() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, db| {
        // Unknown keys are not an error.
        store.delete(&key("proj", "never-written")?).await?;
        store
            .delete(&sub("proj", "never-written", "subagents/agent-1")?)
            .await?;

        let main = key("proj", "sess")?;
        let sub1 = sub("proj", "sess", "subagents/agent-1")?;
        let sub2 = sub("proj", "sess", "subagents/agent-2")?;
        let other = key("proj", "sess2")?;
        let other_project = key("other-proj", "sess")?;
        for k in [&main, &sub1, &sub2, &other, &other_project] {
            append(store, k, vec![e(json!({"uuid": "u", "n": 1}))]).await?;
        }
        store.delete(&main).await?;
        for gone in [&main, &sub1, &sub2] {
            ensure!(load(store, gone).await?.is_none(), "{gone} survived");
        }
        for kept in [&other, &other_project] {
            ensure!(
                load(store, kept).await?.map(|x| x.len()) == Some(1),
                "{kept} lost"
            );
        }
        ensure!(subkeys(store, "proj", "sess").await?.is_empty());
        ensure!(session_ids(store, "proj").await? == ["sess2"]);
        ensure!(summary_of(store, "proj", "sess").await?.is_none());
        ensure!(count(db, "session_summaries").await? == 2);

        // The key can be written again afterwards, from scratch.
        append(store, &main, vec![e(json!({"uuid": "u", "n": 2}))]).await?;
        ensure!(load(store, &main).await? == Some(vec![e(json!({"uuid": "u", "n": 2}))]));
        let summary = summary_of(store, "proj", "sess")
            .await?
            .context("summary")?;
        ensure!(summary.data["entry_count"] == 1, "{}", summary.data);
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

/// Records a turn of `agent` in `session` with backend session `b-1`, status `idle`.
async fn agent_turn(db: &DatabaseConnection, session: &str, agent: &str) -> Result<AgentSession> {
    Ok(AgentSessions::record_turn(
        db,
        Turn {
            session_id: session.into(),
            agent: agent.into(),
            backend: "command".into(),
            backend_session_id: Some("b-1".into()),
            config_hash: "h".into(),
            usage: Usage::default(),
            status: AgentStatus::Idle,
            at: time::now(),
        },
    )
    .await?)
}

async fn status_of(db: &DatabaseConnection, session: &str, agent: &str) -> Result<AgentStatus> {
    Ok(AgentSessions::get(db, session, agent)
        .await?
        .with_context(|| format!("agent session ({session}, {agent})"))?
        .status)
}

#[tokio::test]
async fn deleting_a_main_session_key_closes_the_sessions_agent_sessions() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, db| {
        let main = key("proj", "sess")?;
        append(store, &main, vec![e(json!({"uuid": "u"}))]).await?;
        agent_turn(db, "sess", "claude").await?;
        agent_turn(db, "sess", "codex").await?;
        agent_turn(db, "sess2", "claude").await?;

        // A subpath is not the conversation: deleting it closes nothing.
        store
            .delete(&sub("proj", "sess", "subagents/agent-1")?)
            .await?;
        ensure!(status_of(db, "sess", "claude").await? == AgentStatus::Idle);

        store.delete(&main).await?;
        for agent in ["claude", "codex"] {
            let closed = AgentSessions::get(db, "sess", agent)
                .await?
                .context("still there")?;
            ensure!(closed.status == AgentStatus::Closed, "{closed:?}");
            // Kept for the record; the next turn starts a fresh one.
            ensure!(closed.backend_session_id.as_deref() == Some("b-1"));
        }
        ensure!(status_of(db, "sess2", "claude").await? == AgentStatus::Idle);

        // Agent sessions have no project: the session id alone is matched, and a
        // transcript that was never written closes them too (a `command` agent keeps its
        // own transcript, so turnq may hold none).
        store.delete(&key("other-proj", "sess2")?).await?;
        ensure!(status_of(db, "sess2", "claude").await? == AgentStatus::Closed);
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_session_subpath_key_removes_only_that_transcript() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        let main = key("proj", "sess")?;
        let sub1 = sub("proj", "sess", "subagents/agent-1")?;
        let sub2 = sub("proj", "sess", "subagents/agent-2")?;
        for k in [&main, &sub1, &sub2] {
            append(store, k, vec![e(json!({"n": 1}))]).await?;
        }
        let summary = summary_of(store, "proj", "sess").await?;
        store.delete(&sub1).await?;
        ensure!(load(store, &sub1).await?.is_none());
        ensure!(load(store, &sub2).await?.map(|x| x.len()) == Some(1));
        ensure!(load(store, &main).await?.map(|x| x.len()) == Some(1));
        ensure!(subkeys(store, "proj", "sess").await? == ["subagents/agent-2"]);
        ensure!(summary_of(store, "proj", "sess").await? == summary);
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// summaries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_summaries_follow_every_append_of_the_main_transcript() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, _db| {
        let k = key("proj", "summ")?;
        append(
            store,
            &k,
            vec![
                json!({"type": "user", "uuid": "1", "timestamp": "2024-01-01T00:00:00.000Z",
                       "cwd": "/work", "isSidechain": false, "gitBranch": "main",
                       "message": {"role": "user", "content": "hello there"}}),
                json!({"type": "assistant", "uuid": "2", "timestamp": "2024-01-01T00:00:01.000Z",
                       "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}}),
            ],
        )
        .await?;
        append(
            store,
            &k,
            vec![
                json!({"type": "custom-title", "customTitle": "greeting", "uuid": "3",
                        "timestamp": "2024-01-01T00:00:02.000Z"}),
            ],
        )
        .await?;
        // Subagent transcripts do not contribute to the main session's summary.
        append(
            store,
            &sub("proj", "summ", "subagents/agent-1")?,
            vec![json!({"type": "user", "customTitle": "not mine",
                        "message": {"content": "subagent prompt"}})],
        )
        .await?;
        // Another project's sessions are not listed.
        append(store, &key("other", "elsewhere")?, vec![e(json!({}))]).await?;

        let summaries = store.list_session_summaries(&project("proj")?).await?;
        ensure!(summaries.len() == 1, "{summaries:?}");
        let s = &summaries[0];
        ensure!(s.session_id == "summ");
        let data = &s.data;
        ensure!(data["first_prompt"] == "hello there", "{data}");
        ensure!(data["first_prompt_locked"] == true, "{data}");
        ensure!(data["custom_title"] == "greeting", "{data}");
        ensure!(data["git_branch"] == "main", "{data}");
        ensure!(data["cwd"] == "/work", "{data}");
        ensure!(data["is_sidechain"] == false, "{data}");
        ensure!(data["created_at"] == 1_704_067_200_000_i64, "{data}");
        ensure!(data["entry_count"] == 3, "{data}");
        ensure!(
            data["last_entry"]
                == json!({"type": "custom-title", "uuid": "3",
                          "timestamp": "2024-01-01T00:00:02.000Z"}),
            "{data}"
        );
        // The summary's mtime is the write time, the one list_sessions reports: the SDK
        // takes a summary older than its session's listing for stale.
        let listed = store.list_sessions(&project("proj")?).await?;
        ensure!(
            listed
                == [SessionListing {
                    session_id: "summ".into(),
                    mtime: s.mtime
                }]
        );
        ensure!(s.mtime > 1_000_000_000_000 && s.mtime <= now_ms() + 1000);

        ensure!(
            store
                .list_session_summaries(&project("never-appended-project")?)
                .await?
                .is_empty()
        );
        store.delete(&k).await?;
        ensure!(
            store
                .list_session_summaries(&project("proj")?)
                .await?
                .is_empty()
        );
        Ok(())
    });
    faces.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the database's own rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_database_refuses_to_update_session_entries_or_store_bad_ones() -> Result<()> {
    let db = TestDb::new().await?;
    let store = PgSessionStore::new(db.db.clone());
    append(&store, &key("proj", "sess")?, vec![e(json!({"uuid": "u"}))]).await?;
    for (sql, what) in [
        (
            "UPDATE session_entries SET entry = '{\"forged\": true}'",
            "append-only",
        ),
        (
            "INSERT INTO session_entries (project_key, session_id, entry) VALUES ('p', 's', '[1]')",
            "session_entries_entry_is_object",
        ),
        (
            "INSERT INTO session_entries (project_key, session_id, entry) VALUES ('', 's', '{}')",
            "session_entries_key_lengths",
        ),
        (
            "INSERT INTO session_entries (project_key, session_id, entry) \
             VALUES ('proj', 'sess', '{\"uuid\": \"u\"}')",
            "session_entries_uuid_uidx",
        ),
        (
            "INSERT INTO session_summaries (project_key, session_id, mtime, data) \
             VALUES ('p', 's', 1, '[]')",
            "check",
        ),
    ] {
        let refused = db.db.execute_unprepared(sql).await;
        let Err(e) = refused else {
            bail!("{sql} was allowed");
        };
        let message = format!("{e:?}");
        ensure!(message.contains(what), "{sql}: {message}");
    }
    ensure!(load(&store, &key("proj", "sess")?).await? == Some(vec![e(json!({"uuid": "u"}))]));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the HTTP face
// ---------------------------------------------------------------------------------------

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
    let test_db = TestDb::new().await?;
    let (token, _) = TokenStore::create(&test_db.db, "t", &[Scope::Admin]).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/sessions/p/s/entries", listener.local_addr()?);
    let config = turnq_api::ApiConfig {
        session_body_limit: 4096,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(turnq_api::serve(
        listener,
        turnq_api::AppState::with_config(test_db.db.clone(), config),
        shutdown.clone(),
    ));
    let post = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(token.expose())
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
    shutdown.cancel();
    server.await??;
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
