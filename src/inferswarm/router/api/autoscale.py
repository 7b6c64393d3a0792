"""``GET /v1/autoscale``: the autoscaler's settings, its latest decisions, the
loads it asked of miners (placements) and the models it unloaded."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from inferswarm.openai_compat.errors import NotFound
from inferswarm.router.scale.autoscaler import (
    DECISIONS_KEPT,
    Autoscaler,
    DecisionRecord,
    PlacementRecord,
    UnloadRecord,
)

router = APIRouter()


@router.get("/v1/autoscale")
async def autoscale_state(
    request: Request, limit: Annotated[int, Query(ge=1, le=DECISIONS_KEPT)] = 50
) -> dict[str, Any]:
    scaler: Autoscaler | None = request.app.state.autoscaler
    if scaler is None:
        raise NotFound(
            "Autoscaling is off on this router. Start it with --autoscale local|command|standby.",
            code="autoscale_off",
        )
    return {
        "provider": scaler.provider.name,
        "interval_s": scaler.interval_s,
        "policy": dataclasses.asdict(scaler.policy),
        "evaluations": scaler.evaluations,
        "decisions": [_record(r) for r in list(scaler.decisions)[-limit:]],
        "placements": [_placement(p) for p in list(scaler.placements)[-limit:]],
        "unloads": [_unload(u) for u in list(scaler.unloads)[-limit:]],
    }


def _unload(record: UnloadRecord) -> dict[str, Any]:
    return {
        "evaluation": record.evaluation,
        "at": record.at,
        **dataclasses.asdict(record.removal),
        "outcome": record.outcome,
    }


def _placement(record: PlacementRecord) -> dict[str, Any]:
    return {
        "evaluation": record.evaluation,
        "at": record.at,
        **dataclasses.asdict(record.load),
        "outcome": record.outcome,
    }


def _record(record: DecisionRecord) -> dict[str, Any]:
    decision = record.decision
    return {
        "evaluation": record.evaluation,
        "at": record.at,
        "model": decision.model,
        "current": decision.current,
        "desired": decision.desired,
        "direction": decision.direction.value,
        "reason": decision.reason,
        "action": record.action,
        "signals": dataclasses.asdict(record.signals),
    }
