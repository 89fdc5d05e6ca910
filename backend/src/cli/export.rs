//! `attune export RUN`: a run's tuned models as PEFT adapters, merged Hugging Face folders, or a
//! merged GGUF generator with an Ollama `Modelfile`.

use std::path::PathBuf;
use std::time::Duration;

use attune::model::export::{ExportFormat, RunModels, export_run};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The run folder (`attune train --out`, or `<data-dir>/runs/run-ID` of the web app).
    run: PathBuf,
    /// `peft` (the adapters), `merged` (base + adapter folded, Hugging Face folders) or `gguf` (the merged generator).
    #[arg(long, value_parser = ["peft", "merged", "gguf"])]
    format: String,
    /// GGUF precision of the 2-D weights: f32, f16, q8_0 or q4_k.
    #[arg(long, default_value = "f16")]
    quant: String,
    /// The folder to write (must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    // --quant has a default, so it is passed on for the gguf format only.
    let quant = (args.format == "gguf").then_some(args.quant.as_str());
    let format = ExportFormat::parse(&args.format, quant).map_err(|message| anyhow::anyhow!("--{message}"))?;
    let models = RunModels::of_run_folder(&args.run)?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("exporting {} as {}", args.run.display(), args.format));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let written = export_run(&models, format, &args.out);
    spinner.finish_and_clear();
    for (folder, files) in written? {
        for file in files {
            println!("{}/{}/{}\t{} bytes", args.out.display(), folder, file.name, file.bytes);
        }
    }
    Ok(())
}
