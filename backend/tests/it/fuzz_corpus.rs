//! The fuzzers' smoke run in `make test`, on stable: every input of `fuzz/corpus/TARGET` (what
//! `scripts/fuzz.sh` learned with libFuzzer, minimised) through its target again, then seeded
//! random mutations of them. A target that panics fails the test; hangs are the fuzzer's to find
//! (PDFs, which can hang the parser, parse in a limited child process in the server).

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::common::workspace;
use attune_core::fuzz_targets;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = workspace().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{} holds {} inputs", dir.display(), files.len());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// A copy of `input` with a few random bytes changed, inserted or removed.
fn mutate(input: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = if out.is_empty() { 0 } else { rng.random_range(0..out.len()) };
        match rng.random_range(0..3) {
            0 if !out.is_empty() => out[at] = rng.random(),
            1 => out.insert(at, rng.random()),
            _ if !out.is_empty() => {
                out.remove(at);
            }
            _ => out.push(rng.random()),
        }
    }
    out
}

fn replay(target: &str, mutations: usize, run: impl Fn(&[u8]), keep: impl Fn(&[u8]) -> bool) {
    let inputs = corpus(target);
    for input in &inputs {
        run(input);
    }
    let mut rng = StdRng::seed_from_u64(15);
    let mut done = 0;
    while done < mutations {
        let input = mutate(&inputs[rng.random_range(0..inputs.len())], &mut rng);
        if keep(&input) {
            run(&input);
            done += 1;
        }
    }
}

#[test]
fn documents() {
    // Mutated PDFs may stall the parser (that is why the server parses them in a child process):
    // mutations here are text and Markdown only; the corpus's PDFs all finished under libFuzzer.
    replay("document", 2000, fuzz_targets::document, |input| input.first().is_some_and(|k| k % 3 != 0));
}

#[test]
fn synthesis_outputs() {
    replay("synthesis_output", 3000, fuzz_targets::synthesis_output, |_| true);
}

#[test]
fn triples_files() {
    let scratch = tempfile::tempdir().unwrap();
    let run = |input: &[u8]| fuzz_targets::triples_file(input, scratch.path());
    replay("triples_file", 1000, run, |_| true);
}

#[test]
fn gguf_metadata() {
    replay("gguf_metadata", 3000, fuzz_targets::gguf_metadata, |_| true);
}

#[test]
fn client_messages() {
    let decode = |input: &[u8]| {
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = attune::serve::decode_client_message(text);
        }
    };
    replay("client_message", 3000, decode, |_| true);
}

#[test]
fn the_corpus_folders_are_the_fuzz_targets() {
    let targets = std::fs::read_dir(workspace().join("fuzz/fuzz_targets")).unwrap().flatten();
    for target in targets {
        let name = target.path().file_stem().unwrap().to_string_lossy().into_owned();
        assert!(Path::new(&workspace().join("fuzz/corpus").join(&name)).is_dir(), "no corpus for {name}");
    }
}
