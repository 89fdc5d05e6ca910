//! Checks the invariants ARCHITECTURE.md states as absences, by reading the sources and Cargo.lock
//! (in the manner of rust-analyzer's tidy tests), so they cannot silently erode. The layering
//! itself is Cargo's to enforce: `attune-core` does not list tokio, axum, sqlx or reqwest, so its
//! code cannot name them; the lock-file test below makes sure none arrives transitively either.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::common::workspace;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The source folders of the backend's three crates.
const CRATE_SOURCES: [&str; 4] = ["backend/kernels/src", "backend/core/src", "backend/server/src", "backend/src"];

fn backend_files() -> Vec<PathBuf> {
    CRATE_SOURCES.iter().flat_map(|d| rust_files(&workspace().join(d))).collect()
}

/// Lines of `files` that mention any of `needles` (comments included: they name the same thing).
fn offending(files: &[PathBuf], needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if needles.iter().any(|n| line.contains(n)) {
                hits.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    hits
}

/// Every package `root` depends on, directly or not, by Cargo.lock (dev-dependencies included).
fn dependency_closure(root: &str) -> BTreeSet<String> {
    let lock = fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let name = package.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_owned();
        let mut names = Vec::new();
        if let Some(list) = package.split("dependencies = [").nth(1) {
            for entry in list.split(']').next().unwrap().split(',') {
                let entry = entry.trim().trim_matches('"');
                if let Some(dep) = entry.split(' ').next().filter(|d| !d.is_empty()) {
                    names.push(dep.to_owned());
                }
            }
        }
        deps.entry(name).or_default().extend(names);
    }
    assert!(deps.contains_key(root), "{root} is not in Cargo.lock");
    let (mut seen, mut todo) = (BTreeSet::new(), vec![root.to_owned()]);
    while let Some(next) = todo.pop() {
        for dep in deps.get(&next).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn the_core_crate_reaches_no_async_runtime_storage_or_http_stack() {
    let closure = dependency_closure("attune-core");
    let forbidden: Vec<&str> =
        ["tokio", "axum", "sqlx", "reqwest", "hyper"].into_iter().filter(|f| closure.contains(*f)).collect();
    assert!(forbidden.is_empty(), "attune-core depends (maybe through others) on {forbidden:?}");
    assert!(closure.contains("candle-core"), "the closure is computed: {closure:?}");
    // And the crates above it do reach them, so the check above can fail.
    assert!(dependency_closure("attune-server").contains("tokio"));
}

#[test]
fn the_kernels_crate_reaches_no_tensor_library() {
    let closure = dependency_closure("attune-kernels");
    let forbidden: Vec<&str> =
        ["candle-core", "candle-nn", "gemm", "tokio"].into_iter().filter(|f| closure.contains(*f)).collect();
    assert!(forbidden.is_empty(), "attune-kernels depends (maybe through others) on {forbidden:?}");
    assert!(closure.contains("rayon"), "the closure is computed: {closure:?}");
    assert!(dependency_closure("attune-core").contains("attune-kernels"));
}

#[test]
fn only_store_issues_sql() {
    let store = workspace().join("backend/server/src/store");
    let files: Vec<PathBuf> = backend_files().into_iter().filter(|f| !f.starts_with(&store)).collect();
    let hits = offending(&files, &["sqlx::query", "sqlx::migrate", "SELECT ", "INSERT ", "UPDATE ", "DELETE FROM"]);
    assert!(hits.is_empty(), "SQL outside store/:\n{}", hits.join("\n"));
}

#[test]
fn only_serve_and_shared_know_the_wire_format() {
    let serve = workspace().join("backend/server/src/serve");
    let files: Vec<PathBuf> = backend_files()
        .into_iter()
        .filter(|f| !f.starts_with(&serve) && !f.ends_with("backend/src/cli/serve.rs"))
        .collect();
    let hits = offending(&files, &["axum", "\"/api", "/ws\"", "ServerMessage", "ClientMessage", "ErrorBody"]);
    assert!(hits.is_empty(), "wire format outside serve/:\n{}", hits.join("\n"));
}

#[test]
fn shared_depends_on_serde_only() {
    let manifest = fs::read_to_string(workspace().join("shared/Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    let names: Vec<&str> =
        deps.lines().filter_map(|l| l.split(['=', '.']).next()).map(str::trim).filter(|n| !n.is_empty()).collect();
    assert_eq!(names, ["serde"], "shared/ may depend on serde only");
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let root = workspace();
    let files: Vec<PathBuf> = CRATE_SOURCES
        .iter()
        .chain(&["backend/tests", "backend/examples", "shared/src", "frontend/src", "frontend/tests"])
        .flat_map(|d| rust_files(&root.join(d)))
        .collect();
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading //! line:\n{}", missing.join("\n"));
}

#[test]
fn unsafe_code_lives_only_in_the_binarys_runtime_tuning_its_sandbox_limit_the_allocator_calls_and_the_cuda_kernel_launches()
 {
    let root = workspace();
    let files: Vec<PathBuf> = CRATE_SOURCES
        .iter()
        .chain(&["shared/src", "frontend/src"])
        .flat_map(|d| rust_files(&root.join(d)))
        .filter(|f| {
            !f.ends_with("backend/src/main.rs")
                && !f.ends_with("backend/src/cli/sandbox.rs")
                && !f.ends_with("backend/core/src/model/cuda_ops.rs")
                && !f.ends_with("backend/core/src/memory.rs")
        })
        .collect();
    let hits = offending(&files, &["unsafe", "allow(unsafe_code)"]);
    assert!(
        hits.is_empty(),
        "unsafe outside main.rs's tune_runtime, cli/sandbox.rs's limit, memory.rs's allocator calls and model/cuda_ops.rs:\n{}",
        hits.join("\n")
    );
    for (file, functions) in
        [("backend/src/main.rs", 1), ("backend/src/cli/sandbox.rs", 1), ("backend/core/src/memory.rs", 2)]
    {
        let source = fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(source.matches("#[allow(unsafe_code)]").count(), functions, "{file}: one function may use unsafe");
    }
}

/// A crate's modules (`a::b` for `a/b.rs` or `a/b/mod.rs`) and the modules each one names through
/// `crate::` or `super::` paths outside its tests.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let module_of = |file: &Path| -> String {
        let relative = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
            parts.pop();
        }
        parts.join("::")
    };
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    // The deepest known module a path names: `a::b::Thing` → `a::b`.
    let resolve = |segments: &[&str]| -> Option<String> {
        (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| modules.contains(m))
    };
    let mut imports = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let text = fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let parent: Vec<&str> = if file.ends_with("mod.rs") {
            module.split("::").collect()
        } else {
            module.split("::").collect::<Vec<_>>().split_last().map(|(_, p)| p.to_vec()).unwrap_or_default()
        };
        let mut named = BTreeSet::new();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            for (at, _) in code.match_indices(prefix) {
                if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let rest = &code[at + prefix.len()..];
                let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                let mut segments = base.clone();
                segments.extend(path.split("::").filter(|s| !s.is_empty()));
                if let Some(target) =
                    resolve(&segments).filter(|t| *t != module && !module.starts_with(&format!("{t}::")))
                {
                    named.insert(target);
                }
            }
        }
        imports.insert(module, named);
    }
    imports
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_run_in_a_circle() {
    // The check can fail: sources whose modules name each other (as engine/jobs.rs and
    // engine/train_job.rs once did) give a circle; their tests do not count.
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("engine");
    fs::create_dir_all(&engine).unwrap();
    fs::write(dir.path().join("lib.rs"), "//! x\npub mod engine;\n").unwrap();
    fs::write(engine.join("mod.rs"), "//! x\npub mod jobs;\npub mod train_job;\n").unwrap();
    fs::write(engine.join("jobs.rs"), "//! x\nfn f() { super::train_job::run(); }\n").unwrap();
    fs::write(engine.join("train_job.rs"), "//! x\nuse crate::engine::jobs::Context;\n").unwrap();
    let cycle = find_cycle(&module_imports(dir.path())).expect("a circle");
    assert!(cycle.contains(&"engine::jobs".to_owned()) && cycle.contains(&"engine::train_job".to_owned()));
    fs::write(engine.join("jobs.rs"), "//! x\n#[cfg(test)]\nmod tests { use super::super::train_job; }\n").unwrap();
    assert_eq!(find_cycle(&module_imports(dir.path())), None, "imports in tests are not a circle");
    for src in CRATE_SOURCES {
        let imports = module_imports(&workspace().join(src));
        assert!(!imports.is_empty(), "{src}: modules were read");
        // (The kernels crate's one module imports nothing of its own crate.)
        assert!(imports.len() <= 2 || imports.values().any(|n| !n.is_empty()), "{src}: imports were read");
        if let Some(cycle) = find_cycle(&imports) {
            panic!("{src}: modules import each other in a circle: {}", cycle.join(" -> "));
        }
    }
}
