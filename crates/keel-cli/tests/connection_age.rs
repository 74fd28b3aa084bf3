//! Max connection age with an independent client: grpc-core (Python grpcio) sees the GOAWAYs,
//! reconnects, and not one RPC fails, while the server counts the GOAWAYs it sent.

mod common;
#[path = "common/python.rs"]
mod python;

use std::time::Duration;

use common::KeelServe;

#[tokio::test]
async fn goaway_at_max_age_loses_no_rpc_of_a_grpc_core_client() {
    let server = KeelServe::start(&[
        "--set",
        "connection.max_age=500ms",
        "--set",
        "connection.max_age_grace=5s",
    ]);
    let addr = server.grpc;
    let load =
        tokio::task::spawn_blocking(move || python::python_load(addr, Duration::from_secs(4), 16))
            .await
            .unwrap();
    let text = common::scrape(server.admin).await;
    let goaways = common::metric(
        &text,
        "keel_server_goaways_total{listener=\"grpc\",reason=\"max_age\"}",
    )
    .unwrap_or(0.0);
    let accepted = common::metric(
        &text,
        "keel_server_connections_accepted_total{listener=\"grpc\"}",
    )
    .unwrap();

    assert!(
        goaways >= 4.0,
        "expected a GOAWAY about every 500 ms, got {goaways}"
    );
    assert!(
        accepted >= 4.0,
        "the client should have reconnected; accepted {accepted}"
    );
    assert!(load.ok > 1000, "load too small to mean anything: {load:?}");
    assert_eq!(
        load.failed,
        0,
        "RPCs failed across GOAWAY: {load:?}\nserver log:\n{}",
        server.logs()
    );
}
