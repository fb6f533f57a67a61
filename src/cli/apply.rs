//! `evoke apply -f evoke.toml`: make the server match the manifest.
//!
//! Three phases, so a bad manifest changes nothing: validate the file
//! locally (every problem, with its path); ask the server to validate every
//! store, function and trigger that would change (`dry_run`); then apply,
//! stores and functions before the triggers that use them, and with
//! `--prune` delete what the manifest no longer has (triggers first).

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

/// One step of a plan: what changes, and the request that changes it.
type Step = (Change, reqwest::RequestBuilder);

/// Applies a manifest; returns the changes (also printed, as text or JSON).
pub async fn apply(
    client: &Client,
    path: &Path,
    prune: bool,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<Vec<Change>> {
    let manifest = Manifest::load(path).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {}: {}", e.field, e.message)).collect();
        anyhow::anyhow!(
            "{} is invalid, nothing was applied:\n{}",
            path.display(),
            lines.join("\n")
        )
    })?;
    let deployed = Deployed {
        functions: list(client, "/v1/functions", "functions").await?,
        triggers: list(client, "/v1/triggers", "triggers").await?,
        stores: list(client, "/v1/stores", "stores").await?,
        connections: list(client, "/v1/connections", "connections").await?,
    };
    let mut problems = Vec::new();
    let mut plan = plan_named(client, "store", &manifest.stores, &deployed.stores, &mut problems).await;
    plan.extend(
        plan_named(
            client,
            "connection",
            &manifest.connections,
            &deployed.connections,
            &mut problems,
        )
        .await,
    );
    plan.extend(plan_functions(client, &manifest, &deployed, &mut problems).await?);
    plan.extend(plan_triggers(client, &manifest, &deployed, &mut problems).await);
    if prune {
        plan.extend(plan_prune(client, &manifest, &deployed));
    }
    if !problems.is_empty() {
        bail!(
            "the server refused parts of {}, nothing was applied:\n{}",
            path.display(),
            problems.join("\n")
        );
    }
    let changes = execute(client, plan, dry_run, json).await?;
    report(&changes, dry_run, json)?;
    Ok(changes)
}

/// What the server has now, by name.
struct Deployed {
    functions: BTreeMap<String, Value>,
    triggers: BTreeMap<String, Value>,
    stores: BTreeMap<String, Value>,
    connections: BTreeMap<String, Value>,
}

/// Creates or updates for the manifest's stores or connections, checked by
/// the server.
async fn plan_named<T: serde::Serialize>(
    client: &Client,
    kind: &'static str,
    wanted: &BTreeMap<String, T>,
    deployed: &BTreeMap<String, Value>,
    problems: &mut Vec<String>,
) -> Vec<Step> {
    let mut plan = Vec::new();
    for (name, config) in wanted {
        let body = serde_json::to_value(config).unwrap_or_default();
        let current = deployed.get(name).map(|cur| &cur["config"]);
        plan.push(plan_put(client, kind, name, body, current, problems).await);
    }
    plan
}

/// The step that makes `<kind>s/<name>` hold `body` (`current` is what the
/// server has now); the server's dry run checks it first, and what it
/// refuses goes to `problems`.
async fn plan_put(
    client: &Client,
    kind: &'static str,
    name: &str,
    body: Value,
    current: Option<&Value>,
    problems: &mut Vec<String>,
) -> Step {
    let action = match current {
        None => Action::Created,
        Some(cur) if *cur == body => Action::Unchanged,
        Some(_) => Action::Updated,
    };
    let put = || client.request(Method::PUT, &format!("/v1/{kind}s/{name}")).json(&body);
    if action != Action::Unchanged
        && let Err(e) = client.json(put().query(&[("dry_run", "true")])).await
    {
        problems.push(format!("  {kind}s.{name}: {e}"));
    }
    let change = Change {
        kind,
        name: name.to_string(),
        action,
    };
    (change, put())
}

/// Creates or updates for the manifest's functions; what the server's dry
/// run refuses goes to `problems`.
async fn plan_functions(
    client: &Client,
    manifest: &Manifest,
    deployed: &Deployed,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<Step>> {
    let mut plan = Vec::new();
    for (name, f) in &manifest.functions {
        let spec = serde_json::to_value(&f.spec)?;
        let action = match deployed.functions.get(name) {
            None => Action::Created,
            Some(cur) if cur["digest"] == digest(&f.code).as_str() && cur["spec"] == spec => Action::Unchanged,
            Some(_) => Action::Updated,
        };
        if action != Action::Unchanged
            && let Err(e) = client.json(deploy_request(client, name, &spec, &f.code, true)).await
        {
            problems.push(format!("  functions.{name}: {e}"));
        }
        let change = Change {
            kind: "function",
            name: name.clone(),
            action,
        };
        plan.push((change, deploy_request(client, name, &spec, &f.code, false)));
    }
    Ok(plan)
}

/// Creates or updates for the manifest's triggers, checked as above.
async fn plan_triggers(
    client: &Client,
    manifest: &Manifest,
    deployed: &Deployed,
    problems: &mut Vec<String>,
) -> Vec<Step> {
    let mut plan = Vec::new();
    for (name, t) in &manifest.triggers {
        if !manifest.functions.contains_key(&t.function) && !deployed.functions.contains_key(&t.function) {
            problems.push(format!(
                "  triggers.{name}.function: function `{}` is neither in the manifest nor deployed",
                t.function
            ));
        }
        if let evoke_connectors::trigger::SourceConfig::S3(c) = &t.source
            && !manifest.stores.contains_key(&c.store)
            && !deployed.stores.contains_key(&c.store)
        {
            problems.push(format!(
                "  triggers.{name}.store: store `{}` is neither in the manifest ([stores.{}]) nor on the server",
                c.store, c.store
            ));
        }
        if let Some(c) = t.source.connection()
            && !manifest.connections.contains_key(c)
            && !deployed.connections.contains_key(c)
        {
            problems.push(format!(
                "  triggers.{name}.connection: connection `{c}` is neither in the manifest ([connections.{c}]) nor on the server"
            ));
        }
        let current = deployed.triggers.get(name).map(|cur| &cur["spec"]);
        plan.push(plan_put(client, "trigger", name, t.to_value(), current, problems).await);
    }
    plan
}

/// Deletes for what the manifest no longer has: triggers before the
/// functions and stores they use.
fn plan_prune(client: &Client, manifest: &Manifest, deployed: &Deployed) -> Vec<Step> {
    let triggers = deployed
        .triggers
        .keys()
        .filter(|n| !manifest.triggers.contains_key(*n))
        .map(|n| ("trigger", n, format!("/v1/triggers/{n}")));
    let functions = deployed
        .functions
        .keys()
        .filter(|n| !manifest.functions.contains_key(*n))
        .map(|n| ("function", n, format!("/v1/functions/{n}")));
    let stores = deployed
        .stores
        .keys()
        .filter(|n| !manifest.stores.contains_key(*n))
        .map(|n| ("store", n, format!("/v1/stores/{n}")));
    let connections = deployed
        .connections
        .keys()
        .filter(|n| !manifest.connections.contains_key(*n))
        .map(|n| ("connection", n, format!("/v1/connections/{n}")));
    triggers
        .chain(functions)
        .chain(stores)
        .chain(connections)
        .map(|(kind, name, path)| {
            let change = Change {
                kind,
                name: name.clone(),
                action: Action::Deleted,
            };
            (change, client.request(Method::DELETE, &path))
        })
        .collect()
}

/// Sends every change (none on a dry run), printing each as it goes.
async fn execute(client: &Client, plan: Vec<Step>, dry_run: bool, json: bool) -> anyhow::Result<Vec<Change>> {
    let mut changes = Vec::new();
    for (change, req) in plan {
        if change.action != Action::Unchanged && !dry_run {
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
    Ok(changes)
}

/// The closing summary line, or the whole result as JSON.
fn report(changes: &[Change], dry_run: bool, json: bool) -> anyhow::Result<()> {
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
    Ok(())
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
