"""The `tunelab` command: one sub-command per pipeline stage, thin over the Python API.

Heavy imports happen inside each command, so `tunelab --help` answers at once. A user mistake
(TunelabError) prints one clear message and exits 2; Ctrl-C exits 130 without a traceback (SIGTERM to a training
or a search: 143, after the same checkpoint).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tunelab.errors import Interrupted, TunelabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tunelab: fine-tune, evaluate, serve and monitor transformer models.")
config_app = typer.Typer(no_args_is_help=True, help="Show the resolved config or its JSON schema.")
app.add_typer(config_app, name="config")
monitor_app = typer.Typer(no_args_is_help=True, help="Monitoring: a model's reference profile, reports from the log.")
app.add_typer(monitor_app, name="monitor")
apps_app = typer.Typer(no_args_is_help=True, help="Applications built from the stages (tunelab serve --app serves them).")
app.add_typer(apps_app, name="app")
finance_app = typer.Typer(no_args_is_help=True, help="Financial news sentiment monitor: per-company sentiment, alerts.")
apps_app.add_typer(finance_app, name="finance")
support_app = typer.Typer(no_args_is_help=True, help="Customer-service assistant: FAQ answers with hand-off, intents.")
apps_app.add_typer(support_app, name="support")
recommend_app = typer.Typer(no_args_is_help=True, help="Text-aware recommender: items from a user's history and "
                            "the items' text, new items from day one.")
apps_app.add_typer(recommend_app, name="recommend")

CONFIG = typer.Argument(..., exists=False, help="The run's YAML config.", metavar="CONFIG")
OVERRIDES = typer.Argument(None, help="Overrides as dotted key=value, e.g. data.seed=7 model.max_length=128.",
                           metavar="[KEY=VALUE]...")


def _load(config: Path, overrides: Optional[List[str]]):
    from tunelab.config import load_config

    return load_config(config, overrides or [])


@config_app.command("show")
def config_show(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES) -> None:
    """Print the fully resolved config (defaults filled in, overrides applied)."""
    from tunelab.config import dump_config

    typer.echo(dump_config(_load(config, overrides)), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (every key, type, default and description)."""
    from tunelab.config import config_schema as schema

    typer.echo(json.dumps(schema(), indent=2))


@app.command()
def prepare(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES,
            force: bool = typer.Option(False, "--force", help="Prepare again even if nothing changed.")) -> None:
    """Load, validate, clean and split the data; write runs/<name>/data/ and its report."""
    from tunelab.data.pipeline import prepare as run_prepare

    prepared = run_prepare(_load(config, overrides), force=force)
    typer.echo(prepared.dir / "report.md")


@app.command()
def train(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES,
          resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run's checkpoints and model and start again.")) -> None:
    """Fine-tune the model (prepares the data first if needed); writes runs/<name>/model."""
    from tunelab.training import train as run_train

    result = run_train(_load(config, overrides), resume=resume, overwrite=overwrite)
    typer.echo(result.model_dir)


RUN = typer.Argument(..., help="A run folder (runs/<name>) or its model folder.", metavar="RUN")


@app.command()
def evaluate(run: Path = RUN,
             split: str = typer.Option("test", "--split", help="test, validation, train, or a labelled CSV/JSONL/Parquet file."),
             batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Examples per forward pass (default: the run's evaluate.batch_size).")) -> None:
    """Metrics of a trained run on a split or file; writes eval/report.json, report.html and PNGs."""
    from tunelab.evaluation import evaluate as run_evaluate, metrics_table

    result = run_evaluate(run, split, batch_size)
    typer.echo(f"{result.split}:\n{metrics_table(result.metrics)}")
    typer.echo(f"report: {result.out_dir / 'report.html'}")


@app.command()
def predict(run: Path = RUN,
            input: str = typer.Option(..., "--input", "-i", help="CSV/TSV/JSONL/JSON/Parquet file with a text column, a .txt file (one text per line), or - for one text per line on stdin (UTF-8)."),
            output: Optional[str] = typer.Option(None, "--output", "-o", help="Output .csv or .jsonl (default: JSONL on stdout)."),
            text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
            top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Also list the k best labels with scores.")) -> None:
    """Predict labels and scores for every text of a file (or stdin)."""
    from tunelab.models.predict_file import predict_file

    n = predict_file(run, input, output, text_column, None, top_k)
    if output and output != "-":
        typer.echo(f"{n} predictions written to {output}", err=True)


@app.command()
def generate(run: Path = RUN,
             prompt: Optional[str] = typer.Argument(None, help="What to ask; none: read it from stdin."),
             system: Optional[str] = typer.Option(None, "--system", help="A system prompt for this conversation (default: the run's task.system_prompt)."),
             max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Most tokens to generate."),
             temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy (the same answer every time); above 0: sampling."),
             top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Sampling: the nucleus of this much probability."),
             seed: Optional[int] = typer.Option(None, "--seed", help="Sampling: the random seed.")) -> None:
    """Answer a prompt with a fine-tuned causal LM, streamed as it is generated."""
    import sys

    from tunelab.models.generate import GenerationSettings, Generator

    text = prompt if prompt is not None else sys.stdin.read()
    if not text.strip():
        raise TunelabError("nothing to answer: give a prompt (or pipe one on stdin)")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    settings = GenerationSettings(max_new_tokens, temperature, top_p, seed=seed)
    for piece in Generator(run).stream(messages, settings):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def export(run: Path = RUN,
           merge: bool = typer.Option(False, "--merge", help="Fold LoRA/IA3 into the base weights: a plain transformers folder."),
           format: Optional[str] = typer.Option(None, "--format", help="onnx: an ONNX Runtime folder (LoRA/IA3 merged first); gguf: a causal LM as one GGUF file for llama.cpp/Ollama (F16)."),
           quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic int8 quantisation of the ONNX model; q8_0: a Q8_0 GGUF file."),
           min_agreement: Optional[float] = typer.Option(None, "--min-agreement", min=0.0, max=1.0,
                                                         help="int8: the least share of labels that must agree with fp32 (on validation, topped up to 1000 texts with training texts; default 0.99). gguf: the least share of next-token argmax agreeing with the model over validation conversations (default 0.97)."),
           pre_tokenizer: Optional[str] = typer.Option(None, "--pre-tokenizer", help="gguf: llama.cpp's name of the tokenizer's pre-tokenizer (known for the default LLM; e.g. llama-bpe for Llama 3)."),
           ffn_down_fp32: bool = typer.Option(False, "--ffn-down-fp32", help="int8: keep the feed-forward down-projections (fed by GELU) in fp32 from the start: slower, closer to fp32 (tried by itself when every matmul in int8 falls under --min-agreement)."),
           portable: bool = typer.Option(False, "--portable", help="onnx: standard ONNX ops only, for runtimes other than onnxruntime (the default fuses attention, LayerNorm and GELU into onnxruntime's own kernels: faster)."),
           max_metric_drop: float = typer.Option(0.5, "--max-metric-drop", min=0.0,
                                                 help="int8, token classification: the most points of validation entity F1 the int8 model may lose."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default runs/<name>/export/merged, onnx or onnx-int8)."),
           limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Check parity on at most this many texts (validation first).")) -> None:
    """Export a trained run: --merge (merged adapters), --format onnx [--quantize int8] or --format gguf [--quantize q8_0],
    each checked on validation."""
    if format not in (None, "onnx", "gguf"):
        raise TunelabError(f"--format: '{format}' is not a format tunelab exports; use --format onnx or gguf (or --merge)")
    if portable and format != "onnx":
        raise TunelabError("--portable is an ONNX setting: add --format onnx")
    if pre_tokenizer and format != "gguf":
        raise TunelabError("--pre-tokenizer names a GGUF file's pre-tokenizer: add --format gguf")
    if format == "gguf":
        from tunelab.export.gguf import export_gguf

        result = export_gguf(run, output, quantize, 0.97 if min_agreement is None else min_agreement, limit, pre_tokenizer)
        p = result.parity
        typer.echo(f"gguf file: {result.out / p['file']} ({p['bytes'] / 1e6:.1f} MB, {p['type']}); next-token argmax "
                   f"agreement {p['argmax_agreement']:.4f} over {p['positions']} positions of {p['conversations']} "
                   f"validation conversations; greedy answers identical on {p['greedy_identical']} of {p['greedy_prompts']} prompts")
        return
    if min_agreement is None:
        min_agreement = 0.99
    if quantize not in (None, "int8"):
        raise TunelabError(f"--quantize: '{quantize}' is not supported; use --quantize int8")
    if quantize and format != "onnx":
        raise TunelabError("--quantize int8 quantises the ONNX model: add --format onnx")
    if merge == (format is not None):
        raise TunelabError("say what to export: --merge, --format onnx [--quantize int8] or --format gguf")
    if merge:
        from tunelab.export import merge_run

        result = merge_run(run, output, limit)
        parity = result.parity
        typer.echo(f"merged model: {result.out} (max |logit diff| {parity['max_abs_logit_diff']:.2e} "
                   f"on {parity['examples']} validation texts)")
        return
    from tunelab.export import export_onnx

    if ffn_down_fp32 and not quantize:
        raise TunelabError("--ffn-down-fp32 is an int8 setting: add --quantize int8")
    result = export_onnx(run, output, quantize, min_agreement, limit, ffn_down_fp32=ffn_down_fp32,
                         max_metric_drop=max_metric_drop, portable=portable)
    from tunelab.export.onnx import describe_parity

    typer.echo(f"onnx model{' (int8)' if quantize else ''}: {result.out} ({result.parity['bytes'] / 1e6:.1f} MB); "
               f"{describe_parity(result.parity)}")


@app.command()
def tune(config: Path = CONFIG, overrides: Optional[List[str]] = OVERRIDES,
         retrain_best: bool = typer.Option(False, "--retrain-best", help="Then train the best config on train+validation and evaluate it on test.")) -> None:
    """Hyperparameter search (the config's tune: section; a training config, or the recommender app's, each trial a
    build); run it again to continue, or on several workers at once."""
    from tunelab.tuning.objective import metric_of
    from tunelab.tuning.run import retrain_best as run_retrain, tune as run_tune

    from tunelab.apps import app_search, is_app_config, load_app_config

    if is_app_config(config):  # an application's own settings: each trial is a build
        if retrain_best:
            raise TunelabError("--retrain-best retrains a training config's best trial; an application's best "
                               "is built with: tunelab app NAME build RUNS/NAME/tune/best.yaml")
        from tunelab.tuning.run import run_search

        search = app_search(load_app_config(config, overrides or []))
        result = run_search(search)
        metric = search.metric
    else:
        cfg = _load(config, overrides)
        result, metric = run_tune(cfg), metric_of(cfg)
    states = ", ".join(f"{n} {state}" for state, n in sorted(result.states.items()))
    typer.echo(f"tune: {sum(result.states.values())} trials ({states}); "
               + (f"{result.steps} training steps, " if result.steps else "") + f"{result.seconds / 60:.1f} min")
    if result.best_trial is not None:
        typer.echo(f"best: trial {result.best_trial}, validation {metric} {result.best_value:.4f}; "
                   f"config {result.best_config}")
    typer.echo(f"report: {result.study_dir / 'tune' / 'report.html'}")
    if retrain_best:
        final = run_retrain(cfg)
        headline = ", ".join(f"{k} {v:.4f}" for k, v in final.test.items() if isinstance(v, float))
        typer.echo(f"best config retrained on train+validation ({final.steps} steps): test {headline}; "
                   f"model in {final.run_dir / 'model'}")


@app.command()
def serve(models: Optional[List[str]] = typer.Argument(None, help="Run or export folders to serve, each as PATH or NAME=PATH.", metavar="[NAME=]PATH..."),
          base: Optional[str] = typer.Option(None, "--base", help="Base model shared by the --adapter runs."),
          adapter: Optional[List[str]] = typer.Option(None, "--adapter", help="NAME=RUN: a LoRA/IA3 run over --base (repeatable)."),
          config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with the serve settings (a serve: section or its keys)."),
          host: Optional[str] = typer.Option(None, "--host", help="Interface (default 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, "--port", help="Port (default 8000)."),
          precision: Optional[str] = typer.Option(None, "--precision", help="torch backend: fp32 or bf16."),
          max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help="Most texts per model call."),
          max_wait_ms: Optional[float] = typer.Option(None, "--max-wait-ms", help="How long a batch waits for more texts."),
          monitor_db: Optional[str] = typer.Option(None, "--monitor-db", help="SQLAlchemy URL of the prediction log (default: monitor.db in the run folder)."),
          no_monitor: bool = typer.Option(False, "--no-monitor", help="Keep no prediction log, drift or alerts."),
          app_config: Optional[Path] = typer.Option(None, "--app", help="An application's config (e.g. finance.yaml): "
                                                    "its models, routes and page are served too.")) -> None:
    """Serve models over HTTP: POST /v1/predict and /v1/feedback, GET /v1/models, /v1/monitor, /dashboard,
    /healthz, /readyz, /metrics, docs at /docs (and an application's routes with --app)."""
    from tunelab.serve.run import run_server
    from tunelab.serve.settings import serve_settings

    settings = serve_settings(config, {"host": host, "port": port, "precision": precision,
                                       "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms})
    if no_monitor:
        settings.monitor.enabled = False
    if monitor_db:
        settings.monitor.database = monitor_db
    application = None
    if app_config is not None:
        from tunelab.apps import load_app_config

        application = load_app_config(app_config)
    started = run_server(_named(models or [], "PATH"), settings, base, _named(adapter or [], "--adapter"),
                         say=lambda m: typer.echo(m, err=True), app_config=application)
    if not started:
        sys.exit(3)  # uvicorn's exit code for a failed startup (it has said why)


@finance_app.command("init")
def finance_init(folder: Path = typer.Argument(..., help="Folder to write finance.yaml, sentiment.yaml and a watchlist in."),
                 data: Optional[Path] = typer.Option(None, "--data", help="Your labelled sentences: CSV with text and label "
                                                     "(negative/neutral/positive); default: Financial PhraseBank."),
                 watchlist: Optional[Path] = typer.Option(None, "--watchlist", help="Your companies: CSV with name, "
                                                          "aliases, ticker, sector; default: an example to edit.")) -> None:
    """Write a finance app config for your own files."""
    from tunelab.apps.finance.build import init

    typer.echo(init(folder, data, watchlist))


@finance_app.command("build")
def finance_build(config: Path = typer.Argument(..., help="The app's finance.yaml."),
                  overrides: Optional[List[str]] = OVERRIDES,
                  retrain: bool = typer.Option(False, "--retrain", help="Train the models again (default: reuse a "
                                               "finished training, resume an interrupted one).")) -> None:
    """Train, export and evaluate the app's models; write its report."""
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.build import build

    result = build(load_finance_config(config, overrides or []), retrain=retrain)
    typer.echo(result.app_dir / "report.md")


@finance_app.command("ingest")
def finance_ingest(config: Path = typer.Argument(..., help="The app's finance.yaml."),
                   file: Path = typer.Argument(..., help="Items: JSONL (text, timestamp, source, url per line) or CSV."),
                   follow: bool = typer.Option(False, "--follow", help="Keep reading the file as it grows (JSONL), until Ctrl-C."),
                   batch_size: int = typer.Option(256, "--batch-size", min=1, help="Items scored and stored together.")) -> None:
    """Score, attribute and store a file of news items (duplicates counted once); alerts as they arise."""
    from tunelab.apps.finance import load_finance_config
    from tunelab.apps.finance.feed import ingest_file

    ingest_file(load_finance_config(config), file, follow, batch_size, say=typer.echo,
                warn=lambda m: typer.echo(m, err=True))


@support_app.command("init")
def support_init(folder: Path = typer.Argument(..., help="Folder to write support.yaml (and intents.yaml) in."),
                 faq: Optional[Path] = typer.Option(None, "--faq", help="Your FAQ: CSV (or JSONL, Parquet) with faq_id, "
                                                    "question, answer; default: the StackFAQ example."),
                 questions: Optional[Path] = typer.Option(None, "--questions", help="Customer questions with the id of "
                                                          "the entry answering each: text, faq_id."),
                 intents: Optional[Path] = typer.Option(None, "--intents", help="Labelled customer messages (text, label) "
                                                        "for an intent model; default: none.")) -> None:
    """Write a support app config for your own files."""
    from tunelab.apps.support.build import init

    typer.echo(init(folder, faq, questions, intents))


@support_app.command("build")
def support_build(config: Path = typer.Argument(..., help="The app's support.yaml."),
                  overrides: Optional[List[str]] = OVERRIDES,
                  retrain: bool = typer.Option(False, "--retrain", help="Train the models again (default: reuse a "
                                               "finished training, resume an interrupted one).")) -> None:
    """Train the retriever (and the intent model), set the hand-off threshold, evaluate; write the report."""
    from tunelab.apps.support.build import build
    from tunelab.apps.support.config import load_support_config

    config = load_support_config(config, overrides or [])
    build(config, retrain=retrain)
    typer.echo(config.app_dir / "report.md")


@recommend_app.command("init")
def recommend_init(folder: Path = typer.Argument(..., help="Folder to write recommend.yaml in."),
                   interactions: Optional[Path] = typer.Option(None, "--interactions", help="Who took what, when: "
                                                               "user_id, item_id, timestamp; default: MovieLens."),
                   items: Optional[Path] = typer.Option(None, "--items", help="The catalogue: item_id and text "
                                                        "columns (title, ...)."),
                   tags: Optional[Path] = typer.Option(None, "--tags", help="Optional users' tags: user_id, item_id, "
                                                       "tag, timestamp.")) -> None:
    """Write a recommender config for your own files."""
    from tunelab.apps.recommend.build import init

    typer.echo(init(folder, interactions, items, tags))


@recommend_app.command("build")
def recommend_build(config: Path = typer.Argument(..., help="The app's recommend.yaml."),
                    overrides: Optional[List[str]] = OVERRIDES,
                    retrain: bool = typer.Option(False, "--retrain", help="Train the item tower again (default: "
                                                 "reuse a finished training, resume an interrupted one).")) -> None:
    """Tune and measure the baselines, train the item tower, tune the user tower and the hybrid; write the report."""
    from tunelab.apps.recommend.build import build
    from tunelab.apps.recommend.config import load_recommend_config

    config = load_recommend_config(config, overrides or [])
    build(config, retrain=retrain)
    typer.echo(config.app_dir / "report.md")


@monitor_app.command("profile")
def monitor_profile(run: Path = typer.Argument(..., help="A run, model or export folder.")) -> None:
    """(Re)build the reference profile drift is measured against (train and export write it themselves)."""
    from tunelab.monitor.profile import build_profile

    build_profile(run, quiet=False)


@monitor_app.command("report")
def monitor_report(run: Path = typer.Argument(..., help="The served run (or model/export) folder."),
                   since: str = typer.Option("24h", "--since", help="Period: 30m, 24h, 7d, or an ISO time."),
                   database: Optional[str] = typer.Option(None, "--database", help="SQLAlchemy URL (default: RUN/monitor.db)."),
                   out: Optional[Path] = typer.Option(None, "--out", help="Folder (default: RUN/monitor/).")) -> None:
    """The dashboard as a static report (HTML + PNGs) from the prediction log."""
    from tunelab.monitor.report import monitor_report as report

    typer.echo(report(run, since, database, out))


@app.command("bench-serve")
def bench_serve(url: str = typer.Argument("http://127.0.0.1:8000", help="The server (this machine only)."),
                input: Path = typer.Option(..., "--input", "-i", help="Texts to send: a CSV/JSONL/Parquet file with a text column, or a .txt file (one per line)."),
                concurrency: str = typer.Option("1,8,32", "--concurrency", help="Concurrent clients; several: comma-separated."),
                requests: int = typer.Option(500, "--requests", min=1, help="Requests per concurrency level (at most)."),
                seconds: float = typer.Option(60.0, "--seconds", min=1, help="Time limit per concurrency level."),
                model: Optional[str] = typer.Option(None, "--model", help="The model field of each request."),
                text_column: str = typer.Option("text", "--text-column")) -> None:
    """Load a local server: throughput and p50/p95/p99 latency at each concurrency (one text per request)."""
    import os

    from tunelab.data.texts import read_texts
    from tunelab.serve.loadgen import bench

    texts = read_texts(input, text_column).texts
    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise TunelabError(f"--concurrency: '{concurrency}' is not a list of client counts, e.g. 1,8,32")
    typer.echo("concurrency  requests  errors  throughput/s  p50 ms  p95 ms  p99 ms")
    for c in levels:
        r = bench(url, texts, c, requests, seconds, model, os.environ.get("TUNELAB_API_KEY"))
        typer.echo(f"{c:>11}  {r['requests']:>8}  {r['errors']:>6}  {r['throughput']:>12.1f}  {r['p50_ms']:>6.1f}  "
                   f"{r['p95_ms']:>6.1f}  {r['p99_ms']:>6.1f}")


def _named(items: list[str], what: str) -> dict[str, str]:
    """[NAME=]PATH items -> {name: path}; a bare path is named after its run folder."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            p = Path(item).resolve()
            name = p.parent.name if p.name == "model" else p.name
            if p.parent.name == "export":
                name = f"{p.parent.parent.name}-{p.name}"
        if not name or not path:
            raise TunelabError(f"{what}: '{item}' is not NAME=PATH")
        if name in out:
            raise TunelabError(f"{what}: two models are called '{name}'; name them: NAME=PATH")
        out[name] = path
    return out


@app.command()
def methods() -> None:
    """List the fine-tuning methods with their default learning rate and settings."""
    from tunelab.methods import METHODS

    for name, module in METHODS.items():
        settings = module.Settings().model_dump() if hasattr(module, "Settings") else {}
        typer.echo(f"{name:8} lr {module.LEARNING_RATE:<7g} {module.__doc__.strip().splitlines()[0]}")
        if settings:
            typer.echo(" " * 9 + ", ".join(f"{k}={v}" for k, v in settings.items()))


@app.callback(invoke_without_command=True)
def _version(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        from tunelab import __version__

        typer.echo(f"tunelab {__version__}")
        raise typer.Exit()


def main() -> None:
    try:
        from tunelab.allocator import restart_on_jemalloc

        restart_on_jemalloc(sys.argv[1:])
        app()
    except Interrupted as exc:
        typer.echo(f"{exc}", err=True)
        sys.exit(128 + exc.signum)
    except TunelabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where training or a search handles it (tunelab.signals)
        typer.echo("interrupted", err=True)
        sys.exit(128 + getattr(exc, "signum", 2))
