//! The per-session summaries the SDK folds and reads back.

use super::*;

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
