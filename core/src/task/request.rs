//! What a running turn asks of a person, and the answer.
//!
//! A backend ends its turn with a [`HumanRequest`]: permission for a tool (with its
//! input), a question with options, a plan to approve, a free-text answer, or (for a
//! parent task) a wait for its sub-tasks. The task goes `blocked` with the request in
//! its `task.blocked` event and frees its worker slot. A person answers with a
//! [`ResponseRequest`] (`POST /v1/tasks/{id}/respond`), checked against the request by
//! [`HumanRequest::answer`]; the answer is recorded as `task.responded` and the task is
//! queued again. Its next turn gets both (`Task::request`, `Task::response`) and resumes
//! its session with the answer. A request left unanswered past its `deadline` ends the
//! way it says ([`OnTimeout`]): denied (answered for the person) or failed. A wait for
//! sub-tasks is answered by turnq itself once every child has ended, with their
//! outcomes ([`ChildOutcome`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{Error, error::Result, storable, task::TaskState, time::Timestamp};

/// The longest prompt or answer text, in characters.
pub const MAX_REQUEST_TEXT: usize = 64 * 1024;
/// The most options a request may offer.
pub const MAX_OPTIONS: usize = 20;

/// What kind of answer a request wants; it picks the form a person is shown.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// May the agent use a tool with this input? Options `allow` / `deny`; the answer
    /// may carry an edited input.
    Permission,
    /// A question with options to choose from.
    Question,
    /// A plan to approve or reject (`approve` / `reject`), with an optional comment.
    Plan,
    /// A free-text answer.
    Text,
    /// The task waits for its sub-tasks, not for a person: turnq answers once every
    /// child has ended.
    Children,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Permission => "permission",
            RequestKind::Question => "question",
            RequestKind::Plan => "plan",
            RequestKind::Text => "text",
            RequestKind::Children => "children",
        }
    }

    /// The options a request of this kind offers when it names none.
    fn default_options(self) -> Vec<String> {
        let names: &[&str] = match self {
            RequestKind::Permission => &["allow", "deny"],
            RequestKind::Plan => &["approve", "reject"],
            RequestKind::Question | RequestKind::Text | RequestKind::Children => &[],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The option that means "no" when a deadline passes unanswered.
    fn refusal(self) -> Option<&'static str> {
        match self {
            RequestKind::Permission => Some("deny"),
            RequestKind::Plan => Some("reject"),
            _ => None,
        }
    }
}

/// What happens to a request nobody answered by its deadline.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// turnq answers no for the person (`deny`, `reject`, or no choice for a question
    /// or text) and the turn resumes with that answer, marked `expired`.
    #[default]
    Deny,
    /// The task fails.
    Fail,
}

/// What a turn asks of a person: the data of `task.blocked` (field `request`) and the
/// task's `request`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HumanRequest {
    pub kind: RequestKind,
    /// What the agent asks, for a person to read.
    pub prompt: String,
    /// The choices (`allow`/`deny` for a permission, `approve`/`reject` for a plan,
    /// the question's own options); empty for a free-text answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// The tool a permission is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The tool's input, which the answer may replace with an edited one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_input: Option<Value>,
    /// When the request ends unanswered.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

impl HumanRequest {
    /// Checks what a backend asks (its text is stored, so it must be storable) and
    /// fills in the default options of its kind.
    pub fn validated(mut self) -> std::result::Result<HumanRequest, String> {
        if self.prompt.trim().is_empty() && self.kind != RequestKind::Children {
            return Err(format!("a {} request needs a prompt", self.kind.as_str()));
        }
        if self.prompt.chars().count() > MAX_REQUEST_TEXT {
            return Err(format!(
                "the request's prompt is over {MAX_REQUEST_TEXT} characters"
            ));
        }
        if self.kind == RequestKind::Children && self.deadline.is_some() {
            return Err(
                "a wait on sub-tasks takes no deadline: it ends when they end (cancel them to stop waiting)"
                    .into(),
            );
        }
        if self.options.is_empty() {
            self.options = self.kind.default_options();
        }
        if self.kind == RequestKind::Question && self.options.is_empty() {
            return Err("a question request needs options to choose from".into());
        }
        if self.options.len() > MAX_OPTIONS {
            return Err(format!(
                "the request offers {} options; at most {MAX_OPTIONS}",
                self.options.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for option in &self.options {
            if option.trim().is_empty() || option.chars().count() > 200 {
                return Err(format!(
                    "the request's option {option:?} must be 1 to 200 characters"
                ));
            }
            if !seen.insert(option) {
                return Err(format!("the request offers {option:?} twice"));
            }
        }
        for text in [Some(&self.prompt), self.tool.as_ref()]
            .into_iter()
            .flatten()
            .chain(&self.options)
        {
            storable::no_nul("request", text).map_err(|e| e.to_string())?;
        }
        if let Some(input) = &self.tool_input {
            storable::json_without_nul("request.tool_input", input).map_err(|e| e.to_string())?;
        }
        Ok(self)
    }

    /// Checks a person's answer against this request; the message says what is wrong.
    pub fn answer(&self, response: ResponseRequest, by: Option<String>) -> Result<Response> {
        let refuse = |message: String| Err(Error::Invalid(message));
        if self.kind == RequestKind::Children {
            return refuse(
                "the task waits for its sub-tasks, not for a person: it resumes when they end"
                    .into(),
            );
        }
        let choice = match (&response.choice, self.options.is_empty()) {
            (Some(choice), false) if self.options.contains(choice) => Some(choice.clone()),
            (Some(choice), false) => {
                return refuse(format!(
                    "choice {choice:?} is not one of the request's options: {}",
                    self.options.join(", ")
                ));
            }
            (None, false) => {
                return refuse(format!(
                    "the request wants a choice, one of: {}",
                    self.options.join(", ")
                ));
            }
            (Some(_), true) => {
                return refuse("the request offers no options; answer with `text`".into());
            }
            (None, true) => None,
        };
        if self.kind == RequestKind::Text
            && response.text.as_deref().is_none_or(|t| t.trim().is_empty())
        {
            return refuse("the request wants a text answer: `text` is missing or blank".into());
        }
        if let Some(text) = &response.text {
            storable::no_nul("text", text)?;
            if text.chars().count() > MAX_REQUEST_TEXT {
                return refuse(format!("`text` is over {MAX_REQUEST_TEXT} characters"));
            }
        }
        if let Some(input) = &response.input {
            if self.kind != RequestKind::Permission {
                return refuse(format!(
                    "only a permission request takes an edited `input`; this is a {} request",
                    self.kind.as_str()
                ));
            }
            storable::json_without_nul("input", input)?;
        }
        Ok(Response {
            choice,
            text: response.text,
            input: response.input,
            by,
            expired: false,
            children: Vec::new(),
        })
    }

    /// The answer turnq gives for a person when the deadline passed (`on_timeout:
    /// deny`).
    pub fn expired(&self) -> Response {
        Response {
            choice: self.kind.refusal().map(str::to_owned),
            text: None,
            input: None,
            by: None,
            expired: true,
            children: Vec::new(),
        }
    }
}

/// A person's answer as they send it: `POST /v1/tasks/{id}/respond`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRequest {
    /// One of the request's options (`allow`, `deny`, an answer to a question, …).
    #[serde(default)]
    pub choice: Option<String>,
    /// A free-text answer or a comment on the choice.
    #[serde(default)]
    pub text: Option<String>,
    /// For a permission: the tool input to run instead of the one asked for.
    #[serde(default)]
    pub input: Option<Value>,
}

/// The answer a turn resumes with: the data of `task.responded` (field `response`) and
/// the task's `response`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Who answered: the token's name; absent when turnq answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Nobody answered by the deadline; turnq answered no.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    /// For a wait on sub-tasks: how each child ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildOutcome>,
}

impl Response {
    /// The answer as the text an agent reads when it resumes.
    pub fn as_prompt(&self, request: Option<&HumanRequest>) -> String {
        let mut out = String::new();
        if self.expired {
            out.push_str("Nobody answered your request before its deadline. ");
        }
        if !self.children.is_empty() {
            out.push_str("Your sub-tasks ended:\n");
            for child in &self.children {
                out.push_str(&format!(
                    "- {} ({}): {}\n",
                    child.id,
                    child.state,
                    child
                        .output_summary
                        .as_deref()
                        .or(child.error.as_deref())
                        .unwrap_or("")
                ));
            }
            return out;
        }
        match (&self.choice, request) {
            (Some(choice), Some(r)) => out.push_str(&format!(
                "Answer to your {} request: {choice}",
                r.kind.as_str()
            )),
            (Some(choice), None) => out.push_str(&format!("Answer: {choice}")),
            (None, _) => out.push_str("Answer:"),
        }
        if let Some(text) = &self.text {
            out.push_str(&format!("\n{text}"));
        }
        if let Some(input) = &self.input {
            out.push_str(&format!("\nUse this tool input instead: {input}"));
        }
        out
    }
}

/// How one sub-task ended, as its parent receives it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildOutcome {
    pub id: Uuid,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(kind: RequestKind, options: &[&str]) -> HumanRequest {
        HumanRequest {
            kind,
            prompt: "may I?".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            tool: None,
            tool_input: None,
            deadline: None,
            on_timeout: OnTimeout::Deny,
        }
        .validated()
        .unwrap()
    }

    fn reply(choice: Option<&str>, text: Option<&str>) -> ResponseRequest {
        ResponseRequest {
            choice: choice.map(str::to_owned),
            text: text.map(str::to_owned),
            input: None,
        }
    }

    #[test]
    fn a_permission_offers_allow_and_deny_and_takes_an_edited_input() {
        let r = request(RequestKind::Permission, &[]);
        assert_eq!(r.options, ["allow", "deny"]);
        let mut answer = reply(Some("allow"), None);
        answer.input = Some(json!({"cmd": "ls"}));
        let response = r.answer(answer, Some("alice".into())).unwrap();
        assert_eq!(response.choice.as_deref(), Some("allow"));
        assert_eq!(response.input, Some(json!({"cmd": "ls"})));
        assert_eq!(r.expired().choice.as_deref(), Some("deny"));
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        let permission = request(RequestKind::Permission, &[]);
        let text = request(RequestKind::Text, &[]);
        let question = request(RequestKind::Question, &["red", "blue"]);
        let children = request(RequestKind::Children, &[]);
        let mut edited = reply(Some("red"), None);
        edited.input = Some(json!(1));
        let cases = [
            (&permission, reply(Some("maybe"), None), "not one of"),
            (&permission, reply(None, None), "wants a choice"),
            (&text, reply(None, None), "wants a text answer"),
            (&text, reply(None, Some("  ")), "blank"),
            (&text, reply(Some("x"), Some("y")), "offers no options"),
            (&question, edited, "only a permission"),
            (&question, reply(Some("red"), Some("a\0b")), "U+0000"),
            (&children, reply(None, Some("go")), "sub-tasks"),
        ];
        for (request, answer, expected) in cases {
            let err = request.answer(answer, None).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_backend_request_must_make_sense() {
        let bad = |kind, prompt: &str, options: &[&str]| {
            HumanRequest {
                kind,
                prompt: prompt.into(),
                options: options.iter().map(|s| s.to_string()).collect(),
                tool: None,
                tool_input: None,
                deadline: None,
                on_timeout: OnTimeout::Fail,
            }
            .validated()
            .unwrap_err()
        };
        assert!(bad(RequestKind::Question, "which?", &[]).contains("needs options"));
        assert!(bad(RequestKind::Text, " ", &[]).contains("needs a prompt"));
        assert!(bad(RequestKind::Question, "which?", &["a", "a"]).contains("twice"));
        assert!(bad(RequestKind::Question, "wh\0ich?", &["a"]).contains("U+0000"));
        let with_deadline = HumanRequest {
            kind: RequestKind::Children,
            prompt: "waits".into(),
            options: Vec::new(),
            tool: None,
            tool_input: None,
            deadline: Some(crate::time::now()),
            on_timeout: OnTimeout::Deny,
        };
        assert!(
            with_deadline
                .validated()
                .unwrap_err()
                .contains("takes no deadline")
        );
    }
}
