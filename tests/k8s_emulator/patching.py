"""Patch and selector semantics of the API server, reduced to what deploy tooling sends.

- JSON merge patch (RFC 7386): complete.
- JSON patch (RFC 6902): add, remove, replace, move, copy, test.
- Strategic merge patch and server-side apply: maps merge recursively; lists of objects merge by
  the merge key of a small fixed table (containers and env by ``name``, ports by
  ``containerPort``/``port``, ...); every other list is replaced whole. ``$setElementOrder``
  directives are honoured for ordering, ``$patch: delete|replace`` on list items and maps,
  ``$retainKeys`` is ignored. The real server's per-field schema (and ``$deleteFromPrimitiveList``)
  is not modelled; apply merges into the live object instead of tracking managed fields.
- Label selectors (equality and set-based) and field selectors on dotted paths.
"""

from __future__ import annotations

import copy
import re
from typing import Any

# Lists the API marks as patchMergeKey, keyed by the list's field name.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "tolerations": "key",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "secrets": "name",
}
PORT_MERGE_KEYS = ("containerPort", "port")


class PatchError(ValueError):
    """The patch could not be applied (answered as 422)."""


def drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(field: str, items: list) -> str | None:
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if field == "ports":
        for key in PORT_MERGE_KEYS:
            if items and all(isinstance(i, dict) and key in i for i in items):
                return key
    return None


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch (and the merge step of server-side apply), see the module docstring."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return drop_nulls({k: v for k, v in patch.items() if k != "$patch"})
        if patch.get("$patch") == "delete":
            return None
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                result.pop(key, None)
                continue
            merged = strategic_merge(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        for key, order in orders.items():
            if isinstance(result.get(key), list):
                result[key] = _ordered(result[key], order, _merge_key(key, result[key] + list(order)))
        return result
    if isinstance(patch, list):
        mk = _merge_key(field, [p for p in patch if isinstance(p, dict)] or (target or []))
        if mk is None or not isinstance(target, list):
            return [drop_nulls(_strip_directives(p)) for p in patch if not _is_delete(p)]
        result = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or mk not in item:
                continue
            index = next((i for i, t in enumerate(result) if isinstance(t, dict) and t.get(mk) == item[mk]), None)
            if _is_delete(item):
                if index is not None:
                    result.pop(index)
            elif index is None:
                result.append(drop_nulls(_strip_directives(item)))
            else:
                result[index] = strategic_merge(result[index], item, "")
        return result
    return patch


def _is_delete(item: Any) -> bool:
    return isinstance(item, dict) and item.get("$patch") == "delete"


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _ordered(items: list, order: list, key: str | None) -> list:
    if key is None:
        return items
    rank = {o.get(key): i for i, o in enumerate(order) if isinstance(o, dict)}
    return sorted(items, key=lambda item: rank.get(item.get(key) if isinstance(item, dict) else None, len(rank)))


# ---- RFC 6902 ---------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, list):
            doc = doc[int(token)]
        elif isinstance(doc, dict) and token in doc:
            doc = doc[token]
        else:
            raise PatchError(f"path segment {token!r} not found")
    return doc


def json_patch(doc: Any, operations: list) -> Any:
    doc = copy.deepcopy(doc)
    for op in operations:
        kind, tokens = op.get("op"), _pointer(op.get("path", ""))
        if kind == "test":
            if _walk(doc, tokens) != op.get("value"):
                raise PatchError(f"test failed at {op.get('path')}")
            continue
        if kind in ("move", "copy"):
            value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
            if kind == "move":
                doc = _remove(doc, _pointer(op["from"]))
            doc = _add(doc, tokens, value)
        elif kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, tokens)
        elif kind == "replace":
            _walk(doc, tokens)  # must exist
            doc = _add(_remove(doc, tokens), tokens, copy.deepcopy(op.get("value")))
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError("cannot add below a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return None
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    try:
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PatchError(f"cannot remove {'/'.join(tokens)}") from exc
    return doc


# ---- selectors --------------------------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def label_selector_matches(selector: str | None, labels: dict | None) -> bool:
    labels = labels or {}
    for term in _split_terms(selector or ""):
        match = _SET_TERM.match(term)
        if match:
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in") or (op == "in" and key not in labels):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def selector_from_label_selector(spec: dict | None) -> str:
    """A metav1.LabelSelector (matchLabels + matchExpressions) as selector text."""
    spec = spec or {}
    terms = [f"{k}={v}" for k, v in (spec.get("matchLabels") or {}).items()]
    for expr in spec.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), ",".join(expr.get("values") or [])
        terms.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(terms)


def field_selector_matches(selector: str | None, obj: dict) -> bool:
    for term in _split_terms(selector or ""):
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        current: Any = obj
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        current = "" if current is None else str(current)
        if (current == value) == negate:
            return False
    return True
