//! The CLI's HTTP client: talks to the API, turns its JSON errors into one
//! clear line.

use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            token,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request; non-2xx answers become an error with the API's message.
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach evoke at {}: is `evoke up` running? (set --server or EVOKE_SERVER)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let id = resp
            .headers()
            .get(crate::api::HTTP_INVOCATION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                let e = &v["error"];
                Some(format!(
                    "{} ({})",
                    e["message"].as_str()?,
                    e["code"].as_str().unwrap_or("")
                ))
            })
            .unwrap_or_else(|| text.trim().to_string());
        match id {
            Some(id) => bail!("{status}: {message} [invocation {id}]"),
            None => bail!("{status}: {message}"),
        }
    }

    pub async fn json(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send(req).await?.json().await?)
    }
}
