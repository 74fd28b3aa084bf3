//! Generates the payments.v1 code and the `payments.bin` descriptor set, and makes Cargo
//! rebuild when a migration changes (`sqlx::migrate!` embeds them at compile time).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    keel_build::Protos::new("payments", &["payments/v1/payments.proto"])
        // google.rpc.Status in per-item results: tonic-types' type, the one the error model
        // builds, so a status travels from the error model into a response without conversion.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile()
}
