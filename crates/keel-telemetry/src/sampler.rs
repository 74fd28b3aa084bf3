//! Which traces are recorded: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, decided
//! the same way for Keel's RPC spans and for the SDK's spans (an application's own).

use opentelemetry::trace::TraceId;

use super::TelemetryError;

/// A sampling policy, per the OpenTelemetry SDK environment specification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Sampler {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// The traces whose id falls in the given fraction.
    Ratio(f64),
    /// The parent's decision when there is a parent, else the root policy.
    ParentBased(Root),
}

/// What a parent-based sampler does for a trace's first span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl Sampler {
    /// The policy `OTEL_TRACES_SAMPLER` (`name`) and `OTEL_TRACES_SAMPLER_ARG` (`arg`) name;
    /// `parentbased_always_on` when unset.
    pub(crate) fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, TelemetryError> {
        let ratio = || -> Result<f64, TelemetryError> {
            let Some(arg) = arg else { return Ok(1.0) };
            match arg.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err(TelemetryError(format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?} is not a fraction between 0 and 1 \
                     (e.g. 0.1 to keep one trace in ten)"
                ))),
            }
        };
        Ok(
            match name.map(str::trim).unwrap_or("parentbased_always_on") {
                "always_on" => Self::AlwaysOn,
                "always_off" => Self::AlwaysOff,
                "traceidratio" => Self::Ratio(ratio()?),
                "parentbased_always_on" => Self::ParentBased(Root::AlwaysOn),
                "parentbased_always_off" => Self::ParentBased(Root::AlwaysOff),
                "parentbased_traceidratio" => Self::ParentBased(Root::Ratio(ratio()?)),
                other => {
                    return Err(TelemetryError(format!(
                        "OTEL_TRACES_SAMPLER={other:?} is not supported; use always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off or \
                     parentbased_traceidratio"
                    )));
                }
            },
        )
    }

    /// True when a span of `trace_id` is recorded; `parent` is the parent's sampled flag,
    /// if the span has a parent.
    pub(crate) fn samples(&self, parent: Option<bool>, trace_id: TraceId) -> bool {
        match (self, parent) {
            (Self::AlwaysOn, _) => true,
            (Self::AlwaysOff, _) => false,
            (Self::Ratio(ratio), _) => in_ratio(*ratio, trace_id),
            (Self::ParentBased(_), Some(sampled)) => sampled,
            (Self::ParentBased(Root::AlwaysOn), None) => true,
            (Self::ParentBased(Root::AlwaysOff), None) => false,
            (Self::ParentBased(Root::Ratio(ratio)), None) => in_ratio(*ratio, trace_id),
        }
    }

    /// The same policy for the OpenTelemetry SDK.
    pub(crate) fn to_sdk(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler as Sdk;
        match self {
            Self::AlwaysOn => Sdk::AlwaysOn,
            Self::AlwaysOff => Sdk::AlwaysOff,
            Self::Ratio(ratio) => Sdk::TraceIdRatioBased(ratio),
            Self::ParentBased(root) => Sdk::ParentBased(Box::new(match root {
                Root::AlwaysOn => Sdk::AlwaysOn,
                Root::AlwaysOff => Sdk::AlwaysOff,
                Root::Ratio(ratio) => Sdk::TraceIdRatioBased(ratio),
            })),
        }
    }
}

/// The trace-id ratio rule the SDK applies: the id's low 63 bits, below `ratio` · 2⁶³. Both
/// sides deciding alike keeps a trace whole whichever side starts it.
fn in_ratio(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().expect("8 bytes"));
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanKind;
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample as _};

    use super::*;

    #[test]
    fn names_and_arguments_parse_or_say_what_is_accepted() {
        assert_eq!(
            Sampler::parse(None, None).unwrap(),
            Sampler::ParentBased(Root::AlwaysOn)
        );
        assert_eq!(
            Sampler::parse(Some("traceidratio"), Some("0.25")).unwrap(),
            Sampler::Ratio(0.25)
        );
        assert_eq!(
            Sampler::parse(Some("parentbased_traceidratio"), None).unwrap(),
            Sampler::ParentBased(Root::Ratio(1.0))
        );
        let error = Sampler::parse(Some("traceidratio"), Some("2")).unwrap_err();
        assert!(
            error.to_string().contains("OTEL_TRACES_SAMPLER_ARG"),
            "{error}"
        );
        let error = Sampler::parse(Some("jaeger_remote"), None).unwrap_err();
        assert!(
            error.to_string().contains("parentbased_traceidratio"),
            "{error}"
        );
    }

    #[test]
    fn parents_decide_for_parent_based_policies_only() {
        let id = TraceId::from(u128::MAX);
        let never_root = Sampler::ParentBased(Root::AlwaysOff);
        assert!(never_root.samples(Some(true), id));
        assert!(!never_root.samples(None, id));
        assert!(!Sampler::ParentBased(Root::AlwaysOn).samples(Some(false), id));
        assert!(Sampler::AlwaysOn.samples(Some(false), id));
        assert!(!Sampler::Ratio(0.0).samples(Some(true), id));
    }

    #[test]
    fn ratio_decisions_match_the_sdk_and_keep_the_fraction() {
        let ratio = 0.1;
        let sdk = Sampler::Ratio(ratio).to_sdk();
        let mut kept = 0;
        let mut state = 0x1234_5678_u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let id = TraceId::from(u128::from(state) << 64 | u128::from(state.rotate_left(17)));
            let ours = Sampler::Ratio(ratio).samples(None, id);
            let theirs = sdk
                .should_sample(None, id, "s", &SpanKind::Server, &[], &[])
                .decision
                == SamplingDecision::RecordAndSample;
            assert_eq!(ours, theirs, "decisions differ for {id}");
            kept += usize::from(ours);
        }
        assert!(
            (1_700..2_300).contains(&kept),
            "kept {kept} of 20000 at 10%"
        );
    }
}
