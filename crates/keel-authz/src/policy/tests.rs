//! The authorization matrix, grpc-go's own policies, and a fuzz of the parser and matcher.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use super::*;

fn peer(spiffe: Option<&str>, dns: &[&str], subject: &str) -> PeerIdentity {
    PeerIdentity::new(
        spiffe.map(str::to_owned),
        dns.iter().map(|name| (*name).to_owned()).collect(),
        subject.to_owned(),
    )
}

fn claims(pairs: &[(&str, &[&str])]) -> Claims {
    let values: BTreeMap<String, Vec<String>> = pairs
        .iter()
        .map(|(k, vs)| {
            (
                (*k).to_owned(),
                vs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect();
    Claims::new(
        values
            .get("sub")
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default(),
        "https://issuer.test".into(),
        values,
    )
}

/// Evaluates `call` parts against `policy`; the rule that decided, `+` allowed, `-` denied
/// (`-` alone: nothing allowed).
fn decide(
    policy: &Policy,
    path: &str,
    headers: &[(&str, &str)],
    peer: Option<&PeerIdentity>,
    claims: Option<&Claims>,
) -> String {
    let mut map = HeaderMap::new();
    for (key, value) in headers {
        map.append(
            http::HeaderName::from_bytes(key.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let decision = policy.evaluate(&Call {
        path,
        headers: &map,
        peer,
        claims,
    });
    match &decision {
        Decision::Allowed { rule, .. } => format!("+{rule}"),
        Decision::DeniedByRule { rule, .. } => format!("-{rule}"),
        Decision::NotAllowed { .. } => "-".to_owned(),
    }
}

#[test]
fn deny_beats_allow() {
    let policy = Policy::parse(
        r#"{"name": "p",
            "allow_rules": [{"name": "all"}],
            "deny_rules": [{"name": "no_admin", "request": {"paths": ["/admin.Admin/*"]}}]}"#,
    )
    .unwrap();
    assert_eq!(
        decide(&policy, "/admin.Admin/Drop", &[], None, None),
        "-no_admin"
    );
    assert_eq!(decide(&policy, "/shop.Shop/Buy", &[], None, None), "+all");
}

#[test]
fn the_spiffe_id_takes_precedence_over_dns_sans() {
    let policy = Policy::parse(
        r#"{"name": "p", "allow_rules": [
            {"name": "by_dns", "source": {"principals": ["payments.keel.test"]}},
            {"name": "by_spiffe", "source": {"principals": ["spiffe://keel.test/ledger"]}},
            {"name": "by_subject", "source": {"principals": ["CN=legacy*"]}}]}"#,
    )
    .unwrap();
    // The DNS name is in the certificate, but so is a SPIFFE ID: only the ID counts.
    let workload = peer(
        Some("spiffe://keel.test/other"),
        &["payments.keel.test"],
        "CN=payments",
    );
    assert_eq!(decide(&policy, "/a.A/M", &[], Some(&workload), None), "-");
    let ledger = peer(
        Some("spiffe://keel.test/ledger"),
        &["payments.keel.test"],
        "CN=x",
    );
    assert_eq!(
        decide(&policy, "/a.A/M", &[], Some(&ledger), None),
        "+by_spiffe"
    );
    // Without one, any DNS SAN; without those, the subject.
    let host = peer(None, &["a.keel.test", "payments.keel.test"], "CN=legacy");
    assert_eq!(decide(&policy, "/a.A/M", &[], Some(&host), None), "+by_dns");
    let legacy = peer(None, &[], "CN=legacy-batch,O=Keel");
    assert_eq!(
        decide(&policy, "/a.A/M", &[], Some(&legacy), None),
        "+by_subject"
    );
}

#[test]
fn plaintext_matches_no_principal_not_even_any() {
    let policy = Policy::parse(
        r#"{"name": "p", "allow_rules": [
            {"name": "authenticated", "source": {"principals": ["*"]}},
            {"name": "nobody", "source": {"principals": [""]}}]}"#,
    )
    .unwrap();
    assert_eq!(decide(&policy, "/a.A/M", &[], None, None), "-");
    let someone = peer(None, &["x.test"], "CN=x");
    assert_eq!(
        decide(&policy, "/a.A/M", &[], Some(&someone), None),
        "+authenticated"
    );
    // An empty list is grpc-go's "any source", plaintext included.
    let open = Policy::parse(
        r#"{"name": "p", "allow_rules": [{"name": "open", "source": {"principals": []}}]}"#,
    )
    .unwrap();
    assert_eq!(decide(&open, "/a.A/M", &[], None, None), "+open");
}

#[test]
fn path_matchers_exact_prefix_suffix_and_any() {
    let policy = Policy::parse(
        r#"{"name": "p", "allow_rules": [
            {"name": "exact", "request": {"paths": ["/a.A/Get"]}},
            {"name": "prefix", "request": {"paths": ["/b.B/*"]}},
            {"name": "suffix", "request": {"paths": ["*/Watch"]}},
            {"name": "middle_is_literal", "request": {"paths": ["/c.*.C/Get"]}}]}"#,
    )
    .unwrap();
    assert_eq!(decide(&policy, "/a.A/Get", &[], None, None), "+exact");
    assert_eq!(decide(&policy, "/a.A/GetAll", &[], None, None), "-");
    assert_eq!(decide(&policy, "/b.B/Anything", &[], None, None), "+prefix");
    assert_eq!(decide(&policy, "/z.Z/Watch", &[], None, None), "+suffix");
    assert_eq!(decide(&policy, "/c.x.C/Get", &[], None, None), "-");
    assert_eq!(
        decide(&policy, "/c.*.C/Get", &[], None, None),
        "+middle_is_literal"
    );

    let any = Policy::parse(
        r#"{"name": "p", "allow_rules": [{"name": "any", "request": {"paths": ["*"]}}]}"#,
    )
    .unwrap();
    assert_eq!(decide(&any, "/x.X/Y", &[], None, None), "+any");
}

#[test]
fn header_matchers_and_their_combination() {
    let policy = Policy::parse(
        r#"{"name": "p", "allow_rules": [{"name": "r", "request": {"headers": [
            {"key": "X-Tenant", "values": ["acme", "beta*", "*-test"]},
            {"key": "x-present", "values": ["*"]}]}}]}"#,
    )
    .unwrap();
    let ok = |tenant: &str| {
        decide(
            &policy,
            "/a.A/M",
            &[("x-tenant", tenant), ("x-present", "1")],
            None,
            None,
        )
    };
    assert_eq!(ok("acme"), "+r", "exact, key lower-cased");
    assert_eq!(ok("beta-2"), "+r", "prefix");
    assert_eq!(ok("team-test"), "+r", "suffix");
    assert_eq!(ok("acme2"), "-");
    // Both headers must match (AND); `*` needs the header present and non-empty.
    assert_eq!(
        decide(&policy, "/a.A/M", &[("x-tenant", "acme")], None, None),
        "-"
    );
    assert_eq!(
        decide(
            &policy,
            "/a.A/M",
            &[("x-tenant", "acme"), ("x-present", "")],
            None,
            None
        ),
        "-"
    );
    // Repeated values are joined with "," first, as grpc-go does.
    assert_eq!(
        decide(
            &policy,
            "/a.A/M",
            &[
                ("x-tenant", "beta"),
                ("x-tenant", "acme"),
                ("x-present", "1")
            ],
            None,
            None
        ),
        "+r"
    );
    assert_eq!(
        decide(
            &policy,
            "/a.A/M",
            &[
                ("x-tenant", "acme"),
                ("x-tenant", "beta"),
                ("x-present", "1")
            ],
            None,
            None
        ),
        "-",
        "\"acme,beta\" is neither exact acme nor a prefix of beta"
    );
}

#[test]
fn claims_match_like_headers_and_need_verified_claims() {
    let policy = Policy::parse(
        r#"{"name": "p", "allow_rules": [{"name": "team", "source": {"claims": [
            {"key": "sub", "values": ["alice", "team-*"]},
            {"key": "Scope", "values": ["pay"]}]}}]}"#,
    )
    .unwrap();
    let alice = claims(&[("sub", &["alice"]), ("Scope", &["read", "pay"])]);
    assert_eq!(decide(&policy, "/a.A/M", &[], None, Some(&alice)), "+team");
    let bob = claims(&[("sub", &["team-bob"]), ("Scope", &["pay"])]);
    assert_eq!(decide(&policy, "/a.A/M", &[], None, Some(&bob)), "+team");
    // Claim names keep their case; every key must match.
    let lower = claims(&[("sub", &["alice"]), ("scope", &["pay"])]);
    assert_eq!(decide(&policy, "/a.A/M", &[], None, Some(&lower)), "-");
    assert_eq!(decide(&policy, "/a.A/M", &[], None, None), "-");
}

#[test]
fn refused_header_keys_and_missing_fields_say_where() {
    let error = |text: &str| Policy::parse(text).unwrap_err().to_string();
    for key in [
        ":method",
        ":path",
        "grpc-timeout",
        "Host",
        "te",
        "connection",
    ] {
        let text = format!(
            r#"{{"name": "p", "allow_rules": [{{"name": "r",
                 "request": {{"headers": [{{"key": "{key}", "values": ["x"]}}]}}}}]}}"#
        );
        let message = error(&text);
        assert!(
            message.starts_with("allow_rules[0].request.headers[0].key: ")
                && message.contains("cannot be matched"),
            "{key}: {message}"
        );
    }
    assert_eq!(error("{}"), "name: is not present");
    assert!(error(r#"{"name": "p"}"#).starts_with("allow_rules: is not present"));
    assert_eq!(
        error(r#"{"name": "p", "allow_rules": [{"request": {}}]}"#),
        "allow_rules[0].name: is not present"
    );
    assert_eq!(
        error(
            r#"{"name": "p", "allow_rules": [{"name": "a"}],
                "deny_rules": [{"name": "d", "request": {"headers": [{"key": "k"}]}}]}"#
        ),
        "deny_rules[0].request.headers[0].values: is not present"
    );
    assert_eq!(
        error(
            r#"{"name": "p", "allow_rules": [{"name": "a",
                "source": {"claims": [{"values": ["x"]}]}}]}"#
        ),
        "allow_rules[0].source.claims[0].key: is not present"
    );
}

#[test]
fn unknown_keys_and_wrong_types_name_their_json_path() {
    let error = |text: &str| Policy::parse(text).unwrap_err();
    let unknown =
        error(r#"{"name": "p", "allow_rules": [{"name": "a", "source": {"principal": []}}]}"#);
    assert_eq!(unknown.path, "allow_rules[0].source.principal", "{unknown}");
    assert!(
        unknown.message.contains("unknown field `principal`"),
        "{unknown}"
    );
    let wrong = error(r#"{"name": 123}"#);
    assert_eq!(wrong.path, "name", "{wrong}");
    let trailing = error(r#"{"name": "p", "allow_rules": [{"name": "a"}]} x"#);
    assert_eq!(trailing.path, ".", "{trailing}");
    let condition = error(
        r#"{"name": "p", "allow_rules": [{"name": "a"}],
            "audit_logging_options": {"audit_condition": "ABC"}}"#,
    );
    assert_eq!(condition.path, "audit_logging_options.audit_condition");
    let logger = error(
        r#"{"name": "p", "allow_rules": [{"name": "a"}],
            "audit_logging_options": {"audit_loggers": [{"name": "l", "config": "abc"}]}}"#,
    );
    assert_eq!(logger.path, "audit_logging_options.audit_loggers[0].config");
}

/// Policies from grpc-go's `authz/rbac_translator_test.go` and `examples/features/authz`
/// (Apache-2.0, the gRPC authors), verbatim: Keel reads them as they are.
#[test]
fn grpc_go_policies_parse_as_they_are() {
    let translator_valid = r#"{
						"name": "authz",
						"deny_rules": [
						{
							"name": "deny_policy_1",
							"source": {
								"principals":[
								"spiffe://foo.abc",
								"spiffe://bar*",
								"*baz",
								"spiffe://abc.*.com"
								]
							}
						}],
						"allow_rules": [
						{
							"name": "allow_policy_1",
							"source": {
								"principals":["*"]
							},
							"request": {
								"paths": ["path-foo*"]
							}
						},
						{
							"name": "allow_policy_2",
							"request": {
								"paths": [
								"path-bar",
								"*baz"
								],
								"headers": [
								{
									"key": "key-1",
									"values": ["foo", "*bar"]
								},
								{
									"key": "key-2",
									"values": ["baz*"]
								}
								]
							}
						}]
					}"#;
    let audit_nested = r#"{
				"name": "authz",
				"allow_rules": [
				{
					"name": "allow_authenticated",
					"source": {
						"principals":["*", ""]
					}
				}],
				"audit_logging_options": {
					"audit_condition": "NONE",
					"audit_loggers": [
						{
							"name": "stdout_logger",
							"config": {"abc":123, "xyz":{"abc":123}},
							"is_optional": false
						}
					]
				}
			}"#;
    let example = r#"
	{
		"name": "authz",
		"allow_rules": [
			{
				"name": "allow_UnaryEcho",
				"request": {
					"paths": ["/grpc.examples.echo.Echo/UnaryEcho"],
					"headers": [
						{
							"key": "UNARY_ECHO:W",
							"values": ["true"]
						}
					]
				}
			},
			{
				"name": "allow_BidirectionalStreamingEcho",
				"request": {
					"paths": ["/grpc.examples.echo.Echo/BidirectionalStreamingEcho"],
					"headers": [
						{
							"key": "STREAM_ECHO:RW",
							"values": ["true"]
						}
					]
				}
			}
		],
		"deny_rules": []
	}
	"#;
    let valid = Policy::parse(translator_valid).unwrap();
    assert_eq!(valid.name(), "authz");
    let baz = peer(Some("spiffe://x/baz"), &[], "CN=x");
    assert_eq!(
        decide(&valid, "path-foo1", &[], Some(&baz), None),
        "-deny_policy_1"
    );
    let other = peer(Some("spiffe://x/other"), &[], "CN=x");
    assert_eq!(
        decide(&valid, "path-foo1", &[], Some(&other), None),
        "+allow_policy_1"
    );
    assert_eq!(
        decide(
            &valid,
            "path-bar",
            &[("key-1", "xbar"), ("key-2", "bazooka")],
            None,
            None
        ),
        "+allow_policy_2"
    );
    Policy::parse(audit_nested).unwrap();
    // The example's header keys are not HTTP header names (`:`), so they never match.
    let example = Policy::parse(example).unwrap();
    assert_eq!(
        decide(
            &example,
            "/grpc.examples.echo.Echo/UnaryEcho",
            &[],
            None,
            None
        ),
        "-"
    );
}

/// Text that is JSON-like enough to reach deep into the parser: fragments of valid
/// policies, shuffled, cut and spliced.
fn noise(rng: &mut impl Rng) -> String {
    const PIECES: [&str; 32] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"name\"",
        "\"allow_rules\"",
        "\"deny_rules\"",
        "\"source\"",
        "\"request\"",
        "\"principals\"",
        "\"paths\"",
        "\"headers\"",
        "\"key\"",
        "\"values\"",
        "\"claims\"",
        "\"*\"",
        "\"a*\"",
        "\"*b\"",
        "\"\"",
        "null",
        "true",
        "1e999",
        "-0",
        "\"\\ud800\"",
        "\"grpc-x\"",
        "\":path\"",
        "\"audit_logging_options\"",
        "\"audit_condition\"",
        "\"é\u{0}\"",
        " ",
    ];
    let n = rng.random_range(0..40);
    (0..n)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn valid_policy(rng: &mut impl Rng) -> String {
    let pattern = |rng: &mut dyn rand::RngCore| {
        ["*", "a*", "*a", "a", "", "**", "/x.X/*"][rng.random_range(0..7)].to_owned()
    };
    let mut rules = Vec::new();
    for i in 0..rng.random_range(1..4) {
        rules.push(serde_json::json!({
            "name": format!("r{i}"),
            "source": {"principals": [pattern(rng)], "claims": [{"key": "sub", "values": [pattern(rng)]}]},
            "request": {"paths": [pattern(rng)], "headers": [{"key": "x-k", "values": [pattern(rng)]}]},
        }));
    }
    serde_json::json!({"name": "fuzz", "allow_rules": rules.clone(), "deny_rules": rules[..1]})
        .to_string()
}

#[test]
fn arbitrary_text_gives_an_error_or_a_policy_never_a_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut parsed = 0;
    for round in 0..20_000 {
        let text = match round % 3 {
            0 => noise(&mut rng),
            1 => {
                // A valid policy with a byte range cut out or replaced.
                let mut bytes = valid_policy(&mut rng).into_bytes();
                let at = rng.random_range(0..bytes.len());
                let len = rng.random_range(0..8).min(bytes.len() - at);
                bytes.splice(
                    at..at + len,
                    (0..rng.random_range(0..3)).map(|_| rng.random::<u8>()),
                );
                String::from_utf8_lossy(&bytes).into_owned()
            }
            _ => valid_policy(&mut rng),
        };
        if let Ok(policy) = Policy::parse(&text) {
            parsed += 1;
            let value: String = (0..rng.random_range(0..6))
                .map(|_| ['a', '*', '/', 'x', ',', 'é'][rng.random_range(0..6)])
                .collect();
            let someone = peer(Some(&value), &[], "");
            let claims = claims(&[("sub", &[value.as_str()])]);
            let headers: &[(&str, &str)] = if value.is_ascii() {
                &[("x-k", value.as_str())]
            } else {
                &[]
            };
            decide(&policy, &value, headers, Some(&someone), Some(&claims));
            decide(&policy, &value, &[], None, None);
        }
    }
    assert!(
        parsed > 5_000,
        "only {parsed} inputs parsed: the generator lost its way"
    );
}
