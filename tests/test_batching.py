"""Continuous batching decisions, without a model: where a prompt goes, how
much of it is reused, and what one decode step processes."""

from __future__ import annotations

from inferswarm.miner.engines.batching import (
    Placement,
    SequenceTable,
    Stream,
    advance,
    common_prefix,
    plan_step,
    prefix_block_hashes,
)


def test_common_prefix_counts_leading_equal_tokens() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def finished(table: SequenceTable, tokens: list[int]) -> int:
    """Run ``tokens`` through a sequence as if decoded, and leave it idle with its cache."""
    placement = table.place(tokens)
    assert placement is not None
    table.start(placement)
    table.extend(placement.seq_id, tokens[placement.reuse :])
    table.release(placement.seq_id, keep_cache=True)
    return placement.seq_id


def test_a_prompt_reuses_the_idle_sequence_holding_its_prefix() -> None:
    table = SequenceTable(3)
    system = [1, 2, 3, 4, 5]
    holder = finished(table, [*system, 9, 9])
    finished(table, [7, 7, 7])
    assert table.place([*system, 6]) == Placement(holder, reuse=5)


def test_the_last_prompt_token_is_always_computed() -> None:
    table = SequenceTable(1)
    finished(table, [1, 2, 3])
    assert table.place([1, 2, 3]) == Placement(0, reuse=2)


def test_a_prefix_held_by_a_busy_sequence_is_copied() -> None:
    table = SequenceTable(2)
    busy = table.place([1, 2, 3, 4])
    assert busy is not None
    table.start(busy)
    table.extend(busy.seq_id, [1, 2, 3, 4])
    placement = table.place([1, 2, 3, 9])
    assert placement == Placement(1, reuse=3, copy_from=busy.seq_id)
    table.start(placement)
    assert table.cached(1) == [1, 2, 3]


def test_without_prefix_reuse_every_prompt_is_computed_whole() -> None:
    table = SequenceTable(2, reuse_prefixes=False)
    finished(table, [1, 2, 3])
    placement = table.place([1, 2, 3, 4])
    assert placement is not None and placement.reuse == 0 and placement.copy_from is None


def test_no_sequence_when_all_are_busy_and_a_freed_one_comes_back() -> None:
    table = SequenceTable(1)
    first = table.place([1])
    assert first is not None and table.free == 0
    assert table.place([2]) is None
    table.release(first.seq_id, keep_cache=False)
    assert table.free == 1
    assert table.cached(first.seq_id) == []


def test_among_equal_matches_the_least_recently_used_sequence_is_taken() -> None:
    table = SequenceTable(2)
    older = finished(table, [5])
    newer = finished(table, [6])
    assert newer != older
    placement = table.place([8, 8])
    assert placement is not None and placement.seq_id == older


def test_generating_streams_go_first_and_prompts_fill_the_budget_in_chunks() -> None:
    long_prompt = Stream(seq_id=0, pending=list(range(10)), position=0)
    generating = Stream(seq_id=1, pending=[42], position=7, decoding=True)
    later_prompt = Stream(seq_id=2, pending=[1, 2], position=0)
    plan = plan_step([long_prompt, generating, later_prompt], budget=5)
    assert [(p.stream.seq_id, p.tokens, p.position) for p in plan] == [
        (1, [42], 7),
        (0, [0, 1, 2, 3], 0),
    ]
    assert [p.wants_logits for p in plan] == [True, False]
    advance(plan)
    assert long_prompt.pending == [4, 5, 6, 7, 8, 9] and long_prompt.position == 4
    assert generating.pending == [] and generating.position == 8
    plan = plan_step([long_prompt, generating, later_prompt], budget=10)
    assert [(p.stream.seq_id, len(p.tokens), p.wants_logits) for p in plan] == [
        (0, 6, True),
        (2, 2, True),
    ]


def test_prefix_block_hashes_are_equal_exactly_for_equal_prefixes() -> None:
    a = prefix_block_hashes(list(range(10)), block=4)
    b = prefix_block_hashes([*range(8), 99, 99], block=4)
    c = prefix_block_hashes([0, *range(1, 10)][::-1], block=4)
    assert len(a) == 2 and a == b
    assert set(a).isdisjoint(c)
    table = SequenceTable(2)
    finished(table, list(range(10)))
    assert table.prefix_blocks(block=4) == frozenset(a)


def test_sequences_remember_the_routers_blocks_of_the_prompt_they_hold() -> None:
    table = SequenceTable(2)
    first = table.place([1, 2, 3])
    assert first is not None
    table.start(first, text_blocks=(11, 12))
    second = table.place([4, 5])
    assert second is not None
    table.start(second, text_blocks=(21,))
    assert table.held_text_blocks() == {11, 12, 21}
    table.release(first.seq_id, keep_cache=True)  # idle, cache kept: still held
    table.release(second.seq_id, keep_cache=False)  # cancelled: cells freed
    assert table.held_text_blocks() == {11, 12}
    again = table.place([1, 2, 3, 6])  # reuses the first sequence, now for a new prompt
    assert again is not None and again.seq_id == first.seq_id
    table.start(again, text_blocks=(11, 13))
    assert table.held_text_blocks() == {11, 13}
