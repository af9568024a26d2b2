# dlm-bench-sandbox-runner (after the codec above): sets limits, then loads the untrusted program.
# Script mode reports nonce lines; serve mode answers the harness's calls in frames and decides nothing.
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
def _read_exact(fd, n):  # None at end of file
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
def _read_frame(fd, width):
    head = _read_exact(fd, width)
    return None if head is None else _read_exact(fd, int.from_bytes(head, "big"))
def _write_all(fd, data):
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass
def _main(cfg_fd, res_fd):
    import marshal, resource
    cfg = marshal.loads(_read_frame(cfg_fd, 8))
    for name, (soft, hard) in cfg["limits"].items():
        res = getattr(resource, name)
        cur = resource.getrlimit(res)[1]
        cap = (lambda v: v if cur == resource.RLIM_INFINITY else min(v, cur))
        resource.setrlimit(res, (cap(soft), cap(hard)))
    serve = cfg["mode"] == "serve"
    if serve:  # verdicts are the harness's: this process only answers calls, in frames
        send = lambda msg: _write_all(res_fd, len(msg).to_bytes(4, "big") + msg)
        report = lambda kind, *parts: send(dumps([kind] + [str(p)[:300] for p in parts]))
        report("loading")
    else:
        os.close(cfg_fd)
        report = _reporter(cfg.pop("nonce"), res_fd)
    err, out = sys.stderr, sys.stdout
    SE, BExc, typ = SystemExit, BaseException, type
    def describe(e):
        try:
            msg = str(e)
        except BaseException:
            msg = "?"
        return (typ(e).__name__ + (": " + msg if msg else ""))[:300]
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
        if serve:
            report("load_error", typ(e).__name__, describe(e))
        else:
            report("memory" if isinstance(e, MemoryError) else "runtime_error", where + describe(e))
        finish(1)
    mod = typ(sys)("__solution__" if serve else "__main__")
    mod.__file__, sys.argv = "main.py", ["main.py"]
    sys.modules[mod.__name__] = mod
    ns = mod.__dict__
    try:
        code = compile(cfg["source"], "main.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes, lone surrogates
        report("syntax_error", describe(e))
        finish(1)
    del cfg
    if not serve:
        report("ready")
    try:
        exec(code, ns)
    except SE as e:
        if serve:
            crashed(e, "")
        c = e.code
        if c is not None and typ(c) is not int:
            print(c, file=err)
        rc = 0 if c is None else c if typ(c) is int else 1
        report("exit", rc)  # as LiveCodeBench: sys.exit() ends a stdin program normally
        finish(rc)
    except BExc as e:
        crashed(e, "")
    if not serve:
        report("ok")
        finish(0)
    _answer_calls(ns, cfg_fd, send, describe)
    finish(0)
def _answer_calls(ns, req_fd, send, describe):
    """Serve the harness's requests [seq, op, kind, ref, name, args, kwargs, opaque] until EOF:
    op call/get/set on a global (kind "g", ref = its name) or a handle (kind "h", ref = the object)."""
    objs = []
    def keep(obj):
        objs.append(obj)
        return len(objs) - 1
    send(dumps(["ready"]))
    while True:
        req = _read_frame(req_fd, 4)
        if req is None:
            return
        seq = -1
        try:
            seq, op, kind, ref, name, args, kwargs, opaque = loads(req, objs.__getitem__)
            target = ns[ref] if kind == "g" else ref
            if op == "call":
                val = (target if name is None else getattr(target, name))(*args, **kwargs)
            elif op == "get":
                val = getattr(target, name)
            else:
                setattr(target, name, args[0])
                val = None
        except BaseException as e:
            send(dumps([seq, "raise", type(e).__name__, describe(e)]))
            continue
        try:
            msg = (_json.dumps(["L", seq, "ok", ["H", keep(val)]]).encode("ascii") if opaque
                   else dumps([seq, "ok", val], keep))
        except BaseException as e:  # too deep, an over-long int, an iterator that raised, ...
            msg = dumps([seq, "bad_value", describe(e)])
        send(msg)
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
_TOPS = ("/sandbox", "/tmp", "/dev/shm")  # where a job can write
def _scrub(uid):  # kill every process of uid; delete its files and SysV IPC objects; True if all gone
    # (kernel keys and POSIX message queues it cannot make: the seccomp filter refuses them)
    def rm_tree(root):  # iterative; deeper folders are first moved up into root: no path grows long
        todo, n = [root], 0
        while todo:
            p = todo.pop()
            try:
                if not os.path.isdir(p) or os.path.islink(p):
                    os.unlink(p)
                    continue
                os.chmod(p, 0o700)
                for e in os.listdir(p):
                    q = p + "/" + e
                    if os.path.isdir(q) and not os.path.islink(q):
                        if p != root:
                            n += 1
                            os.rename(q, root + "/.scrub-%d" % n)
                            q = root + "/.scrub-%d" % n
                        todo.append(q)
                    else:
                        os.unlink(q)
                if p != root:
                    os.rmdir(p)
            except OSError:
                pass
        try:
            os.rmdir(root)  # (a home stays: /sandbox is root's, which removes it below)
        except OSError:
            pass
    def ipc():  # the job's SysV segments, semaphores and queues (they would outlive it)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for kind, fn, argc in (("shm", libc.shmctl, 3), ("sem", libc.semctl, 4), ("msg", libc.msgctl, 3)):
            for ipc_id in _ipc_ids(kind, uid):  # by creator too: IPC_SET can hand the owner to anyone
                fn(*([ipc_id, 0, 0, None] if argc == 4 else [ipc_id, 0, None]))
    def work():
        os.kill(-1, 9)
        for top in _TOPS:
            for e in os.listdir(top) if os.path.isdir(top) else ():
                if os.lstat(top + "/" + e).st_uid == uid:
                    rm_tree(top + "/" + e)
        ipc()
    _as_uid(uid, work)
    try:
        os.rmdir("/sandbox/%d" % uid)
    except OSError:
        pass
    return not _leftovers(uid)
def _ipc_ids(kind, uid):  # SysV objects of `kind` whose owner or creator is uid
    try:
        rows = open("/proc/sysvipc/" + kind).read().splitlines()[1:]
    except OSError:
        return []
    owner = 4 if kind == "sem" else 7  # (uid, gid, cuid, cgid) start at this column
    return [int(f[1]) for f in map(str.split, rows) if uid in (int(f[owner]), int(f[owner + 2]))]
def _leftovers(uid):
    left = [t for t in _TOPS if os.path.isdir(t) for e in os.listdir(t) if os.lstat(t + "/" + e).st_uid == uid]
    return left + [kind for kind in ("shm", "sem", "msg") if _ipc_ids(kind, uid)]
def _serve(sock_fd):  # the zygote (root harness): one fresh child per job = five fds + a new uid
    import _socket, fcntl, select, marshal, resource, gc, ctypes, json  # children inherit these
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
            try:  # under the cgroup's memory limit the kernel kills the job, not this server
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write("1000")
            except OSError:
                pass
            home = "/sandbox/%d" % uid  # /sandbox is root's: no job can plant the next one's home
            os.mkdir(home, 0o700)
            os.chown(home, uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
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
        clean = _scrub(uid)
        sock.send(b"%d %d %d" % (uid, os.waitstatus_to_exitcode(status), clean))
if sys.argv[1] == "serve":
    _serve(int(sys.argv[2]))
else:
    _main(int(sys.argv[1]), int(sys.argv[2]))
