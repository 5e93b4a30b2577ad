"""Check a request against the installed botocore service model before it is written or sent.

botocore's ParamValidator checks member names, types, required members and lengths, but leaves enum
values to the service (a wrong ``ActionOnFailure`` would only fail in AWS); the enum walk below adds
that. Idempotency tokens (``clientToken``) are filled in by botocore when sending, so they are here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, Shape, StringShape, StructureShape
from botocore.validate import ParamValidator


@cache
def _input_shape(service: str, operation: str) -> StructureShape:
    model = botocore.session.get_session().get_service_model(service)
    return model.operation_model(operation).input_shape


def validate_request(
    service: str, operation: str, request: Mapping[str, Any], assumed: Iterable[str] = ()
) -> None:
    """Raise ValueError listing every problem of ``request`` for ``service``/``operation``.

    ``assumed`` names required members that are deliberately left out (ids passed at run time).
    """
    shape = _input_shape(service, operation)
    filled = dict(request)
    for name, member in shape.members.items():
        if name not in filled and (member.metadata.get("idempotencyToken") or name in assumed):
            filled[name] = "assumed-at-run-time"
    report = ParamValidator().validate(filled, shape)
    problems = report.generate_report().splitlines() if report.has_errors() else []
    problems += list(_enum_errors(filled, shape, ""))
    if problems:
        raise ValueError(
            f"{service} {operation} request is not valid for botocore's service model: "
            + "; ".join(p for p in problems if p.strip())
        )


def _enum_errors(value: Any, shape: Shape, path: str) -> Iterator[str]:
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        for name, item in value.items():
            if name in shape.members:
                yield from _enum_errors(item, shape.members[name], f"{path}.{name}" if path else name)
    elif isinstance(shape, ListShape) and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _enum_errors(item, shape.member, f"{path}[{index}]")
    elif isinstance(shape, MapShape) and isinstance(value, Mapping):
        for key, item in value.items():
            yield from _enum_errors(key, shape.key, f"{path} key {key!r}")
            yield from _enum_errors(item, shape.value, f"{path}[{key!r}]")
    elif isinstance(shape, StringShape) and shape.enum and isinstance(value, str) and value not in shape.enum:
        yield f"Invalid value for parameter {path}: {value!r}, valid values: {', '.join(shape.enum)}"
