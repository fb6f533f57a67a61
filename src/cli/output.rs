//! Client commands: send the request, print text for people or JSON with
//! `--json`.

use std::io::Read;

use anyhow::Context;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::client::Client;
use super::{DeployArgs, DlqCmd, FunctionsCmd, InvokeArgs, LogsArgs};

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn deploy(client: &Client, a: DeployArgs, json: bool) -> anyhow::Result<()> {
    let code = std::fs::read(&a.path).with_context(|| format!("cannot read {}", a.path.display()))?;
    let mut query: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            query.push((k.to_string(), v));
        }
    };
    set("memory", a.memory);
    set("timeout", a.timeout);
    set("retries", a.retries.map(|n| n.to_string()));
    set("max_event_age", a.max_event_age);
    set("reserved", a.reserved.map(|n| n.to_string()));
    set("max_instances", a.max_instances.map(|n| n.to_string()));
    set("idle_timeout", a.idle_timeout);
    set("on_success", a.on_success);
    set("on_failure", a.on_failure);
    set("success_body", a.success_body);
    set("fuel", a.fuel.map(|n| n.to_string()));
    for e in a.env {
        query.push(("env".into(), e));
    }
    for g in a.grants {
        query.push(("grant".into(), g));
    }
    for h in a.http {
        query.push(("http".into(), h));
    }
    if !json {
        eprintln!(
            "uploading {} ({} KiB) and compiling...",
            a.path.display(),
            code.len() / 1024
        );
    }
    let req = client
        .request(Method::PUT, &format!("/v1/functions/{}", a.name))
        .query(&query)
        .header("content-type", "application/wasm")
        .body(code);
    let v = client.json(req).await?;
    if json {
        print_json(&v);
    } else {
        println!(
            "deployed {} ({}): {}",
            a.name,
            v["kind"].as_str().unwrap_or("?"),
            v["digest"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

pub async fn invoke(client: &Client, a: InvokeArgs, json: bool) -> anyhow::Result<()> {
    let data: Vec<u8> = match (&a.data, &a.file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        (None, Some(p)) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        (None, None) => Vec::new(),
    };
    let content_type = a.content_type.clone().unwrap_or_else(|| {
        if serde_json::from_slice::<Value>(&data).is_ok() {
            "application/json"
        } else {
            "text/plain"
        }
        .to_string()
    });
    let mut req = client
        .request(Method::POST, &format!("/v1/functions/{}/invoke", a.name))
        .header("content-type", content_type)
        .body(data);
    if a.asynchronous {
        req = req.header(crate::api::HDR_INVOCATION_TYPE, "async");
        let v = client.json(req).await?;
        if json {
            print_json(&v);
        } else {
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        return Ok(());
    }
    let resp = client.send(req).await?;
    let id = resp
        .headers()
        .get(crate::api::HTTP_INVOCATION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let start = resp
        .headers()
        .get(crate::api::HDR_START)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.bytes().await?;
    if json {
        let output = match std::str::from_utf8(&body) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Null,
        };
        print_json(&serde_json::json!({ "id": id, "start": start, "output": output }));
    } else {
        use std::io::Write;
        let mut out = std::io::stdout();
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

pub async fn invocation(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let v = client
        .json(client.request(Method::GET, &format!("/v1/invocations/{id}")))
        .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    println!("invocation {}", v["id"].as_str().unwrap_or(id));
    println!("  function  {}", v["function"].as_str().unwrap_or(""));
    println!("  mode      {}", v["mode"].as_str().unwrap_or(""));
    println!("  status    {}", v["status"].as_str().unwrap_or(""));
    if let Some(d) = v["duration_ms"].as_f64() {
        println!(
            "  duration  {d:.3} ms ({})",
            v["start"].as_str().unwrap_or("not started")
        );
    }
    println!("  created   {}", v["created_at"].as_str().unwrap_or(""));
    if let Some(attempts) = v["attempts"].as_array() {
        for a in attempts {
            let err = &a["error"];
            let outcome = if err.is_null() {
                "ok".to_string()
            } else {
                format!(
                    "{} error{}: {}",
                    err["class"].as_str().unwrap_or(""),
                    err["kind"].as_str().map(|k| format!(" ({k})")).unwrap_or_default(),
                    err["message"].as_str().unwrap_or("")
                )
            };
            println!(
                "  attempt {} on {} {} {:.3} ms: {outcome}",
                a["number"],
                a["node"].as_str().unwrap_or(""),
                a["start"].as_str().unwrap_or("-"),
                a["duration_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

pub async fn functions(client: &Client, cmd: FunctionsCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        FunctionsCmd::Ls => {
            let v = client.json(client.request(Method::GET, "/v1/functions")).await?;
            if json {
                {
                    print_json(&v);
                    return Ok(());
                }
            }
            let fns = v["functions"].as_array().cloned().unwrap_or_default();
            if fns.is_empty() {
                println!("no functions; deploy one with `evoke deploy NAME PATH.wasm`");
                return Ok(());
            }
            println!("{:<24} {:<14} {:>8} {:>8}  DIGEST", "NAME", "KIND", "MEMORY", "TIMEOUT");
            for f in fns {
                println!(
                    "{:<24} {:<14} {:>8} {:>8}  {}",
                    f["name"].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap_or(""),
                    f["spec"]["memory"].as_str().unwrap_or(""),
                    f["spec"]["timeout"].as_str().unwrap_or(""),
                    f["digest"].as_str().unwrap_or("").chars().take(19).collect::<String>()
                );
            }
        }
        FunctionsCmd::Show { name } => {
            let v = client
                .json(client.request(Method::GET, &format!("/v1/functions/{name}")))
                .await?;
            print_json(&v);
        }
        FunctionsCmd::Rm { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/functions/{name}")))
                .await?;
            if json {
                print_json(&serde_json::json!({ "removed": name }));
            } else {
                println!("removed {name}");
            }
        }
    }
    Ok(())
}

pub async fn dlq(client: &Client, cmd: DlqCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::Ls { name, limit } => {
            let v = client
                .json(
                    client
                        .request(Method::GET, &format!("/v1/functions/{name}/dlq"))
                        .query(&[("limit", limit)]),
                )
                .await?;
            if json {
                {
                    print_json(&v);
                    return Ok(());
                }
            }
            let entries = v["dead_letters"].as_array().cloned().unwrap_or_default();
            if entries.is_empty() {
                println!("no dead letters for {name}");
            }
            for e in entries {
                println!(
                    "{}  {}  {} attempts  {}",
                    e["id"].as_str().unwrap_or(""),
                    e["dead_lettered_at"].as_str().unwrap_or(""),
                    e["attempts"].as_array().map(|a| a.len()).unwrap_or(0),
                    e["reason"].as_str().unwrap_or("")
                );
            }
        }
        DlqCmd::Show { name, id } => {
            let v = client
                .json(client.request(Method::GET, &format!("/v1/functions/{name}/dlq/{id}")))
                .await?;
            print_json(&v);
        }
        DlqCmd::Redrive { name, ids, all } => {
            let body = if all {
                serde_json::json!({ "all": true })
            } else {
                serde_json::json!({ "ids": ids })
            };
            let v = client
                .json(
                    client
                        .request(Method::POST, &format!("/v1/functions/{name}/dlq/redrive"))
                        .json(&body),
                )
                .await?;
            if json {
                {
                    print_json(&v);
                    return Ok(());
                }
            }
            let n = v["redriven"].as_array().map(|a| a.len()).unwrap_or(0);
            println!("redrove {n} event(s) of {name}");
            if let Some(failed) = v["failed"].as_array().filter(|f| !f.is_empty()) {
                anyhow::bail!("{} event(s) could not be redriven: {failed:?}", failed.len());
            }
        }
    }
    Ok(())
}

pub async fn logs(client: &Client, a: LogsArgs, json: bool) -> anyhow::Result<()> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if a.follow {
        q.push(("follow", "true".into()));
    }
    if let Some(s) = a.since {
        q.push(("since", s));
    }
    if let Some(i) = a.invocation {
        q.push(("invocation", i));
    }
    let resp = client
        .send(
            client
                .request(Method::GET, &format!("/v1/functions/{}/logs", a.name))
                .query(&q),
        )
        .await?;
    let mut body = resp.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if json {
                print!("{line}");
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                println!(
                    "{} {:<5} {} {}",
                    v["time"].as_str().unwrap_or(""),
                    v["level"].as_str().unwrap_or(""),
                    v["invocation"].as_str().unwrap_or(""),
                    v["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

pub async fn triggers(client: &Client, cmd: super::TriggersCmd, json: bool) -> anyhow::Result<()> {
    use super::TriggersCmd;
    match cmd {
        TriggersCmd::Ls => {
            let v = client.json(client.request(Method::GET, "/v1/triggers")).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let all = v["triggers"].as_array().cloned().unwrap_or_default();
            if all.is_empty() {
                println!("no triggers; add some with `evoke apply -f evoke.toml`");
                return Ok(());
            }
            println!(
                "{:<20} {:<8} {:<20} {:<13} {:<8} LAST EVENT",
                "NAME", "KIND", "FUNCTION", "STATE", "LAG"
            );
            for t in &all {
                let last = &t["last_event"];
                let last = last["time"].as_str().map(str::to_string).unwrap_or_else(|| {
                    // Queue triggers: what this node's consumer stored.
                    match t["consumer"]["stored"].as_u64() {
                        Some(n) => format!("{n} stored here"),
                        None => "-".into(),
                    }
                });
                let lag = t["lag"].as_u64().map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:<8} {:<20} {:<13} {:<8} {last}",
                    t["name"].as_str().unwrap_or(""),
                    t["kind"].as_str().unwrap_or("?"),
                    t["function"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or(""),
                    lag
                );
            }
            // What is wrong with the triggers that are not active, on
            // stderr so the table stays a table for scripts.
            for t in &all {
                if let Some(error) = t["error"].as_str() {
                    eprintln!("{}: {error}", t["name"].as_str().unwrap_or("?"));
                }
            }
        }
        TriggersCmd::Show { name } => {
            let v = client
                .json(client.request(Method::GET, &format!("/v1/triggers/{name}")))
                .await?;
            print_json(&v);
        }
        TriggersCmd::Rm { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/triggers/{name}")))
                .await?;
            if json {
                print_json(&serde_json::json!({ "removed": name }));
            } else {
                println!("removed trigger {name}");
            }
        }
        TriggersCmd::Backfill {
            name,
            prefix,
            since,
            dry_run,
        } => backfill(client, &name, prefix, since, dry_run, json).await?,
    }
    Ok(())
}

/// Streams a backfill's progress: a line per listed page (or the JSON
/// lines themselves with --json), then the totals.
async fn backfill(
    client: &Client,
    name: &str,
    prefix: Option<String>,
    since: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let body = serde_json::json!({ "prefix": prefix, "since": since, "dry_run": dry_run });
    let resp = client
        .send(
            client
                .request(Method::POST, &format!("/v1/triggers/{name}/backfill"))
                .json(&body),
        )
        .await?;
    let mut stream = resp.bytes_stream();
    let mut buffer = Vec::new();
    let mut last = serde_json::Value::Null;
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if json {
                println!("{v}");
            } else if let Some(e) = v["error"].as_str() {
                anyhow::bail!("backfill of {name} stopped: {e} (what was queued stays queued; run it again to go on)");
            } else if v["done"] != true {
                eprintln!(
                    "listed {} objects: {} queued, {} already queued, {} filtered out",
                    v["listed"], v["queued"], v["duplicates"], v["filtered"]
                );
            }
            last = v;
        }
    }
    if last["done"] != true {
        anyhow::bail!("backfill of {name} ended early: the connection closed (run it again to go on)");
    }
    if let Some(e) = last["error"].as_str() {
        anyhow::bail!("backfill of {name} stopped: {e}");
    }
    if !json {
        let verb = if dry_run { "would queue" } else { "queued" };
        println!(
            "backfill of {name}: {} objects listed, {verb} {}, {} already queued, {} filtered out, {} dead-lettered",
            last["listed"], last["queued"], last["duplicates"], last["filtered"], last["parked"]
        );
    }
    Ok(())
}

pub async fn stores(client: &Client, cmd: super::StoresCmd, json: bool) -> anyhow::Result<()> {
    use super::StoresCmd;
    let cmd_is_rm = matches!(cmd, StoresCmd::Rm { .. });
    match cmd {
        StoresCmd::Ls => {
            let v = client.json(client.request(Method::GET, "/v1/stores")).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let all = v["stores"].as_array().cloned().unwrap_or_default();
            if all.is_empty() {
                println!("no stores; add one as [stores.<name>] in evoke.toml and run `evoke apply`");
                return Ok(());
            }
            println!("{:<20} {:<12} ENDPOINT", "NAME", "STATE");
            for st in &all {
                println!(
                    "{:<20} {:<12} {}",
                    st["name"].as_str().unwrap_or(""),
                    st["state"].as_str().unwrap_or(""),
                    st["config"]["endpoint"].as_str().unwrap_or("AWS")
                );
            }
            for st in &all {
                if let Some(error) = st["error"].as_str() {
                    eprintln!("{}: {error}", st["name"].as_str().unwrap_or("?"));
                }
            }
        }
        StoresCmd::Show { name } | StoresCmd::Rm { name } => {
            show_or_remove(client, cmd_is_rm, "store", &name, json).await?
        }
    }
    Ok(())
}

/// `evoke connections`.
pub async fn connections(client: &Client, cmd: super::StoresCmd, json: bool) -> anyhow::Result<()> {
    use super::StoresCmd;
    let cmd_is_rm = matches!(cmd, StoresCmd::Rm { .. });
    match cmd {
        StoresCmd::Ls => {
            let v = client.json(client.request(Method::GET, "/v1/connections")).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let all = v["connections"].as_array().cloned().unwrap_or_default();
            if all.is_empty() {
                println!("no connections; add one as [connections.<name>] in evoke.toml and run `evoke apply`");
                return Ok(());
            }
            println!("{:<20} {:<40} MISSING ON THIS NODE", "NAME", "WHERE");
            for c in &all {
                let cfg = &c["config"];
                let at = cfg["url"]
                    .as_str()
                    .map(evoke_connectors::connection::redact)
                    .or_else(|| cfg["url_env"].as_str().map(|e| format!("${e}")))
                    .or_else(|| cfg["brokers"].as_array().map(|b| format!("{} broker(s)", b.len())))
                    .unwrap_or_default();
                let missing: Vec<&str> = c["missing_env"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<40} {}",
                    c["name"].as_str().unwrap_or(""),
                    at,
                    if missing.is_empty() {
                        "-".to_string()
                    } else {
                        missing.join(", ")
                    }
                );
            }
        }
        StoresCmd::Show { name } | StoresCmd::Rm { name } => {
            show_or_remove(client, cmd_is_rm, "connection", &name, json).await?
        }
    }
    Ok(())
}

/// `show NAME` (the JSON view) or `rm NAME` of a store or connection.
async fn show_or_remove(client: &Client, rm: bool, kind: &str, name: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/v1/{kind}s/{name}");
    if !rm {
        print_json(&client.json(client.request(Method::GET, &path)).await?);
    } else {
        client.send(client.request(Method::DELETE, &path)).await?;
        if json {
            print_json(&serde_json::json!({ "removed": name }));
        } else {
            println!("removed {kind} {name}");
        }
    }
    Ok(())
}
