"""What a search leaves behind in runs/<name>/tune/: trials.csv, best.yaml and report.html with its plots."""

from __future__ import annotations

import csv
import html
import io
import warnings
from pathlib import Path

from tunelab.files import write_text_atomic

FIXED = ["number", "state", "value"]
AFTER = ["steps", "seconds", "best_step", "same_as", "rss_mb_at_start", "reason", "run_dir"]


def trial_rows(study) -> tuple[list[str], list[dict]]:
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name.lower(), "value": t.value, **t.params}
        row.update({k: t.user_attrs.get(k) for k in AFTER})
        rows.append(row)
    return FIXED + keys + AFTER, rows


def best_trial(study, direction: str):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("run_dir")]
    if not done:
        return None
    return (max if direction == "maximize" else min)(done, key=lambda t: t.value)  # ties: the earliest


def write_outputs(study, search, tune_dir: Path) -> None:
    """trials.csv (every trial) and best.yaml (a config that trains or builds the best trial again)."""
    header, rows = trial_rows(study)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    write_text_atomic(tune_dir / "trials.csv", buf.getvalue())
    best = best_trial(study, search.direction)
    if best is not None:
        write_text_atomic(tune_dir / "best.yaml", search.best_yaml(best))


def write_report(study, search, tune_dir: Path) -> Path:
    """report.html: the trials table and optuna's plots (history, parameter importances, parallel coordinates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    from tunelab.html_report import figure, table

    figures, notes = [], []
    for name, title, draw in [("history", "Optimization history", plots.plot_optimization_history),
                              ("importances", "Parameter importances (fANOVA)", plots.plot_param_importances),
                              ("parallel", "Parallel coordinates", plots.plot_parallel_coordinate)]:
        path = tune_dir / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            fig.savefig(path, dpi=90)
            plt.close(fig)
            figures.append((path, title))
        except Exception as exc:  # too few finished trials, or no parameter that varied
            notes.append(f"{title}: not drawn ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    header, rows = trial_rows(study)
    table = table(header[:-1], [[_cell(row.get(k)) for k in header[:-1]] for row in rows])
    best = best_trial(study, search.direction)
    summary = (f"Best: trial {best.number}, validation {search.metric} {best.value:.4f}; config in best.yaml."
               if best else "No trial has finished yet.")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab search: {html.escape(search.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0;font-size:90%}}td,th{{border:1px solid #ccc;padding:3px 8px}}
img{{max-width:100%}}</style></head><body>
<h1>Search {html.escape(search.name)}</h1>
<p>{search.tune.sampler} sampler, {search.tune.pruner} pruner; {search.direction} validation {html.escape(search.metric)}.
{html.escape(summary)}</p>
{''.join(figure(p, t) for p, t in figures)}
{''.join(f'<p>{html.escape(n)}</p>' for n in notes)}
<h2>Trials</h2>{table}</body></html>"""
    out = tune_dir / "report.html"
    write_text_atomic(out, page)
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
