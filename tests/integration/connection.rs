//! Reaching a secured NATS: user and password, token, TLS with a private CA.
//! Each against a real nats-server configured that way.

use evoke::cli::nats::{ManagedNats, find_server, free_port};
use evoke::node::Node;

use crate::common::{TestNode, config, example, private_ca, with_free_ports};

/// A nats-server with `extra` configuration, on a free port.
fn secured(dir: &std::path::Path, extra: &str) -> ManagedNats {
    let bin = find_server().expect("nats-server");
    with_free_ports(|| ManagedNats::start_with(&bin, &dir.join("nats"), free_port()?, extra))
}

#[tokio::test]
async fn user_password_and_token_are_sent_and_required() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = secured(dir.path(), "authorization {\n  user: evoke\n  password: s3cret\n}\n");
    let data = tempfile::TempDir::new().unwrap();
    let refused = Node::start(config(&server.url(), &data))
        .await
        .err()
        .expect("no credentials: refused");
    assert!(format!("{refused:#}").to_lowercase().contains("author"), "{refused:#}");
    let mut c = config(&server.url(), &data);
    c.nats.user = Some("evoke".into());
    c.nats.password = Some("s3cret".into());
    let node = TestNode::with_config(c, data).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    assert_eq!(node.invoke("hello", "{}").await.text().await.unwrap(), "Hello, world!");
    node.stop().await;
    drop(server);

    let dir = tempfile::TempDir::new().unwrap();
    let server = secured(dir.path(), "authorization {\n  token: t0k3n\n}\n");
    let data = tempfile::TempDir::new().unwrap();
    let mut c = config(&server.url(), &data);
    c.nats.token = Some("t0k3n".into());
    let node = TestNode::with_config(c, data).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    node.stop().await;
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    private_ca(d);
    let tls = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        d.join("server.pem").display().to_string(),
        d.join("server.key").display().to_string()
    );
    let server = secured(d, &tls);
    let url = format!("tls://127.0.0.1:{}", server.port);

    // Without the CA, the server's certificate is not trusted.
    let data = tempfile::TempDir::new().unwrap();
    assert!(
        Node::start(config(&url, &data)).await.is_err(),
        "an untrusted certificate is refused"
    );

    let mut c = config(&url, &data);
    c.nats.tls_ca = Some(d.join("ca.pem"));
    let node = TestNode::with_config(c, data).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    assert_eq!(
        node.invoke("hello", r#"{"name":"tls"}"#).await.text().await.unwrap(),
        "Hello, tls!"
    );
    node.stop().await;
}
