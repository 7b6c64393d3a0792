"""Verification on a real router with real (fake-engine) miner processes, one
of them cheating through ``--fault``: the official openai client never gets
the corrupt answer with redundancy 3, and spot checks quarantine the cheater."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest

from netutil import Network

MODEL = "fake-model"
HONEST = " w0 w1 w2 w3 w4"


def client(net: Network) -> openai.OpenAI:
    return openai.OpenAI(base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=60)


def states(net: Network) -> dict[str, dict[str, Any]]:
    return {str(m["name"]): m for m in net.miners()}


def ask(api: openai.OpenAI, **inferswarm: Any) -> Any:
    return api.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "what is it?"}],
        max_tokens=5,
        temperature=0,
        extra_body={"inferswarm": inferswarm} if inferswarm else None,
    )


def test_redundancy_3_never_hands_out_the_corrupt_answer(net: Network) -> None:
    net.start_router()
    net.start_miner("honest1")
    net.start_miner("honest2")
    net.start_miner("cheat", "--fault", "corrupt")
    net.wait_miners(3)
    cheat_id = states(net)["cheat"]["id"]
    with client(net) as api:
        raw = ask(api, redundancy=3, consensus="exact")
        reply = raw.parse()
        assert reply.choices[0].message.content == HONEST
        report = raw.http_response.json()["inferswarm"]["verification"][0]
        assert report["verdict"] == "majority"
        assert report["disagreed"] == [cheat_id]
        assert len(report["agreed"]) == 2
        assert raw.headers["x-inferswarm-verification"].startswith("majority")

        # One lost vote could be a false verdict: trusted less, not yet quarantined.
        miners = states(net)
        assert miners["cheat"]["state"] == "live"
        assert miners["cheat"]["reputation"] < miners["honest1"]["reputation"]
        asked = 1
        while states(net)["cheat"]["state"] != "quarantined":
            assert asked < 10, states(net)["cheat"]
            raw = ask(api, redundancy=3, consensus="exact")
            assert raw.parse().choices[0].message.content == HONEST
            asked += 1
        assert states(net)["honest1"]["state"] == "live"

        # Two trusted miners are left: redundancy 3 is refused with the reason,
        # redundancy 2 is served by the honest pair only.
        with pytest.raises(openai.APIStatusError) as refused:
            ask(api, redundancy=3)
        assert refused.value.status_code == 503
        assert "Redundancy 3 needs 3 trusted miners" in str(refused.value)
        for _ in range(5):
            assert ask(api, redundancy=2).parse().choices[0].message.content == HONEST
            assert ask(api).parse().choices[0].message.content == HONEST

    events = httpx.get(net.base_url + "/v1/network").json()["events"]
    kinds = {(e["kind"], e["miner_id"]) for e in events}
    assert ("verify_fail", cheat_id) in kinds
    assert ("quarantine", cheat_id) in kinds

    # The ledger holds every signed result with its verdict, attributable by key.
    with sqlite3.connect(net.workdir / "router" / "router.db") as db:
        rows = db.execute("SELECT miner_id, verdict, signature, public_key FROM results").fetchall()
        purposes = set(db.execute("SELECT miner_id, purpose FROM results"))
    # ... and why each ran: redundant copies, plain requests, the cheat's canaries.
    assert {p for m, p in purposes if m != cheat_id} == {"redundant", "request"}
    assert "redundant" in {p for m, p in purposes if m == cheat_id} <= {"redundant", "canary"}
    verdicts = {(miner, verdict) for miner, verdict, _, _ in rows}
    assert (cheat_id, "rejected") in verdicts
    assert {v for m, v in verdicts if m != cheat_id} >= {"agreed"}
    assert all(len(sig) == 128 and len(key) == 64 for _, _, sig, key in rows)

    metrics = httpx.get(net.base_url + "/metrics").text
    assert (
        'inferswarm_verifications_total{consensus="exact",purpose="redundant",verdict="majority"} '
        f"{asked}.0" in metrics
    )
    assert "inferswarm_miners_quarantined 1.0" in metrics


def test_spot_checks_quarantine_a_cheater_and_spare_honest_miners(net: Network) -> None:
    net.start_router("--spot-check-rate", "1.0")
    for name in ("honest1", "honest2", "honest3"):
        net.start_miner(name)
    net.start_miner("cheat", "--fault", "corrupt")
    net.wait_miners(4)
    deadline = time.monotonic() + 60
    with client(net) as api:
        while states(net)["cheat"]["state"] != "quarantined":
            assert time.monotonic() < deadline, states(net)
            ask(api)
        for _ in range(10):  # afterwards the cheater gets no client work
            assert ask(api).parse().choices[0].message.content == HONEST
    miners = states(net)
    for name in ("honest1", "honest2", "honest3"):
        assert miners[name]["state"] == "live"
        assert miners[name]["verification"]["failed"] == 0
    assert miners["cheat"]["verification"]["failed"] >= 1


def test_an_unknown_fault_is_explained(net: Network) -> None:
    proc = net.start_miner("bad", "--fault", "explode")
    proc.popen.wait(60)
    assert proc.popen.returncode == 2
    assert "unknown fault 'explode'" in proc.output()


def test_teacher_forced_spot_checks_catch_sampled_cheaters(net: Network) -> None:
    """Sampled tasks (temperature 0.8) cannot be re-run for comparison; the
    teacher-forced check scores them on a trusted miner instead: the cheaters
    fail it for their reasons, the honest miners pass it."""
    net.start_router("--spot-check-rate", "1.0", "--spot-check-strategy", "teacher")
    for name in ("honest1", "honest2"):
        net.start_miner(name)
    net.start_miner("corrupt", "--fault", "corrupt")
    net.start_miner("lazy", "--fault", "lazy")
    net.start_miner("fabricator", "--fault", "fabricate-logprobs")
    net.wait_miners(5)

    def done(miners: dict[str, dict[str, Any]]) -> bool:
        failed = [miners[n]["verification"]["failed"] for n in ("corrupt", "lazy", "fabricator")]
        passed = [miners[n]["verification"]["passed"] for n in ("honest1", "honest2")]
        return min(failed) >= 1 and min(passed) >= 1

    deadline = time.monotonic() + 60
    with client(net) as api:
        while not done(miners := states(net)):
            assert time.monotonic() < deadline, miners
            api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "tell me"}],
                max_tokens=8,
                temperature=0.8,
            )
    for name in ("honest1", "honest2"):
        assert miners[name]["verification"]["failed"] == 0
        for cheat in ("corrupt", "lazy", "fabricator"):
            assert miners[cheat]["reputation"] < miners[name]["reputation"]
    events = httpx.get(net.base_url + "/v1/network").json()["events"]
    details: dict[str, list[str]] = {}
    for event in events:
        if event["kind"] == "verify_fail":
            details.setdefault(event["miner_id"], []).append(event["detail"])
    teacher = "spot check (teacher-forced): "
    corrupt, lazy = details[miners["corrupt"]["id"]], details[miners["lazy"]["id"]]
    assert teacher + "100% of its tokens are outside the model's top 40" in corrupt
    assert any(d.startswith(teacher + "it claims 8 tokens; its text has ") for d in lazy), lazy
    # Its text is honest; what it claims about it is not (every task claims log-probabilities).
    fabricated = details[miners["fabricator"]["id"]]
    assert any("of its claimed log-probabilities are wrong" in d for d in fabricated), fabricated
    metrics = httpx.get(net.base_url + "/metrics").text
    assert 'consensus="teacher",purpose="spot_check",verdict="failed"' in metrics
