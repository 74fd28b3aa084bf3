//! What `keel call` asks the server's reflection, over [`keel::reflect::ReflectionClient`]:
//! services, a service's methods, a method by name, a symbol to describe; each failure a
//! usage error that names what does exist.

use keel::reflect::{ReflectionClient, ReflectionError, ReflectionVersion};
use prost_reflect::{DescriptorPool, MethodDescriptor, ServiceDescriptor};
use tonic::metadata::MetadataMap;

use super::Failure;
use super::connect::Connection;
use super::describe::Symbol;

/// The server's reflection, as `keel call` uses it.
pub struct Reflection {
    client: ReflectionClient<Connection>,
}

impl Reflection {
    /// Reflection over `channel`, sending `metadata` with every request (servers that
    /// authenticate reflection need the same credentials as the call).
    pub fn new(channel: Connection, metadata: MetadataMap) -> Self {
        Self {
            client: ReflectionClient::new(channel).metadata(metadata),
        }
    }

    /// The protocol version the server answered with.
    pub fn version(&self) -> Option<ReflectionVersion> {
        self.client.version()
    }

    /// The server's services, sorted.
    pub async fn services(&mut self) -> Result<Vec<String>, Failure> {
        self.client.list_services().await.map_err(failed)
    }

    /// The service named `name`, with the descriptors of everything it uses.
    pub async fn service(&mut self, name: &str) -> Result<ServiceDescriptor, Failure> {
        let mut pool = match self.client.file_descriptors_for(name).await {
            Ok(pool) => pool,
            Err(error) if error.is_not_found() => return Err(self.no_service(name).await),
            Err(error) => return Err(failed(error)),
        };
        keel::dynamic::add_standard(&mut pool);
        match pool.get_service_by_name(name) {
            Some(service) => Ok(service),
            None => Err(self.no_service(name).await),
        }
    }

    /// The method named `pkg.Service/Method` or `pkg.Service.Method`.
    pub async fn method(&mut self, name: &str) -> Result<MethodDescriptor, Failure> {
        let (service_name, method_name) = split_method(name).ok_or_else(|| {
            Failure::Usage(format!(
                "`{name}` is not a method name; write pkg.Service/Method (see `list`)"
            ))
        })?;
        let service = self.service(service_name).await?;
        service
            .methods()
            .find(|method| method.name() == method_name)
            .ok_or_else(|| {
                let methods: Vec<_> = service.methods().map(|m| m.name().to_owned()).collect();
                Failure::Usage(format!(
                    "{service_name} has no method `{method_name}`; its methods: {}",
                    methods.join(", ")
                ))
            })
    }

    /// The service, method, message or enum named `name` (`pkg.Service/Method` too).
    pub async fn symbol(&mut self, name: &str) -> Result<Symbol, Failure> {
        let name = name.trim_start_matches('/').replace('/', ".");
        // Some servers index only top-level symbols: a method, nested type or field is
        // then found through the file of its parent.
        let mut pool = self.client.file_descriptors_for(&name).await;
        if let (Err(error), Some((parent, _))) = (&pool, name.rsplit_once('.'))
            && error.is_not_found()
        {
            pool = self.client.file_descriptors_for(parent).await;
        }
        let pool = match pool {
            Ok(pool) => pool,
            Err(error) if error.is_not_found() => return Err(unknown_symbol(&name)),
            Err(error) => return Err(failed(error)),
        };
        find_symbol(&pool, &name).ok_or_else(|| unknown_symbol(&name))
    }

    /// The usage error for an unknown service, naming the ones the server has.
    async fn no_service(&mut self, name: &str) -> Failure {
        match self.services().await {
            Ok(services) => Failure::Usage(format!(
                "the server has no service `{name}`; its services: {}",
                services.join(", ")
            )),
            Err(failure) => failure,
        }
    }
}

/// `pkg.Service/Method` or `pkg.Service.Method` (a leading `/` allowed) as service and method.
pub(crate) fn split_method(name: &str) -> Option<(&str, &str)> {
    let name = name.strip_prefix('/').unwrap_or(name);
    let (service, method) = name.split_once('/').or_else(|| name.rsplit_once('.'))?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

fn find_symbol(pool: &DescriptorPool, name: &str) -> Option<Symbol> {
    if let Some(service) = pool.get_service_by_name(name) {
        return Some(Symbol::Service(service));
    }
    if let Some(message) = pool.get_message_by_name(name) {
        return Some(Symbol::Message(message));
    }
    if let Some(enumeration) = pool.get_enum_by_name(name) {
        return Some(Symbol::Enum(enumeration));
    }
    let (service, method) = name.rsplit_once('.')?;
    pool.get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
        .map(Symbol::Method)
}

fn unknown_symbol(name: &str) -> Failure {
    Failure::Usage(format!(
        "the server knows no service, method, message or enum `{name}` (see `list`)"
    ))
}

/// A reflection failure other than "not found": the server is unreachable or its reflection
/// is missing or broken.
fn failed(error: ReflectionError) -> Failure {
    Failure::Other(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        let check = |name: &str, expect: Option<(&str, &str)>| {
            assert_eq!(split_method(name), expect, "{name}");
        };
        check("pkg.Service/Method", Some(("pkg.Service", "Method")));
        check("/pkg.Service/Method", Some(("pkg.Service", "Method")));
        check("pkg.Service.Method", Some(("pkg.Service", "Method")));
        check("a.b.Service.Method", Some(("a.b.Service", "Method")));
        check("Method", None);
        check("pkg.Service/", None);
        check("/Method", None);
        check("a/b/c", None);
    }

    #[test]
    fn symbols_of_every_kind() {
        let pool = DescriptorPool::decode(keel_interop::FILE_DESCRIPTOR_SET).unwrap();
        let kind = |name: &str| match find_symbol(&pool, name) {
            Some(Symbol::Service(_)) => "service",
            Some(Symbol::Method(_)) => "method",
            Some(Symbol::Message(_)) => "message",
            Some(Symbol::Enum(_)) => "enum",
            None => "none",
        };
        assert_eq!(kind("helloworld.Greeter"), "service");
        assert_eq!(kind("helloworld.Greeter.SayHello"), "method");
        assert_eq!(kind("helloworld.HelloRequest"), "message");
        assert_eq!(kind("grpc.testing.PayloadType"), "enum");
        assert_eq!(kind("helloworld.Greeter.Nope"), "none");
        assert_eq!(kind("nope"), "none");
    }
}
