//! Which exposition format a scrape gets: Prometheus text 0.0.4 or OpenMetrics 1.0.0, chosen
//! from the request's `Accept` header as the official client libraries choose
//! (client_golang's `expfmt.NegotiateIncludingOpenMetrics`).
//!
//! Clauses are taken by quality, highest first (a wildcard after a specific type of the same
//! quality, otherwise in the order sent); the first one naming a format Keel writes wins.
//! `q=0` means "not acceptable". No header, `*/*`, `text/*` or nothing Keel writes gets
//! text 0.0.4, the format every scraper reads, as client_golang does: an unusual `Accept`
//! still gets metrics rather than a 406. Prometheus asks for OpenMetrics first, and so gets
//! exemplars.

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: no `# EOF`, `# UNIT`, exemplars or `_created`.
    PrometheusText,
    /// OpenMetrics text 1.0.0, with exemplars (the trace ids on the latency histogram).
    OpenMetrics,
}

impl Format {
    /// The format to answer a request whose `Accept` header is `accept` with (every `Accept`
    /// field of the request joined by commas, as HTTP allows).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut clauses: Vec<Clause<'_>> = accept
            .unwrap_or_default()
            .split(',')
            .filter_map(Clause::parse)
            .filter(|clause| clause.quality > 0.0)
            .collect();
        // Stable: clauses of equal quality and specificity keep the order they were sent in.
        clauses.sort_by(|a, b| {
            b.quality
                .total_cmp(&a.quality)
                .then(a.wildcard().cmp(&b.wildcard()))
        });
        clauses
            .iter()
            .find_map(Clause::format)
            .unwrap_or(Self::PrometheusText)
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One media range of an `Accept` header, e.g. `application/openmetrics-text;version=1.0.0;q=0.5`.
struct Clause<'a> {
    media_type: &'a str,
    version: Option<&'a str>,
    quality: f32,
}

impl<'a> Clause<'a> {
    /// `None` for an empty or malformed range (no `/`); a malformed `q` counts as 0.
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(';').map(str::trim);
        let media_type = parts.next().filter(|t| t.contains('/'))?;
        let mut clause = Clause {
            media_type,
            version: None,
            quality: 1.0,
        };
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => clause.quality = value.parse().unwrap_or(0.0),
                "version" => clause.version = Some(value),
                _ => {}
            }
        }
        Some(clause)
    }

    fn wildcard(&self) -> bool {
        self.media_type.ends_with("/*")
    }

    /// The format this range asks for, if Keel writes it.
    fn format(&self) -> Option<Format> {
        let is = |name: &str| self.media_type.eq_ignore_ascii_case(name);
        if is("application/openmetrics-text") {
            // 0.0.1 was the draft of 1.0.0, and Prometheus reads both with one parser.
            matches!(self.version, None | Some("1.0.0" | "0.0.1")).then_some(Format::OpenMetrics)
        } else if is("text/plain") {
            matches!(self.version, None | Some("0.0.4")).then_some(Format::PrometheusText)
        } else if is("text/*") || is("*/*") {
            Some(Format::PrometheusText)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Format::{self, OpenMetrics, PrometheusText};

    #[track_caller]
    fn check(accept: Option<&str>, expected: Format) {
        assert_eq!(Format::negotiate(accept), expected, "Accept: {accept:?}");
    }

    #[test]
    fn defaults_to_prometheus_text() {
        check(None, PrometheusText);
        check(Some(""), PrometheusText);
        check(Some("*/*"), PrometheusText);
        check(Some("text/*"), PrometheusText);
        check(Some("text/html,application/xhtml+xml"), PrometheusText);
        check(Some("application/json"), PrometheusText);
        check(Some("garbage;;,"), PrometheusText);
    }

    #[test]
    fn takes_the_format_asked_for() {
        check(Some("text/plain"), PrometheusText);
        check(Some("text/plain; version=0.0.4"), PrometheusText);
        check(Some("application/openmetrics-text"), OpenMetrics);
        check(
            Some("application/openmetrics-text; version=1.0.0"),
            OpenMetrics,
        );
        check(
            Some("Application/OpenMetrics-Text;Version=\"0.0.1\""),
            OpenMetrics,
        );
        // Versions Keel does not write are skipped.
        check(
            Some("application/openmetrics-text; version=2.0.0"),
            PrometheusText,
        );
        check(
            Some("text/plain; version=1.0.0, application/openmetrics-text; q=0.1"),
            OpenMetrics,
        );
    }

    #[test]
    fn follows_quality_values() {
        check(
            Some("text/plain;q=0.5, application/openmetrics-text;q=0.9"),
            OpenMetrics,
        );
        check(
            Some("application/openmetrics-text;q=0.5, text/plain;q=0.9"),
            PrometheusText,
        );
        // Equal quality: order sent, wildcards last.
        check(
            Some("application/openmetrics-text, text/plain"),
            OpenMetrics,
        );
        check(
            Some("text/plain, application/openmetrics-text"),
            PrometheusText,
        );
        check(Some("*/*, application/openmetrics-text"), OpenMetrics);
        check(
            Some("*/*;q=0.9, application/openmetrics-text;q=0.5"),
            PrometheusText,
        );
        // q=0 and a malformed q mean "not this".
        check(Some("application/openmetrics-text;q=0"), PrometheusText);
        check(Some("application/openmetrics-text;q=high"), PrometheusText);
    }

    /// The headers Prometheus scrapes with: 2.x, 3.x, and 3.x with native histograms
    /// (protobuf first, which Keel does not write).
    #[test]
    fn prometheus_gets_openmetrics() {
        for accept in [
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=0.0.4;q=0.1,*/*;q=0",
        ] {
            check(Some(accept), OpenMetrics);
        }
    }
}
