# dlm-bench-sandbox-runner: trusted code; runs before any untrusted code
import builtins, os, sys
class _Quit:  # -S skips site, which would have added exit() and quit()
    def __init__(self, name): self.name = name
    def __repr__(self): return "Use %s() to exit" % self.name
    def __call__(self, code=None): raise SystemExit(code)
builtins.exit, builtins.quit = _Quit("exit"), _Quit("quit")
def _reporter(tag, fd):
    head = tag.encode() + b" "
    def report(*parts):
        data = head + " ".join(str(p) for p in parts).replace("\n", " ").encode("utf-8", "replace") + b"\n"
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            pass
    return report
def _main(cfg_fd, res_fd):
    import marshal, resource, _signal as signal  # not `signal`: it imports enum (slow)
    chunks = []
    while not chunks or chunks[-1]:
        chunks.append(os.read(cfg_fd, 1 << 20))
    os.close(cfg_fd)
    cfg = marshal.loads(b"".join(chunks))
    del chunks
    report = _reporter(cfg.pop("nonce"), res_fd)
    for name, (soft, hard) in cfg["limits"].items():
        res = getattr(resource, name)
        cur = resource.getrlimit(res)[1]
        cap = (lambda v: v if cur == resource.RLIM_INFINITY else min(v, cur))
        resource.setrlimit(res, (cap(soft), cap(hard)))
    err, out = sys.stderr, sys.stdout
    name_of, flags_of = type.__dict__["__name__"].__get__, type.__dict__["__flags__"].__get__
    AE, ME, SE, BExc = AssertionError, MemoryError, SystemExit, BaseException
    comp, ex, isinst, typ = compile, exec, isinstance, type
    def describe(e):
        try:
            msg = str(e)
        except BaseException:
            msg = "?"
        return (name_of(typ(e)) + (": " + msg if msg else ""))[:300]
    def finish(rc):
        for s in (sys.stdout, sys.stderr, out, err):
            try:
                s.flush()
            except BaseException:
                pass
        os._exit(rc)
    def crashed(e, where):
        try:
            import traceback
            traceback.print_exception(typ(e), e, e.__traceback__, file=err)
        except BaseException:
            pass
        report("memory" if isinst(e, ME) else "runtime_error", where + describe(e))
        finish(1)
    mode = cfg["mode"]
    pristine = dict(builtins.__dict__)
    meta, hooks, path = list(sys.meta_path), list(sys.path_hooks), list(sys.path)
    mod = typ(sys)("__main__" if mode == "script" else "__solution__")
    mod.__file__, sys.argv = "main.py", ["main.py"]
    sys.modules[mod.__name__] = mod
    ns = mod.__dict__
    try:
        code = comp(cfg["source"], "main.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        report("syntax_error", describe(e))
        finish(1)
    report("ready")
    try:
        ex(code, ns)
    except SE as e:
        if mode != "script":
            crashed(e, "while loading the solution: ")
        c = e.code
        if c is not None and typ(c) is not int:
            print(c, file=err)
        rc = 0 if c is None else c if typ(c) is int else 1
        report("exit", rc)  # as LiveCodeBench: sys.exit() ends a stdin program normally
        finish(rc)
    except BExc as e:
        crashed(e, "" if mode == "script" else "while loading the solution: ")
    if mode == "script":
        report("ok")
        finish(0)
    if mode == "call":
        import json
        class Timeout(BExc):
            pass
        def on_alarm(sig, frame):
            raise Timeout()
        for i, raw in enumerate(cfg["inputs"]):
            args = json.loads(raw)
            signal.signal(signal.SIGALRM, on_alarm)
            try:
                signal.setitimer(signal.ITIMER_REAL, cfg["per_call"])
                fn = getattr(ns[cfg["cls"]](), cfg["func"]) if cfg["cls"] else ns[cfg["func"]]
                val = fn(*args)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except Timeout:
                report("timeout", i)
                finish(1)
            except BExc as e:
                signal.setitimer(signal.ITIMER_REAL, 0)
                crashed(e, "call %d: " % i)
            val = list(val) if typ(val) is tuple else val  # as LiveCodeBench: a tuple counts as a list
            try:
                text = json.dumps(val)
            except BExc:
                report("unserializable", i, name_of(typ(val)))
                finish(1)
            report("value", i, text)
        report("done")
        finish(0)
    # check: trusted setup + tests in their own namespace, with the solution's patches undone
    sys.settrace(None)
    sys.setprofile(None)
    sys.meta_path[:], sys.path_hooks[:], sys.path[:] = meta, hooks, path
    sys.path_importer_cache.clear()
    for m in ("math", "cmath", "copy", "string", "random", "fractions", "decimal", "statistics"):
        sys.modules.pop(m, None)  # the tests' own imports get fresh modules, not patched ones
    class Rejected(BExc):
        pass
    HEAP = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class created by Python code
    def foreign(v):
        stack, seen = [v], 0
        while stack and seen < 1000000:
            x = stack.pop()
            t, seen = typ(x), seen + 1
            if flags_of(t) & HEAP:
                return t
            if t is list or t is tuple or t is set or t is frozenset:
                stack.extend(x)
            elif t is dict:
                stack.extend(dict.keys(x))
                stack.extend(dict.values(x))
        return None
    # built-in subclasses become exact copies made by the base type's C code (their own __eq__ and
    # __iter__ cannot matter); any other class of the solution's is refused
    exact = ((int, lambda x: int.__add__(x, 0)), (float, lambda x: float.__add__(x, 0.0)),
             (complex, lambda x: complex.__add__(x, 0j)), (str, lambda x: str.__add__(x, "")),
             (bytes, lambda x: bytes.__add__(x, b"")), (tuple, lambda x: tuple.__add__(x, ())),
             (list, lambda x: list.__add__(x, [])), (dict, dict.copy), (set, set.union),
             (frozenset, frozenset.union))
    def conv(x, name, depth):
        t = typ(x)
        if depth > 500:
            raise Rejected("%s returned a structure nested too deeply" % name)
        if flags_of(t) & HEAP:
            x = next((make(x) for base, make in exact if isinst(x, base)), x)
            if flags_of(typ(x)) & HEAP:
                raise Rejected("%s returned an object of its own class %r" % (name, name_of(t)))
            t = typ(x)
        if t is list or t is tuple or t is set or t is frozenset:
            return t([conv(y, name, depth + 1) for y in x])
        if t is dict:
            return {conv(k, name, depth + 1): conv(v, name, depth + 1) for k, v in dict.items(x)}
        return x
    def checked(v, name):
        return v if foreign(v) is None else conv(v, name, 0)
    def guard(fn, name):
        def wrapper(*a, **k):
            v = fn(*a, **k)
            if not flags_of(typ(v)) & HEAP and hasattr(typ(v), "__next__"):
                return (checked(x, name) for x in v)  # lazy results: check each item
            return checked(v, name)
        wrapper.__name__ = name
        return wrapper
    tns = dict(ns)
    tns.update(__builtins__=dict(pristine), __name__="__tests__")
    try:
        ex(comp(cfg["setup"], "setup.py", "exec", dont_inherit=True, optimize=0), tns)
        for name in cfg["expose"]:
            if name in ns:
                obj = ns[name]
                tns[name] = guard(obj, name) if callable(obj) and not isinst(obj, type) else obj
        ex(comp(cfg["tests"], "tests.py", "exec", dont_inherit=True, optimize=0), tns)
    except Rejected as e:
        report("failed", describe(e))
        finish(1)
    except AE as e:
        tb, line = e.__traceback__, 0
        while tb is not None:
            line = tb.tb_lineno if tb.tb_frame.f_code.co_filename == "tests.py" else line
            tb = tb.tb_next
        lines = cfg["tests"].splitlines()
        where = lines[line - 1].strip()[:200] if 0 < line <= len(lines) else ""
        report("failed", "AssertionError at tests line %d: %s" % (line, where))
        finish(1)
    except BExc as e:
        crashed(e, "")
    report("pass")
    finish(0)
def _as_uid(uid, fn):  # run fn in a child process that has become uid; wait for it
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            fn()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
def _scrub(uid):  # kill every process of uid; delete what it owns in the writable places
    def rm(p):
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                for e in os.listdir(p):
                    rm(p + "/" + e)
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass
    def work():
        os.kill(-1, 9)
        for top in ("/sandbox", "/tmp", "/dev/shm"):
            for e in os.listdir(top) if os.path.isdir(top) else ():
                if os.lstat(top + "/" + e).st_uid == uid:
                    rm(top + "/" + e)
    _as_uid(uid, work)
def _serve(sock_fd):  # the zygote (root harness): one fresh child per job = five fds + a new uid
    import _socket, fcntl, select, marshal, resource, _signal, json, gc  # children inherit these
    compile("pass", "warm-up", "exec")  # the first compile builds the AST types: ~3 ms per child
    gc.freeze()  # keeps the shared heap out of the children's collections (fewer copied pages)
    sock = _socket.socket(fileno=sock_fd)
    sock.send(b"ready")
    while True:
        try:
            msg, anc, _, _ = sock.recvmsg(64, _socket.CMSG_SPACE(5 * 4))
        except OSError:
            msg = b""
        if not msg:
            os._exit(0)
        fds = [int.from_bytes(d[i:i + 4], sys.byteorder, signed=True)
               for _, _, d in anc for i in range(0, len(d) - 3, 4)]
        if not msg.isdigit() or len(fds) != 5:  # e.g. a late "kill" for a job that already ended
            for fd in fds:
                os.close(fd)
            continue
        uid = int(msg)
        pid = os.fork()
        if pid == 0:  # fds 0-4 = stdin, stdout, stderr, config, results; nothing else stays open
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
            os.closerange(0, 100)
            for i, fd in enumerate(high):
                os.dup2(fd, i)
            os.closerange(5, 1 << 16)
            os.setsid()
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            home = "/sandbox/%d" % uid
            os.mkdir(home, 0o700)
            os.chdir(home)
            os.environ.update(HOME=home, TMPDIR=home, PWD=home)
            os.umask(0o077)
            _main(3, 4)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)  # readable when the child exits (Linux >= 5.3; else: poll)
        except (AttributeError, OSError):
            pidfd = None
        status = None
        while status is None:
            ready = select.select([sock, pidfd] if pidfd else [sock], [], [], None if pidfd else 0.002)[0]
            if sock in ready:
                if not sock.recv(64):  # the harness is gone
                    _scrub(uid)
                    os._exit(0)
                _as_uid(uid, lambda: os.kill(-1, 9))  # "kill": the job ran out of time or output
            if pidfd is None or pidfd in ready:
                done, st = os.waitpid(pid, os.WNOHANG)
                status = st if done else None
        if pidfd is not None:
            os.close(pidfd)
        _scrub(uid)
        sock.send(b"%d %d" % (uid, os.waitstatus_to_exitcode(status)))
if sys.argv[1] == "serve":
    _serve(int(sys.argv[2]))
else:
    _main(int(sys.argv[1]), int(sys.argv[2]))
