//! The session store: the Claude Agent SDK's `SessionStore` contract, each rule checked
//! twice, on the Postgres store itself and through the HTTP API (an HTTP client that
//! implements the same trait, as the SDK adapter in `docs/sessions.md` does); then the
//! HTTP face's own rules: bad input, body limits, scopes and route overlaps.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
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

mod append;
mod database;
mod http;
mod keys;
mod summaries;
