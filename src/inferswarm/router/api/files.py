"""``/v1/files``: upload, describe, download and delete files (batch input,
and the output and error files of batches)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from inferswarm.openai_compat.errors import InvalidRequest, NotFound, PayloadTooLarge
from inferswarm.storage import BlobDir, FileRecord, Store

router = APIRouter()

UPLOAD_PURPOSES = frozenset({"batch", "user_data"})
"""``batch``: Batch API input; ``user_data``: input of a map-reduce job."""
READ_CHUNK = 1 << 20


def owner_of(request: Request) -> str:
    """Whose files and jobs these are: the key's tenant, or everyone's on a
    router without auth."""
    if not request.app.state.settings.auth_enabled:
        return "local"
    tenant: str = request.state.tenant
    return tenant


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


async def owned_file(request: Request, file_id: str) -> FileRecord:
    store: Store = request.app.state.store
    record = await store.get_file(file_id)
    if record is None or record.owner != owner_of(request):
        raise NotFound(
            f"No file with id '{file_id}'. List your files with GET /v1/files.",
            param="file_id",
            code="file_not_found",
        )
    return record


@router.post("/v1/files")
async def upload_file(
    request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> dict[str, Any]:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported; upload batch input with purpose 'batch', "
            "map-reduce input with purpose 'user_data'.",
            param="purpose",
            code="invalid_purpose",
        )
    limit: int = request.app.state.settings.max_file_bytes
    blobs: BlobDir = request.app.state.blobs
    file_id = f"file-{uuid.uuid4().hex}"
    try:
        size = await blobs.write_chunks(file_id, _bounded(file, limit))
    except PayloadTooLarge:
        blobs.delete(file_id)
        raise
    if size == 0:
        blobs.delete(file_id)
        raise InvalidRequest("The file is empty.", param="file", code="empty_file")
    record = FileRecord(
        id=file_id,
        owner=owner_of(request),
        purpose=purpose,
        filename=file.filename or "upload.jsonl",
        bytes=size,
        created_at=int(time.time()),
    )
    await request.app.state.store.add_file(record)
    return file_object(record)


async def _bounded(upload: UploadFile, limit: int) -> AsyncIterator[bytes]:
    total = 0
    while chunk := await upload.read(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"The file is larger than the limit of {limit} bytes. Split it into several "
                "batches, or raise the router's --max-file-mb.",
                param="file",
                code="file_too_large",
            )
        yield chunk


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None) -> dict[str, Any]:
    records = await request.app.state.store.list_files(owner_of(request), purpose)
    return {"object": "list", "data": [file_object(r) for r in records], "has_more": False}


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str) -> dict[str, Any]:
    return file_object(await owned_file(request, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    record = await owned_file(request, file_id)
    blobs: BlobDir = request.app.state.blobs
    return Response(blobs.read(record.id), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    record = await owned_file(request, file_id)
    await request.app.state.store.delete_file(record.id)
    request.app.state.blobs.delete(record.id)
    return {"id": record.id, "object": "file", "deleted": True}
