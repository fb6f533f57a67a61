//! A plain WASI command, the contract for any language: the event arrives as
//! CloudEvents JSON on stdin, the output goes to stdout, logs to stderr, and
//! exit code 0 means success. This one upper-cases the event JSON it reads and
//! fails with exit code 3 when the event contains "fail".

use std::io::{Read, Write};

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("read stdin");
    eprintln!(
        "echo-command got {} bytes; GREETING={:?}",
        input.len(),
        std::env::var("GREETING").ok()
    );
    if input.contains("fail") {
        eprintln!("refusing: the event asks to fail");
        std::process::exit(3);
    }
    std::io::stdout()
        .write_all(input.to_uppercase().as_bytes())
        .expect("write stdout");
}
