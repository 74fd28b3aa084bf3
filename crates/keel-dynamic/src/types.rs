//! The message types every dynamic client knows without asking the server: protobuf's
//! well-known types and google.rpc's status and error details, so that error details and
//! `Any` fields holding them print as JSON even when the server's descriptors lack them.

use prost::Message as _;
use prost_reflect::DescriptorPool;

/// A pool of the well-known types and google/rpc's status and error details.
pub fn standard() -> DescriptorPool {
    let mut pool = DescriptorPool::new();
    add_standard(&mut pool);
    pool
}

/// Adds the standard types to `pool` where it lacks them; the server's own files win.
pub fn add_standard(pool: &mut DescriptorPool) {
    // A clash adds nothing (the pool rolls back), which only costs those types their JSON.
    let _ =
        pool.add_file_descriptor_protos(DescriptorPool::global().file_descriptor_protos().cloned());
    // tonic-types names its files `status.proto` and `error_details.proto`, so they clash
    // by content, not name, with a server's `google/rpc/status.proto`: one at a time, each
    // clash costs only its own file.
    let rpc = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET);
    for file in rpc.map(|set| set.file).unwrap_or_default() {
        let _ = pool.add_file_descriptor_proto(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_types_are_all_there() {
        let pool = standard();
        for name in [
            "google.protobuf.Duration",
            "google.protobuf.Any",
            "google.rpc.Status",
            "google.rpc.ErrorInfo",
            "google.rpc.BadRequest",
            "google.rpc.RetryInfo",
            "google.rpc.PreconditionFailure",
            "google.rpc.ResourceInfo",
            "google.rpc.QuotaFailure",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_servers_own_google_rpc_status_does_not_keep_the_details_out() {
        let mut pool = DescriptorPool::global();
        let status = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .unwrap()
            .file
            .into_iter()
            .find(|file| file.name() == "status.proto")
            .unwrap();
        let server_copy = prost_types::FileDescriptorProto {
            name: Some("google/rpc/status.proto".to_owned()),
            ..status
        };
        pool.add_file_descriptor_proto(server_copy).unwrap();
        add_standard(&mut pool);
        assert!(pool.get_message_by_name("google.rpc.ErrorInfo").is_some());
        let status = pool.get_message_by_name("google.rpc.Status").unwrap();
        assert_eq!(status.parent_file().name(), "google/rpc/status.proto");
    }

    #[test]
    fn the_servers_files_are_kept() {
        let mut pool = DescriptorPool::decode(keel_interop::FILE_DESCRIPTOR_SET).unwrap();
        let before = pool.files().len();
        add_standard(&mut pool);
        assert!(pool.get_service_by_name("helloworld.Greeter").is_some());
        assert!(pool.get_message_by_name("google.rpc.ErrorInfo").is_some());
        assert!(pool.files().len() > before);
    }
}
