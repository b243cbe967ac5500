//! Appending and loading transcripts: order, cursors, dedupe by uuid, and limits.

use super::*;

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
