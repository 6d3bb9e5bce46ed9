"""The closed vocabulary of the synthetic corpus's spoken-word task (keyword spotting).

The 20 core command words of Speech Commands (Warden 2018, "Speech Commands: A Dataset for
Limited-Vocabulary Speech Recognition", arXiv:1804.03209; SUPERB's KS task): ``yes no up down
left right on off stop go`` and the digits ``zero`` .. ``nine``.

The espeak backend speaks the word as written. The formant backend cannot: its letter-to-sound
rules (:func:`speechssl.corpora.formant.text_to_phones`) are made for the sentence grammar and
would say "no" like "gnaw" and "two" like "twah". So every word has one fixed pronunciation here,
written in the formant synthesiser's own phone inventory (:data:`speechssl.corpora.formant.PHONES`,
ARPAbet names): the same word is the same phone sequence for every speaker and style, and any two
words differ in their phones (:func:`check_lexicon` checks both). What varies between renderings
of a word is what varies in real recordings: the voice, style, rate, pitch, level, noise and
channel.
"""

from __future__ import annotations

from collections.abc import Sequence

# The formant inventory (PHONES, VOWELS) is imported inside the functions that check phones: the
# formant module loads numpy, and the vocabulary alone is what ``speechssl synth --help`` lists.

# word -> phones (ARPAbet, CMUdict pronunciations without stress digits); the first vowel is stressed.
PRONUNCIATIONS: dict[str, tuple[str, ...]] = {
    "yes": ("Y", "EH", "S"), "no": ("N", "OW"), "up": ("AH", "P"), "down": ("D", "AW", "N"),
    "left": ("L", "EH", "F", "T"), "right": ("R", "AY", "T"), "on": ("AA", "N"), "off": ("AO", "F"),
    "stop": ("S", "T", "AA", "P"), "go": ("G", "OW"),
    "zero": ("Z", "IH", "R", "OW"), "one": ("W", "AH", "N"), "two": ("T", "UW"), "three": ("TH", "R", "IY"),
    "four": ("F", "AO", "R"), "five": ("F", "AY", "V"), "six": ("S", "IH", "K", "S"),
    "seven": ("S", "EH", "V", "AX", "N"), "eight": ("EY", "T"), "nine": ("N", "AY", "N"),
}  # fmt: skip
VOCABULARY: tuple[str, ...] = tuple(PRONUNCIATIONS)


def check_lexicon(lexicon: dict[str, tuple[str, ...]] = PRONUNCIATIONS) -> None:
    """Every pronunciation uses known phones, has a vowel, and no two words sound the same.

    Raises:
        ValueError: naming the word and the offending phone or the homophone.
    """
    from speechssl.corpora.formant import PHONES, VOWELS

    seen: dict[tuple[str, ...], str] = {}
    for word, phones in lexicon.items():
        unknown = [p for p in phones if p not in PHONES]
        if unknown:
            raise ValueError(f"word {word!r}: phones {unknown} are not in the formant inventory {' '.join(PHONES)}")
        if not any(p in VOWELS for p in phones):
            raise ValueError(f"word {word!r}: pronunciation {' '.join(phones)} has no vowel")
        if phones in seen:
            raise ValueError(f"words {seen[phones]!r} and {word!r} have the same pronunciation {' '.join(phones)}")
        seen[phones] = word


def check_vocabulary(words: Sequence[str]) -> tuple[str, ...]:
    """``words`` as a tuple after checking it is a non-empty list of distinct vocabulary words.

    Raises:
        ValueError: empty, repeated or unknown words (the message lists the vocabulary).
    """
    words = tuple(words)
    if not words:
        raise ValueError("vocabulary is empty; choose from " + " ".join(VOCABULARY))
    unknown = [w for w in words if w not in PRONUNCIATIONS]
    if unknown or len(set(words)) != len(words):
        raise ValueError(
            f"vocabulary must be distinct words from {' '.join(VOCABULARY)}; got {' '.join(words)}"
            + (f" (unknown: {' '.join(unknown)})" if unknown else " (repeated words)")
        )
    return words


def word_phones(word: str) -> list[tuple[str, bool, bool]]:
    """The formant phone sequence of ``word`` as ``text_to_phones`` gives it: ``(phone, stressed, pause_after)``.

    The first vowel carries the stress (true of all 20 words); there is no pause inside a word.
    """
    from speechssl.corpora.formant import VOWELS

    phones = PRONUNCIATIONS.get(word)
    if phones is None:
        raise ValueError(f"unknown word {word!r}; the vocabulary is {' '.join(VOCABULARY)}")
    stress_at = next(k for k, p in enumerate(phones) if p in VOWELS)
    return [(p, k == stress_at, False) for k, p in enumerate(phones)]
