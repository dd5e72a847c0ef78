"""JSON Schema of the whole protocol, generated from the models: never written by hand.

`forkyard schema` writes it to protocol/schema/forkyard.schema.json; a test fails when the
committed file differs from what the models generate.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from .messages import NOTIFICATIONS, REQUESTS, TrustResult
from .models import PROTOCOL_VERSION, Agent, FileChange, ForkyardCapabilities, Message, Thread


def protocol_schema() -> dict[str, Any]:
    models: set[type[Any]] = {Agent, Thread, Message, FileChange, ForkyardCapabilities}
    # Results of workspace/executeCommand commands that clients read.
    models.add(TrustResult)
    for params, result in REQUESTS.values():
        models.update((params, result))
    models.update(NOTIFICATIONS.values())
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schema = models_json_schema(
        [(model, "serialization") for model in ordered],
        ref_template="#/$defs/{model}",
        title="Forkyard protocol",
    )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["version"] = PROTOCOL_VERSION
    schema["requests"] = {
        method: {
            "params": {"$ref": f"#/$defs/{params.__name__}"},
            "result": {"$ref": f"#/$defs/{result.__name__}"},
        }
        for method, (params, result) in sorted(REQUESTS.items())
    }
    schema["notifications"] = {
        method: {"params": {"$ref": f"#/$defs/{params.__name__}"}}
        for method, params in sorted(NOTIFICATIONS.items())
    }
    return schema


def schema_text() -> str:
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"
