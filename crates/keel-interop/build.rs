//! Generates Greeter and TestService code and the `interop.bin` descriptor set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    keel_build::Protos::new(
        "interop",
        &["helloworld/helloworld.proto", "grpc/testing/test.proto"],
    )
    .compile()
}
