//! The descriptor set keeps custom options: reflection and the REST gateway read
//! `google.api.http` from it, and re-encoding through prost would drop them silently.

use prost_reflect::{DescriptorPool, Value};

#[test]
fn google_api_http_survives_in_the_encoded_set() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let encoded = keel_build::Protos::new("fixture", &["annotated.proto"])
        .root(fixtures)
        .include(proto)
        .encoded_descriptor_set()
        .expect("compiles");

    let pool = DescriptorPool::decode(encoded.as_slice()).expect("decodes");
    let method = pool
        .get_service_by_name("keel.fixture.v1.WidgetService")
        .expect("service")
        .methods()
        .next()
        .expect("method");
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("extension known");
    let options = method.options();
    assert!(options.has_extension(&http), "google.api.http was dropped");
    let rule = options.get_extension(&http);
    let rule = rule.as_message().expect("HttpRule");
    assert_eq!(
        rule.get_field_by_name("get").as_deref(),
        Some(&Value::String("/v1/widgets/{widget_id}".into()))
    );
    let bindings = rule
        .get_field_by_name("additional_bindings")
        .expect("bindings");
    assert_eq!(bindings.as_list().map(<[Value]>::len), Some(1));
}
