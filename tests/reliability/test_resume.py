"""Resume after a kill: bit-exact weights and metrics (SIGKILLs of `scripts/train.sh` at each kind of point), model_best / model_last
consistency, fallback from a truncated model_last, and a full disk during a checkpoint write."""
import errno, json, os, queue, random, shutil, signal, subprocess, sys, threading, time, uuid
from pathlib import Path

import pytest
import torch

import sonata_nb.trainer as trainer_mod
from sonata_nb.trainer import load_checkpoint, save_atomic

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "semseg-demo-ft"
TIMING = {"time", "data_time", "batch_time", "eta"}  # fields that may differ between runs (none are logged today)


def demo_options(data_root, **overrides) -> dict:
    "The demo ft recipe (Mix3D 0.8, drop path, shuffled orders) shrunk to 2 rooms, 512-point crops, 1 step per cycle"
    opts = dict(seed=0, num_worker=2, batch_size=2, epoch=4, eval_epoch=4, enable_wandb=False, log_interval=1)
    opts["data.train.transform.SphereCrop.point_max"] = 512  # SphereCrop
    for split in ("train", "val", "test"):
        opts.update({f"data.{split}.data_root": data_root, f"data.{split}.n_train": 2, f"data.{split}.n_val": 1,
                     f"data.{split}.spacing": 0.15})
    opts.update(overrides)
    return opts


def records(exp) -> list[dict]:
    lines = (Path(exp)/"log"/"metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in lines]


def state(path) -> dict:
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    diff = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"{len(diff)} tensors differ, largest {max(diff.values())} ({max(diff, key=diff.get)})"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from sonata_nb.demo import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("demo"), n_train=2, n_val=1, seed=0, spacing=0.15)


# ----- the kill loop -----
def start(exp_root, name, options, resume):
    "`sh scripts/train.sh` in its own process group, its output lines (with arrival times) on a queue"
    env = dict(os.environ, EXP_ROOT=str(exp_root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="")  # bit-exactness on the CPU: CUDA's atomic adds differ run to run in the last bits
    cmd = ["sh", "scripts/train.sh", "-p", sys.executable, "-g", "1", "-d", "demo", "-c", CONFIG, "-n", name,
           "-r", "true" if resume else "false", "--", *[f"{k}={v}" for k, v in options.items()]]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines, log = queue.Queue(), []
    def pump():
        for line in p.stdout: lines.put((time.perf_counter(), line)); log.append(line)
        lines.put((time.perf_counter(), None))
    threading.Thread(target=pump, daemon=True).start()
    return p, lines, log


def wait_for(lines, marker, timeout=120.0):
    "Consume output up to a line containing `marker`; False when the process ended first"
    end = time.perf_counter() + timeout
    while True:
        _, line = lines.get(timeout=max(end - time.perf_counter(), 0.01))
        if line is None: return False
        if marker in line: return True


# Each kind of kill point twice, once in the first and once in the second cycle a start runs (`nth`), at a random
# moment (seeded) inside it: "startup" (imports, building, loading the checkpoint; the first start has nothing to
# resume yet), "train" (a moment of the cycle after its step: the next step, validation or the save), "eval" (the
# validation) and "save" (the checkpoint writes, right after "Currently Best mIoU").
KILLS = [("startup", 1), ("train", 1), ("save", 1), ("eval", 2), ("startup", 1), ("train", 2), ("save", 2), ("eval", 1)]


def test_kills_resume_bit_exact(tmp_path, data_root):
    "SIGKILL scripts/train.sh at each kind of point (startup/loading, training, validation, saving), restart with "
    "-r true each time: the final weights and metrics.jsonl equal an uninterrupted run's bit for bit"
    cycles = 12  # more cycles than the kills can complete (a kill in a start's nth cycle lets at most nth finish)
    opts = demo_options(data_root, epoch=cycles, eval_epoch=cycles)
    t0 = time.perf_counter()
    p, lines, log = start(tmp_path, "full", opts, resume=False)
    assert wait_for(lines, "Start Training"), "".join(log[-40:])
    t_train = time.perf_counter() - t0  # startup: sh, imports, building, loaders
    assert wait_for(lines, "Best mIoU:"), "".join(log[-40:])
    cycle = (time.perf_counter() - t0 - t_train) / cycles
    assert p.wait(300) == 0, "".join(log[-40:])

    rng, epochs, phases = random.Random(0), [], []
    exp = tmp_path/"demo"/"cut"
    for phase, nth in KILLS:
        p, lines, log = start(tmp_path, "cut", opts, resume=True)  # the first start finds nothing to resume
        if phase == "startup":  # a random moment of the start-up, at the latest when training starts (fast machines)
            try: alive = wait_for(lines, "Start Training", timeout=rng.uniform(0.05, 1.1) * t_train) or p.poll() is None
            except queue.Empty: alive = True
        else:  # in the nth cycle of this start
            marker = {"train": "Train: [", "eval": "Start Evaluation", "save": "Currently Best mIoU"}[phase]
            alive = all(wait_for(lines, marker) for _ in range(nth))
            time.sleep(rng.uniform(0, {"train": cycle, "eval": cycle / 2, "save": min(0.15, cycle)}[phase]))
        assert p.poll() is None, f"the start to kill ({phase}, cycle {nth}) ended first:\n" + "".join(log[-40:])
        os.killpg(p.pid, signal.SIGKILL); phases.append(phase)
        p.wait(60)
        assert alive and p.returncode == -signal.SIGKILL, "".join(log[-40:])
        last = exp/"model"/"model_last.pth"
        epochs.append(load_checkpoint(last)["epoch"] if last.is_file() else 0)
    p, lines, log = start(tmp_path, "cut", opts, resume=True)
    assert p.wait(300) == 0, "".join(log[-60:])
    full = tmp_path/"demo"/"full"
    for name in ("model_last.pth", "model_best.pth"):
        assert_same_weights(state(full/"model"/name), state(exp/"model"/name))
    assert load_checkpoint(exp/"model"/"model_best.pth")["epoch"] == load_checkpoint(full/"model"/"model_best.pth")["epoch"]
    assert records(exp) == records(full)
    assert len([r for r in records(exp) if r["type"] == "train"]) == cycles
    assert not list((exp/"model").glob("*.tmp"))
    assert sorted(epochs) == epochs and len(set(epochs)) >= 4, epochs  # progress between kills, never backwards
    print(f"{len(phases)} kills ({phases}); model_last epochs after each: {epochs}")


# ----- runs with a fault injected: a kill at a given write, a full disk -----
DRIVER = r"""
import json, os, sys
import torch
import sonata_nb.trainer as T
from sonata_nb.config import default_config_parser
fault, seen = json.loads(os.environ.get("FAULT") or "{}"), []
real_atomic, real_save = T.save_atomic, torch.save
def save_atomic(obj, path):
    seen.append(obj["epoch"])
    if obj["epoch"] == fault.get("kill_epoch") and seen.count(obj["epoch"]) == fault.get("kill_nth", 1):
        os._exit(137)  # as SIGKILL: nothing after it runs
    real_atomic(obj, path)
def save(obj, f, *args, **kwargs):  # a full disk: a few bytes written, then ENOSPC
    if isinstance(obj, dict) and obj.get("epoch") == fault.get("enospc_epoch"):
        f.write(bytes(1000)); f.flush(); raise OSError(28, "No space left on device")
    return real_save(obj, f, *args, **kwargs)
T.save_atomic, torch.save = save_atomic, save
T.Trainer(default_config_parser(sys.argv[1], sys.argv[2:])).train(stop_epoch=fault.get("stop_epoch"))
"""


def run(data_root, save_path, fault=None, resume=False, check=True) -> subprocess.CompletedProcess:
    "Train 4 cycles (0 workers) in a fresh process, or resume like `scripts/train.sh -r true`, with `fault` injected"
    save_path = Path(save_path)
    if resume:
        config = save_path/"config"/"config.py"
        opts = dict(save_path=save_path, resume=True, weight=save_path/"model"/"model_last.pth")
    else: config, opts = ROOT/"configs"/"demo"/f"{CONFIG}.py", demo_options(data_root, save_path=save_path, num_worker=0)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", FAULT=json.dumps(fault or {}), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", DRIVER, str(config), *[f"{k}={v}" for k, v in opts.items()]],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check: assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def restart(data_root, save_path):
    "What `scripts/train.sh -r true` does: resume when model_last.pth exists, else start the run anew"
    return run(data_root, save_path, resume=(Path(save_path)/"model"/"model_last.pth").is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    "An uninterrupted run of 4 cycles"
    save = tmp_path_factory.mktemp("ref")/"run"
    run(data_root, save)
    return save


def assert_like_reference(reference, exp):
    for name in ("model_last.pth", "model_best.pth"):
        assert_same_weights(state(reference/"model"/name), state(exp/"model"/name))
    assert load_checkpoint(exp/"model"/"model_best.pth")["epoch"] == load_checkpoint(reference/"model"/"model_best.pth")["epoch"]
    assert records(exp) == records(reference)
    assert not list((exp/"model").glob("*.tmp"))


def test_kill_between_best_and_last_stays_consistent(tmp_path, data_root, reference):
    "A kill between the two writes of the cycle that sets the final best: model_best never lags model_last"
    best_epoch = load_checkpoint(reference/"model"/"model_best.pth")["epoch"]
    assert run(data_root, tmp_path/"run", dict(kill_epoch=best_epoch, kill_nth=2), check=False).returncode == 137
    model = tmp_path/"run"/"model"
    if (model/"model_last.pth").is_file():  # model_best holds the best model_last knows of, never an older one
        last, best = load_checkpoint(model/"model_last.pth"), load_checkpoint(model/"model_best.pth")
        assert best["best_metric_value"] >= last["best_metric_value"], (best["epoch"], last["epoch"])
    restart(data_root, tmp_path/"run")
    assert_like_reference(reference, tmp_path/"run")


def test_kill_before_the_checkpoint_leaves_no_duplicate_records(tmp_path, data_root, reference):
    "Killed after cycle 3's train and val records but before its checkpoint; a new run's log starts anew"
    (tmp_path/"run"/"log").mkdir(parents=True)
    (tmp_path/"run"/"log"/"metrics.jsonl").write_text('{"type": "train", "epoch": 1, "note": "an older run"}\n')
    assert run(data_root, tmp_path/"run", dict(kill_epoch=3), check=False).returncode == 137
    assert max(r["epoch"] for r in records(tmp_path/"run")) == 3 and "note" not in records(tmp_path/"run")[0]
    restart(data_root, tmp_path/"run")
    assert_like_reference(reference, tmp_path/"run")


def test_truncated_model_last_falls_back(tmp_path, data_root, reference):
    "model_last.pth cut in half: resume warns, continues from the newest loadable checkpoint, ends like the reference"
    run(data_root, tmp_path/"run", dict(stop_epoch=3))
    last = tmp_path/"run"/"model"/"model_last.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    fallback = load_checkpoint(tmp_path/"run"/"model"/"model_best.pth")["epoch"]
    assert fallback < 3  # else the fallback is not exercised: pick another stop_epoch
    r = restart(data_root, tmp_path/"run")
    assert "model_last.pth" in r.stdout and "does not load" in r.stdout and f"model_best.pth (epoch {fallback})" in r.stdout
    assert f"Dropped" in r.stdout
    assert_like_reference(reference, tmp_path/"run")


def test_nothing_loadable_is_a_clear_error(tmp_path, data_root):
    model = tmp_path/"run"/"model"; model.mkdir(parents=True)
    for name in ("model_last.pth", "model_best.pth"): (model/name).write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="Cannot resume.*model_last.pth.*model_best.pth.*-r false"):
        trainer_mod.resume_checkpoint(model/"model_last.pth")


def test_full_disk_during_save(tmp_path, data_root, reference):
    "torch.save fails with ENOSPC at cycle 3: a clear error, no .tmp left, model_last of cycle 2 kept; resume finishes"
    r = run(data_root, tmp_path/"run", dict(enospc_epoch=3), check=False)
    assert r.returncode == 1
    msg = r.stderr.strip().splitlines()[-1]
    assert "disk is full" in msg and "MiB free" in msg and "-r true" in msg and "No space left" in msg, msg
    assert "model_best.pth" in msg or "model_last.pth" in msg
    model = tmp_path/"run"/"model"
    assert not list(model.glob("*.tmp"))
    assert load_checkpoint(model/"model_last.pth")["epoch"] == 2
    restart(data_root, tmp_path/"run")
    assert_like_reference(reference, tmp_path/"run")


@pytest.fixture
def tmpfs(tmp_path):
    "A 2 MiB tmpfs (root only; skipped where mounting is not allowed)"
    mnt = tmp_path/f"tmpfs-{uuid.uuid4().hex[:6]}"; mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.stdout.strip()}")
    try: yield mnt
    finally: subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_real_tmpfs(tmpfs):
    "On a real full filesystem: the error names the file and the free space, the .tmp is gone, the old file loads"
    target = tmpfs/"model"/"model_last.pth"
    save_atomic(dict(epoch=1, state_dict={"w": torch.ones(1000)}), target)
    free = shutil.disk_usage(tmpfs).free
    with pytest.raises(OSError) as e: save_atomic(dict(epoch=2, state_dict={"w": torch.ones(1_000_000)}), target)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and str(target) in msg and "disk is full" in msg and "MiB free" in msg
    assert "unexpected pos" in msg or "No space" in msg  # torch's own error, kept as the cause
    assert sorted(p.name for p in target.parent.iterdir()) == ["model_last.pth"]
    assert shutil.disk_usage(tmpfs).free == free  # the partial file no longer fills the disk
    ckpt = load_checkpoint(target)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(1000))
    save_atomic(dict(epoch=2, state_dict={"w": torch.ones(1000)}), target)  # with room, the next save works
    assert load_checkpoint(target)["epoch"] == 2
