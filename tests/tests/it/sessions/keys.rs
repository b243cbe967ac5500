//! Session keys, listing sessions and subkeys, and deleting a session.

use super::*;

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
async fn list_subkeys_gives_a_sessions_subpaths_in_first_write_order_never_the_main_transcript()
-> Result<()> {
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
        // In the order they were first written to, as the SDK's reference store keeps them.
        ensure!(
            subkeys(store, "proj", "sess").await? == ["subagents/agent-2", "subagents/agent-1"]
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

/// Records a turn of `agent` in `session` of `project` with backend session `b-1`,
/// status `idle`.
async fn agent_turn(
    db: &DatabaseConnection,
    project: &str,
    session: &str,
    agent: &str,
) -> Result<AgentSession> {
    Ok(AgentSessions::record_turn(
        db,
        Turn {
            project: project.into(),
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

async fn status_of(
    db: &DatabaseConnection,
    project: &str,
    session: &str,
    agent: &str,
) -> Result<AgentStatus> {
    Ok(AgentSessions::get(db, project, session, agent)
        .await?
        .with_context(|| format!("agent session ({project}, {session}, {agent})"))?
        .status)
}

#[tokio::test]
async fn deleting_a_main_session_key_closes_that_projects_agent_sessions_of_it() -> Result<()> {
    let faces = Faces::new().await?;
    on_both_faces!(faces, |store, db| {
        let main = key("proj", "sess")?;
        append(store, &main, vec![e(json!({"uuid": "u"}))]).await?;
        agent_turn(db, "proj", "sess", "claude").await?;
        agent_turn(db, "proj", "sess", "codex").await?;
        agent_turn(db, "proj", "sess2", "claude").await?;
        // The same session id in another project is another conversation.
        agent_turn(db, "other-proj", "sess", "claude").await?;

        // A subpath is not the conversation: deleting it closes nothing.
        store
            .delete(&sub("proj", "sess", "subagents/agent-1")?)
            .await?;
        ensure!(status_of(db, "proj", "sess", "claude").await? == AgentStatus::Idle);

        store.delete(&main).await?;
        for agent in ["claude", "codex"] {
            let closed = AgentSessions::get(db, "proj", "sess", agent)
                .await?
                .context("still there")?;
            ensure!(closed.status == AgentStatus::Closed, "{closed:?}");
            // Kept for the record; the next turn starts a fresh one.
            ensure!(closed.backend_session_id.as_deref() == Some("b-1"));
        }
        ensure!(status_of(db, "proj", "sess2", "claude").await? == AgentStatus::Idle);
        ensure!(
            status_of(db, "other-proj", "sess", "claude").await? == AgentStatus::Idle,
            "deleting proj's session closed other-proj's session of the same id"
        );

        // A transcript that was never written closes them too (a `command` agent keeps
        // its own transcript, so turnq may hold none).
        store.delete(&key("proj", "sess2")?).await?;
        ensure!(status_of(db, "proj", "sess2", "claude").await? == AgentStatus::Closed);
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
