"""Hooks from the config (sonata_nb.hooks): user hooks by name or dotted path, errors for unknown ones, hooks that drive
what runs, and the progress bars / notebook console of a real tiny run (demo rooms, CPU)."""
import json, os, re, sys
from pathlib import Path

import pytest

import sonata_nb.hooks as H
import sonata_nb.runtime as R
import sonata_nb.tester as TS
import sonata_nb.trainer as TR
from sonata_nb.config import default_config_parser
from test_train_cli import demo_options  # the tiny demo run of the command-line tests
from sonata_nb.hooks import EVENTS, HOOKS, HookBase, build_hooks
from sonata_nb.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def demo_cfg(save_path, data_root, **overrides):
    "The demo ft config on 2 tiny train rooms and 1 val room: 2 cycles of 1 step"
    opts = demo_options(data_root, **{"epoch": 2, "eval_epoch": 2, "save_path": save_path, **overrides})
    return default_config_parser(ROOT/"configs"/"demo"/"semseg-demo-ft.py", opts)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from sonata_nb.demo import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("demo"), n_train=2, n_val=1, seed=0, spacing=0.15)


@HOOKS.register_module()
class EventLogForTests(HookBase):
    "Records each event with what the hooks before it left: the cycle, the mIoU, the newest checkpoint, the test result"
    logs = {}  # tag -> events seen (a config holds plain data, not the list itself)
    def __init__(self, tag:str): self.seen = self.logs.setdefault(tag, [])
def _record(event):
    def method(self):
        t, entry = self.trainer, [event]
        if event == "after_epoch":
            last = t.save_path/"model"/"model_last.pth"
            entry += [t.epoch, t.comm_info["current_metric_value"] is not None, TR.load_checkpoint(last)["epoch"]]
        if event == "after_train": entry.append((t.save_path/"result"/"metrics.json").is_file())
        self.seen.append(tuple(entry))
    return method
for _e in EVENTS: setattr(EventLogForTests, _e, _record(_e))


USER_MODULE = '''
from sonata_nb.hooks import HookBase
class CountSteps(HookBase):
    "A user's hook in a module of their own"
    def __init__(self, out, scale=1): self.out, self.scale, self.n = out, scale, 0
    def after_step(self): self.n += self.scale
    def after_train(self): open(self.out, "w").write(str(self.n))
'''


def test_user_hooks_run_at_each_event_in_order_with_bars_and_a_notebook_console(tmp_path, data_root, monkeypatch, capsys):
    """A registered hook and a dotted-path hook, one config line each after the recipe's hooks, see every event in order.
    The same run, as in a notebook: bars for train, val and test; the cell shows summaries; the log file keeps every line"""
    (tmp_path/"plugins").mkdir(); (tmp_path/"plugins"/"my_user_hooks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path/"plugins"))
    for module in (H, TR, TS): monkeypatch.setattr(module, "show_progress", lambda: True)
    monkeypatch.setattr(R, "in_notebook", lambda: True)
    cfg = demo_cfg(tmp_path/"exp", data_root)
    cfg.hooks = [*cfg.hooks, dict(type="EventLogForTests", tag="run"),
                 dict(type="my_user_hooks.CountSteps", out=str(tmp_path/"steps.txt"), scale=10)]
    trainer = Trainer(cfg)
    assert [type(h).__name__ for h in trainer.hooks][-2:] == ["EventLogForTests", "CountSteps"]
    trainer.train()
    assert EventLogForTests.logs["run"] == [
        ("after_build",), ("before_train",),
        ("before_epoch",), ("before_step",), ("after_step",), ("after_epoch", 0, True, 1),
        ("before_epoch",), ("before_step",), ("after_step",), ("after_epoch", 1, True, 2),
        ("after_train", True)]  # the evaluator, the saver and the precise test ran before it, in list order
    assert (tmp_path/"steps.txt").read_text() == "20"  # 2 steps, the argument from the config

    out, err = capsys.readouterr()
    for bar in ("Train [1/2]", "Train [2/2]", "Val [1/2]", "Val [2/2]", "Test:"):
        assert bar in err, bar  # tqdm draws on stderr
    assert "Train result" in out and "Val result" in out and "Best mIoU" in out
    for hidden in ("=> Building model", "Train: [1/2][1/1]", "Class_0", "Test: "):
        assert hidden not in out, hidden
    log = (tmp_path/"exp"/"log"/"train.log").read_text()
    for line in ("=> Building model", "Train: [1/2][1/1]", "Train: [2/2][1/1]", "Class_0", "Val result",
                 "Train result", "Best mIoU", "Start Precise Evaluation"):
        assert line in log, line
    assert re.search(r"Test: \S+ \[1/1\]-\d+ Batch", log)  # the tester's per-scene line


@pytest.mark.parametrize("entry, error, message", [
    (dict(type="CheckpointSavr"), ValueError, "Did you mean 'CheckpointSaver'"),
    (dict(type="Nonsense"), ValueError, "Known hooks: CheckpointLoader, CheckpointSaver"),
    (dict(type="no_such_module.MyHook"), ImportError, "cannot import module 'no_such_module'"),
    (dict(type="json.NoHook"), ImportError, "has no 'NoHook'. Fix the class name"),
    (dict(type="json.dumps"), TypeError, "not a hook class"),
    (dict(type="CheckpointSaver", every=2), TypeError, "CheckpointSaver: "),
])
def test_bad_hook_entries_stop_the_trainer_before_building(tmp_path, data_root, entry, error, message):
    "An unknown, misspelt or unloadable hook is an error naming it and the fix, raised before the model or data exist"
    cfg = demo_cfg(tmp_path/"exp", data_root)
    cfg.hooks = [*cfg.hooks, entry]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        Trainer(cfg)
    assert not (tmp_path/"exp"/"model").exists() and "Building model" not in (tmp_path/"exp"/"log"/"train.log").read_text()


def test_hooks_decide_what_runs(tmp_path, data_root):
    "Without SemSegEvaluator and PreciseEvaluator: no val loader, no val record, no model_best, no result/"
    cfg = demo_cfg(tmp_path/"exp", data_root, epoch=1, eval_epoch=1)
    cfg.hooks = [h for h in cfg.hooks if h["type"] not in ("SemSegEvaluator", "PreciseEvaluator")]
    trainer = Trainer(cfg)
    assert trainer.val_loader is None
    trainer.train()
    kinds = {json.loads(l)["type"] for l in (tmp_path/"exp"/"log"/"metrics.jsonl").read_text().splitlines()}
    assert kinds == {"train"}
    assert sorted(p.name for p in (tmp_path/"exp"/"model").iterdir()) == ["model_last.pth"]
    assert not (tmp_path/"exp"/"result").exists()


def test_build_hooks_attaches_the_trainer_weakly():
    class Owner: pass
    owner = Owner()
    hook = build_hooks([dict(type="CheckpointSaver", save_freq=3)], owner)[0]
    assert hook.save_freq == 3 and type(hook.trainer) is not Owner and hook.trainer.__class__ is Owner  # a proxy


def test_terminal_keeps_its_log_lines_when_no_bar_is_drawn(tmp_path, data_root, capsys):
    "Output to a file or a pipe (no terminal, no notebook): no bars, every log line on the console as before"
    cfg = demo_cfg(tmp_path/"exp", data_root, epoch=1, eval_epoch=1)
    cfg.hooks = [h for h in cfg.hooks if h["type"] != "PreciseEvaluator"]
    Trainer(cfg).train()
    out, err = capsys.readouterr()
    assert "Train [" not in err and "Val [" not in err
    assert "Train: [1/1][1/1]" in out and "Class_0" in out and "=> Building model" in out
