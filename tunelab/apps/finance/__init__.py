"""Financial news sentiment monitor: texts in, sentiment per company and sector out, alerts on negative surges.

    config.py     the app's YAML (finance.yaml): which models, the watchlist, alert settings, database
    watchlist.py  companies by name, alias and ticker; which of them a text mentions
    detector.py   a Bernoulli CUSUM per company: a surge of negative texts against the company's own baseline
    store.py      the texts, mentions and alerts tables (SQLAlchemy, the monitor's database)
    ingest.py     validate items, score them, find companies, store before acknowledging, detect
    routes.py     POST /v1/finance/ingest, GET /v1/finance/index, /v1/finance/alerts, the /finance page
    build.py      init (write a config for the user's files) and build (train, export, evaluate)
"""

from tunelab.apps.finance.config import FinanceConfig, load_finance_config

__all__ = ["FinanceConfig", "load_finance_config"]
