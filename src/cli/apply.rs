//! `evoke apply -f evoke.toml`: make the server match the manifest.
//!
//! Three phases, so a bad manifest changes nothing: validate the file
//! locally (every problem, with its path); ask the server to validate every
//! function and trigger that would change (`dry_run`); then apply, functions
//! before the triggers that use them, and with `--prune` delete what the
//! manifest no longer has (triggers before functions).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::client::Client;
use crate::executor::digest;
use crate::manifest::Manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

#[derive(Debug, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
}

/// Applies a manifest; returns the changes (also printed unless `quiet`).
pub async fn apply(
    client: &Client,
    path: &Path,
    prune: bool,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<Vec<Change>> {
    let manifest = match Manifest::load(path) {
        Ok(m) => m,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(|e| format!("  {}: {}", e.field, e.message)).collect();
            bail!(
                "{} is invalid, nothing was applied:\n{}",
                path.display(),
                lines.join("\n")
            );
        }
    };
    let functions = list(client, "/v1/functions", "functions").await?;
    let triggers = list(client, "/v1/triggers", "triggers").await?;

    // Plan, and collect every problem the server sees in a dry run.
    let mut problems = Vec::new();
    let mut plan: Vec<(Change, Option<reqwest::RequestBuilder>)> = Vec::new();
    for (name, f) in &manifest.functions {
        let spec = serde_json::to_value(&f.spec)?;
        let action = match functions.get(name) {
            None => Action::Created,
            Some(cur) if cur["digest"] == digest(&f.code).as_str() && cur["spec"] == spec => Action::Unchanged,
            Some(_) => Action::Updated,
        };
        if action != Action::Unchanged {
            let check = deploy_request(client, name, &spec, &f.code, true);
            if let Err(e) = client.json(check).await {
                problems.push(format!("  functions.{name}: {e}"));
            }
        }
        let req = deploy_request(client, name, &spec, &f.code, false);
        plan.push((
            Change {
                kind: "function",
                name: name.clone(),
                action,
            },
            Some(req),
        ));
    }
    for (name, t) in &manifest.triggers {
        if !manifest.functions.contains_key(&t.function) && !functions.contains_key(&t.function) {
            problems.push(format!(
                "  triggers.{name}.function: function `{}` is neither in the manifest nor deployed",
                t.function
            ));
        }
        let body = t.to_value();
        let action = match triggers.get(name) {
            None => Action::Created,
            Some(cur) if cur["spec"] == body => Action::Unchanged,
            Some(_) => Action::Updated,
        };
        if action != Action::Unchanged {
            let check = client
                .request(Method::PUT, &format!("/v1/triggers/{name}"))
                .query(&[("dry_run", "true")])
                .json(&body);
            if let Err(e) = client.json(check).await {
                problems.push(format!("  triggers.{name}: {e}"));
            }
        }
        let req = client.request(Method::PUT, &format!("/v1/triggers/{name}")).json(&body);
        plan.push((
            Change {
                kind: "trigger",
                name: name.clone(),
                action,
            },
            Some(req),
        ));
    }
    if prune {
        for name in triggers.keys().filter(|n| !manifest.triggers.contains_key(*n)) {
            let req = client.request(Method::DELETE, &format!("/v1/triggers/{name}"));
            plan.push((
                Change {
                    kind: "trigger",
                    name: name.clone(),
                    action: Action::Deleted,
                },
                Some(req),
            ));
        }
        for name in functions.keys().filter(|n| !manifest.functions.contains_key(*n)) {
            let req = client.request(Method::DELETE, &format!("/v1/functions/{name}"));
            plan.push((
                Change {
                    kind: "function",
                    name: name.clone(),
                    action: Action::Deleted,
                },
                Some(req),
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the server refused parts of {}, nothing was applied:\n{}",
            path.display(),
            problems.join("\n")
        );
    }

    let mut changes = Vec::new();
    for (change, req) in plan {
        if change.action != Action::Unchanged
            && !dry_run
            && let Some(req) = req
        {
            client.send(req).await.map_err(|e| {
                anyhow::anyhow!("{} {}: {e} (changes before it were applied)", change.kind, change.name)
            })?;
        }
        if !json {
            let mark = match change.action {
                Action::Created => "+",
                Action::Updated => "~",
                Action::Unchanged => "=",
                Action::Deleted => "-",
            };
            let verb = serde_json::to_value(change.action)?
                .as_str()
                .unwrap_or_default()
                .to_string();
            let note = if dry_run && change.action != Action::Unchanged {
                " (dry run)"
            } else {
                ""
            };
            println!("{mark} {} {}: {verb}{note}", change.kind, change.name);
        }
        changes.push(change);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "dry_run": dry_run, "changes": changes }))?
        );
    } else {
        let count = |a: Action| changes.iter().filter(|c| c.action == a).count();
        println!(
            "{} created, {} updated, {} deleted, {} unchanged",
            count(Action::Created),
            count(Action::Updated),
            count(Action::Deleted),
            count(Action::Unchanged)
        );
    }
    Ok(changes)
}

fn deploy_request(client: &Client, name: &str, spec: &Value, code: &[u8], dry_run: bool) -> reqwest::RequestBuilder {
    let form = reqwest::multipart::Form::new()
        .text("spec", spec.to_string())
        .part("code", reqwest::multipart::Part::bytes(code.to_vec()));
    let mut req = client
        .request(Method::PUT, &format!("/v1/functions/{name}"))
        .multipart(form);
    if dry_run {
        req = req.query(&[("dry_run", "true")]);
    }
    req
}

async fn list(client: &Client, path: &str, key: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let v = client.json(client.request(Method::GET, path)).await?;
    Ok(v[key]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| Some((item["name"].as_str()?.to_string(), item)))
        .collect())
}
