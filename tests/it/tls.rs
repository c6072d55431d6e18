//! TLS and mutual TLS: with a client CA, only a client holding a certificate from it gets in;
//! a plaintext client and a TLS client without a certificate are turned away at the handshake.

use crate::harness as common;

use common::{lookup_req, model_dir, store_req};
use semcache::client::ClientArgs;
use std::path::Path;
use std::time::Duration;

struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "semcache test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Self { ca: rcgen::Issuer::new(params, key), ca_pem }
    }

    /// A certificate for `names`, signed by the CA: (cert PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue(&["localhost"]);
    let (client_cert, client_key) = pki.issue(&["gateway"]);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let mut args = semcache::config::ServeArgs::with_dirs(dir.path().join("data"), model_dir());
    args.tls_cert = Some(write(dir.path(), "server.pem", &server_cert));
    args.tls_key = Some(write(dir.path(), "server.key", &server_key));
    args.tls_client_ca = Some(ca.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(semcache::server::run(args, listener, async {
        let _ = stopped.await;
    }));

    let https = format!("https://localhost:{port}");
    let full = ClientArgs {
        tls_ca: Some(ca.clone()),
        tls_client_cert: Some(write(dir.path(), "client.pem", &client_cert)),
        tls_client_key: Some(write(dir.path(), "client.key", &client_key)),
        ..ClientArgs::plain(&https)
    };
    // The model loads in the background; Store answers once it has.
    let mut client = semcache::client::connect(&full).await.expect("mTLS connect");
    let mut stored = None;
    for _ in 0..600 {
        match client.store(store_req("tls", "How do I reset my password?", "Use the link.")).await {
            Ok(r) => {
                stored = Some(r.into_inner().id);
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("store over mTLS: {s:?}"),
        }
    }
    let id = stored.expect("the server did not become ready within 60 s");
    let hit = client.lookup(lookup_req("tls", "how do i reset my password")).await.unwrap().into_inner();
    assert_eq!(hit.entry.unwrap().id, id);

    // TLS without a client certificate: the handshake (or the first call) fails.
    let no_cert = ClientArgs { tls_ca: Some(ca.clone()), ..ClientArgs::plain(&https) };
    let refused = match semcache::client::connect(&no_cert).await {
        Err(_) => true,
        Ok(mut c) => c.lookup(lookup_req("tls", "q")).await.is_err(),
    };
    assert!(refused, "a client without a certificate got in");
    // Plaintext to a TLS port.
    let plain = ClientArgs::plain(format!("http://localhost:{port}"));
    let refused = match semcache::client::connect(&plain).await {
        Err(_) => true,
        Ok(mut c) => c.lookup(lookup_req("tls", "q")).await.is_err(),
    };
    assert!(refused, "a plaintext client got in");
    // A server certificate that does not chain to the CA the client trusts.
    let other = Pki::new();
    let wrong_ca = ClientArgs { tls_ca: Some(write(dir.path(), "other.pem", &other.ca_pem)), ..full.clone() };
    let refused = match semcache::client::connect(&wrong_ca).await {
        Err(_) => true,
        Ok(mut c) => c.lookup(lookup_req("tls", "q")).await.is_err(),
    };
    assert!(refused, "the client trusted a server its CA did not sign");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
