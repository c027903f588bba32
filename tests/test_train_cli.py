"Training from the command line (`sh scripts/train.sh`) on the demo rooms, on the CPU: outputs, learning, resume, DDP."
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "semseg-demo-ft"


def demo_options(data_root, **overrides) -> list[str]:
    "Options shrinking the demo ft recipe to seconds on a CPU: 2 small train rooms, 1 val room, 512-point crops"
    opts = dict(seed=0, num_worker=0, batch_size=2, epoch=8, eval_epoch=2, enable_wandb=False, log_interval=1)
    opts["data.train.transform.SphereCrop.point_max"] = 512  # SphereCrop (recipe 102400, demo 4096)
    for split in ("train", "val", "test"):
        opts.update({f"data.{split}.data_root": data_root, f"data.{split}.n_train": 2, f"data.{split}.n_val": 1,
                     f"data.{split}.spacing": 0.15})
    opts.update(overrides)
    return [f"{k}={v}" for k, v in opts.items()]


# The runs here compare weights bit for bit and use `-g 2` with gloo: they run on the CPU (CUDA_VISIBLE_DEVICES=) on any
# machine, since CUDA's atomic adds (scatter, sparse convolution) make two GPU runs differ in the last bits
CPU_ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def train_sh(exp_root, name, options, *flags, check=True) -> subprocess.CompletedProcess:
    "Run `sh scripts/train.sh -d demo -c semseg-demo-ft -n name flags -- options` with experiments under `exp_root`"
    env = dict(CPU_ENV, EXP_ROOT=str(exp_root))
    cmd = ["sh", "scripts/train.sh", "-p", sys.executable, "-d", "demo", "-c", CONFIG, "-n", name, *flags, "--", *options]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check: assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def records(exp, kind):
    return [r for r in map(json.loads, (exp/"log"/"metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from sonata_nb.demo import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("demo"), n_train=2, n_val=1, seed=0, spacing=0.15)


def majority_miou(data_root, num_classes=20) -> float:
    "mIoU of predicting the most frequent class everywhere on the val rooms (ScanNet-20 labels, -1 ignored)"
    seg = np.concatenate([np.load(p) for p in sorted(Path(data_root, "val").glob("*/segment20.npy"))])
    seg = seg[seg >= 0]
    return np.bincount(seg).max() / len(seg) / num_classes


def test_demo_ft_trains(tmp_path, data_root):
    "The demo ft recipe end to end: outputs, a resolved config, metrics, and a validation mIoU far above the majority class"
    opts = demo_options(data_root, epoch=40, eval_epoch=2, **{"optimizer.lr": 0.01, "scheduler.max_lr": "[0.01,0.002]"})
    r = train_sh(tmp_path, "ft", opts, "-g", "1")
    exp = tmp_path/"demo"/"ft"
    for f in ("model/model_last.pth", "model/model_best.pth", "log/train.log", "log/metrics.jsonl", "config/config.py",
              "report.html"):  # sonata-train writes the report after training
        assert (exp/f).is_file(), f
    assert list((exp/"log").glob("events.out.tfevents.*")), "no TensorBoard events"
    from sonata_nb.config import Config
    cfg = Config.fromfile(exp/"config"/"config.py")
    assert (cfg.save_path, cfg.epoch, cfg.data.train.loop, cfg.seed) == (str(tmp_path/"demo"/"ft"), 40, 20, 0)
    val = records(exp, "val")
    assert [v["epoch"] for v in val] == [1, 2]
    assert len(records(exp, "train")) == 40  # 2 rooms x 20 passes / 2 per batch, per cycle, logged every step
    best = max(v["mIoU"] for v in val)
    ckpt = torch.load(exp/"model"/"model_best.pth", map_location="cpu", weights_only=False)
    assert ckpt["best_metric_value"] == best and ckpt["epoch"] == 1 + [v["mIoU"] for v in val].index(best)
    # predicting the majority class (wall) everywhere scores p_wall / 20 ~ 0.02; floor + wall alone give ~ 0.07
    baseline = majority_miou(data_root)
    assert best > 2.5 * baseline, (best, baseline)
    assert "Start Precise Evaluation" in (exp/"log"/"train.log").read_text()


def test_resume_equals_uninterrupted(tmp_path, data_root):
    "Stop after 1 of 2 cycles (Trainer.train(stop_epoch=1)), resume with train.sh -r true: the same final weights"
    opts = demo_options(data_root, num_worker=2)  # workers and Mix3D (mix_prob 0.8): both once broke exactness
    train_sh(tmp_path, "full", opts, "-g", "1")
    script = ("import sys; from sonata_nb.config import default_config_parser; from sonata_nb.trainer import Trainer; "
              "Trainer(default_config_parser(sys.argv[1], sys.argv[2:])).train(stop_epoch=1)")
    opts_cut = opts + [f"save_path={tmp_path/'demo'/'cut'}"]
    env = CPU_ENV  # the same threads as train_sh: same float sums
    subprocess.run([sys.executable, "-c", script, str(ROOT/"configs"/"demo"/f"{CONFIG}.py"), *opts_cut],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    assert torch.load(tmp_path/"demo"/"cut"/"model"/"model_last.pth", weights_only=False)["epoch"] == 1
    train_sh(tmp_path, "cut", [], "-g", "1", "-r", "true")
    a, b = weights(tmp_path/"demo"/"full"/"model"/"model_last.pth"), weights(tmp_path/"demo"/"cut"/"model"/"model_last.pth")
    assert a.keys() == b.keys()
    # bit for bit (a data-loader base seed drawn from the global generator, or Mix3D drawn from a worker's generator,
    # used to move the weights by 1e-3 after a resume)
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    assert "Resuming from" in (tmp_path/"demo"/"cut"/"log"/"train.log").read_text()


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused-on-device"])
def test_two_processes_match_one(tmp_path, data_root, fused):
    "torchrun -g 2 (gloo, 1 scene per process) = 1 process with gradient accumulation over the same 2 scenes (fused: steps decided on the device)"
    common = {"model.backbone.shuffle_orders": False, "model.backbone.drop_path": 0.0, "mix_prob": 0,
              **({"optimizer.fused": True} if fused else {})}
    train_sh(tmp_path, "g2", demo_options(data_root, batch_size=2, **common), "-g", "2")
    accum = tmp_path/"accum.py"  # gradient_accumulation_steps is not in every _base_: set it in a child config
    accum.write_text(f"_base_ = {str(ROOT/'configs'/'demo'/(CONFIG + '.py'))!r}\ngradient_accumulation_steps = 2\n")
    env = CPU_ENV
    opts = demo_options(data_root, batch_size=1, save_path=tmp_path/"demo"/"g1", **common)
    subprocess.run([sys.executable, "tools/train.py", "--config-file", str(accum), "--options", *opts],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    a, b = weights(tmp_path/"demo"/"g2"/"model"/"model_last.pth"), weights(tmp_path/"demo"/"g1"/"model"/"model_last.pth")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    va, vb = records(tmp_path/"demo"/"g2", "val"), records(tmp_path/"demo"/"g1", "val")
    assert [round(v["mIoU"], 4) for v in va] == [round(v["mIoU"], 4) for v in vb]
    assert "2 process(es)" in (tmp_path/"demo"/"g2"/"log"/"train.log").read_text()


def test_missing_weight_is_an_error(tmp_path, data_root):
    r = train_sh(tmp_path, "w", demo_options(data_root), "-g", "1", "-w", str(tmp_path/"no_such.pth"), check=False)
    assert r.returncode != 0 and "no_such.pth" in r.stdout + r.stderr
    assert not (tmp_path/"demo"/"w"/"model"/"model_last.pth").exists()
