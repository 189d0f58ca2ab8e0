"""Captioning a dataset: sidecars, metadata.jsonl, write modes, resume, editing, the CLI (no models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lora_kit.captioning import (
    Caption,
    CaptionOptions,
    EditRules,
    caption_dataset,
    create_captioner,
    edit_dataset,
    register,
    unregister,
)
from lora_kit.captioning.store import PROGRESS_FILE
from lora_kit.cli import main
from lora_kit.errors import UserError

REPO = Path(__file__).resolve().parent.parent
GOOD = ["10_sks star/blue_square-02.png", "10_sks star/red_circle_01.png", "2_cat/green cat.jpg", "2_cat/sub/tiny_dot.png"]


def make_dataset(root: Path) -> Path:
    """Four readable images (RGB png, RGBA png, jpg, nested), one corrupt png and a non-image file."""
    (root / "10_sks star").mkdir(parents=True)
    (root / "2_cat" / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "10_sks star/red_circle_01.png")
    Image.new("RGBA", (30, 40), (0, 0, 255, 128)).save(root / "10_sks star/blue_square-02.png")
    Image.new("RGB", (50, 50), "green").save(root / "2_cat/green cat.jpg")
    Image.new("RGB", (8, 8), "black").save(root / "2_cat/sub/tiny_dot.png")
    (root / "2_cat/broken.png").write_bytes(b"\x89PNG not really")
    (root / "2_cat/notes.md").write_text("not an image")
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "img")


def read_caption(root: Path, rel: str, ext: str = ".txt") -> str:
    return (root / rel).with_suffix(ext).read_text()


QUIET = dict(progress=False)


def test_template_writes_a_sidecar_per_readable_image(dataset, caplog):
    cap = create_captioner("template", template="{trigger}, {class}, {words}", trigger="ohwx")
    report = caption_dataset(dataset, cap, CaptionOptions(**QUIET))
    assert (report.total, report.captioned, report.unreadable, report.failed) == (5, 4, 1, 0)
    warned = [m for m in caplog.messages if "skipping unreadable image" in m]
    # Pillow names an in-memory file "<_io.BytesIO object at 0x...>": the warning names the file instead
    assert len(warned) == 1 and "BytesIO" not in warned[0] and warned[0].count("broken") == 2, warned
    assert read_caption(dataset, GOOD[1]) == "ohwx, sks star, red circle\n"
    assert read_caption(dataset, GOOD[0]) == "ohwx, sks star, blue square\n"
    assert read_caption(dataset, GOOD[2]) == "ohwx, cat, green cat\n"
    assert read_caption(dataset, GOOD[3]) == "ohwx, cat, tiny dot\n"  # nested: the class of 2_cat above it
    assert not (dataset / "2_cat/broken.txt").exists()
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1  # one warning for the bad file
    assert report.frequency == {"ohwx": 4, "cat": 2, "sks star": 2, "blue square": 1, "green cat": 1,
                                "red circle": 1, "tiny dot": 1}
    assert not (dataset / PROGRESS_FILE).exists()  # a complete run leaves no progress log
    assert not [p for p in dataset.rglob("*.tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert (dataset / GOOD[1]).with_suffix(".txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_filename_captioner_and_caption_extension(dataset):
    report = caption_dataset(dataset, create_captioner("filename"), CaptionOptions(extension="caption", **QUIET))
    assert report.captioned == 4
    assert read_caption(dataset, GOOD[1], ".caption") == "red circle\n"
    assert read_caption(dataset, GOOD[2], ".caption") == "green cat\n"
    assert not list(dataset.rglob("*.txt"))


def test_skip_append_overwrite(dataset):
    red = dataset / GOOD[1]
    red.with_suffix(".txt").write_text("my own caption, red\n")
    cap = create_captioner("filename")
    report = caption_dataset(dataset, cap, CaptionOptions(rules=EditRules(trigger="sks"), **QUIET))
    assert (report.captioned, report.skipped_existing) == (3, 1)
    assert red.with_suffix(".txt").read_text() == "my own caption, red\n"  # never overwritten by default

    caption_dataset(dataset, cap, CaptionOptions(rules=EditRules(trigger="sks"), mode="append", **QUIET))
    assert red.with_suffix(".txt").read_text() == "sks, my own caption, red, red circle\n"
    assert read_caption(dataset, GOOD[2]) == "sks, green cat\n"  # its own earlier caption: nothing to add

    report = caption_dataset(dataset, cap, CaptionOptions(mode="overwrite", **QUIET))
    assert report.captioned == 4
    assert red.with_suffix(".txt").read_text() == "red circle\n"


def test_images_sharing_a_sidecar_and_image_extensions_are_refused(dataset, caplog):
    Image.new("RGB", (9, 9), "red").save(dataset / "10_sks star/red_circle_01.jpg")
    report = caption_dataset(dataset, create_captioner("template", template="{stem}"), CaptionOptions(**QUIET))
    assert (report.total, report.captioned) == (5, 4)
    assert "would share one caption file" in caplog.text
    assert read_caption(dataset, GOOD[1]) == "red_circle_01\n"
    for ext in (".png", "jpg", ".jsonl"):
        with pytest.raises(UserError, match="caption extension"):
            CaptionOptions(extension=ext)


def test_dry_run_writes_nothing_and_shows_the_first_images(dataset):
    report = caption_dataset(dataset, create_captioner("filename"), CaptionOptions(dry_run=True, max_images=2, **QUIET))
    assert report.captions == {GOOD[0]: "blue square", GOOD[1]: "red circle"}
    assert report.remaining == 3  # the corrupt file is only found out when it is read
    assert not list(dataset.rglob("*.txt")) and not (dataset / PROGRESS_FILE).exists()


class CountingCaptioner:
    """A real backend that records its calls and can stop the run after k images (Ctrl-C)."""

    name = "counting"
    calls: Counter = Counter()
    stop_after: int | None = None

    def caption(self, items, images):
        out = []
        for item, image in zip(items, images):
            if self.stop_after is not None and sum(self.calls.values()) >= self.stop_after:
                raise KeyboardInterrupt
            self.calls[item.rel] += 1
            out.append(Caption(text=f"{item.stem}, {image.size[0]}x{image.size[1]}"))
        return out


@pytest.fixture
def counting():
    CountingCaptioner.calls = Counter()
    CountingCaptioner.stop_after = None
    yield CountingCaptioner()


@pytest.mark.parametrize("mode, output", [("skip", "txt"), ("overwrite", "txt"), ("append", "jsonl"), ("overwrite", "jsonl")])
def test_interrupted_run_resumes_without_captioning_anything_twice(dataset, counting, mode, output):
    for rel in GOOD:  # existing captions, so overwrite/append really redo work on a plain rerun
        (dataset / rel).with_suffix(".txt").write_text("old\n")
    if output == "jsonl":
        (dataset / "metadata.jsonl").write_text("".join(json.dumps({"file_name": r, "text": "old"}) + "\n" for r in GOOD))
    if mode == "skip":
        for rel in GOOD:
            (dataset / rel).with_suffix(".txt").unlink()
    options = CaptionOptions(mode=mode, output=output, batch_size=1, **QUIET)
    counting.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(dataset, counting, options)
    assert (dataset / PROGRESS_FILE).exists()
    counting.stop_after = None
    report = caption_dataset(dataset, counting, options)
    assert (report.resumed, report.captioned) == (2, 2)
    assert counting.calls == Counter({rel: 1 for rel in GOOD})  # every image exactly once over both runs
    assert not (dataset / PROGRESS_FILE).exists()
    expected = {"10_sks star/blue_square-02.png": "blue_square-02, 30x40", "2_cat/sub/tiny_dot.png": "tiny_dot, 8x8"}
    for rel, text in expected.items():
        text = f"old, {text}" if mode == "append" else text
        if output == "txt":
            assert read_caption(dataset, rel) == text + "\n"
        else:
            records = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
            assert {r["file_name"]: r["text"] for r in records}[rel] == text


def test_max_images_then_continue(dataset, counting):
    options = CaptionOptions(mode="overwrite", max_images=3, **QUIET)
    first = caption_dataset(dataset, counting, options)
    # sorted order: blue, red, broken (counts as attempted), green, tiny_dot
    assert (first.captioned, first.unreadable, first.remaining) == (2, 1, 2)
    second = caption_dataset(dataset, counting, CaptionOptions(mode="overwrite", **QUIET))
    assert (second.resumed, second.captioned, second.unreadable, second.remaining) == (2, 2, 1, 0)
    assert counting.calls == Counter({rel: 1 for rel in GOOD})


def test_other_settings_do_not_reuse_a_stale_progress_log(dataset, counting):
    counting.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(dataset, counting, CaptionOptions(mode="overwrite", batch_size=1, **QUIET))
    counting.stop_after = None
    report = caption_dataset(dataset, counting, CaptionOptions(mode="overwrite", rules=EditRules(trigger="x"), **QUIET))
    assert (report.resumed, report.captioned) == (0, 4)


def test_hard_kill_mid_jsonl_run_resumes(dataset, tmp_path):
    """os._exit skips every finally block, like a SIGKILL: only the progress log survives."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from lora_kit.captioning import Caption, CaptionOptions, caption_dataset
        class Cap:
            name = "logging"
            def caption(self, items, images):
                out = []
                for it in items:
                    with open({str(tmp_path / 'calls.log')!r}, "a") as f:
                        f.write(it.rel + "\\n")
                    n = sum(1 for _ in open({str(tmp_path / 'calls.log')!r}))
                    if os.environ.get("DIE_AT") and n > int(os.environ["DIE_AT"]):
                        os._exit(9)
                    out.append(Caption(text="x, " + it.stem))
                return out
        caption_dataset({str(dataset)!r}, Cap(), CaptionOptions(output="jsonl", batch_size=1, progress=False))
        """
    )
    env = {**os.environ, "DIE_AT": "2"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert not (dataset / "metadata.jsonl").exists() and (dataset / PROGRESS_FILE).exists()
    env.pop("DIE_AT")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert sorted(calls) == sorted(GOOD + [GOOD[2]])  # the third image was being captioned when killed
    records = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert {r["file_name"]: r["text"] for r in records} == {rel: "x, " + Path(rel).stem for rel in GOOD}


def test_metadata_jsonl_loads_with_datasets_imagefolder(dataset, tmp_path):
    (dataset / "metadata.jsonl").write_text(json.dumps({"file_name": GOOD[1], "text": "kept", "extra": 1}) + "\n")
    report = caption_dataset(dataset, create_captioner("template", template="{trigger}, {words}", trigger="sks"),
                             CaptionOptions(output="jsonl", **QUIET))
    assert (report.captioned, report.skipped_existing) == (3, 1)
    assert not list(dataset.rglob("*.txt"))
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(dataset), split="train", cache_dir=str(tmp_path / "hf"))
    got = {row["image"].size: row["text"] for row in ds}
    assert got == {(30, 40): "sks, blue square", (40, 30): "kept", (50, 50): "sks, green cat", (8, 8): "sks, tiny dot"}
    assert ds.num_rows == 4 and "extra" in ds.column_names


def test_edit_existing_sidecars_and_jsonl(dataset):
    (dataset / GOOD[1]).with_suffix(".txt").write_text("red_circle, Watermark, red_circle, shape\n")
    (dataset / GOOD[2]).with_suffix(".txt").write_text("sks, green cat\n")
    rules = EditRules(trigger="sks", remove=("watermark",), underscores_to_spaces=True)
    report = edit_dataset(dataset, CaptionOptions(rules=rules, **QUIET))
    assert (report.captioned, report.unchanged, report.skipped_existing) == (1, 1, 3)
    assert read_caption(dataset, GOOD[1]) == "sks, red circle, shape\n"
    assert not (dataset / GOOD[0]).with_suffix(".txt").exists()  # no caption: nothing created

    (dataset / "metadata.jsonl").write_text(json.dumps({"file_name": GOOD[3], "text": "dot, Dot"}) + "\n")
    edit_dataset(dataset, CaptionOptions(rules=EditRules(lowercase=True), output="jsonl", **QUIET))
    assert json.loads((dataset / "metadata.jsonl").read_text()) == {"file_name": GOOD[3], "text": "dot"}


def test_a_failing_image_is_counted_and_retried_later(dataset):
    @register("flaky")
    class Flaky:
        def caption(self, items, images):
            if any("green" in it.rel for it in items):
                raise RuntimeError("model exploded")
            return [Caption(text="ok") for _ in items]

    try:
        report = caption_dataset(dataset, Flaky(), CaptionOptions(batch_size=4, **QUIET))
        assert (report.captioned, report.failed) == (3, 1)
        assert not (dataset / GOOD[2]).with_suffix(".txt").exists()
        assert (dataset / PROGRESS_FILE).exists()  # kept: the run is not complete
    finally:
        unregister("flaky")


def test_a_broken_captioner_stops_the_run_instead_of_warning_forever(tmp_path):
    for i in range(15):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i:02d}.png")

    class Broken:
        name = "broken"
        calls = 0

        def caption(self, items, images):
            Broken.calls += 1
            raise RuntimeError("CUDA error: device-side assert")

    with pytest.raises(UserError, match="failed on the first 12 images"):
        caption_dataset(tmp_path, Broken(), CaptionOptions(batch_size=4, **QUIET))
    assert Broken.calls == 3 + 12  # three batches, each retried image by image, then it gave up
    assert not list(tmp_path.glob("*.txt"))


def test_cli_caption_edit_and_errors(dataset, capsys):
    assert main(["caption", str(dataset), "--captioner", "template", "--template", "{class}, {words}",
                 "--trigger", "ohwx", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "5 images -> .txt sidecars: 4 captioned, 0 skipped (caption exists), 1 unreadable, 0 failed" in out
    assert "       4  ohwx" in out
    assert read_caption(dataset, GOOD[1]) == "ohwx, sks star, red circle\n"

    assert main(["caption", str(dataset), "--edit", "--remove", "sks star,ohwx", "--replace", "red circle", "circle",
                 "--no-progress"]) == 0
    assert read_caption(dataset, GOOD[1]) == "circle\n"

    assert main(["caption", str(dataset), "--captioner", "template", "--template", "zzz", "--dry-run",
                 "--max-images", "1", "--overwrite", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{GOOD[0]}: zzz\ndry run: nothing written (1 would be captioned)" in out
    assert read_caption(dataset, GOOD[0]) == "blue square\n"

    assert main(["caption", str(dataset), "--captioner", "nope"]) == 2
    assert "unknown captioner 'nope'" in capsys.readouterr().err
    assert main(["caption", str(dataset / "missing"), "--captioner", "filename"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    image = next(p for p in dataset.rglob("*.png"))
    for args in (["--captioner", "filename"], ["--edit", "--remove", "circle"]):  # it said "not found"
        assert main(["caption", str(image), *args, "--no-progress"]) == 2
        assert f"{image} is a file; expected a dataset folder" in capsys.readouterr().err
    assert main(["caption", str(dataset), "--captioner", "template", "--template", "{klass}"]) == 2
    assert main(["caption", str(dataset), "--captioner", "clip-tags"]) == 2
    assert "--vocab" in capsys.readouterr().err


def test_registry_builds_a_backend_from_the_options_it_accepts():
    from lora_kit.captioning import available_captioners

    @register("fixed")
    class Fixed:
        def __init__(self, text: str = "default"):
            self.text = text

        def caption(self, items, images):
            return [Caption(text=self.text) for _ in items]

    try:
        cap = create_captioner("fixed", text="hello", model="ignored", top_k=None)
        assert (cap.name, cap.text, cap.config) == ("fixed", "hello", {"text": "hello"})
        assert {"template", "filename", "transformers", "tagger", "clip-tags", "fixed"} <= set(available_captioners())
    finally:
        unregister("fixed")
    assert "fixed" not in available_captioners()
    with pytest.raises(UserError, match="unknown captioner"):
        create_captioner("does-not-exist")
