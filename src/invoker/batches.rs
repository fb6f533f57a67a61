//! Partial batch failure: a function handed a batch (`evoke.<kind>.batch`,
//! data `application/cloudevents-batch+json`) may answer which of its items
//! failed, in Lambda's shape:
//!
//! ```json
//! {"batchItemFailures": [{"itemIdentifier": "<the item's id>"}]}
//! ```
//!
//! The others count as done. The failed ones are put back on the queue as
//! a smaller batch (a new invocation, before the original is acknowledged),
//! up to the function's `retries` rounds; after that they are
//! dead-lettered. An answer naming every item, or an item the batch does
//! not have, is a function error of the whole batch (retried as usual).

use evoke_connectors::Event;
use evoke_connectors::event::BATCH_CONTENT_TYPE;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::executor::{FunctionErrorKind, InvokeError, Run};

/// On a smaller batch: which round of partial retries it is (1-based).
pub const EXT_BATCH_RETRY: &str = "evokebatchretry";
/// On a smaller batch: the invocation whose failed items it holds.
pub const EXT_BATCH_PARENT: &str = "evokebatchparent";

/// What a batch's output says failed.
#[derive(Debug, PartialEq)]
pub enum Failed {
    /// Nothing (or the event is no batch, or the output says nothing).
    Nothing,
    /// These items, by id (some, not all).
    Some(Vec<String>),
}

fn is_batch(event: &Event) -> bool {
    event.datacontenttype.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(BATCH_CONTENT_TYPE)
    })
}

/// A batch's items, each with its id (when it has a string one) and as it
/// is in the batch: raw, so a smaller batch keeps their data byte for byte.
fn items(event: &Event) -> Vec<(Option<String>, Box<RawValue>)> {
    #[derive(serde::Deserialize)]
    struct Item {
        id: Option<String>,
    }
    let items: Vec<Box<RawValue>> = serde_json::from_slice(&event.data).unwrap_or_default();
    items
        .into_iter()
        .map(|raw| {
            let id = serde_json::from_str::<Item>(raw.get()).ok().and_then(|i| i.id);
            (id, raw)
        })
        .collect()
}

/// The failed items a batch's output names; `Err` (a function error) when
/// it names them all, names one the batch does not have, or is malformed.
pub fn failed(event: &Event, body: &[u8]) -> Result<Failed, String> {
    if !is_batch(event) {
        return Ok(Failed::Nothing);
    }
    let Ok(Value::Object(out)) = serde_json::from_slice::<Value>(body) else {
        return Ok(Failed::Nothing);
    };
    let Some(list) = out.get("batchItemFailures") else {
        return Ok(Failed::Nothing);
    };
    let bad = || "batchItemFailures must be a list of {\"itemIdentifier\": \"<item id>\"}".to_string();
    let list = list.as_array().ok_or_else(bad)?;
    let items = items(event);
    let mut ids: Vec<String> = Vec::with_capacity(list.len());
    for f in list {
        let id = f.get("itemIdentifier").and_then(Value::as_str).ok_or_else(bad)?;
        if !items.iter().any(|(i, _)| i.as_deref() == Some(id)) {
            return Err(format!(
                "batchItemFailures names `{id}`, which is not an item of this batch"
            ));
        }
        if !ids.iter().any(|x| x == id) {
            ids.push(id.to_string());
        }
    }
    match ids.len() {
        0 => Ok(Failed::Nothing),
        n if n >= items.len() => Err(format!("every item of the batch failed ({n} in batchItemFailures)")),
        _ => Ok(Failed::Some(ids)),
    }
}

/// A run whose output fails the whole batch becomes the function error it is.
pub fn judge(event: &Event, mut run: Run) -> Run {
    if let Ok(output) = &run.result
        && let Err(message) = failed(event, &output.body)
    {
        run.result = Err(InvokeError::Function {
            kind: FunctionErrorKind::Error,
            message,
        });
    }
    run
}

/// The smaller batch of `event`'s items named in `ids`, as round `round` of
/// partial retries of invocation `parent`.
pub fn smaller(event: &Event, ids: &[String], parent: &str, round: u32) -> Event {
    let kept: Vec<Box<RawValue>> = items(event)
        .into_iter()
        .filter(|(i, _)| i.as_ref().is_some_and(|i| ids.contains(i)))
        .map(|(_, raw)| raw)
        .collect();
    let mut e = event.clone().with_batch(&kept);
    e.id = format!("{parent}.retry{round}");
    e.extensions.insert(EXT_BATCH_RETRY.into(), round.to_string());
    e.extensions.insert(EXT_BATCH_PARENT.into(), parent.to_string());
    e.extensions.remove(evoke_connectors::event::EXT_ATTEMPT);
    e
}

/// Which round of partial retries `event` is (0 for an original batch).
pub fn round(event: &Event) -> u32 {
    event
        .extensions
        .get(EXT_BATCH_RETRY)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn batch(ids: &[&str]) -> Event {
        let items: Vec<Value> = ids
            .iter()
            .map(|id| serde_json::json!({"specversion": "1.0", "id": id, "source": "/s", "type": "t", "data": {"n": id}}))
            .collect();
        Event::new("b1", "/evoke/triggers/t", "evoke.kafka.batch").with_data(
            Some(BATCH_CONTENT_TYPE.into()),
            Bytes::from(Value::Array(items).to_string()),
        )
    }

    fn out(ids: &[&str]) -> Vec<u8> {
        let f: Vec<Value> = ids.iter().map(|i| serde_json::json!({"itemIdentifier": i})).collect();
        serde_json::json!({"batchItemFailures": f}).to_string().into_bytes()
    }

    #[test]
    fn failed_items_are_read_from_lambdas_shape() {
        let b = batch(&["a", "b", "c"]);
        assert_eq!(failed(&b, &out(&["b", "b"])), Ok(Failed::Some(vec!["b".into()])));
        assert_eq!(failed(&b, &out(&[])), Ok(Failed::Nothing));
        assert_eq!(failed(&b, b"ok"), Ok(Failed::Nothing), "any other output: all done");
        assert_eq!(failed(&b, br#"{"total": 3}"#), Ok(Failed::Nothing));
        assert!(failed(&b, &out(&["a", "b", "c"])).unwrap_err().contains("every item"));
        assert!(failed(&b, &out(&["zz"])).unwrap_err().contains("`zz`"));
        assert!(failed(&b, br#"{"batchItemFailures": ["b"]}"#).is_err());
        // Not a batch: the output means nothing special.
        let single = Event::new("e", "/s", "t");
        assert_eq!(failed(&single, &out(&["b"])), Ok(Failed::Nothing));
    }

    #[test]
    fn the_smaller_batch_keeps_only_the_failed_items() {
        let b = batch(&["a", "b", "c"]);
        let s = smaller(&b, &["c".into(), "a".into()], "inv1", 1);
        let items: Vec<Value> = serde_json::from_slice(&s.data).unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "c"], "in batch order");
        assert_eq!(s.id, "inv1.retry1");
        assert_eq!(round(&s), 1);
        assert_eq!(s.extensions["evokebatchsize"], "2");
        assert_eq!(s.extensions[EXT_BATCH_PARENT], "inv1");
        assert_eq!(s.ty, b.ty);
        assert_eq!(round(&b), 0);
    }

    #[test]
    fn the_smaller_batch_keeps_its_items_byte_for_byte() {
        let a = r#"{"id":"a","data":{"zeta": 1,"alpha":2.50}}"#;
        let c = r#"{"data":[3.0, 1e2],"id":"c"}"#;
        let b = Event::new("b1", "/evoke/triggers/t", "evoke.kafka.batch").with_data(
            Some(BATCH_CONTENT_TYPE.into()),
            Bytes::from(format!(r#"[{a}, {{"id":"b"}},{c}]"#)),
        );
        let s = smaller(&b, &["c".into(), "a".into()], "inv1", 1);
        assert_eq!(std::str::from_utf8(&s.data).unwrap(), format!("[{a},{c}]"));
    }
}
