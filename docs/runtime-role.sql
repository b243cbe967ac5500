-- The role the API and the workers run as: it reads and writes what turnq needs, can
-- append to the event log, and can neither change nor delete an event, nor switch off
-- the trigger that guards the log (only the tables' owner can: the role that runs
-- `turnq migrate up`). Run this as that owner, in turnq's database, after migrating;
-- replace turnq_app with the runtime role's name. docs/operations.md explains it, and
-- tests/it/runtime_role.rs runs this very file.

GRANT USAGE ON SCHEMA public TO turnq_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO turnq_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO turnq_app;
-- The log is append-only; the migrations' bookkeeping is the owner's.
REVOKE UPDATE, DELETE ON events FROM turnq_app;
REVOKE INSERT, UPDATE, DELETE ON seaql_migrations FROM turnq_app;
-- Tables that later migrations create get the same grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO turnq_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO turnq_app;
