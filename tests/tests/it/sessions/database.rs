//! What the database itself refuses, whoever writes.

use super::*;

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
