"""Customer-service assistant: a customer's question -> the FAQ answer when the app is sure, else a hand-off to a
person with the candidate entries; the customer's intent beside it.

    config.py     the app's YAML (support.yaml): the FAQ and questions files, the retriever, hand-off settings
                  (the retriever is the applications' encoder, tunelab/apps/encoder.py, fine-tuned on the questions)
    faq.py        read and check the FAQ and the customer questions; split the questions per entry
    matcher.py    the FAQ index, calibrated probabilities per entry, the hand-off threshold
    rerank.py     the optional cross-encoder re-ranker: hard-negative pairs, its tunelab run, the blended logits
    build.py      init (write a config for the user's files) and build (train, export, calibrate, evaluate)
    serving.py    the FAQ matcher as a served model (dynamic batching, the monitor's log and feedback)
    exchanges.py  the conversations table (the monitor's database)
    routes.py     POST /v1/support/answer, GET /v1/support/conversations/{id}, /v1/support/stats, the /support page
"""

from tunelab.apps.support.config import SupportConfig, load_support_config

__all__ = ["SupportConfig", "load_support_config"]
