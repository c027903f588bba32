"No code runs from a checkpoint: a `__reduce__` payload is refused by every entry point that reads a checkpoint."
import os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_train_cli import ROOT, demo_options, train_sh  # the tiny demo run of the command-line tests

from sonata_nb.checkpoint import (CorruptCheckpointError, UntrustedCheckpointError, checkpoint_cli, convert_checkpoint,
                                  read_checkpoint)
from sonata_nb.config import default_config_parser
from sonata_nb.model import PointTransformerV3, load_encoder, load_weights, save_checkpoint
from sonata_nb.tester import load_record, load_test_weight
from sonata_nb.trainer import load_checkpoint, resume_checkpoint


class Payload:
    "Unpickling this runs `touch <marker>`"
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def write_evil(folder:Path, legacy:bool=False) -> tuple[Path, Path]:
    "A segmentor-style checkpoint with real weights and a payload (zip or legacy torch format), and the payload's marker"
    marker = folder / "payload-ran"
    model = PointTransformerV3(in_channels=6, enc_depths=(1, 1), enc_channels=(8, 16), enc_num_head=(1, 2),
                               enc_patch_size=(16, 16), stride=(2,), enc_mode=True)
    ckpt = {"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}, "epoch": 1, "x": Payload(marker)}
    torch.save(ckpt, folder / "evil.pth", _use_new_zipfile_serialization=not legacy)
    return folder / "evil.pth", marker

@pytest.fixture(params=["zip", "legacy"])
def evil_any(request, tmp_path): return write_evil(tmp_path, legacy=request.param == "legacy")

@pytest.fixture
def evil(tmp_path): return write_evil(tmp_path)


def test_the_payload_is_real(evil_any):
    "The fixture's file does run code when fully unpickled (so the tests below would notice)"
    path, marker = evil_any
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_api_entry_points_refuse_the_payload(evil_any):
    path, marker = evil_any
    model = PointTransformerV3(in_channels=6, enc_depths=(1, 1), enc_channels=(8, 16), enc_num_head=(1, 2),
                               enc_patch_size=(16, 16), stride=(2,), enc_mode=True)
    for load in (lambda: read_checkpoint(path), lambda: load_encoder(path), lambda: load_weights(model, path),
                 lambda: load_test_weight(model, path), lambda: load_checkpoint(path), lambda: load_record(path)):
        with pytest.raises(UntrustedCheckpointError, match=r"evil\.pth refers to posix\.system.*nothing in it ran"): load()
    assert not marker.exists()


def test_the_hub_cache_file_is_refused(evil_any, tmp_path, monkeypatch):
    "A hostile sonata.pth in the Hugging Face cache layout, reached through the hub name"
    path, marker = evil_any
    snap = tmp_path / "hf" / "hub" / "models--facebook--sonata" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "sonata.pth").write_bytes(path.read_bytes())
    (snap.parents[1] / "refs").mkdir(); (snap.parents[1] / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf")); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(UntrustedCheckpointError, match="sonata.pth refers to posix.system"): load_encoder("facebook/sonata")
    assert not marker.exists()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from sonata_nb.demo import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("demo"), n_train=2, n_val=1, seed=0, spacing=0.15)


def _refused(r, marker):
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "refers to posix.system" in out and "trust_checkpoint=True" in out, out[-2000:]
    assert not marker.exists()


def test_train_sh_weight_refuses_the_payload(evil, tmp_path, data_root):
    path, marker = evil
    _refused(train_sh(tmp_path, "w", demo_options(data_root), "-g", "1", "-w", str(path), check=False), marker)


def test_resume_refuses_the_payload(evil, tmp_path, data_root):
    "`-r true` reads config/config.py and model/model_last.pth of the experiment folder"
    path, marker = evil
    exp = tmp_path / "demo" / "r"
    cfg = default_config_parser(ROOT / "configs" / "demo" / "semseg-demo-ft.py", demo_options(data_root) + [f"save_path={exp}"])
    cfg.dump(exp / "config" / "config.py")
    (exp / "model").mkdir(parents=True)
    (exp / "model" / "model_last.pth").write_bytes(path.read_bytes())
    r = train_sh(tmp_path, "r", demo_options(data_root), "-g", "1", "-r", "true", check=False)
    assert r.returncode != 0 and "refers to posix.system" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    assert not marker.exists()


def test_resume_never_skips_a_hostile_model_last(evil, tmp_path):
    "Resume falls back from a corrupt model_last to an older checkpoint, but a file that would run code stops it"
    path, marker = evil
    model_dir = tmp_path / "model"; model_dir.mkdir()
    good = dict(epoch=1, state_dict={}, optimizer={}, scheduler={})
    torch.save(good, model_dir / "model_best.pth")
    (model_dir / "model_last.pth").write_bytes(b"not a checkpoint")
    assert resume_checkpoint(model_dir / "model_last.pth")[0] == model_dir / "model_best.pth"
    (model_dir / "model_last.pth").write_bytes(path.read_bytes())
    with pytest.raises(UntrustedCheckpointError, match="model_last.pth refers to posix.system"):
        resume_checkpoint(model_dir / "model_last.pth")
    assert not marker.exists()


def test_tools_test_refuses_the_payload(evil, tmp_path, data_root):
    path, marker = evil
    opts = demo_options(data_root) + [f"weight={path}", f"save_path={tmp_path / 'test'}"]
    r = subprocess.run([sys.executable, "tools/test.py", "--config-file", "configs/demo/semseg-demo-ft.py", "--options", *opts],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    _refused(r, marker)


# --- the opt-in and the converter ------------------------------------------------------------------------------

def test_a_trusted_file_loads_only_with_the_opt_in_and_converts_once(tmp_path, capsys):
    import argparse  # a harmless class standing for what an older checkpoint may hold
    model = PointTransformerV3(in_channels=6, enc_depths=(1, 1), enc_channels=(8, 16), enc_num_head=(1, 2),
                               enc_patch_size=(16, 16), stride=(2,), enc_mode=True)
    save_checkpoint(model, tmp_path / "enc.pth")
    ckpt = torch.load(tmp_path / "enc.pth", weights_only=True)
    ckpt.update(args=argparse.Namespace(lr=0.1), best_metric_value=np.float64(0.7))
    torch.save(ckpt, tmp_path / "old.pth")
    with pytest.raises(UntrustedCheckpointError, match="argparse.Namespace"): load_encoder(tmp_path / "old.pth")
    assert load_encoder(tmp_path / "old.pth", trust=True).load_report.missing == []
    with pytest.raises(SystemExit) as e:  # the command's function, in this process (a command costs ~9 s of imports)
        checkpoint_cli(["convert", str(tmp_path / "old.pth"), str(tmp_path / "safe.pth")])
    assert e.value.code == 2 and "--trust" in capsys.readouterr().err and not (tmp_path / "safe.pth").exists()
    r = subprocess.run([sys.executable, "-m", "sonata_nb.checkpoint", "convert", str(tmp_path / "old.pth"), str(tmp_path / "safe.pth"),
                        "--trust"], capture_output=True, text=True)
    assert r.returncode == 0 and "dropped checkpoint['args'] (argparse.Namespace)" in r.stderr, r.stderr
    safe = read_checkpoint(tmp_path / "safe.pth")
    assert safe["best_metric_value"] == 0.7 and "args" not in safe
    loaded = load_encoder(tmp_path / "safe.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


class ExecPayload:
    "Unpickling this runs `exec`, which writes <marker> (a module torch does not block outright, unlike os/sys)"
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("legacy", [False, True])
def test_trust_never_runs_code(tmp_path, legacy):
    "Even opted in, a payload stays data: `exec` and `subprocess.call` become inert placeholders; os/sys are refused"
    import subprocess as sp
    from sonata_nb.checkpoint import InertObject
    marker = tmp_path / "payload-ran"
    class CallPayload:
        def __reduce__(self): return (sp.call, (["touch", str(marker)],))
    model = PointTransformerV3(in_channels=6, enc_depths=(1, 1), enc_channels=(8, 16), enc_num_head=(1, 2),
                               enc_patch_size=(16, 16), stride=(2,), enc_mode=True)
    save_checkpoint(model, tmp_path / "enc.pth")  # the released format: config + state_dict
    ckpt = dict(torch.load(tmp_path / "enc.pth", weights_only=True), a=ExecPayload(marker), b=[CallPayload()])
    torch.save(ckpt, tmp_path / "p.pth", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UntrustedCheckpointError, match="builtins.exec"): read_checkpoint(tmp_path / "p.pth")
    loaded = read_checkpoint(tmp_path / "p.pth", trust=True)
    assert isinstance(loaded["a"], InertObject) and isinstance(loaded["b"][0], InertObject)
    assert repr(loaded["b"][0]).endswith(".call>") and loaded["b"][0].args == (["touch", str(marker)],)
    assert load_encoder(tmp_path / "p.pth", trust=True).load_report.missing == []
    dropped = convert_checkpoint(tmp_path / "p.pth", tmp_path / "safe.pth", trust=True)  # the command: test above
    assert "checkpoint['a'] (builtins.exec)" in dropped, dropped
    assert not marker.exists()
    write_evil(tmp_path, legacy=legacy)  # os.system: refused even with the opt-in
    with pytest.raises(UntrustedCheckpointError, match="refused even with trust=True"):
        read_checkpoint(tmp_path / "evil.pth", trust=True)
    assert not marker.exists() and not (tmp_path / "payload-ran").exists()


def test_train_sh_opt_in_loads_a_trusted_file(tmp_path, data_root):
    "`-- trust_checkpoint=True` lets `-w` read a file that names globals outside the allow-list"
    import argparse
    from sonata_nb.segmentor import build_model
    cfg = default_config_parser(ROOT / "configs" / "demo" / "semseg-demo-ft.py", demo_options(data_root))
    backbone = build_model(cfg.model).backbone
    torch.save({"state_dict": backbone.state_dict(), "args": argparse.Namespace(x=1)}, tmp_path / "old.pth")
    opts = demo_options(data_root, epoch=2, eval_epoch=2)
    r = train_sh(tmp_path, "no", opts, "-g", "1", "-w", str(tmp_path / "old.pth"), check=False)
    assert r.returncode != 0 and "argparse.Namespace" in r.stdout + r.stderr
    train_sh(tmp_path, "yes", opts + ["trust_checkpoint=True"], "-g", "1", "-w", str(tmp_path / "old.pth"))
    assert "Loaded pretrained backbone weight" in (tmp_path / "demo" / "yes" / "log" / "train.log").read_text()


# --- messages for broken files --------------------------------------------------------------------------------

def test_broken_files_say_what_is_wrong(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    (tmp_path / "empty.pth").touch()
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    data = good.read_bytes()
    for cut in (10, 100, len(data) // 2, len(data) - 10):
        (tmp_path / f"cut{cut}.pth").write_bytes(data[:cut])
    with pytest.raises(CorruptCheckpointError, match=r"empty\.pth is empty \(0 bytes\)"): load_encoder(tmp_path / "empty.pth")
    for f in ["random.pth"] + [f"cut{c}.pth" for c in (10, 100, len(data) // 2, len(data) - 10)]:
        with pytest.raises(CorruptCheckpointError, match=rf"{f} \([\d,]+ bytes\) is not a readable PyTorch checkpoint.*truncated"):
            load_encoder(tmp_path / f)
