//! The id of the transaction that wrote each event (`xid`, an `xid8`), so that a reader
//! of the log can follow it without gaps (the live event stream, `GET /v1/events/stream`).
//!
//! `position` is a bigserial: it is taken when a row is inserted, not when its
//! transaction commits, so a lower position can become visible after a higher one, and
//! a reader that followed `position` alone would skip it forever. A reader instead
//! passes only events of transactions older than every transaction still running
//! (`xid < pg_snapshot_xmin(pg_current_snapshot())`: those are all finished, and their
//! events all visible), ordered by (xid, position), and resumes from that pair.
//!
//! Events written before this migration have no writer recorded and read as xid 0:
//! older than everything since, in position order, as they were. Adding the column with
//! a constant default rewrites nothing, however long the log; the default of new rows
//! is then the writing transaction's own id.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "events_xid_position_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                r#"
ALTER TABLE events ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS {INDEX} ON events (xid, position);
"#
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                r#"
DROP INDEX IF EXISTS {INDEX};
ALTER TABLE events DROP COLUMN IF EXISTS xid;
"#
            ))
            .await?;
        Ok(())
    }
}
