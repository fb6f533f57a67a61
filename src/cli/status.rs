//! `evoke status`: the cluster as the server sees it, for people (a few
//! tables and the warnings) or as JSON.

use reqwest::Method;
use serde_json::Value;

use super::client::Client;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let v = client.json(client.request(Method::GET, "/v1/status")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let nats = &v["nats"];
    println!(
        "NATS: {} (version {}, cluster {}), {}; replicas {}",
        s(&nats["server_name"]),
        s(&nats["version"]),
        nats["cluster"].as_str().unwrap_or("none"),
        s(&nats["state"]),
        v["replicas"]
    );
    if let Some(servers) = nats["servers"].as_array().filter(|a| !a.is_empty()) {
        let list: Vec<&str> = servers.iter().map(s).collect();
        println!("  servers: {}", list.join(", "));
    }
    println!();
    println!(
        "{:<28} {:<6} {:<9} {:<9} {:>8} {:>9}",
        "NODE", "API", "WORKERS", "SOURCES", "RUNNING", "INSTANCES"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let yes = |b: &Value| if b.as_bool() == Some(true) { "yes" } else { "no" };
        println!(
            "{:<28} {:<6} {:<9} {:<9} {:>8} {:>9}",
            s(&n["name"]),
            yes(&n["roles"]["api"]),
            yes(&n["roles"]["workers"]),
            yes(&n["roles"]["sources"]),
            n["in_flight"],
            n["instances"]
        );
    }
    println!();
    println!("{:<24} {:>8} {:<20} {:>10}", "STREAM", "REPLICAS", "LEADER", "MESSAGES");
    for st in v["streams"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:>8} {:<20} {:>10}",
            s(&st["name"]),
            st["replicas"],
            st["leader"].as_str().unwrap_or("-"),
            st["messages"]
        );
    }
    let functions = v["functions"].as_array().cloned().unwrap_or_default();
    if !functions.is_empty() {
        println!();
        println!(
            "{:<24} {:>8} {:>14} {:>13}",
            "FUNCTION", "QUEUED", "OLDEST (s)", "DEAD LETTERS"
        );
        for f in functions {
            let oldest = f["oldest_event_age_s"]
                .as_f64()
                .map(|a| format!("{a:.1}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<24} {:>8} {:>14} {:>13}",
                s(&f["name"]),
                f["queued"],
                oldest,
                f["dead_letters"]
            );
        }
    }
    let warnings = v["warnings"].as_array().cloned().unwrap_or_default();
    if !warnings.is_empty() {
        println!();
        for w in warnings {
            println!("warning: {}", s(&w));
        }
    }
    Ok(())
}
