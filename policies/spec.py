"""One parser for policy spec strings.

Grammar::

    policy     := component ("+" component)*
    component  := name [ "(" [ arg ("," arg)* ] ")" ]
    arg        := key "=" value
    value      := item ("|" item)*          # a list when it has several items
    item       := int | float | word

A knob whose default is text (a string) takes its value verbatim, ``|`` and dots
included, and the component reads it itself: ``tree(paths=0.0.0|1|0.1)`` passes the
text ``0.0.0|1|0.1`` to ``tree``. Empty text means "unset" and is left out of canonical
specs.

Unknown names, unknown keys and values of the wrong type are errors that say what was
wrong and what is accepted.
"""
from __future__ import annotations

import re
from typing import Any

from specreplay.policies.base import Composite, Policy


class PolicyError(ValueError):
    """A spec string could not be turned into a policy."""


REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy component available to the parser."""
    if not cls.name or cls.role not in ("block", "input", "verify"):
        raise TypeError(f"{cls.__name__} needs a name and a role of block/input/verify")
    REGISTRY[cls.name] = cls
    return cls


_COMPONENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*(?:\((.*?)\))?\s*$", re.S)


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _item(text: str) -> Any:
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() in ("none", "null"):
        return None
    return t


def _coerce(comp: str, key: str, value: Any, default: Any) -> Any:
    """Coerce a parsed value to the type of the knob's default."""
    if isinstance(default, tuple):
        items = value if isinstance(value, tuple) else (value,)
        kind = type(default[0]) if default else None
        return tuple(_coerce(comp, key, v, default[0]) if kind else v for v in items)
    if isinstance(value, tuple):
        raise PolicyError(f"{comp}: {key} takes one value, got a list "
                          f"{'|'.join(map(str, value))!r}")
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise PolicyError(f"{comp}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{comp}: {key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{comp}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        return str(value)
    return value


def parse_component(text: str) -> Policy:
    m = _COMPONENT.match(text)
    if not m or not text.strip():
        raise PolicyError(f"cannot read policy component {text.strip()!r}: "
                          "write it as name(key=value, ...)")
    name, argtext = m.group(1), m.group(2)
    _load_all()
    cls = REGISTRY.get(name)
    if cls is None:
        raise PolicyError(f"unknown policy {name!r}; known policies: "
                          f"{', '.join(sorted(REGISTRY))}")
    kwargs: dict[str, Any] = {}
    if argtext and argtext.strip():
        for arg in split_top(argtext, ","):
            if "=" not in arg:
                raise PolicyError(f"{name}: argument {arg.strip()!r} needs the form key=value")
            key, val = (s.strip() for s in arg.split("=", 1))
            if key not in cls.params:
                raise PolicyError(f"{name}: unknown knob {key!r}; knobs: "
                                  f"{', '.join(cls.params) or '(none)'}")
            parts = [p for p in val.split("|")]
            if any(not p.strip() for p in parts):
                raise PolicyError(f"{name}: {key} has an empty value")
            if isinstance(cls.params[key], str):
                # text knobs are read by their component (e.g. tree paths "0.1|1")
                kwargs[key] = val
                continue
            parsed = tuple(_item(p) for p in parts) if len(parts) > 1 else _item(parts[0])
            kwargs[key] = _coerce(name, key, parsed, cls.params[key])
    try:
        return cls(**kwargs)
    except PolicyError:
        raise
    except (ValueError, TypeError) as e:
        raise PolicyError(f"{name}: {e}") from None


def parse_policy(spec: str) -> Composite:
    """Turn a spec string into a Composite policy. A spec without a block component
    gets ``fixed`` (the draft's trained block size)."""
    if not spec or not spec.strip():
        raise PolicyError("empty policy spec; try 'fixed(b=16)' or 'ar'")
    comps = [parse_component(t) for t in split_top(spec, "+")]
    blocks = [c for c in comps if c.role == "block"]
    verifies = [c for c in comps if c.role == "verify"]
    inputs = [c for c in comps if c.role == "input"]
    if len(blocks) > 1:
        raise PolicyError(f"{spec!r} has {len(blocks)} block-size policies "
                          f"({', '.join(c.name for c in blocks)}); use one")
    if len(verifies) > 1:
        raise PolicyError(f"{spec!r} has {len(verifies)} verify policies "
                          f"({', '.join(c.name for c in verifies)}); use one")
    if len(inputs) > 1:
        raise PolicyError(f"{spec!r} combines draft-input policies "
                          f"({', '.join(c.name for c in inputs)}); use at most one")
    block = blocks[0] if blocks else REGISTRY["fixed"]()
    return Composite(block=block, inputs=inputs, verify=verifies[0] if verifies else None)


def format_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "|".join(format_value(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def format_component(name: str, kw: dict[str, Any], params: dict[str, Any]) -> str:
    args = [f"{k}={format_value(kw[k])}" for k in params if kw.get(k) not in (None, "")]
    return f"{name}({', '.join(args)})" if args else name


_loaded = False


def _load_all() -> None:
    """Import every module of the policies package so their @register runs: a new
    policy is one new file here and nothing else."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from specreplay import policies
    for mod in pkgutil.iter_modules(policies.__path__):
        if mod.name not in ("base", "spec"):
            importlib.import_module(f"specreplay.policies.{mod.name}")
