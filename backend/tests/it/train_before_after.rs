//! The e2e training step's numbers before and after the CPU speed work (issue 18): losses and
//! gradient norms of the bench workload's first optimiser steps (batch 8 × top-4, the default
//! models, seed 7), with every dropout off, against those Attune computed before that work.
//!
//! The fixture `tests/fixtures/e2e_steps_before_issue_18.json` was written by this same file run
//! at commit 435110e3 (the last before issue 18), with
//! `ATTUNE_WRITE_FIXTURE=<path> cargo test -p attune-backend --test it train_before_after`.
//! Dropout is off because issue 18 changed how masks are drawn (hashed, per layer), by design.

use std::ops::ControlFlow;
use std::path::Path;

use attune::bench::train::{bench_config, workload};
use attune::model::device::select;
use attune::model::generator::Generator;
use attune::model::retriever::Retriever;
use attune::train::config::BaseModels;
use attune::train::trainer::{RunSetup, TrainEvent, Trainer};
use attune_shared::TrainMode;

use super::common::workspace;

const STEPS: usize = 2;

/// The default retriever with its config's dropout set to 0 (the weights linked, not copied).
fn retriever_without_dropout(models: &Path, dir: &Path) -> std::path::PathBuf {
    let source = models.join("all-MiniLM-L6-v2");
    let target = dir.join("all-MiniLM-L6-v2");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "config.json" {
            std::os::unix::fs::symlink(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(target.join("config.json"), config.to_string()).unwrap();
    target
}

/// `[loss, retriever loss, generator loss, gradient norm]` of each of the first steps.
fn first_steps() -> Vec<[f64; 4]> {
    let models = workspace().join("models");
    let dir = tempfile::tempdir().unwrap();
    let retriever = retriever_without_dropout(&models, dir.path());
    let generator = models.join("SmolLM2-135M-Instruct");
    let config = bench_config(&retriever, &generator, TrainMode::E2e, |h| {
        (h.top_k, h.max_answer_tokens) = (4, 32);
        (h.batch_size, h.max_steps) = (8, Some(STEPS as u32));
        (h.lora_dropout, h.seed) = (0.0, 7);
    })
    .unwrap();
    let device = select("cpu").unwrap();
    let models = BaseModels {
        retriever: Some(Retriever::load(&retriever, &device).unwrap()),
        generator: Some(Generator::load(&generator, &device).unwrap()),
    };
    let setup = RunSetup {
        config,
        out: dir.path().join("run"),
        models,
        train: workload(8 * STEPS),
        held_out: Vec::new(),
        corpus: Vec::new(),
        resume: None,
    };
    let mut steps = Vec::new();
    Trainer::new(setup)
        .unwrap()
        .run(&mut |event| {
            if let TrainEvent::Step(point) = event {
                let part = |v: Option<f64>| v.expect("e2e reports both losses");
                steps.push([point.loss, part(point.retriever_loss), part(point.generator_loss), point.grad_norm]);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(steps.len(), STEPS);
    steps
}

#[test]
fn the_e2e_steps_losses_and_gradient_norms_equal_those_before_the_speed_work() {
    let steps = first_steps();
    if let Ok(path) = std::env::var("ATTUNE_WRITE_FIXTURE") {
        std::fs::write(path, serde_json::to_string_pretty(&steps).unwrap() + "\n").unwrap();
        return;
    }
    let fixture = workspace().join("backend/tests/fixtures/e2e_steps_before_issue_18.json");
    let before: Vec<[f64; 4]> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let names = ["loss", "retriever loss", "generator loss", "gradient norm"];
    for (step, (now, then)) in steps.iter().zip(&before).enumerate() {
        for ((name, now), then) in names.iter().zip(now).zip(then) {
            let relative = (now - then).abs() / then.abs().max(1e-12);
            assert!(relative <= 1e-5, "step {}: {name} {now} against {then} before (relative {relative:e})", step + 1);
        }
    }
    assert_eq!(steps.len(), before.len());
}
