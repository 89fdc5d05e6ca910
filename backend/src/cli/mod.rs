//! Every command's orchestration (arguments, loading, progress bars, reports); `anyhow` lives here.

pub mod adapt;
pub mod bench;
pub mod corpus;
pub mod eval;
pub mod export;
pub mod fixtures;
pub mod model;
pub mod sandbox;
pub mod serve;
pub mod train;

use std::path::{Path, PathBuf};

/// The column names of a triples CSV (DALM's by default), shared by `train` and `eval`.
#[derive(clap::Args, Debug)]
pub struct ColumnArgs {
    #[arg(long, default_value = "Question")]
    question_column: String,
    #[arg(long, default_value = "Abstract")]
    passage_column: String,
    #[arg(long, default_value = "Answer")]
    answer_column: String,
}

impl ColumnArgs {
    pub fn columns(&self) -> attune::train::data::CsvColumns {
        attune::train::data::CsvColumns {
            passage: self.passage_column.clone(),
            question: self.question_column.clone(),
            answer: self.answer_column.clone(),
        }
    }
}

/// A model argument: `default` means the named folder inside the models directory.
pub fn model_path(value: &str, models_dir: &Path, default_folder: &str) -> PathBuf {
    if value == "default" { models_dir.join(default_folder) } else { PathBuf::from(value) }
}

pub use attune::progress_bar;
