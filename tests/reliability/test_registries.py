"""Issue 8 extension points: registries filled by `import sonata_nb`, `custom_imports`, probe heads, the backbone contract,
config overrides naming a transform by type, and demo data unchanged by the notebook split."""
import ast, hashlib, os, sys, textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
DEMO_FT = ROOT / "configs" / "demo" / "semseg-demo-ft.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_python(forkserver, code, cwd=None):
    "Run `code` in a fresh interpreter (nothing of sonata_nb imported yet: tests/forkserver.py); its stdout"
    out = forkserver.run(["-c", textwrap.dedent(code)], env=ENV, cwd=cwd or os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# --- registries filled by importing the package -------------------------------------------------------------------

def test_importing_any_module_registers_every_builtin_component(forkserver):
    "Only sonata_nb.demo (once half of the datasets <-> demo cycle) is imported, first: the package import fills every registry"
    out = run_python(forkserver, """
        import sys, sonata_nb.demo
        m = sys.modules
        print(sorted(m["sonata_nb.datasets"].DATASETS._items), sorted(m["sonata_nb.model"].MODELS._items),
              sorted(m["sonata_nb.segmentor"].HEADS._items), len(m["sonata_nb.transforms"].TRANSFORMS),
              sorted(m["sonata_nb.losses"].LOSSES._items))
    """)
    assert out.strip() == ("['CustomDataset', 'DefaultDataset', 'DemoDataset', 'S3DISDataset', 'ScanNet200Dataset', "
                           "'ScanNetDataset'] ['DefaultSegmentorV2', 'PT-v3m2'] ['LinearHead', 'MLPHead'] 18 "
                           "['CrossEntropyLoss', 'LovaszLoss']")


def test_no_datasets_demo_cycle_and_no_special_case():
    demo = ast.parse((ROOT / "sonata_nb" / "demo.py").read_text())
    imported = {n.module for n in ast.walk(demo) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.endswith("datasets") for m in imported), imported
    datasets = (ROOT / "sonata_nb" / "datasets.py").read_text()
    build = next(n for n in ast.walk(ast.parse(datasets)) if isinstance(n, ast.FunctionDef) and n.name == "build_dataset")
    assert not [n for n in ast.walk(build) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert "Demo" not in ast.get_source_segment(datasets, build)


def test_no_registration_needs_force():
    for f in (ROOT / "sonata_nb").glob("*.py"):
        assert "force=True" not in f.read_text(), f


def test_registry_accepts_a_redefinition_but_not_a_clash():
    from sonata_nb.registry import Registry
    reg = Registry("things")
    ns = {}
    exec("class Thing: pass", {"__name__": "__main__"}, ns); reg.register_module()(ns["Thing"])
    exec("class Thing: pass", {"__name__": "__main__"}, ns); reg.register_module()(ns["Thing"])  # a cell run again
    assert reg.get("Thing") is ns["Thing"]
    exec("class Thing: pass", {"__name__": "my_pkg.things"}, ns)
    with pytest.raises(KeyError, match=r"'Thing' is already registered in the things registry \(by __main__.Thing\); "
                                       r"register my_pkg.things.Thing under another name"):
        reg.register_module()(ns["Thing"])


# --- custom_imports ----------------------------------------------------------------------------------------------------

def write_config(tmp_path, body):
    cfg = tmp_path / "exp.py"
    cfg.write_text(f"_base_ = {str(DEMO_FT)!r}\n{body}")
    return cfg


def test_custom_imports_registers_a_users_dataset(tmp_path, monkeypatch):
    from sonata_nb.config import default_config_parser
    from sonata_nb.datasets import DATASETS, build_dataset
    (tmp_path / "my_scenes_ds.py").write_text(textwrap.dedent("""
        from sonata_nb.datasets import DATASETS, DemoDataset
        @DATASETS.register_module()
        class MyScenes(DemoDataset):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_scenes_ds", raising=False)
    assert "MyScenes" not in DATASETS
    cfg = default_config_parser(write_config(tmp_path, "custom_imports = ['my_scenes_ds']\n"),
                                [f"data.val.type=MyScenes", f"data.val.data_root={tmp_path / 'demo'}", "data.val.n_train=1",
                                 "data.val.n_val=1", "data.val.spacing=0.2"])
    try:
        ds = build_dataset(cfg.data.val)
        assert type(ds).__name__ == "MyScenes" and len(ds) == 1
    finally: DATASETS._items.pop("MyScenes", None)


def test_custom_imports_failure_names_the_module_and_the_file(tmp_path):
    from sonata_nb.config import default_config_parser
    cfg = write_config(tmp_path, "custom_imports = ['no_such_pkg.my_dataset']\n")
    with pytest.raises(ImportError, match=rf"custom_imports in {tmp_path / 'exp.py'}: cannot import 'no_such_pkg.my_dataset' "
                                          r"\(ModuleNotFoundError: No module named 'no_such_pkg'\)"):
        default_config_parser(cfg)
    with pytest.raises(TypeError, match="must be a list of module names"):
        default_config_parser(write_config(tmp_path, "custom_imports = 'no_such_pkg'\n"))


# --- probe heads and the backbone contract ----------------------------------------------------------------------------

def segmentor(head=None, **kw):
    from sonata_nb.segmentor import build_model
    from sonata_nb.testing import TINY_BACKBONE
    cfg = dict(type="DefaultSegmentorV2", num_classes=3, backbone_out_channels=48, backbone={**TINY_BACKBONE, "enc_mode": True},
               criteria=[dict(type="CrossEntropyLoss", ignore_index=-1)], freeze_backbone=True, **kw)
    if head is not None: cfg["head"] = head
    return build_model(cfg)


def test_linear_head_is_the_default_and_keeps_the_released_keys():
    from sonata_nb.segmentor import LinearHead
    default, named = segmentor(), segmentor(head=dict(type="LinearHead"))
    for m in (default, named):
        assert type(m.seg_head) is LinearHead and isinstance(m.seg_head, nn.Linear)
        assert [k for k in m.state_dict() if k.startswith("seg_head")] == ["seg_head.weight", "seg_head.bias"]
    named.load_state_dict(default.state_dict())  # a probe checkpoint of today's layout loads unchanged


def test_mlp_head_trains_a_step():
    from sonata_nb.testing import tiny_cloud
    torch.manual_seed(0)
    m = segmentor(head=dict(type="MLPHead", hidden_channels=32))
    assert [k for k in m.state_dict() if k.startswith("seg_head")] == [
        "seg_head.0.weight", "seg_head.0.bias", "seg_head.1.weight", "seg_head.1.bias", "seg_head.4.weight", "seg_head.4.bias"]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("seg_head.") for n in trainable)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    data = tiny_cloud()
    before = m.seg_head[4].weight.detach().clone()
    with torch.no_grad(): eval_loss = m.eval()(data)["loss"]
    loss = m.train()(data)["loss"]
    loss.backward(); opt.step(); opt.zero_grad()
    assert torch.isfinite(loss) and not torch.equal(before, m.seg_head[4].weight)
    with torch.no_grad(): assert m.eval()(data)["loss"] < eval_loss  # the step lowered the loss on the same batch
    assert m.eval()(data)["seg_logits"].shape == (len(data["coord"]), 3)


def test_unknown_head_lists_the_registered_ones():
    with pytest.raises(KeyError, match="Unknown heads type 'ConvHead'. Known: LinearHead, MLPHead"):
        segmentor(head=dict(type="ConvHead"))


def test_backbone_contract_errors_are_clear():
    from sonata_nb.model import MODELS
    from sonata_nb.segmentor import backbone_of, check_backbone
    from sonata_nb.testing import TINY_BACKBONE, tiny_cloud
    data = tiny_cloud()
    backbone = MODELS.build({**TINY_BACKBONE, "enc_mode": True})
    assert check_backbone(backbone, 48, data).shape == (len(data["coord"]), 48)
    with pytest.raises(ValueError, match="The backbone gives 48 channels but backbone_out_channels is 64; fix model.backbone_out_channels"):
        check_backbone(backbone, 64, data)

    class Pooled(nn.Module):
        def forward(self, point): return point.feat.mean(0, keepdim=True)
    with pytest.raises(TypeError, match=r"The backbone Pooled returned a tensor of shape \(1, 9\); a backbone must return a "
                                        r"Point or an \(N, C\) tensor"):
        check_backbone(Pooled(), 9, data)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        check_backbone(lambda p: p, 9, data)
    m = segmentor()
    assert backbone_of(m) is m.backbone and backbone_of(backbone) is backbone
    with pytest.raises(TypeError, match=r"Linear has no `.backbone` module, so the pretrained weight \(cfg.weight\) has nowhere to go"):
        backbone_of(nn.Linear(2, 2))


# --- config overrides by transform type -------------------------------------------------------------------------------

def test_override_names_a_transform_by_type():
    from sonata_nb.config import default_config_parser
    cfg = default_config_parser(DEMO_FT, ["data.train.transform.SphereCrop.point_max=512", "data.train.transform.GridSample.grid_size=0.05"])
    types = [t["type"] for t in cfg.data.train.transform]
    assert cfg.data.train.transform[types.index("SphereCrop")].point_max == 512
    assert cfg.data.train.transform[types.index("GridSample")].grid_size == 0.05
    pos = types.index("SphereCrop")
    assert default_config_parser(DEMO_FT, [f"data.train.transform.{pos}.point_max=77"]).data.train.transform[pos].point_max == 77


def test_override_by_absent_or_repeated_type_lists_the_types():
    from sonata_nb.config import default_config_parser
    with pytest.raises(KeyError, match=r"data.train.transform has no item of type 'SphereCorp'; its items are \[0: CenterShift, "
                                       r"1: RandomDropout, 2: RandomRotate.*13: SphereCrop"):
        default_config_parser(DEMO_FT, ["data.train.transform.SphereCorp.point_max=512"])
    with pytest.raises(KeyError, match=r"has 3 items of type 'RandomRotate' \(positions \[2, 3, 4\]\)"):
        default_config_parser(DEMO_FT, ["data.train.transform.RandomRotate.p=1"])


# --- demo data unchanged ----------------------------------------------------------------------------------------------

DEMO_SHA256 = "076479110789cb6bf074692af3fcda1ded9246a6dc7c48870db673c40e5f6d47"  # before the notebook was split


def test_demo_data_is_byte_identical(tmp_path):
    from sonata_nb.demo import generate_room, make_demo_data
    h = hashlib.sha256()
    root = make_demo_data(tmp_path / "demo", n_train=3, n_val=2, seed=0)
    for f in sorted(root.rglob("*")):
        if f.is_file(): h.update(str(f.relative_to(root)).encode()); h.update(f.read_bytes())
    for room_type in ("bedroom", "office", "living", "kitchen"):
        room = generate_room(7, room_type=room_type)
        for key in ("coord", "color", "normal", "segment20", "segment200", "instance"): h.update(room[key].tobytes())
    assert h.hexdigest() == DEMO_SHA256
