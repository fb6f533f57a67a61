//! The `Event` envelope (CloudEvents 1.0) and its structured JSON encoding.
//!
//! evoke keeps one wire format everywhere: CloudEvents *structured* JSON
//! (`application/cloudevents+json`). Data whose content type is JSON and
//! which parses as JSON is embedded as `data` (so it comes back as the same
//! JSON value, not necessarily the same bytes: whitespace and key order may
//! change); text is a `data` string; anything else travels as
//! `data_base64`, byte for byte.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// CloudEvents spec version evoke produces.
pub const SPEC_VERSION: &str = "1.0";

/// Extension carrying the attempt number (1 = first delivery).
pub const EXT_ATTEMPT: &str = "evokeattempt";

/// One event, as a function receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub specversion: String,
    pub subject: Option<String>,
    pub time: Option<DateTime<Utc>>,
    pub datacontenttype: Option<String>,
    pub data: Bytes,
    /// Lower-case extension attributes (`evokeattempt`, `traceparent`, ...).
    pub extensions: BTreeMap<String, String>,
}

/// Why bytes could not be read as an event.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("event is not valid JSON: {0}")]
    Json(String),
    #[error("event must be a JSON object")]
    NotAnObject,
    #[error("event attribute `{0}` is required")]
    Missing(&'static str),
    #[error("event attribute `{name}` is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

const CORE: [&str; 9] = [
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "data_base64",
];

impl Event {
    /// A new event with a fresh time and no extensions.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Event {
        Event {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            specversion: SPEC_VERSION.to_string(),
            subject: None,
            time: Some(Utc::now()),
            datacontenttype: None,
            data: Bytes::new(),
            extensions: BTreeMap::new(),
        }
    }

    /// Sets data and its content type.
    pub fn with_data(mut self, content_type: Option<String>, data: Bytes) -> Event {
        self.datacontenttype = content_type;
        self.data = data;
        self
    }

    /// The attempt number carried in `evokeattempt` (1 when absent).
    pub fn attempt(&self) -> u32 {
        self.extensions
            .get(EXT_ATTEMPT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// Whether the data is declared as JSON (`application/json`, `*+json`,
    /// `text/json`).
    pub fn data_is_json(&self) -> bool {
        self.datacontenttype.as_deref().is_some_and(is_json_type)
    }

    /// Encodes the event as CloudEvents structured JSON: the same bytes as
    /// [`Event::to_value`] serialized, except that JSON data is written as
    /// it came, byte for byte (key order, numbers, spacing inside it),
    /// never through a `Value`, which would sort keys and round large
    /// numbers. Written from borrowed attributes: no `Value` is built.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = self.attribute_refs();
        let embedded = self.embedded_json();
        if embedded.is_some() {
            m.remove("data");
        } else if !self.data.is_empty() {
            match self.text_data() {
                Some(t) => m.insert("data", Cow::Borrowed(t)),
                None => m.insert("data_base64", Cow::Owned(BASE64.encode(&self.data))),
            };
        }
        // Serializing a map of strings cannot fail.
        let mut out = serde_json::to_vec(&m).unwrap_or_default();
        if let Some(data) = embedded {
            out.pop(); // the closing `}`
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"data\":");
            out.extend_from_slice(data);
            out.push(b'}');
        }
        out
    }

    /// The data as text, when it is declared text (`text/*`, JSON lines)
    /// and is UTF-8: what structured mode writes as a string.
    fn text_data(&self) -> Option<&str> {
        let declared = self.datacontenttype.as_deref().is_some_and(is_text);
        declared.then(|| std::str::from_utf8(&self.data).ok()).flatten()
    }

    /// The data, trimmed, when it is declared JSON and is valid JSON: what
    /// structured mode embeds as `data`.
    fn embedded_json(&self) -> Option<&[u8]> {
        if self.data.is_empty() || !self.data_is_json() {
            return None;
        }
        let data = self.data.trim_ascii();
        serde_json::from_slice::<serde::de::IgnoredAny>(data).ok()?;
        Some(data)
    }

    /// The context attributes and extensions, without data, borrowed (an
    /// extension named as an attribute wins, as it always has).
    fn attribute_refs(&self) -> BTreeMap<&str, Cow<'_, str>> {
        let mut m = BTreeMap::new();
        m.insert("specversion", Cow::Borrowed(self.specversion.as_str()));
        m.insert("id", Cow::Borrowed(self.id.as_str()));
        m.insert("source", Cow::Borrowed(self.source.as_str()));
        m.insert("type", Cow::Borrowed(self.ty.as_str()));
        if let Some(s) = &self.subject {
            m.insert("subject", Cow::Borrowed(s.as_str()));
        }
        if let Some(t) = &self.time {
            m.insert("time", Cow::Owned(t.to_rfc3339()));
        }
        if let Some(ct) = &self.datacontenttype {
            m.insert("datacontenttype", Cow::Borrowed(ct.as_str()));
        }
        for (k, v) in &self.extensions {
            m.insert(k.as_str(), Cow::Borrowed(v.as_str()));
        }
        m
    }

    /// The context attributes and extensions, without data.
    fn attributes(&self) -> Map<String, Value> {
        self.attribute_refs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.into_owned())))
            .collect()
    }

    /// The event as structured-mode JSON: `data` embedded when it is JSON,
    /// a string when it is text (`text/*`, JSON lines), else `data_base64`.
    pub fn to_value(&self) -> Value {
        let mut m = self.attributes();
        if !self.data.is_empty() {
            let embedded = self
                .data_is_json()
                .then(|| serde_json::from_slice::<Value>(&self.data).ok())
                .flatten();
            let text = self.text_data();
            match (embedded, text) {
                (Some(v), _) => {
                    m.insert("data".into(), v);
                }
                (None, Some(t)) => {
                    m.insert("data".into(), Value::String(t.to_string()));
                }
                (None, None) => {
                    m.insert("data_base64".into(), Value::String(BASE64.encode(&self.data)));
                }
            }
        }
        Value::Object(m)
    }

    /// Decodes a CloudEvent in HTTP binary mode: attributes in `ce-*`
    /// headers (names matched case-insensitively, values percent-decoded as
    /// the HTTP binding says), the body as data, `content-type` as
    /// `datacontenttype`. `None` when there is no `ce-id` header: the
    /// request is not a binary-mode CloudEvent.
    pub fn from_binary<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        content_type: Option<String>,
        body: Bytes,
    ) -> Result<Option<Event>, EventError> {
        let mut obj = Map::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            let Some(attr) = name.strip_prefix("ce-") else { continue };
            if matches!(attr, "data" | "data_base64" | "datacontenttype") {
                // Data is the body and its type the content type, never a header.
                continue;
            }
            obj.insert(attr.to_string(), Value::String(percent_decode(value)));
        }
        if !obj.contains_key("id") {
            return Ok(None);
        }
        let mut event = Event::from_value(Value::Object(obj))?;
        event.datacontenttype = content_type;
        event.data = body;
        Ok(Some(event))
    }

    /// Reads a CloudEvent from an HTTP request, in structured mode
    /// (`application/cloudevents+json`) or binary mode (`ce-*` headers);
    /// `None` when the request is not a CloudEvent. `headers` are (name,
    /// value) pairs. `time` is optional in CloudEvents: an event without one
    /// gets the time it was received.
    pub fn from_http<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
        body: Bytes,
    ) -> Result<Option<Event>, EventError> {
        let content_type = headers
            .clone()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.to_string());
        let essence = content_type
            .as_deref()
            .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let event = if essence.as_deref() == Some("application/cloudevents+json") {
            Some(Event::from_json(&body)?)
        } else {
            Event::from_binary(headers, content_type, body)?
        };
        Ok(event.map(|mut e| {
            e.time.get_or_insert_with(Utc::now);
            e
        }))
    }

    /// Decodes CloudEvents structured JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        let declared_json = value
            .get("datacontenttype")
            .and_then(Value::as_str)
            .is_some_and(is_json_type);
        let mut event = Event::from_value(value)?;
        // JSON data keeps its bytes as they are in the envelope (the value
        // went through a `Value` above only to be checked).
        if let Some(raw) = member_span(bytes, b"data").map(|r| &bytes[r])
            && (declared_json || raw.first() != Some(&b'"'))
        {
            event.data = Bytes::copy_from_slice(raw);
        }
        Ok(event)
    }

    /// Decodes a structured-mode JSON object.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let Value::Object(mut m) = value else {
            return Err(EventError::NotAnObject);
        };
        let id = required(&mut m, "id")?;
        let source = required(&mut m, "source")?;
        let ty = required(&mut m, "type")?;
        let specversion = optional(&mut m, "specversion")?.unwrap_or_else(|| SPEC_VERSION.into());
        if !specversion.starts_with("1.") {
            return Err(EventError::Invalid {
                name: "specversion".into(),
                reason: format!("`{specversion}` is not supported; use 1.0"),
            });
        }
        let subject = optional(&mut m, "subject")?;
        let time = optional(&mut m, "time")?
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| EventError::Invalid {
                        name: "time".into(),
                        reason: format!("`{t}` is not an RFC 3339 time: {e}"),
                    })
            })
            .transpose()?;
        let mut datacontenttype = optional(&mut m, "datacontenttype")?;
        let data = take_data(&mut m, &mut datacontenttype)?;
        let extensions = take_extensions(m)?;
        Ok(Event {
            id,
            source,
            ty,
            specversion,
            subject,
            time,
            datacontenttype,
            data,
            extensions,
        })
    }
}

/// Where the value of top-level member `key` is in a JSON object (the last
/// one, as a parser keeps the last of duplicate keys), trimmed. For valid
/// JSON; a key written with escapes is not recognised.
fn member_span(json: &[u8], key: &[u8]) -> Option<std::ops::Range<usize>> {
    let ws = |i: &mut usize| {
        while json.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    // The index after the string starting at `i` (a `"`).
    let string_end = |mut i: usize| -> Option<usize> {
        i += 1;
        loop {
            match json.get(i)? {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
    };
    // The index after the value starting at `i`.
    let value_end = |mut i: usize| -> Option<usize> {
        let mut depth = 0usize;
        loop {
            match json.get(i)? {
                b'"' => i = string_end(i)?,
                b'{' | b'[' => {
                    depth += 1;
                    i += 1;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    i += 1;
                }
                b',' | b'}' | b']' if depth == 0 => return Some(i),
                c if depth == 0 && c.is_ascii_whitespace() => return Some(i),
                _ => i += 1,
            }
            if depth == 0 && json.get(i - 1).is_some_and(|c| b"}]\"".contains(c)) {
                return Some(i);
            }
        }
    };
    let mut i = 0;
    ws(&mut i);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found = None;
    loop {
        ws(&mut i);
        match json.get(i)? {
            b'}' => return found,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(i)?;
        let name = &json[i + 1..key_end - 1];
        i = key_end;
        ws(&mut i);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        ws(&mut i);
        let start = i;
        i = value_end(i)?;
        if name == key {
            found = Some(start..i);
        }
    }
}

/// Whether a content type denotes JSON.
pub fn is_json_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// CloudEvents extension names: `[a-z0-9]{1,20}` (evoke allows longer).
pub fn valid_extension_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `data` or `data_base64` as bytes; JSON data without a content type
/// declares itself `application/json`.
fn take_data(m: &mut Map<String, Value>, datacontenttype: &mut Option<String>) -> Result<Bytes, EventError> {
    let data = match (m.remove("data"), m.remove("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(EventError::Invalid {
                name: "data".into(),
                reason: "`data` and `data_base64` are mutually exclusive".into(),
            });
        }
        (None, Some(Value::String(b64))) => {
            Bytes::from(BASE64.decode(b64.as_bytes()).map_err(|e| EventError::Invalid {
                name: "data_base64".into(),
                reason: e.to_string(),
            })?)
        }
        (None, Some(_)) => {
            return Err(EventError::Invalid {
                name: "data_base64".into(),
                reason: "must be a string".into(),
            });
        }
        (Some(Value::String(s)), None) if !datacontenttype.as_deref().is_some_and(is_json_type) => {
            Bytes::from(s.into_bytes())
        }
        (Some(v), None) => {
            if datacontenttype.is_none() {
                *datacontenttype = Some("application/json".into());
            }
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        (None, None) => Bytes::new(),
    };
    Ok(data)
}

/// Every attribute left once the core ones are taken: the extensions, with
/// CloudEvents' naming and value rules.
fn take_extensions(m: Map<String, Value>) -> Result<BTreeMap<String, String>, EventError> {
    let mut extensions = BTreeMap::new();
    for (k, v) in m {
        if CORE.contains(&k.as_str()) {
            continue;
        }
        if !valid_extension_name(&k) {
            return Err(EventError::Invalid {
                name: k,
                reason: "extension names are lower-case letters and digits".into(),
            });
        }
        let v = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(EventError::Invalid {
                    name: k,
                    reason: "extension values are strings, numbers or booleans".into(),
                });
            }
        };
        extensions.insert(k, v);
    }
    Ok(extensions)
}

/// Decodes `%XX` escapes; a value that does not decode to UTF-8 is kept as
/// it came.
fn percent_decode(value: &str) -> String {
    if !value.contains('%') {
        return value.to_string();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_string())
}

fn required(m: &mut Map<String, Value>, name: &'static str) -> Result<String, EventError> {
    match optional(m, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(EventError::Missing(name)),
    }
}

fn optional(m: &mut Map<String, Value>, name: &'static str) -> Result<Option<String>, EventError> {
    match m.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EventError::Invalid {
            name: name.into(),
            reason: "must be a string".into(),
        }),
    }
}

/// Whether a content type is text that travels as a JSON string.
fn is_text(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_keeps_its_bytes_through_the_envelope() {
        let samples: [&[u8]; 7] = [
            br#"{"zebra":1,"apple":{"y":[3,2,1],"b":"}\"{"},"n":12345678901234567890123,"f":1e2,"g":1.50}"#,
            br#"[ 1, 2 , {"b":1, "a":2} ]"#,
            br#""a JSON string \" with } and {""#,
            b"12345678901234567890.000",
            b"null",
            br#"{"data":{"data":1},"x":"data"}"#,
            b"{}",
        ];
        for data in samples {
            let mut e = Event::new("1", "/t", "t");
            e.datacontenttype = Some("application/json".into());
            e.data = Bytes::copy_from_slice(data);
            e.extensions.insert("zz".into(), "last".into());
            let json = e.to_json();
            let back =
                Event::from_json(&json).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&json)));
            assert_eq!(&back.data[..], data, "{}", String::from_utf8_lossy(&json));
            assert_eq!(back.extensions["zz"], "last");
            assert_eq!(back, Event::from_json(&back.to_json()).unwrap());
        }
    }

    #[test]
    fn member_spans_are_found_after_nested_strings_and_duplicates() {
        let doc = br#" { "a" : "x\"data\":1" , "data" : [ {"data":2} ] , "b":true, "data":  {"k":"v"}  } "#;
        assert_eq!(&doc[member_span(doc, b"data").unwrap()], br#"{"k":"v"}"#);
        assert_eq!(&doc[member_span(doc, b"b").unwrap()], b"true");
        assert_eq!(member_span(doc, b"c"), None);
        assert_eq!(member_span(b"[1]", b"data"), None);
        // Structured events from elsewhere: the data as written there.
        let e = Event::from_json(br#"{"id":"1","source":"/s","type":"t","data":{"b":1,"a":[1.0, 2]}}"#).unwrap();
        assert_eq!(&e.data[..], br#"{"b":1,"a":[1.0, 2]}"#);
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        // A string for a non-JSON type is its text; for a JSON type, JSON.
        let e = Event::from_json(
            br#"{"id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi \"x\""}"#,
        )
        .unwrap();
        assert_eq!(&e.data[..], br#"hi "x""#);
        let e = Event::from_json(
            br#"{"id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":"hi"}"#,
        )
        .unwrap();
        assert_eq!(&e.data[..], br#""hi""#);
    }

    #[test]
    fn json_data_is_embedded_and_round_trips() {
        let e =
            Event::new("1", "/test", "t").with_data(Some("application/json".into()), Bytes::from_static(b"{\"a\":1}"));
        let v = e.to_value();
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn binary_data_travels_as_base64() {
        let e =
            Event::new("1", "/test", "t").with_data(Some("image/png".into()), Bytes::from_static(&[0, 159, 146, 150]));
        let v = e.to_value();
        assert!(v.get("data").is_none());
        assert_eq!(Event::from_json(&e.to_json()).unwrap().data, e.data);
    }

    #[test]
    fn text_data_travels_as_a_string() {
        let e = Event::new("1", "/test", "t").with_data(Some("text/plain".into()), Bytes::from_static(b"hello"));
        assert_eq!(e.to_value()["data"], "hello");
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn the_envelope_is_the_structured_value_written_out() {
        // Every shape of data but embedded JSON (kept byte-exact instead):
        // the bytes to_json writes are those of to_value serialized.
        let mut with_extensions = Event::new("1", "/s", "t").with_data(Some("text/plain".into()), Bytes::from("a\"b"));
        with_extensions.subject = Some("s".into());
        with_extensions.extensions.insert("zz".into(), "last".into());
        with_extensions.extensions.insert("aa".into(), "first".into());
        let events = [
            Event::new("1", "/s", "t"),
            with_extensions,
            Event::new("2", "/s", "t").with_data(Some("image/png".into()), Bytes::from_static(&[0, 159])),
            Event::new("3", "/s", "t").with_data(Some("application/json".into()), Bytes::from_static(b"{oops")),
            Event::new("4", "/s", "t").with_data(None, Bytes::from_static(b"raw")),
        ];
        for e in events {
            assert_eq!(e.to_json(), serde_json::to_vec(&e.to_value()).unwrap(), "{e:?}");
        }
    }

    #[test]
    fn invalid_json_declared_as_json_is_kept_as_bytes() {
        let e = Event::new("1", "/test", "t").with_data(Some("application/json".into()), Bytes::from_static(b"{oops"));
        assert_eq!(Event::from_json(&e.to_json()).unwrap().data, e.data);
    }

    #[test]
    fn extensions_round_trip_and_attempt_defaults_to_one() {
        let mut e = Event::new("1", "/s", "t");
        assert_eq!(e.attempt(), 1);
        e.extensions.insert(EXT_ATTEMPT.into(), "3".into());
        let back = Event::from_json(&e.to_json()).unwrap();
        assert_eq!(back.attempt(), 3);
    }

    #[test]
    fn malformed_events_name_the_problem() {
        assert_eq!(Event::from_json(b"[1]"), Err(EventError::NotAnObject));
        assert_eq!(
            Event::from_json(br#"{"source":"s","type":"t"}"#),
            Err(EventError::Missing("id"))
        );
        let err = Event::from_json(br#"{"id":"1","source":"s","type":"t","time":"yesterday"}"#).unwrap_err();
        assert!(err.to_string().contains("time"), "{err}");
        let err = Event::from_json(br#"{"id":"1","source":"s","type":"t","Bad-Name":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("Bad-Name"), "{err}");
        assert!(matches!(Event::from_json(b"{nope"), Err(EventError::Json(_))));
    }

    #[test]
    fn binary_mode_reads_ce_headers_and_percent_decodes() {
        let headers = [
            ("CE-ID", "b-1"),
            ("ce-source", "/sensors/7"),
            ("ce-type", "reading.taken"),
            ("ce-specversion", "1.0"),
            ("ce-subject", "caf%C3%A9 100%25"),
            ("ce-traceparent", "00-abc-01"),
            ("ce-datacontenttype", "text/evil"),
            ("content-length", "2"),
        ];
        let e = Event::from_binary(headers, Some("application/json".into()), Bytes::from_static(b"{}"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
            ("b-1", "/sensors/7", "reading.taken")
        );
        assert_eq!(e.subject.as_deref(), Some("café 100%"));
        assert_eq!(e.extensions["traceparent"], "00-abc-01");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(&e.data[..], b"{}");
        assert_eq!(Event::from_binary([("ce-source", "/x")], None, Bytes::new()), Ok(None));
        assert!(Event::from_binary([("ce-id", "1"), ("ce-type", "t")], None, Bytes::new()).is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "%FF", "not UTF-8: kept");
    }
}
