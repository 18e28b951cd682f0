//! Handshakes between real sockets: who gets in, who is refused, and that renewal and root
//! changes apply to the next connection.

use std::collections::HashSet;
use std::time::Duration;

use shoal_tls::creds::{revocation_name, WrongPeer};
use shoal_tls::net::{incoming, Connector};
use shoal_tls::pki::{signing_request, Issue, RootCa};
use shoal_tls::{Credentials, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

const CLUSTER: &str = "00000000000000aa";

fn creds(ca: &RootCa, cluster: &str, role: Role, name: &str) -> Credentials {
    let (key, csr) = signing_request().unwrap();
    let cert = ca
        .issue(
            &csr,
            &Issue {
                cluster_id: cluster.into(),
                role,
                name: name.into(),
                sans: vec!["127.0.0.1".into()],
                lifetime: Duration::from_secs(3600),
            },
        )
        .unwrap();
    Credentials::with_cert(&ca.cert_pem, &cert, &key).unwrap()
}

/// A server that echoes one line and reports who connected.
async fn server(
    server: &Credentials,
    require: Option<&'static [Role]>,
) -> (String, tokio::sync::mpsc::Receiver<Option<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut conns = incoming(listener, server.server_config(require, &[]), "test");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(mut conn)) = conns.next().await {
            let who = conn
                .info()
                .identity
                .as_ref()
                .map(|i| format!("{}/{}", i.role, i.name));
            let _ = tx.send(who).await;
            tokio::spawn(async move {
                let mut buf = [0u8; 5];
                if conn.read_exact(&mut buf).await.is_ok() {
                    let _ = conn.write_all(&buf).await;
                    let _ = conn.flush().await;
                }
            });
        }
    });
    (addr, rx)
}

async fn echo(client: &Credentials, expect: &[Role], addr: &str) -> Result<(), String> {
    let mut s = Connector::new(client.client_config(expect, &[]))
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"hello").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    // TLS 1.3 reports a refused client certificate on the first read.
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test]
async fn only_certificates_of_the_cluster_and_role_get_in() {
    let ca = RootCa::generate(CLUSTER, 1).unwrap();
    let manager = creds(&ca, CLUSTER, Role::Manager, "m1");
    let worker = creds(&ca, CLUSTER, Role::Worker, "n1");
    let (addr, mut who) = server(&manager, Some(&[Role::Manager, Role::Client])).await;

    echo(
        &creds(&ca, CLUSTER, Role::Client, "ops"),
        &[Role::Manager],
        &addr,
    )
    .await
    .unwrap();
    assert_eq!(who.recv().await.unwrap().as_deref(), Some("client/ops"));

    // Wrong role, another CA, another cluster of the same CA, no certificate at all.
    assert!(echo(&worker, &[Role::Manager], &addr).await.is_err());
    let other = RootCa::generate(CLUSTER, 2).unwrap();
    let stranger = creds(&other, CLUSTER, Role::Client, "ops");
    stranger.set_roots(&ca.cert_pem).unwrap();
    assert!(echo(&stranger, &[Role::Manager], &addr).await.is_err());
    assert!(echo(
        &creds(&ca, "00000000000000bb", Role::Client, "x"),
        &[Role::Manager],
        &addr
    )
    .await
    .is_err());
    let anonymous = Credentials::new(CLUSTER, &ca.cert_pem).unwrap();
    assert!(echo(&anonymous, &[Role::Manager], &addr).await.is_err());

    // The client refuses a server of the wrong role too.
    let (worker_addr, _) = server(&worker, None).await;
    let err = echo(&manager, &[Role::Manager], &worker_addr)
        .await
        .unwrap_err();
    assert!(err.contains("TLS handshake"), "{err}");

    // A plaintext HTTP client is told why, and nothing reaches the service.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /_ping HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("requires TLS"), "{answer}");
    assert!(tokio::time::timeout(Duration::from_millis(200), who.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn revocation_renewal_and_new_roots_apply_to_the_next_connection() {
    let ca = RootCa::generate(CLUSTER, 1).unwrap();
    let manager = creds(&ca, CLUSTER, Role::Manager, "m1");
    let (addr, _who) = server(&manager, None).await;
    let worker = creds(&ca, CLUSTER, Role::Worker, "n1");
    echo(&worker, &[Role::Manager], &addr).await.unwrap();

    manager.set_revoked(HashSet::from([revocation_name(Role::Worker, "n1")]));
    let err = echo(&worker, &[Role::Manager], &addr).await.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    manager.set_revoked(HashSet::new());

    // Rotation: both roots trusted, then a certificate from the new one, then only the new root.
    let next = RootCa::generate(CLUSTER, 2).unwrap();
    let bundle = format!("{}{}", ca.cert_pem, next.cert_pem);
    manager.set_roots(&bundle).unwrap();
    worker.set_roots(&bundle).unwrap();
    let renewed = creds(&next, CLUSTER, Role::Worker, "n1");
    worker
        .set_cert(&renewed.cert_pem().unwrap(), &renewed.key_pem().unwrap())
        .unwrap();
    echo(&worker, &[Role::Manager], &addr).await.unwrap();
    manager.set_roots(&next.cert_pem).unwrap();
    // The manager still presents a certificate of the old root: the worker, trusting only the
    // new one now, refuses it; once the manager renews, they talk again.
    worker.set_roots(&next.cert_pem).unwrap();
    assert!(echo(&worker, &[Role::Manager], &addr).await.is_err());
    let m2 = creds(&next, CLUSTER, Role::Manager, "m1");
    manager
        .set_cert(&m2.cert_pem().unwrap(), &m2.key_pem().unwrap())
        .unwrap();
    echo(&worker, &[Role::Manager], &addr).await.unwrap();
}

/// A renewal rewrites key.pem, then cert.pem: a reader in between must wait for the pair, not
/// fail (a client that then fell back to no credentials at all was refused by every manager).
#[test]
fn a_dir_read_in_the_middle_of_a_renewal_loads_the_new_pair() {
    let ca = RootCa::generate(CLUSTER, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    creds(&ca, CLUSTER, Role::Manager, "m1")
        .save_dir(dir.path())
        .unwrap();
    let renewed = creds(&ca, CLUSTER, Role::Manager, "m1");
    let scratch = tempfile::tempdir().unwrap();
    renewed.save_dir(scratch.path()).unwrap();
    // Halfway: the new key beside the old certificate.
    std::fs::copy(scratch.path().join("key.pem"), dir.path().join("key.pem")).unwrap();
    let (cert_from, cert_to) = (scratch.path().join("cert.pem"), dir.path().join("cert.pem"));
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(60));
        std::fs::copy(cert_from, cert_to).unwrap();
    });
    let loaded = Credentials::load_dir(dir.path()).expect("the pair, once whole");
    writer.join().unwrap();
    let serial = |c: &Credentials| c.identity().unwrap().serial;
    assert_eq!(serial(&loaded), serial(&renewed));
    // Files that stay broken are still an error.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    assert!(Credentials::load_dir(dir.path()).is_err());
}

/// A connector made for one holder (a manager dialling node n1's engine endpoint) refuses a
/// server that shows another valid certificate of the cluster (node n2 at that address), and
/// says whose it was; the right holder gets in.
#[tokio::test]
async fn a_connector_for_one_node_refuses_another_nodes_certificate() {
    let ca = RootCa::generate(CLUSTER, 1).unwrap();
    let manager = creds(&ca, CLUSTER, Role::Manager, "m1");
    let n2 = creds(&ca, CLUSTER, Role::Worker, "n2");
    let (addr, _who) = server(&n2, Some(&[Role::Manager])).await;

    let Err(err) = Connector::new(manager.client_config_for(Role::Worker, "n1", &[]))
        .connect(&addr)
        .await
    else {
        panic!("n2's certificate where n1 was meant must be refused");
    };
    let wrong = WrongPeer::of(&err).unwrap_or_else(|| panic!("not a WrongPeer: {err}"));
    assert_eq!(
        (wrong.expected.as_str(), wrong.presented.as_str()),
        ("n1", "n2")
    );
    assert!(
        err.to_string()
            .contains("presents the certificate of worker n2, not of worker n1"),
        "{err}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);

    // n2 itself, as n2: in. A manager's certificate where a worker is meant: refused.
    let mut s = Connector::new(manager.client_config_for(Role::Worker, "n2", &[]))
        .connect(&addr)
        .await
        .expect("n2 where n2 is meant");
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    let (maddr, _) = server(&manager, None).await;
    let Err(err) = Connector::new(n2.client_config_for(Role::Worker, "m1", &[]))
        .connect(&maddr)
        .await
    else {
        panic!("a manager's certificate is no worker's");
    };
    assert!(WrongPeer::of(&err).is_some(), "{err}");

    // Revoked, n2 is refused even where it is meant.
    manager.set_revoked(HashSet::from([revocation_name(Role::Worker, "n2")]));
    let Err(err) = Connector::new(manager.client_config_for(Role::Worker, "n2", &[]))
        .connect(&addr)
        .await
    else {
        panic!("a revoked node is refused");
    };
    assert!(WrongPeer::of(&err).is_none(), "{err}");
}

/// `until_revoked` wakes an open stream's guard when its caller's certificate is revoked, and
/// not for another's.
#[tokio::test]
async fn until_revoked_resolves_when_the_holder_is_revoked() {
    let ca = RootCa::generate(CLUSTER, 1).unwrap();
    let manager = creds(&ca, CLUSTER, Role::Manager, "m1");
    let alice = creds(&ca, CLUSTER, Role::Client, "alice")
        .identity()
        .unwrap();
    let guard = tokio::spawn({
        let manager = manager.clone();
        async move { manager.until_revoked(&alice).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    manager.set_revoked(HashSet::from([revocation_name(Role::Client, "bob")]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!guard.is_finished(), "bob's revocation is not alice's");
    manager.set_revoked(HashSet::from([
        revocation_name(Role::Client, "bob"),
        revocation_name(Role::Client, "alice"),
    ]));
    tokio::time::timeout(Duration::from_secs(5), guard)
        .await
        .expect("alice's revocation wakes the guard")
        .unwrap();
}
