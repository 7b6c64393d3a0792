from __future__ import annotations

from inferswarm.protocol import MinerId
from inferswarm.router.affinity import (
    BLOCK_CHARS,
    PrefixIndex,
    SessionMap,
    min_prompt_tokens,
    prefix_blocks,
)

A, B = MinerId("a"), MinerId("b")


def test_prefix_blocks_chain_so_equal_hashes_mean_equal_prefixes() -> None:
    system = "s" * (BLOCK_CHARS * 2)
    one = prefix_blocks(system + "first question" + "x" * BLOCK_CHARS)
    two = prefix_blocks(system + "second question" + "y" * BLOCK_CHARS)
    assert one[:2] == two[:2]
    assert one[2] != two[2]
    assert prefix_blocks("short") == ()


def test_a_miner_holds_as_many_prompts_as_it_has_slots() -> None:
    index = PrefixIndex()
    index.record(A, (1, 2), keep=1)
    assert index.view()[1] == {A}
    index.record(A, (1, 3), keep=1)  # same first block, new second block
    assert index.view()[1] == {A} and 2 not in index.view() and index.view()[3] == {A}
    index.record(B, (1, 3), keep=2)
    index.record(B, (4,), keep=2)
    assert index.view()[1] == {A, B}
    index.forget(A)
    assert index.view()[1] == {B} and len(index) == 3


def test_a_reported_cache_replaces_the_guess_and_new_work_adds_to_it() -> None:
    index = PrefixIndex()
    index.record(A, (1, 2), keep=2)
    index.replace(A, (7, 8))  # the heartbeat says: the cache holds these, not 1 and 2
    assert index.view() == {7: {A}, 8: {A}}
    index.record(A, (9,), keep=2)  # sent since the report; the next report confirms or not
    assert index.view()[9] == {A} and index.view()[7] == {A}
    index.replace(A, ())
    assert index.view() == {}


def test_sessions_are_bounded() -> None:
    sessions = SessionMap(capacity=2)
    sessions.record("x", A)
    sessions.record("y", B)
    sessions.record("z", A)
    assert dict(sessions.view()) == {"y": B, "z": A}


def test_token_estimate_is_a_lower_bound() -> None:
    assert min_prompt_tokens("word " * 100) <= 100
