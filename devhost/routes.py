"""HTTP route templates as the Functions host (ASP.NET routing) reads them.

A template is split into `/` segments; a segment holds literals and parameters:
`{name}`, optional `{name?}`, defaulted `{name=x}`, catch-all `{*path}` (last segment,
takes the rest of the path, may be empty) and constraints such as `{id:int}`,
`{x:alpha}`, `{g:guid}`, `{n:min(1)}` or `{s:regex(^a)}`. Literals compare without
case. When several templates match a path, the more specific one wins segment by
segment, as ASP.NET's route precedence orders them: literal, then constrained
parameter, then parameter, then catch-all::

    api/items/special   beats   api/items/{id:int}   beats   api/items/{name}
                                                     beats   api/items/{*rest}
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote


def _is_int(bits: int) -> Callable[[str], bool]:
    limit = 2 ** (bits - 1)

    def check(v: str) -> bool:
        return re.fullmatch(r"[+-]?\d+", v) is not None and -limit <= int(v) < limit

    return check


def _is_float(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _is_guid(v: str) -> bool:
    try:
        uuid.UUID(v.strip("{}()"))
    except ValueError:
        return False
    return True


def _is_datetime(v: str) -> bool:
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


_SIMPLE: dict[str, Callable[[str], bool]] = {
    "int": _is_int(32),
    "long": _is_int(64),
    "alpha": lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
    "bool": lambda v: v.lower() in ("true", "false"),
    "guid": _is_guid,
    "double": _is_float,
    "float": _is_float,
    "decimal": _is_float,
    "datetime": _is_datetime,
    "required": lambda v: v != "",
}


def _constraint(spec: str) -> Callable[[str], bool]:
    """A predicate for one inline constraint, e.g. `int` or `range(1,10)`."""
    m = re.fullmatch(r"(\w+)(?:\((.*)\))?", spec, re.DOTALL)
    if not m:
        raise ValueError(f"bad route constraint {spec!r}")
    name, arg = m.group(1).lower(), m.group(2)
    if arg is None and name in _SIMPLE:
        return _SIMPLE[name]
    if arg is None:
        raise ValueError(f"unknown route constraint {spec!r}")
    if name == "regex":
        pattern = re.compile(arg, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    nums = [int(a) for a in arg.split(",")]
    checks: dict[str, Callable[[str], bool]] = {
        "minlength": lambda v: len(v) >= nums[0],
        "maxlength": lambda v: len(v) <= nums[0],
        "length": lambda v: len(v) == nums[0] if len(nums) == 1 else nums[0] <= len(v) <= nums[1],
        "min": lambda v: _is_int(64)(v) and int(v) >= nums[0],
        "max": lambda v: _is_int(64)(v) and int(v) <= nums[0],
        "range": lambda v: _is_int(64)(v) and nums[0] <= int(v) <= nums[-1],
    }
    if name not in checks:
        raise ValueError(f"unknown route constraint {spec!r}")
    return checks[name]


def _split_outside_parens(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@dataclass(frozen=True)
class Param:
    """One `{...}` parameter of a template."""

    name: str
    optional: bool = False
    catch_all: bool = False
    default: str | None = None
    constraints: tuple[str, ...] = ()
    checks: tuple[Callable[[str], bool], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def parse(cls, body: str) -> Param:
        catch_all = body.startswith("*")
        body = body.lstrip("*")
        head, *default = _split_outside_parens(body, "=")
        optional = head.endswith("?")
        head = head.rstrip("?")
        name, *constraints = _split_outside_parens(head, ":")
        if not re.fullmatch(r"\w+", name):
            raise ValueError(f"bad route parameter name {name!r}")
        return cls(
            name=name,
            optional=optional or catch_all or bool(default),
            catch_all=catch_all,
            default=default[0] if default else None,
            constraints=tuple(constraints),
            checks=tuple(_constraint(c) for c in constraints),
        )

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


@dataclass(frozen=True)
class Segment:
    """One `/`-separated piece of a template: literals and parameters."""

    parts: tuple[str | Param, ...]
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> Segment:
        parts: list[str | Param] = []
        for literal, param in re.findall(r"([^{}]+)|\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", text):
            parts.append(Param.parse(param) if param else literal)
        # Greedy parameters: in `{name}.{ext}` the last literal "." splits, as ASP.NET matches right to left.
        regex = "".join(re.escape(p) if isinstance(p, str) else f"(?P<{p.name}>.+)" for p in parts)
        return cls(tuple(parts), re.compile(regex, re.IGNORECASE | re.DOTALL))

    @property
    def param(self) -> Param | None:
        """The parameter when the segment is exactly one parameter."""
        return self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], Param) else None

    @property
    def precedence(self) -> int:
        """ASP.NET's inbound precedence digit (lower is more specific)."""
        if len(self.parts) > 1:
            return 2
        param = self.param
        if param is None:
            return 1
        digit = 5 if param.catch_all else 3
        return digit - 1 if param.constraints else digit


@dataclass(frozen=True)
class RouteTemplate:
    """A parsed route template that matches request paths and extracts route params."""

    template: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        text = template.strip("/")
        segments = tuple(Segment.parse(s) for s in text.split("/")) if text else ()
        for i, seg in enumerate(segments):
            param = seg.param
            if param and param.catch_all and i != len(segments) - 1:
                raise ValueError(f"catch-all parameter must be last in route {template!r}")
        return cls(template, segments)

    @property
    def precedence(self) -> tuple[int, ...]:
        return tuple(s.precedence for s in self.segments)

    def match(self, path_segments: Sequence[str]) -> dict[str, str] | None:
        """Route params if the (decoded) path segments match, else None."""
        values: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            param = seg.param
            if param and param.catch_all:
                rest = "/".join(path_segments[i:])
                return self._bind(param, rest, values)
            if i >= len(path_segments):
                if param is None or not param.optional:
                    return None
                if param.default is not None:
                    values[param.name] = param.default
                continue
            m = seg.pattern.fullmatch(path_segments[i])
            if not m:
                return None
            for part in seg.parts:
                if isinstance(part, Param) and not part.accepts(m.group(part.name)):
                    return None
            values.update(m.groupdict())
        return values if len(path_segments) <= len(self.segments) else None

    @staticmethod
    def _bind(param: Param, value: str, values: dict[str, str]) -> dict[str, str] | None:
        if value == "":
            if param.default is not None:
                values[param.name] = param.default
            return values
        if not param.accepts(value):
            return None
        values[param.name] = value
        return values


def split_path(path: str) -> list[str]:
    """Decoded segments of a URL path (no query); empty segments from `//` or a trailing `/` drop."""
    return [unquote(s) for s in path.split("/") if s != ""]
