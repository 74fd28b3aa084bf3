//! What keel-gateway's integration tests share: the contracts of `testdata/`, compiled, and
//! the Python that holds the independent checkers (`tests/python/requirements.txt`).

use std::path::{Path, PathBuf};

use prost_reflect::DescriptorPool;

/// These files of `testdata/`, with their imports.
pub fn compile(files: &[&str]) -> DescriptorPool {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut compiler =
        protox::Compiler::new([format!("{root}/testdata"), format!("{root}/../../proto")])
            .expect("include paths");
    compiler.include_imports(true);
    compiler
        .open_files(files)
        .expect("the test contracts compile");
    compiler.descriptor_pool()
}

/// The Python that has `tests/python/requirements.txt` installed: `$KEEL_TEST_PYTHON` if set,
/// else `<workspace>/.venv/bin/python` (as `crates/keel-cli/tests/common/python.rs` finds it).
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("KEEL_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python: KEEL_TEST_PYTHON is unset and {} does not exist; \
         run scripts/test.sh (it creates .venv with tests/python/requirements.txt)",
        venv.display()
    );
    venv
}
