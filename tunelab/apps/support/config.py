"""The support app's config (support.yaml): the FAQ, the customer questions, the retriever, the optional intent
model, hand-off; paths relative to the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tunelab.apps.config import EncoderTraining
from tunelab.config import FolderName
from tunelab.settings import Section


class FaqColumns(Section):
    """Column (or JSON field) names of the FAQ and questions files."""

    faq_id: str = Field("faq_id", description="FAQ file: the entry's id (a later row with the same id is another "
                        "answer to it: counted, not used).")
    question: str = Field("question", description="FAQ file: the entry's question.")
    answer: str = Field("answer", description="FAQ file: the answer given.")
    text: str = Field("text", description="Questions file: a customer's question.")
    entry: str = Field("faq_id", description="Questions file: the id of the FAQ entry that answers it.")


class RetrieverConfig(EncoderTraining):
    """The bi-encoder that matches questions to FAQ entries (docs/apps/support.md)."""

    index_questions: bool = Field(True, description="Index the training questions beside each entry's own question: "
                                  "an entry then also matches the ways customers asked for it.")
    search: Literal["auto", "exact", "faiss"] = Field(
        "auto", description="How the index is searched: exact (numpy, every vector), faiss (an HNSW graph, approximate; "
        "needs `pip install tunelab[ann]`), or auto: exact up to exact_up_to vectors, faiss beyond when installed.")
    exact_up_to: int = Field(50_000, ge=1, description="With search auto: the largest index searched exactly.")
    candidates: int = Field(64, ge=1, description="With faiss: nearest vectors read per question; an entry among none "
                            "of them scores as the farthest of them (its confidence can only be lower).")


class RerankerConfig(Section):
    """The optional cross-encoder that re-ranks the retriever's best entries (rerank.py): a tunelab sentence-pair
    classification run trained on each training question with its entry and its hardest wrong ones."""

    model: str = Field("default", description="Base encoder: a folder or hub id; 'default' is the bundled MiniLM.")
    candidates: int = Field(5, ge=2, description="The retriever's best entries re-ranked per question; the others "
                            "rank below them and get no probability.")
    negatives: int = Field(3, ge=1, description="Wrong entries paired with each training question: those the "
                           "retriever ranks highest.")
    weight: float | None = Field(None, ge=0, description="A candidate's logit is the retriever's plus this times the "
                                 "re-ranker's log-odds; none: the weight that ranks the validation questions best "
                                 "(0, the re-ranker unused, when none beats the retriever alone).")
    epochs: float = Field(2.0, gt=0, description="Passes over the training pairs (small data gets more, up to "
                          "train.min_steps, as in any tunelab run).")
    batch_size: int = Field(16, ge=1, description="Pairs per step.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate; none: tunelab's default for "
                                        "full fine-tuning.")
    max_length: int = Field(128, ge=16, description="Tokens of a question and entry together; the entry's answer is "
                            "cut first.")
    seed: int = Field(42, description="Initialisation and batch order.")


class GenerationConfig(Section):
    """Answers written by a causal LM from the retrieved FAQ entries (retrieval-augmented generation)."""

    sources: int = Field(2, ge=1, description="Best-matching FAQ entries given to the model, question and answer.")
    max_tokens: int = Field(200, ge=1, description="Longest generated answer, in tokens.")
    instructions: str = Field(
        "You are a customer-service assistant. Answer the customer's message using only the FAQ entries below. If "
        "they do not answer it, say that a colleague will follow up.",
        description="The system message, before the FAQ entries.")


class FewShotConfig(EncoderTraining):
    """The few-shot intent model: an encoder fine-tuned on pairs of examples of one intent, a logistic-regression
    head on its embeddings (fewshot.py)."""

    epochs: int = Field(1, ge=0, description="Passes over the pairs; 0: the base encoder as it is.")
    max_length: int = Field(64, ge=8, description="Tokens kept of a message.")
    partners: int = Field(8, ge=1, description="Pairs per example: other examples of its intent (its description "
                          "among them).")
    head_c: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic-regression head.")


class SupportConfig(Section):
    """`tunelab app support`: FAQ answers with hand-off, and the customer's intent."""

    app: Literal["support"] = Field("support", description="Which application this config is for.")
    name: FolderName = Field("support", description="Folder under runs_dir for the app's models, report and database.")
    runs_dir: Path = Field(Path("runs"), description="Where the app folder goes (relative to this file).")
    faq: Path = Field(description="The FAQ: CSV, JSONL, JSON or Parquet with an id, a question and an answer per entry "
                      "(relative to this file).")
    questions: Path = Field(description="Customer questions, each with the id of the FAQ entry that answers it: the "
                            "retriever trains on some, the threshold is set on others, the rest test it.")
    columns: FaqColumns = Field(default_factory=FaqColumns, description="Column names of the two files.")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of each entry's questions that sets the "
                                       "hand-off threshold and the calibration.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of each entry's questions held out for the "
                                 "report (entries with fewer than 3 questions are trained on only).")
    seed: int = Field(42, description="The split of the questions.")
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig, description="FAQ matching.")
    reranker: RerankerConfig | None = Field(None, description="Optional cross-encoder re-ranker of the retriever's "
                                            "best entries (`reranker: {}` for the defaults); the confidence is then "
                                            "its calibrated probability.")
    intents: Path | None = Field(None, description="Optional tunelab run config (YAML) of an intent classifier: each "
                                 "answer then names the customer's intent.")
    intent_examples: Path | None = Field(None, description="Or a few-shot intent model: a file of a handful of "
                                         "labelled messages per intent (text, label). A new intent is added by adding "
                                         "its rows and running build: the encoder is kept, the head refitted.")
    intent_descriptions: Path | None = Field(None, description="Optional, with intent_examples: label, description per "
                                             "intent; an intent listed here without examples is recognised by its "
                                             "description alone (zero-shot). Default description: the intent's name.")
    intent_test: Path | None = Field(None, description="Optional, with intent_examples: labelled messages (text, "
                                     "label) the report measures the few-shot model on.")
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig, description="The few-shot intent model's training.")
    generator: Path | None = Field(None, description="Optional tunelab run config (YAML) of a causal LM (task "
                                   "causal_lm): answers are then written by it from the best-matching FAQ entries, "
                                   "which are returned as the sources; without it the best entry's answer is given.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="The generated answers.")
    target_precision: float = Field(0.95, gt=0, le=1, description="Answers are given when the confidence is at least "
                                    "the threshold at which, on validation, this share of answers was right; below it "
                                    "the question is handed to an agent.")
    out_of_scope_quantile: float = Field(0.02, ge=0, lt=0.5, description="A question whose best cosine with the FAQ "
                                         "is below this quantile of the validation questions' is handed off too: "
                                         "it is unlike the questions the FAQ answers (0: no floor).")
    top_k: int = Field(3, ge=1, description="Candidate entries returned with each answer (and with a hand-off).")
    backend: Literal["onnx-int8", "onnx-fp32", "torch"] = Field(
        "onnx-int8", description="What runs the encoders: ONNX int8 exports (the build writes them), fp32 ONNX, or torch.")
    database: str | None = Field(None, description="SQLAlchemy URL of the monitor's database, where exchanges are "
                                 "logged; default: sqlite:///<runs_dir>/<name>/support.db.")
    max_chars: int = Field(2000, ge=1, description="A longer message is refused (422).")
    source: Path | None = Field(None, exclude=True, description="The file this config was read from (set by the loader).")

    @property
    def app_dir(self) -> Path:
        return self.runs_dir / self.name

    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.app_dir / 'support.db'}"


def load_support_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SupportConfig:
    """Read support.yaml (paths in it relative to the file's folder)."""
    from tunelab.apps.config import read_app_config

    from tunelab.errors import ConfigError

    files = ("faq", "questions", "intents", "intent_examples", "intent_descriptions", "intent_test", "generator")
    config = read_app_config(path, overrides, SupportConfig, paths=("runs_dir", *files), files=files)
    if config.intents is not None and config.intent_examples is not None:
        raise ConfigError(f"{path}: intents (a run config) and intent_examples (few-shot) are two ways to the same "
                          "model; set one")
    if config.generator is not None and config.generation.sources > config.top_k:
        raise ConfigError(f"{path}: generation.sources ({config.generation.sources}) is more than top_k "
                          f"({config.top_k}), the entries each answer keeps; raise top_k")
    if config.intent_examples is None and (config.intent_descriptions or config.intent_test):
        raise ConfigError(f"{path}: intent_descriptions and intent_test go with intent_examples")
    return config
