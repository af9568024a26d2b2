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
    '["L", "\u00e9"]'.encode(), b'["L", ' + b"9" * 5000 + b"]", b'["L",' * 5000 + b"1" + b"]" * 5000,
    # each raised a bare ValueError or OverflowError before, which the tests could catch as the program's
    b'["B", "zz"]', b'["R", 0, 1, 0]', b'["R", 0, ' + b"9" * 40 + b', 1]', b'["C", ' + b"9" * 400 + b', 0]'])
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


P = 2 ** 61 - 1  # every multiple of it hashes to 0


@pytest.mark.parametrize("tag", ["S", "FS", "L", "T", "I"])
def test_hash_collisions_are_refused(tag):
    crowded = (f'["{tag}",' + ",".join(str(k * P) for k in range(60000)) + "]").encode()
    with pytest.raises(codec.PlainDataError, match="share one hash"):
        codec.loads(crowded)
    tuples = (f'["{tag}",' + ",".join(f'["T",{k * P}]' for k in range(100)) + "]").encode()
    with pytest.raises(codec.PlainDataError, match="share one hash"):  # (x,) tuples hash as x does
        codec.loads(tuples)
    few = [k * P for k in range(codec.MAX_COLLISIONS)] + list(range(1, 1000))
    assert sorted(roundtrip(set(few))) == sorted(few)


def test_dict_keys_collisions_are_refused_but_repeats_are_not():
    keys = ",".join(f"{k * P},0" for k in range(1000))
    with pytest.raises(codec.PlainDataError, match="share one hash"):
        codec.loads(f'["D",{keys}]'.encode())
    # equal values sharing a hash are no attack: a long list of zeros, -1 and -2 (which hash alike)
    plain = [0] * 100000 + [-1, -2] * 1000 + [P] * 50
    assert roundtrip(plain) == plain and roundtrip({-1: 1, -2: 2}) == {-1: 1, -2: 2}


def test_one_budget_for_many_messages_and_a_deadline():
    budget = [1000]
    msg = codec.dumps(list(range(600)))
    assert codec.loads(msg, budget=budget) == list(range(600))
    with pytest.raises(codec.PlainDataError, match="more than"):  # the second one overdraws the budget
        codec.loads(msg, budget=budget)
    with pytest.raises(codec.DecodeTimeout):
        codec.loads(codec.dumps(list(range(10000))), deadline=0.0)
    assert codec.loads(codec.dumps([1, 2]), deadline=0.0) == [1, 2]  # checked every 4,096 values


# A program that writes its own answer frame (fd 4 is the result channel) instead of returning.
FORGE = ("import os, time\nP = 2 ** 61 - 1\ndef f(x):\n    b = {body}.encode()\n"
         "    data = len(b).to_bytes(4, 'big') + b\n    while data:\n        data = data[os.write(4, data):]\n"
         "    time.sleep(60)\n")
FORGE_AT_LOAD = "import os\nb = {body}.encode()\nos.write(4, len(b).to_bytes(4, 'big') + b)\ndef f(x):\n    return 0\n"
RAISES = "try:\n    f(-1)\n    raise AssertionError('no error')\nexcept (ValueError, OverflowError):\n    pass\n"


def test_pathological_frames_cost_one_row_and_nothing_more():
    """A 60k-element colliding set held the harness's GIL for over a minute (quadratic), so the rows
    graded beside it missed their deadlines; now it is refused at once, and malformed frames are the
    program's failure, never the harness's (sandbox_error) nor an exception the tests can catch."""
    from dlm_bench import sandbox as sb
    check = lambda src, tests="assert f(1) == 2\n", timeout=10.0: sb.Program(
        src, mode="check", tests=tests, expose=("f",), timeout=timeout)
    colliding = ",".join(str(k * (2 ** 61 - 1)) for k in range(60000))
    bad = {
        "forged colliding set": check(FORGE.format(body=repr(f'["L",0,"ok",["S",{colliding}]]'))),
        "forged colliding dict": check(FORGE.format(body=repr('["L",0,"ok",["D",' + ",".join(
            f"{k * (2 ** 61 - 1)},0" for k in range(60000)) + "]]"))),
        "returned colliding list": check("def f(x):\n    return [k * (2 ** 61 - 1) for k in range(60000)]\n",
                                         "assert set(f(1)) == {2}\n"),
        "bad hex, caught as ValueError": check(FORGE.format(body=repr('["L",0,"ok",["B","zz"]]')), RAISES),
        "huge range, caught as OverflowError": check(FORGE.format(body=repr('["L",0,"ok",["R",0,1e40,1]]')
                                                                  .replace("1e40", "9" * 40)), RAISES),
        "malformed frame while loading": check(FORGE_AT_LOAD.format(body=repr('["L","ready",["R",0,1,0]]'))),
    }
    # each good row is still running (for about a second) while the worker beside it decodes: a
    # stall of the harness would make it miss its deadline
    good = check("import time\ndef f(x):\n    time.sleep(0.3)\n    return x + 1\n",
                 "assert f(1) == 2\nassert f(2) == 3\nassert f(3) == 4\n", timeout=8.0)
    programs = [p for prog in bad.values() for p in (prog, good)]
    results = sb.run_many(programs, workers=2)
    got = {name: (r.status, r.detail) for name, r in zip(bad, results[0::2])}
    assert all(status == "failed" and "plain data" in detail for status, detail in got.values()), got
    assert all("share one hash" in got[n][1] for n in list(bad)[:3]), got
    assert [r.status for r in results[1::2]] == ["ok"] * len(bad)  # the rows beside them: unharmed


def test_what_one_run_returns_is_capped_in_all():
    """Call mode keeps every returned value to the end of the row: the bytes of all of them count
    against max_output together (5 tests x 60 MB once took the harness to 443 MB for one row)."""
    from dlm_bench import sandbox as sb
    src = "class Solution:\n    def f(self, n):\n        return 'x' * n\n"
    prog = lambda n: sb.Program(src, mode="call", cls="Solution", func="f", inputs=(f"[{n}]",) * 5,
                                max_output=1 << 20)
    under, over = sb.run(prog(150_000)), sb.run(prog(300_000))  # 5 x 150 kB fit in 1 MiB; 5 x 300 kB do not
    assert under.status == "ok" and len(under.values) == 5
    assert over.status == "output_limit" and "in all" in over.detail and len(over.values) == 3
