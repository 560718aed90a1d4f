"""Tokenisation shared by the text feature job and the attribute model bundle (pure Python).

The job builds the vocabulary with these functions; a trained model keeps that vocabulary and
tokenises new text the same way, so a catalogue the model has never seen is encoded exactly as
its training catalogue was.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

PAD, OOV = 0, 1
FIRST_ID = 2
# Bump when `normalise` changes: the same corpus then tokenises differently.
TOKENIZER = "nfkc-lower-alnum-v1"

_WORD = r"[^\W_]"  # a letter or a digit, in any script
_TOKEN = re.compile(rf"{_WORD}+")
# Apostrophes and hyphens inside a word are dropped rather than split on, so "T-shirt" stays
# one token ("tshirt") instead of losing its "t" to the 1-character rule.
_JOINER = re.compile(rf"(?<={_WORD})['\u2019\u02bc\u002d\u2010](?={_WORD})")


def normalise(text: str | None) -> list[str]:
    """Tokens of `text`: NFKC, lowercase, in-word apostrophes/hyphens dropped, split on anything
    that is not a letter or digit, 1-character tokens dropped. None or "" -> []."""
    if not text:
        return []
    text = _JOINER.sub("", unicodedata.normalize("NFKC", text).lower())
    return [t for t in _TOKEN.findall(text) if len(t) > 1]


def token_ids(tokens: Sequence[str], ids: dict[str, int], length: int) -> list[int]:
    """The first `length` tokens as ids (1 when out of vocabulary), 0-padded to `length`."""
    out = [ids.get(t, OOV) for t in list(tokens)[:length]]
    return out + [PAD] * (length - len(out))


def product_text(title: str | None, description: str | None) -> str:
    """The text a product is tokenised from: title and description joined by a space."""
    return " ".join(part for part in (title, description) if part)
