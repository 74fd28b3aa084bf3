//! Generates grpc.health.v1 (with `List`) and the `health.bin` descriptor set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No `HealthClient::connect`: it needs tonic's transport feature, which a client-only
    // user of keel-health (through keel-client) must not be made to compile.
    keel_build::Protos::new("health", &["grpc/health/v1/health.proto"])
        .transport(false)
        .compile()
}
