//! Every stream, bucket, subject and header name evoke uses, in one place.

pub const STREAM_EVENTS: &str = "EVOKE_EVENTS";
pub const STREAM_DLQ: &str = "EVOKE_DLQ";
pub const STREAM_LOGS: &str = "EVOKE_LOGS";
pub const KV_FUNCTIONS: &str = "EVOKE_FUNCTIONS";
pub const KV_INVOCATIONS: &str = "EVOKE_INVOCATIONS";
pub const KV_TRIGGERS: &str = "EVOKE_TRIGGERS";
/// Small durable state of sources: cron cursors, last event per trigger.
pub const KV_STATE: &str = "EVOKE_STATE";
pub const OBJ_CODE: &str = "EVOKE_CODE";
/// Node heartbeats, key = node name.
pub const KV_NODES: &str = "EVOKE_NODES";
/// Leases of singleton sources, key = what is held.
pub const KV_LEASES: &str = "EVOKE_LEASES";
/// Object stores (`[stores.NAME]`), key = store name.
pub const KV_STORES: &str = "EVOKE_STORES";
/// Broker connections (`[connections.NAME]`), key = connection name.
pub const KV_CONNECTIONS: &str = "EVOKE_CONNECTIONS";
/// Objects written by functions, key = hash of store/bucket/key, value =
/// the chain depth of the invocation that wrote it (the recursion guard).
pub const KV_CHAINS: &str = "EVOKE_CHAINS";

pub const SUBJECT_INVOKE: &str = "evoke.invoke";
pub const SUBJECT_DLQ: &str = "evoke.dlq";
pub const SUBJECT_LOGS: &str = "evoke.logs";

/// Header carrying the invocation id on events queued by an evoke from
/// before per-invocation subjects (the id is now the subject's last token:
/// [`invocation_in`]).
pub const HDR_INVOCATION_ID: &str = "Evoke-Invocation-Id";
/// Header set on events put back by `dlq redrive`.
pub const HDR_REDRIVEN: &str = "Evoke-Redriven";

/// Where the async event of invocation `id` of `function` waits: one
/// subject per invocation, so a queued invocation is found by its id alone
/// (`GET /v1/invocations/{id}` before any record exists).
pub fn invoke_subject(function: &str, id: &str) -> String {
    format!("{SUBJECT_INVOKE}.{function}.{id}")
}

/// The invocation id in a queued event's subject (`evoke.invoke.<f>.<id>`);
/// `None` for any other subject (a legacy `evoke.invoke.<f>`).
pub fn invocation_in(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(SUBJECT_INVOKE)?.strip_prefix('.')?;
    let (function, id) = rest.split_once('.')?;
    (!function.is_empty() && !id.is_empty() && !id.contains('.')).then_some(id)
}

/// Every queued event of `function`.
pub fn invoke_filter(function: &str) -> String {
    format!("{SUBJECT_INVOKE}.{function}.*")
}

/// Where evoke before per-invocation subjects queued `function`'s events;
/// its consumers still take them, so an upgrade strands none.
pub fn legacy_invoke_subject(function: &str) -> String {
    format!("{SUBJECT_INVOKE}.{function}")
}

/// The queued event of invocation `id`, whatever its function.
pub fn invocation_filter(id: &str) -> String {
    format!("{SUBJECT_INVOKE}.*.{id}")
}

/// Where one dead letter of `function` is kept.
pub fn dlq_subject(function: &str, invocation_id: &str) -> String {
    format!("{SUBJECT_DLQ}.{function}.{invocation_id}")
}

/// All dead letters of `function`.
pub fn dlq_filter(function: &str) -> String {
    format!("{SUBJECT_DLQ}.{function}.*")
}

/// The KV subject of an invocation's record in EVOKE_INVOCATIONS (records
/// are written with plain publishes so they can be pipelined).
pub fn invocation_record_subject(id: &str) -> String {
    format!("$KV.{KV_INVOCATIONS}.{id}")
}

/// Where `function`'s logs go.
pub fn logs_subject(function: &str) -> String {
    format!("{SUBJECT_LOGS}.{function}")
}

/// The durable consumer the workers of every node share for `function`.
pub fn consumer_name(function: &str) -> String {
    format!("fn-{function}")
}

/// The function whose workers share the durable consumer `name`.
pub fn consumer_function(name: &str) -> Option<&str> {
    name.strip_prefix("fn-").filter(|f| !f.is_empty())
}

/// Wakes: a core NATS message saying "events are queued for this function",
/// so workers consume only functions that have events (no consumer, task or
/// pull for a function never invoked).
pub const SUBJECT_WAKE: &str = "evoke.wake";

/// Where the wake of `function`'s workers is published.
pub fn wake_subject(function: &str) -> String {
    format!("{SUBJECT_WAKE}.{function}")
}

/// Every wake (what worker nodes subscribe to).
pub fn wake_filter() -> String {
    format!("{SUBJECT_WAKE}.*")
}

/// Sync invocations relayed to a worker node (request/reply).
pub const SUBJECT_SYNC: &str = "evoke.sync";
/// Queue group of the nodes serving relayed sync invocations.
pub const SYNC_QUEUE: &str = "evoke-sync";

/// Where sync invocations of `function` are relayed.
pub fn sync_subject(function: &str) -> String {
    format!("{SUBJECT_SYNC}.{function}")
}

/// Every relayed sync invocation (what worker nodes subscribe to).
pub fn sync_filter() -> String {
    format!("{SUBJECT_SYNC}.*")
}

/// The function a subject under `prefix` belongs to: `evoke.invoke.<fn>.<id>`,
/// `evoke.dlq.<fn>.<id>`, `evoke.sync.<fn>`, `evoke.logs.<fn>`, `evoke.wake.<fn>`.
pub fn function_in<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .split('.')
        .next()
        .filter(|f| !f.is_empty())
}

/// Why a subject may not be a destination, if it may not: NATS internals
/// (`$JS`, `$KV`, `$O`, `$SYS`, anything starting with `$`), reply inboxes,
/// and evoke's own namespace (queues, dead letters, logs, relays).
pub fn reserved_subject(subject: &str) -> Option<&'static str> {
    if subject.starts_with('$') {
        Some("subjects starting with `$` belong to NATS itself (JetStream API, KV, object store, system)")
    } else if subject.starts_with("_INBOX.") || subject == "_INBOX" {
        Some("`_INBOX` subjects carry replies of other clients")
    } else if subject == "evoke" || subject.starts_with("evoke.") {
        Some("`evoke.` subjects are evoke's own (queues, dead letters, logs, sync relays, wakes)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_their_function_and_back() {
        assert_eq!(function_in(&invoke_subject("f-1", "abc"), SUBJECT_INVOKE), Some("f-1"));
        assert_eq!(function_in(&legacy_invoke_subject("f-1"), SUBJECT_INVOKE), Some("f-1"));
        assert_eq!(function_in(&dlq_subject("f-1", "abc"), SUBJECT_DLQ), Some("f-1"));
        assert_eq!(function_in(&sync_subject("g"), SUBJECT_SYNC), Some("g"));
        assert_eq!(function_in(&wake_subject("g-2"), SUBJECT_WAKE), Some("g-2"));
        assert_eq!(function_in("evoke.invokes.f", SUBJECT_INVOKE), None);
        assert_eq!(consumer_function(&consumer_name("f-1")), Some("f-1"));
        assert_eq!(function_in("evoke.invoke.", SUBJECT_INVOKE), None);
        assert!(reserved_subject(&invoke_subject("f", "i")).is_some());
    }

    #[test]
    fn a_queued_subject_names_its_invocation() {
        assert_eq!(invocation_in(&invoke_subject("f-1", "0193-ab_c")), Some("0193-ab_c"));
        assert_eq!(invocation_in(&legacy_invoke_subject("f-1")), None);
        assert_eq!(invocation_in("evoke.invokes.f.i"), None);
        assert_eq!(invocation_in("evoke.invoke.f.i.j"), None);
        assert_eq!(invocation_in("evoke.invoke..i"), None);
        assert_eq!(invocation_in(&dlq_subject("f", "i")), None);
    }
}
