//! Tracker's gRPC service on every store, called by grpcio from PyPI (a client the project
//! did not write; tests/grpc/tracker_client.py). Skipped, with a line saying so, where python
//! has no grpcio (`scripts/servers.sh` install_tools installs it).

#[path = "serve/server.rs"]
mod server;
mod support;

use server::{Opts, Server};
use support::{Backend, Env};

fn grpcio() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn tracker_grpc_service_answers_grpcio(backend: Backend) {
    if !grpcio() {
        return support::skip("python3 has no grpcio/grpcio-tools");
    }
    let Some(env) = Env::try_new(backend, "serve-grpc") else { return };
    let opts = Opts {
        extra: vec!["--grpc-listen".into(), "127.0.0.1:0".into()],
        ..Opts::default()
    };
    let srv = Server::start_with(&env, opts);
    let service = env.lock("production-deployment");
    let script = format!("{}/tests/grpc/tracker_client.py", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([srv.grpc.as_deref().unwrap(), server::TOKEN, service.as_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unauthenticated"]["code"], "UNAUTHENTICATED", "{v}");
    assert_eq!(v["no_token_list"]["code"], "UNAUTHENTICATED", "{v}");
    let created = &v["create"]["lock"];
    assert_eq!(
        (created["service"].as_str(), created["who"].as_str()),
        (Some(service.as_str()), Some("ci-pipeline-123")),
        "{v}"
    );
    assert!(created["created_at"].as_i64().unwrap() > 1_600_000_000, "{v}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(v["conflict"]["code"], "ALREADY_EXISTS", "{v}");
    assert!(v["conflict"]["details"].as_str().unwrap().contains("lock already exists"), "{v}");
    assert_eq!(&v["get"]["lock"], created, "{v}");
    assert!(v["list"]["ids"].as_array().unwrap().iter().any(|i| i == id), "{v}");
    assert!(v["list"]["total_count"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!((v["unlock"]["id"].as_str(), v["unlock"]["count"].as_i64()), (Some(id), Some(1)), "{v}");
    assert_eq!(v["unlock_again"]["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["get_after"]["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["bad_id"]["code"], "NOT_FOUND", "{v}");
    for bad in ["empty_service", "control_who", "bad_per_page"] {
        assert_eq!(v[bad]["code"], "INVALID_ARGUMENT", "{bad}: {v}");
    }
    // Over the 16 KiB message limit: tonic refuses it before decoding (OUT_OF_RANGE).
    assert_eq!(v["huge"]["code"], "OUT_OF_RANGE", "{v}");
    // The REST API and the CLI see the same store: the grant made over gRPC was released,
    // and none of the bad calls wrote one.
    assert!(env.record(&service).get("Owner").is_none());
    assert_eq!(srv.get(&format!("/api/v1alpha1/lock/{id}")).0, 404);
}

on_every_store!(tracker_grpc_service_answers_grpcio);
