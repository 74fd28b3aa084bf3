//! Compiles contracts from the workspace's `proto/` directory inside a build script.
//!
//! One call does three things, with no system `protoc`:
//! 1. parses the `.proto` files with [protox] (a pure-Rust compiler);
//! 2. writes the encoded `FileDescriptorSet` to `$OUT_DIR/<name>.bin`, encoded by protox
//!    itself so that custom options such as `google.api.http` survive (decoding into
//!    `prost_types` and re-encoding would silently drop them: prost keeps no unknown fields);
//! 3. generates messages, clients and servers with [tonic_prost_build].
//!
//! Every `bytes` field is generated as `bytes::Bytes`, not `Vec<u8>`: decoding then slices
//! the field out of the buffer the message arrived in (tonic's receive buffer, through
//! `DecodeBuf::copy_to_bytes`) instead of allocating and copying it, which is what large
//! payloads cost (docs/BENCHMARKS.md, "Zero-copy bytes fields"). Setting
//! `KEEL_BUILD_BYTES=vec` in the build's environment generates `Vec<u8>` instead, for
//! measuring the difference (scripts/bench-bytes.sh); only crates whose contracts have
//! `bytes` fields are rebuilt when it changes.
//!
//! ```no_run
//! // build.rs
//! keel_build::Protos::new("interop", &["helloworld/helloworld.proto"]).compile().unwrap();
//! ```
//! The crate then embeds the set with
//! `include_bytes!(concat!(env!("OUT_DIR"), "/interop.bin"))`.

use std::error::Error;
use std::path::{Path, PathBuf};

use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// A set of contracts to compile, named after the descriptor file it produces.
#[derive(Debug, Clone)]
pub struct Protos {
    name: String,
    files: Vec<String>,
    root: Option<PathBuf>,
    includes: Vec<PathBuf>,
    extern_paths: Vec<(String, String)>,
    transport: bool,
}

impl Protos {
    /// Files are paths relative to the `proto/` root, e.g. `grpc/testing/test.proto`.
    pub fn new(name: &str, files: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            root: None,
            includes: Vec::new(),
            extern_paths: Vec::new(),
            transport: true,
        }
    }

    /// Uses `root` as the import root instead of the nearest ancestor `proto/` directory.
    ///
    /// ```
    /// let protos = keel_build::Protos::new("health", &["grpc/health/v1/health.proto"])
    ///     .root("../../proto");
    /// assert!(!protos.encoded_descriptor_set()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Adds a further import directory, searched after the root.
    ///
    /// ```
    /// // helloworld/helloworld.proto is not under the root, but under the include.
    /// let protos = keel_build::Protos::new("hello", &["helloworld/helloworld.proto"])
    ///     .root("../../proto/grpc")
    ///     .include("../../proto");
    /// assert!(!protos.encoded_descriptor_set()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn include(mut self, dir: impl Into<PathBuf>) -> Self {
        self.includes.push(dir.into());
        self
    }

    /// Maps a proto package to Rust types generated elsewhere (as `prost_build::Config::extern_path`).
    /// It changes the generated code only, not the descriptor set.
    ///
    /// ```
    /// // build.rs: the well-known types come from prost-types instead of being generated.
    /// let protos = keel_build::Protos::new("health", &["grpc/health/v1/health.proto"])
    ///     .root("../../proto")
    ///     .extern_path(".google.protobuf", "::prost_types");
    /// assert!(!protos.encoded_descriptor_set()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn extern_path(mut self, proto_path: &str, rust_path: &str) -> Self {
        self.extern_paths
            .push((proto_path.to_owned(), rust_path.to_owned()));
        self
    }

    /// Whether generated clients get tonic's `connect(endpoint)` convenience, which needs
    /// tonic's `transport` feature (default true). A library crate that must build without
    /// that feature (so its users need not compile tonic's server) turns it off. It changes
    /// the generated code only, not the descriptor set.
    ///
    /// ```
    /// // build.rs of a library that builds without tonic's transport feature.
    /// let protos = keel_build::Protos::new("health", &["grpc/health/v1/health.proto"])
    ///     .root("../../proto")
    ///     .transport(false);
    /// assert!(!protos.encoded_descriptor_set()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn transport(mut self, enabled: bool) -> Self {
        self.transport = enabled;
        self
    }

    /// Compiles, writes `$OUT_DIR/<name>.bin` and the generated Rust modules.
    pub fn compile(self) -> Result<(), Box<dyn Error>> {
        let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
        let compiler = self.parse()?;
        std::fs::write(
            out_dir.join(format!("{}.bin", self.name)),
            compiler.encode_file_descriptor_set(),
        )?;

        let set = compiler.file_descriptor_set();
        let mut builder = tonic_prost_build::configure().build_transport(self.transport);
        if self.has_bytes_fields(&set) && bytes_as_bytes()? {
            builder = builder.bytes(".");
        }
        for (proto, rust) in &self.extern_paths {
            builder = builder.extern_path(proto, rust);
        }
        builder.compile_fds(set)?;
        Ok(())
    }

    /// Whether code generated here has a `bytes` field: files of extern packages (and the
    /// well-known types, which come from `prost_types`) generate none.
    fn has_bytes_fields(&self, set: &FileDescriptorSet) -> bool {
        fn any_bytes(message: &DescriptorProto) -> bool {
            message.field.iter().any(|f| f.r#type() == Type::Bytes)
                || message.nested_type.iter().any(any_bytes)
        }
        let generated = |package: &str| {
            let package = format!(".{package}");
            !std::iter::once(".google.protobuf")
                .chain(self.extern_paths.iter().map(|(proto, _)| proto.as_str()))
                .any(|ext| package == ext || package.starts_with(&format!("{ext}.")))
        };
        set.file
            .iter()
            .filter(|file| generated(file.package()))
            .any(|file| file.message_type.iter().any(any_bytes))
    }
}

/// `KEEL_BUILD_BYTES`: unset or `bytes` generates `bytes::Bytes`, `vec` generates `Vec<u8>`.
fn bytes_as_bytes() -> Result<bool, Box<dyn Error>> {
    println!("cargo:rerun-if-env-changed=KEEL_BUILD_BYTES");
    match std::env::var("KEEL_BUILD_BYTES").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("bytes") => Ok(true),
        Ok("vec") => Ok(false),
        Ok(other) => {
            Err(format!("KEEL_BUILD_BYTES must be `bytes` or `vec`, not `{other}`").into())
        }
        Err(error) => Err(format!("KEEL_BUILD_BYTES: {error}").into()),
    }
}

impl Protos {
    /// The encoded `FileDescriptorSet`, exactly as [`Protos::compile`] writes it.
    pub fn encoded_descriptor_set(&self) -> Result<Vec<u8>, Box<dyn Error>> {
        Ok(self.parse()?.encode_file_descriptor_set())
    }

    fn parse(&self) -> Result<protox::Compiler, Box<dyn Error>> {
        let root = match &self.root {
            Some(root) => root.clone(),
            None => find_proto_root(Path::new(&std::env::var("CARGO_MANIFEST_DIR")?))?,
        };
        println!("cargo:rerun-if-changed={}", root.display());
        let mut compiler = protox::Compiler::new(std::iter::once(&root).chain(&self.includes))?;
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(&self.files)?;
        Ok(compiler)
    }
}

/// The nearest `proto/` directory at or above `start`: the workspace's contracts.
fn find_proto_root(start: &Path) -> Result<PathBuf, Box<dyn Error>> {
    start
        .ancestors()
        .map(|dir| dir.join("proto"))
        .find(|candidate| candidate.is_dir())
        .ok_or_else(|| format!("no proto/ directory above {}", start.display()).into())
}
