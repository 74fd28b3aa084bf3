//! Where `keel gateway` gets its descriptors: the upstream's reflection (every service but
//! reflection and health, each with all its files) or a descriptor set file; narrowed to the
//! services asked for, and completed with the standard types.
//!
//! Files are always handled as the bytes they came in, never as re-encoded `prost_types`
//! values, so the `google.api.http` options survive.

use std::path::PathBuf;

use keel::client::Channel;
use keel::reflect::{ReflectionClient, ReflectionError};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};

use super::Failure;

/// Where descriptors come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The upstream's server reflection.
    Reflection(Channel),
    /// A `FileDescriptorSet` file, read again at every load.
    File(PathBuf),
}

/// How to load the descriptors the gateway serves.
#[derive(Debug, Clone)]
pub struct Descriptors {
    /// Where they come from.
    pub source: Source,
    /// The services to serve (all when empty).
    pub services: Vec<String>,
}

impl Descriptors {
    /// The services' descriptors with every file they need and the standard types.
    pub async fn load(&self) -> Result<DescriptorPool, Failure> {
        let pool = match &self.source {
            Source::Reflection(channel) => reflect(channel, &self.services).await?,
            Source::File(path) => read(path, &self.services)?,
        };
        let mut pool = if self.services.is_empty() {
            pool
        } else {
            keep_only(&pool, &self.services)?
        };
        keel::dynamic::add_standard(&mut pool);
        Ok(pool)
    }
}

/// Whether `service` is server plumbing rather than an API: reflection and health.
fn is_plumbing(service: &str) -> bool {
    service.starts_with("grpc.reflection.") || service.starts_with("grpc.health.v1.")
}

/// The files of the `wanted` services (all but plumbing when empty), asked by reflection.
async fn reflect(channel: &Channel, wanted: &[String]) -> Result<DescriptorPool, Failure> {
    let mut client = ReflectionClient::new(channel.clone());
    let offered = client.list_services().await.map_err(upstream)?;
    let names: Vec<&String> = if wanted.is_empty() {
        offered.iter().filter(|name| !is_plumbing(name)).collect()
    } else {
        for name in wanted {
            if !offered.contains(name) {
                return Err(no_service("the upstream", name, &offered));
            }
        }
        wanted.iter().collect()
    };
    let mut pool = DescriptorPool::new();
    for name in names {
        let files = client.file_descriptors_for(name).await.map_err(upstream)?;
        // Files already in the pool (shared imports) are skipped.
        pool.decode_file_descriptor_set(files.encode_to_vec().as_slice())
            .map_err(|error| {
                Failure::Other(format!(
                    "the upstream's files for {name} do not fit with its other files: {error}"
                ))
            })?;
    }
    Ok(pool)
}

/// The descriptor set in `path`, which must define every `wanted` service.
fn read(path: &PathBuf, wanted: &[String]) -> Result<DescriptorPool, Failure> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|error| Failure::Usage(format!("--descriptor-set {shown}: {error}")))?;
    let pool = DescriptorPool::decode(bytes.as_slice()).map_err(|error| {
        Failure::Usage(format!(
            "--descriptor-set {shown} is not a FileDescriptorSet with all its imports: {error}"
        ))
    })?;
    let defined: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
    for name in wanted {
        if !defined.contains(name) {
            return Err(no_service(&shown.to_string(), name, &defined));
        }
    }
    Ok(pool)
}

/// `pool` with only the `kept` services: the others are taken out of their files (every
/// other definition stays, and so does every option, as the bytes were).
fn keep_only(pool: &DescriptorPool, kept: &[String]) -> Result<DescriptorPool, Failure> {
    let broken = |error: &dyn std::fmt::Display| {
        Failure::Other(format!(
            "the descriptors cannot be narrowed to --service: {error}"
        ))
    };
    let file_type = DescriptorPool::global()
        .get_message_by_name("google.protobuf.FileDescriptorProto")
        .ok_or_else(|| broken(&"descriptor.proto is missing"))?;
    let mut set = Vec::new();
    for file in pool.files() {
        let keep: Vec<bool> = file
            .services()
            .map(|service| kept.iter().any(|name| name == service.full_name()))
            .collect();
        let encoded = file.encode_to_vec();
        if keep.iter().all(|keep| *keep) {
            prost::encoding::bytes::encode(1, &encoded, &mut set);
            continue;
        }
        // Unknown fields (the options' extensions) are kept by a dynamic message.
        let mut proto = DynamicMessage::decode(file_type.clone(), encoded.as_slice())
            .map_err(|error| broken(&error))?;
        if let Some(Value::List(services)) = proto.get_field_by_name_mut("service") {
            let mut keep = keep.iter();
            services.retain(|_| keep.next().copied().unwrap_or(false));
        }
        prost::encoding::bytes::encode(1, &proto.encode_to_vec(), &mut set);
    }
    DescriptorPool::decode(set.as_slice()).map_err(|error| broken(&error))
}

fn upstream(error: ReflectionError) -> Failure {
    Failure::Other(format!("the upstream's {error}"))
}

fn no_service(place: &str, name: &str, services: &[String]) -> Failure {
    Failure::Usage(format!(
        "--service {name}: {place} has no such service; its services: {}",
        services.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use keel_gateway::Rules;

    use super::*;

    fn payments() -> DescriptorPool {
        let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
        let mut compiler = protox::Compiler::new([proto]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("payments/v1/payments.proto").unwrap();
        DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap()
    }

    fn routes(pool: &DescriptorPool) -> Vec<String> {
        let rules = Rules::load(pool, &[]).unwrap();
        let mut services: Vec<String> = pool
            .services()
            .filter(|s| {
                !rules
                    .services_without_rules()
                    .contains(&s.full_name().to_owned())
            })
            .map(|s| s.full_name().to_owned())
            .collect();
        services.sort();
        services
    }

    #[test]
    fn narrowing_keeps_the_named_services_with_their_http_options() {
        let pool = payments();
        assert_eq!(
            routes(&pool),
            ["payments.v1.AccountService", "payments.v1.PaymentService"]
        );
        let narrowed = keep_only(&pool, &["payments.v1.PaymentService".to_owned()]).unwrap();
        assert_eq!(routes(&narrowed), ["payments.v1.PaymentService"]);
        assert!(
            narrowed
                .get_service_by_name("payments.v1.AccountService")
                .is_none()
        );
        assert!(
            narrowed
                .get_message_by_name("payments.v1.Account")
                .is_some()
        );
        assert_eq!(
            Rules::load(&narrowed, &[]).unwrap().len(),
            Rules::load(&pool, &["payments.v1.PaymentService".to_owned()])
                .unwrap()
                .len()
        );
    }

    #[test]
    fn plumbing_is_not_served() {
        assert!(is_plumbing("grpc.reflection.v1.ServerReflection"));
        assert!(is_plumbing("grpc.reflection.v1alpha.ServerReflection"));
        assert!(is_plumbing("grpc.health.v1.Health"));
        assert!(!is_plumbing("payments.v1.PaymentService"));
        assert!(!is_plumbing("grpc.testing.TestService"));
    }

    #[test]
    fn a_file_that_is_not_a_descriptor_set_is_a_usage_error() {
        let path =
            std::env::temp_dir().join(format!("keel_gateway_garbage_{}", std::process::id()));
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        let error = read(&path, &[]).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(error, Failure::Usage(_)), "{error}");
        assert!(
            error.to_string().contains("not a FileDescriptorSet"),
            "{error}"
        );
        let missing = read(&PathBuf::from("/nonexistent/keel.binpb"), &[]).unwrap_err();
        assert!(matches!(missing, Failure::Usage(_)), "{missing}");
    }
}
