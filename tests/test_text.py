from __future__ import annotations

from inferswarm.miner.engines.text import StopSequenceFilter


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    text_filter = StopSequenceFilter(stops)
    out = "".join(text_filter.feed(p) for p in pieces)
    return out + text_filter.flush(), text_filter.stopped


def test_text_without_stops_passes_through() -> None:
    assert run(["Hel", "lo"], ()) == ("Hello", False)


def test_stop_sequence_is_cut_and_not_emitted() -> None:
    assert run(["Paris", ". And", " more"], (".",)) == ("Paris", True)


def test_stop_split_across_pieces_is_held_back_then_cut() -> None:
    text_filter = StopSequenceFilter(("END",))
    assert text_filter.feed("abc E") == "abc "
    assert text_filter.feed("N") == ""
    assert text_filter.feed("D tail") == ""
    assert text_filter.stopped


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    assert run(["abc E", "Nx"], ("END",)) == ("abc ENx", False)


def test_utf8_split_across_tokens_is_reassembled() -> None:
    text_filter = StopSequenceFilter(())
    euro = "€".encode()
    assert text_filter.feed_bytes(euro[:1]) == ""
    assert text_filter.feed_bytes(euro[1:]) == "€"
