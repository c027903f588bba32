"Trainer mechanics on the demo configs (CPU): weight semantics, lr groups per mode, bf16 AMP, checkpoint contents."
import os
from pathlib import Path

import copy
import pytest
import torch

from sonata_nb.config import default_config_parser
from sonata_nb.segmentor import build_model
from sonata_nb.trainer import Trainer, build_optimizer, fused_by_default, load_checkpoint, load_optimizer_state

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def demo_cfg(mode, save_path, data_root=None, **overrides):
    "The demo `mode` config (lin/dec/ft) with 2 tiny train rooms, 1 val room, 1 step per cycle"
    opts = dict(seed=0, num_worker=0, batch_size=2, epoch=1, eval_epoch=1, save_path=save_path, log_interval=1)
    opts["data.train.transform.SphereCrop.point_max"] = 512
    if data_root is not None:
        for split in ("train", "val", "test"):
            opts.update({f"data.{split}.data_root": data_root, f"data.{split}.n_train": 2, f"data.{split}.n_val": 1,
                         f"data.{split}.spacing": 0.15})
    opts.update(overrides)
    return default_config_parser(ROOT/"configs"/"demo"/f"semseg-demo-{mode}.py", [f"{k}={v}" for k, v in opts.items()])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from sonata_nb.demo import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("demo"), n_train=2, n_val=1, seed=0, spacing=0.15)


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory, data_root):
    "One short ft run with bf16 autocast on the CPU"
    save = tmp_path_factory.mktemp("exp")/"ft"
    Trainer(demo_cfg("ft", save, data_root, enable_amp=True, amp_dtype="bfloat16")).train()
    return save


def test_lin_without_weight_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="freeze_backbone"):
        Trainer(demo_cfg("lin", tmp_path/"lin"))


def test_missing_weight_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Trainer(demo_cfg("ft", tmp_path/"ft", weight=tmp_path/"nope.pth"))


@pytest.mark.parametrize("mode", ["lin", "dec", "ft"])
def test_lr_groups_follow_the_frozen_parts(mode, tmp_path):
    "lin trains only the head; dec the head, unpooling and decoder blocks; ft everything; 'block' params in group 1"
    cfg = demo_cfg(mode, tmp_path)
    model = build_model(cfg.model)
    g0, g1 = build_optimizer(cfg.optimizer, model, cfg.param_dicts).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    n0, n1 = [names[id(p)] for p in g0["params"]], [names[id(p)] for p in g1["params"]]
    assert (g0["lr"], g1["lr"]) == (cfg.optimizer.lr, cfg.param_dicts[0].lr)  # recipe values: tests/test_configs.py
    assert all("block" in n for n in n1) and not any("block" in n for n in n0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(n0) | set(n1) == trainable
    if mode == "lin": assert n0 == ["seg_head.weight", "seg_head.bias"] and n1 == []
    if mode == "dec":
        assert n1 and all(n.startswith("backbone.dec.") for n in n1)
        assert not any(n.startswith(("backbone.enc.", "backbone.embedding.")) for n in n0)
    if mode == "ft": assert trainable == {n for n, _ in model.named_parameters()}


def test_checkpoint_contents(ft_run):
    ckpt = load_checkpoint(ft_run/"model"/"model_last.pth")
    assert {"epoch", "state_dict", "optimizer", "scheduler", "scaler", "best_metric_value", "config", "rng_state"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["scaler"] is None  # bf16 needs no GradScaler
    assert all(k.startswith(("backbone.", "seg_head.")) for k in ckpt["state_dict"])
    assert ckpt["config"]["amp_dtype"] == "bfloat16" and type(ckpt["config"]) is dict
    assert ckpt["scheduler"]["_step_count"] == 2  # 1 optimizer step (+1 at construction)
    assert not list((ft_run/"model").glob("*.tmp"))


def test_lin_probe_loads_the_trained_encoder(ft_run, tmp_path, data_root):
    "A trainer checkpoint is a valid `weight`: the lin probe's (frozen) encoder equals the ft run's encoder"
    t = Trainer(demo_cfg("lin", tmp_path/"lin", data_root, weight=ft_run/"model"/"model_last.pth"))
    ft = load_checkpoint(ft_run/"model"/"model_last.pth")["state_dict"]
    lin = t.model.state_dict()
    enc = [k for k in lin if k.startswith("backbone.")]
    assert enc and all(torch.equal(lin[k].cpu(), ft[k]) for k in enc)
    assert not any(p.requires_grad for p in t.model.backbone.parameters())


class _ThreadCounts(torch.utils.data.Dataset):
    "Each item: the native thread pools (BLAS, OpenMP) of the worker that loads it, with their thread counts"
    def __len__(self): return 2
    def __getitem__(self, i):
        from threadpoolctl import threadpool_info
        return {p["internal_api"]: p["num_threads"] for p in threadpool_info()}


def test_train_batches_carry_a_host_plan(tmp_path, data_root):
    "The train loader's batches carry a HostPlan for the model's strides; moved to the device it fits the model's input"
    from sonata_nb.model import HostPlan, pooling_strides
    from sonata_nb.runtime import to_device
    from sonata_nb.structure import Point
    t = Trainer(demo_cfg("ft", tmp_path/"ft", data_root))
    try:
        batch = next(iter(t.train_loader))
        plan = batch["_host_plan"]
        assert isinstance(plan, HostPlan) and plan.strides == pooling_strides(t.model) == [2, 2, 2, 2]
        moved = to_device(batch, t.device)
        assert moved["_host_plan"].fits(Point(moved), plan.strides)
        assert moved["_host_plan"].shape.counts == tuple(torch.diff(batch["offset"], prepend=torch.zeros(1, dtype=torch.long)).tolist())
    finally: t.lock.release()


def test_loader_workers_use_one_native_thread():
    "worker_init_fn limits numpy's BLAS (and OpenMP) to one thread per worker: workers x cores threads would thrash"
    from functools import partial
    from threadpoolctl import threadpool_limits
    from sonata_nb.trainer import worker_init_fn
    with threadpool_limits(2):  # the parent's pools have 2 threads; the workers inherit that unless limited
        loader = torch.utils.data.DataLoader(_ThreadCounts(), batch_size=None, num_workers=2,
                                             worker_init_fn=partial(worker_init_fn, num_workers=2, rank=0, seed=0))
        counts = list(loader)
    assert all(c and set(c.values()) == {1} for c in counts), counts


def test_adam_takes_the_fused_kernels_by_default_on_cuda_only():
    "Adam/AdamW naming neither `fused` nor `foreach` is fused where all its parameters are CUDA floats; anything else is left to torch"
    from types import SimpleNamespace
    on_cuda = [dict(params=[SimpleNamespace(is_cuda=True, is_floating_point=lambda: True)] * 2)]
    assert fused_by_default(dict(type="AdamW", lr=1e-3), on_cuda) and fused_by_default(dict(type="Adam", lr=1e-3), on_cuda)
    for cfg in (dict(type="AdamW", lr=1e-3, fused=False), dict(type="AdamW", lr=1e-3, foreach=True), dict(type="SGD", lr=1e-3),
                dict(type="AdamW", lr=1e-3, differentiable=True)):
        assert not fused_by_default(cfg, on_cuda), cfg
    mixed = [dict(params=on_cuda[0]["params"] + [torch.nn.Parameter(torch.zeros(2))])]
    assert not fused_by_default(dict(type="AdamW", lr=1e-3), mixed)
    opt = build_optimizer(dict(type="AdamW", lr=1e-3), torch.nn.Linear(2, 2))  # CPU: torch's default implementation
    assert not opt.defaults.get("fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_on_cuda_is_fused_and_the_trainer_decides_on_the_device():
    opt = build_optimizer(dict(type="AdamW", lr=1e-3, weight_decay=0.05), torch.nn.Linear(2, 2).cuda())
    assert opt.defaults["fused"] is True
    assert not build_optimizer(dict(type="AdamW", lr=1e-3, fused=False), torch.nn.Linear(2, 2).cuda()).defaults.get("fused")


@pytest.mark.parametrize("saved_fused", [False, True])
def test_resumed_optimizer_keeps_this_runs_implementation(saved_fused):
    "A checkpoint of the other implementation (foreach <-> fused) loads into this run's: its flags, step counters placed for it, the same next step"
    torch.manual_seed(0)
    model, x = torch.nn.Linear(4, 3), torch.randn(8, 4)
    def step(opt, on_device=False):
        opt.zero_grad(); model(x).square().sum().backward()
        if on_device: opt.grad_scale, opt.found_inf = None, torch.zeros(())  # as `Trainer.optimizer_step_on_device` steps
        opt.step()
    saved = build_optimizer(dict(type="AdamW", lr=1e-2, fused=saved_fused), model)
    step(saved)
    state, weights = copy.deepcopy(saved.state_dict()), copy.deepcopy(model.state_dict())
    results = []
    for fused in (saved_fused, not saved_fused):
        model.load_state_dict(weights)
        opt = build_optimizer(dict(type="AdamW", lr=1e-2, fused=fused), model)
        load_optimizer_state(opt, copy.deepcopy(state))
        assert all(bool(g["fused"]) == fused for g in opt.param_groups)
        assert all(s["step"].device == torch.device("cpu") and s["step"].item() == 1 for s in opt.state.values())
        step(opt, on_device=fused)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results): assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
