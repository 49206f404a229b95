//! HTTPS on both sides: a gateway with a TLS listener serves as the upstream of another
//! gateway whose route trusts a private CA (`ca_file`), so the test covers rustls toward the
//! upstream, SNI and Host for a named host, the per-route CA, and the TLS listener.

mod support;

use serde_json::Value;
use support::gateway::start;
use support::mock_upstream::{MockOptions, MockUpstream};

/// A private CA and a `localhost` certificate it signed, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    Pki {
        ca: ca.pem(),
        cert: leaf.pem(),
        key: leaf_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_a_private_ca_and_sni() {
    let upstream = MockUpstream::start(MockOptions {
        token: "inner-token".into(),
        ..Default::default()
    })
    .await;
    let pki = pki();
    let inner = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[server.tls]
cert_file = "{{dir}}/cert.pem"
key_file = "{{dir}}/key.pem"
[[routes]]
name = "mock"
prefix = "/"
upstream = "{}"
auth = {{ kind = "bearer", token_file = "{{dir}}/token" }}
"#,
            upstream.base_url()
        ),
        &[
            ("cert.pem", &pki.cert),
            ("key.pem", &pki.key),
            ("token", "inner-token"),
        ],
    );
    let port = inner.running.local_addr().port();
    let outer = start(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
name = "secure"
prefix = "/secure"
upstream = "https://localhost:{port}/v2"
ca_file = "{{dir}}/ca.pem"
auth = {{ kind = "none" }}
"#
        ),
        &[("ca.pem", &pki.ca)],
    );
    let echo: Value = reqwest::get(format!("{}/secure/tools?x=1", outer.url()))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["path"], "/v2/tools");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["authorization"], "Bearer inner-token");

    // Without the private CA, the same upstream is refused with a TLS error, not a hang.
    let untrusting = start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"secure\"\nprefix = \"/secure\"\nupstream = \"https://localhost:{port}/v2\"\nauth = {{ kind = \"none\" }}\n"
        ),
        &[],
    );
    let response = reqwest::get(format!("{}/secure/tools", untrusting.url()))
        .await
        .expect("request");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "upstream_tls_error", "{body}");
}
