"""The plain-data wire format: exact built-in types survive a round trip; the harness's decoder
refuses everything else."""
import collections
import math

import pytest

from dlm_bench.sandbox import codec


def roundtrip(v, handle=None):
    return codec.loads(codec.dumps(v, handle))


def test_exact_types_round_trip():
    values = [None, True, 0, -3, 2 ** 200, 1.5, -0.0, float("inf"), "é\ud800\x00", b"\x00\xff", 2j,
              [1, (2, 3)], (), {1, "a"}, frozenset({(1, 2)}), {"k": [1], 2: None, (1,): b""}, range(1, 9, 2),
              int, str, ValueError]
    for v in values:
        got = roundtrip(v)
        assert got == v and type(got) is type(v), v
    assert math.isnan(roundtrip(float("nan")))
    assert type(roundtrip([True])[0]) is bool and type(roundtrip([1.0])[0]) is float


def test_builtin_subclasses_travel_as_their_base_type():
    P = collections.namedtuple("P", "a b")
    got = roundtrip([P(1, 2), collections.Counter("aab"), collections.OrderedDict(x=1), iter([1, 2])])
    assert [type(x) for x in got[:3]] == [tuple, dict, dict] and got[:3] == [(1, 2), {"a": 2, "b": 1}, {"x": 1}]
    assert list(got[3]) == [1, 2]


def test_other_objects_are_handles_or_refused():
    class C:
        pass
    with pytest.raises(codec.PlainDataError):
        codec.dumps([C()])
    kept = []
    msg = codec.dumps([C(), C], lambda o: kept.append(o) or len(kept) - 1)
    assert codec.loads(msg, lambda n: ("handle", n)) == [("handle", 0), ("handle", 1)]
    with pytest.raises(codec.PlainDataError):  # no handle resolver: refused
        codec.loads(msg)


@pytest.mark.parametrize("bad", [
    b'[1, 2]', b'{"a": 1}', b'["X", 1]', b'["D", 1]', b'["B", 1]', b'["C", "1", 2]', b'["R", 1.5, 2, 1]',
    b'["Y", "open"]', b'["Y", "nonexistent"]', b'["S", ["L", 1]]', b'["D", ["L"], 1]', b'[]', b'not json',
    '["L", "\u00e9"]'.encode(), b'["L", ' + b"9" * 5000 + b"]", b'["L",' * 5000 + b"1" + b"]" * 5000])
def test_malformed_messages_are_refused(bad):
    with pytest.raises(codec.PlainDataError):
        codec.loads(bad)


def test_bounds():
    deep = x = []
    for _ in range(codec.MAX_DEPTH + 5):
        x.append([])
        x = x[0]
    with pytest.raises(codec.PlainDataError):
        codec.dumps(deep)
    wide = b'["L",' + b",".join([b"1"] * (codec.MAX_NODES + 1)) + b"]"
    with pytest.raises(codec.PlainDataError):
        codec.loads(wide)
