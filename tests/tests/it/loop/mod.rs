//! People in the loop, through the HTTP API with a real worker: requests from a running
//! turn answered with `POST /v1/tasks/{id}/respond` or ended by their deadline, and
//! sub-tasks a parent waits for.

mod requests;
mod subtasks;
mod workspaces;
