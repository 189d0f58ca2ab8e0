"""A run folder belongs to one run: the lock, the run id, what a fresh run may overwrite, what resume picks.

- The main process holds `runlock.RunLock` from setup to the end of the run.
- Each run has an id (`run.json`, and the manifest of each of its checkpoints). A fresh run into a
  folder that holds another run's checkpoints or adapter files is refused unless `--resume` or
  `--overwrite`; resume and `keep_last` pruning only look at the checkpoints of the folder's run.
- `recipe.toml` and `run.json` are (re)written when the run has something to show, its first checkpoint
  or export, so a run that fails early leaves the previous run's files as they were.
- Stale temp files (a write killed mid-way) and `.partial` checkpoints are removed under the lock.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from lora_kit.adapters.io import DIFFUSERS_WEIGHT_NAME
from lora_kit.config.load import write_resolved
from lora_kit.errors import UserError
from lora_kit.summary import FILE as SUMMARY_FILE
from lora_kit.train import checkpoint as ckpt
from lora_kit.train.fingerprint import compare, data_fingerprint, recipe_fingerprint
from lora_kit.train.runlock import RunLock
from lora_kit.utils import atomic_write_json, remove_stale_temps

RUN_FILE = "run.json"
ADAPTER_FILES = (SUMMARY_FILE, DIFFUSERS_WEIGHT_NAME)


class RunFolder:
    def __init__(self, out: Path, resume: str | None = None, overwrite: bool = False, force_resume: bool = False):
        self.out, self.root = Path(out), Path(out) / "checkpoints"
        self.resume, self.overwrite, self.force_resume = resume, overwrite, force_resume
        self.lock = RunLock(self.out)
        self.run_id = ""
        self.resume_path: Path | None = None
        self.fingerprint: dict = {}
        self._shown = False

    # ------------------------------------------------------------------ before the model loads
    def open(self, recipe, accelerator) -> None:
        """Lock (main process), decide the run id and the checkpoint to resume, check its fingerprint.
        Every process reads the same files, so every process reaches the same decision."""
        say = accelerator.print
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{recipe.source or '<recipe>'}: output_dir: {self.out} is a file, expected a folder")
        if accelerator.is_main_process:
            self.lock.acquire(say)
            ckpt.clean_partials(self.root)
            for folder in (self.out, self.out / "exports", self.root):
                remove_stale_temps(folder)
        folder_run = self._folder_run_id()
        self.fingerprint = recipe_fingerprint(recipe, accelerator.num_processes)
        if self.resume:
            self.resume_path = ckpt.resolve_resume(self.resume, self.root, folder_run, say)
            if self.resume_path is None:
                # Starting again would replace a finished run's adapter files (or those of the run whose
                # checkpoints are all damaged): that takes --overwrite, as for a fresh run into the folder.
                held = self._previous_outputs(recipe)
                if held:
                    raise UserError(f"--resume {self.resume}: no checkpoint of this run to resume in {self.root}, and "
                                    f"{self.out} holds a run's files ({', '.join(held)}): pass --overwrite instead of "
                                    f"--resume to train it again from step 0 there, or --output-dir for a new folder (to extend a run "
                                    f"later, train it with save.state_at_end = true: its last step then writes a checkpoint)")
                say(f"--resume {self.resume}: no complete checkpoint in {self.root}, starting from step 0")
                self.run_id = folder_run or uuid.uuid4().hex[:12]
                return
            self.run_id = ckpt.run_id_of(self.resume_path) or folder_run or uuid.uuid4().hex[:12]
            saved = ckpt.read_state(self.resume_path).get("fingerprint")
            self._warn(compare(saved, self.fingerprint, self.resume_path.name, self.force_resume), say)
            return
        held = self._previous_outputs(recipe)
        if held and not self.overwrite:
            raise UserError(f"{self.out} already holds a run ({', '.join(held)}): pass --resume latest to "
                            f"continue it, --overwrite to start a new run there, or --output-dir for a new folder")
        if held:
            say(f"--overwrite: a new run in {self.out}; the previous run's checkpoints stay until you delete "
                f"them (never resumed or pruned by this run); its adapter files are replaced at the end")
        self.run_id = uuid.uuid4().hex[:12]

    def check_data(self, training_data, say=print) -> None:
        """After the dataset is built: add its manifest hash and compare it with the resumed checkpoint's."""
        data = data_fingerprint(training_data)
        self.fingerprint.update(data)
        if self.resume_path is not None:
            saved = ckpt.read_state(self.resume_path).get("fingerprint")
            self._warn(compare(saved, data, self.resume_path.name, self.force_resume), say)

    def _warn(self, changed: list[str], say) -> None:
        if changed:
            say(f"--force-resume: continuing although {', '.join(changed)} changed; the result will differ "
                f"from an uninterrupted run")

    def _folder_run_id(self) -> str | None:
        try:
            return json.loads((self.out / RUN_FILE).read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            return None

    def _previous_outputs(self, recipe) -> list[str]:
        held = []
        steps = [str(ckpt.step_of(p)) for p in ckpt.all_checkpoints(self.root)]
        if steps:
            held.append(f"checkpoints {', '.join(steps)}")
        exports = self.out / "exports"
        if exports.is_dir() and any(exports.iterdir()):
            held.append("exports/")
        for name in (*ADAPTER_FILES, f"{recipe.name}.safetensors"):
            if (self.out / name).exists():
                held.append(name)
        return held

    # ------------------------------------------------------------------ while it runs
    def first_output(self, recipe) -> None:
        """Main process, before the run's first checkpoint or export: its recipe.toml and run id."""
        if self._shown:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_resolved(recipe, self.out)
        atomic_write_json(self.out / RUN_FILE, {"run_id": self.run_id, "name": recipe.name})
        self._shown = True

    def close(self) -> None:
        self.lock.release()
