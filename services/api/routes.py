"""HTTP edge of the api: domain errors become statuses here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from services.api import handlers, reads
from services.api.deps import ImagesDep, PackIntakeDep, ReaderDep, WriterKey
from services.api.packs import IDEMPOTENCY_KEY, accept

router = APIRouter()
STATIC = Path(__file__).parent / "static"


@router.post("/v1/packs", status_code=202, response_model=handlers.PackAccepted202)
async def create_pack(
    body: handlers.PackRequestBody, key: WriterKey, intake: PackIntakeDep,
    idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY_KEY, description="1-200 printable ASCII characters")] = None,
) -> Response:
    # Ordinary requests are served by `packs.PackFastPath` before they get here; this route
    # answers the rest (every error) and documents the endpoint. The answer is sent as it
    # is: FastAPI would validate and serialize a returned PackAccepted202 a second time.
    return JSONResponse(await accept(intake, key, body, idempotency_key), status_code=202)


@router.get("/v1/images/{pack_id}/{image_id}", response_class=StreamingResponse,
            responses={200: {"content": {"image/png": {}}}, 304: {"description": "If-None-Match names its ETag"},
                       404: {"description": "no such image (or another user's)"}})
async def get_image(
    pack_id: str, image_id: str, user_id: ReaderDep, images: ImagesDep, if_none_match: reads.IfNoneMatch = None,
) -> Response:
    """The image's bytes from the image store (a directory or S3), streamed as they are
    read, with a strong ETag; 304 when If-None-Match names it."""
    image = await images.open_owned(pack_id, image_id, user_id)
    if image is None:
        raise HTTPException(404, "no such image")
    return reads.image_response(image, if_none_match)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text())
