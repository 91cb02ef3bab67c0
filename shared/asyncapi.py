"""The AsyncAPI 3 document of every topic, built from the topic registry and the event
models: what `make schemas` writes to schemas/asyncapi.json and the api serves at
/asyncapi.json. One generator, so the file, the endpoint and the code cannot disagree."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from shared.events import Event, json_schema
from shared.topics import (
    IMAGES_DLQ,
    IMAGES_JOBS,
    INVALID_DLQ,
    PACKS_ACCEPTED,
    PACKS_REQUESTED,
    REGISTRY,
    RETRY_TIERS,
    TopicSpec,
)

FILE = "asyncapi.json"  # in schemas/, next to the event schemas
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
COUNT = {"type": "string", "pattern": "^[0-9]+$"}  # Kafka header values are bytes: numbers travel as decimal text

# Header sets (components/schemas/headers.*): which message carries which is decided per topic below.
HEADER_SETS: dict[str, tuple[str, dict[str, dict[str, Any]], tuple[str, ...]]] = {
    "trace": ("W3C trace context, on any message (optional)", {
        "traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                        "description": "W3C Trace Context `traceparent` of the operation that published the message"},
        "tracestate": {"type": "string", "maxLength": 512, "description": "W3C Trace Context `tracestate`, vendor data"},
    }, ()),
    "failure": ("on every retried or dead-lettered message (shared.kafka.failure_headers)", {
        "x-attempts": {**COUNT, "description": "attempts made so far"},
        "x-error": {"type": "string", "maxLength": 1000, "description": "the error of the last attempt"},
        "x-error-type": {"type": "string", "description": "the error class: `TransientImageError`, `PermanentImageError`, "
                                                          "`InvalidMessage`, or the exception's class"},
        "x-original-topic": {"type": "string", "description": "the topic the message was first read from"},
        "x-first-failed-at": {**COUNT, "description": "epoch milliseconds of the first failure; kept across attempts"},
    }, ("x-attempts", "x-error", "x-error-type", "x-original-topic", "x-first-failed-at")),
    "retry": ("on a job waiting in a retry tier", {
        "x-due-at": {**COUNT, "description": "epoch milliseconds when the job may run again"},
        "x-original-partition": {**COUNT, "description": "the partition of x-original-topic the job was first read from"},
    }, ("x-due-at",)),
    "invalid": ("where an invalid message was read, and what it carried", {
        "x-original-partition": {**COUNT, "description": "its partition in x-original-topic"},
        "x-original-offset": {**COUNT, "description": "its offset in that partition"},
        "x-original-headers": {"type": "string", "contentMediaType": "application/json",
                               "description": "its own headers, a JSON list of [name, value] (kept for a replay)"},
        "x-bad-header": {"type": "string", "description": "the header that was malformed, when one was"},
    }, ("x-original-partition", "x-original-offset")),
    "redrive": ("on a pack published again by redrive", {
        "x-redriven": {"type": "string", "const": "1", "description": "`1` when the pack was re-published by redrive"},
    }, ()),
    "webhook": ("on a webhook delivery that failed (retried or dead-lettered)", {
        "x-webhook-id": {"type": "string", "description": "the delivery's `webhook-id`, the same on every attempt"},
        "x-pack-id": {"type": "string", "description": "the pack the delivery is about"},
        "x-backoff-ms": {**COUNT, "description": "on a retry tier: the delay chosen before the next attempt, in milliseconds"},
    }, ("x-webhook-id", "x-pack-id")),
    "replay": ("on a dead-lettered message sent back by an operator", {
        "x-replayed-from": {"type": "string", "description": "the dead-letter entry id (`dlq:<partition>:<offset>`)"},
        "x-replayed-by": {"type": "string", "description": "the operator who replayed it"},
    }, ()),
}
# One message trait per combination of header sets that a topic's messages carry.
TRAITS: dict[str, tuple[str, ...]] = {
    "traced": ("trace",),
    "redriven": ("trace", "redrive"),
    "replayable": ("trace", "replay"),
    "retried": ("trace", "failure", "retry"),
    "deadLettered": ("trace", "failure"),
    "invalid": ("trace", "failure", "invalid"),
    "webhookRetried": ("trace", "failure", "retry", "webhook"),
    "webhookDeadLettered": ("trace", "failure", "webhook"),
}
# Webhook topics by name: their specs are optional to this module (a registry without them is complete too).
TOPIC_TRAITS: dict[str, str] = {
    PACKS_ACCEPTED.name: "redriven", IMAGES_JOBS.name: "replayable", IMAGES_DLQ.name: "deadLettered",
    INVALID_DLQ.name: "invalid", **{spec.name: "retried" for spec in RETRY_TIERS},
    "webhooks.deliveries": "replayable", "webhooks.dlq": "webhookDeadLettered",
}
RETRY_PREFIXES: dict[str, str] = {"webhooks.retry.": "webhookRetried"}
# Written by clients outside packline (docs/contract.md, "Publishing straight to Kafka"); every other topic packline writes.
RECEIVED: frozenset[str] = frozenset({PACKS_REQUESTED.name})


def document(registry: Iterable[TopicSpec[Any]] = REGISTRY) -> dict[str, Any]:
    """The AsyncAPI document of these topics (the whole registry by default)."""
    schemas: dict[str, Any] = {f"headers.{name}": _header_schema(*header_set) for name, header_set in HEADER_SETS.items()}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in registry:
        cid = _id(spec.name)
        messages = {_id(model.TYPE): _message(spec, model, schemas) for model in spec.events} or {"raw": _raw_message(spec)}
        channels[cid] = {
            "address": spec.name, "title": spec.name, "messages": messages,
            "description": f"{spec.doc}. Keyed by {spec.key}. The topic's name is prefixed by the deployment's TOPIC_PREFIX.",
            "bindings": {"kafka": _channel_binding(spec)},
        }
        action = "receive" if spec.name in RECEIVED else "send"
        operations[f"{action}_{cid}"] = {
            "action": action, "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"packline {'reads' if action == 'receive' else 'writes'} {spec.name}",
            "messages": [{"$ref": f"#/channels/{cid}/messages/{mid}"} for mid in messages],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:packline:events",
        "info": {
            "title": "packline events", "version": "1.0.0",
            "description": "Every Kafka topic of packline: its key, its event types (plain JSON envelopes, one JSON Schema "
                           "per type and version, also in schemas/) and its headers. Topic names are prefixed by "
                           "TOPIC_PREFIX; partitions are TOPIC_PARTITIONS unless a topic fixes them. Fields are only ever "
                           "added; a breaking change is a new version of the type.",
        },
        "defaultContentType": "application/json",
        "servers": {"development": {
            "host": "127.0.0.1:9092", "protocol": "kafka",
            "description": "the broker of `make kafka`; a deployment's brokers are its KAFKA_BOOTSTRAP_SERVERS",
        }},
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messageTraits": {name: {"headers": {"type": "object", "allOf": [
                {"$ref": f"#/components/schemas/headers.{s}"} for s in sets]}} for name, sets in TRAITS.items()},
        },
    }


def render(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _trait(spec: TopicSpec[Any]) -> str:
    prefixed = [trait for prefix, trait in RETRY_PREFIXES.items() if spec.name.startswith(prefix)]
    return TOPIC_TRAITS.get(spec.name) or (prefixed[0] if prefixed else "traced")


def _id(name: str) -> str:
    return name.replace(".", "_")


def _header_schema(description: str, properties: dict[str, dict[str, Any]], required: tuple[str, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _message(spec: TopicSpec[Any], model: type[Event], schemas: dict[str, Any]) -> dict[str, Any]:
    sid = f"{model.TYPE}.v{model.VERSION}"
    schemas[sid] = _lift(json_schema(model), schemas)
    return {
        "name": model.TYPE, "title": f"{model.TYPE} v{model.VERSION}", "contentType": "application/json",
        "description": f"JSON Schema: schemas/{sid}.json", "payload": {"$ref": f"#/components/schemas/{sid}"},
        "traits": [{"$ref": f"#/components/messageTraits/{_trait(spec)}"}],
        "bindings": {"kafka": _key_binding(spec)},
    }


def _raw_message(spec: TopicSpec[Any]) -> dict[str, Any]:
    return {
        "name": "raw", "title": "the original message", "contentType": "application/octet-stream",
        "summary": "the bytes of a message that could not be parsed or validated, unchanged (often not JSON)",
        "payload": {"description": "the original value"},
        "traits": [{"$ref": f"#/components/messageTraits/{_trait(spec)}"}],
        "bindings": {"kafka": _key_binding(spec)},
    }


def _key_binding(spec: TopicSpec[Any]) -> dict[str, Any]:
    return {"key": {"type": "string", "description": spec.key}, "bindingVersion": KAFKA_BINDING}


def _channel_binding(spec: TopicSpec[Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, value in spec.config.items():
        config[name] = value.split(",") if name == "cleanup.policy" else int(value) if value.lstrip("-").isdigit() else value
    binding: dict[str, Any] = {"bindingVersion": KAFKA_BINDING}
    if config:
        binding["topicConfiguration"] = config
    if spec.partitions is not None:
        binding["partitions"] = spec.partitions
    return binding


def _lift(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """An event's JSON Schema as a component: its `$defs` become components too (the same
    pydantic model gives the same definition wherever it is used), refs rewritten to them,
    and the standalone-file keywords dropped."""
    schema = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
    for name, definition in schema.pop("$defs", {}).items():
        definition = _refs(definition)
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two different definitions named {name!r} in the event schemas")
    lifted: dict[str, Any] = _refs(schema)
    return lifted


def _refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_refs(v) for v in node]
    return node
