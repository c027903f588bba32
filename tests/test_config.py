"Config system: `_base_` inheritance, overrides, dump round-trip, default_config_parser checks."
import copy, pickle
from pathlib import Path
import pytest
from sonata_nb.config import Config, ConfigDict, default_config_parser, format_config, load_file, merge_into, parse_options, parse_value


def write(root, name, text):
    p = Path(root) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def tree(tmp_path):
    write(tmp_path, "_base_/a.py", "x = 1\nopt = dict(type='AdamW', lr=0.1, betas=(0.9, 0.999))\nhooks = [dict(type='A'), dict(type='B')]\n")
    write(tmp_path, "_base_/b.py", "y = 'why'\nmodel = dict(type='M', backbone=dict(type='B', depth=(2, 2), drop=0.3))\n")
    write(tmp_path, "mid/mid.py", "_base_ = ['../_base_/a.py', '../_base_/b.py']\nmodel = dict(backbone=dict(depth=(3, 3)))\n")
    write(tmp_path, "leaf/leaf.py",
          "from math import pi\nimport os\n_base_ = '../mid/mid.py'\nx = 2\nopt = dict(lr=0.002)\nhooks = [dict(type='C')]\n"
          "model = dict(backbone=dict(_delete_=True, type='Other', k=pi))\n"
          "epoch = 10\neval_epoch = 5\nseed = None\ndata = dict(num_classes=2, names=['a', 'b'], train=dict(type='D', split='train'))\n"
          "def helper(): return 1\nclass K: pass\n")
    return tmp_path


def test_inheritance_chain(tree):
    cfg = Config.fromfile(tree / "leaf/leaf.py")
    assert cfg.x == 2 and cfg.y == "why"
    assert cfg.opt == dict(type="AdamW", lr=0.002, betas=(0.9, 0.999))  # merged, tuple kept
    assert cfg.hooks == [dict(type="C")]  # lists replaced
    assert cfg.model.backbone == dict(type="Other", k=pytest.approx(3.141592653589793))  # _delete_
    assert cfg.model.type == "M"
    assert "pi" in cfg  # imported values are config values
    for name in ("os", "helper", "K", "_base_"):
        assert name not in cfg  # imported modules, functions and classes are dropped


def test_imported_values_kept_code_dropped(tmp_path):
    p = write(tmp_path, "c.py", "from math import pi, sqrt\nimport json\nv = sqrt(4)\n")
    cfg = Config.fromfile(p)
    assert cfg == dict(pi=pytest.approx(3.141592653589793), v=2.0)


def test_attribute_access_and_nesting(tree):
    cfg = Config.fromfile(tree / "leaf/leaf.py")
    assert cfg.data.train.split == "train"
    assert isinstance(cfg.hooks[0], ConfigDict) and cfg.hooks[0].type == "C"
    cfg.data.train.loop = 4
    assert cfg["data"]["train"]["loop"] == 4
    with pytest.raises(AttributeError, match="nope"):
        cfg.nope


def test_dump_roundtrip_exact(tree, tmp_path):
    cfg = Config.fromfile(tree / "leaf/leaf.py")
    cfg.merge_from_dict({"weird": {"not-an-id": [1, (2,), [], ()], "class": None}, "big": list(range(60)),
                         "f": 1e-10, "neg": -0.0, "s": "it's \"q\"\n", "t": (True, False, None), "e": {}})
    out = tmp_path / "dump/config.py"
    text = cfg.dump(out)
    assert out.read_text() == text
    back = Config.fromfile(out)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    # types survive, not just values
    assert type(back.t) is tuple and type(back.weird["not-an-id"][1]) is tuple and type(back.big) is list
    assert Config.fromfile(out).dump() == text  # stable


def test_dump_rejects_unreproducible(tmp_path):
    cfg = Config(dict(model=dict(fn=object())))
    with pytest.raises(TypeError, match="model.fn"):
        cfg.dump(tmp_path / "x.py")


def test_pickle_and_deepcopy(tree):
    cfg = Config.fromfile(tree / "leaf/leaf.py")
    for c in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert c == cfg and c.filename == cfg.filename and type(c) is Config
        c.data.train.split = "val"
        assert cfg.data.train.split == "train"


def test_merge_rules():
    assert merge_into(dict(a=dict(b=1)), dict(a=dict(c=2))) == dict(a=dict(b=1, c=2))
    assert merge_into(dict(a=dict(_delete_=True, b=1)), dict(a=dict(c=2))) == dict(a=dict(b=1))
    assert merge_into(dict(a=dict(_delete_=False, b=1)), dict(a=dict(c=2))) == dict(a=dict(b=1, c=2))
    assert merge_into(dict(a=[3]), dict(a=[1, 2])) == dict(a=[3])
    with pytest.raises(TypeError, match="_delete_"):
        merge_into(dict(a=dict(b=1)), dict(a=5))
    base = dict(a=dict(c=2))
    merge_into(dict(a=dict(b=1)), base)
    assert base == dict(a=dict(c=2))  # not modified in place


def test_duplicate_keys_among_bases(tmp_path):
    write(tmp_path, "a.py", "x = 1\n")
    write(tmp_path, "b.py", "x = 2\n")
    p = write(tmp_path, "c.py", "_base_ = ['a.py', 'b.py']\n")
    with pytest.raises(KeyError, match="x"):
        load_file(p)


def test_missing_base_names_path(tmp_path):
    p = write(tmp_path, "c.py", "_base_ = 'nothere/base.py'\n")
    with pytest.raises(FileNotFoundError, match="nothere/base.py"):
        load_file(p)


@pytest.mark.parametrize("text,value", [
    ("3", 3), ("-3", -3), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True), ("False", False), ("None", None),
    ("none", None), ("abc", "abc"), ("'quoted'", "quoted"), ("[1,2]", [1, 2]), ("1,2", [1, 2]), ("(1,2)", (1, 2)),
    ("[a, b]", ["a", "b"]), ("[(1,2),[3,4],x]", [(1, 2), [3, 4], "x"]), ("()", ()), ("[]", []),
    ("exp/demo/x.pth", "exp/demo/x.pth"), ("(0.002,0.0002)", (0.002, 0.0002)),
])
def test_parse_value(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_parse_options_splits_on_first_equal():
    assert parse_options(["save_path=exp/a=b", "data.train.loop=2"]) == {"save_path": "exp/a=b", "data.train.loop": 2}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["novalue"])


def test_merge_from_dict_lists_and_strict(tree):
    cfg = Config.fromfile(tree / "leaf/leaf.py")
    cfg.merge_from_dict({"hooks.0.type": "Z", "opt.betas": (0.8, 0.9), "model.backbone.new_arg": 1}, strict=True)
    assert cfg.hooks[0].type == "Z" and cfg.opt.betas == (0.8, 0.9) and cfg.model.backbone.new_arg == 1
    with pytest.raises(KeyError, match="'data.num_clases'.*Did you mean: data.num_classes"):
        cfg.merge_from_dict({"data.num_clases": 1}, strict=True)
    with pytest.raises(KeyError, match="data.tran"):
        cfg.merge_from_dict({"data.tran.split": "x"}, strict=True)
    with pytest.raises(KeyError, match="hooks.5"):
        cfg.merge_from_dict({"hooks.5.type": "x"}, strict=True)
    cfg.merge_from_dict({"brand_new": 1})  # non-strict adds keys, as the reference
    assert cfg.brand_new == 1


def test_default_config_parser(tree):
    p = tree / "leaf/leaf.py"
    cfg = default_config_parser(p, ["epoch=20", "seed=3"])
    assert cfg.data.train.loop == 4 and cfg.seed == 3
    seeds = {default_config_parser(p).seed for _ in range(5)}
    assert len(seeds) > 1 and all(isinstance(s, int) for s in seeds)
    cfg = default_config_parser(p, {"opt.lr": 0.5})
    assert cfg.opt.lr == 0.5
    with pytest.raises(ValueError, match="multiple of eval_epoch"):
        default_config_parser(p, ["epoch=12"])
    with pytest.raises(KeyError, match="Did you mean: eval_epoch"):
        default_config_parser(p, ["eval_epoc=1"])
    with pytest.raises(FileNotFoundError, match="leef.py.*Did you mean: leaf.py"):
        default_config_parser(tree / "leaf/leef.py")
    with pytest.raises(ValueError, match="names has 2 entries"):
        default_config_parser(p, ["data.num_classes=3"])
    with pytest.raises(ValueError, match="positive int"):
        default_config_parser(p, ["eval_epoch=0.5"])


def test_format_config_is_python():
    text = format_config(dict(a=dict(b=[dict(c=(1,))]), d="x"))
    ns = {}
    exec(text, ns)
    assert ns["a"] == dict(b=[dict(c=(1,))]) and ns["d"] == "x"
