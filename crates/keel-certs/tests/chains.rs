//! Issued chains verify with webpki for the usage they were made for, hold the names asked
//! for, and every broken chain is explained by the problem it has.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, SystemTime};

use keel_certs::{
    Authority, CaOptions, ChainProblem, Error, KeyAlgorithm, LeafOptions, Pair, PrivateKey,
    Purpose, ServerName, SpiffeId, Usage, Validity, check_chain, inspect, trust_anchors,
};

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn server_and_client_chains_verify_through_an_intermediate() {
    let root = Authority::root(CaOptions::new("Root")).unwrap();
    let intermediate = root.intermediate(CaOptions::new("Intermediate")).unwrap();
    let roots = trust_anchors(&[root.certificate().clone()]);
    let server = intermediate
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .ip(IpAddr::from([127, 0, 0, 1])),
        )
        .unwrap();
    assert_eq!(
        server.chain().len(),
        2,
        "leaf and intermediate, not the root"
    );
    let ip = ServerName::from(IpAddr::from([127, 0, 0, 1]));
    for name in [localhost(), ip] {
        let problems = check_chain(server.chain(), &roots, Purpose::Server, Some(&name), now());
        assert!(problems.is_empty(), "{problems:?}");
    }
    let client = intermediate
        .issue(LeafOptions::client().spiffe(SpiffeId::parse("spiffe://keel.test/a").unwrap()))
        .unwrap();
    assert!(check_chain(client.chain(), &roots, Purpose::Client, None, now()).is_empty());
    // Usage is enforced: a client certificate does not serve, a server one does not call.
    let problems = check_chain(client.chain(), &roots, Purpose::Server, None, now());
    assert!(
        matches!(&problems[..], [ChainProblem::WrongPurpose { .. }]),
        "{problems:?}"
    );
    let problems = check_chain(server.chain(), &roots, Purpose::Client, None, now());
    assert!(
        problems[0].to_string().contains("clientAuth"),
        "{problems:?}"
    );
    let both = root
        .issue(LeafOptions::new(Usage::Both).dns("localhost"))
        .unwrap();
    for purpose in [Purpose::Server, Purpose::Client] {
        assert!(check_chain(both.chain(), &roots, purpose, None, now()).is_empty());
    }
}

#[test]
fn certificates_hold_exactly_the_names_asked_for() {
    let root = Authority::root(CaOptions::new("Root")).unwrap();
    let id = SpiffeId::parse("spiffe://keel.test/ns/payments").unwrap();
    let issued = root
        .issue(
            LeafOptions::new(Usage::Both)
                .dns("Payments.Internal")
                .dns("*.svc.keel.test")
                .ip("::1".parse().unwrap())
                .ip([10, 0, 0, 7].into())
                .spiffe(id.clone()),
        )
        .unwrap();
    let info = inspect(issued.leaf()).unwrap();
    assert_eq!(info.dns, ["payments.internal", "*.svc.keel.test"]);
    assert_eq!(
        info.ips,
        [
            "::1".parse::<IpAddr>().unwrap(),
            IpAddr::from([10, 0, 0, 7])
        ]
    );
    assert_eq!(info.uris, [id.as_str()]);
    assert_eq!(info.subject, "CN=payments.internal");
    assert_eq!(info.issuer, "CN=Root");
    assert_eq!(info.extended_usage, Some((true, true)));
    assert!(!info.is_ca);
    assert_eq!(info.key, "ECDSA P-256");
    let wildcard = ServerName::try_from("a.svc.keel.test").unwrap();
    assert!(
        check_chain(
            issued.chain(),
            &trust_anchors(&[root.certificate().clone()]),
            Purpose::Server,
            Some(&wildcard),
            now()
        )
        .is_empty()
    );
}

#[test]
fn validity_windows_are_as_asked_and_checked() {
    let root = Authority::root(CaOptions::new("Root")).unwrap();
    let roots = trust_anchors(&[root.certificate().clone()]);
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let window = Validity::between(start, start + Duration::from_secs(3600));
    let issued = root
        .issue(LeafOptions::server().dns("localhost").validity(window))
        .unwrap();
    let info = inspect(issued.leaf()).unwrap();
    assert_eq!(
        (info.not_before, info.not_after),
        (1_800_000_000, 1_800_003_600)
    );

    let expired = root
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .validity(Validity::expired()),
        )
        .unwrap();
    let problems = check_chain(expired.chain(), &roots, Purpose::Server, None, now());
    assert!(
        matches!(&problems[..], [ChainProblem::Expired { index: 0, .. }]),
        "{problems:?}"
    );
    assert!(problems[0].to_string().contains("ago"), "{}", problems[0]);
    let early = root
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .validity(Validity::not_yet_valid()),
        )
        .unwrap();
    let problems = check_chain(early.chain(), &roots, Purpose::Server, None, now());
    assert!(
        matches!(&problems[..], [ChainProblem::NotYetValid { index: 0, .. }]),
        "{problems:?}"
    );
    // An expired intermediate is named as such.
    let old = root
        .intermediate(CaOptions::new("Old Intermediate").validity(Validity::expired()))
        .unwrap();
    let leaf = old
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .validity(Validity::between(
                    now() - Duration::from_secs(3 * 86_400),
                    now() + Duration::from_secs(86_400),
                )),
        )
        .unwrap();
    let problems = check_chain(leaf.chain(), &roots, Purpose::Server, None, now());
    assert!(
        matches!(&problems[..], [ChainProblem::Expired { index: 1, subject, .. }] if subject == "CN=Old Intermediate"),
        "{problems:?}"
    );
    assert!(matches!(
        LeafOptions::server()
            .dns("x")
            .validity(Validity::between(start, start))
            .pipe(|options| root.issue(options)),
        Err(Error::Validity)
    ));
}

/// `x.pipe(f)` is `f(x)`, to keep a builder chain readable.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

#[test]
fn broken_chains_say_where_they_break() {
    let root = Authority::root(CaOptions::new("Keel Dev CA")).unwrap();
    let intermediate = root
        .intermediate(CaOptions::new("Keel Dev Intermediate"))
        .unwrap();
    let roots = trust_anchors(&[root.certificate().clone()]);
    let server = intermediate
        .issue(LeafOptions::server().dns("localhost"))
        .unwrap();

    // The server forgot its intermediate.
    let problems = check_chain(&server.chain()[..1], &roots, Purpose::Server, None, now());
    assert_eq!(
        problems,
        [ChainProblem::UnknownIssuer {
            subject: "CN=localhost".into(),
            issuer: "CN=Keel Dev Intermediate".into(),
            leaf_only: true,
        }]
    );
    assert!(problems[0].to_string().contains("missing intermediate"));

    // Another CA's chain, with its intermediate.
    let other = Authority::root(CaOptions::new("Other CA")).unwrap();
    let other_intermediate = other.intermediate(CaOptions::new("Other Int")).unwrap();
    let foreign = other_intermediate
        .issue(LeafOptions::server().dns("localhost"))
        .unwrap();
    let problems = check_chain(foreign.chain(), &roots, Purpose::Server, None, now());
    assert_eq!(
        problems,
        [ChainProblem::UnknownIssuer {
            subject: "CN=Other Int".into(),
            issuer: "CN=Other CA".into(),
            leaf_only: false,
        }]
    );
    // ... and with its root sent too.
    let mut with_root = foreign.chain().to_vec();
    with_root.push(other.certificate().clone());
    let problems = check_chain(&with_root, &roots, Purpose::Server, None, now());
    assert_eq!(
        problems,
        [ChainProblem::UntrustedRoot {
            subject: "CN=Other CA".into()
        }]
    );

    // The CA was made again: same name, new key.
    let again = Authority::root(CaOptions::new("Keel Dev CA")).unwrap();
    let stale = again.issue(LeafOptions::server().dns("localhost")).unwrap();
    let problems = check_chain(stale.chain(), &roots, Purpose::Server, None, now());
    assert_eq!(
        problems,
        [ChainProblem::DifferentKey {
            issuer: "CN=Keel Dev CA".into()
        }]
    );

    // A self-signed server certificate.
    let selfsigned = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let problems = check_chain(
        &[selfsigned.cert.der().clone()],
        &roots,
        Purpose::Server,
        None,
        now(),
    );
    assert_eq!(
        problems,
        [ChainProblem::SelfSigned {
            subject: "CN=rcgen self signed cert".into()
        }]
    );

    // The wrong name, with the names it has.
    let problems = check_chain(
        server.chain(),
        &roots,
        Purpose::Server,
        Some(&ServerName::try_from("payments.internal").unwrap()),
        now(),
    );
    assert_eq!(
        problems,
        [ChainProblem::NameMismatch {
            expected: "payments.internal".into(),
            presented: vec!["DNS:localhost".into()],
        }]
    );

    // Expired *and* untrusted: both are said.
    let expired_foreign = other
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .validity(Validity::expired()),
        )
        .unwrap();
    let problems = check_chain(
        expired_foreign.chain(),
        &roots,
        Purpose::Server,
        None,
        now(),
    );
    assert!(
        matches!(
            &problems[..],
            [
                ChainProblem::Expired { .. },
                ChainProblem::UnknownIssuer { .. }
            ]
        ),
        "{problems:?}"
    );
    assert_eq!(
        check_chain(&[], &roots, Purpose::Server, None, now()),
        [ChainProblem::Empty]
    );
}

#[test]
fn other_key_algorithms_and_existing_keys_work() {
    for algorithm in [KeyAlgorithm::EcdsaP384, KeyAlgorithm::Ed25519] {
        let root = Authority::root(CaOptions::new("Root").key_algorithm(algorithm)).unwrap();
        let leaf = root
            .issue(
                LeafOptions::server()
                    .dns("localhost")
                    .key_algorithm(algorithm),
            )
            .unwrap();
        let problems = check_chain(
            leaf.chain(),
            &trust_anchors(&[root.certificate().clone()]),
            Purpose::Server,
            Some(&localhost()),
            now(),
        );
        assert!(problems.is_empty(), "{algorithm}: {problems:?}");
    }
    assert_eq!(
        inspect(
            Authority::root(CaOptions::new("R").key_algorithm(KeyAlgorithm::Ed25519))
                .unwrap()
                .certificate()
        )
        .unwrap()
        .key,
        "Ed25519"
    );
    assert!(matches!(
        "rsa".parse::<KeyAlgorithm>(),
        Err(Error::RsaGeneration)
    ));
    assert!(Error::RsaGeneration.to_string().contains("openssl genpkey"));

    // An RSA key made by openssl signs and is signed.
    let dir = tempdir("rsa");
    let key_path = dir.join("rsa.key");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(&key_path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let pem = std::fs::read_to_string(&key_path).unwrap();
    let root = Authority::root(
        CaOptions::new("RSA Root").key(PrivateKey::from_pem(&pem, "rsa.key").unwrap()),
    )
    .unwrap();
    let leaf = root
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .key(PrivateKey::from_pem(&pem, "rsa.key").unwrap()),
        )
        .unwrap();
    assert_eq!(inspect(leaf.leaf()).unwrap().key, "RSA 2048");
    assert!(
        check_chain(
            leaf.chain(),
            &trust_anchors(&[root.certificate().clone()]),
            Purpose::Server,
            Some(&localhost()),
            now()
        )
        .is_empty()
    );
}

#[test]
fn authorities_round_trip_through_files() {
    let dir = tempdir("files");
    let root = Authority::root(CaOptions::new("Root")).unwrap();
    let ca = Pair::new(&dir.join("ca"));
    ca.write(&root.cert_pem(), &root.key_pem(), false).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(matches!(
        ca.write(&root.cert_pem(), &root.key_pem(), false),
        Err(Error::Exists(path)) if path == ca.cert
    ));
    ca.write(&root.cert_pem(), &root.key_pem(), true).unwrap();

    let loaded = Pair::new(&dir.join("ca.pem")).read_authority().unwrap();
    assert!(loaded.is_root());
    let intermediate = loaded.intermediate(CaOptions::new("Int")).unwrap();
    let pair = Pair::new(&dir.join("int"));
    pair.write(&intermediate.cert_pem(), &intermediate.key_pem(), false)
        .unwrap();
    let intermediate = pair.read_authority().unwrap();
    assert!(!intermediate.is_root());
    let leaf = intermediate
        .issue(LeafOptions::server().dns("localhost"))
        .unwrap();
    assert_eq!(leaf.chain().len(), 2);
    assert!(
        check_chain(
            leaf.chain(),
            &trust_anchors(&[root.certificate().clone()]),
            Purpose::Server,
            Some(&localhost()),
            now()
        )
        .is_empty()
    );

    // A leaf is no CA; a missing key and a mismatched key are named.
    let leaf_pair = Pair::new(&dir.join("leaf"));
    leaf_pair
        .write(&leaf.chain_pem(), &leaf.key().pem(), false)
        .unwrap();
    let error = leaf_pair.read_authority().unwrap_err().to_string();
    assert!(error.contains("is not a CA certificate"), "{error}");
    std::fs::remove_file(&pair.key).unwrap();
    let error = pair.read_authority().unwrap_err().to_string();
    assert!(error.contains("but not its key"), "{error}");
    std::fs::write(&pair.key, root.key_pem()).unwrap();
    let error = pair.read_authority().unwrap_err().to_string();
    assert!(error.contains("is not the key of"), "{error}");
    let error = Pair::new(&dir.join("nothing"))
        .read_authority()
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read"), "{error}");
}

#[test]
fn bad_requests_are_refused_with_reasons() {
    let root = Authority::root(CaOptions::new("Root")).unwrap();
    assert!(matches!(
        root.issue(LeafOptions::server()),
        Err(Error::NoServerName)
    ));
    assert!(matches!(
        root.issue(LeafOptions::server().dns("bad name")),
        Err(Error::InvalidDnsName(_))
    ));
    // A client needs no DNS name.
    root.issue(LeafOptions::client()).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
