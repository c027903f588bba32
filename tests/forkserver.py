"""`python SCRIPT ARGS` run many times, each run in a fork of one Python that has already imported torch and spconv.

A fresh Python spends about 9 s on 2 CPU cores importing them (7 s of it spconv building its CUDA algorithm tables),
and every notebook and command the tests start pays it again. Here one server process imports them once (nothing of
sonata_nb, nothing that reads the environment a run sets: triton is not preloaded), then forks a child per run that
takes the run's working directory, environment, `sys.argv` and `sys.path` and executes the script as `__main__`,
exiting as that Python would (its own exit code, an uncaught exception printed with exit code 1). What a run
imports of sonata_nb, and everything after, is its own, as in a fresh process.

    server = ForkServer([(key, [script, *args], cwd, env), ...], jobs=1)  # all runs given up front, started in order
    rc, output = server.wait(key)                                        # stdout and stderr together
    server.close()
"""
import json, os, subprocess, sys, tempfile, threading
from pathlib import Path

PRELOAD = ("numpy", "torch", "spconv.pytorch")

SERVER = r"""
import json, os, runpy, sys, warnings
preload, jobs = json.loads(sys.argv[1]), int(sys.argv[2])
server_env = dict(os.environ)
with warnings.catch_warnings():  # spconv's import-time FutureWarnings (sonata_nb silences them where it imports spconv)
    warnings.simplefilter("ignore")
    for name in preload: __import__(name)
runs = [json.loads(line) for line in sys.stdin]  # every run, up front
print("ready", flush=True)
child, running = None, {}
for run in runs:
    while len(running) >= jobs:
        pid, status = os.wait()
        print(running.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0: child = run; break
    running[pid] = run["key"]
if child is None:
    while running:
        pid, status = os.wait()
        print(running.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
    sys.exit(0)
# the child: `python SCRIPT ARGS` from here on
fd = os.open(child["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
sys.stdin = open(0, closefd=False)
os.chdir(child["cwd"])
os.environ.clear(); os.environ.update(child["env"])
script = os.path.abspath(child["argv"][0])
sys.argv = [script, *child["argv"][1:]]
def pythonpath(env): return [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
own = pythonpath(child["env"])  # sys.path as `python SCRIPT` with the run's PYTHONPATH starts it
sys.path[:] = [os.path.dirname(script), *own, *[p for p in sys.path[1:] if p not in pythonpath(server_env) and p not in own]]
runpy.run_path(script, run_name="__main__")
"""


class ForkServer:
    def __init__(self, runs:list, # (key, [script, *args], cwd, env) per run, started in this order
                 jobs:int=1,      # runs at a time
                 preload=PRELOAD):
        self.logs = Path(tempfile.mkdtemp(prefix="forkserver-"))
        self.done, self.events = {}, {key: threading.Event() for key, *_ in runs}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(list(preload)), str(jobs)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, (key, argv, cwd, env) in enumerate(runs):
            self.proc.stdin.write(json.dumps(dict(key=key, argv=[str(a) for a in argv], cwd=str(cwd), env=dict(env),
                                                  log=str(self.logs/f"{i}.log"))) + "\n")
        self.proc.stdin.close()
        self.log_of = {key: self.logs/f"{i}.log" for i, (key, *_) in enumerate(runs)}
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.proc.stdout:
            if line == "ready\n": continue
            key, rc = line.rsplit(" ", 1)
            self.done[key] = int(rc); self.events[key].set()
        for event in self.events.values(): event.set()  # the server ended: runs without a result failed to start

    def wait(self, key, timeout=None) -> tuple[int, str]:
        "The run's exit code and its output (stdout and stderr together)"
        if not self.events[key].wait(timeout): raise TimeoutError(f"{key}: no result after {timeout} s")
        if key not in self.done:
            raise RuntimeError(f"the fork server ended ({self.proc.wait()}) before running {key}:\n{self.proc.stderr.read()[-3000:]}")
        return self.done[key], self.log_of[key].read_text(errors="replace")

    def close(self):
        if self.proc.poll() is None: self.proc.kill()
        self.proc.wait()
        for f in self.logs.iterdir(): f.unlink()
        self.logs.rmdir()
