//! S3 event notifications as AWS, MinIO and Ceph RGW send them, read into
//! one shape.
//!
//! The senders differ in small ways that all matter: `eventName` comes with
//! or without the `s3:` prefix (Ceph drops it), keys are URL-encoded with
//! `+` for a space, `size` is a number or a string, MinIO adds top-level
//! `EventName`/`Key` and extra fields, a message may carry several records,
//! S3 → SNS → SQS wraps the whole JSON in SNS's `Message` string, and a new
//! AWS configuration first sends an `s3:TestEvent` that is no record at all.

use serde_json::Value;

/// One record of a notification, with the fields evoke uses decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Without the `s3:` prefix: `ObjectCreated:Put`.
    pub event_name: String,
    pub bucket: String,
    /// Decoded: `photos/my cat.jpg`.
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub sequencer: Option<String>,
    pub version_id: Option<String>,
    pub event_time: Option<String>,
    /// The record exactly as it arrived (the event's data).
    pub raw: Value,
}

/// What one notification holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    Records(Vec<Record>),
    /// `s3:TestEvent`, sent when a bucket's notifications are configured:
    /// acknowledged and skipped.
    Test {
        bucket: Option<String>,
    },
}

/// Why a notification cannot be read; says where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotificationError {
    #[error("notification is not JSON: {0}")]
    NotJson(String),
    #[error("notification must be a JSON object with `Records`")]
    NotAnObject,
    #[error("notification has no `Records` array (nor is it an s3:TestEvent)")]
    NoRecords,
    #[error("SNS message's `Message` is not an S3 notification: {0}")]
    Sns(Box<NotificationError>),
    #[error("Records[{index}]: `{field}` {problem}")]
    Field {
        index: usize,
        field: &'static str,
        problem: &'static str,
    },
}

/// Reads a notification body (the JSON S3, MinIO or Ceph sent, or an SNS
/// envelope around it).
pub fn parse(body: &[u8]) -> Result<Notification, NotificationError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| NotificationError::NotJson(e.to_string()))?;
    from_value(&v, true)
}

fn from_value(v: &Value, unwrap_sns: bool) -> Result<Notification, NotificationError> {
    let Value::Object(m) = v else {
        return Err(NotificationError::NotAnObject);
    };
    if unwrap_sns
        && m.get("Type").and_then(Value::as_str) == Some("Notification")
        && let Some(message) = m.get("Message").and_then(Value::as_str)
    {
        let inner: Value = serde_json::from_str(message)
            .map_err(|e| NotificationError::Sns(Box::new(NotificationError::NotJson(e.to_string()))))?;
        return from_value(&inner, false).map_err(|e| NotificationError::Sns(Box::new(e)));
    }
    if is_test_event(m.get("Event")) {
        let bucket = m.get("Bucket").and_then(Value::as_str).map(str::to_string);
        return Ok(Notification::Test { bucket });
    }
    let Some(Value::Array(records)) = m.get("Records") else {
        return Err(NotificationError::NoRecords);
    };
    let mut out = Vec::with_capacity(records.len());
    for (index, r) in records.iter().enumerate() {
        if is_test_event(r.get("eventName")) {
            continue;
        }
        out.push(record(index, r)?);
    }
    if out.is_empty() && !records.is_empty() {
        return Ok(Notification::Test { bucket: None });
    }
    Ok(Notification::Records(out))
}

fn is_test_event(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .is_some_and(|e| e.strip_prefix("s3:").unwrap_or(e) == "TestEvent")
}

fn record(index: usize, r: &Value) -> Result<Record, NotificationError> {
    let field = |field: &'static str, problem: &'static str| NotificationError::Field { index, field, problem };
    if !r.is_object() {
        return Err(field("Records[]", "must be an object"));
    }
    let text = |v: &Value, name: &'static str| -> Result<String, NotificationError> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::Null => Err(field(name, "is missing")),
            _ => Err(field(name, "must be a non-empty string")),
        }
    };
    let optional = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let name = text(&r["eventName"], "eventName")?;
    let event_name = name.strip_prefix("s3:").unwrap_or(&name).to_string();
    let bucket = text(&r["s3"]["bucket"]["name"], "s3.bucket.name")?;
    let encoded = text(&r["s3"]["object"]["key"], "s3.object.key")?;
    let key = decode_key(&encoded).ok_or_else(|| field("s3.object.key", "is not a URL-encoded UTF-8 key"))?;
    let object = &r["s3"]["object"];
    let size = match &object["size"] {
        Value::Null => None,
        Value::Number(n) => Some(
            n.as_u64()
                .ok_or_else(|| field("s3.object.size", "must be a whole number"))?,
        ),
        Value::String(s) => Some(
            s.trim()
                .parse()
                .map_err(|_| field("s3.object.size", "must be a whole number"))?,
        ),
        _ => return Err(field("s3.object.size", "must be a number")),
    };
    Ok(Record {
        event_name,
        bucket,
        key,
        size,
        etag: optional(&object["eTag"]).or_else(|| optional(&object["etag"])),
        sequencer: optional(&object["sequencer"]),
        version_id: optional(&object["versionId"]),
        event_time: optional(&r["eventTime"]),
        raw: r.clone(),
    })
}

/// Decodes a key as S3 notifications encode it: `+` is a space, `%XX` a
/// byte. `None` when the bytes are not UTF-8.
pub fn decode_key(encoded: &str) -> Option<String> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(body: &Value) -> Record {
        match parse(body.to_string().as_bytes()).unwrap() {
            Notification::Records(mut r) => {
                assert_eq!(r.len(), 1);
                r.remove(0)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_senders_variants() {
        let aws = json!({"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put",
            "eventTime":"2026-01-01T00:00:00.000Z",
            "s3":{"bucket":{"name":"photos"},"object":{"key":"incoming/my+cat%281%29.jpg","size":1024,
            "eTag":"abc","sequencer":"0055AED6DCD90281E5"}}}]});
        let r = one(&aws);
        assert_eq!(r.event_name, "ObjectCreated:Put");
        assert_eq!(r.key, "incoming/my cat(1).jpg");
        assert_eq!(
            (r.size, r.sequencer.as_deref()),
            (Some(1024), Some("0055AED6DCD90281E5"))
        );
        let minio = json!({"EventName":"s3:ObjectCreated:Put","Key":"photos/a.png","Records":[{"eventName":"s3:ObjectCreated:Put",
            "s3":{"bucket":{"name":"photos"},"object":{"key":"a.png","size":"17","userMetadata":{"content-type":"image/png"}}}}]});
        let r = one(&minio);
        assert_eq!((r.event_name.as_str(), r.size), ("ObjectCreated:Put", Some(17)));
        let wrapped = json!({"Type":"Notification","MessageId":"m","Message": aws.to_string()});
        assert_eq!(one(&wrapped).key, "incoming/my cat(1).jpg");
    }

    #[test]
    fn test_events_are_recognised() {
        let t = json!({"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"photos"});
        assert_eq!(
            parse(t.to_string().as_bytes()).unwrap(),
            Notification::Test {
                bucket: Some("photos".into())
            }
        );
    }

    #[test]
    fn bad_notifications_say_where() {
        assert!(matches!(parse(b"\xff\x00"), Err(NotificationError::NotJson(_))));
        assert_eq!(parse(b"[1]"), Err(NotificationError::NotAnObject));
        assert_eq!(parse(b"{}"), Err(NotificationError::NoRecords));
        let e = parse(br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}"#);
        assert_eq!(e.unwrap_err().to_string(), "Records[0]: `s3.object.key` is missing");
        let e =
            parse(br#"{"Records":[{"eventName":"x","s3":{"bucket":{"name":"b"},"object":{"key":"k","size":-1}}}]}"#);
        assert_eq!(
            e.unwrap_err().to_string(),
            "Records[0]: `s3.object.size` must be a whole number"
        );
        let e = parse(br#"{"Records":[{"eventName":"x","s3":{"bucket":{"name":"b"},"object":{"key":"%ff"}}}]}"#);
        assert!(e.unwrap_err().to_string().contains("UTF-8"));
    }
}
