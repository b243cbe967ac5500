//! What the client commands (`turnq submit`, `turnq watch`) need to reach a running API.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use turnq::client::EventStream;

/// Where the API is and how to sign in.
#[derive(Args, Clone, Debug)]
pub struct RemoteArgs {
    /// The API to talk to.
    #[arg(long, env = "TURNQ_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,

    /// The API token (default: the one `turnq up` saved on first start).
    #[arg(long, env = "TURNQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RemoteArgs {
    /// The API's base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.api_url.trim_end_matches('/')
    }

    /// The token to send: the flag or env var, else the saved one.
    pub fn token(&self) -> Option<String> {
        crate::token::local_token(self.token.clone())
    }

    /// A client that sends the token with every request and gives up on a request
    /// after [`crate::HTTP_TIMEOUT`].
    pub fn http(&self) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = self.token() {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token has characters a header cannot carry")?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        reqwest::Client::builder()
            .timeout(crate::HTTP_TIMEOUT)
            .default_headers(headers)
            .build()
            .context("building the HTTP client")
    }

    /// The event stream of this API with `filters`. Its client has no overall timeout:
    /// a stream lasts as long as it is followed.
    pub fn events(&self, filters: Vec<(String, String)>) -> EventStream {
        EventStream {
            base: self.base().to_owned(),
            token: self.token().unwrap_or_default(),
            filters,
        }
    }

    /// One request to the API; its JSON answer, or an error that says what the API said.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value> {
        let base = self.base();
        let mut request = self
            .http()?
            .request(method, format!("{base}{path}"))
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach the turnq API at {base}: is `turnq up` (or `turnq api`) running?")
        })?;
        let status = response.status();
        let answer: Value = response.json().await.context("reading the API's answer")?;
        if !status.is_success() {
            bail!(
                "the API answered {status}: {}",
                answer["error"]["message"].as_str().unwrap_or("no message")
            );
        }
        Ok(answer)
    }
}
