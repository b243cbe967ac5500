//! Reading the agent's stdout: each line becomes the chunks it streams, and what the
//! outcome needs (summary, usage, the provider session id, an error the agent reported)
//! is kept. `jsonl` mode reads Claude Code's `stream-json` events; the table in the
//! module documentation of [`super`] is the contract.
//!
//! Invariant: no line fails the turn. A line that is not JSON is streamed as a `log`
//! chunk and broken UTF-8 is replaced, because an agent's stray output is not worth an
//! attempt; only a `result` event saying `is_error` marks the turn failed, and the
//! turn's run decides what that means. Knows no process: it reads any byte stream.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use turnq_core::event::Usage;

use super::CommandMode;
use crate::backend::{OutputSink, TurnError};

/// What the output of a turn said, as far as the outcome is concerned.
pub(super) struct Transcript {
    mode: CommandMode,
    /// Text mode: all of stdout; jsonl mode: the assistant's text blocks.
    text: Vec<String>,
    /// The `result` event's text.
    result: Option<String>,
    pub(super) usage: Usage,
    session_id: Option<String>,
    /// Set by a `result` event with `is_error`.
    pub(super) error: Option<String>,
}

impl Transcript {
    pub(super) fn new(mode: CommandMode) -> Self {
        Transcript {
            mode,
            text: Vec::new(),
            result: None,
            usage: Usage::default(),
            session_id: None,
            error: None,
        }
    }

    /// Reads `stdout` to its end, line by line, streaming each line's chunks to
    /// `output`.
    pub(super) async fn read(
        &mut self,
        stdout: impl AsyncRead + Unpin,
        output: &OutputSink,
    ) -> Result<(), TurnError> {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| TurnError::retryable(format!("reading the agent's output: {e}")))?;
            if read == 0 {
                return Ok(());
            }
            // Lossy: an agent that prints a broken character should not fail the turn.
            for (stream, text) in self.line(&String::from_utf8_lossy(&line)) {
                output.send(stream, text).await;
            }
        }
    }

    /// The turn's summary: the `result` event's text, else the text read, trimmed.
    pub(super) fn summary(&self) -> String {
        match (&self.result, self.mode) {
            (Some(result), _) => result.trim().to_owned(),
            (None, CommandMode::Text) => self.text.concat().trim().to_owned(),
            (None, CommandMode::Jsonl) => self.text.join("\n\n").trim().to_owned(),
        }
    }

    /// Takes one line of stdout; returns the chunks to stream.
    fn line(&mut self, line: &str) -> Vec<(&'static str, String)> {
        match self.mode {
            CommandMode::Text => {
                self.text.push(line.to_owned());
                vec![("text", line.to_owned())]
            }
            CommandMode::Jsonl => {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    return Vec::new();
                }
                match serde_json::from_str::<Value>(trimmed) {
                    Ok(event) => self.event(&event),
                    Err(_) => vec![("log", line.to_owned())],
                }
            }
        }
    }

    fn event(&mut self, event: &Value) -> Vec<(&'static str, String)> {
        let mut chunks = Vec::new();
        let session_id = event
            .get("session_id")
            .or_else(|| event.get("sessionId"))
            .and_then(Value::as_str);
        if let Some(id) = session_id
            && self.session_id.as_deref() != Some(id)
        {
            self.session_id = Some(id.to_owned());
            chunks.push(("session", id.to_owned()));
        }
        let content = event.pointer("/message/content");
        match event.get("type").and_then(Value::as_str) {
            Some("assistant") => match content {
                Some(Value::String(text)) => {
                    self.text.push(text.clone());
                    chunks.push(("text", text.clone()));
                }
                Some(Value::Array(blocks)) => {
                    for block in blocks {
                        if let Some(chunk) = self.block(block) {
                            chunks.push(chunk);
                        }
                    }
                }
                _ => {}
            },
            Some("user") => {
                for block in content.and_then(Value::as_array).into_iter().flatten() {
                    if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                        chunks.push(("tool_result", tool_result(block)));
                    }
                }
            }
            Some("result") => self.result(event),
            _ => {}
        }
        chunks
    }

    /// A content block of an assistant message.
    fn block(&mut self, block: &Value) -> Option<(&'static str, String)> {
        let text_of = |field: &str| block.get(field).and_then(Value::as_str);
        match block.get("type").and_then(Value::as_str)? {
            "text" => {
                let text = text_of("text")?.to_owned();
                self.text.push(text.clone());
                Some(("text", text))
            }
            "thinking" => Some(("reasoning", text_of("thinking")?.to_owned())),
            "tool_use" => Some((
                "tool_call",
                json!({
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "input": block.get("input"),
                })
                .to_string(),
            )),
            "tool_result" => Some(("tool_result", tool_result(block))),
            _ => None,
        }
    }

    fn result(&mut self, event: &Value) {
        if let Some(result) = event.get("result").and_then(Value::as_str) {
            self.result = Some(result.to_owned());
        }
        let tokens = |field: &str| {
            event
                .get("usage")
                .and_then(|u| u.get(field))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        self.usage = Usage {
            input_tokens: tokens("input_tokens")
                + tokens("cache_creation_input_tokens")
                + tokens("cache_read_input_tokens"),
            output_tokens: tokens("output_tokens"),
            cost_usd: event
                .get("total_cost_usd")
                .or_else(|| event.get("cost_usd"))
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0)
                .unwrap_or(0.0),
        };
        if event.get("is_error").and_then(Value::as_bool) == Some(true) {
            let subtype = event
                .get("subtype")
                .and_then(Value::as_str)
                .unwrap_or("error");
            let detail = self.result.as_deref().unwrap_or("").trim();
            self.error = Some(if detail.is_empty() {
                format!("the agent reported an error ({subtype})")
            } else {
                format!("the agent reported an error ({subtype}): {detail}")
            });
        }
    }
}

fn tool_result(block: &Value) -> String {
    json!({
        "tool_use_id": block.get("tool_use_id"),
        "content": block.get("content"),
        "is_error": block.get("is_error").and_then(Value::as_bool).unwrap_or(false),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::command::tests::pairs;
    use turnq_core::event::OutputChunk;

    /// What `transcript` streams and keeps from `stdout`.
    async fn read(mode: CommandMode, stdout: &str) -> (Transcript, Vec<OutputChunk>) {
        let (output, mut rx) = OutputSink::channel(1024);
        let mut transcript = Transcript::new(mode);
        transcript
            .read(stdout.as_bytes(), &output)
            .await
            .expect("reading a byte slice cannot fail");
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        (transcript, chunks)
    }

    const STREAM_JSON: &str = r#"{"type":"system","subtype":"init","session_id":"sess-1","model":"claude-x","tools":["Bash"]}
{"type":"stream_event","session_id":"sess-1","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"Let"}}}
{"type":"assistant","session_id":"sess-1","message":{"role":"assistant","content":[{"type":"thinking","thinking":"List the files."},{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"ls"}}]}}
{"type":"user","session_id":"sess-1","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"a.txt","is_error":false}]}}
not json at all

{"type":"assistant","session_id":"sess-1","message":{"role":"assistant","content":[{"type":"text","text":"There is a.txt."}]}}
{"type":"result","subtype":"success","is_error":false,"result":"There is a.txt.","session_id":"sess-1","total_cost_usd":0.25,"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":7}}
"#;

    #[tokio::test]
    async fn jsonl_mode_maps_claude_stream_json_to_normalized_output() {
        let (transcript, chunks) = read(CommandMode::Jsonl, STREAM_JSON).await;
        assert_eq!(
            pairs(&chunks),
            [
                ("session", "sess-1"),
                ("reasoning", "List the files."),
                ("text", "Let me look."),
                (
                    "tool_call",
                    r#"{"id":"toolu_1","input":{"command":"ls"},"name":"Bash"}"#
                ),
                (
                    "tool_result",
                    r#"{"content":"a.txt","is_error":false,"tool_use_id":"toolu_1"}"#
                ),
                ("log", "not json at all\n"),
                ("text", "There is a.txt."),
            ]
        );
        assert_eq!(transcript.summary(), "There is a.txt.");
        assert_eq!(
            transcript.usage,
            Usage {
                input_tokens: 1110,
                output_tokens: 7,
                cost_usd: 0.25
            }
        );
        assert_eq!(transcript.error, None);
    }
}
