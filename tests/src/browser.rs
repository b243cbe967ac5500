//! A real headless Chromium for the UI tests, driven through chromedriver with the W3C
//! WebDriver protocol (JSON over HTTP).
//!
//! A small client of our own over `reqwest` instead of fantoccini: fantoccini's
//! `webdriver` dependency brings a second HTTP stack (`http` 0.2), `thiserror` 1 and an
//! old ICU into the build, for the dozen commands these tests send.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::{ChildProcess, eventually, free_port};

/// The key code WebDriver uses for Enter.
pub const ENTER: &str = "\u{E007}";

/// A browser session: one chromedriver and one Chromium, both gone on drop.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver_url: String,
    // Killed on drop, which ends Chromium with it.
    _driver: ChildProcess,
}

/// An element of the page, as WebDriver names it.
#[derive(Clone, Debug)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium (`--no-sandbox`: the
    /// tests may run as root).
    pub async fn start() -> Result<Browser> {
        let port = free_port()?;
        let driver = ChildProcess::spawn(
            "chromedriver",
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("chromedriver must be installed (apt-get install chromium chromium-driver)")?;
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("chromedriver answers /status", || {
            let (http, url) = (http.clone(), format!("{driver_url}/status"));
            async move {
                let status: Value = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if status["value"]["ready"] == json!(true) {
                    Ok(())
                } else {
                    Err(format!("not ready: {status}"))
                }
            }
        })
        .await?;
        let created: Value = http
            .post(format!("{driver_url}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1360,1000",
                ]}
            }}}))
            .send()
            .await?
            .json()
            .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver made no session: {created}"))?
            .to_owned();
        Ok(Browser {
            http,
            session,
            driver_url,
            _driver: driver,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        let mut request = self.http.request(method.clone(), &url);
        if method == reqwest::Method::POST {
            request = request.json(&body);
        }
        let answer: Value = request.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!(
                "WebDriver {method} {path}: {error}: {}",
                answer["value"]["message"]
            );
        }
        Ok(answer["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.command(reqwest::Method::POST, path, body).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.command(reqwest::Method::GET, path, Value::Null).await
    }

    /// Sends any WebDriver command of the session (`path` after `/session/{id}`).
    pub async fn post_raw(&self, path: &str, body: Value) -> Result<Value> {
        self.post(path, body).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    pub async fn url(&self) -> Result<String> {
        Ok(self
            .get("/url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The elements matching `css` now (none is not an error).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned())))
            .collect())
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn wait_for(&self, css: &str) -> Result<Element> {
        eventually(format!("an element matches {css:?}"), || async {
            match self.find_all(css).await {
                Ok(found) => found.into_iter().next().ok_or("none yet".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Waits until the text of the first element matching `css` contains `text`.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Result<String> {
        eventually(format!("{css:?} shows {text:?}"), || async {
            let found = self.find_all(css).await.map_err(|e| e.to_string())?;
            let Some(element) = found.first() else {
                return Err("no such element yet".to_owned());
            };
            let shown = self.text(element).await.map_err(|e| e.to_string())?;
            if shown.contains(text) {
                Ok(shown)
            } else {
                Err(format!("it shows {shown:?}"))
            }
        })
        .await
    }

    pub async fn text(&self, element: &Element) -> Result<String> {
        Ok(self
            .get(&format!("/element/{}/text", element.0))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn attribute(&self, element: &Element, name: &str) -> Result<Option<String>> {
        Ok(self
            .get(&format!("/element/{}/attribute/{name}", element.0))
            .await?
            .as_str()
            .map(str::to_owned))
    }

    /// Clicks `element`, first scrolled to the middle of the window (clear of the
    /// sticky header).
    pub async fn click(&self, element: &Element) -> Result<()> {
        self.post(
            "/execute/sync",
            json!({"script": "arguments[0].scrollIntoView({block: 'center'}); return null",
                   "args": [{ ELEMENT_KEY: element.0 }]}),
        )
        .await?;
        self.post(&format!("/element/{}/click", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) -> Result<()> {
        self.post(
            &format!("/element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// Empties `element` (a text field or textarea).
    pub async fn clear(&self, element: &Element) -> Result<()> {
        self.post(&format!("/element/{}/clear", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Presses the keys of `text` on whatever has the focus (a keyboard user).
    pub async fn press(&self, text: &str) -> Result<()> {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await
        .map(drop)
    }

    /// Accepts the page's `confirm()` dialog, once it is open.
    pub async fn accept_dialog(&self) -> Result<()> {
        eventually("a dialog opens", || async {
            self.post("/alert/accept", json!({}))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Saves a PNG of the window as `{name}.png` in [`artefacts`], and returns its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let encoded = self.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())?;
        let path = artefacts()?.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium cleanly; the driver is killed after this
        // either way.
        let url = format!("{}/session/{}", self.driver_url, self.session);
        turnq_testkit::cleanup::run_blocking("closing the browser session", async move {
            reqwest::Client::new().delete(url).send().await.map(drop)
        });
    }
}

/// Where the UI tests leave their screenshots: `$TURNQ_TEST_ARTEFACTS`, or
/// `ui-screenshots` in the system's temporary folder.
pub fn artefacts() -> Result<PathBuf> {
    let dir = std::env::var_os("TURNQ_TEST_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("turnq-ui-screenshots"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
