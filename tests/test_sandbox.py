"""Hostile programs against dlm_bench.sandbox.launch: each must fail (or be contained) without harming the
harness, the host, or the other results of the same batch."""
import os
import socket
import subprocess
import time

import pytest

from dlm_bench import sandbox as sb
from dlm_bench.sandbox import launch
from dlm_bench.sandbox.session import Remote

ISO = sb.isolation()
needs_bwrap = pytest.mark.skipif(ISO != sb.BWRAP, reason="bubblewrap unavailable here (rlimits-only)")

GOOD = "def f(x):\n    return x + 1\n"
TESTS = "assert f(1) == 2\nassert f(10) == 11\n"


def check(source, tests=TESTS, expose=("f",), setup="", timeout=5.0, **kw):
    return sb.Program(source, mode="check", tests=tests, setup=setup, expose=expose, timeout=timeout, **kw)


def leftovers(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line]


def test_basic_pass_fail_and_record():
    ok, wrong, syntax = sb.run_many([check(GOOD), check("def f(x):\n    return x\n"), check("def f(:\n")])
    assert ok.status == "ok" and ok.passed  # (its exit code is no part of the verdict: it is killed)
    assert wrong.status == "failed" and "assert f(1) == 2" in wrong.detail
    assert syntax.status == "syntax_error"
    for r in (ok, wrong, syntax):
        assert r.isolation == ISO and r.duration > 0


# Each program below must NOT pass: it is wrong, or it never lets the tests finish. Where a cheat
# targets something specific, the tests use exactly that thing (so the cheat would work if unguarded).
MATH_TESTS = "import math\nassert math.isclose(f(2), 3.0)\n"
CHEATS = {
    "sys_exit_early": ("import sys\nsys.exit(0)\n", TESTS),
    "exit_builtin": ("exit()\n", TESTS),
    "os_exit_early": ("import os\nos._exit(0)\n", TESTS),
    "os_exit_in_call": ("import os\ndef f(x):\n    os._exit(0)\n", TESTS),
    "system_exit_in_call": ("def f(x):\n    raise SystemExit(0)\n", TESTS),
    "keyboard_interrupt": ("def f(x):\n    raise KeyboardInterrupt\n", TESTS),
    "atexit_os_exit": ("import atexit, os\natexit.register(lambda: os._exit(0))\ndef f(x):\n    return 0\n", TESTS),
    "excepthook": ("import sys\nsys.excepthook = lambda *a: None\ndef f(x):\n    return 0\n", TESTS),
    "assertion_error_patched": ("import builtins\nclass Quiet(Exception):\n    pass\n"
                                "builtins.AssertionError = Quiet\ndef f(x):\n    return 0\n", TESTS),
    "builtins_patched": ("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0\n",
                         "assert abs(f(3) - 4) < 1e-9\n"),
    "redefine_check": ("def check(candidate):\n    pass\ndef f(x):\n    return 0\n",
                       "def check(candidate):\n    assert candidate(1) == 2\ncheck(f)\n"),
    "print_pass": ("import os\nprint('pass'); print('ok'); print('PASSED')\n"
                   "for fd in range(3, 40):\n    try:\n        os.write(fd, b'0123456789abcdef pass\\npass\\n')\n"
                   "    except OSError:\n        pass\ndef f(x):\n    return 0\n", TESTS),
    "always_equal": ("class E:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return E()\n", TESTS),
    "always_equal_int": ("class I(int):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return I(0)\n",
                         TESTS),
    "always_equal_in_list": ("class E:\n    def __eq__(self, o):\n        return True\n"
                             "def f(x):\n    return [E()]\n", "assert f(1) == [2]\n"),
    "always_equal_generator": ("class E:\n    def __eq__(self, o):\n        return True\n"
                               "def f(x):\n    yield E()\n", "assert list(f(1)) == [2]\n"),
    "math_patched": ("import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 0\n", MATH_TESTS),
    "fake_module": ("import sys, types\nm = types.ModuleType('math')\nm.isclose = lambda *a, **k: True\n"
                    "sys.modules['math'] = m\ndef f(x):\n    return 0\n", MATH_TESTS),
    "close_result_channel": ("import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n"
                             "    except OSError:\n        pass\ndef f(x):\n    return 0\n", TESTS),
}
if ISO == sb.BWRAP:  # without bwrap these would really hit the host (that is why the fallback warns)
    CHEATS["kill_parent"] = ("import os\nos.kill(os.getppid(), 9)\ndef f(x):\n    return 0\n", TESTS)
    CHEATS["kill_everything"] = ("import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"
                                 "def f(x):\n    return x + 1\nos._exit(0)\n", TESTS)


def test_cheats_never_pass():
    results = sb.run_many([check(src, tests=tests) for src, tests in CHEATS.values()])
    assert [name for name, r in zip(CHEATS, results) if r.passed] == []
    for name, r in zip(CHEATS, results):
        assert r.status in ("failed", "runtime_error"), (name, r)
    # the same tests do pass an honest solution
    honest = {"assert f(1) == [2]\n": "def f(x):\n    return [x + 1]\n",
              "assert list(f(1)) == [2]\n": "def f(x):\n    yield x + 1\n"}
    tests = sorted({t for _, t in CHEATS.values()})
    assert all(r.passed for r in sb.run_many([check(honest.get(t, GOOD), tests=t) for t in tests]))


def test_legit_subclasses_are_compared_as_plain_values():
    src = ("from collections import Counter, namedtuple\nP = namedtuple('P', 'a b')\n"
           "class S(str):\n    pass\n"
           "def f(x):\n    return P(x, x + 1)\ndef g(s):\n    return Counter(s)\ndef h(s):\n    return S(s)\n"
           "def gen(n):\n    return (i * i for i in range(n))\n")
    tests = ("assert f(1) == (1, 2)\nassert g('aab') == {'a': 2, 'b': 1}\nassert h('x') == 'x'\n"
             "assert list(gen(3)) == [0, 1, 4]\n")
    assert sb.run(check(src, tests=tests, expose=("f", "g", "h", "gen"))).status == "ok"


def test_timeouts_kill_everything():
    ignore = ("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGALRM, "
              "signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n")
    progs = [sb.Program("while True:\n    pass\n", timeout=1.5),
             sb.Program(ignore + "while True:\n    try:\n        pass\n    except BaseException:\n        pass\n",
                        timeout=1.5),
             check("def f(x):\n    while True:\n        pass\n", timeout=1.5),
             sb.Program("import time\ntime.sleep(100)\n", timeout=1.0)]
    t0 = time.monotonic()
    results = sb.run_many(progs, workers=4)
    assert time.monotonic() - t0 < 10
    assert [r.status for r in results] == ["timeout"] * 4
    assert all(r.duration < 4 for r in results)


@needs_bwrap  # as root without bwrap, RLIMIT_NPROC cannot hold a fork bomb
def test_fork_bomb_is_bounded_and_cleaned_up():
    marker = f"1000.{os.getpid()}{int(time.time()) % 100000}"
    bomb = ("import os\nwhile True:\n    try:\n        if os.fork() == 0:\n"
            f"            os.execv('/bin/sleep', ['sleep', '{marker}'])\n    except OSError:\n        pass\n")
    r = sb.run(sb.Program(bomb, timeout=2.0))
    assert r.status == "timeout"
    time.sleep(0.5)
    assert leftovers(marker) == []


def test_stray_child_does_not_hold_the_run():
    marker = f"1001.{os.getpid()}{int(time.time()) % 100000}"
    src = f"import os\nif os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\nprint('parent done')\n"
    r = sb.run(sb.Program(src, timeout=8.0))
    assert r.status == "ok" and r.stdout == "parent done\n" and r.duration < 5
    time.sleep(0.5)
    assert leftovers(marker) == []


def test_memory_bomb():
    r = sb.run(sb.Program("a = []\nwhile True:\n    a.append(bytearray(1 << 22))\n", memory_mb=256, timeout=10))
    assert r.status == "memory"
    r = sb.run(check("def f(x):\n    return [0] * (10 ** 10)\n", memory_mb=256))
    assert r.status == "memory"


def test_output_floods_are_bounded():
    flood = sb.run(sb.Program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout=20,
                              max_output=1 << 20))
    assert flood.status == "output_limit" and len(flood.stdout) <= (1 << 20) + (1 << 16)
    assert flood.duration < 10
    err = sb.run(sb.Program("import sys\nfor i in range(200000):\n    sys.stderr.write('e' * 100 + '\\n')\n"
                            "print('done')\n", timeout=20))
    assert err.status == "ok" and err.stdout == "done\n" and len(err.stderr) < 25000


def test_stdin_large_and_unread():
    data = "y" * (8 << 20)
    read = sb.run(sb.Program("import sys\nprint(len(sys.stdin.read()))\n", stdin=data, timeout=20))
    assert read.status == "ok" and read.stdout.strip() == str(len(data))
    unread = sb.run(sb.Program("print('hi')\n", stdin=data, timeout=20))
    assert unread.status == "ok" and unread.stdout == "hi\n"


def test_environment_is_cleared(monkeypatch):
    monkeypatch.setenv("DLM_TEST_SECRET", "s3cr3t-token")
    r = sb.run(sb.Program("import os\nprint(sorted(os.environ.items()))\n"))
    assert r.status == "ok" and "s3cr3t" not in r.stdout


@needs_bwrap
def test_filesystem_is_read_only_and_private(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    here = os.path.dirname(os.path.abspath(__file__))
    src = (f"import os, shutil\nseen = []\nfor p in [{str(sentinel)!r}, {here!r}, '/etc/passwd', os.path.expanduser('~/.bashrc')]:\n"
           "    seen.append(os.path.exists(p))\n"
           "    for act in (lambda: os.remove(p), lambda: open(p, 'w').write('x'), lambda: shutil.rmtree(p)):\n"
           "        try:\n            act()\n        except OSError:\n            pass\n"
           "for p in ('/usr/evil', '/evil'):\n"
           "    try:\n        open(p, 'w').write('x')\n        seen.append(p)\n    except OSError:\n        pass\n"
           "open('scratch', 'w').write('fine')\nprint(seen, os.getuid())\n")
    r = sb.run(sb.Program(src))
    assert r.status == "ok", r
    seen, uid = r.stdout.rsplit(" ", 1)
    assert seen == "[False, False, False, False]"
    if os.geteuid() == 0:
        assert int(uid) != 0
    assert sentinel.read_text() == "keep me"
    assert not os.path.exists("/usr/evil") and not os.path.exists("/evil")


@needs_bwrap
def test_disk_filling_is_capped():
    src = ("n = 0\ntry:\n    while True:\n        open(f'f{n}', 'w').write('x' * (1 << 20))\n        n += 1\n"
           "except OSError as e:\n    print('stopped', n)\n")
    r = sb.run(sb.Program(src, timeout=20))
    assert r.status == "ok" and r.stdout.startswith("stopped")
    assert int(r.stdout.split()[1]) <= launch.TMPFS_BYTES >> 20


@needs_bwrap
def test_no_network():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        src = (f"import socket\nfor addr in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
               "    try:\n        socket.create_connection(addr, timeout=1)\n        print('CONNECTED', addr)\n"
               "    except OSError:\n        pass\n"
               "try:\n    socket.getaddrinfo('example.com', 80)\n    print('DNS')\nexcept OSError:\n    pass\n")
        r = sb.run(sb.Program(src, timeout=10))
    finally:
        srv.close()
    assert r.status == "ok" and "CONNECTED" not in r.stdout and "DNS" not in r.stdout


_BATCH = """
import json, sys
from dlm_bench import sandbox as sb
from dlm_bench.sandbox import launch
iso = sb.isolation()
good = "def f(x):\\n    return x + 1  # {}\\n"
bad = [sb.Program("while True:\\n    pass\\n", timeout=1.0),
       sb.Program("import os\\nos.kill(os.getppid(), 9)\\n" if iso == sb.BWRAP  # else: it would hit this harness
                  else "raise ValueError(3)\\n"),
       sb.Program("import sys\\nwhile True:\\n    sys.stdout.write('z' * 65536)\\n", max_output=1 << 18),
       sb.Program("a = ' ' * (10 ** 11)\\n", memory_mb=256)]
progs = []
for k in range(12):
    progs += [sb.Program(good.format(k), mode="check", tests="assert f(1) == 2\\nassert f(10) == 11\\n",
                         expose=("f",), timeout=5.0), bad[k % 4]]
print(json.dumps([r.status for r in sb.run_many(progs, workers=4)]))
"""


def test_one_bad_program_does_not_spoil_the_batch():
    # The harness runs in a child process: a program that escaped and killed its parent's parent
    # would take down that child (and fail this test), never the test runner.
    import json
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _BATCH], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    statuses = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(statuses) == 24
    assert all(s == "ok" for s in statuses[0::2])
    assert all(s != "ok" for s in statuses[1::2])


def test_call_mode_values_and_failures():
    src = "class Solution:\n    def f(self, a, b):\n        return (a + b, a)\n    def g(self, a):\n        return {1, 2}\n"
    ok = sb.run(sb.Program(src, mode="call", cls="Solution", func="f", inputs=("[1, 2]", "[3, 4]")))
    assert ok.status == "ok" and ok.values == ((3, 1), (7, 3))  # exact plain data, decoded here
    assert [type(v) for v in ok.values] == [tuple, tuple]
    odd = sb.run(sb.Program(src.replace("{1, 2}", "object()"), mode="call", cls="Solution", func="g",
                            inputs=("[1]",)))
    assert odd.status == "ok" and type(odd.values[0]) is Remote  # stays in the sandbox: equal to nothing
    assert odd.values[0] != odd.values[0].__class__ and not odd.values[0] == 1
    slow = sb.run(sb.Program("def f(x):\n    while True:\n        pass\n", mode="call", func="f",
                             inputs=("[1]", "[2]"), per_call=0.5, timeout=5))
    assert slow.status == "timeout" and slow.duration < 4


def test_rlimits_only_fallback_still_judges():
    results = [sb.run_with(p, sb.RLIMITS_ONLY) for p in (
        check(GOOD), check("def f(x):\n    return 0\n"), check("import sys\nsys.exit(0)\n"),
        sb.Program("while True:\n    pass\n", timeout=1.0),
        sb.Program("a = ' ' * (10 ** 11)\n", memory_mb=256))]
    assert [r.status for r in results] == ["ok", "failed", "runtime_error", "timeout", "memory"]
    assert all(r.isolation == sb.RLIMITS_ONLY for r in results)


@needs_bwrap  # without it a program writes the host's /tmp
def test_programs_cannot_see_or_touch_each_other():
    # sequential runs reuse one warm sandbox (root) or get fresh ones: either way nothing carries over
    first = sb.run(sb.Program("import os\nopen('/tmp/leak', 'w').write('x')\nopen('mine', 'w').write('x')\n"
                              "if os.fork() == 0:\n    import time\n    time.sleep(30)\nprint(os.getcwd())\n"))
    second = sb.run(sb.Program("import os\nprint(os.listdir('/tmp'), os.getcwd(), os.path.exists('mine'))\n"
                               "print([p for p in os.listdir('/proc') if p.isdigit() and p != str(os.getpid())"
                               " and os.stat('/proc/' + p).st_uid == os.getuid()])\n"))
    assert first.status == "ok" and second.status == "ok", (first, second)
    listing, procs = second.stdout.splitlines()
    assert listing.startswith("[]") and listing.endswith("False") and procs == "[]"
    # a program killing everything it can see does not disturb one running beside it
    sleeper = sb.Program("import time\ntime.sleep(1.5)\nprint('survived')\n", timeout=10)
    killer = sb.Program("import os\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
                        "        try:\n            os.kill(int(p), 9)\n        except OSError:\n            pass\n")
    a, b = sb.run_many([sleeper, killer], workers=2) if ISO == sb.BWRAP else (sb.run(sleeper), None)
    assert a.status == "ok" and a.stdout == "survived\n"
    assert sb.run(check(GOOD)).passed  # and the harness still works afterwards


def test_recovers_when_a_sandbox_is_killed_from_outside():
    assert sb.run(sb.Program("print(1)")).stdout == "1\n"
    for z in list(launch._IDLE.queue):  # warm sandboxes (root) die under the harness's feet
        os.killpg(z.proc.pid, 9)
        z.proc.wait()
    assert [r.stdout for r in sb.run_many([sb.Program("print(2)")] * 4)] == ["2\n"] * 4


@pytest.mark.slow
def test_cheats_never_pass_without_bwrap_either():
    safe = {k: v for k, v in CHEATS.items() if not k.startswith("kill_")}  # those would hit the host
    results = [sb.run_with(check(src, tests=tests), sb.RLIMITS_ONLY) for src, tests in safe.values()]
    assert [name for name, r in zip(safe, results) if r.passed] == []
    assert all(r.isolation == sb.RLIMITS_ONLY for r in results)
