//! A turn's streamed output, batched into `task.output` events.

use std::time::Duration;

use tokio::time::Instant;
use turnq_core::{
    Error,
    error::chain as error_chain,
    event::{Output, OutputChunk, TaskEvent},
};

use crate::turn::{
    control::{StopReason, TurnControl},
    write::{Recorder, TurnSettings, record_patiently},
};

/// The most chunks in one `task.output` event.
pub(crate) const MAX_CHUNKS_PER_EVENT: usize = 64;
/// Chunks kept for a retry while Postgres refuses output; past this they are dropped
/// (the turn's end still gets written) rather than held without bound.
const MAX_PENDING_CHUNKS: usize = 10_000;

/// Batches a turn's output into `task.output` events: one per `every` (counted from
/// the first chunk of a batch) or per [`MAX_CHUNKS_PER_EVENT`] chunks, whichever comes
/// first. After a failed write the batch waits for the next interval instead of
/// hammering Postgres on every chunk.
pub(crate) struct OutputWriter {
    attempt: i32,
    every: Duration,
    chunks: Vec<OutputChunk>,
    due: Option<Instant>,
    backing_off: bool,
    pub(crate) fenced: bool,
    /// The last provider session id streamed (a `session` chunk, as the `command`
    /// backend emits), for the agent session.
    pub(crate) backend_session: Option<String>,
}

impl OutputWriter {
    pub(crate) fn new(attempt: i32, every: Duration) -> Self {
        OutputWriter {
            attempt,
            every,
            chunks: Vec::new(),
            due: None,
            backing_off: false,
            fenced: false,
            backend_session: None,
        }
    }

    /// Adds a chunk; true when the batch should be written now.
    pub(crate) fn push(&mut self, chunk: OutputChunk) -> bool {
        if chunk.stream == "session" && !chunk.text.is_empty() {
            self.backend_session = Some(chunk.text.clone());
        }
        if self.fenced {
            return false;
        }
        if self.chunks.is_empty() && self.due.is_none() {
            self.due = Some(Instant::now() + self.every);
        }
        self.chunks.push(chunk);
        self.chunks.len() >= MAX_CHUNKS_PER_EVENT && !self.backing_off
    }

    /// When the batch is due, if there is one.
    pub(crate) fn due(&self) -> Option<Instant> {
        if self.fenced { None } else { self.due }
    }

    /// Writes what is batched, in events of at most [`MAX_CHUNKS_PER_EVENT`]; on an
    /// error keeps the rest for the next interval.
    pub(crate) async fn flush(&mut self, recorder: &dyn Recorder, control: &TurnControl) {
        self.due = None;
        while !self.chunks.is_empty() && !self.fenced {
            let take = self.chunks.len().min(MAX_CHUNKS_PER_EVENT);
            let event = TaskEvent::Output(Output {
                attempt: self.attempt,
                chunks: self.chunks.drain(..take).collect(),
            });
            let written = recorder.record(&event).await;
            if !self.after_write(written, event, control) {
                return;
            }
        }
    }

    /// Writes everything left, waiting out a short Postgres outage.
    pub(crate) async fn flush_all(
        &mut self,
        recorder: &dyn Recorder,
        control: &TurnControl,
        settings: &TurnSettings,
    ) {
        self.due = None;
        while !self.chunks.is_empty() && !self.fenced {
            let take = self.chunks.len().min(MAX_CHUNKS_PER_EVENT);
            let event = TaskEvent::Output(Output {
                attempt: self.attempt,
                chunks: self.chunks.drain(..take).collect(),
            });
            let written = record_patiently(recorder, &event, settings.write_patience).await;
            if !self.after_write(written, event, control) {
                // Postgres is still down: drop the output so the end can be attempted.
                self.chunks.clear();
                return;
            }
        }
    }

    /// Handles the result of writing `event`; false when writing should stop for now.
    fn after_write(
        &mut self,
        written: Result<(), Error>,
        event: TaskEvent,
        control: &TurnControl,
    ) -> bool {
        match written {
            Ok(()) => {
                self.backing_off = false;
                true
            }
            Err(e @ Error::Fenced { .. }) => {
                tracing::info!(error = %e, "the task moved on (cancelled, or its lease taken over): stopping the turn");
                control.stop(StopReason::Lost);
                self.fenced = true;
                self.chunks.clear();
                false
            }
            Err(e) => {
                // Keep the chunks, in order, for the next interval.
                if let TaskEvent::Output(output) = event {
                    let rest = std::mem::replace(&mut self.chunks, output.chunks);
                    self.chunks.extend(rest);
                }
                if self.chunks.len() > MAX_PENDING_CHUNKS {
                    tracing::error!(error = %error_chain(&e), dropped = self.chunks.len(),
                        "writing output keeps failing; dropping the output held for it");
                    self.chunks.clear();
                } else {
                    tracing::warn!(error = %error_chain(&e), pending = self.chunks.len(),
                        "writing output failed; retrying at the next flush");
                }
                self.backing_off = true;
                if !self.chunks.is_empty() {
                    self.due = Some(Instant::now() + self.every);
                }
                false
            }
        }
    }
}
