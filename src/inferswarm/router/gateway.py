"""The miner gateway: ``GET /miner/ws``, the WebSocket that miners dial.

The first frame must be a ``Register`` of our protocol version, from a miner
that holds a join token (sent as ``Authorization: Bearer <token>`` on the
upgrade request, unless the router runs with ``--open-join``) and whose id is
not banned; its miner id must derive from its public key, and the router then
sends a random challenge that the miner must sign with that key. Anything else
is answered with ``Refused`` and a close, so the miner operator reads why.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from inferswarm.protocol import (
    PROTOCOL_VERSION,
    Challenge,
    ChallengeAnswer,
    Refused,
    Register,
    Registered,
    encode,
    parse_miner_message,
)
from inferswarm.protocol.signing import challenge_payload, miner_id_for, verify_signature
from inferswarm.router.access import AccessControl
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.settings import RouterSettings

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008


async def serve_miner(
    websocket: WebSocket,
    registry: MinerRegistry,
    settings: RouterSettings,
    access: AccessControl,
) -> None:
    await websocket.accept()
    info = await _handshake(websocket, settings)
    if info is None:
        return
    refusal = await _admission(websocket, info, settings, access)
    if refusal is not None:
        await _refuse(websocket, refusal, info)
        return

    async def close(reason: str) -> None:
        try:
            await websocket.close(code=POLICY_VIOLATION, reason=reason[:120])
        except Exception:
            log.debug("closing miner socket %s failed; already closed", info.miner_id)

    peer = websocket.client.host if websocket.client else ""
    conn = await registry.add(info, websocket.send_text, close, address=peer)
    reason = "the connection closed"
    try:
        await websocket.send_text(
            encode(
                Registered(
                    miner_id=info.miner_id, heartbeat_interval_s=settings.heartbeat_interval_s
                )
            )
        )
        while True:
            frame = await websocket.receive_text()
            message = parse_miner_message(frame)
            if isinstance(message, Register | ChallengeAnswer):
                raise ValueError(f"a {message.type} frame after registration")
            registry.on_message(conn, message)
    except WebSocketDisconnect:
        pass
    except (ValidationError, ValueError) as exc:
        reason = f"protocol error: {exc}"
        log.warning("miner %s sent a bad frame, disconnecting: %s", info.miner_id, exc)
        await close(reason)
    finally:
        await registry.remove(conn, reason)


async def _handshake(websocket: WebSocket, settings: RouterSettings) -> Register | None:
    try:
        frame = await asyncio.wait_for(websocket.receive_text(), settings.register_timeout_s)
        message = parse_miner_message(frame)
    except (TimeoutError, WebSocketDisconnect):
        return None
    except (ValidationError, KeyError, RuntimeError) as exc:
        await _refuse(websocket, f"the first frame must be a valid register message: {exc}")
        return None
    if not isinstance(message, Register):
        await _refuse(websocket, "the first frame must be a register message")
        return None
    if message.protocol_version != PROTOCOL_VERSION:
        await _refuse(
            websocket,
            f"protocol version {message.protocol_version} is not supported; this router speaks "
            f"version {PROTOCOL_VERSION}. Upgrade inferswarm on the miner or the router so they match.",
        )
        return None
    if not await _proves_identity(websocket, message, settings):
        return None
    return message


async def _proves_identity(
    websocket: WebSocket, register: Register, settings: RouterSettings
) -> bool:
    """The miner id derives from the public key and the miner signs our challenge with it."""
    if not register.public_key:
        await _refuse(websocket, "the register message has no public_key; upgrade inferswarm")
        return False
    if register.miner_id != miner_id_for(register.public_key):
        await _refuse(
            websocket,
            f"miner id {register.miner_id} does not derive from the public key sent "
            f"(expected {miner_id_for(register.public_key)}); ids are not chosen, they come from the key",
        )
        return False
    nonce = secrets.token_hex(16)
    await websocket.send_text(encode(Challenge(nonce=nonce)))
    try:
        frame = await asyncio.wait_for(websocket.receive_text(), settings.register_timeout_s)
        answer = parse_miner_message(frame)
    except (TimeoutError, WebSocketDisconnect):
        return False
    except (ValidationError, KeyError, RuntimeError) as exc:
        await _refuse(websocket, f"expected a challenge_answer: {exc}")
        return False
    payload = challenge_payload(nonce, register.miner_id)
    if not isinstance(answer, ChallengeAnswer) or not verify_signature(
        register.public_key, payload, answer.signature
    ):
        await _refuse(websocket, "the challenge was not signed with the key of this miner id")
        return False
    return True


async def _admission(
    websocket: WebSocket, info: Register, settings: RouterSettings, access: AccessControl
) -> str | None:
    """Why this miner may not join, or None."""
    if not settings.open_join:
        scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
        refusal = await access.check_token(token.strip() if scheme.lower() == "bearer" else None)
        if refusal is not None:
            return refusal
    ban = await access.store.miner_ban(info.miner_id)
    if ban is not None:
        return (
            f"the miner id {info.miner_id} is banned by this router's operator "
            f"({ban.reason}); contact the operator"
        )
    return None


async def _refuse(websocket: WebSocket, reason: str, info: Register | None = None) -> None:
    who = f"miner {info.miner_id} ({info.name})" if info is not None else "a miner"
    client = websocket.client.host if websocket.client else "unknown address"
    log.warning("refused %s from %s: %s", who, client, reason)
    await websocket.send_text(encode(Refused(reason=reason)))
    await websocket.close(code=POLICY_VIOLATION, reason="refused")
