//! Enriches orders arriving from a broker: `{"id":"o-1","items":[{"sku":"a","qty":2,"price":1.5}]}`
//! becomes the same order with `total`, `item_count` and `enriched_by`.
//! The result goes on by the function's `on_success` destination (a Kafka
//! topic or a RabbitMQ exchange in the shipped `evoke.toml`).
//!
//! A batch (a trigger with `batch = {...}`) arrives as a JSON array of
//! CloudEvents; each order in it is enriched and the answer is an array.
//! An order that is not valid JSON fails the invocation, so it is retried
//! and finally dead-lettered with the reason.

use evoke_sdk::{Event, Function, Output};
use serde_json::{Value, json};

fn enrich(mut order: Value) -> Result<Value, String> {
    let items = order
        .get("items")
        .and_then(Value::as_array)
        .ok_or("an order needs an `items` array")?;
    let mut total = 0.0;
    for item in items {
        let qty = item.get("qty").and_then(Value::as_f64).unwrap_or(1.0);
        let price = item
            .get("price")
            .and_then(Value::as_f64)
            .ok_or("every item needs a `price`")?;
        total += qty * price;
    }
    let count = items.len();
    let obj = order.as_object_mut().ok_or("an order must be a JSON object")?;
    obj.insert("total".into(), json!((total * 100.0).round() / 100.0));
    obj.insert("item_count".into(), json!(count));
    obj.insert("enriched_by".into(), json!("evoke"));
    Ok(order)
}

struct Enrich;

impl Function for Enrich {
    fn handle(event: Event) -> Result<Output, String> {
        let out = if event.type_.ends_with(".batch") {
            let records: Vec<Value> = event.json()?;
            let mut orders = Vec::with_capacity(records.len());
            for r in records {
                orders.push(enrich(r.get("data").cloned().unwrap_or(Value::Null))?);
            }
            evoke_sdk::info(format!("enriched a batch of {} orders", orders.len()));
            Value::Array(orders)
        } else {
            let order = enrich(event.json()?)?;
            evoke_sdk::info(format!(
                "enriched order {} from {}",
                order.get("id").unwrap_or(&Value::Null),
                event.extension("evoketrigger").unwrap_or("a direct call")
            ));
            order
        };
        Output::json(&out)
    }
}

evoke_sdk::function!(Enrich);
