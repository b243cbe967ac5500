//! Tasks: the state machine, what a submission may contain, and the store.

mod model;
pub(crate) mod projection;
mod request;
mod spec;
mod state;
mod store;

pub use model::{LISTED_INPUT_BYTES, PREVIEW_CHARS, Task};
pub use request::{
    ChildOutcome, HumanRequest, MAX_REQUEST_TEXT, OnTimeout, RequestKind, Response, ResponseRequest,
};
pub use spec::{MAX_BATCH, MAX_INPUT_BYTES, NewTask, NewTaskRequest, TaskDetails, check_name};
pub use state::TaskState;
pub use store::{
    CHANNEL_TASK_CANCELLED, CHANNEL_TASKS_NEW, Claimed, DueTask, MAX_BATCH_KEY_BYTES, Record,
    SEARCH_WINDOW, Submitted, TaskFilter, TaskPage, TaskStore,
};
