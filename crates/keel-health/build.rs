//! Generates grpc.health.v1 (with `List`) and the `health.bin` descriptor set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    keel_build::Protos::new("health", &["grpc/health/v1/health.proto"]).compile()
}
