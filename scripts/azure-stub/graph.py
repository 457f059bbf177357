"""Azure Resource Graph for the stub: the subset of KQL arc-onboard sends, evaluated over rows.

Supported (anything else is answered 400 ``InvalidQuery``, as a real parse error would be)::

    resources
    | where type =~ 'microsoft.hybridcompute/machines'
    | where name in~ ('i-1', 'i-2') or tostring(tags.InstanceId) in~ ('i-1', 'i-2')
    | project id, name, resourceGroup, subscriptionId, instanceId = tostring(tags.InstanceId)

``where`` takes ``or``/``and`` (``and`` binds tighter), parentheses, ``=~``/``==``/``!=`` against one
literal and ``in~``/``in`` against a list; a path is ``a.b.c`` or ``tostring(a.b.c)``. String literals are
single- or double-quoted with KQL's backslash escapes (``\\\\ \\' \\" \\n \\t \\r``). ``project`` takes
paths and ``alias = tostring(path)``. Names compare as KQL does: ``=~``/``in~`` ignore case.
"""

import re
from typing import Any

_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = ("=~", "!=", "==", "in~", "=", "(", ")", ",", ".", "|")


class QueryError(ValueError):
    """The query is outside the supported subset (or not KQL at all)."""


def tokenize(query: str) -> list[tuple[str, str]]:
    """Tokens as (kind, text): kind is "str", "ident" or "op"."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c in "'\"":
            quote, i, out = c, i + 1, []
            while True:
                if i >= n:
                    raise QueryError("unterminated string literal")
                ch = query[i]
                if ch == "\\":
                    if i + 1 >= n or query[i + 1] not in _ESCAPES:
                        raise QueryError(f"bad escape at offset {i}")
                    out.append(_ESCAPES[query[i + 1]])
                    i += 2
                elif ch == quote:
                    i += 1
                    break
                elif ch in "\n\r":
                    raise QueryError("newline in string literal")
                else:
                    out.append(ch)
                    i += 1
            tokens.append(("str", "".join(out)))
        elif query.startswith("in~", i) and (i + 3 >= n or not query[i + 3].isalnum()):
            tokens.append(("op", "in~"))
            i += 3
        else:
            m = _IDENT.match(query, i)
            if m:
                tokens.append(("ident", m.group(0)))
                i = m.end()
                continue
            for op in _OPS:
                if query.startswith(op, i):
                    tokens.append(("op", op))
                    i += len(op)
                    break
            else:
                raise QueryError(f"unexpected character {c!r} at offset {i}")
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.pos = tokens, 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (
                text is not None and tok[1].lower() != text.lower()):
            raise QueryError(f"expected {text or kind}, found {tok[1] if tok else 'end'}")
        self.pos += 1
        return tok

    def at(self, kind: str, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == kind and tok[1].lower() == text.lower()

    def path(self) -> tuple[str, ...]:
        if self.at("ident", "tostring"):
            self.take()
            self.take("op", "(")
            inner = self.path()
            self.take("op", ")")
            return ("tostring",) + inner
        parts = [self.take("ident")[1]]
        while self.at("op", "."):
            self.take()
            parts.append(self.take("ident")[1])
        return tuple(parts)

    def literal_list(self) -> list[str]:
        self.take("op", "(")
        values = [self.take("str")[1]]
        while self.at("op", ","):
            self.take()
            values.append(self.take("str")[1])
        self.take("op", ")")
        return values

    def condition(self) -> Any:
        if self.at("op", "("):
            self.take()
            inner = self.disjunction()
            self.take("op", ")")
            return inner
        path = self.path()
        if self.at("op", "in~") or self.at("ident", "in"):
            fold = self.take()[1] == "in~"
            return ("in", fold, path, self.literal_list())
        tok = self.take("op")
        if tok[1] in ("=~", "==", "!="):
            return ("cmp", tok[1], path, self.take("str")[1])
        raise QueryError(f"unsupported operator {tok[1]}")

    def conjunction(self) -> Any:
        terms = [self.condition()]
        while self.at("ident", "and"):
            self.take()
            terms.append(self.condition())
        return ("and", terms)

    def disjunction(self) -> Any:
        terms = [self.conjunction()]
        while self.at("ident", "or"):
            self.take()
            terms.append(self.conjunction())
        return ("or", terms)

    def projection(self) -> list[tuple[str, tuple[str, ...]]]:
        columns = []
        while True:
            tok = self.peek()
            if (tok and tok[0] == "ident" and self.pos + 1 < len(self.tokens)
                    and self.tokens[self.pos + 1] == ("op", "=")):
                alias = self.take()[1]
                self.take("op", "=")
                columns.append((alias, self.path()))
            else:
                path = self.path()
                columns.append(("_".join(p for p in path if p != "tostring"), path))
            if not self.at("op", ","):
                return columns
            self.take()


def parse(query: str) -> tuple[list[Any], list[tuple[str, tuple[str, ...]]] | None]:
    """The query's where-conditions and its projection (None: every column)."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty")
    p = _Parser(tokenize(query))
    p.take("ident", "resources")
    wheres: list[Any] = []
    projection = None
    while p.peek() is not None:
        p.take("op", "|")
        if p.at("ident", "where"):
            p.take()
            wheres.append(p.disjunction())
        elif p.at("ident", "project") and projection is None:
            p.take()
            projection = p.projection()
        else:
            tok = p.peek()
            raise QueryError(f"unsupported operator {tok[1] if tok else 'end'}")
    return wheres, projection


def _value(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    stringify = path[:1] == ("tostring",)
    value: Any = row
    for part in path[1:] if stringify else path:
        value = value.get(part) if isinstance(value, dict) else None
    if stringify:
        return "" if value is None else str(value)
    return value


def _matches(row: dict[str, Any], cond: Any) -> bool:
    kind = cond[0]
    if kind == "or":
        return any(_matches(row, c) for c in cond[1])
    if kind == "and":
        return all(_matches(row, c) for c in cond[1])
    value = _value(row, cond[2])
    if not isinstance(value, str):
        return False
    if kind == "in":
        _, fold, _, values = cond
        return (value.lower() in {v.lower() for v in values}) if fold else value in values
    _, op, _, literal = cond
    if op == "=~":
        return value.lower() == literal.lower()
    return (value == literal) if op == "==" else (value != literal)


def evaluate(query: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the query selects, projected; in the order given."""
    wheres, projection = parse(query)
    selected = [r for r in rows if all(_matches(r, w) for w in wheres)]
    if projection is None:
        return selected
    return [{alias: _value(r, path) for alias, path in projection} for r in selected]
