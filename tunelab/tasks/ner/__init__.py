"""Building blocks of token classification (named-entity recognition), as plain functions.

- `formats`: read CoNLL files, token JSONL and text-with-entity-offsets JSONL into `Sentences`, with every
  data mistake returned as a `tunelab.data.load.Problem` (one per dropped sentence).
- `schemes`: tag schemes IOB1, IOB2 (BIO), IOBES (BILOU): check, detect, convert to and from IOB2.
- `align`: words to sub-word windows for a fast tokenizer (labels on first sub-words) and back.
- `spans`: IOB2 tags to entity spans (word and character offsets) and entity offsets to IOB2 tags.
- `metrics`: entity-level scores (seqeval, strict IOB2), token accuracy, a type confusion matrix, errors.

Nothing is imported here, so importing one module does not load the others (seqeval loads scikit-learn).
"""
