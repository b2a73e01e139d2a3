//! Rust bindings (prost messages, tonic clients and servers) for the protocols
//! clientd speaks: REAPI v2, ByteStream, google.longrunning, google.rpc.Status,
//! the Bazel Remote Output Service and Bazel's remote cache-key scrubbing
//! config, and clientd's own Stats service. The `.proto` sources live in
//! `proto/` at the repository root.
//!
//! The generated code in `src/gen/` is checked in rather than produced by a
//! `build.rs`: building this crate needs neither `protoc` nor any code
//! generator, and Cargo and Bazel compile exactly the same sources. The test
//! `tests/generated_up_to_date.rs` regenerates the bindings (tonic-prost-build
//! with protox as the compiler) and fails if `src/gen/` is stale; refresh it with
//! `CLIENTD_REGENERATE=1 cargo test -p clientd-proto --test generated_up_to_date`.
//!
//! The module tree mirrors the proto packages so that the `super::` paths in
//! the generated code resolve. Well-known types are [`prost_types`].

pub use prost_types;

/// `build.*` proto packages.
pub mod build {
    /// `build.bazel.*` proto packages.
    pub mod bazel {
        /// `build.bazel.remote.*` proto packages.
        pub mod remote {
            /// `build.bazel.remote.execution.*` proto packages.
            pub mod execution {
                /// `build.bazel.remote.execution.v2`: the Remote Execution API.
                #[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
                pub mod v2 {
                    include!("gen/build.bazel.remote.execution.v2.rs");
                }
            }
        }

        /// `build.bazel.semver`: API version numbers.
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
        pub mod semver {
            include!("gen/build.bazel.semver.rs");
        }
    }
}

/// `google.*` proto packages (other than the well-known types).
pub mod google {
    /// `google.bytestream`: the ByteStream API.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
    pub mod bytestream {
        include!("gen/google.bytestream.rs");
    }

    /// `google.longrunning`: long-running operations.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
    pub mod longrunning {
        include!("gen/google.longrunning.rs");
    }

    /// `google.rpc`: the `Status` error model.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
    pub mod rpc {
        include!("gen/google.rpc.rs");
    }
}

/// `bazel_output_service`: the Bazel Remote Output Service.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod bazel_output_service {
    include!("gen/bazel_output_service.rs");
}

/// `bazel_output_service_rev2`: REv2-specific Output Service argument and
/// locator types (carried in `google.protobuf.Any`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod bazel_output_service_rev2 {
    include!("gen/bazel_output_service_rev2.rs");
}

/// `remote_scrubbing`: Bazel's `--experimental_remote_scrubbing_config` format.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod remote_scrubbing {
    include!("gen/remote_scrubbing.rs");
}

#[cfg(test)]
mod tests {
    // The generated service traits must exist under the expected names.
    #[allow(unused_imports)]
    use crate::bazel_output_service::bazel_output_service_server::BazelOutputService;
    #[allow(unused_imports)]
    use crate::build::bazel::remote::execution::v2::{
        action_cache_server::ActionCache, capabilities_server::Capabilities,
        content_addressable_storage_server::ContentAddressableStorage, execution_server::Execution,
    };
    #[allow(unused_imports)]
    use crate::google::bytestream::byte_stream_server::ByteStream;
    #[allow(unused_imports)]
    use crate::google::longrunning::operations_server::Operations;

    use crate::bazel_output_service::StartBuildRequest;
    use crate::bazel_output_service_rev2::StartBuildArgs;
    use crate::build::bazel::remote::execution::v2::{digest_function, Digest};
    use prost::Message;

    #[test]
    fn digest_round_trips() {
        let digest = Digest {
            hash: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
            size_bytes: 0,
        };
        let bytes = digest.encode_to_vec();
        assert_eq!(Digest::decode(bytes.as_slice()).unwrap(), digest);

        // Field numbers are part of the wire contract: hash = 1, size_bytes = 2.
        let small = Digest {
            hash: "ab".to_owned(),
            size_bytes: 3,
        };
        assert_eq!(small.encode_to_vec(), [0x0a, 0x02, b'a', b'b', 0x10, 0x03]);
    }

    #[test]
    fn start_build_request_round_trips() {
        let args = StartBuildArgs {
            remote_cache: "grpc://127.0.0.1:8980".to_owned(),
            instance_name: "main".to_owned(),
            digest_function: digest_function::Value::Sha256 as i32,
        };
        let request = StartBuildRequest {
            version: 1,
            output_base_id: "0123456789abcdef0123456789abcdef".to_owned(),
            build_id: "invocation".to_owned(),
            args: Some(prost_types::Any {
                type_url: "type.googleapis.com/bazel_output_service_rev2.StartBuildArgs".to_owned(),
                value: args.encode_to_vec(),
            }),
            output_path_prefix: "/home/user/bb_clientd/outputs".to_owned(),
            output_path_aliases: [("/exec/root/bazel-out".to_owned(), ".".to_owned())].into(),
        };
        let decoded = StartBuildRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, request);
        let any = decoded.args.unwrap();
        assert_eq!(StartBuildArgs::decode(any.value.as_slice()).unwrap(), args);
    }
}

/// `clientd.*` proto packages: clientd's own services.
pub mod clientd {
    /// `clientd.v1`: the Stats service behind `clientd stats`.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
    pub mod v1 {
        include!("gen/clientd.v1.rs");
    }
}
