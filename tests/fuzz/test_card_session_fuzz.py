"""The daemon's card sessions never leak an exception, never hang, and always end in a named way, whatever a
card answers (tests/fuzz/harness.py says exactly what is checked, and on which entry points).

This extends the parser harness of ``tests/protocols/test_parsers_never_leak.py`` (its settings and its
chaos answers) from ``protocols`` up to ``readerd.reading.sessions``, which turns a read into events. Three
sources of transcripts: the simulator's real answers mutated by hypothesis (truncated, bit-flipped, other
status words, chaos inserted), pure chaos, and the committed corpus (``tests/fuzz/corpus/``: one
transcript per distinct ending found, and every crash ever found, replayed on every run).

CI runs ``READERD_HYPOTHESIS_EXAMPLES`` (300) examples per harness; locally,
``READERD_HYPOTHESIS_EXAMPLES=20000 READERD_FUZZ_CORPUS_OUT=1 .venv/bin/python -m pytest tests/fuzz``
runs more and writes a transcript for every new ending to the corpus (review, then commit them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import (
    TARGETS,
    SessionFuzzer,
    check_outcome,
    corpus_entries,
    load_entry,
    save_entry,
)
from tests.protocols.test_parsers_never_leak import answer as chaos_answer
from tests.protocols.test_parsers_never_leak import fuzz

SAVE_CORPUS = os.environ.get("READERD_FUZZ_CORPUS_OUT", "") not in ("", "0")
STATUS_WORDS = [
    bytes.fromhex(sw)
    for sw in ("9000", "6282", "6700", "6C00", "6A82", "6A86", "6981", "6982", "6984", "6400", "6F00", "6100")
]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionFuzzer]:
    fuzzer = SessionFuzzer(tmp_path_factory.mktemp("fuzz"))
    yield fuzzer
    fuzzer.close()


@pytest.fixture(scope="module")
def known_endings() -> dict[str, set[str]]:
    """The signatures already in the corpus, per target (only read when saving new ones)."""
    known: dict[str, set[str]] = {t: set() for t in TARGETS}
    if SAVE_CORPUS:
        import json  # noqa: PLC0415 - only for the corpus writer

        for path in corpus_entries():
            entry = json.loads(path.read_text(encoding="utf-8"))
            known[entry["target"]].add(entry["signature"])
    return known


def mutated(answer: bytes) -> st.SearchStrategy[bytes]:
    """One real answer, kept, or truncated, or with a byte changed, or another status word, or chaos."""
    options: list[st.SearchStrategy[bytes]] = [
        st.just(answer),
        st.just(answer),
        st.sampled_from(STATUS_WORDS).map(lambda sw: answer[:-2] + sw),
        chaos_answer,
    ]
    if answer:
        options += [
            st.integers(0, len(answer) - 1).map(lambda k: answer[:k]),
            st.tuples(st.integers(0, len(answer) - 1), st.integers(1, 255)).map(
                lambda f: answer[: f[0]] + bytes([answer[f[0]] ^ f[1]]) + answer[f[0] + 1 :]
            ),
        ]
    return st.one_of(*options)


def transcripts(base: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    """The real transcript, mutated answer by answer, with chaos answers inserted or the end cut."""

    @st.composite
    def build(draw: st.DrawFn) -> list[bytes]:
        answers = [draw(mutated(a)) for a in base]
        for _ in range(draw(st.integers(0, 2))):
            answers.insert(draw(st.integers(0, len(answers))), draw(chaos_answer))
        return answers[: draw(st.integers(0, len(answers)))] if draw(st.booleans()) else answers

    return build()


def _run_and_check(
    fuzzer: SessionFuzzer, target: str, answers: list[bytes], known: dict[str, set[str]]
) -> None:
    outcome = fuzzer.run(target, answers)
    try:
        check_outcome(target, outcome)
    finally:
        signature = repr(outcome.signature())
        if SAVE_CORPUS and signature not in known[target]:
            known[target].add(signature)
            save_entry(target, answers, outcome.signature(), f"found-{len(known[target]):03d}")


@pytest.mark.parametrize("target", TARGETS)
def test_a_good_card_is_identified(fuzzer: SessionFuzzer, target: str) -> None:
    """The base transcripts are real reads: replayed as plain answers they identify the card."""
    outcome = fuzzer.run(target, fuzzer.base(target))
    check_outcome(target, outcome)
    assert outcome.events[-1].type == "card.identified"


@pytest.mark.parametrize("target", TARGETS)
def test_mutated_transcripts_end_in_a_named_way(
    fuzzer: SessionFuzzer, target: str, known_endings: dict[str, set[str]]
) -> None:
    base = fuzzer.base(target)

    @fuzz
    @given(transcripts(base))
    def run(answers: list[bytes]) -> None:
        _run_and_check(fuzzer, target, answers, known_endings)

    run()


@pytest.mark.parametrize("target", TARGETS)
def test_chaos_transcripts_end_in_a_named_way(
    fuzzer: SessionFuzzer, target: str, known_endings: dict[str, set[str]]
) -> None:
    @fuzz
    @given(st.lists(chaos_answer, max_size=30))
    def run(answers: list[bytes]) -> None:
        _run_and_check(fuzzer, target, answers, known_endings)

    run()


@pytest.mark.parametrize("path", corpus_entries(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus(fuzzer: SessionFuzzer, path: Path) -> None:
    target, answers = load_entry(path)
    check_outcome(target, fuzzer.run(target, answers))


def test_the_corpus_covers_every_target() -> None:
    assert {p.parent.name for p in corpus_entries()} == set(TARGETS)
