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

mod envelope;

/// CloudEvents spec version evoke produces.
pub const SPEC_VERSION: &str = "1.0";

/// Extension carrying the attempt number (1 = first delivery).
pub const EXT_ATTEMPT: &str = "evokeattempt";
/// The content type of a batch's data: a JSON array of structured events.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Extension carrying how many events a batch holds.
pub const EXT_BATCH_SIZE: &str = "evokebatchsize";

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
    /// A CloudEvents mode or format evoke does not read.
    #[error("{0}")]
    Unsupported(String),
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

    /// Makes this event a batch of `items` (structured events, each kept
    /// byte for byte): its data is their JSON array.
    pub fn with_batch(mut self, items: &[Box<serde_json::value::RawValue>]) -> Event {
        self.datacontenttype = Some(BATCH_CONTENT_TYPE.into());
        // Serializing raw JSON cannot fail.
        self.data = Bytes::from(serde_json::to_string(items).unwrap_or_default());
        self.extensions.insert(EXT_BATCH_SIZE.into(), items.len().to_string());
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
        self.encode(self.json_data().ok().flatten())
    }

    /// [`Event::to_json`], but data declared as JSON that does not parse
    /// is an error (`to_json` writes it as a string instead), found by the
    /// same single parse of the data that embeds it.
    pub fn to_json_checked(&self) -> Result<Vec<u8>, serde_json::Error> {
        Ok(self.encode(self.json_data()?))
    }

    /// Writes the envelope with `embedded` (the JSON data found valid, if
    /// any) as its `data` member.
    fn encode(&self, embedded: Option<&[u8]>) -> Vec<u8> {
        if self.extensions.is_empty() {
            return self.to_json_without_extensions(embedded);
        }
        let mut m = self.attribute_refs();
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

    /// [`Event::to_json`] for an event without extensions (most events
    /// queued): the same bytes, written straight out, members in the same
    /// (sorted) order, without a map.
    fn to_json_without_extensions(&self, embedded: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() * 4 / 3 + 256);
        let mut stamp = [0u8; RFC3339_MAX];
        let time = self.time.map(|t| match rfc3339_utc(&t, &mut stamp, Zone::Offset) {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(t.to_rfc3339()),
        });
        let member = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.push(if out.is_empty() { b'{' } else { b',' });
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_json_str(out, value);
        };
        if embedded.is_none() && !self.data.is_empty() {
            match self.text_data() {
                Some(t) => member(&mut out, "data", t),
                None => member(&mut out, "data_base64", &BASE64.encode(&self.data)),
            }
        }
        if let Some(ct) = &self.datacontenttype {
            member(&mut out, "datacontenttype", ct);
        }
        member(&mut out, "id", &self.id);
        member(&mut out, "source", &self.source);
        member(&mut out, "specversion", &self.specversion);
        if let Some(s) = &self.subject {
            member(&mut out, "subject", s);
        }
        if let Some(t) = &time {
            member(&mut out, "time", t);
        }
        member(&mut out, "type", &self.ty);
        if let Some(data) = embedded {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data);
        }
        out.push(b'}');
        out
    }

    /// The data as text, when it is declared text (`text/*`, JSON lines)
    /// and is UTF-8: what structured mode writes as a string.
    fn text_data(&self) -> Option<&str> {
        let declared = self.datacontenttype.as_deref().is_some_and(is_text);
        declared.then(|| std::str::from_utf8(&self.data).ok()).flatten()
    }

    /// The data, trimmed, when it is declared JSON and is valid JSON: what
    /// structured mode embeds as `data`; `None` when it is empty or not
    /// declared JSON, an error when it is declared JSON and does not parse.
    pub fn json_data(&self) -> Result<Option<&[u8]>, serde_json::Error> {
        if self.data.is_empty() || !self.data_is_json() {
            return Ok(None);
        }
        // Parsed as it came (an error's line and column are the data's),
        // embedded without the whitespace around it.
        serde_json::from_slice::<serde::de::IgnoredAny>(&self.data)?;
        Ok(Some(self.data.trim_ascii()))
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

    /// [`Event::to_json`] as a value to embed in other JSON (a dead letter,
    /// a relayed request, a destination's invocation): JSON data byte for
    /// byte, where a [`Value`] would sort its keys and round its numbers.
    pub fn to_raw_json(&self) -> Box<serde_json::value::RawValue> {
        let raw = String::from_utf8(self.to_json())
            .ok()
            .and_then(|j| serde_json::value::RawValue::from_string(j).ok());
        // `to_json` writes valid JSON; the tree is a fallback only, and
        // serializing a `Value` cannot fail.
        raw.unwrap_or_else(|| serde_json::value::to_raw_value(&self.to_value()).expect("a Value serializes"))
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
    /// `datacontenttype`. `None` when there is neither a `ce-specversion`
    /// nor a `ce-id` header (see [`claims_binary`]): the request is not a
    /// binary-mode CloudEvent. One that claims to be and lacks a required
    /// attribute is an error, as in structured mode.
    pub fn from_binary<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        content_type: Option<String>,
        body: Bytes,
    ) -> Result<Option<Event>, EventError> {
        let mut obj = Map::new();
        let mut claimed = false;
        for (name, value) in headers {
            claimed |= claims_binary(name);
            let name = name.to_ascii_lowercase();
            let Some(attr) = name.strip_prefix("ce-") else { continue };
            if matches!(attr, "data" | "data_base64" | "datacontenttype") {
                // Data is the body and its type the content type, never a header.
                continue;
            }
            obj.insert(attr.to_string(), Value::String(percent_decode(value)));
        }
        if !claimed {
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
            .map(|(_, v)| v);
        if let Some(ct) = content_type {
            check_mode(ct)?;
        }
        let event = if content_type.is_some_and(is_structured) {
            Some(Event::from_json(&body)?)
        } else if headers.clone().into_iter().any(|(k, _)| claims_binary(k)) {
            Event::from_binary(headers, content_type.map(str::to_string), body)?
        } else {
            // Neither mode: most requests, answered without allocating.
            None
        };
        Ok(event.map(|mut e| {
            e.time.get_or_insert_with(Utc::now);
            e
        }))
    }

    /// Decodes CloudEvents structured JSON, without building a JSON tree
    /// (checked as [`Event::from_value`] checks a parsed value, except that
    /// JSON data keeps its bytes as they are in the envelope).
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        use envelope::Document;
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        let Document::Object(members) = doc else {
            return Err(EventError::NotAnObject);
        };
        // JSON data as written in the envelope (the member's name written
        // with escapes is not found this way: then encoded again).
        assemble(members, |m| match member_span(bytes, b"data") {
            Some(r) => Bytes::copy_from_slice(&bytes[r]),
            None => Bytes::from(reencoded(bytes, m)),
        })
    }

    /// Decodes a structured-mode JSON object.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let Value::Object(m) = value else {
            return Err(EventError::NotAnObject);
        };
        let members = m
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), envelope::Member::from(v)));
        // JSON data is encoded from the value it came as.
        assemble(members, |_| {
            Bytes::from(serde_json::to_vec(m.get("data").unwrap_or(&Value::Null)).unwrap_or_default())
        })
    }
}

/// An event from the members of a structured-mode envelope, however they
/// were read (the last of duplicates counts, as in a parsed map):
/// attributes checked as CloudEvents says, extensions named and typed as
/// it says. `json_data` gives the bytes of `data` when it is JSON (not a
/// string of a non-JSON type).
fn assemble<'a>(
    members: impl IntoIterator<Item = (Cow<'a, str>, envelope::Member<'a>)>,
    json_data: impl FnOnce(envelope::Member<'a>) -> Bytes,
) -> Result<Event, EventError> {
    use envelope::Member;
    let mut core: [Option<Member>; 9] = Default::default();
    let mut rest: BTreeMap<Cow<str>, Member> = BTreeMap::new();
    for (k, v) in members {
        match CORE.iter().position(|c| *c == k) {
            Some(i) => core[i] = Some(v),
            None => {
                rest.insert(k, v);
            }
        }
    }
    let [
        id,
        source,
        ty,
        specversion,
        subject,
        time,
        datacontenttype,
        data,
        data_base64,
    ] = core;
    let text = |name: &'static str, m: Option<Member>| match m {
        None | Some(Member::Null) => Ok(None),
        Some(Member::Str(s)) => Ok(Some(s.into_owned())),
        Some(_) => Err(EventError::Invalid {
            name: name.into(),
            reason: "must be a string".into(),
        }),
    };
    let required = |name: &'static str, m: Option<Member>| match text(name, m)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(EventError::Missing(name)),
    };
    let id = required("id", id)?;
    let source = required("source", source)?;
    let ty = required("type", ty)?;
    let specversion = text("specversion", specversion)?.unwrap_or_else(|| SPEC_VERSION.into());
    if !specversion.starts_with("1.") {
        return Err(EventError::Invalid {
            name: "specversion".into(),
            reason: format!("`{specversion}` is not supported; use 1.0"),
        });
    }
    let subject = text("subject", subject)?;
    let time = text("time", time)?
        .map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| EventError::Invalid {
                    name: "time".into(),
                    reason: format!("`{t}` is not an RFC 3339 time: {e}"),
                })
        })
        .transpose()?;
    let mut datacontenttype = text("datacontenttype", datacontenttype)?;
    let declared_json = datacontenttype.as_deref().is_some_and(is_json_type);
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EventError::Invalid {
                name: "data".into(),
                reason: "`data` and `data_base64` are mutually exclusive".into(),
            });
        }
        (None, Some(Member::Str(b64))) => {
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
        (Some(Member::Str(s)), None) if !declared_json => Bytes::from(s.into_owned()),
        (Some(m), None) => {
            // JSON data without a content type declares itself JSON.
            if datacontenttype.is_none() {
                datacontenttype = Some("application/json".into());
            }
            json_data(m)
        }
        (None, None) => Bytes::new(),
    };
    let mut extensions = BTreeMap::new();
    for (k, v) in rest {
        if !valid_extension_name(&k) {
            return Err(EventError::Invalid {
                name: k.into_owned(),
                reason: "extension names are lower-case letters and digits".into(),
            });
        }
        let v = match v {
            Member::Str(s) => s.into_owned(),
            Member::Number(n) => n.to_string(),
            Member::Bool(b) => b.to_string(),
            Member::Null => continue,
            Member::Nested => {
                return Err(EventError::Invalid {
                    name: k.into_owned(),
                    reason: "extension values are strings, numbers or booleans".into(),
                });
            }
        };
        extensions.insert(k.into_owned(), v);
    }
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

/// A content type's essence: the media type without parameters, trimmed
/// (its case as it came; compare ignoring ASCII case).
fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Whether `s` starts with `prefix`, ignoring ASCII case.
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether `s` ends with `suffix`, ignoring ASCII case.
fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Whether a content type is CloudEvents' structured mode
/// (`application/cloudevents+json`).
pub fn is_structured(ct: &str) -> bool {
    essence(ct).eq_ignore_ascii_case("application/cloudevents+json")
}

/// Refuses a CloudEvents content type evoke does not read, rather than
/// take the body for opaque data: batched mode
/// (`application/cloudevents-batch+json`) and structured mode in a format
/// other than JSON.
pub fn check_mode(ct: &str) -> Result<(), EventError> {
    let e = essence(ct);
    if !starts_with_ignore_case(e, "application/cloudevents") || is_structured(ct) {
        return Ok(());
    }
    Err(EventError::Unsupported(
        if starts_with_ignore_case(e, "application/cloudevents-batch") {
            format!(
                "batched CloudEvents (`{e}`) are not taken: send each event in a request of its own, in structured or binary mode"
            )
        } else {
            format!(
                "CloudEvents in `{e}` are not read: send structured mode as `application/cloudevents+json`, or use binary mode"
            )
        },
    ))
}

/// Whether a content type denotes JSON.
pub fn is_json_type(ct: &str) -> bool {
    let e = essence(ct);
    e.eq_ignore_ascii_case("application/json")
        || e.eq_ignore_ascii_case("text/json")
        || ends_with_ignore_case(e, "+json")
}

/// CloudEvents extension names: `[a-z0-9]{1,20}` (evoke allows longer).
pub fn valid_extension_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A `data` member [`member_span`] could not find (its name written with
/// escapes), encoded again from what was read.
fn reencoded(json: &[u8], data: envelope::Member) -> Vec<u8> {
    use envelope::Member;
    let value = match data {
        Member::Null => Value::Null,
        Member::Bool(b) => Value::Bool(b),
        Member::Number(n) => Value::Number(n),
        Member::Str(s) => Value::String(s.into_owned()),
        Member::Nested => serde_json::from_slice::<Map<String, Value>>(json)
            .ok()
            .and_then(|mut m| m.remove("data"))
            .unwrap_or_default(),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The HTTP headers that mark a request as a binary-mode CloudEvent:
/// `ce-specversion` (how the HTTP binding and the SDKs tell binary mode) and
/// `ce-id`. Lower case, as header maps keep names.
pub const BINARY_MARKERS: [&str; 2] = ["ce-specversion", "ce-id"];

/// Writes `s` as a JSON string, byte for byte as `serde_json` writes it.
/// Most strings (a text body, ids, times) need no escaping: they are
/// copied whole, instead of being escaped one byte at a time.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // A fold, not `any`: no early exit, so the check runs on whole words.
    let escapes = s
        .bytes()
        .fold(false, |found, b| found | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escapes {
        // Writing a string to a vector cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// The longest time [`rfc3339_utc`] writes.
const RFC3339_MAX: usize = 35;

/// How [`rfc3339_utc`] writes the zone of a UTC time.
#[derive(Clone, Copy)]
enum Zone {
    /// `+00:00`, as [`DateTime::to_rfc3339`] does (an event's `time`).
    Offset,
    /// `Z`, as chrono's serde does (the times of evoke's records).
    Z,
}

impl Zone {
    fn text(self) -> &'static [u8] {
        match self {
            Zone::Offset => b"+00:00",
            Zone::Z => b"Z",
        }
    }
}

/// Writes `t` into `buf` as chrono does, byte for byte (with `zone`'s
/// suffix), without the formatting machinery (every queued event has a
/// time, every outcome record several), and returns the text written;
/// `None` for what it leaves to chrono: years outside 0–9999 and leap
/// seconds.
fn rfc3339_utc<'b>(t: &DateTime<Utc>, buf: &'b mut [u8; RFC3339_MAX], zone: Zone) -> Option<&'b str> {
    use chrono::{Datelike, Timelike};
    fn digits(buf: &mut [u8], at: usize, mut v: u32, width: usize) {
        for b in buf[at..at + width].iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    buf[..19].copy_from_slice(b"0000-00-00T00:00:00");
    digits(buf, 0, year as u32, 4);
    digits(buf, 5, t.month(), 2);
    digits(buf, 8, t.day(), 2);
    digits(buf, 11, t.hour(), 2);
    digits(buf, 14, t.minute(), 2);
    digits(buf, 17, t.second(), 2);
    // chrono's `SecondsFormat::AutoSi`: as few of 0, 3, 6 or 9 digits as
    // show the time exactly.
    let (fraction, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut len = 19;
    if width > 0 {
        buf[len] = b'.';
        digits(buf, len + 1, fraction, width);
        len += 1 + width;
    }
    let zone = zone.text();
    buf[len..len + zone.len()].copy_from_slice(zone);
    std::str::from_utf8(&buf[..len + zone.len()]).ok()
}

/// Serializes a UTC time exactly as chrono's `Serialize` does
/// (`2026-12-07T09:55:00.123Z`), without its formatting machinery: for
/// `#[serde(serialize_with)]` on the times of records written per event.
pub fn serialize_utc<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; RFC3339_MAX];
    match rfc3339_utc(t, &mut buf, Zone::Z) {
        Some(text) => s.serialize_str(text),
        None => serde::Serialize::serialize(t, s),
    }
}

/// [`serialize_utc`] for an optional time (skip `None` with
/// `skip_serializing_if`).
pub fn serialize_utc_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_utc(t, s),
        None => s.serialize_none(),
    }
}

/// Whether an HTTP header is one of [`BINARY_MARKERS`].
pub fn claims_binary(header_name: &str) -> bool {
    BINARY_MARKERS.iter().any(|m| header_name.eq_ignore_ascii_case(m))
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

/// Whether a content type is text that travels as a JSON string.
fn is_text(ct: &str) -> bool {
    let e = essence(ct);
    e.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("text/"))
        || [
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
            "application/x-jsonlines",
        ]
        .iter()
        .any(|t| e.eq_ignore_ascii_case(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_modes_not_read_are_refused_not_taken_for_data() {
        for ct in [
            "application/cloudevents-batch+json",
            "Application/CloudEvents-Batch+JSON; charset=utf-8",
        ] {
            let e = Event::from_http([("content-type", ct)], Bytes::from_static(b"[]")).unwrap_err();
            assert!(e.to_string().contains("in a request of its own"), "{ct}: {e}");
        }
        let e = Event::from_http([("Content-Type", "application/cloudevents+avro")], Bytes::new()).unwrap_err();
        assert!(
            e.to_string().contains("`application/cloudevents+avro` are not read"),
            "{e}"
        );
        for ct in [
            "application/cloudevents+json",
            "application/json",
            "text/plain",
            "application/cloudevent",
            "ü",
        ] {
            assert!(check_mode(ct).is_ok(), "{ct}");
        }
    }

    #[test]
    fn json_strings_are_written_as_serde_json_writes_them() {
        let long = "x".repeat(300);
        for s in [
            "",
            "plain text",
            long.as_str(),
            "quote \" inside",
            "back\\slash",
            "new\nline\ttab\r",
            "\u{0}\u{1f} controls",
            "\u{7f} del",
            "é ünïcödé 日本 🎉",
            "</script>",
        ] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        use chrono::TimeZone;
        let base = Utc.with_ymd_and_hms(2026, 12, 7, 6, 51, 7).unwrap();
        let mut times = vec![
            base,
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
        ];
        for nanos in [
            1,
            9,
            10,
            999,
            1_000,
            120_000,
            999_999,
            1_000_000,
            5_000_000,
            123_456_789,
            999_999_999,
        ] {
            times.push(base + chrono::Duration::nanoseconds(nanos));
        }
        // What it leaves to chrono: a leap second, years past 9999 and before 0.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        times.push(leap);
        times.push(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap());
        #[derive(serde::Serialize)]
        struct Times {
            #[serde(serialize_with = "serialize_utc")]
            at: DateTime<Utc>,
            #[serde(serialize_with = "serialize_utc_opt")]
            maybe: Option<DateTime<Utc>>,
            #[serde(serialize_with = "serialize_utc_opt")]
            none: Option<DateTime<Utc>>,
        }
        #[derive(serde::Serialize)]
        struct ChronoTimes {
            at: DateTime<Utc>,
            maybe: Option<DateTime<Utc>>,
            none: Option<DateTime<Utc>>,
        }
        for t in times {
            let mut e = Event::new("1", "/s", "t");
            e.time = Some(t);
            let v: Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(v["time"], t.to_rfc3339(), "{t:?}");
            let ours = Times {
                at: t,
                maybe: Some(t),
                none: None,
            };
            let chrono = ChronoTimes {
                at: t,
                maybe: Some(t),
                none: None,
            };
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&chrono).unwrap(),
                "{t:?}"
            );
        }
        let mut buf = [0u8; RFC3339_MAX];
        for zone in [Zone::Offset, Zone::Z] {
            assert_eq!(rfc3339_utc(&leap, &mut buf, zone), None);
            assert_eq!(
                rfc3339_utc(&Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(), &mut buf, zone),
                None
            );
        }
    }

    /// How `from_json` read envelopes before it did without a JSON tree:
    /// the reference it must agree with.
    fn from_json_through_a_tree(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        let declared_json = value
            .get("datacontenttype")
            .and_then(Value::as_str)
            .is_some_and(is_json_type);
        let mut event = Event::from_value(value)?;
        if let Some(raw) = member_span(bytes, b"data").map(|r| &bytes[r])
            && (declared_json || raw.first() != Some(&b'"'))
        {
            event.data = Bytes::copy_from_slice(raw);
        }
        Ok(event)
    }

    #[test]
    fn envelopes_without_extensions_are_written_as_through_the_map() {
        let datas: [(Option<&str>, &[u8]); 7] = [
            (None, b""),
            (Some("text/plain"), "caf\u{e9} \"quoted\" \n\u{1}".as_bytes()),
            (Some("application/json"), br#" {"b":1,"a":[1.0]} "#),
            (Some("application/json"), b"{not json"),
            (Some("application/octet-stream"), &[0, 159, 146, 150]),
            (None, b"bytes without a type"),
            (Some("text/plain"), &[0xff, 0xfe]),
        ];
        for (ct, data) in datas {
            let mut e =
                Event::new("id-1", "/s\\x", "t.y").with_data(ct.map(String::from), Bytes::copy_from_slice(data));
            e.subject = Some("a/b".into());
            let fast = e.to_json();
            e.extensions.insert("zz".into(), "x".into());
            let mut through_map = e.to_json();
            // The same but for the extension, last in sorted order before
            // embedded JSON data.
            let ext = br#","zz":"x""#;
            let at = through_map
                .windows(ext.len())
                .position(|w| w == ext)
                .expect("the extension");
            through_map.drain(at..at + ext.len());
            assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&through_map));
            assert_eq!(Event::from_json(&fast), Event::from_json(&through_map), "{ct:?}");
        }
    }

    #[test]
    fn envelopes_read_without_a_tree_as_through_one() {
        let base = r#""id":"1","source":"/s","type":"t""#;
        let members = [
            "",
            r#","data":"text""#,
            r#","data":"text","datacontenttype":"text/plain""#,
            r#","data":"a JSON string","datacontenttype":"application/json""#,
            r#","data":{"b":1,"a":[1.0, 2, {"x":null}]}"#,
            r#","data": [ 1, 2 ] ,"datacontenttype":"application/cloudevents-batch+json""#,
            r#","data":null"#,
            r#","data":true,"datacontenttype":"text/plain""#,
            r#","data":12345678901234567890123"#,
            r#","data_base64":"aGVsbG8=","datacontenttype":"application/octet-stream""#,
            r#","data_base64":"not base64!""#,
            r#","data_base64":7"#,
            r#","data":"x","data_base64":"eA==""#,
            r#","data":null,"data_base64":null"#,
            r#","d\u0061ta":{"z":1}"#,
            r#","d\u0061ta":"escaped name""#,
            r#","data":1,"d\u0061ta":2"#,
            r#","subject":"a\"b\\c\u00e9","time":"2026-12-05T06:00:00.5+01:00""#,
            r#","time":"yesterday""#,
            r#","time":5"#,
            r#","subject":null,"time":null,"datacontenttype":null"#,
            r#","specversion":"0.3""#,
            r#","specversion":"1.0","specversion":"2.0""#,
            r#","specversion":"2.0","specversion":"1.0""#,
            r#","traceparent":"00-ab","evokeattempt":3,"flag":true,"big":1.5e300,"neg":-7,"gone":null"#,
            r#","Bad":"x""#,
            r#","zz":{"nested":1}"#,
            r#","aa":[1],"Bad-Name":"x""#,
            r#","ext":"\ud83d\ude00 \n""#,
            r#","id":"""#,
            r#","id":7"#,
            r#","id":"2","id":"3""#,
            r#","type":null"#,
        ];
        let mut docs: Vec<String> = members.iter().map(|m| format!("{{{base}{m}}}")).collect();
        docs.extend(
            [
                "[1]",
                "\"s\"",
                "null",
                "1",
                "{nope",
                "{}",
                r#"{"source":"s","type":"t"}"#,
                r#" { "id" : "1" , "source" : "/s" , "type" : "t" , "data" : { } } "#,
                r#"{"id":"1","source":"/s","type":"t"} trailing"#,
                r#"{"id":"1","source":"/s","type":"t","data":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}"#,
                r#"{"id":"1","source":"/s","type":"t","data":"unterminated}"#,
            ]
            .map(String::from),
        );
        for doc in &docs {
            let read = Event::from_json(doc.as_bytes());
            let reference = from_json_through_a_tree(doc.as_bytes());
            match (&read, &reference) {
                (Err(EventError::Json(_)), Err(EventError::Json(_))) => {}
                _ => assert_eq!(read, reference, "{doc}"),
            }
        }
        // Data nested deeper than a parser's recursion limit (128) was
        // refused through a tree, though the API takes it (it checks JSON
        // without one): it is data like any other now.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let doc = format!(r#"{{{base},"data":{deep}}}"#);
        assert!(from_json_through_a_tree(doc.as_bytes()).is_err());
        assert_eq!(Event::from_json(doc.as_bytes()).unwrap().data, deep.as_bytes());
    }

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
    fn checked_encoding_refuses_what_to_json_keeps_as_bytes_and_is_otherwise_the_same() {
        let json = |data: &'static [u8]| {
            Event::new("1", "/test", "t").with_data(Some("application/json".into()), Bytes::from_static(data))
        };
        let err = json(b"  {oops").to_json_checked().unwrap_err();
        // Where the data's own parse says (leading spaces counted).
        assert_eq!((err.line(), err.column()), (1, 4), "{err}");
        assert!(json(b" \t").to_json_checked().is_err());
        let mut with_extension = json(b" {\"b\":1,\"a\":[2.50]} ");
        with_extension.extensions.insert("ext".into(), "x".into());
        for e in [
            json(b" {\"b\":1,\"a\":[2.50]} "),
            json(b""),
            with_extension,
            Event::new("1", "/test", "t").with_data(Some("text/plain".into()), Bytes::from_static(b"{oops")),
        ] {
            assert_eq!(e.to_json_checked().unwrap(), e.to_json(), "{e:?}");
        }
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
        // `ce-specversion` claims binary mode too: without an id it is an
        // error, not a plain request.
        let claimed = [("ce-specversion", "1.0"), ("ce-type", "t"), ("ce-source", "/s")];
        let err = Event::from_binary(claimed, None, Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("`id`"), "{err}");
        let err = Event::from_http(claimed, Bytes::from_static(b"x")).unwrap_err();
        assert!(err.to_string().contains("`id`"), "{err}");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "%FF", "not UTF-8: kept");
    }
}
