"""Conversations as the model reads them: the chat template's text, and which of its tokens the model learns.

A conversation is a list of {role, content} (roles system, user, assistant). The model learns to write the
assistant's turns only: each turn's characters are found by rendering the conversation up to the turn's start
(with the template's generation prompt) and through its end; both renders must be prefixes of the whole, which
holds for templates that render a conversation turn by turn (a template that rewrites earlier turns, as some
"thinking" templates do for all but the last, is refused with a clear error rather than trained on a wrong mask).
A turn's end-of-turn token belongs to it (the model must learn to stop); the whitespace after it does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunelab.errors import ConfigError, TunelabError

ROLES = ("system", "user", "assistant")
IGNORE = -100  # the target of a token the loss skips (torch's cross_entropy ignore_index)


def load_template(setting: str | None) -> str | None:
    """task.chat_template: None, a Jinja text, or the path of a file holding one."""
    if setting is None:
        return None
    if "{" not in setting and Path(setting).expanduser().is_file():
        return Path(setting).expanduser().read_text(encoding="utf-8")
    if "{" not in setting:
        raise ConfigError(f"task.chat_template: '{setting}' is neither a Jinja template nor an existing file")
    return setting


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The conversation with `system_prompt` first, unless it opens with a system turn of its own."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _render(tokenizer, messages: list[dict], template: str | None, prompt: bool) -> str:
    if template is None and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("the tokenizer has no chat template; give one in task.chat_template")
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=prompt)


def render(tokenizer, messages: list[dict], template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans [start, end) of its assistant turns."""
    full = _render(tokenizer, messages, template, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], template, True)
        through = _render(tokenizer, messages[: i + 1], template, False)
        if not (through.startswith(before) and full.startswith(through)):
            raise TunelabError("the chat template does not render a conversation turn by turn (a turn's text "
                               "changes when later turns follow), so the assistant's tokens cannot be told apart; "
                               "give a template that does in task.chat_template")
        end = len(through.rstrip())
        spans.append((len(before), max(end, len(before))))
    return full, spans


def prompt_text(tokenizer, messages: list[dict], template: str | None = None) -> str:
    """What the model continues to answer: the conversation so far and the assistant's generation prompt."""
    return _render(tokenizer, messages, template, True)


def encode_conversation(tokenizer, messages: list[dict], template: str | None, max_length: int | None):
    """Token ids and, per token, the id the model must predict there (the next token, where that token is the
    assistant's; IGNORE elsewhere). Returns (ids, targets, full_length): cut at max_length when given."""
    text, spans = render(tokenizer, messages, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    ends = np.asarray([e for _, e in enc["offset_mapping"]], dtype=np.int64)
    learned = np.zeros(len(ids), dtype=bool)
    for start, end in spans:  # a token overlapping the answer (" Paris" after "Assistant:") is the answer's
        learned |= (ends > start) & (starts < end)
    targets = np.full(len(ids), IGNORE, dtype=np.int64)
    targets[:-1] = np.where(learned[1:], ids[1:], IGNORE)  # position t predicts token t + 1
    full = len(ids)
    if max_length is not None and full > max_length:
        ids, targets = ids[:max_length], targets[:max_length].copy()
        targets[-1] = IGNORE  # its next token was cut
    return ids, targets, full
