"""A tiny built-in English sentence generator for the synthetic corpus (no downloads).

Sentences come from a small phrase grammar over a fixed word list::

    S   -> NP VP [PP] | NP VP and VP | Interj , NP VP | Q
    NP  -> Det [Adj] Noun | Name
    VP  -> TransVerb NP | IntransVerb [Adv]
    PP  -> Prep NP
    Q   -> did NP BaseVerb NP ?

The generator is driven by a ``numpy.random.Generator`` so a seed gives the same text on
every machine. ``sentence_with_words(rng, lo, hi)`` draws until the word count is in range,
which is how the corpus aims at utterance durations (roughly 3 words per second).
"""

from __future__ import annotations

import numpy as np

DETERMINERS = ("the", "a", "my", "your", "this", "that", "every", "some", "our", "his", "her")
ADJECTIVES = (
    "small", "green", "quiet", "bright", "old", "heavy", "sweet", "lazy", "brave", "cold",
    "golden", "tiny", "wooden", "happy", "silver", "dusty", "gentle", "rapid", "broken", "warm",
)  # fmt: skip
NOUNS = (
    "dog", "river", "teacher", "garden", "window", "boat", "letter", "farmer", "bottle", "cloud",
    "kitten", "market", "pencil", "doctor", "bridge", "mountain", "basket", "violin", "station",
    "candle", "rabbit", "pilot", "table", "forest", "ticket", "sister", "engine", "meadow",
    "shadow", "button",
)  # fmt: skip
NAMES = ("Anna", "Peter", "Maria", "Tom", "Linda", "Oscar", "Nina", "Victor", "Susan", "Hugo")
TRANSITIVE_VERBS = (
    "found", "painted", "carried", "watched", "opened", "followed", "cleaned", "moved", "touched",
    "kept", "sold", "visited", "lifted", "dropped", "fixed", "washed", "pushed", "needed",
)  # fmt: skip
BASE_VERBS = ("find", "paint", "carry", "watch", "open", "follow", "clean", "move", "keep", "sell", "fix")
INTRANSITIVE_VERBS = (
    "slept", "waited", "laughed", "arrived", "vanished", "smiled", "shivered", "danced",
    "listened", "stopped", "returned", "whispered",
)  # fmt: skip
ADVERBS = ("slowly", "quickly", "again", "today", "outside", "quietly", "early", "later", "together")
PREPOSITIONS = ("near", "behind", "under", "across", "beside", "over", "inside", "past")
INTERJECTIONS = ("well", "look", "oh", "listen", "so", "honestly")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator) -> list[str]:
    if rng.random() < 0.2:
        return [_pick(rng, NAMES)]
    words = [_pick(rng, DETERMINERS)]
    if rng.random() < 0.6:
        words.append(_pick(rng, ADJECTIVES))
    words.append(_pick(rng, NOUNS))
    return words


def _verb_phrase(rng: np.random.Generator) -> list[str]:
    if rng.random() < 0.65:
        return [_pick(rng, TRANSITIVE_VERBS), *_noun_phrase(rng)]
    words = [_pick(rng, INTRANSITIVE_VERBS)]
    if rng.random() < 0.6:
        words.append(_pick(rng, ADVERBS))
    return words


def generate_sentence(rng: np.random.Generator) -> str:
    """One sentence, capitalised, ending in ``.`` or ``?``; commas mark phrase breaks."""
    form = rng.random()
    if form < 0.12:
        words = ["did", *_noun_phrase(rng), _pick(rng, BASE_VERBS), *_noun_phrase(rng)]
        text = " ".join(words) + "?"
    else:
        words = [*_noun_phrase(rng), *_verb_phrase(rng)]
        if form < 0.35:
            words += ["and", *_verb_phrase(rng)]
        elif form < 0.75:
            words += [_pick(rng, PREPOSITIONS), *_noun_phrase(rng)]
        if 0.35 <= form < 0.45:
            words = [_pick(rng, INTERJECTIONS) + ","] + words
        text = " ".join(words) + "."
    return text[0].upper() + text[1:]


def sentence_with_words(rng: np.random.Generator, min_words: int, max_words: int, tries: int = 200) -> str:
    """A sentence with ``min_words <= n <= max_words`` words (joins two sentences if needed)."""
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    best = ""
    for _ in range(tries):
        text = generate_sentence(rng)
        n = len(text.split())
        if n < min_words and rng.random() < 0.5:
            text = text + " " + generate_sentence(rng)
            n = len(text.split())
        if min_words <= n <= max_words:
            return text
        if not best or abs(n - min_words) < abs(len(best.split()) - min_words):
            best = text
    return best
