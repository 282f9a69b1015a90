"""Which tokens a prompt reuses of an evaluated sequence whose text it starts with (no model needed)."""

from __future__ import annotations

from nbchat.backends.splice import continuing, reusable, shared_bytes, spell

#: a toy vocabulary: the evaluated sequence's tokens as the model generated them
VOCAB = {1: b"<s>", 2: b"Refriger", 3: b"ators", 4: b" cool", 5: b".", 6: b"<end>", 7: b"Re", 8: b"frigerators"}


def tokenize(text: bytes) -> list[int]:
    """A stand-in tokeniser: one token a byte, numbered from 100."""
    return [100 + b for b in text]


def test_shared_bytes() -> None:
    assert shared_bytes(b"abcdef", b"abcxyz") == 3
    assert shared_bytes(b"", b"abc") == 0
    assert shared_bytes(b"abc", b"abc") == 3


def test_an_evaluated_answer_keeps_its_own_tokens() -> None:
    generated = [1, 7, 8, 4, 5]  # "Re" + "frigerators", where a whole tokenisation says "Refriger" + "ators"
    text = b"Refrigerators cool.<end>next"
    tokens = continuing(text, [1], [spell(generated[1:], VOCAB.__getitem__)], tokenize)
    assert tokens == [1, 7, 8, 4, 5, *tokenize(b"<end>next")]


def test_the_longest_candidate_wins_and_a_diverging_one_counts_up_to_where_it_diverges() -> None:
    text = b"Refrigerators cool."
    candidates = [spell(t, VOCAB.__getitem__) for t in ([2, 3], [2, 3, 4])]
    assert continuing(text, [], candidates, tokenize) == [2, 3, 4, *tokenize(b".")]
    assert continuing(b"Refrigerators warm", [], [spell([2, 3, 4], VOCAB.__getitem__)], tokenize) == \
        [2, 3, *tokenize(b" warm")]


def test_nothing_shared_gives_none() -> None:
    assert continuing(b"Hello", [], [spell([2, 3], VOCAB.__getitem__)], tokenize) is None


def test_a_cut_inside_a_word_backs_off_to_the_word_start() -> None:
    # "Refriger" is shared with "Refrigerant", but tokenising "ant" alone would split the word
    # otherwise than the tokeniser does: the cut goes back to before the word
    pieces = {4: VOCAB[4], 9: b" Refriger"}
    assert reusable(spell([4, 9], pieces.__getitem__), b" cool Refrigerant") == (1, 5)
    assert reusable(spell([2], VOCAB.__getitem__), b"Refriger") == (1, 8)  # the text ends there: nothing is split
