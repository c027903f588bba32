# Runtime defaults shared by every experiment config (the values of Pointcept's configs/_base_/default_runtime.py,
# except enable_wandb, which is off here). A config names this file in `_base_` and overrides what it needs;
# any key can also be set from the command line: `--options key=value` (dotted keys for nested values).

weight = None  # pretrained or trained checkpoint to load (None: none; a frozen-backbone `lin` probe needs one)
trust_checkpoint = False  # True unpickles `weight` fully, which runs any code it names: only for a file you trust
resume = False  # resume the run in save_path from `weight` (its model_last.pth)
evaluate = True  # validate after each train/eval cycle
test_only = False  # test process

seed = None  # None: a random seed is drawn and recorded in the dumped config
save_path = "exp/default"  # experiment folder
num_worker = 16  # data-loading workers, total over all processes
batch_size = 16  # training batch size, total over all processes
batch_size_val = None  # None: 1 per process
batch_size_test = None  # None: 1 per process
epoch = 100  # total passes over the data; the dataset is looped epoch // eval_epoch times per cycle
eval_epoch = 100  # number of train/eval (and checkpoint) cycles
clip_grad = None  # gradient-norm clipping (None: off)

sync_bn = False
enable_amp = False  # mixed precision
amp_dtype = "float16"
empty_cache = False
empty_cache_per_epoch = False
find_unused_parameters = False

enable_wandb = False  # Weights & Biases logging; needs a key (wandb_key or WANDB_API_KEY) as well
wandb_project = "pointcept"
wandb_key = None

mix_prob = 0  # Mix3D: probability of merging neighbouring scenes of a batch
param_dicts = None  # lr groups by parameter-name keyword, e.g. [dict(keyword="block", lr=0.0002)]

report = True  # sonata_nb addition: `sonata-train` writes report.html (curves, per-class table, 3D views) after training
log_interval = 10  # sonata_nb addition: log a training line every this many iterations
max_nonfinite_steps = 10  # sonata_nb addition: stop after this many skipped (NaN/Inf loss) steps in a row (0: never)
custom_imports = []  # sonata_nb addition: your modules imported before anything is built, e.g. ["my_pkg.my_dataset"]

# hooks
hooks = [
    dict(type="CheckpointLoader"),
    dict(type="ModelHook"),
    dict(type="IterationTimer", warmup_iter=2),
    dict(type="InformationWriter"),
    dict(type="SemSegEvaluator"),
    dict(type="CheckpointSaver", save_freq=None),
    dict(type="PreciseEvaluator", test_last=False),
]

# trainer
train = dict(type="DefaultTrainer")

# tester
test = dict(type="SemSegTester", verbose=True)
