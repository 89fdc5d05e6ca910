//! A run's settings: `TrainConfig` is the data, the models and the device plus shared's `Hyper`
//! (every other setting, with the only table of defaults), and the one mapping from them into the
//! loss, the optimiser, the schedule, the adapters, the data split and the loaded base models.

use std::path::PathBuf;

use attune_shared::{Hyper, TrainMode};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::data::{CsvColumns, Dataset, SplitOptions, load_dataset};
use super::error::{Result, TrainError};
use super::optim::{AdamWConfig, Schedule};
use super::step::LossConfig;
use crate::model::catalog::{DEFAULT_GENERATOR_NAME, DEFAULT_RETRIEVER_NAME};
use crate::model::generator::Generator;
use crate::model::lora::LoraConfig;
use crate::model::retriever::Retriever;

/// Everything that defines a run; saved as `config.json` in the run's folder, and read back by
/// `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data file (triples or the shared QA format).
    pub data: PathBuf,
    #[serde(default)]
    pub columns: CsvColumns,
    pub retriever: PathBuf,
    pub generator: PathBuf,
    /// `auto`, `cpu` or `cuda:N`.
    pub device: String,
    /// `auto`, `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// Passages hard negatives are mined from (JSONL with a `text` field, or one passage a line);
    /// `None`: the data's own corpus.
    #[serde(default)]
    pub corpus: Option<PathBuf>,
    pub mode: TrainMode,
    pub hyper: Hyper,
}

/// What a run trains on and with, beside its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInputs {
    pub data: PathBuf,
    pub columns: CsvColumns,
    pub retriever: PathBuf,
    pub generator: PathBuf,
    pub device: String,
    pub dtype: String,
    /// Passages hard negatives are mined from; `None`: the data's own corpus.
    pub corpus: Option<PathBuf>,
}

impl RunInputs {
    /// `data` with the default models under `models_dir`, DALM's CSV columns, on the best device.
    pub fn new(data: PathBuf, models_dir: &std::path::Path) -> Self {
        RunInputs {
            data,
            columns: CsvColumns::default(),
            retriever: models_dir.join(DEFAULT_RETRIEVER_NAME),
            generator: models_dir.join(DEFAULT_GENERATOR_NAME),
            device: "auto".into(),
            dtype: "auto".into(),
            corpus: None,
        }
    }
}

/// The model a run's adapter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Retriever,
    Generator,
}

impl TrainConfig {
    /// The one way a run's configuration is made: `hyper` validated, for `mode`, on `inputs`.
    pub fn from_hyper(hyper: &Hyper, mode: TrainMode, inputs: RunInputs) -> Result<Self> {
        let RunInputs { data, columns, retriever, generator, device, dtype, corpus } = inputs;
        let config =
            TrainConfig { data, columns, retriever, generator, device, dtype, corpus, mode, hyper: hyper.clone() };
        config.validate()?;
        Ok(config)
    }

    /// The run's settings checked by `Hyper::validate`, the one validation there is.
    pub fn validate(&self) -> Result<()> {
        self.hyper.validate().map_err(TrainError::Config)
    }

    pub fn loss(&self) -> LossConfig {
        LossConfig::new(self.mode, &self.hyper)
    }

    pub fn optimizer(&self) -> AdamWConfig {
        AdamWConfig::with_weight_decay(self.hyper.weight_decay)
    }

    pub fn split(&self) -> SplitOptions {
        SplitOptions::of(&self.hyper)
    }

    pub fn batch_size(&self) -> usize {
        self.hyper.batch_size as usize
    }

    pub fn grad_accum(&self) -> usize {
        self.hyper.grad_accum as usize
    }

    /// Optimiser steps in one pass over `examples` training examples.
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch_size() * self.grad_accum()).max(1)
    }

    /// The epochs a run over `examples` takes: `epochs`, or more when that many would make fewer
    /// than `min_steps` optimiser steps (at most 1000).
    pub fn epochs(&self, examples: usize) -> usize {
        let set = (self.hyper.epochs as usize).max(1);
        let for_min_steps = (self.hyper.min_steps as usize).div_ceil(self.steps_per_epoch(examples));
        set.max(for_min_steps.min(1000))
    }

    /// All epochs' steps, or `max_steps` when that comes first.
    pub fn total_steps(&self, examples: usize) -> usize {
        let by_epochs = self.epochs(examples) * self.steps_per_epoch(examples);
        self.hyper.max_steps.map_or(by_epochs, |m| (m as usize).min(by_epochs))
    }

    /// The learning rate over a run of `total` steps.
    pub fn schedule(&self, total: usize) -> Schedule {
        Schedule {
            peak: self.hyper.lr,
            warmup_steps: (total as f64 * self.hyper.warmup_ratio).round() as usize,
            total_steps: total,
            decay: self.hyper.decay,
        }
    }

    /// The run's LoRA settings for one model, naming its base model as PEFT does.
    pub fn lora(&self, part: Part) -> LoraConfig {
        let (targets, base) = match part {
            Part::Retriever => (&self.hyper.retriever_targets, &self.retriever),
            Part::Generator => (&self.hyper.generator_targets, &self.generator),
        };
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let h = &self.hyper;
        let mut lora = LoraConfig::new(h.lora_r as usize, h.lora_alpha, h.lora_dropout, &targets);
        lora.base_model_name_or_path = Some(base.display().to_string());
        lora
    }

    /// The run's data: its split, and only its first `max_train_examples` training rows.
    pub fn load_data(&self) -> Result<Dataset> {
        load_split(&self.data, &self.columns, &self.hyper)
    }
}

/// `path` read and split as a run with `hyper` splits it (training, held-out and corpus): the one
/// place the held-out split is computed, for the trainer, the run's counts and its evaluation.
pub fn load_split(path: &std::path::Path, columns: &CsvColumns, hyper: &Hyper) -> Result<Dataset> {
    let mut dataset = load_dataset(path, columns, SplitOptions::of(hyper))?;
    if let Some(max) = hyper.max_train_examples {
        dataset.train.truncate(max as usize);
    }
    Ok(dataset)
}

impl TrainConfig {
    /// Corpus passages mined per question: hard negatives for a retriever the run trains,
    /// distractors for a generator trained alone (RAFT); 0: the run mines nothing.
    pub fn mined_per_question(&self) -> usize {
        let per_question = match self.mode {
            TrainMode::Generator => self.hyper.distractors,
            _ => self.hyper.hard_negatives,
        };
        per_question as usize
    }
}

/// The base models a run trains (adapters are attached by the trainer).
pub struct BaseModels {
    pub retriever: Option<Retriever>,
    pub generator: Option<Generator>,
}

impl BaseModels {
    /// The models `config`'s mode trains (and the retriever that mines its distractors), on its device and in its precision; also the device.
    pub fn load(config: &TrainConfig) -> Result<(BaseModels, Device)> {
        let device = crate::model::device::select(&config.device)?;
        let dtype = crate::model::device::select_dtype(&config.dtype, &device)?;
        let load_error = |what: &str, path: &PathBuf, e: crate::model::ModelError| TrainError::Load {
            what: what.to_owned(),
            path: path.clone(),
            message: e.to_string(),
        };
        // Generator mode loads the retriever too when it mines distractors.
        let needs_retriever = config.mode.trains_retriever() || config.mined_per_question() > 0;
        let retriever = match needs_retriever {
            true => Some(
                Retriever::load_as(&config.retriever, &device, dtype)
                    .map_err(|e| load_error("retriever", &config.retriever, e))?,
            ),
            false => None,
        };
        let generator = match config.mode.trains_generator() {
            true => Some(
                Generator::load_as(&config.generator, &device, dtype)
                    .map_err(|e| load_error("generator", &config.generator, e))?,
            ),
            false => None,
        };
        Ok((BaseModels { retriever, generator }, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hyper: Hyper) -> Result<TrainConfig> {
        TrainConfig::from_hyper(&hyper, TrainMode::E2e, RunInputs::new("data.csv".into(), "models".as_ref()))
    }

    #[test]
    fn every_setting_maps_from_hyper() {
        let hyper = Hyper {
            top_k: 3,
            scale: 7.0,
            symmetric: true,
            max_passage_tokens: 96,
            weight_decay: 0.2,
            lr: 3e-4,
            warmup_ratio: 0.5,
            test_fraction: 0.3,
            seed: 9,
            lora_r: 4,
            ..Hyper::default()
        };
        let config = config(hyper).unwrap();
        let loss = config.loss();
        assert_eq!((loss.top_k, loss.contrastive.scale, loss.contrastive.symmetric), (3, 7.0, true));
        assert_eq!(loss.max_passage_tokens, 96);
        assert_eq!(config.optimizer().weight_decay, 0.2);
        assert_eq!(config.split(), SplitOptions { test_fraction: 0.3, seed: 9 });
        let schedule = config.schedule(10);
        assert_eq!((schedule.peak, schedule.warmup_steps), (3e-4, 5));
        let lora = config.lora(Part::Generator);
        assert_eq!(lora.r, 4);
        assert_eq!(lora.base_model_name_or_path.as_deref(), Some("models/SmolLM2-135M-Instruct"));
    }

    #[test]
    fn steps_follow_epochs_min_steps_and_max_steps() {
        let two = config(Hyper { batch_size: 3, grad_accum: 2, epochs: 2, min_steps: 0, ..Hyper::default() }).unwrap();
        assert_eq!(two.steps_per_epoch(10), 2);
        assert_eq!((two.epochs(10), two.total_steps(10)), (2, 4));
        let mut capped = two.clone();
        capped.hyper.max_steps = Some(3);
        assert_eq!(capped.total_steps(10), 3);
        // A small set gets more epochs, a large one keeps its own; 1000 epochs at most.
        let mut small = two;
        small.hyper.min_steps = 9;
        assert_eq!((small.epochs(10), small.total_steps(10)), (5, 10), "two steps an epoch: five epochs");
        assert_eq!((small.epochs(60), small.total_steps(60)), (2, 20), "ten steps an epoch: its own two");
        small.hyper.min_steps = 100_000;
        assert_eq!(small.epochs(10), 1000);
        small.hyper.max_steps = Some(7);
        assert_eq!(small.total_steps(10), 7, "max_steps still caps the run");
        // The default: at least 100 steps.
        let default = config(Hyper::default()).unwrap();
        assert_eq!((default.epochs(56), default.total_steps(56)), (25, 100), "56 triples, batch 16");
    }

    #[test]
    fn the_one_validation_refuses_bad_settings() {
        for (hyper, message) in [
            (Hyper { batch_size: 0, ..Hyper::default() }, "batch size"),
            (Hyper { warmup_ratio: 1.0, ..Hyper::default() }, "warmup ratio"),
            (Hyper { lora_dropout: 1.0, ..Hyper::default() }, "LoRA dropout"),
            (Hyper { generator_targets: vec![], ..Hyper::default() }, "generator_targets"),
        ] {
            let error = config(hyper).unwrap_err();
            assert!(error.to_string().contains(message), "{error}");
        }
    }
}
