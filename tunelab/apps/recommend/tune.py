"""`tunelab tune recommend.yaml`: a search over the recommender's own settings (the config's `tune:` section), with
tunelab's search machinery (samplers, a resumable study shared by workers, trials.csv, best.yaml, report.html).

Each trial is a whole build in <app_dir>/trial-<n>/, scored by the validation NDCG@10 of what the app would serve
(the hybrid, or its text side alone without item-kNN). A trial starts from the app's own build where that is safe:
the sequence tower is copied in (the build reuses it only when its data and settings match), and so is the
trained item tower when no searched key changes what it is trained on.
"""

from __future__ import annotations

import copy
import json
import shutil

from pydantic import ValidationError

from tunelab.config import TuneConfig, _explain, set_key
from tunelab.errors import ConfigError

# keys acting after the item tower is trained: a trial searching only these starts from the app's trained tower
AFTER_THE_ITEM_TOWER = ("sequence.", "tower.recent", "tower.decay", "hybrid_weights", "baselines")
UNSEARCHABLE = ("app", "name", "runs_dir", "tune", "interactions", "items", "tags", "columns", "database")


def served_validation(report: dict) -> float:
    """Validation NDCG@10 of what the app serves: the hybrid where there is one, else the text side it chose."""
    part = report.get("hybrid") or report[report["serving"]["side"]]
    return part["validation_ndcg_at_10"]


def search(config):
    """The Search (tuning/run.py) of a recommender config with a `tune:` section."""
    from tunelab.apps.recommend.build import ENCODER, build
    from tunelab.apps.recommend.config import RecommendConfig
    from tunelab.search_space import parse_space
    from tunelab.tuning import space as sampling
    from tunelab.tuning.run import Search, check_fits
    from tunelab.tuning.study import settings_of

    tune: TuneConfig | None = config.tune
    if tune is None:
        raise ConfigError(f"{config.source}: no tune: section to search; add one, e.g.\n  tune:\n    sampler: grid\n"
                          "    space:\n      sequence.dim: [64, 128]\n      sequence.dropout: [0.2, 0.3]")
    if tune.metric not in (None, "ndcg_at_10") or tune.direction == "minimize":
        raise ConfigError("tune.metric / tune.direction: the recommender is searched for the highest validation "
                          "ndcg_at_10 (leave both out)")
    tune = tune.model_copy(update={"pruner": "none"})  # a build reports once, at its end: nothing to prune
    params = parse_space(tune.space)
    if not params:
        raise ConfigError("tune.space is empty: name the keys to search, e.g. sequence.dim: [64, 128]")
    base = json.loads(config.model_dump_json(exclude={"tune"}))

    def trial_config(values: dict, **fields) -> RecommendConfig:
        raw = copy.deepcopy(base)
        for key, value in values.items():
            set_key(raw, key, value)
        raw.update(fields)
        try:
            out = RecommendConfig.model_validate(raw)
        except ValidationError as exc:
            raise _explain(exc, str(config.source), RecommendConfig) from None
        out.source = config.source
        return out

    for p in params:
        if p.key.split(".")[0] in UNSEARCHABLE or p.method:
            raise ConfigError(f"tune.space: {p.key} cannot be searched in a recommender")
        check_fits(p.key, lambda: trial_config({p.key: sampling.example_value(p)}), "the recommender's config")
    reuse_tower = all(p.key.startswith(AFTER_THE_ITEM_TOWER) for p in params)
    folder = config.app_dir

    def run(number: int, values: dict, report) -> tuple[float, dict]:
        trial = trial_config(values, name=f"trial-{number}", runs_dir=str(folder))
        start_from_the_app(trial.app_dir, folder, ENCODER, reuse_tower)
        result = build(trial, quiet=True)
        return served_validation(result), {"item_tower_trained": "tower_training" in result}

    def best_yaml(best) -> str:
        import yaml

        raw = json.loads(trial_config(best.params, name=f"{config.name}-best").model_dump_json())
        return (f"# The best trial ({best.number}) of the search '{config.name}': validation ndcg_at_10 "
                f"{best.value:.4f}.\n# Build it with: tunelab app recommend build {folder / 'tune' / 'best.yaml'}\n"
                + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))

    fixed = settings_of({**base, "tune": tune.model_dump(mode="json")})
    return Search(config.name, tune, folder, "ndcg_at_10", "maximize", params, fixed, run, best_yaml)


def start_from_the_app(trial_dir, app_dir, encoder: str, reuse_tower: bool) -> None:
    """Copy what the app's own build trained into a new trial folder, where the trial's build may reuse it."""
    if trial_dir.exists():  # a trial continued: it has its own
        return
    trial_dir.mkdir(parents=True)
    from tunelab.apps.recommend.sequence import SHAPE, WEIGHTS

    names = [SHAPE, WEIGHTS]  # the build reuses the sequence tower only when its fingerprint matches
    if reuse_tower:
        names += [p.name for p in app_dir.glob(f"{encoder}*") if p.is_dir() and not p.name.endswith((".tmp", ".checkpoint"))]
    for name in names:
        source = app_dir / name
        if source.is_dir():
            shutil.copytree(source, trial_dir / name)
        elif source.is_file():
            shutil.copy2(source, trial_dir / name)
