"""Hyperparameter search over any config key (optuna): `tunelab tune CONFIG`."""


def __getattr__(name):  # lazy: config.py imports tunelab.tuning.space, which must not pull in training
    if name in ("tune", "retrain_best", "TuneResult"):
        from tunelab.tuning import run

        return getattr(run, name)
    raise AttributeError(name)
