"""The `tunelab` command: one sub-command per pipeline stage, thin over the Python API.

Heavy imports happen inside each command, so `tunelab --help` answers at once. A user mistake
(TunelabError) prints one clear message and exits 2; Ctrl-C exits 130 without a traceback.
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
             batch_size: int = typer.Option(128, "--batch-size", min=1, help="Examples per forward pass.")) -> None:
    """Metrics of a trained run on a split or file; writes eval/report.json, report.html and PNGs."""
    from tunelab.evaluation import evaluate as run_evaluate, metrics_table

    result = run_evaluate(run, split, batch_size)
    typer.echo(f"{result.split}:\n{metrics_table(result.metrics)}")
    typer.echo(f"report: {result.out_dir / 'report.html'}")


@app.command()
def predict(run: Path = RUN,
            input: str = typer.Option(..., "--input", "-i", help="CSV/TSV/JSONL/Parquet file with a text column, or - for one text per line on stdin."),
            output: Optional[str] = typer.Option(None, "--output", "-o", help="Output .csv or .jsonl (default: JSONL on stdout)."),
            text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
            top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Also list the k best labels with scores.")) -> None:
    """Predict labels and scores for every text of a file (or stdin)."""
    from tunelab.models.predict_file import predict_file

    n = predict_file(run, input, output, text_column, None, top_k)
    if output and output != "-":
        typer.echo(f"{n} predictions written to {output}", err=True)


@app.command()
def export(run: Path = RUN,
           merge: bool = typer.Option(False, "--merge", help="Fold LoRA/IA3 into the base weights: a plain transformers folder."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default runs/<name>/export/merged)."),
           limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Check parity on at most this many validation texts.")) -> None:
    """Export a trained run (--merge: merged adapters, checked against the live adapter on validation)."""
    if not merge:
        raise TunelabError("say what to export: --merge (ONNX and int8 export come with the deploy stage)")
    from tunelab.export import merge_run

    parity = merge_run(run, output, limit)
    typer.echo(f"merged model: {parity['out']} (max |logit diff| {parity['max_abs_logit_diff']:.2e} "
               f"on {parity['examples']} validation texts)")


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
        app()
    except Interrupted as exc:
        typer.echo(f"{exc}", err=True)
        sys.exit(130)
    except TunelabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
