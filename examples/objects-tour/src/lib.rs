//! Every object call of the SDK in one function, driven by its event:
//! `{"store": "local", "bucket": "b", "prefix": "tour/", "chunk": 3}` writes
//! three objects under the prefix, reads one back whole, by head, and as a
//! stream of `chunk`-byte ranges, lists the prefix, deletes one object and
//! reports what it saw as JSON. The test suite runs it against a real S3
//! server; it also shows the SDK's object API in one place.

use std::io::Read;

use evoke_sdk::objects::{self, Bucket, Error};
use evoke_sdk::{Event, Function, Output};

#[derive(serde::Deserialize)]
struct Tour {
    store: String,
    bucket: String,
    prefix: String,
    chunk: u64,
}

struct ObjectsTour;

impl Function for ObjectsTour {
    fn handle(event: Event) -> Result<Output, String> {
        let t: Tour = event.json()?;
        let bucket = Bucket::new(&t.store, &t.bucket);
        for (name, body) in [("a.txt", "alpha"), ("b.txt", "bravo!"), ("c.txt", "charlie")] {
            let meta = vec![("origin".to_string(), "tour".to_string())];
            bucket.object(format!("{}{name}", t.prefix)).put_with_metadata(
                body.as_bytes(),
                Some("text/plain"),
                &meta,
            )?;
        }
        let b = bucket.object(format!("{}b.txt", t.prefix));
        let whole = String::from_utf8_lossy(&b.get()?).into_owned();
        let head = b.head()?;
        let mut streamed = String::new();
        b.reader(t.chunk)?
            .read_to_string(&mut streamed)
            .map_err(|e| e.to_string())?;
        let range = String::from_utf8_lossy(&b.get_range(1, 3)?).into_owned();
        let listed: Vec<String> = objects::list(&t.store, &t.bucket, &t.prefix)
            .map(|o| o.map(|o| o.key))
            .collect::<Result<_, _>>()?;
        objects::delete(&t.store, &t.bucket, &format!("{}a.txt", t.prefix))?;
        let after_delete = match objects::get(&t.store, &t.bucket, &format!("{}a.txt", t.prefix)) {
            Err(Error::NotFound(_)) => "not-found".to_string(),
            Ok(_) => "still there".to_string(),
            Err(e) => e.message(),
        };
        Output::json(&serde_json::json!({
            "whole": whole,
            "size": head.size,
            "content_type": head.content_type,
            "metadata": head.metadata,
            "streamed": streamed,
            "range": range,
            "listed": listed,
            "after_delete": after_delete,
        }))
    }
}

evoke_sdk::function!(ObjectsTour);
