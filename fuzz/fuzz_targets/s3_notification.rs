//! S3 notifications (AWS, MinIO, Ceph, SNS-wrapped) as stores and hostile
//! senders post them: any bytes are either records with a bucket and a
//! event name, a test event, or an error naming the problem.
#![no_main]

use evoke_connectors::s3::notification::{Notification, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Notification::Records(records)) => {
            for r in records {
                assert!(!r.bucket.is_empty(), "a record without a bucket");
                assert!(!r.event_name.is_empty(), "a record without an event name");
            }
        }
        Ok(Notification::Test { .. }) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
