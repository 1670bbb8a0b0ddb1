"""Checkpoint configs (`xp.cfg`) read as plain data: OmegaConf's interpolation resolvers never run.

A checkpoint comes from a hub repo; `OmegaConf.to_container(resolve=True)` would run whatever resolver its config names
(`${oc.env:SECRET}` reads the server's environment, and the value could then reach a client in an error). Here the
tree is converted unresolved and only plain references to other keys (`${transformer_lm.dim}`) are substituted; a
resolver call stays the literal text it is, and no value of the config is ever put in an error message.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ErrorCode, ModelLoadError

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")  # ${a.b.c}: no resolver, no relative path
_MAX_DEPTH = 16
_MISSING = object()


def plain_config(raw: Any, what: str) -> dict[str, Any]:
    """`raw` (YAML text, a dict, or a pickled DictConfig) as plain containers, key references resolved, resolvers off."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    try:
        tree = raw if isinstance(raw, DictConfig | ListConfig) else OmegaConf.create(raw)
        out = OmegaConf.to_container(tree, resolve=False)
    except Exception as exc:  # omegaconf's own error family; its text can quote the config, so it is not passed on
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{what}: unreadable xp.cfg ({type(exc).__name__})") from exc
    if not isinstance(out, dict):
        raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"{what}: xp.cfg is not a mapping")
    return _resolve(out, out, 0)


def _lookup(root: dict[str, Any], dotted: str, depth: int) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return _resolve(node, root, depth + 1)


def _resolve(node: Any, root: dict[str, Any], depth: int) -> Any:
    if depth > _MAX_DEPTH:  # a reference cycle: leave the text as it is
        return node
    if isinstance(node, dict):
        return {k: _resolve(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, depth) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _REF.fullmatch(node)
    if whole:
        value = _lookup(root, whole.group(1), depth)
        return node if value is _MISSING else value

    def sub(m: re.Match[str]) -> str:
        value = _lookup(root, m.group(1), depth)
        return m.group(0) if value is _MISSING or isinstance(value, dict | list) else str(value)

    return _REF.sub(sub, node)
