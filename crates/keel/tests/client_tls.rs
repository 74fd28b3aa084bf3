//! Keel's client over TLS, against a Keel server over real sockets: TLS and mutual TLS
//! through an intermediate, the expected-server-identity list (ALTS's target service
//! accounts as SPIFFE IDs or DNS names), a server name override, the errors a caller
//! sees when the server is not the one it expects, and the authorization policy matching
//! the identity the client's certificate proves.

mod common;

use std::time::Duration;

use common::mutual_tls::{CLIENT_ID, Pki, SERVER_ID, call, start, start_with};
use keel::client::{Channel, ClientTls, ClientTlsConfig};
use keel::config::ClientAuth;
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_test_support::eventually_async;
use keel_test_support::tls::{Ca, Dir};
use tonic::Code;

#[tokio::test]
async fn tls_and_mutual_tls_calls_complete_through_an_intermediate() {
    let pki = Pki::new();
    let server = start(pki.server_tls(ClientAuth::Optional)).await;
    let target = format!("static:///{}", server.addr);

    assert_eq!(
        call(&target, &pki.client_tls(false)).await.unwrap(),
        "anonymous"
    );
    assert_eq!(
        call(&target, &pki.client_tls(true)).await.unwrap(),
        CLIENT_ID
    );
    // A DNS target verifies the certificate against the host name.
    let dns = format!("dns:///localhost:{}", server.addr.port());
    assert_eq!(call(&dns, &pki.client_tls(true)).await.unwrap(), CLIENT_ID);
}

#[tokio::test]
async fn a_server_outside_the_expected_identities_fails_the_call_naming_what_it_saw() {
    let pki = Pki::new();
    let server = start(pki.server_tls(ClientAuth::Required)).await;
    let target = format!("static:///{}", server.addr);

    let mut expected = pki.client_tls(true);
    expected.expected_identities = vec!["spiffe://keel.test/other".into(), SERVER_ID.into()];
    assert_eq!(call(&target, &expected).await.unwrap(), CLIENT_ID);

    let mut elsewhere = pki.client_tls(true);
    elsewhere.expected_identities = vec!["spiffe://keel.test/ledger".into()];
    let status = call(&target, &elsewhere).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("presented identity {SERVER_ID}"))
            && status.message().contains("spiffe://keel.test/ledger"),
        "{status:?}"
    );

    // The SPIFFE ID takes precedence: the DNS SAN the certificate also holds is not
    // its identity.
    let mut by_dns = pki.client_tls(true);
    by_dns.expected_identities = vec!["localhost".into()];
    let status = call(&target, &by_dns).await.unwrap_err();
    assert!(
        status.message().contains("not among the expected"),
        "{status:?}"
    );
}

#[tokio::test]
async fn server_names_are_checked_and_can_be_overridden() {
    let pki = Pki::new();
    let server = start(pki.server_tls(ClientAuth::None)).await;

    // Verified against a name the certificate does not hold...
    let target = format!("static:///{}", server.addr);
    let mut tls = pki.client_tls(false);
    tls.server_name = "payments.keel.test".into();
    let status = call(&target, &tls).await.unwrap_err();
    assert!(status.message().contains("for another name"), "{status:?}");
    // ...and with the override naming one it does.
    tls.server_name = "localhost".into();
    assert_eq!(call(&target, &tls).await.unwrap(), "anonymous");
}

#[tokio::test]
async fn missing_client_certificates_and_untrusted_servers_say_what_to_do() {
    let pki = Pki::new();
    let server = start(pki.server_tls(ClientAuth::Required)).await;
    let target = format!("static:///{}", server.addr);

    let status = call(&target, &pki.client_tls(false)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("requires a client certificate"),
        "{status:?}"
    );

    // A CA of the same name but another key (a regenerated development CA).
    let regenerated = Pki::new();
    let status = call(&target, &regenerated.client_tls(true))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("was the CA regenerated?"),
        "{status:?}"
    );
    // A CA the client does not know at all.
    let stranger = Dir::new();
    let mut tls = pki.client_tls(true);
    tls.ca = stranger.write("other.pem", Ca::root("Elsewhere").cert_pem());
    let status = call(&target, &tls).await.unwrap_err();
    assert!(
        status.message().contains("not issued by a trusted CA"),
        "{status:?}"
    );
}

/// The authorization policy over real mutual TLS: principals are the certificate's SPIFFE ID
/// (never its DNS SAN when it has one), and a caller without a certificate matches none.
#[tokio::test]
async fn the_policy_sees_the_certificate_identity_over_mutual_tls() {
    let pki = Pki::new();
    pki.write_leaf(
        "intruder",
        &pki.issuing
            .leaf("intruder")
            .uri("spiffe://keel.test/intruder")
            .dns("trusted.keel.test")
            .issue(),
    );
    pki.write_leaf(
        "host",
        &pki.issuing.leaf("host").dns("trusted.keel.test").issue(),
    );
    let policy = pki.dir.write(
        "policy.json",
        format!(
            r#"{{"name": "greeter", "allow_rules": [{{"name": "known",
                "source": {{"principals": ["{CLIENT_ID}", "trusted.keel.test"]}},
                "request": {{"paths": ["/helloworld.Greeter/*"]}}}}]}}"#
        ),
    );
    let server = start_with(pki.server_tls(ClientAuth::Optional), |config| {
        config.auth.policy = policy;
    })
    .await;
    let target = format!("static:///{}", server.addr);
    let with = |name: &str| {
        let mut tls = pki.client_tls(false);
        tls.cert = pki.file(&format!("{name}.pem"));
        tls.key = pki.file(&format!("{name}.key"));
        tls
    };

    assert_eq!(call(&target, &with("client")).await.unwrap(), CLIENT_ID);
    // A certificate with only a DNS SAN is matched by it...
    assert_eq!(
        call(&target, &with("host")).await.unwrap(),
        "trusted.keel.test"
    );
    // ...but one with a SPIFFE ID is matched by its SPIFFE ID alone.
    let status = call(&target, &with("intruder")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // No certificate: no principal, not even for a policy naming one.
    let status = call(&target, &pki.client_tls(false)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// A long-lived channel takes up a rotated client certificate without being rebuilt: new
/// connections present the new one, and material that fails the checks is refused and
/// counted while the old keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_by_new_connections() {
    let pki = Pki::new();
    let mut server_config = pki.server_tls(ClientAuth::Required);
    server_config.reload_interval = Duration::ZERO;
    // Connections leave after about a second, so the client reconnects.
    let server = start_with(server_config, |config| {
        config.connection.max_age = Duration::from_secs(1);
        config.connection.max_age_grace = Duration::from_secs(1);
    })
    .await;
    let addr = server.addr;

    let mut settings = pki.client_tls(true);
    settings.reload_interval = Duration::from_millis(100);
    let tls = ClientTls::load(&settings).unwrap();
    let channel = Channel::builder(&format!("static:///{addr}"))
        .unwrap()
        .tls(tls.clone())
        .build()
        .unwrap();
    let greeter = GreeterClient::new(channel);
    let whoami = move || {
        let mut greeter = greeter.clone();
        async move {
            greeter
                .say_hello(HelloRequest {
                    name: "rotation".into(),
                })
                .await
                .map(|reply| reply.into_inner().message)
        }
    };
    assert_eq!(whoami().await.unwrap(), CLIENT_ID);

    // A key that does not match the certificate: refused, counted, the old stays.
    let other = pki
        .issuing
        .leaf("other")
        .uri("spiffe://keel.test/other")
        .issue();
    pki.dir.write("client.key", &other.key_pem);
    eventually_async(
        "the mismatched key refused",
        Duration::from_secs(10),
        || async { tls.reloads().1 >= 1 },
    )
    .await;
    assert_eq!(tls.reloads().0, 0);
    assert_eq!(whoami().await.unwrap(), CLIENT_ID);

    // The whole new pair: new connections present it.
    const ROTATED: &str = "spiffe://keel.test/rotated";
    pki.write_leaf("client", &pki.issuing.leaf("rotated").uri(ROTATED).issue());
    eventually_async(
        "the new certificate presented",
        Duration::from_secs(15),
        || {
            let call = whoami();
            async move { call.await.is_ok_and(|who| who == ROTATED) }
        },
    )
    .await;
    assert_eq!(tls.reloads().0, 1);
}

#[test]
fn client_settings_are_checked_before_any_file_is_read() {
    let mut tls = ClientTlsConfig::default();
    tls.cert = "client.pem".into();
    let error = ClientTls::load(&tls).unwrap_err().to_string();
    assert!(
        error.contains("cert = client.pem: must come with key"),
        "{error}"
    );

    let mut tls = ClientTlsConfig::default();
    tls.expected_identities = vec!["spiffe://Keel.Test/x".into()];
    let error = ClientTls::load(&tls).unwrap_err().to_string();
    assert!(
        error.contains("expected_identities = spiffe://Keel.Test/x"),
        "{error}"
    );
}
