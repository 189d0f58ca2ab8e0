"""Dataset scanning: kohya N_name folders, captions, bad images, imagefolder and save_to_disk sources."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_kit.config.schema import DatasetConfig
from lora_kit.data.images import image_size as header_size
from lora_kit.data.sources import detect_kind, scan_dataset, tail_looks_complete
from lora_kit.errors import UserError


def _img(path: Path, size=(40, 20), color=(200, 30, 30), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def _noise_png(path: Path, size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def kohya(tmp_path) -> Path:
    root = tmp_path / "star_set"
    _img(root / "root.png", (30, 30))
    (root / "root.txt").write_text("root caption\n", encoding="utf-8")
    _img(root / "10_sks star" / "b.png", (40, 20))
    (root / "10_sks star" / "b.txt").write_text("\n  sks star, red  \nsecond line ignored\n", encoding="utf-8")
    _img(root / "10_sks star" / "a.jpg", (20, 40))  # no caption
    _img(root / "3_circle" / "c.png", (32, 32))
    (root / "3_circle" / "c.caption").write_text("a circle", encoding="utf-8")  # .caption fallback
    _img(root / "3_circle" / "e.png", (32, 32))
    (root / "3_circle" / "e.txt").write_text("   \n", encoding="utf-8")  # empty file = no caption
    _img(root / "0_unused" / "z.png")  # 0 repeats: not used
    _img(root / "plain" / "deep" / "p.png", (16, 48))  # not N_name: default repeats/class tokens
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    return root


def test_kohya_folders_repeats_class_tokens_captions(kohya):
    scan = scan_dataset(DatasetConfig(path=str(kohya), repeats=2, class_tokens="thing"))
    assert scan.kind == "folder"
    got = [(Path(r.path).name, r.folder, r.repeats, r.class_tokens, r.caption, r.size) for r in scan.records]
    assert got == [
        ("root.png", "star_set", 2, "thing", "root caption", (30, 30)),
        ("a.jpg", "10_sks star", 10, "sks star", None, (20, 40)),
        ("b.png", "10_sks star", 10, "sks star", "sks star, red", (40, 20)),
        ("c.png", "3_circle", 3, "circle", "a circle", (32, 32)),
        ("e.png", "3_circle", 3, "circle", None, (32, 32)),
        ("p.png", "plain", 2, "thing", None, (16, 48)),
    ]
    assert scan.folders == {
        "star_set": {"n_repeats": 2, "img_count": 1},
        "10_sks star": {"n_repeats": 10, "img_count": 2},
        "3_circle": {"n_repeats": 3, "img_count": 2},
        "plain": {"n_repeats": 2, "img_count": 1},
    }
    assert scan.missing_captions == 3 and scan.skipped.count == 0
    assert all(not r.is_reg for r in scan.records)


def test_caption_extension_preference(tmp_path):
    _img(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("from txt", encoding="utf-8")
    (tmp_path / "x.caption").write_text("from caption", encoding="utf-8")
    assert scan_dataset(DatasetConfig(path=str(tmp_path))).records[0].caption == "from txt"
    cfg = DatasetConfig(path=str(tmp_path), caption_extension=".caption")
    assert scan_dataset(cfg).records[0].caption == "from caption"


def test_reg_folder_and_max_images(kohya, tmp_path):
    reg = tmp_path / "reg"
    for i in range(3):
        _img(reg / f"r{i}.png")
    _img(reg / "2_a star" / "q.png")
    cfg = DatasetConfig(path=str(kohya), reg_path=str(reg), reg_repeats=4, reg_class_tokens="a star", max_images=2)
    scan = scan_dataset(cfg, reg=True)
    assert [(Path(r.path).name, r.repeats, r.class_tokens, r.is_reg) for r in scan.records] == [
        ("r0.png", 4, "a star", True), ("r1.png", 4, "a star", True), ("r2.png", 4, "a star", True),
        ("q.png", 2, "a star", True),
    ]  # max_images limits the training set only
    assert [Path(r.path).name for r in scan_dataset(cfg).records] == ["root.png", "a.jpg"]


@pytest.fixture
def bad_and_odd(tmp_path) -> Path:
    root = tmp_path / "odd"
    good = _noise_png(root / "good.png")
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image", encoding="utf-8")
    (root / "empty.png").write_bytes(b"")
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 12, 24))  # left half fully transparent
    rgba.save(root / "rgba.png")
    arr = (np.arange(16 * 8, dtype=np.uint16).reshape(8, 16) * 500)
    Image.fromarray(arr).save(root / "sixteen.png")
    Image.new("CMYK", (20, 12), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (10, 200, 10)).save(root / "rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 20), (10, 200, 10)).save(root / "rotated.png", exif=exif.tobytes())
    jpg = _img(root / "cut.jpg", (64, 64), (50, 60, 70), quality=90).read_bytes()
    (root / "cut.jpg").write_bytes(jpg[: len(jpg) - 40])  # truncated JPEG (no EOI marker)
    trailing = _img(root / "trailing.jpg", (16, 16)).read_bytes()
    (root / "trailing.jpg").write_bytes(trailing + b"appended-by-a-phone" * 10)  # valid, data after EOI
    return root


def test_bad_images_skipped_with_one_warning_each(bad_and_odd, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_kit.data.images"):
        scan = scan_dataset(DatasetConfig(path=str(bad_and_odd)))
    names = {Path(r.path).name: r for r in scan.records}
    assert sorted(names) == ["cmyk.jpg", "good.png", "rgba.png", "rotated.jpg", "rotated.png", "sixteen.png", "trailing.jpg"]
    assert sorted(Path(p).name for p in scan.skipped.skipped) == ["cut.jpg", "empty.png", "text.png", "truncated.png"]
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warned) == 4
    assert names["rotated.jpg"].size == (20, 40)  # EXIF orientation applied to the header size
    assert names["rotated.png"].size == (20, 40) and names["rotated.png"].load().size == (20, 40)

    rot = names["rotated.jpg"].load()
    assert rot.size == (20, 40) and rot.mode == "RGB"
    rgba = np.asarray(names["rgba.png"].load())
    assert rgba[0, 0].tolist() == [255, 255, 255] and rgba[0, 23].tolist() == [255, 0, 0]  # alpha on white
    six = names["sixteen.png"].load()
    assert six.mode == "RGB" and six.size == (16, 8)
    assert np.asarray(six).max() > 200  # scaled from 16 bits, not clipped to a white image
    assert np.asarray(six)[0, 0].tolist() == [0, 0, 0]
    cmyk = names["cmyk.jpg"].load()
    assert cmyk.mode == "RGB" and cmyk.size == (20, 12)


def test_no_usable_image_is_an_error(tmp_path):
    (tmp_path / "a.png").write_text("nope", encoding="utf-8")
    with pytest.raises(UserError, match="no usable image .*1 unreadable"):
        scan_dataset(DatasetConfig(path=str(tmp_path)))
    with pytest.raises(UserError, match="not a folder"):
        scan_dataset(DatasetConfig(path=str(tmp_path / "missing")))


def test_header_size_reads_no_pixels(bad_and_odd):
    # half of a PNG still has its header: a size read that decoded the pixels would raise here
    assert header_size(bad_and_odd / "truncated.png") == (64, 64)
    assert header_size(bad_and_odd / "rotated.png") == (20, 40)


def test_tail_check_markers():
    png_end = b"\x00\x00\x00\x00IEND\xaeB`\x82"
    assert tail_looks_complete(b"\x89PNG\r\n\x1a\n", b"xxxx" + png_end, 100)
    assert not tail_looks_complete(b"\x89PNG\r\n\x1a\n", b"IDATxxxxxxxxxxxx", 100)
    assert tail_looks_complete(b"\xff\xd8\xff\xe0", b"....\xff\xd9\x00\x00", 100)
    assert not tail_looks_complete(b"\xff\xd8\xff\xe0", b"........", 100)
    webp = b"RIFF" + (92).to_bytes(4, "little") + b"WEBP"
    assert tail_looks_complete(webp, b"", 100) and not tail_looks_complete(webp, b"", 99)


def test_imagefolder_jsonl_and_csv(tmp_path):
    root = tmp_path / "hub_style"
    _img(root / "images" / "one.png", (40, 20))
    _img(root / "two.png", (20, 20))
    rows = [{"file_name": "two.png", "text": "second"}, {"file_name": "images/one.png", "text": "first"},
            {"file_name": "gone.png", "text": "missing file"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert detect_kind(root) == "imagefolder"
    scan = scan_dataset(DatasetConfig(path=str(root), repeats=3))
    assert [(Path(r.path).name, r.caption, r.size, r.repeats, r.folder) for r in scan.records] == [
        ("one.png", "first", (40, 20), 3, "hub_style"), ("two.png", "second", (20, 20), 3, "hub_style"),
    ]
    assert scan.skipped.count == 1

    csv_root = tmp_path / "csv_style"
    _img(csv_root / "train" / "a.png")
    (csv_root / "train" / "metadata.csv").write_text("file_name,prompt\na.png,\"red, star\"\n", encoding="utf-8")
    scan = scan_dataset(DatasetConfig(path=str(csv_root), caption_column="prompt"))
    assert scan.kind == "imagefolder" and [r.caption for r in scan.records] == ["red, star"]
    with pytest.raises(UserError, match="no metadata"):
        scan_dataset(DatasetConfig(path=str(tmp_path / "hub_style" / "images"), kind="imagefolder"))


def test_save_to_disk_dataset(tmp_path):
    import datasets

    images = [Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (16, 32), (0, 0, 255))]
    features = datasets.Features({"img": datasets.Image(), "prompt": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": images, "prompt": ["red box", "blue box"]}, features=features)
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    assert detect_kind(path) == "hf_disk"
    cfg = DatasetConfig(path=str(path), image_column="img", caption_column="prompt", class_tokens="box")
    scan = scan_dataset(cfg)
    assert scan.kind == "hf_disk"
    assert [(r.row, r.caption, r.size, r.folder, r.class_tokens) for r in scan.records] == [
        (0, "red box", (40, 20), "saved", "box"), (1, "blue box", (16, 32), "saved", "box"),
    ]
    img = scan.records[1].load()
    assert img.size == (16, 32) and img.getpixel((3, 3)) == (0, 0, 255)
    assert scan.records[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="no column 'image'"):
        scan_dataset(DatasetConfig(path=str(path)))
