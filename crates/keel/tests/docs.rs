//! The documents that describe the code keep up with it:
//! - the per-request layer order is written once, in `src/server/stack.rs`; the list in
//!   `src/layer/mod.rs` and the diagram in docs/ARCHITECTURE.md must say the same;
//! - ARCHITECTURE.md's crate table names every crate of the workspace with its size, within
//!   a quarter of what `src/` holds.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The layers `server/stack.rs` stacks, outermost first, by type name without `Layer`:
/// each `.layer(x)` of the chain, where `x` is a layer type or a variable bound to one.
fn stacked_layers() -> Vec<String> {
    let source = read("crates/keel/src/server/stack.rs");
    let at = source
        .find("ServiceBuilder::new()")
        .expect("stack.rs builds its layers with ServiceBuilder::new()");
    let (before, chain) = source.split_at(at);
    let chain = &chain[..chain.find(';').expect("the chain ends")];
    chain
        .split(".layer(")
        .skip(1)
        .map(|call| {
            let argument = call[..call.find(')').unwrap()].trim();
            let type_name = if argument.starts_with(char::is_uppercase) {
                argument.to_owned()
            } else {
                let binding = format!("let {argument} = ");
                // The binding in force where the chain starts: the last one before it.
                let at = before
                    .rfind(&binding)
                    .unwrap_or_else(|| panic!("stack.rs binds `{argument}`"));
                let rhs = &before[at + binding.len()..];
                let rhs = &rhs[..rhs.find(';').unwrap()];
                let end = rhs.find("Layer::").unwrap_or_else(|| {
                    panic!("`{argument}` is bound to a `...Layer::` value: {rhs}")
                });
                let start = rhs[..end]
                    .rfind(|c: char| !c.is_alphanumeric())
                    .map_or(0, |i| i + 1);
                format!("{}Layer", &rhs[start..end])
            };
            service_of(&type_name)
        })
        .collect()
}

/// The service a layer type produces: the `type Service = X<S>` of its `Layer` impl, found
/// in the crates that define Keel's layers.
fn service_of(layer: &str) -> String {
    let header = format!("Layer<S> for {layer} {{");
    for dir in ["crates/keel/src", "crates/keel-telemetry/src"] {
        for file in rust_files(&repo().join(dir)) {
            let text = fs::read_to_string(&file).unwrap();
            if let Some(at) = text.find(&header) {
                let rest = &text[at..];
                let service = rest
                    .split("type Service = ")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{layer}'s Layer impl names its Service"));
                return service[..service.find('<').unwrap()].to_owned();
            }
        }
    }
    panic!("no `impl Layer<S> for {layer}` found")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `Track`, put on by the connection driver, then what the stack adds.
fn documented_order() -> Vec<String> {
    let mut order = vec!["Track".to_owned()];
    order.extend(stacked_layers());
    order
}

#[test]
fn the_layer_lists_match_the_stack() {
    let stacked = stacked_layers();
    assert!(
        stacked.len() >= 5 && stacked[0] == "Observe",
        "parsed {stacked:?} from stack.rs"
    );
    let expected = documented_order();

    let module_doc = read("crates/keel/src/layer/mod.rs");
    let listed: Vec<String> = module_doc
        .lines()
        .filter_map(|line| {
            let item = line.strip_prefix("//! ")?;
            let (number, rest) = item.split_once(". ")?;
            number.parse::<u32>().ok()?;
            let name = rest.trim_start_matches('[').strip_prefix('`')?;
            Some(name[..name.find('`')?].to_owned())
        })
        .collect();
    assert_eq!(listed, expected, "layer/mod.rs's numbered list");

    let architecture = read("docs/ARCHITECTURE.md");
    let diagram = architecture
        .lines()
        .find(|line| line.trim_start().starts_with("Track ─►"))
        .expect("ARCHITECTURE.md's diagram has the `Track ─► ...` row");
    let drawn: Vec<String> = diagram
        .split("─►")
        .map(|name| name.trim().to_owned())
        .filter(|name| name != "Routes")
        .collect();
    assert_eq!(drawn, expected, "ARCHITECTURE.md's diagram");
}

fn source_lines(dir: &Path) -> usize {
    rust_files(dir)
        .iter()
        .map(|file| fs::read_to_string(file).unwrap().lines().count())
        .sum()
}

#[test]
fn the_crate_table_lists_every_crate_with_its_size() {
    let mut actual = BTreeMap::new();
    for group in ["crates", "services"] {
        for entry in fs::read_dir(repo().join(group)).unwrap() {
            let dir = entry.unwrap().path();
            let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let name = manifest
                .lines()
                .find_map(|line| line.strip_prefix("name = "))
                .unwrap()
                .trim_matches('"')
                .to_owned();
            actual.insert(name, source_lines(&dir.join("src")));
        }
    }

    let architecture = read("docs/ARCHITECTURE.md");
    let mut documented = BTreeMap::new();
    for line in architecture.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, name, lines, purpose, _] = cells[..]
            && let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`'))
            && !name.contains('/')
            && let Ok(lines) = lines.replace(',', "").parse::<usize>()
        {
            assert!(!purpose.is_empty(), "{name} has a purpose");
            documented.insert(name.to_owned(), lines);
        }
    }
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "ARCHITECTURE.md's crate table names every crate, and only those"
    );
    for (name, lines) in &actual {
        let said = documented[name];
        let off = said.abs_diff(*lines) as f64 / *lines as f64;
        assert!(
            off <= 0.25,
            "ARCHITECTURE.md says {name} has {said} lines; src/ has {lines}: update the table"
        );
    }
}
