//! The Prometheus text format 0.0.4, written from the registry's Prometheus data model
//! (`io.prometheus.client.MetricFamily`, which prometheus-client fills with its
//! `prometheus_protobuf` encoder), as client_golang's `expfmt.MetricFamilyToText` writes it.
//!
//! prometheus-client itself writes only OpenMetrics. The data model already has the 0.0.4
//! conventions (a counter family is named with its `_total`, an info metric is a gauge named
//! `_info`); what 0.0.4 cannot carry is left out: units, exemplars, created timestamps and
//! native histogram buckets. Families without series are left out, as client_golang's
//! registry drops them before encoding. Floats are written as the OpenMetrics encoder writes
//! them (shortest round trip, `1.0` rather than `1`), so a bucket's `le` label, and so its
//! series, is the same whichever format Prometheus negotiated.

use std::fmt::Write;

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
    LabelPair, Metric, MetricFamily, MetricType,
};

/// Appends `families` to `out` in the text format 0.0.4.
pub(super) fn encode(out: &mut String, families: &[MetricFamily]) {
    for family in families.iter().filter(|f| !f.metric.is_empty()) {
        let name = &family.name;
        if !family.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            escape(out, &family.help, false);
            out.push('\n');
        }
        let kind = match family.r#type() {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram | MetricType::GaugeHistogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for metric in &family.metric {
            samples(out, name, metric);
        }
    }
}

/// The sample lines of one series.
fn samples(out: &mut String, name: &str, metric: &Metric) {
    let labels = &metric.label;
    if let Some(counter) = &metric.counter {
        sample(out, name, "", labels, None, &float(counter.value));
    }
    if let Some(gauge) = &metric.gauge {
        sample(out, name, "", labels, None, &float(gauge.value));
    }
    if let Some(untyped) = &metric.untyped {
        sample(out, name, "", labels, None, &float(untyped.value));
    }
    if let Some(summary) = &metric.summary {
        for quantile in &summary.quantile {
            let q = float(quantile.quantile);
            sample(
                out,
                name,
                "",
                labels,
                Some(("quantile", &q)),
                &float(quantile.value),
            );
        }
        sample(out, name, "_sum", labels, None, &float(summary.sample_sum));
        sample(
            out,
            name,
            "_count",
            labels,
            None,
            &summary.sample_count.to_string(),
        );
    }
    if let Some(histogram) = &metric.histogram {
        let mut has_inf = false;
        for bucket in &histogram.bucket {
            has_inf |= bucket.upper_bound == f64::INFINITY;
            let le = float(bucket.upper_bound);
            let count = bucket.cumulative_count.to_string();
            sample(out, name, "_bucket", labels, Some(("le", &le)), &count);
        }
        let count = histogram.sample_count.to_string();
        // The model's +Inf bucket is optional; the text format's is not.
        if !has_inf {
            sample(out, name, "_bucket", labels, Some(("le", "+Inf")), &count);
        }
        sample(
            out,
            name,
            "_sum",
            labels,
            None,
            &float(histogram.sample_sum),
        );
        sample(out, name, "_count", labels, None, &count);
    }
}

/// `name_suffix{labels,extra} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[LabelPair],
    extra: Option<(&str, &str)>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .chain(extra);
    for (i, (label, value)) in pairs.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(label);
        out.push_str("=\"");
        escape(out, value, true);
        out.push('"');
    }
    if !labels.is_empty() || extra.is_some() {
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Escapes `\` and line feeds (HELP text), and `"` too (label values).
fn escape(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn float(value: f64) -> String {
    if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else if value.is_nan() {
        "NaN".to_owned()
    } else {
        dtoa::Buffer::new().format_finite(value).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_protobuf;
    use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::HistogramWithExemplars;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        path: Path,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq)]
    struct Path(&'static str);

    impl EncodeLabelValue for Path {
        fn encode(
            &self,
            encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
        ) -> std::fmt::Result {
            std::fmt::Write::write_str(encoder, self.0)
        }
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Trace {
        trace_id: String,
    }

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        super::encode(&mut out, &prometheus_protobuf::encode(registry).unwrap());
        out
    }

    #[test]
    fn writes_every_kind_as_client_golang_does() {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        requests
            .get_or_create(&Labels {
                path: Path("a\\b \"c\"\nd"),
            })
            .inc_by(3);
        registry.register("requests", "Requests\\served\nso far", requests);
        let inflight = Gauge::<i64>::default();
        inflight.set(-2);
        registry.register("inflight", "In flight", inflight);
        let latency = HistogramWithExemplars::<Trace>::new([0.5, 1.0].into_iter());
        let trace = Trace {
            trace_id: "ab".repeat(16),
        };
        latency.observe(0.25, Some(trace), None);
        latency.observe(2.0, None, None);
        registry.register_with_unit("latency", "Latency", Unit::Seconds, latency);
        registry.register("build", "Build", Info::new(vec![("version", "1.2")]));
        registry.register("unused", "No series", Family::<Labels, Counter>::default());

        assert_eq!(
            render(&registry),
            "# HELP requests_total Requests\\\\served\\nso far.\n\
             # TYPE requests_total counter\n\
             requests_total{path=\"a\\\\b \\\"c\\\"\\nd\"} 3.0\n\
             # HELP inflight In flight.\n\
             # TYPE inflight gauge\n\
             inflight -2.0\n\
             # HELP latency_seconds Latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{le=\"0.5\"} 1\n\
             latency_seconds_bucket{le=\"1.0\"} 1\n\
             latency_seconds_bucket{le=\"+Inf\"} 2\n\
             latency_seconds_sum 2.25\n\
             latency_seconds_count 2\n\
             # HELP build_info Build.\n\
             # TYPE build_info gauge\n\
             build_info{version=\"1.2\"} 1.0\n"
        );
    }

    /// Series prometheus-client does not make, built by hand: a histogram without its +Inf
    /// bucket (optional in the model) and a summary.
    #[test]
    fn writes_what_the_model_allows() {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as model;
        let histogram = model::MetricFamily {
            name: "h".into(),
            r#type: model::MetricType::Histogram as i32,
            metric: vec![model::Metric {
                histogram: Some(model::Histogram {
                    sample_count: 4,
                    sample_sum: 9.5,
                    bucket: vec![model::Bucket {
                        cumulative_count: 3,
                        upper_bound: 1.0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let summary = model::MetricFamily {
            name: "s".into(),
            r#type: model::MetricType::Summary as i32,
            metric: vec![model::Metric {
                label: vec![model::LabelPair {
                    name: "x".into(),
                    value: "y".into(),
                }],
                summary: Some(model::Summary {
                    sample_count: 2,
                    sample_sum: f64::NAN,
                    quantile: vec![model::Quantile {
                        quantile: 0.5,
                        value: f64::NEG_INFINITY,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = String::new();
        super::encode(&mut out, &[histogram, summary]);
        assert_eq!(
            out,
            "# TYPE h histogram\n\
             h_bucket{le=\"1.0\"} 3\n\
             h_bucket{le=\"+Inf\"} 4\n\
             h_sum 9.5\n\
             h_count 4\n\
             # TYPE s summary\n\
             s{x=\"y\",quantile=\"0.5\"} -Inf\n\
             s_sum{x=\"y\"} NaN\n\
             s_count{x=\"y\"} 2\n"
        );
    }
}
