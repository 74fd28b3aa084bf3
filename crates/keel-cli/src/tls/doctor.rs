//! The diagnosis: the seed's decision flow (TCP, ClientHello, ALPN, chain verification),
//! plus the client certificate and the first HTTP/2 exchange, as checks with a status and
//! problems with a fix each; printed for people, or as JSON.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use keel_certs::{
    ChainProblem, Purpose, Timeliness, check_chain, format_span, format_time, inspect, read_name,
    unix_seconds,
};
use rustls::AlertDescription;
use rustls::pki_types::ServerName;
use serde::Serialize;

use super::Inputs;
use super::probe::{
    self, After, ConnectFailure, Handshake, HandshakeEnd, Request, plaintext_answer,
    plaintext_protocol,
};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
    Warn,
    Info,
}

/// One step of the flow.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

/// What is wrong and how to fix it.
#[derive(Debug, Serialize)]
pub struct Problem {
    pub problem: String,
    pub fixes: Vec<String>,
}

/// A certificate as presented.
#[derive(Debug, Serialize)]
pub struct CertView {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub validity: String,
    pub serial: String,
    pub key: String,
    pub ca: bool,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub server_name: String,
    pub checks: Vec<Check>,
    pub chain: Vec<CertView>,
    pub problems: Vec<Problem>,
    pub ok: bool,
}

impl Report {
    fn check(&mut self, check: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            check,
            status,
            detail: detail.into(),
        });
    }

    fn problem(&mut self, problem: impl Into<String>, fixes: Vec<String>) {
        self.problems.push(Problem {
            problem: problem.into(),
            fixes,
        });
    }

    /// The report for a terminal.
    pub fn human(&self) -> String {
        let mut out = format!(
            "keel tls doctor: {}, server name \"{}\"\n\n",
            self.target, self.server_name
        );
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Fail => "FAIL",
                Status::Warn => "warn",
                Status::Info => "info",
            };
            let _ = writeln!(out, "  {status:<5} {:<12} {}", check.check, check.detail);
        }
        if !self.chain.is_empty() {
            out.push_str("\nCertificates the server presented (leaf first):\n");
            for (index, cert) in self.chain.iter().enumerate() {
                let _ = writeln!(out, "  [{index}] {}", cert.subject);
                let _ = writeln!(out, "      issuer  {}", cert.issuer);
                if !cert.names.is_empty() {
                    let _ = writeln!(out, "      names   {}", cert.names.join(", "));
                }
                let _ = writeln!(
                    out,
                    "      valid   {} to {} ({})",
                    cert.not_before, cert.not_after, cert.validity
                );
                let _ = writeln!(out, "      serial  {}", cert.serial);
                let ca = if cert.ca { ", CA" } else { "" };
                let _ = writeln!(out, "      key     {}{ca}", cert.key);
            }
        }
        out.push('\n');
        for (index, problem) in self.problems.iter().enumerate() {
            let _ = writeln!(out, "Problem {}: {}", index + 1, problem.problem);
            for fix in &problem.fixes {
                let _ = writeln!(out, "  fix: {fix}");
            }
            out.push('\n');
        }
        match self.problems.len() {
            0 => out.push_str("No problems: the handshake is good.\n"),
            1 => out.push_str("1 problem found.\n"),
            n => {
                let _ = writeln!(out, "{n} problems found.");
            }
        }
        out
    }
}

/// Connects, shakes hands, and explains.
pub fn examine(inputs: &Inputs) -> Report {
    let server_name = inputs.server_name.to_str().into_owned();
    let mut report = Report {
        target: format!("{}:{}", inputs.host, inputs.port),
        server_name: server_name.clone(),
        checks: Vec::new(),
        chain: Vec::new(),
        problems: Vec::new(),
        ok: false,
    };
    let addresses = match probe::resolve(&inputs.host, inputs.port) {
        Ok(addresses) if !addresses.is_empty() => addresses,
        Ok(_) | Err(_) => {
            report.check(
                "resolve",
                Status::Fail,
                format!("cannot resolve {}", inputs.host),
            );
            report.problem(
                format!("cannot resolve the host name {:?}", inputs.host),
                vec!["check the name, or give an IP address with --server-name NAME".into()],
            );
            return report;
        }
    };
    let address = addresses[0];
    let start = Instant::now();
    let socket = match probe::connect(address, inputs.timeout) {
        Ok(socket) => socket,
        Err(failure) => {
            let (detail, fix) = match failure {
                ConnectFailure::Refused => (
                    format!("connection refused: nothing listens on {address}"),
                    "start the server, or check the port".to_owned(),
                ),
                ConnectFailure::TimedOut => (
                    format!(
                        "no answer from {address} within {}",
                        humantime::format_duration(inputs.timeout)
                    ),
                    "check the address and any firewall between (packets are dropped); \
                     --timeout allows more time"
                        .to_owned(),
                ),
                ConnectFailure::Other(error) => (
                    format!("cannot connect to {address}: {error}"),
                    "check the address and the network".to_owned(),
                ),
            };
            report.check("TCP connect", Status::Fail, detail.clone());
            report.problem(detail, vec![fix]);
            return report;
        }
    };
    let elapsed = start.elapsed();
    report.check(
        "TCP connect",
        Status::Ok,
        format!("{address} in {:.1} ms", elapsed.as_secs_f64() * 1000.0),
    );
    let request = Request {
        address,
        server_name: inputs.server_name.clone(),
        alpn: inputs.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        client: inputs.client.clone(),
        timeout: inputs.timeout,
    };
    let handshake = probe::handshake(&request, socket);
    explain(inputs, &request, &handshake, &mut report);
    report.ok = report.problems.is_empty();
    report
}

fn explain(inputs: &Inputs, request: &Request, handshake: &Handshake, report: &mut Report) {
    let asked = handshake.client_cert_request.as_ref();
    let sent = asked.is_some() && inputs.client.is_some();
    let mut client_rejection: Option<String> = None;

    // 1. The handshake itself.
    match &handshake.end {
        HandshakeEnd::Done => {
            let version = match handshake.version {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
                _ => "TLS",
            };
            let suite = handshake
                .suite
                .map(|suite| {
                    suite
                        .as_str()
                        .map_or_else(|| format!("{suite:?}"), str::to_owned)
                })
                .unwrap_or_default();
            report.check("TLS", Status::Ok, format!("{version}, {suite}"));
        }
        HandshakeEnd::Tls(rustls::Error::AlertReceived(alert)) => {
            let name = alert_name(*alert);
            report.check(
                "TLS",
                Status::Fail,
                format!("the server ended the handshake with alert {name}"),
            );
            match alert {
                AlertDescription::CertificateRequired => {
                    client_rejection = Some(name);
                }
                AlertDescription::HandshakeFailure if asked.is_some() && !sent => {
                    client_rejection = Some(name);
                }
                alert if sent && is_certificate_alert(*alert) => {
                    client_rejection = Some(name);
                }
                AlertDescription::NoApplicationProtocol => report.problem(
                    format!(
                        "ALPN: the server supports none of the protocols offered ({}), and \
                         ended the handshake (no_application_protocol)",
                        inputs.alpn.join(", ")
                    ),
                    vec![alpn_fix()],
                ),
                AlertDescription::ProtocolVersion => report.problem(
                    "the server accepts neither TLS 1.2 nor TLS 1.3 (protocol_version)",
                    vec![
                        "upgrade the server's TLS: versions before 1.2 are insecure, and \
                         gRPC needs 1.2 or later"
                            .into(),
                    ],
                ),
                AlertDescription::HandshakeFailure => report.problem(
                    "the server refused the handshake (handshake_failure): no cipher suite, \
                     key exchange or signature algorithm in common with rustls",
                    vec![
                        "let the server offer ECDHE with AES-GCM or ChaCha20-Poly1305 (any \
                         TLS 1.3 server does)"
                            .into(),
                    ],
                ),
                _ => report.problem(
                    format!("the server ended the handshake with alert {name}"),
                    vec!["read the server's log for why it refused the handshake".into()],
                ),
            }
        }
        HandshakeEnd::Closed if asked.is_some() && !sent => {
            // A TLS 1.2 server that demands a certificate may just hang up.
            report.check(
                "TLS",
                Status::Fail,
                "the server closed the connection during the handshake",
            );
            client_rejection = Some("a closed connection".into());
        }
        end => {
            let detail = match end {
                HandshakeEnd::Closed => {
                    "the server closed the connection during the handshake".into()
                }
                HandshakeEnd::Silent => format!(
                    "no TLS answer within {}",
                    humantime::format_duration(inputs.timeout)
                ),
                HandshakeEnd::Tls(error) => format!("the handshake failed: {error}"),
                HandshakeEnd::Io(error) => format!("the handshake failed: {error}"),
                HandshakeEnd::Done => unreachable!("handled above"),
            };
            let plain = plaintext(handshake, request);
            let shown = match plain {
                Some(protocol) => format!("the server answered in plaintext {protocol}, not TLS"),
                None => detail.clone(),
            };
            report.check("TLS", Status::Fail, shown);
            if let Some(protocol) = plain {
                report.problem(
                    format!(
                        "plaintext: the server speaks {protocol} without TLS, so there is no \
                         handshake to have"
                    ),
                    vec![
                        format!(
                            "drop TLS on the client: call http://{} (keel call http://{0} list)",
                            report.target
                        ),
                        "or turn TLS on at the server (its certificate and key)".into(),
                    ],
                );
            } else {
                report.problem(
                    detail,
                    vec![
                        "check that HOST:PORT is the server's TLS port, and read the server's \
                         log"
                        .into(),
                    ],
                );
            }
        }
    }

    // 2. SNI and ALPN, once the server answered the ClientHello.
    let hello_answered = handshake.version.is_some() || !handshake.chain.is_empty();
    match &inputs.server_name {
        ServerName::DnsName(name) => {
            report.check("SNI", Status::Info, format!("sent \"{}\"", name.as_ref()))
        }
        _ => report.check(
            "SNI",
            Status::Info,
            "none sent: the server name is an IP address (TLS has no SNI for IPs); \
             --server-name NAME sends one",
        ),
    }
    if hello_answered && matches!(handshake.end, HandshakeEnd::Done) {
        let offered = inputs.alpn.join(", ");
        match handshake.alpn.as_deref() {
            Some(b"h2") => report.check(
                "ALPN",
                Status::Ok,
                format!("offered {offered}; the server chose h2"),
            ),
            chosen if inputs.alpn.iter().any(|p| p == "h2") => {
                let chosen = chosen.map_or("none".to_owned(), |p| {
                    format!("\"{}\"", String::from_utf8_lossy(p))
                });
                report.check(
                    "ALPN",
                    Status::Fail,
                    format!("offered {offered}; the server chose {chosen}"),
                );
                report.problem(
                    format!(
                        "no h2: the server chose {chosen} in ALPN; gRPC runs on HTTP/2, which \
                         TLS peers agree on with ALPN \"h2\", and gRPC clients (grpc-go, \
                         grpc-java, Keel) refuse a connection without it"
                    ),
                    vec![alpn_fix()],
                );
            }
            chosen => report.check(
                "ALPN",
                Status::Info,
                format!(
                    "offered {offered}; the server chose {}",
                    chosen.map_or("none".to_owned(), |p| String::from_utf8_lossy(p)
                        .into_owned())
                ),
            ),
        }
    }

    // 3. The chain, verified here.
    if !handshake.chain.is_empty() {
        explain_chain(inputs, handshake, report);
    }

    // 4. The client certificate, and what the server said after the handshake.
    let after = handshake.after.as_ref();
    if client_rejection.is_none() {
        match after {
            Some(After::Alert(alert)) if asked.is_some() => {
                client_rejection = Some(alert_name(*alert));
            }
            Some(After::Closed) if asked.is_some() && !sent => {
                client_rejection = Some("a closed connection".into());
            }
            _ => {}
        }
    }
    let hints: Vec<(String, Vec<u8>)> = asked
        .map(|names| names.iter().filter_map(|name| read_name(name)).collect())
        .unwrap_or_default();
    let accepted_cas = if hints.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = hints
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        format!("; it accepts certificates issued by {}", names.join(", "))
    };
    match (asked.is_some(), sent, &client_rejection) {
        (true, false, Some(how)) => {
            report.check(
                "client cert",
                Status::Fail,
                format!("the server demands one (mTLS); none was sent; it answered {how}"),
            );
            report.problem(
                format!(
                    "client certificate required: the server asked for a client certificate \
                     (mTLS) and none was sent, so it ended the connection ({how}){accepted_cas}"
                ),
                vec![
                    "pass --cert CLIENT.pem --key CLIENT.key, a certificate issued by a CA \
                     the server trusts"
                        .into(),
                    "for development: keel certs issue --ca certs/ca --out certs/client \
                     --client --spiffe spiffe://keel.test/client"
                        .into(),
                ],
            );
        }
        (true, true, Some(how)) => {
            report.check(
                "client cert",
                Status::Fail,
                format!("sent; the server rejected it ({how})"),
            );
            report.problem(
                format!(
                    "client certificate rejected: the server answered {how}: {}",
                    alert_meaning(how)
                ),
                client_fixes(inputs, &hints),
            );
        }
        (true, false, None) => report.check(
            "client cert",
            Status::Info,
            format!(
                "the server asked for one (optional, it went on without){accepted_cas}; none sent"
            ),
        ),
        (true, true, None) => {
            let subject = inputs
                .client_chain
                .first()
                .and_then(|der| inspect(der).ok())
                .map(|info| info.subject)
                .unwrap_or_default();
            report.check(
                "client cert",
                Status::Ok,
                format!("sent \"{subject}\"; the server accepted it"),
            );
        }
        (false, _, _) if matches!(handshake.end, HandshakeEnd::Done) => {
            let detail = if inputs.client.is_some() {
                "the server did not ask for one; --cert was not used"
            } else {
                "the server did not ask for one"
            };
            report.check("client cert", Status::Info, detail);
        }
        _ => {}
    }
    if client_rejection.is_some() {
        return;
    }
    match after {
        Some(After::Answered(bytes)) if handshake.alpn.as_deref() == Some(b"h2") => {
            if plaintext_protocol(bytes) == Some("HTTP/2") {
                report.check(
                    "HTTP/2",
                    Status::Ok,
                    "the server answered the HTTP/2 preface with SETTINGS",
                );
            } else {
                report.check(
                    "HTTP/2",
                    Status::Warn,
                    "the server answered, but not with an HTTP/2 frame",
                );
            }
        }
        Some(After::Answered(_)) => report.check(
            "after",
            Status::Info,
            "the server sent data after the handshake",
        ),
        Some(After::Silent) => report.check(
            "after",
            Status::Info,
            "the server sent nothing within 2 s after the handshake",
        ),
        Some(After::Alert(alert)) => {
            let name = alert_name(*alert);
            report.check(
                "after",
                Status::Fail,
                format!("the server sent alert {name}"),
            );
            report.problem(
                format!("the server ended the connection after the handshake with alert {name}"),
                vec!["read the server's log for why".into()],
            );
        }
        Some(After::Closed) => report.check(
            "after",
            Status::Warn,
            "the server closed the connection right after the handshake",
        ),
        Some(After::Failed(error)) => {
            report.check("after", Status::Warn, format!("reading failed: {error}"))
        }
        None => {}
    }
}

fn explain_chain(inputs: &Inputs, handshake: &Handshake, report: &mut Report) {
    let now = SystemTime::now();
    for der in &handshake.chain {
        match inspect(der) {
            Ok(info) => {
                let validity = match info.timeliness(now) {
                    Timeliness::Valid => {
                        format!("{} left", format_span(info.not_after - unix_seconds(now)))
                    }
                    Timeliness::Expired => format!(
                        "EXPIRED {} ago",
                        format_span(unix_seconds(now) - info.not_after)
                    ),
                    Timeliness::NotYetValid => format!(
                        "NOT YET VALID, starts in {}",
                        format_span(info.not_before - unix_seconds(now))
                    ),
                };
                report.chain.push(CertView {
                    names: info.names(),
                    not_before: format_time(info.not_before),
                    not_after: format_time(info.not_after),
                    validity,
                    subject: info.subject,
                    issuer: info.issuer,
                    serial: info.serial,
                    key: info.key,
                    ca: info.is_ca,
                });
            }
            Err(error) => report.chain.push(CertView {
                subject: format!("(unreadable: {error})"),
                issuer: String::new(),
                names: Vec::new(),
                not_before: String::new(),
                not_after: String::new(),
                validity: String::new(),
                serial: String::new(),
                key: String::new(),
                ca: false,
            }),
        }
    }
    let roots = match &inputs.ca {
        Some(path) => format!("--ca {}", path.display()),
        None => "the Mozilla roots".to_owned(),
    };
    let problems = check_chain(
        &handshake.chain,
        &inputs.roots,
        Purpose::Server,
        Some(&inputs.server_name),
        now,
    );
    if problems.is_empty() {
        report.check(
            "certificate",
            Status::Ok,
            format!(
                "chain verified against {roots}, valid for \"{}\"",
                report.server_name
            ),
        );
        return;
    }
    let summary: Vec<&str> = problems
        .iter()
        .map(|problem| {
            let text = problem_head(problem);
            text.split(':').next().unwrap_or(text)
        })
        .collect();
    report.check(
        "certificate",
        Status::Fail,
        format!("{} (verified against {roots})", summary.join(", ")),
    );
    for problem in &problems {
        let fixes = chain_fixes(problem, inputs, &roots);
        report.problem(problem.to_string(), fixes);
    }
}

fn problem_head(problem: &ChainProblem) -> &'static str {
    match problem {
        ChainProblem::Empty => "no certificate",
        ChainProblem::Unreadable { .. } => "unreadable certificate",
        ChainProblem::Expired { .. } => "expired",
        ChainProblem::NotYetValid { .. } => "not yet valid",
        ChainProblem::SelfSigned { .. } => "self-signed",
        ChainProblem::UntrustedRoot { .. } => "untrusted root",
        ChainProblem::UnknownIssuer { .. } => "unknown issuer",
        ChainProblem::DifferentKey { .. } => "wrong CA",
        ChainProblem::NameMismatch { .. } => "name mismatch",
        ChainProblem::WrongPurpose { .. } => "wrong purpose",
        ChainProblem::CaAsLeaf { .. } => "CA as leaf",
        ChainProblem::Other(_) => "does not verify",
    }
}

fn chain_fixes(problem: &ChainProblem, inputs: &Inputs, roots: &str) -> Vec<String> {
    let host = inputs.server_name.to_str();
    let reissue = format!(
        "for development: keel certs issue --ca certs/ca --out certs/server --dns {host} --force"
    );
    match problem {
        ChainProblem::Expired { index: 0, .. } => vec![
            "renew the server's certificate and load the new one (a Keel server re-reads its \
             files; others may need a restart)"
                .into(),
            reissue,
        ],
        ChainProblem::Expired { .. } => vec![
            "renew that intermediate CA certificate and the certificates it issued, and serve \
             the new chain"
                .into(),
        ],
        ChainProblem::NotYetValid { .. } => vec![
            "check the clocks of this machine and of the server (NTP), or wait until the \
             certificate's start"
                .into(),
        ],
        ChainProblem::SelfSigned { .. } => vec![
            "trust that exact certificate with --ca SERVER.pem, or better, serve one issued by a \
             CA (keel certs dev --out certs)"
                .into(),
        ],
        ChainProblem::UntrustedRoot { subject } => vec![format!(
            "if you trust \"{subject}\", pass its certificate with --ca (now: {roots})"
        )],
        ChainProblem::UnknownIssuer {
            issuer,
            leaf_only: true,
            ..
        } => vec![
            format!(
                "if \"{issuer}\" is an intermediate CA (missing intermediate): the server must \
                 send it after its own certificate; its certificate file holds the leaf, then \
                 the intermediates (cat server.pem intermediate.pem > chain.pem)"
            ),
            format!(
                "if \"{issuer}\" is a root CA: it is not one you trust; pass it with --ca \
                 (now: {roots})"
            ),
        ],
        ChainProblem::UnknownIssuer { issuer, .. } => vec![format!(
            "pass the root CA \"{issuer}\" with --ca (now: {roots}), or serve a chain from a CA \
             you trust"
        )],
        ChainProblem::DifferentKey { issuer } => vec![format!(
            "pass the current \"{issuer}\" certificate with --ca, or reissue the server's \
             certificate from the CA in {roots}"
        )],
        ChainProblem::NameMismatch { presented, .. } => {
            let mut fixes = Vec::new();
            if let Some(name) = presented.iter().find_map(|name| {
                name.strip_prefix("DNS:")
                    .or_else(|| name.strip_prefix("IP:"))
            }) {
                fixes.push(format!(
                    "connect by a name the certificate has: --server-name {}",
                    name.trim_start_matches("*.")
                ));
            }
            let flag = if host.parse::<std::net::IpAddr>().is_ok() {
                "--ip"
            } else {
                "--dns"
            };
            fixes.push(format!(
                "or reissue the certificate for \"{host}\": keel certs issue ... {flag} {host}"
            ));
            fixes
        }
        ChainProblem::WrongPurpose { .. } => {
            vec!["reissue it for servers: keel certs issue ... --server (or --both)".into()]
        }
        ChainProblem::CaAsLeaf { .. } => {
            vec!["serve a certificate issued by that CA, not the CA certificate itself".into()]
        }
        ChainProblem::Empty | ChainProblem::Unreadable { .. } | ChainProblem::Other(_) => {
            vec!["check the server's certificate file".into()]
        }
    }
}

/// What is wrong with our client certificate, by what we can see of it.
fn client_fixes(inputs: &Inputs, hints: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut fixes = Vec::new();
    let infos: Vec<_> = inputs
        .client_chain
        .iter()
        .filter_map(|der| inspect(der).ok())
        .collect();
    let now = SystemTime::now();
    for info in &infos {
        match info.timeliness(now) {
            Timeliness::Expired => fixes.push(format!(
                "\"{}\" expired on {}: reissue it",
                info.subject,
                format_time(info.not_after)
            )),
            Timeliness::NotYetValid => fixes.push(format!(
                "\"{}\" is not valid before {}: check the clocks",
                info.subject,
                format_time(info.not_before)
            )),
            Timeliness::Valid => {}
        }
    }
    if let Some(leaf) = infos.first() {
        if leaf.extended_usage.is_some_and(|(_, client)| !client) {
            fixes.push(format!(
                "\"{}\" is not for client authentication: reissue it with --client (or --both)",
                leaf.subject
            ));
        }
    }
    if let Some(top) = infos.last() {
        let known = hints
            .iter()
            .any(|(_, name)| *name == top.issuer_der || *name == top.subject_der);
        if !hints.is_empty() && !known {
            let accepted: Vec<String> = hints
                .iter()
                .map(|(name, _)| format!("\"{name}\""))
                .collect();
            fixes.push(format!(
                "your certificate chains to \"{}\", but the server accepts certificates issued \
                 by {}: use a certificate from one of those",
                top.issuer,
                accepted.join(", ")
            ));
        }
    }
    if fixes.is_empty() {
        fixes.push(
            "make sure the server's client CA bundle holds the CA that issued your certificate, \
             and that its authorization policy allows your identity"
                .into(),
        );
    }
    fixes
}

/// Whether a TLS connection failed on plaintext, and which protocol the server speaks.
fn plaintext(handshake: &Handshake, request: &Request) -> Option<&'static str> {
    let first = handshake.first_bytes.as_slice();
    if matches!(first.first(), Some(0x15 | 0x16)) {
        return None; // A TLS record: the server speaks TLS.
    }
    plaintext_protocol(first)
        .or_else(|| plaintext_protocol(&plaintext_answer(request.address, request.timeout)))
}

fn alpn_fix() -> String {
    "enable h2 in the server's ALPN protocols (rustls: ServerConfig::alpn_protocols = \
     [b\"h2\"]; Go: tls.Config.NextProtos = []string{\"h2\"}; Keel's servers offer it), and \
     in any proxy that terminates TLS in front of it"
        .into()
}

/// Alerts a server sends when it refuses a client certificate.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::CertificateRequired
    )
}

/// An alert by its name in the TLS specifications (`certificate_required`).
fn alert_name(alert: AlertDescription) -> String {
    let name = match alert {
        AlertDescription::UnknownCA => return "unknown_ca".into(),
        other => format!("{other:?}"),
    };
    let mut snake = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if index > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

fn alert_meaning(alert: &str) -> &'static str {
    match alert {
        "unknown_ca" => "it was issued by a CA the server does not trust",
        "bad_certificate" => {
            "the server could not use it (malformed, a bad signature, or not for client \
             authentication)"
        }
        "certificate_expired" => "it expired, or is not valid yet, by the server's clock",
        "certificate_revoked" => "it was revoked",
        "unsupported_certificate" => "its type or key usage is not one the server accepts",
        "certificate_unknown" => "the server could not verify it",
        "access_denied" => "it is valid, but its identity is not allowed in",
        "decrypt_error" => "its signature did not verify (do --cert and --key belong together?)",
        _ => "the server refused it",
    }
}
