"""`lora-kit publish --hub` against a local stand-in for the Hub API: the real huggingface_hub client code
runs (create_repo, create_branch, validate-yaml, preupload, commit) and the server records what arrives.

The server answers every file as a "regular" (non-LFS) upload, so the commit payload carries the file
bytes themselves and the test can compare them with the assembled folder. No network is reached.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from test_publish import NAME, TOKEN, assert_clean, folder_bytes, make_run_dir

REPO = Path(__file__).resolve().parent.parent


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
        self._reply(404, {"error": "not part of the fake Hub"})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        record = {"method": "POST", "path": path, "auth": self.headers.get("Authorization"), "raw": raw}
        self.server.requests.append(record)
        if path == "/api/repos/create":
            body = json.loads(raw)
            record["json"] = body
            return self._reply(200, {"url": f"{self.server.url}/{body['organization']}/{body['name']}"})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if "/branch/" in path:
            return self._reply(200, {})
        if "/preupload/" in path:
            files = json.loads(raw)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in path:
            record["lines"] = [json.loads(line) for line in raw.splitlines() if line.strip()]
            return self._reply(200, {"commitUrl": f"{self.server.url}/me/star-lora/commit/{'a' * 40}",
                                     "commitOid": "a" * 40, "pullRequestUrl": None})
        return self._reply(404, {"error": f"unexpected {path}"})


@pytest.fixture
def fake_hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _publish(args: list[str], env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "PYTHONPATH": str(REPO), **env_extra})
    return subprocess.run([sys.executable, "-m", "lora_kit", "publish", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_upload_reaches_the_hub_api_with_the_folder(fake_hub, tmp_path):
    run = make_run_dir(tmp_path)
    env = {"HF_ENDPOINT": fake_hub.url, "HF_TOKEN": TOKEN}
    done = _publish([str(run), "--hub", "me/star-lora", "--private", "--revision", "v1"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"uploaded: {fake_hub.url}/me/star-lora/commit/" in done.stdout

    paths = [r["path"] for r in fake_hub.requests]
    assert paths == ["/api/repos/create", "/api/models/me/star-lora/branch/v1", "/api/validate-yaml",
                     "/api/models/me/star-lora/preupload/v1", "/api/models/me/star-lora/commit/v1"]
    create = fake_hub.requests[0]["json"]
    assert create == {"name": "star-lora", "organization": "me", "visibility": "private", "type": "model"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in fake_hub.requests)  # sent to the Hub, nowhere else

    commit = fake_hub.requests[-1]["lines"]
    assert commit[0]["key"] == "header" and commit[0]["value"]["summary"]
    uploaded = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in commit[1:]}
    folder = run / "publish" / "hub"
    assert uploaded == folder_bytes(folder)
    assert sorted(uploaded) == sorted(["README.md", f"{NAME}.safetensors", "pytorch_lora_weights.safetensors",
                                       "images/grid.png", "images/01-seed0.png", "images/02-seed0.png"])
    assert_clean(uploaded, tmp_path)
    assert TOKEN not in done.stdout + done.stderr


def test_upload_public_by_default_and_without_login(fake_hub, tmp_path):
    run = make_run_dir(tmp_path)
    done = _publish([str(run), "--hub", "me/star-lora"], {"HF_ENDPOINT": fake_hub.url, "HF_TOKEN": TOKEN}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "visibility" not in fake_hub.requests[0]["json"]  # the namespace default, not forced public
    assert [r["path"] for r in fake_hub.requests][-1] == "/api/models/me/star-lora/commit/main"

    fake_hub.requests.clear()
    no_token = _publish([str(run), "--hub", "me/star-lora"], {"HF_ENDPOINT": fake_hub.url}, tmp_path)
    assert no_token.returncode == 2 and "not logged in" in no_token.stderr
    assert fake_hub.requests == []


def test_offline_and_bad_repo_id_never_reach_the_server(fake_hub, tmp_path, monkeypatch, capsys):
    from lora_kit.cli import main

    # In this process huggingface_hub was imported with HF_HUB_OFFLINE=1 (tests/conftest.py).
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run_dir(tmp_path)
    assert main(["publish", str(run), "--hub", "me/star-lora"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert main(["publish", str(run), "--hub", "not a repo id"]) == 2
    assert "--hub" in capsys.readouterr().err
    assert fake_hub.requests == []
