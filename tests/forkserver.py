"""`python ARGS` for tests that need a fresh process, forked from one Python that has already imported torch and spconv.

A fresh Python spends about 9 s on 2 CPU cores importing them (7 s of it spconv building its CUDA algorithm tables),
and every notebook and helper process the tests start paid it again. Here one server process imports them once
(nothing of sonata_nb, and nothing that reads an environment variable a run sets: triton is not preloaded), then forks
a child per run that takes the run's working directory, environment, `sys.argv` and `sys.path` and executes
`SCRIPT`, `-m MODULE` or `-c CODE` as `__main__`, exiting as that Python would (its exit code; an uncaught exception
printed, exit code 1). What a run imports of sonata_nb, and everything after, is its own, as in a fresh process.

    r = forkserver.run(["-c", "print(1)"], cwd=ROOT, env=os.environ)  # a subprocess.CompletedProcess (text)

The `forkserver` fixture (tests/conftest.py) is one server for the session; runs go one at a time. A run's environment
must agree with the server's on the variables the preloaded libraries read at import (thread counts, devices, ...).
Forked runs share the server's hash seed (PYTHONHASHSEED): tests of what must hold across fresh processes (resume
bit for bit, say) start real subprocesses instead.
"""
import json, os, signal, subprocess, sys, tempfile, threading
from pathlib import Path

PRELOAD = ("numpy", "torch", "spconv.pytorch")
# environment variables the preloaded libraries read when imported (thread pools, devices, hashing): a run must have
# the server's values, or a fresh Python would differ (e.g. OMP_NUM_THREADS=1 and torch's thread count)
IMPORT_TIME = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOTO_", "NUMEXPR_", "TORCH_", "PYTORCH_", "CUDA_", "CUMM_",
               "SPCONV_", "PYTHON", "LD_", "MALLOC_")


def import_time_env(env:dict) -> dict:  # PYTHONPATH is the run's own (its sys.path)
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME) and k != "PYTHONPATH"}

SERVER = r"""
import json, os, sys, warnings
preload = json.loads(sys.argv[1])
with warnings.catch_warnings():  # spconv's import-time FutureWarnings (sonata_nb silences them where it imports spconv)
    warnings.simplefilter("ignore")
    for name in preload: __import__(name)
server_pythonpath = os.environ.get("PYTHONPATH", "")
print("ready", flush=True)
for line in sys.stdin:
    run = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0: break
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("rc", os.waitstatus_to_exitcode(status), flush=True)
else: sys.exit(0)

# the child: `python ARGV` from here on
import runpy, types
for fd, name, flags in ((0, os.devnull, os.O_RDONLY), (1, run["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                        (2, run["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
    f = os.open(name, flags); os.dup2(f, fd); os.close(f)
sys.stdin = open(0, closefd=False)
os.chdir(run["cwd"])
os.environ.clear(); os.environ.update(run["env"])
def pythonpath(value): return [os.path.abspath(p) for p in value.split(os.pathsep) if p]
own = pythonpath(run["env"].get("PYTHONPATH", ""))  # sys.path as `python ARGV` with the run's PYTHONPATH starts it
rest = [p for p in sys.path[1:] if p not in pythonpath(server_pythonpath) and p not in own]
argv = run["argv"]
if argv[0] == "-c":
    sys.argv, sys.path[:] = ["-c", *argv[2:]], ["", *own, *rest]
    main = types.ModuleType("__main__"); main.__builtins__ = __builtins__; sys.modules["__main__"] = main
    exec(compile(argv[1], "<string>", "exec"), main.__dict__)
elif argv[0] == "-m":
    sys.argv, sys.path[:] = [*argv[1:]], [os.getcwd(), *own, *rest]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
else:
    script = os.path.abspath(argv[0])
    sys.argv, sys.path[:] = [script, *argv[1:]], [os.path.dirname(script), *own, *rest]
    runpy.run_path(script, run_name="__main__")
"""


class ForkServer:
    def __init__(self, preload=PRELOAD):
        self.tmp, self.env = Path(tempfile.mkdtemp(prefix="forkserver-")), import_time_env(os.environ)
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(list(preload))], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=(self.tmp/"server.err").open("w"), text=True)
        if self.proc.stdout.readline() != "ready\n":
            raise RuntimeError(f"the fork server did not start:\n{(self.tmp/'server.err').read_text()[-3000:]}")

    def run(self, argv:list,  # what follows `python`: [SCRIPT, *args], ["-m", MODULE, *args] or ["-c", CODE, *args]
            cwd, env:dict, timeout:float|None=None) -> subprocess.CompletedProcess:
        "`python *argv` in `cwd` with exactly the environment `env`; SIGKILLed after `timeout` seconds"
        argv, diff = [str(a) for a in argv], set(import_time_env(env).items()) ^ set(self.env.items())
        if diff: raise ValueError(f"{sorted({k for k, _ in diff})} differ from the fork server's environment: their "
                                  "values are read when torch/numpy/spconv are imported (use a fresh subprocess)")
        out, err = self.tmp/"stdout", self.tmp/"stderr"
        with self.lock:
            self.proc.stdin.write(json.dumps(dict(argv=argv, cwd=str(cwd), env=dict(env), stdout=str(out),
                                                  stderr=str(err))) + "\n")
            self.proc.stdin.flush()
            pid = int(self._line("pid"))
            timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL)) if timeout else None
            if timer: timer.start()
            try: rc = int(self._line("rc"))
            finally:
                if timer: timer.cancel()
            r = subprocess.CompletedProcess(["python", *argv], rc, out.read_text(errors="replace"),
                                            err.read_text(errors="replace"))
        if timeout and rc == -signal.SIGKILL: raise subprocess.TimeoutExpired(r.args, timeout, r.stdout, r.stderr)
        return r

    def check(self, script, # a test file run as `python SCRIPT CHECK` (its `check_<CHECK>` function)
              check:str, interpret:bool=True, # Triton's CPU interpreter on (chosen before any kernel is defined)
              unset=(), # variables of this environment left out (switches the check must see at their defaults)
              **env) -> str: # more variables for the check
        "Run `check` of a test file in a fresh Python with the repository on PYTHONPATH; its stdout (an assertion names the failure)"
        root = Path(script).resolve().parents[1]
        env = {**{k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", *unset)}, "PYTHONPATH": str(root), **env}
        if interpret: env["TRITON_INTERPRET"] = "1"
        r = self.run([script, check], cwd=root, env=env, timeout=900)
        assert r.returncode == 0, f"check {check} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        return r.stdout

    def _line(self, tag):
        line = self.proc.stdout.readline()
        if not line.startswith(tag + " "):
            err = (self.tmp/"server.err").read_text()[-3000:]
            raise RuntimeError(f"the fork server stopped ({self.proc.poll()}):\n{err}")
        return line.split()[1]

    def close(self):
        self.proc.stdin.close()
        try: self.proc.wait(30)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        for f in self.tmp.iterdir(): f.unlink()
        self.tmp.rmdir()
