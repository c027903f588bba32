"Preprocessing: real ScanNet/S3DIS samples (skipped when absent), custom formats, bad inputs, resumability, CLI."
import csv, json, os, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

import sonata_nb.preprocess as pp
from sonata_nb.classes import S3DIS_NAMES, VALID_CLASS_IDS_20, VALID_CLASS_IDS_200

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SONATA_NB_SAMPLE_DATA", ROOT.parent / "shared" / "data"))
SCANNET = DATA / "scannet_raw"
SCENE = SCANNET / "scans" / "scene0000_00"
S3DIS = DATA / "s3dis_raw"
needs_scannet = pytest.mark.skipif(not SCENE.is_dir(), reason=f"ScanNet sample not found at {SCENE}")
needs_s3dis = pytest.mark.skipif(not S3DIS.is_dir(), reason=f"S3DIS sample not found at {S3DIS}")


def run_quiet(fn, *args, **kwargs):
    "Call `fn`, returning (result, warning messages)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fn(*args, progress=False, **kwargs)
    return res, [str(w.message) for w in caught]


# ---------------------------------------------------------------- ScanNet (real scene)

@pytest.fixture(scope="module")
def scannet_out(tmp_path_factory):
    if not SCENE.is_dir(): pytest.skip(f"ScanNet sample not found at {SCENE}")
    out = tmp_path_factory.mktemp("scannet")
    summary, msgs = run_quiet(pp.preprocess_scannet, SCANNET, out, default_split="train")
    return out / "train" / "scene0000_00", summary, msgs


def table_rows(path=SCANNET / "scannet-labels.combined.tsv"):
    with open(path, newline="") as f: return list(csv.DictReader(f, delimiter="\t"))


@needs_scannet
def test_scannet_arrays(scannet_out):
    scene, summary, _ = scannet_out
    assert summary.done == ["train/scene0000_00"] and summary.points == 81_369 and not summary.failed
    arrays = {p.stem: np.load(p) for p in scene.glob("*.npy")}
    assert sorted(arrays) == ["color", "coord", "instance", "normal", "origin", "segment20", "segment200"]
    assert {k: (v.dtype, v.shape) for k, v in arrays.items()} == {"origin": (np.float64, (3,)),
        "coord": (np.float32, (81_369, 3)), "color": (np.uint8, (81_369, 3)), "normal": (np.float32, (81_369, 3)),
        "segment20": (np.int64, (81_369,)), "segment200": (np.int64, (81_369,)), "instance": (np.int64, (81_369,))}
    v = PlyData.read(str(SCENE / "scene0000_00_vh_clean_2.ply"))["vertex"].data
    np.testing.assert_array_equal(arrays["coord"], np.stack([v["x"], v["y"], v["z"]], 1))
    np.testing.assert_array_equal(arrays["origin"], [0, 0, 0])  # a local scan keeps its frame
    np.testing.assert_array_equal(arrays["color"], np.stack([v["red"], v["green"], v["blue"]], 1))


@needs_scannet
def test_scannet_labels_match_scannet_label_mesh(scannet_out):
    "ScanNet's own `_vh_clean_2.labels.ply` (label id per vertex) is an independent oracle for both label sets"
    scene, _, _ = scannet_out
    label_id = np.asarray(PlyData.read(str(SCENE / "scene0000_00_vh_clean_2.labels.ply"))["vertex"]["label"]).astype(int)
    nyu40 = {int(r["id"]): int(r["nyu40id"] or 0) for r in table_rows()}
    to20, to200 = {c: i for i, c in enumerate(VALID_CLASS_IDS_20)}, {c: i for i, c in enumerate(VALID_CLASS_IDS_200)}
    want20 = np.array([to20.get(nyu40.get(i, 0), -1) for i in label_id])
    want200 = np.array([to200.get(i, -1) for i in label_id])
    np.testing.assert_array_equal(np.load(scene / "segment20.npy"), want20)
    np.testing.assert_array_equal(np.load(scene / "segment200.npy"), want200)
    # label counts: every class present in the oracle has the same number of points
    assert np.bincount(want20 + 1).tolist() == np.bincount(np.load(scene / "segment20.npy") + 1).tolist()


@needs_scannet
def test_scannet_instances_and_unknown_categories(scannet_out):
    scene, summary, msgs = scannet_out
    agg = json.loads((SCENE / "scene0000_00.aggregation.json").read_text())["segGroups"]
    seg = np.array(json.loads((SCENE / "scene0000_00_vh_clean_2.0.010000.segs.json").read_text())["segIndices"])
    inst = np.load(scene / "instance.npy")
    # brute force, group by group in file order (later groups overwrite earlier ones)
    want = np.full(len(seg), -1)
    for g in agg: want[np.isin(seg, g["segments"])] = g["id"]
    np.testing.assert_array_equal(inst, want)
    names = {r["category"] for r in table_rows()}
    unknown = {}
    for g in agg:
        if g["label"] not in names: unknown[g["label"]] = unknown.get(g["label"], 0) + int((want == g["id"]).sum())
    assert unknown, "the v1 sample has categories missing from its table (dishrack)"
    assert summary.unknown == {"train/scene0000_00": unknown}
    for name in unknown: assert any(name in m and "labelled -1" in m for m in msgs)
    assert (np.load(scene / "segment20.npy")[np.isin(inst, [g["id"] for g in agg if g["label"] in unknown])] == -1).all()


@needs_scannet
def test_scannet_normals(scannet_out):
    scene, _, _ = scannet_out
    ply = PlyData.read(str(SCENE / "scene0000_00_vh_clean_2.ply"))
    v = np.stack([ply["vertex"][k] for k in "xyz"], 1).astype(np.float64)
    f = np.stack(ply["face"].data["vertex_indices"]).astype(np.int64)
    normal = np.load(scene / "normal.npy")
    used = np.zeros(len(v), bool); used[f.ravel()] = True
    np.testing.assert_allclose(np.linalg.norm(normal[used], axis=1), 1, atol=1e-5)
    # a slow, independent accumulation (np.add.at) of area-weighted face normals
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    acc = np.zeros_like(v)
    for k in range(3): np.add.at(acc, f[:, k], cross)
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(normal, acc, atol=1e-5)
    # consistent with the faces: vertex normals agree in sign with the normals of the faces around them
    face_n = cross / (np.linalg.norm(cross, axis=1, keepdims=True) + 1e-12)
    dots = np.einsum("fij,fj->fi", normal[f], face_n)
    assert np.median(dots) > 0.9 and (dots > 0).mean() > 0.97


@pytest.mark.skipif(not SCENE.is_dir(), reason="ScanNet sample absent")
@pytest.mark.parametrize("drop", [(), ("trashcan",)])
def test_scannet_v2_table_columns(tmp_path, drop):
    "The v2 table names its column `raw_category`; names absent from it (v1 `trashcan`) are counted as unknown"
    rows = table_rows()
    tsv = tmp_path / "scannetv2-labels.combined.tsv"
    with open(tsv, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "raw_category", "nyu40id"], delimiter="\t")
        w.writeheader()
        for r in rows:
            if r["category"] not in drop: w.writerow(dict(id=r["id"], raw_category=r["category"], nyu40id=r["nyu40id"]))
    summary, _ = run_quiet(pp.preprocess_scannet, SCANNET, tmp_path / "out", tsv=tsv, default_split="val")
    unknown = summary.unknown["val/scene0000_00"]
    assert ("trashcan" in unknown) == bool(drop) and "dishrack" in unknown
    assert (tmp_path / "out/val/scene0000_00/segment20.npy").exists()


def test_label_table_without_name_column(tmp_path):
    tsv = tmp_path / "t.tsv"; tsv.write_text("id\tname\tnyu40id\n1\twall\t1\n")
    with pytest.raises(ValueError, match=r"t.tsv: the ScanNet label table has no column\(s\) \['raw_category \(or category\)'\]"):
        pp.read_label_table(tsv)


# ---------------------------------------------------------------- S3DIS (real rooms)

def s3dis_rooms():
    return sorted(p.parent for p in S3DIS.glob("Area_*/*/Annotations"))


@pytest.fixture(scope="module")
def s3dis_out(tmp_path_factory):
    if not S3DIS.is_dir(): pytest.skip(f"S3DIS sample not found at {S3DIS}")
    pytest.importorskip("open3d")
    out = tmp_path_factory.mktemp("s3dis")
    summary, msgs = run_quiet(pp.preprocess_s3dis, S3DIS, out, workers=2)
    return out, summary, msgs


@needs_s3dis
def test_s3dis_rooms(s3dis_out):
    out, summary, msgs = s3dis_out
    rooms = s3dis_rooms()
    assert summary.done == sorted(f"{r.parent.name}/{r.name}" for r in rooms) and not summary.failed
    assert any("alignmentAngle.txt is missing" in m for m in msgs)  # the sample ships no angle files: not rotated
    for room in rooms:
        files = sorted((room / "Annotations").glob("*.txt"))
        raw = [np.loadtxt(f) for f in files]
        d = out / room.parent.name / room.name
        coord, seg, inst = np.load(d / "coord.npy"), np.load(d / "segment.npy"), np.load(d / "instance.npy")
        np.testing.assert_array_equal(coord, np.concatenate(raw)[:, :3].astype(np.float32))
        np.testing.assert_array_equal(np.load(d / "color.npy"), np.concatenate(raw)[:, 3:].astype(np.uint8))
        want_seg = np.concatenate([np.full(len(r), S3DIS_NAMES.index(f.stem.split("_")[0])) for f, r in zip(files, raw)])
        np.testing.assert_array_equal(seg, want_seg)
        np.testing.assert_array_equal(inst, np.concatenate([np.full(len(r), i) for i, r in enumerate(raw)]))
        normal = np.load(d / "normal.npy")
        assert normal.dtype == np.float32 and normal.shape == coord.shape
        np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1, atol=1e-4)
        for i, f in enumerate(files):  # surfaces: horizontal normals on walls, vertical ones facing the room on ceilings
            nz = np.median(normal[inst == i, 2])
            if f.stem.startswith("wall"): assert abs(nz) < 0.2, (f, nz)
            if f.stem.startswith("ceiling"): assert nz < -0.9, (f, nz)


@needs_s3dis
def test_s3dis_corrupt_line_is_skipped_with_warning(tmp_path):
    pytest.importorskip("open3d")
    room = s3dis_rooms()[0]
    raw = tmp_path / "raw" / room.parent.name / room.name
    shutil.copytree(room, raw)
    target = sorted((raw / "Annotations").glob("*.txt"))[0]
    lines = target.read_bytes().splitlines(keepends=True)
    lines.insert(1233, b"-15.309 37.632 103.0\x100000 98 91 72\n")  # becomes line 1234
    target.write_bytes(b"".join(lines))
    summary, msgs = run_quiet(pp.preprocess_s3dis, tmp_path / "raw", tmp_path / "out")
    assert not summary.failed
    hits = [m for m in msgs if target.name in m and "line 1234" in m and "skipped 1 unparsable" in m]
    assert hits, msgs
    n_clean = sum(len(np.loadtxt(f)) for f in (room / "Annotations").glob("*.txt"))
    assert summary.points == n_clean


def test_s3dis_unknown_class_becomes_clutter(tmp_path):
    ann = tmp_path / "Area_2" / "storage_1" / "Annotations"; ann.mkdir(parents=True)
    np.savetxt(ann / "stairs_1.txt", np.c_[np.random.rand(30, 3), np.full((30, 3), 7)])
    np.savetxt(ann / "door_1.txt", np.c_[np.random.rand(20, 3), np.full((20, 3), 9)])
    summary, msgs = run_quiet(pp.preprocess_s3dis, tmp_path, tmp_path / "out", normals=False)
    seg = np.load(tmp_path / "out/Area_2/storage_1/segment.npy")
    np.testing.assert_array_equal(seg, [S3DIS_NAMES.index("door")] * 20 + [S3DIS_NAMES.index("clutter")] * 30)
    assert summary.unknown == {"Area_2/storage_1": {"stairs": 30}}
    assert any("'stairs' (30 points)" in m for m in msgs)


# ---------------------------------------------------------------- custom scans

def room_cloud(n=4000, seed=0):
    "A 4 m x 3 m box room (floor, ceiling, two walls), 2.5 m high, in metres"
    rng = np.random.default_rng(seed)
    k = n // 4
    floor = np.c_[rng.uniform(0, 4, k), rng.uniform(0, 3, k), np.zeros(k)]
    ceil = floor + [0, 0, 2.5]
    wall_a = np.c_[np.zeros(k), rng.uniform(0, 3, k), rng.uniform(0, 2.5, k)]
    wall_b = np.c_[rng.uniform(0, 4, k), np.full(k, 3.0), rng.uniform(0, 2.5, k)]
    xyz = np.r_[floor, ceil, wall_a, wall_b]
    rgb = rng.integers(0, 256, (len(xyz), 3))
    lab = np.repeat([1, 0, 2, 2], k)
    want_n = np.repeat([[0, 0, 1], [0, 0, -1], [1, 0, 0], [0, -1, 0]], k, axis=0)  # facing the room
    return xyz, rgb, lab, want_n


def write_ply(path, xyz, rgb=None, lab=None, float_color=False):
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if rgb is not None: fields += [(c, "f4" if float_color else "u1") for c in ("red", "green", "blue")]
    if lab is not None: fields += [("label", "i4")]
    v = np.empty(len(xyz), fields)
    for i, c in enumerate("xyz"): v[c] = xyz[:, i]
    if rgb is not None:
        for i, c in enumerate(("red", "green", "blue")): v[c] = rgb[:, i] / 255 if float_color else rgb[:, i]
    if lab is not None: v["label"] = lab
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))


def test_custom_formats(tmp_path):
    o3d = pytest.importorskip("open3d")
    xyz, rgb, lab, want_n = room_cloud()
    raw = tmp_path / "raw"; (raw / "train").mkdir(parents=True)
    write_ply(raw / "a_ply.ply", xyz, rgb, lab, float_color=True)  # float colours in 0..1
    pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz.astype(np.float32)))
    pcd.point.colors = o3d.core.Tensor(rgb.astype(np.uint8))
    pcd.point.label = o3d.core.Tensor(lab.astype(np.int32)[:, None])
    o3d.t.io.write_point_cloud(str(raw / "b_pcd.pcd"), pcd)
    np.save(raw / "c_npy.npy", np.c_[xyz, rgb, lab])
    np.savez(raw / "train" / "d_npz.npz", coord=xyz, color=rgb.astype(np.uint8), segment=lab, normal=want_n * 2.0)
    np.savetxt(raw / "train" / "e_txt.txt", np.c_[xyz, rgb], fmt="%.6f,%.6f,%.6f,%d,%d,%d")  # comma-separated
    np.savetxt(raw / "f_xyz.xyz", xyz, fmt="%.6f", header="x y z")
    summary, msgs = run_quiet(pp.preprocess_custom, raw, tmp_path / "out", normal_radius=0.3)
    assert summary.done == ["scans/a_ply", "scans/b_pcd", "scans/c_npy", "scans/f_xyz", "train/d_npz", "train/e_txt"]
    assert not summary.failed and summary.points == 6 * len(xyz)
    for rel in summary.done:
        d = tmp_path / "out" / rel
        np.testing.assert_allclose(np.load(d / "coord.npy"), xyz, atol=1e-5)
        assert np.load(d / "coord.npy").dtype == np.float32
        color = np.load(d / "color.npy")
        assert color.dtype == np.uint8
        np.testing.assert_array_equal(color, 0 if rel.endswith("xyz") else rgb)
        normal = np.load(d / "normal.npy")
        agree = (normal * want_n).sum(1)
        assert np.median(agree) > 0.99, rel  # estimated (or given) normals face the room
        if rel.endswith(("xyz", "txt")): assert not (d / "segment.npy").exists()
        else: np.testing.assert_array_equal(np.load(d / "segment.npy"), lab)
    assert any("a_ply.ply: colours are in 0..1: multiplied by 255" in m for m in msgs)
    assert any("f_xyz.xyz: no colour; filled with zeros" in m for m in msgs)
    assert any("d_npz.npz: 4000 normals are not unit length: normalised" in m for m in msgs)


def test_custom_bad_inputs(tmp_path):
    xyz, rgb, lab, _ = room_cloud(400)
    raw = tmp_path / "raw"; raw.mkdir()
    bad = xyz.copy(); bad[7, 1] = np.nan
    np.save(raw / "nan.npy", bad)
    np.save(raw / "empty.npy", np.zeros((0, 3)))
    np.savez(raw / "short.npz", coord=xyz, color=rgb[:-1])
    np.savez(raw / "neg.npz", coord=xyz, color=-rgb)
    np.savez(raw / "nocoord.npz", pts=xyz)
    np.save(raw / "wide.npy", np.zeros((5, 5)))
    summary, msgs = run_quiet(pp.preprocess_custom, raw, tmp_path / "out", normals=False)
    f = summary.failed
    assert summary.done == [] and sorted(f) == sorted(f"scans/{n}" for n in ("nan", "empty", "short", "neg", "nocoord", "wide"))
    assert "nan.npy: field 'coord' has 1 point(s) with NaN/inf (first at index 7)" in f["scans/nan"]
    assert "empty.npy: empty cloud" in f["scans/empty"]
    assert "short.npz: field 'color' has 399 entries but 'coord' has 400 points" in f["scans/short"]
    assert "neg.npz: field 'color' has negative values" in f["scans/neg"]
    assert "nocoord.npz: no 'coord'" in f["scans/nocoord"]
    assert "wide.npy: array of shape (5, 5)" in f["scans/wide"]
    assert not any((tmp_path / "out" / "scans").glob("*")), "failed scans leave no folder"
    assert sum("failed" in m for m in msgs) == 6


def test_custom_units_and_scale(tmp_path):
    xyz, rgb, lab, _ = room_cloud(4000)
    raw = tmp_path / "raw"; raw.mkdir()
    np.save(raw / "mm.npy", np.c_[xyz * 1000, rgb])
    np.save(raw / "cm.npy", np.c_[xyz * 100, rgb])
    _, msgs = run_quiet(pp.preprocess_custom, raw, tmp_path / "o1", normals=False)
    assert any("mm.npy" in m and "does not look like metres" in m and "in millimetres 4 m: pass scale=0.001" in m for m in msgs), msgs
    assert any("cm.npy" in m and "In centimetres it is 4 m across: pass scale=0.01 (--scale 0.01)" in m for m in msgs), msgs
    (raw / "cm.npy").unlink()
    np.save(raw / "unit.npy", np.c_[xyz / 10, rgb])  # normalised into a 0.4-unit box
    summary, msgs = run_quiet(pp.preprocess_custom, raw, tmp_path / "o2", scale=0.001, normals=False)
    assert summary.done == ["scans/mm", "scans/unit"]
    assert not any("mm.npy" in m and "metres" in m for m in msgs)
    assert any("unit.npy" in m and "only 0.0004 units across" in m for m in msgs), msgs
    np.testing.assert_allclose(np.load(tmp_path / "o2/scans/mm/coord.npy"), xyz, atol=1e-5)


def test_custom_name_clash(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 3))); np.savez(tmp_path / "a.npz", coord=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="a.npy and .*a.npz"): pp.custom_jobs(tmp_path)


# ---------------------------------------------------------------- resumability, parallel runs

def make_scans(raw, n=3):
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        xyz, rgb, lab, _ = room_cloud(800, seed=i)
        np.save(raw / f"s{i}.npy", np.c_[xyz, rgb, lab])


def test_resume_skips_finished_and_crash_leaves_nothing(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_scans(raw)
    calls = []
    real_save = np.save
    def crashing_save(path, arr, *a, **k):  # the third array written (of s0) fails, as a full disk or a kill would
        calls.append(path)
        if len(calls) == 3: raise OSError("disk full")
        return real_save(path, arr, *a, **k)
    monkeypatch.setattr(pp.np, "save", crashing_save)
    s1, _ = run_quiet(pp.preprocess_custom, raw, out, normals=False)
    monkeypatch.undo()
    assert list(s1.failed) == ["scans/s0"] and "disk full" in s1.failed["scans/s0"]
    assert not (out / "scans/s0").exists() and not (out / pp.PARTIAL).exists()
    (out / pp.PARTIAL / "scans__s0").mkdir(parents=True)  # a hard kill leaves its partial folder behind
    (out / pp.PARTIAL / "scans__s0" / "coord.npy").write_bytes(b"junk")
    s2, _ = run_quiet(pp.preprocess_custom, raw, out, normals=False)
    assert s2.done == ["scans/s0"] and s2.skipped == ["scans/s1", "scans/s2"] and not (out / pp.PARTIAL).exists()
    assert sorted(p.name for p in (out / "scans/s0").iterdir()) == ["color.npy", "coord.npy", "origin.npy", "segment.npy"]
    s3, _ = run_quiet(pp.preprocess_custom, raw, out, normals=False)
    assert s3.done == [] and len(s3.skipped) == 3 and s3.points == 0
    s4, _ = run_quiet(pp.preprocess_custom, raw, out, normals=False, overwrite=True)
    assert len(s4.done) == 3


def test_parallel_matches_serial(tmp_path):
    pytest.importorskip("open3d")
    make_scans(tmp_path / "raw", 4)
    s1, _ = run_quiet(pp.preprocess_custom, tmp_path / "raw", tmp_path / "o1", workers=1)
    s2, _ = run_quiet(pp.preprocess_custom, tmp_path / "raw", tmp_path / "o2", workers=2)
    assert s1.done == s2.done and len(s2.done) == 4 and s1.points == s2.points
    for f in sorted((tmp_path / "o1").rglob("*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(tmp_path / "o2" / f.relative_to(tmp_path / "o1")))


# ---------------------------------------------------------------- command line

def cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "sonata_nb.preprocess", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def in_process(capsys, *args):
    "`main` (what `python -m sonata_nb.preprocess` runs) in this process: its exit code, stdout and stderr"
    capsys.readouterr()
    try: rc = pp.main([str(a) for a in args])
    except SystemExit as e: rc = e.code  # argparse's errors
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli(tmp_path, capsys):
    "The command itself once (a scan that fails: exit code 1), then its other outcomes through `main` in this process "
    "(a command costs ~9 s of imports, each spawned worker as much again: test_parallel_matches_serial runs workers)"
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_scans(raw, 2)
    np.save(raw / "broken.npy", np.zeros((0, 3)))
    assert pp.build_parser().parse_args(["custom", "--raw", "r", "--out", "o", "--workers", "3"]).workers == 3
    r = cli("custom", "--raw", raw, "--out", out, "--workers", "1", "--no-normals")
    assert r.returncode == 1, r.stderr
    assert f"{out}: 2 done, 0 skipped, 1 failed, 1,600 points" in r.stdout
    assert "FAILED scans/broken" in r.stdout and "broken.npy: empty cloud" in r.stderr
    assert (out / "scans/s1/coord.npy").exists()
    (raw / "broken.npy").unlink()
    rc, stdout, stderr = in_process(capsys, "custom", "--raw", raw, "--out", out, "--no-normals", "--no-progress")
    assert rc == 0 and "0 done, 2 skipped" in stdout
    np.save(raw / "broken.npy", np.zeros((0, 3)))
    rc, stdout, stderr = in_process(capsys, "custom", "--raw", raw, "--out", out, "--no-normals", "--no-progress")
    assert rc == 1 and "FAILED scans/broken" in stdout and "broken.npy: empty cloud" in stderr
    rc, stdout, stderr = in_process(capsys, "s3dis", "--raw", tmp_path / "nowhere", "--out", out)
    assert rc == 2 and "error: No Area_* folders" in stderr
    rc, stdout, stderr = in_process(capsys, "kitti", "--raw", raw, "--out", out)
    assert rc == 2 and "invalid choice" in stderr


@needs_scannet
def test_cli_scannet(tmp_path):
    r = cli("scannet", "--raw", SCANNET, "--out", tmp_path, "--default-split", "val", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "1 done" in r.stdout and "81,369 points" in r.stdout and "unknown categories in val/scene0000_00" in r.stdout
    assert "dishrack" in r.stdout and "dishrack" in r.stderr


# ---------------------------------------------------------------- ScanNet splits, test scans; outputs load as datasets

@needs_scannet
def test_scannet_split_lists_and_test_scans(tmp_path):
    raw = tmp_path / "raw"
    (raw / "scans_test" / "scene0000_00").mkdir(parents=True)
    (raw / "scans_test" / "scene0000_00" / "scene0000_00_vh_clean_2.ply").symlink_to(SCENE / "scene0000_00_vh_clean_2.ply")
    summary, msgs = run_quiet(pp.preprocess_scannet, raw, tmp_path / "out")  # no annotations, no table, no split lists
    assert summary.done == ["test/scene0000_00"] and any("go to 'test'" in m for m in msgs)
    assert sorted(p.name for p in (tmp_path / "out/test/scene0000_00").iterdir()) == ["color.npy", "coord.npy", "normal.npy", "origin.npy"]
    lists = tmp_path / "lists"; lists.mkdir()
    (lists / "scannetv2_val.txt").write_text("scene0000_00\n")
    summary, _ = run_quiet(pp.preprocess_scannet, SCANNET, tmp_path / "out2", split_dir=lists)
    assert summary.done == ["val/scene0000_00"]
    summary, _ = run_quiet(pp.preprocess_scannet, SCANNET, tmp_path / "out3", split_dir=lists, splits=["train"])
    assert summary.done == [] and summary.skipped == []


@needs_scannet
def test_outputs_load_with_datasets(scannet_out, tmp_path):
    from sonata_nb.datasets import CustomDataset, ScanNet200Dataset, ScanNetDataset
    scene, _, _ = scannet_out
    for cls, key in ((ScanNetDataset, "segment20"), (ScanNet200Dataset, "segment200")):
        data = cls(split="train", data_root=scene.parent.parent)[0]
        np.testing.assert_array_equal(data["segment"], np.load(scene / f"{key}.npy"))
        assert data["coord"].shape == data["normal"].shape == (81_369, 3)
    make_scans(tmp_path / "raw", 1)
    run_quiet(pp.preprocess_custom, tmp_path / "raw", tmp_path / "out", normals=False)
    data = CustomDataset(split="scans", data_root=tmp_path / "out")[0]
    assert data["name"] == "s0" and len(data["segment"]) == 800


def test_custom_mesh_ply_gets_face_normals(tmp_path):
    "A .ply mesh without normals gets area-weighted face normals (no estimation, no open3d needed)"
    v = np.array([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    f = np.array([([0, 2, 1],), ([0, 3, 2],)], dtype=[("vertex_indices", "i4", (3,))])  # clockwise from +z: faces down
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")]).write(str(tmp_path / "m.ply"))
    arrays = pp.check_cloud(pp.read_cloud(tmp_path / "m.ply"), "m.ply", normals=False)
    np.testing.assert_allclose(arrays["normal"], np.tile([0, 0, -1], (4, 1)), atol=1e-6)


def test_missing_open3d_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # makes `import open3d` raise ImportError
    with pytest.raises(ImportError, match=r"Estimating normals needs open3d: `pip install open3d`"):
        pp.estimate_normals(np.random.rand(50, 3))
