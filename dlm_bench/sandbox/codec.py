# dlm-bench plain-data codec: standard library only. The sandbox runner embeds this text verbatim
# (it runs as `python -c`), and the harness imports it; both sides speak the same wire format.
"""Plain data on the wire between the harness and a sandboxed program (see docs/sandbox.md).

A value is JSON where every container is a list tagged by its first element, so the type of each
node is exact: ["L", ...] list, ["T", ...] tuple, ["S", ...] set, ["FS", ...] frozenset,
["D", k1, v1, k2, v2, ...] dict, ["B", hex] bytes, ["C", re, im] complex, ["I", ...] an exhausted
iterator's items, ["R", start, stop, step] range, ["Y", name] a built-in type (int, str, ...),
["H", n] handle n (an object that stays in the sandbox). Scalars are JSON null/true/false/numbers/
strings (NaN and infinities as JSON extensions). `loads` is what the harness trusts: it builds only
exact built-in types, bounded in depth, size and hash collisions, by a deadline, and refuses
anything else.
"""
import builtins as _builtins
import json as _json
import time as _time
from collections import Counter as _Counter

MAX_DEPTH = 200          # containers inside containers
MAX_NODES = 2_000_000    # values in one message (or in all the messages that share one budget)
MAX_COLLISIONS = 8       # distinct members of one container that share a hash value
_SCALARS = (type(None), bool, int, float, str)


class PlainDataError(ValueError):
    """A message that is not plain data in the wire format."""


class DecodeTimeout(PlainDataError):
    """The deadline passed while a message was being decoded."""


def encode(value, handle=None, depth=0):
    """The JSON-able form of `value`. Objects that are not plain data become handles when `handle`
    (object -> int) is given, else PlainDataError. Built-in subclasses (namedtuple, Counter,
    OrderedDict, IntEnum, ...) travel as their base type."""
    if depth > MAX_DEPTH:
        raise PlainDataError("nested more than %d deep" % MAX_DEPTH)
    t = type(value)
    if t in _SCALARS:
        return value
    d = depth + 1
    if t is list or t is tuple or t is set or t is frozenset:
        tag = "L" if t is list else "T" if t is tuple else "S" if t is set else "FS"
        return [tag] + [encode(x, handle, d) for x in value]
    if t is dict:
        out = ["D"]
        for k, v in dict.items(value):
            out.append(encode(k, handle, d))
            out.append(encode(v, handle, d))
        return out
    if t is bytes:
        return ["B", bytes.hex(value)]
    if t is complex:
        return ["C", value.real, value.imag]
    if t is range:
        return ["R", value.start, value.stop, value.step]
    if t is type and getattr(_builtins, value.__name__, None) is value:  # int, str, ValueError, ...
        return ["Y", value.__name__]
    for base, make in _BASES:  # a subclass of a built-in type: the base type's own copy of it
        if isinstance(value, base):
            return encode(make(value), handle, depth)
    if hasattr(t, "__next__") and hasattr(t, "__iter__"):  # generator, map, zip, ...: its items
        return ["I"] + [encode(x, handle, d) for x in value]
    if handle is None:
        raise PlainDataError("%s is not plain data" % t.__name__)
    return ["H", handle(value)]


_BASES = ((bool, bool), (int, lambda x: int.__add__(x, 0)), (float, lambda x: float.__add__(x, 0.0)),
          (str, lambda x: str.__add__(x, "")), (bytes, lambda x: bytes.__add__(x, b"")),
          (complex, lambda x: complex.__add__(x, 0j)), (tuple, lambda x: tuple.__add__(x, ())),
          (list, lambda x: list.__add__(x, [])), (dict, dict.copy), (set, set.union),
          (frozenset, frozenset.union))


def dumps(value, handle=None) -> bytes:
    return _json.dumps(encode(value, handle), separators=(",", ":")).encode("ascii")


def loads(data: bytes, handle=None, budget=None, deadline=None):
    """Decode one message strictly; `handle(n)` gives the object for ["H", n] (refused if None).
    `budget`: a one-item list of values still allowed, shared by every message of a session (else
    MAX_NODES for this one); `deadline`: a time.monotonic() after which decoding stops."""
    try:
        raw = _json.loads(data.decode("ascii"))
    except RecursionError:
        raise PlainDataError("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # bad JSON, over-long int, non-ASCII bytes
        raise PlainDataError("not valid JSON: %s" % str(e)[:100]) from None
    return _build(raw, handle, 0, [budget or [MAX_NODES], deadline])


def _build(x, handle, depth, limits):
    budget = limits[0]
    budget[0] -= 1
    if budget[0] < 0:
        raise PlainDataError("more than %d values" % MAX_NODES)
    if not budget[0] & 4095 and limits[1] is not None and _time.monotonic() > limits[1]:
        raise DecodeTimeout("the deadline passed while decoding")
    t = type(x)
    if t in _SCALARS:
        return x
    if t is not list or not x or type(x[0]) is not str:
        raise PlainDataError("untagged %s" % t.__name__)
    if depth >= MAX_DEPTH:
        raise PlainDataError("nested more than %d deep" % MAX_DEPTH)
    tag, items, d = x[0], x[1:], depth + 1
    try:
        if tag in ("L", "T", "S", "FS", "I"):
            vals = [_build(y, handle, d, limits) for y in items]
            _few_collisions(vals)  # (tests may put a list's items in a set too)
            return (vals if tag == "L" else tuple(vals) if tag == "T" else set(vals) if tag == "S"
                    else frozenset(vals) if tag == "FS" else iter(vals))
        if tag == "D" and len(items) % 2 == 0:
            vals = [_build(y, handle, d, limits) for y in items]
            _few_collisions(vals[0::2])
            return dict(zip(vals[0::2], vals[1::2]))
        if tag == "B" and len(items) == 1 and type(items[0]) is str:
            return bytes.fromhex(items[0])
        if tag == "C" and len(items) == 2 and all(type(v) in (int, float) for v in items):
            return complex(items[0], items[1])
        if tag == "R" and len(items) == 3 and all(type(v) is int for v in items):
            r = range(*items)
            if len(r) <= MAX_NODES:  # list(r) in the tests must stay as small as a list would be
                return r
        if tag == "Y" and len(items) == 1 and type(items[0]) is str:
            t = getattr(_builtins, items[0], None)
            if type(t) is type:
                return t
        if tag == "H" and len(items) == 1 and type(items[0]) is int and handle is not None:
            return handle(items[0])
    except (TypeError, ValueError, OverflowError) as e:  # unhashable key, bad hex, zero step, ...
        if isinstance(e, PlainDataError):
            raise
        raise PlainDataError(str(e)[:100]) from None
    raise PlainDataError("bad %r node" % tag[:10])


def _few_collisions(vals):
    """Refuse members that put more than MAX_COLLISIONS distinct values on one hash (ints such as
    k * (2**61 - 1) all hash alike): a set or dict of them takes quadratic time to build."""
    if len(vals) <= MAX_COLLISIONS:
        return
    try:
        hashes = list(map(hash, vals))
    except TypeError:  # some members are lists or dicts: hash the others
        hashes = []
        for v in vals:
            try:
                hashes.append(hash(v))
            except TypeError:
                hashes.append(None)
    crowded = {h for h, n in _Counter(hashes).items() if n > MAX_COLLISIONS and h is not None}
    if not crowded:  # (hash values hash to themselves: counting them cannot collide)
        return
    seen = {}  # crowded hash -> its distinct values (equal repeats, like a list of zeros, are fine)
    for v, h in zip(vals, hashes):
        if h in crowded:
            same = seen.setdefault(h, [v])
            if v is not same[0] and v != same[0] and v not in same:
                same.append(v)
                if len(same) > MAX_COLLISIONS:
                    raise PlainDataError("more than %d distinct values share one hash" % MAX_COLLISIONS)
