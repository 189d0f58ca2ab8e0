"""The bad-input matrix (issue 16 "Bad files"): each case ends in one line (exit code 2 where it is an error,
no traceback) and loses no good image. CLI cases run `python -m lora_kit` in a subprocess.

Permission cases: root ignores file modes, so when the tests run as root the subprocess drops the
capabilities that bypass them (CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, via util-linux `setpriv`).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lora_kit.config.schema import BucketConfig, CacheConfig, DatasetConfig, Recipe
from lora_kit.data.dataset import build_train_data
from lora_kit.data.sources import scan_dataset
from lora_kit.errors import UserError

REPO = Path(__file__).resolve().parent.parent
GOOD = ["2_red/g0.png", "2_red/g1.png", "2_red/g2.png"]
BUCKETS = ["--resolution", "64", "--steps", "16", "--min", "32", "--max", "128"]


def _good_dataset(root: Path) -> Path:
    (root / "2_red").mkdir(parents=True)
    for i, rel in enumerate(GOOD):
        Image.new("RGB", (64, 48), (200, 40 * i, 0)).save(root / rel)
    return root


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def lying_png(width: int = 60000, height: int = 2500) -> bytes:
    """A well-formed PNG (valid chunks, IEND last) whose header claims far more rows than its data holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x80" * (width * 3)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(row))
            + _png_chunk(b"IEND", b""))


def _cli(tmp_path: Path, *args: str, drop_root: bool = False, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LORA_KIT_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    env.pop("LORA_KIT_DEBUG", None)
    cmd = [sys.executable, "-m", "lora_kit", *args]
    if drop_root and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux setpriv: file permissions cannot be tested")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def _lines(text: str, needle: str) -> list[str]:
    return [ln for ln in text.splitlines() if needle in ln]


def _assert_one_line_error(proc: subprocess.CompletedProcess, command: str, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = _lines(proc.stderr, "error:")
    assert len(errors) == 1 and errors[0].startswith(f"lora-kit {command}: error:") and needle in errors[0], proc.stderr


def _captions(root: Path) -> dict[str, str]:
    return {rel: (root / rel).with_suffix(".txt").read_text(encoding="utf-8") for rel in GOOD
            if (root / rel).with_suffix(".txt").exists()}


# ---------------------------------------------------------------------------------------------- CLI cases


def test_special_files_and_lying_headers_are_skipped_with_one_line_each(tmp_path):
    root = _good_dataset(tmp_path / "set")
    os.mkfifo(root / "2_red" / "x.png")  # opening it would block forever
    os.symlink("loop.png", root / "2_red" / "loop.png")  # a link to itself: ELOOP
    os.symlink("..", root / "2_red" / "up")  # a folder link back to its ancestor: endless recursion
    (root / "2_red" / "liar.png").write_bytes(lying_png())  # 60000x2500 claimed, one row of data
    Image.new("RGB", (8, 8), "white").save(root / "2_red" / "dot.png")
    proc = _cli(tmp_path, "caption", str(root), "--captioner", "template", "--template", "{class}", "--no-progress")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    for name in ("x.png", "loop.png", "up", "liar.png"):
        assert len(_lines(proc.stderr, name)) == 1, (name, proc.stderr)
    assert "x.png: a FIFO, not a regular file" in proc.stderr and "loop.png: symlink loop" in proc.stderr
    assert "liar.png: OSError: pixel data ends after" in proc.stderr
    assert "DecompressionBombWarning" not in proc.stderr  # the 150-megapixel claim is this one line only
    assert _captions(root) == {rel: "red\n" for rel in GOOD}  # no good image lost
    assert (root / "2_red" / "dot.txt").read_text(encoding="utf-8") == "red\n"
    assert "4 captioned" in proc.stdout and "3 unreadable" in proc.stdout

    # headers only: the liar's header looks fine here (the latent cache or a decoding scan catches it)
    proc = _cli(tmp_path, "buckets", str(root), *BUCKETS, "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert '"images": 5' in proc.stdout and '"skipped": 2' in proc.stdout
    assert len(_lines(proc.stderr, "x.png")) == 1
    small = _lines(proc.stderr, "smaller than the smallest bucket")
    assert len(small) == 1 and "dot.png (8x8)" in small[0] and "g0.png" not in small[0]


def test_unreadable_folder_stops_caption_buckets_and_train_alike(tmp_path):
    root = _good_dataset(tmp_path / "set")
    locked = root / "2_red" / "locked"
    locked.mkdir()
    Image.new("RGB", (64, 48)).save(locked / "hidden_from_us.png")
    locked.chmod(0)
    try:
        needle = "cannot read dataset folder set/2_red/locked: Permission denied"
        proc = _cli(tmp_path, "caption", str(root), "--captioner", "template", "--no-progress", drop_root=True)
        _assert_one_line_error(proc, "caption", needle)
        assert _captions(root) == {}  # stopped before writing anything
        _assert_one_line_error(_cli(tmp_path, "buckets", str(root), *BUCKETS, drop_root=True), "buckets", needle)
        proc = _cli(tmp_path, "train", "tiny-smoke", f"dataset.path={root}", f"output_dir={tmp_path / 'run'}",
                    drop_root=True, timeout=180)
        _assert_one_line_error(proc, "train", needle)
    finally:
        locked.chmod(0o755)


def test_caption_file_without_read_permission_is_one_line(tmp_path):
    root = _good_dataset(tmp_path / "set")
    sidecar = root / "2_red" / "g1.txt"
    sidecar.write_text("my caption\n", encoding="utf-8")
    sidecar.chmod(0)
    try:
        needle = "cannot read caption file set/2_red/g1.txt: Permission denied"
        proc = _cli(tmp_path, "caption", str(root), "--captioner", "template", "--no-progress", drop_root=True)
        _assert_one_line_error(proc, "caption", needle)
    finally:
        sidecar.chmod(0o644)
    assert sidecar.read_text(encoding="utf-8") == "my caption\n"  # never replaced


def test_read_only_folder_stops_caption_before_it_writes_anything(tmp_path):
    """A read-only subfolder stopped the run halfway (the folders before it captioned) with a PermissionError
    naming a temp file ('set/3_blue/.g0.txt.fy3whm_8.tmp'); a read-only dataset named the progress log's temp file."""
    root = _good_dataset(tmp_path / "set")
    blue = root / "3_blue"
    blue.mkdir()
    Image.new("RGB", (64, 48), "blue").save(blue / "b0.png")
    blue.chmod(0o555)
    try:
        proc = _cli(tmp_path, "caption", str(root), "--captioner", "template", "--no-progress", drop_root=True)
        _assert_one_line_error(proc, "caption", "cannot write captions in set/3_blue: permission denied (read-only folder)")
        assert _captions(root) == {} and sorted(p.name for p in root.iterdir()) == ["2_red", "3_blue"]  # nothing written
        root.chmod(0o555)
        proc = _cli(tmp_path, "caption", str(root), "--captioner", "template", "--no-progress", drop_root=True)
        _assert_one_line_error(proc, "caption", "cannot write captions in set: permission denied (read-only folder)")
    finally:
        root.chmod(0o755)
        blue.chmod(0o755)


# ---------------------------------------------------------------------------------------------- library cases


def _recipe(root: Path, tmp_path: Path, **dataset) -> Recipe:
    return Recipe(dataset=DatasetConfig(path=str(root), **dataset), cache=CacheConfig(dir=str(tmp_path / "cache")),
                  buckets=BucketConfig(resolution=64, bucket_reso_steps=16, min_bucket_reso=32, max_bucket_reso=128))


def test_lying_header_is_skipped_and_counted_by_training_without_a_cache(tmp_path, caplog):
    root = _good_dataset(tmp_path / "set")
    (root / "2_red" / "liar.png").write_bytes(lying_png())
    # header-only fast path (the latent cache decodes later): the header looks fine
    assert len(scan_dataset(DatasetConfig(path=str(root))).records) == 4
    with caplog.at_level(logging.WARNING):
        data = build_train_data(_recipe(root, tmp_path))  # no VAE: no latent cache, so the scan decodes
    assert sorted(s.record.rel for s in data.dataset.samples) == GOOD
    assert data.stats.skipped == 1 and "pixel data ends" in data.stats.skipped_files["liar.png"]
    assert len(_lines(caplog.text, "liar.png")) == 1


def test_lying_header_is_dropped_by_the_latent_cache(tmp_path):
    from lora_kit.models.presets import build_components

    root = _good_dataset(tmp_path / "set")
    (root / "2_red" / "liar.png").write_bytes(lying_png(600, 250))  # smaller claim: quick to cache
    vae = build_components("tiny-sd15", seed=0)["vae"].eval()
    data = build_train_data(_recipe(root, tmp_path), vae=vae)
    assert sorted(s.record.rel for s in data.dataset.samples) == GOOD
    assert data.stats.latent_cache["failed"] == 1 and "liar.png" in data.stats.skipped_files


def test_non_utf8_captions_are_decoded_with_a_warning_naming_the_file(tmp_path, caplog):
    root = _good_dataset(tmp_path / "set")
    (root / "2_red" / "g0.txt").write_bytes("café, crème brûlée".encode("cp1252"))
    (root / "2_red" / "g1.txt").write_bytes("\ufeffnaïve, star".encode("utf-16-le"))  # Notepad "Unicode"
    (root / "2_red" / "g2.txt").write_bytes("red\x00, star".encode("utf-8"))
    with caplog.at_level(logging.WARNING):
        recs = {r.rel: r.caption for r in scan_dataset(DatasetConfig(path=str(root))).records}
    assert recs == {GOOD[0]: "café, crème brûlée", GOOD[1]: "naïve, star", GOOD[2]: "red, star"}
    assert len(_lines(caplog.text, "g0.txt")) == 1 and "Windows-1252" in caplog.text
    assert len(_lines(caplog.text, "g2.txt")) == 1 and "NUL" in caplog.text
    assert "g1.txt" not in caplog.text  # a BOM says what it is: nothing to warn about


def test_small_images_named_in_one_warning_by_training(tmp_path, caplog):
    root = _good_dataset(tmp_path / "set")
    Image.new("RGB", (8, 8), "white").save(root / "2_red" / "dot.png")
    Image.new("RGB", (20, 10), "white").save(root / "2_red" / "dash.png")
    with caplog.at_level(logging.WARNING):
        data = build_train_data(_recipe(root, tmp_path))
    assert len(data.dataset.samples) == 5
    small = _lines(caplog.text, "smaller than the smallest bucket")
    assert len(small) == 1 and "dot.png (8x8)" in small[0] and "dash.png (20x10)" in small[0]
    assert "2 image(s)" in small[0] and "g0.png" not in small[0]


def test_imagefolder_rows_naming_special_files_and_unlisted_images(tmp_path, caplog):
    root = _good_dataset(tmp_path / "hub")
    os.mkfifo(root / "2_red" / "pipe.png")
    rows = [f'{{"file_name": "{rel}", "text": "red"}}' for rel in GOOD[:2]] + ['{"file_name": "2_red/pipe.png"}']
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        scan = scan_dataset(DatasetConfig(path=str(root)))
    assert [r.rel for r in scan.records] == GOOD[:2] and list(map(Path, scan.skipped.skipped)) == [root / "2_red/pipe.png"]
    unlisted = _lines(caplog.text, "not listed")
    assert len(unlisted) == 1 and "1 image(s)" in unlisted[0] and "2_red/g2.png" in unlisted[0]


def test_a_folder_with_absurd_repeats_is_one_line_not_a_hang(tmp_path):
    """99999999999999999999_x built an epoch list of that many samples: training hung filling memory."""
    root = _good_dataset(tmp_path / "set")
    (root / "2_red").rename(root / "99999999999999999999_red")
    with pytest.raises(UserError, match=r"dataset folder 99999999999999999999_red: 99999999999999999999 repeats; expected at most 10000"):
        scan_dataset(DatasetConfig(path=str(root)))
    (root / "99999999999999999999_red").rename(root / "10000_red")
    assert len(scan_dataset(DatasetConfig(path=str(root))).records) == 3


def test_init_model_in_a_read_only_folder_is_one_line_naming_it(tmp_path):
    """The error named the temp folder lora-kit tried to make ('ro/.m.7_yuwllb.tmp'), not the read-only folder."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = _cli(tmp_path, "init-model", "ro/m", drop_root=True)
    finally:
        ro.chmod(0o755)
    _assert_one_line_error(proc, "init-model", "ro/m: cannot write in ro: permission denied (read-only folder)")
    assert list(ro.iterdir()) == []
