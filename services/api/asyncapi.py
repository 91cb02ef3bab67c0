"""`GET /asyncapi.json`: the AsyncAPI document of the topics, next to /openapi.json and like
it without auth. Built once from the topic registry by the same generator as
schemas/asyncapi.json, so the two cannot differ."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Response

from shared import asyncapi

router = APIRouter()


@cache
def _document() -> bytes:
    return asyncapi.render(asyncapi.document()).encode()


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi_document() -> Response:
    return Response(_document(), media_type="application/json")
