"""`tunelab monitor report RUN --since 24h`: the dashboard's content as a static HTML report with PNGs,
read from the monitoring database (predictions, feedback, checks, alerts)."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from tunelab.errors import TunelabError
from tunelab.monitor import store
from tunelab.monitor.profile import reference_shares

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime:
    """'30m', '24h', '7d', '2w', or an ISO date/time (UTC unless it says otherwise)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text)
    if match:
        return store.now() - timedelta(**{UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TunelabError(f"--since '{text}': give a duration (30m, 24h, 7d, 2w) or an ISO time "
                           "(2026-11-28 or 2026-11-28T09:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite hands times back without their zone


def monitor_report(run: str | Path, since: str = "24h", database: str | None = None, out: str | Path | None = None) -> Path:
    """`tunelab monitor report`: the log of a served run (default: its monitor.db) since `since` (30m, 24h, 7d or an
    ISO time) as report.html + PNGs in `out` (default RUN/monitor/). Returns the report's path."""
    from tunelab.config import DEFAULT_ALERTS
    from tunelab.models.card import ModelCard
    from tunelab.models.predictor import find_model_dir
    from tunelab.monitor.profile import load_profile, run_of

    start = parse_since(since)
    model_dir = find_model_dir(run)
    run_dir = run_of(model_dir, ModelCard.read(model_dir))
    if database is None:
        db = run_dir / "monitor.db"
        if not db.is_file():
            raise TunelabError(f"{db} does not exist: nothing was served from this run with monitoring on "
                               "(or give --database URL)")
        database = f"sqlite:///{db.resolve()}"
    profile = load_profile(model_dir)
    profiles = {"*": profile} if profile else {}  # served under any name: the run's profile
    thresholds = {a["metric"]: a.get("above", a.get("below")) for a in DEFAULT_ALERTS}
    return write_monitor_report(database, Path(out) if out else run_dir / "monitor", start, profiles, thresholds)


def write_monitor_report(database: str, out_dir: Path, since: datetime, profiles: dict | None = None,
                         thresholds: dict | None = None) -> Path:
    """Write out_dir/report.html (+ PNGs) for everything logged since `since`; return the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.html_report import figure, table
    from tunelab.files import write_text_atomic

    engine = store.open_database(database)
    p, c, a, f = store.predictions.c, store.checks.c, store.alerts.c, store.feedback.c
    with engine.connect() as conn:
        preds = conn.execute(sa.select(p.created_at, p.model, p.label, p.latency_ms).where(p.created_at >= since)
                             .order_by(p.created_at)).all()
        checks = conn.execute(sa.select(c.created_at, c.model, c.metric, c.value).where(c.created_at >= since)
                              .order_by(c.created_at)).all()
        alerts = conn.execute(sa.select(a.created_at, a.state, a.rule, a.model, a.message).where(a.created_at >= since)
                              .order_by(a.created_at)).all()
        feedback = conn.execute(sa.select(f.model, f.label, f.predicted).where(f.created_at >= since)).all()
    engine.dispose()
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [f"<p>From {html.escape(since.isoformat(timespec='seconds'))} to "
                f"{html.escape(store.now().isoformat(timespec='seconds'))}: {len(preds)} predictions, "
                f"{len(feedback)} with feedback, {len(alerts)} alert events.</p>"]
    if not preds and not checks:
        sections.append("<p>Nothing was logged in this period.</p>")
    models = sorted({row.model for row in preds} | {row.model for row in checks if row.model != "server"})

    if preds:  # traffic: predictions per bucket and latency percentiles
        times = np.array([_aware(r.created_at).timestamp() for r in preds])
        latency = np.array([r.latency_ms for r in preds])
        edges = np.linspace(times.min(), times.max() + 1e-6, min(60, max(2, len(preds) // 20)) + 1)
        which = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, len(edges) - 2)
        mids = [datetime.fromtimestamp(t, timezone.utc) for t in (edges[:-1] + edges[1:]) / 2]
        width = max(edges[1] - edges[0], 1e-6)
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        ax1.plot(mids, np.bincount(which, minlength=len(mids)) / width)
        ax1.set_ylabel("predictions / s")
        for q in (50, 95, 99):
            ax2.plot(mids, [np.percentile(latency[which == i], q) if (which == i).any() else np.nan
                            for i in range(len(mids))], label=f"p{q}")
        ax2.set_ylabel("latency ms")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "traffic.png", dpi=100)
        plt.close(fig)
        sections.append("<h2>Traffic</h2>" + table(["p50 ms", "p95 ms", "p99 ms"],
                        [[float(np.percentile(latency, q)) for q in (50, 95, 99)]]) + figure(out_dir / "traffic.png", "traffic"))

    for model in models:
        rows = [r for r in preds if r.model == model]
        labels = sorted({lab for r in rows for lab in r.label.split("|") if lab})
        profile = (profiles or {}).get(model) or (profiles or {}).get("*")
        if profile:
            labels = profile["labels"]
        if rows and labels:
            shares = {lab: np.mean([lab in r.label.split("|") for r in rows]) for lab in labels}
            reference = reference_shares(profile)
            sections.append(f"<h2>{html.escape(model)}: labels</h2>" + table(
                ["label", "share of predictions", "training reference"],
                [[lab, float(shares[lab]), float(reference[lab]) if lab in reference else "-"] for lab in labels]))
        series: dict[str, list] = {}
        for r in checks:
            if r.model == model:
                series.setdefault(r.metric, []).append((_aware(r.created_at), r.value))
        drift = [m for m in ("label_psi", "length_psi", "confidence_psi", "embedding_auc", "unknown_rate_increase",
                             "live_accuracy") if m in series]
        if drift:
            fig, ax = plt.subplots(figsize=(8, 3.5))
            for i, metric in enumerate(drift):
                xs, ys = zip(*series[metric])
                line, = ax.plot(xs, ys, label=metric)
                limit = (thresholds or {}).get(metric)
                if limit is not None:
                    ax.axhline(limit, color=line.get_color(), linestyle="--", linewidth=1)
            ax.legend(fontsize=8)
            ax.set_title(f"{model}: drift and live accuracy (dashed: alert thresholds)")
            fig.tight_layout()
            png = out_dir / f"drift-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}.png"
            fig.savefig(png, dpi=100)
            plt.close(fig)
            last = [[m, float(series[m][-1][1]), float(np.max([v for _, v in series[m]]))] for m in sorted(series)]
            sections.append(f"<h2>{html.escape(model)}: drift</h2>" + figure(png, f"{model} drift")
                            + table(["figure", "last", "max in period"], last))
        given = [(lab, pred) for m, lab, pred in feedback if m == model]
        if given:
            from sklearn.metrics import accuracy_score

            true, predicted = zip(*given)
            sections.append(f"<p>{html.escape(model)}: accuracy on {len(given)} predictions with feedback: "
                            f"{accuracy_score(true, predicted):.4f}</p>")
    sections.append("<h2>Alerts</h2>" + (table(["time", "state", "rule", "model", "message"],
                    [[_aware(r.created_at).isoformat(timespec="seconds"), r.state, r.rule, r.model, r.message]
                     for r in alerts]) if alerts else "<p>None.</p>"))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>tunelab monitor report</title><style>"
            "body{font:14px system-ui,sans-serif;max-width:960px;margin:2rem auto}td,th{padding:.2rem .5rem;"
            "border-bottom:1px solid #ddd;text-align:left}img{max-width:100%}</style></head><body>"
            "<h1>tunelab monitor report</h1>" + "".join(sections) + "</body></html>")
    path = out_dir / "report.html"
    write_text_atomic(path, page)
    return path
