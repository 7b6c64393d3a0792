"""``inferswarm keys | tokens | bans | audit``: API keys, join tokens, miner
bans and the audit log, either in a router's data dir (``--data-dir``, the
router may be running) or through a running router's admin API (``--router
URL --admin-key K``)."""

from __future__ import annotations

import asyncio
import functools
import getpass
import inspect
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import typer
from rich.console import Console
from rich.table import Table

from inferswarm.router.access import (
    MAX_LIMIT,
    MAX_TTL_S,
    AccessControl,
    KeySpec,
    UnknownObject,
    describe_audit,
    describe_ban,
    describe_key,
    describe_token,
    load_or_create_secret,
)
from inferswarm.router.settings import RouterSettings, default_data_dir

console = Console()

keys_app = typer.Typer(help="Client API keys: create, list, revoke.", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Join tokens that let miners join: create, list, revoke.", no_args_is_help=True
)
bans_app = typer.Typer(help="Ban miner ids from joining: add, list, remove.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="The router's data dir, used when no --router is given "
        "(default: ~/.local/share/inferswarm/router).",
        envvar="INFERSWARM_DATA_DIR",
    ),
]
StoreUrl = Annotated[
    str | None,
    typer.Option(help="The router's --store-url, if it has one.", envvar="INFERSWARM_STORE_URL"),
]
RouterUrl = Annotated[
    str | None,
    typer.Option(
        help="A running router's base URL: use its admin API instead of the data dir.",
        envvar="INFERSWARM_ROUTER",
        show_default=False,
    ),
]
AdminKey = Annotated[
    str | None,
    typer.Option(help="Admin key for --router.", envvar="INFERSWARM_ADMIN_KEY", show_default=False),
]
CaCert = Annotated[
    Path | None,
    typer.Option(help="CA certificate for an https --router.", envvar="INFERSWARM_CA_CERT"),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class AdminError(Exception):
    """An admin operation failed; the message says why."""


class Admin(Protocol):
    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...


class RemoteAdmin:
    """The admin API of a running router."""

    def __init__(self, router: str, admin_key: str, ca_cert: Path | None) -> None:
        self._base = router.rstrip("/") + "/v1/admin"
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else True
        )

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(verify=self._verify, timeout=30) as client:
            try:
                response = await client.request(
                    method, self._base + path, json=body, headers=self._headers
                )
            except httpx.HTTPError as exc:
                raise AdminError(f"cannot reach the router at {self._base}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise AdminError(f"the router answered {response.status_code}: {message}")
        return response.json()


class LocalAdmin:
    """The router's store and secret, opened directly; the same operations as the admin API."""

    def __init__(self, access: AccessControl) -> None:
        self._access = access
        self._actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        access, actor, body = self._access, self._actor, body or {}
        store = access.store
        parts = path.strip("/").split("/")
        try:
            match method, parts:
                case "GET", ["keys"]:
                    return {"data": [describe_key(k) for k in await store.list_api_keys()]}
                case "POST", ["keys"]:
                    spec = KeySpec(
                        body["name"],
                        tuple(body["models"]),
                        body["rpm"],
                        body["tpm"],
                        body["quota_tokens"],
                        body["admin"],
                    )
                    key, record = await access.create_key(spec, actor)
                    return {**describe_key(record), "key": key}
                case "DELETE", ["keys", key_id]:
                    await access.revoke_key(key_id, actor)
                    return {"id": key_id, "revoked": True}
                case "GET", ["tokens"]:
                    return {"data": [describe_token(t) for t in await store.list_join_tokens()]}
                case "POST", ["tokens"]:
                    token, made = await access.create_token(body["name"], body["ttl_s"], actor)
                    return {**describe_token(made), "token": token}
                case "DELETE", ["tokens", token_id]:
                    await access.revoke_token(token_id, actor)
                    return {"id": token_id, "revoked": True}
                case "GET", ["bans"]:
                    return {"data": [describe_ban(b) for b in await store.list_miner_bans()]}
                case "PUT", ["bans", miner_id]:
                    return describe_ban(await access.ban_miner(miner_id, body["reason"], actor))
                case "DELETE", ["bans", miner_id]:
                    await access.unban_miner(miner_id, actor)
                    return {"miner_id": miner_id, "banned": False}
                case "GET", ["audit"]:
                    return {"data": [describe_audit(e) for e in await store.audit_log(100)]}
        except UnknownObject as exc:
            raise AdminError(str(exc)) from None
        raise AssertionError(f"no local admin operation {method} {path}")


@asynccontextmanager
async def _local(data_dir: Path | None, store_url: str | None) -> Any:
    settings = RouterSettings(data_dir=data_dir or default_data_dir(), store_url=store_url)
    from inferswarm.storage.sql import open_store  # the database stack, only here

    secret = load_or_create_secret(settings.data_dir)  # creates the data dir too
    store = await open_store(settings.database_url())
    try:
        yield LocalAdmin(AccessControl(store, secret))
    finally:
        await store.close()


@dataclass(frozen=True)
class AdminTarget:
    """Where admin operations go: a running router's admin API, or the data dir."""

    router: str | None
    admin_key: str | None
    ca_cert: Path | None
    data_dir: Path | None
    store_url: str | None


def _target_options(
    router: RouterUrl = None,
    admin_key: AdminKey = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = None,
    store_url: StoreUrl = None,
) -> AdminTarget:
    return AdminTarget(router, admin_key, ca_cert, data_dir, store_url)


_TARGET_PARAMETERS = tuple(inspect.signature(_target_options, eval_str=True).parameters.values())


def with_admin_target(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(target: AdminTarget, ...)`` the five target options
    (``--router``, ``--admin-key``, ``--ca-cert``, ``--data-dir``, ``--store-url``)
    as its last command-line options, so every admin command spells them once."""
    own = inspect.signature(command, eval_str=True).parameters
    parameters = [p for name, p in own.items() if name != "target"] + list(_TARGET_PARAMETERS)

    @functools.wraps(command)
    def run(**options: Any) -> None:
        names = [p.name for p in _TARGET_PARAMETERS]
        target = _target_options(**{name: options.pop(name) for name in names})
        command(target=target, **options)

    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def admin_command(app: typer.Typer, name: str) -> Callable[[Callable[..., None]], Any]:
    """Register an admin command on ``app`` (see ``with_admin_target``)."""

    def register(command: Callable[..., None]) -> Any:
        return app.command(name)(with_admin_target(command))

    return register


def run_admin(target: AdminTarget, operation: Callable[[Admin], Awaitable[Any]]) -> Any:
    """Run ``operation`` against the admin API or the data dir; errors exit 1 with the reason."""

    async def go() -> Any:
        if target.router is not None:
            if not target.admin_key:
                raise AdminError("--router needs --admin-key (or INFERSWARM_ADMIN_KEY)")
            return await operation(RemoteAdmin(target.router, target.admin_key, target.ca_cert))
        async with _local(target.data_dir, target.store_url) as admin:
            return await operation(admin)

    try:
        return asyncio.run(go())
    except AdminError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None


def _when(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


# keys


@admin_command(keys_app, "create")
def keys_create(
    target: AdminTarget,
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    models: Annotated[
        list[str] | None,
        typer.Option("--models", help="Models the key may use (repeatable; default: all)."),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(min=1, max=MAX_LIMIT, help="Requests per minute.")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option(min=1, max=MAX_LIMIT, help="Tokens per minute.")
    ] = None,
    quota_tokens: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_LIMIT, help="Tokens in all, over the key's lifetime."),
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May use the admin API.")] = False,
    as_json: AsJson = False,
) -> None:
    """Create an API key. It is shown once, alone on the last line; only its hash is kept."""
    scope = [m for value in models or [] for m in value.split(",") if m]
    body = {
        "name": name,
        "models": scope,
        "rpm": rpm,
        "tpm": tpm,
        "quota_tokens": quota_tokens,
        "admin": admin,
    }
    created = run_admin(target, lambda a: a.call("POST", "/keys", body))
    if as_json:
        print(json.dumps(created))
        return
    limits = ", ".join(
        f"{label} {created[field]}"
        for label, field in (("rpm", "rpm"), ("tpm", "tpm"), ("quota", "quota_tokens"))
        if created[field] is not None
    )
    console.print(
        f"Created key [bold]{created['id']}[/bold] ({created['name']}; "
        f"models: {', '.join(created['models']) or 'all'}; limits: {limits or 'none'}"
        f"{'; admin' if created['admin'] else ''}). It is shown only now:",
        highlight=False,
    )
    print(created["key"])


@admin_command(keys_app, "list")
def keys_list(
    target: AdminTarget,
    as_json: AsJson = False,
) -> None:
    """List API keys (their prefixes and limits; the keys themselves are not kept)."""
    keys = run_admin(target, lambda a: a.call("GET", "/keys"))["data"]
    if as_json:
        print(json.dumps(keys))
        return
    rows = [
        [
            k["id"],
            k["name"],
            k["prefix"] + "…",
            ", ".join(k["models"]) or "all",
            str(k["rpm"] or "-"),
            str(k["tpm"] or "-"),
            str(k["quota_tokens"] or "-"),
            "yes" if k["admin"] else "",
            _when(k["created_at"]),
            _when(k["revoked_at"]),
        ]
        for k in keys
    ]
    columns = ["id", "name", "key", "models", "rpm", "tpm", "quota", "admin", "created"]
    _table("API keys", [*columns, "revoked"], rows)


@admin_command(keys_app, "revoke")
def keys_revoke(
    target: AdminTarget,
    key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    run_admin(target, lambda a: a.call("DELETE", f"/keys/{key_id}"))
    console.print(f"Revoked {key_id}.")


# join tokens


@admin_command(tokens_app, "create")
def tokens_create(
    target: AdminTarget,
    name: Annotated[str, typer.Option(help="Whose miners will use it.")],
    ttl: Annotated[
        float | None,
        typer.Option(min=1, max=MAX_TTL_S, help="Seconds until it expires (default: never)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Create a join token for miners (`inferswarm miner --join-token …`); shown once, last line."""
    created = run_admin(target, lambda a: a.call("POST", "/tokens", {"name": name, "ttl_s": ttl}))
    if as_json:
        print(json.dumps(created))
        return
    console.print(
        f"Created join token [bold]{created['id']}[/bold] ({created['name']}, "
        f"expires {_when(created['expires_at'])}). It is shown only now:",
        highlight=False,
    )
    print(created["token"])


@admin_command(tokens_app, "list")
def tokens_list(
    target: AdminTarget,
    as_json: AsJson = False,
) -> None:
    """List join tokens."""
    tokens = run_admin(target, lambda a: a.call("GET", "/tokens"))["data"]
    if as_json:
        print(json.dumps(tokens))
        return
    rows = [
        [
            t["id"],
            t["name"],
            t["prefix"] + "…",
            _when(t["created_at"]),
            _when(t["expires_at"]),
            _when(t["revoked_at"]),
        ]
        for t in tokens
    ]
    _table("Join tokens", ["id", "name", "token", "created", "expires", "revoked"], rows)


@admin_command(tokens_app, "revoke")
def tokens_revoke(
    target: AdminTarget,
    token_id: Annotated[str, typer.Argument(help="The token's id (see `tokens list`).")],
) -> None:
    """Revoke a join token: miners can no longer join with it (connected ones stay)."""
    run_admin(target, lambda a: a.call("DELETE", f"/tokens/{token_id}"))
    console.print(f"Revoked {token_id}.")


# bans


@admin_command(bans_app, "add")
def bans_add(
    target: AdminTarget,
    miner_id: Annotated[str, typer.Argument(help="The miner's id (see `inferswarm status`).")],
    reason: Annotated[str, typer.Option(help="Shown to the miner and in the audit log.")] = (
        "banned by the operator"
    ),
) -> None:
    """Ban a miner id: refused at its next handshake (at once, through --router)."""
    run_admin(target, lambda a: a.call("PUT", f"/bans/{miner_id}", {"reason": reason}))
    console.print(f"Banned {miner_id}.")


@admin_command(bans_app, "list")
def bans_list(
    target: AdminTarget,
    as_json: AsJson = False,
) -> None:
    """List banned miner ids."""
    bans = run_admin(target, lambda a: a.call("GET", "/bans"))["data"]
    if as_json:
        print(json.dumps(bans))
        return
    rows = [[b["miner_id"], b["reason"], b["created_by"], _when(b["created_at"])] for b in bans]
    _table("Banned miners", ["miner id", "reason", "by", "since"], rows)


@admin_command(bans_app, "remove")
def bans_remove(
    target: AdminTarget,
    miner_id: Annotated[str, typer.Argument(help="The banned miner's id.")],
) -> None:
    """Lift a ban."""
    run_admin(target, lambda a: a.call("DELETE", f"/bans/{miner_id}"))
    console.print(f"Unbanned {miner_id}.")


@with_admin_target
def audit(
    target: AdminTarget,
    as_json: AsJson = False,
) -> None:
    """Show the newest admin operations (keys, tokens, bans), newest first."""
    entries = run_admin(target, lambda a: a.call("GET", "/audit"))["data"]
    if as_json:
        print(json.dumps(entries))
        return
    rows = [
        [_when(e["at"]), e["actor"], e["action"], e["target"], json.dumps(e["details"])]
        for e in entries
    ]
    _table("Audit log", ["when", "who", "action", "target", "details"], rows)
