"""A small stand-in for the Hugging Face Hub's HTTP API, for tests of ``lorarank.hub``.

It answers what ``huggingface_hub`` asks when it reads a model repo, the way the Hub does:

- ``GET /api/models/{owner}/{name}[/revision/{rev}]`` (``?blobs=true``): the repo's ``sha``
  and ``siblings`` (``rfilename``, ``size``, ``blobId``, ``lfs``);
- ``HEAD|GET /{owner}/{name}/resolve/{rev}/{path}``: small files with ``ETag``,
  ``X-Repo-Commit`` and ``Content-Length``; ``.safetensors`` files (LFS) with a 302 to a "CDN"
  on another host name (``localhost`` instead of ``127.0.0.1``) carrying ``X-Linked-Etag``,
  ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub does;
- ``GET /cdn/{sha256}``: the bytes, with ``Range: bytes=a-b`` (and ``bytes=a-``) answered by
  206 and exactly those bytes, as the Hub's CDN does; every response's body is counted in
  ``hub.served`` (path, first byte, bytes sent), so a test can say how much was fetched;
- ``GET /api/models?author=&search=&filter=&limit=``: the model list (``id``, ``sha``,
  ``tags``, ``library_name``), paged with a ``Link: <...>; rel="next"`` header as the Hub does;
- errors with the Hub's ``X-Error-Code`` header: ``RepoNotFound`` (401, also for a private
  repo without the right token), ``RevisionNotFound`` and ``EntryNotFound`` (404),
  ``GatedRepo`` (401 on a gated repo's files without a token).

Repos are built from folders of real files (``/work/shared/samples``) or from
``{path: bytes}``; a repo with a history is a list of :class:`HubRepo`, one per commit, each
answering to its own ``refs`` (branches, tags) and its sha (the one with ``main`` is the
default branch); a file can also be *declared* with a size and no content (the 50 GB
weights test), and a repo can *stall* (send the headers of a download, then nothing).
Loopback only. Run it alone with ``python tests/hubserver.py [--port N]`` to try the app
against it (``HF_ENDPOINT=http://127.0.0.1:N``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
if not SAMPLES.is_dir():
    SAMPLES = Path("/work/shared/samples")

__all__ = ["HubRepo", "FakeHub", "SAMPLES", "sample_repos", "wide_adapter"]


@dataclass
class HubRepo:
    """One model repo at one commit (the branches and tags in ``refs`` point at it)."""

    files: dict[str, bytes] = field(default_factory=dict)
    declared: dict[str, int] = field(default_factory=dict)  # path -> size, no content
    understated: dict[str, int] = field(default_factory=dict)  # path -> a smaller size it claims
    private_token: str | None = None  # the token that may read it, if private
    gated: bool = False
    stall: bool = False  # downloads of LFS files send headers, then nothing
    refs: tuple[str, ...] = ("main",)
    ranges: bool = True  # False: a CDN that ignores Range and sends whole files (HTTP 200)
    tags: tuple[str, ...] = ("peft", "safetensors")

    @classmethod
    def from_folder(cls, folder: Path, *, prefix: str = "", **kwargs) -> "HubRepo":
        files = {f"{prefix}{p.relative_to(folder).as_posix()}": p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        return cls(files=files, **kwargs)

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        for path in sorted(self.declared):
            digest.update(path.encode() + b"\0" + str(self.declared[path]).encode())
        return digest.hexdigest()

    def size(self, path: str) -> int:
        """The size the API and the headers announce."""
        if path in self.understated:
            return self.understated[path]
        return self.declared[path] if path in self.declared else len(self.files[path])

    def sha256(self, path: str) -> str:
        if path in self.declared:
            return hashlib.sha256(f"declared:{path}:{self.declared[path]}".encode()).hexdigest()
        return hashlib.sha256(self.files[path]).hexdigest()

    def paths(self) -> list[str]:
        return sorted({*self.files, *self.declared})


def point_client_at(url: str, monkeypatch) -> None:
    """Point the real huggingface_hub client at ``url`` for one test: ``HF_ENDPOINT`` for
    subprocesses, the client's constants in-process (it reads ``HF_ENDPOINT`` once, at import),
    and no ``HF_TOKEN`` from the machine."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_TOKEN", raising=False)


def point_server_at(url: str, monkeypatch, cache: Path, **env: str) -> None:
    """Set what an app server started next (the ``fresh_server`` fixture) inherits so that it
    talks to the fake Hub at ``url``: ``HF_ENDPOINT``, a Hub cache of its own under ``cache``,
    no ``HF_TOKEN`` from the machine, and ``env`` (``LORARANK_HF_TIMEOUT="10"``)."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("LORARANK_HF_CACHE", str(cache))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _is_lfs(path: str) -> bool:
    return path.endswith((".safetensors", ".npz", ".bin", ".gguf"))


def sample_repos() -> dict[str, HubRepo]:
    """The test repos, from the real PEFT samples."""
    llama = SAMPLES / "peft_llama_r8"
    return {
        "lorarank-test/peft-llama-r8": HubRepo.from_folder(llama),
        "lorarank-test/adapters-in-folders": HubRepo(files={
            **HubRepo.from_folder(llama, prefix="llama-r8/").files,
            **HubRepo.from_folder(SAMPLES / "peft_gpt2_r4", prefix="gpt2-r4/").files,
            "README.md": b"# two adapters\n"}),
        "lorarank-test/private-adapter": HubRepo.from_folder(llama, private_token="hf_test_reader"),
        "lorarank-test/gated-adapter": HubRepo.from_folder(llama, gated=True),
        "lorarank-test/a-whole-model": HubRepo(
            tags=("transformers", "safetensors"),
            files={"config.json": b'{"model_type": "llama"}', "README.md": b"# a model\n"},
            declared={"model-00001-of-00002.safetensors": 4_900_000_000,
                      "model-00002-of-00002.safetensors": 1_100_000_000}),
        "lorarank-test/huge-adapter": HubRepo(
            files={"adapter_config.json": (llama / "adapter_config.json").read_bytes()},
            declared={"adapter_model.safetensors": 50_000_000_000}),
        # Its own bytes (one more byte of padding), so no cached blob of another repo serves it.
        "lorarank-test/stalled-adapter": HubRepo(stall=True, files={
            "adapter_config.json": (llama / "adapter_config.json").read_bytes(),
            "adapter_model.safetensors": (llama / "adapter_model.safetensors").read_bytes() + b" "}),
        # Announces 1000 bytes for its weights and sends all of them.
        "lorarank-test/understated-adapter": HubRepo(
            understated={"adapter_model.safetensors": 1000}, files={
                "adapter_config.json": (llama / "adapter_config.json").read_bytes(),
                "adapter_model.safetensors": (llama / "adapter_model.safetensors").read_bytes()
                + b"  "}),
        "lorarank-test/config-only": HubRepo(
            files={"adapter_config.json": (llama / "adapter_config.json").read_bytes()}),
        **run_repos(),
    }


def wide_adapter(*, width: int = 1024, rank: int = 16, layers: int = 4) -> dict[str, bytes]:
    """The files of a PEFT adapter of r = ``rank`` on ``width``-wide q_proj layers, written by
    safetensors (1024: 0.5 MB; 4096: 2 MB)."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        name = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[name + ".lora_A.weight"] = rng.standard_normal((rank, width)).astype(np.float32)
        tensors[name + ".lora_B.weight"] = rng.standard_normal((width, rank)).astype(np.float32)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"]}
    return {"adapter_model.safetensors": save(tensors, metadata={"format": "pt"}),
            "adapter_config.json": json.dumps(config).encode()}


def run_repos() -> dict[str, list[HubRepo] | HubRepo]:
    """Repos holding the six checkpoints of the real run in ``samples/checkpoints/run``.

    - ``run-revisions``: six commits, each with one checkpoint's files at the root (as
      ``Trainer(push_to_hub=True, hub_strategy="every_save")`` pushes them), tagged
      ``step-15`` ... ``step-90``; the last is also ``main``.
    - ``run-revisions-no-state``: three commits without ``trainer_state.json`` (tags ``v1``,
      ``v2``, ``v3`` = ``main``) holding checkpoints 90, 15 and 45, so step order and the
      order given differ.
    - ``run-checkpoints``: one commit with every ``checkpoint-<step>/`` folder (as
      ``hub_strategy="all_checkpoints"`` pushes them), also under ``outputs/``.
    """
    run = SAMPLES / "checkpoints" / "run"
    if not run.is_dir():
        return {}
    steps = sorted(int(p.name.split("-")[1]) for p in run.iterdir() if p.name.startswith("checkpoint-"))
    revisions = [HubRepo.from_folder(run / f"checkpoint-{s}",
                                     refs=(f"step-{s}",) + (("main",) if s == steps[-1] else ()))
                 for s in steps]

    def no_state(step: int, refs: tuple[str, ...]) -> HubRepo:
        repo = HubRepo.from_folder(run / f"checkpoint-{step}", refs=refs)
        repo.files.pop("trainer_state.json", None)
        return repo

    return {
        "lorarank-test/run-revisions": revisions,
        "lorarank-test/run-revisions-no-state": [no_state(90, ("v1",)), no_state(15, ("v2",)),
                                                 no_state(45, ("v3", "main"))],
        "lorarank-test/run-checkpoints": HubRepo(files={
            **HubRepo.from_folder(run).files, **HubRepo.from_folder(run, prefix="outputs/").files,
            "README.md": b"# a run pushed with hub_strategy=all_checkpoints\n"}),
    }


def _snapshots(entry: "HubRepo | list[HubRepo]") -> list[HubRepo]:
    return list(entry) if isinstance(entry, (list, tuple)) else [entry]


class FakeHub:
    """The server: ``with FakeHub(repos) as hub: os.environ["HF_ENDPOINT"] = hub.url``.

    ``hub.requests`` lists ``(method, path)`` of every request, to check what was fetched.
    """

    def __init__(self, repos: dict[str, HubRepo | list[HubRepo]] | None = None, *, port: int = 0) -> None:
        self.repos = sample_repos() if repos is None else repos
        self.requests: list[tuple[str, str]] = []
        self.served: list[tuple[str, int, int]] = []  # (file path, first byte, bytes sent)
        self._served_lock = threading.Lock()
        self.ranges: list[tuple[str, str | None]] = []  # (path, Range header) of every request
        self.closing = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def bytes_served(self) -> int:
        """Bytes of file content sent so far (API documents not counted)."""
        with self._served_lock:
            return sum(n for _, _, n in self.served)

    def _count(self, path: str, start: int, n: int) -> None:
        with self._served_lock:
            self.served.append((path, start, n))

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------------------- answers
    def _send(self, h, status: int, body: bytes = b"", *, head: bool = False,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)) if "Content-Length" not in (headers or {})
                      else headers["Content-Length"])
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str, message: str, *, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(h, status, body, head=head,
                   headers={"Content-Type": "application/json", "X-Error-Code": code,
                            "X-Error-Message": message})

    def _allowed(self, h, repo: HubRepo) -> bool:
        if repo.private_token is None:
            return True
        return h.headers.get("Authorization", "") == f"Bearer {repo.private_token}"

    def _handle(self, h, *, head: bool) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        self.requests.append((h.command, path))
        self.ranges.append((path, h.headers.get("Range")))
        segs = path.strip("/").split("/")
        if segs == ["api", "models"]:
            return self._list(h, parts.query, head=head)
        if segs[:2] == ["api", "models"] and len(segs) >= 4:
            return self._info(h, "/".join(segs[2:4]), segs[4:], head=head)
        if segs[0] == "cdn" and len(segs) == 2:
            return self._cdn(h, segs[1], head=head, prefer=parse_qs(parts.query).get("repo", [""])[0])
        if len(segs) >= 5 and segs[2] == "resolve":
            return self._resolve(h, "/".join(segs[:2]), segs[3], "/".join(segs[4:]), head=head)
        self._error(h, 404, "NotFound", "no such endpoint", head=head)

    def _repo(self, h, repo_id: str, rev: str | None, *, head: bool) -> HubRepo | None:
        """The repo's commit that ``rev`` names (None: the default branch), or an error sent."""
        entry = self.repos.get(repo_id)
        if entry is None or not self._allowed(h, _snapshots(entry)[0]):
            self._error(h, 401, "RepoNotFound", "Repository not found", head=head)
            return None
        snaps = _snapshots(entry)
        for repo in snaps:
            if (rev is None and "main" in repo.refs) or rev in repo.refs or rev == repo.sha:
                return repo
        if rev is None:
            return snaps[-1]
        self._error(h, 404, "RevisionNotFound", "Invalid rev id: " + rev, head=head)
        return None

    def _info(self, h, repo_id: str, rest: list[str], *, head: bool) -> None:
        if rest and rest[:1] != ["revision"]:
            return self._error(h, 404, "NotFound", "no such endpoint", head=head)
        repo = self._repo(h, repo_id, "/".join(rest[1:]) if rest else None, head=head)
        if repo is None:
            return
        siblings = []
        for p in repo.paths():
            blob = (hashlib.sha1(b"blob %d\0" % len(repo.files[p]) + repo.files[p]).hexdigest()
                    if p in repo.files and not _is_lfs(p) else hashlib.sha1(repo.sha256(p).encode()).hexdigest())
            entry = {"rfilename": p, "size": repo.size(p), "blobId": blob}
            if _is_lfs(p):
                entry["lfs"] = {"sha256": repo.sha256(p), "size": repo.size(p), "pointerSize": 134}
            siblings.append(entry)
        doc = {"_id": repo.sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
               "sha": repo.sha, "private": repo.private_token is not None,
               "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0,
               "likes": 0, "tags": list(repo.tags), "library_name": "peft" if "peft" in repo.tags else None,
               "lastModified": "2026-12-01T00:00:00.000Z",
               "createdAt": "2026-12-01T00:00:00.000Z", "siblings": siblings}
        self._send(h, 200, json.dumps(doc).encode(), head=head,
                   headers={"Content-Type": "application/json"})

    #: Models per page of the listing (small, so that tests see the paging).
    PAGE = 3

    def _list(self, h, query: str, *, head: bool) -> None:
        """``/api/models``: public repos (and private ones the request's token may read) filtered as the Hub does (author, search in the name,
        every ``filter`` a tag), in name order, paged by ``PAGE`` with a ``Link`` header."""
        from urllib.parse import parse_qs, urlencode

        q = parse_qs(query)
        author = (q.get("author") or [None])[0]
        search = (q.get("search") or [None])[0]
        filters = q.get("filter") or []
        limit = int((q.get("limit") or ["1000"])[0])
        offset = int((q.get("offset") or ["0"])[0])
        found = []
        for repo_id, entry in sorted(self.repos.items()):
            snap = _snapshots(entry)[-1]
            for candidate in _snapshots(entry):
                if "main" in candidate.refs:
                    snap = candidate
            if snap.private_token is not None and not self._allowed(h, snap):
                continue  # the Hub lists a private repo only to a token that may read it
            if author and repo_id.split("/")[0] != author:
                continue
            if search and search.lower() not in repo_id.lower():
                continue
            if any(f not in snap.tags for f in filters):
                continue
            found.append({"_id": snap.sha[:24], "id": repo_id, "modelId": repo_id, "sha": snap.sha,
                          "tags": list(snap.tags), "private": snap.private_token is not None,
                          "downloads": 0, "likes": 0,
                          "library_name": "peft" if "peft" in snap.tags else None,
                          "createdAt": "2026-12-01T00:00:00.000Z"})
        page = found[offset:offset + min(self.PAGE, limit)]
        headers = {"Content-Type": "application/json"}
        if offset + len(page) < len(found) and len(page) < limit:
            nxt = dict(q, offset=[str(offset + len(page))])
            headers["Link"] = f'<{self.url}/api/models?{urlencode(nxt, doseq=True)}>; rel="next"'
        self._send(h, 200, json.dumps(page).encode(), head=head, headers=headers)

    def _resolve(self, h, repo_id: str, rev: str, path: str, *, head: bool) -> None:
        repo = self._repo(h, repo_id, rev, head=head)
        if repo is None:
            return
        if repo.gated and "Authorization" not in h.headers:
            return self._error(h, 401, "GatedRepo", "Access to model is restricted", head=head)
        if path not in repo.files and path not in repo.declared:
            return self._error(h, 404, "EntryNotFound", "Entry not found", head=head)
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if _is_lfs(path):
            sha = repo.sha256(path)
            location = f"http://localhost:{self.port}/cdn/{sha}?repo={repo_id}"
            return self._send(h, 302, b"", head=head, headers={
                **common, "Location": location, "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(repo.size(path)), "ETag": f'"{sha[:40]}"'})
        data = repo.files[path]
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if not head:
            self._count(path, 0, len(data))
        self._send(h, 200, data, head=head,
                   headers={**common, "ETag": f'"{etag}"', "Content-Type": "text/plain"})

    def _cdn(self, h, sha: str, *, head: bool, prefer: str = "") -> None:
        # the repo the redirect named first (two repos may hold the same bytes, served differently)
        order = sorted(self.repos.items(), key=lambda item: item[0] != prefer)
        for repo_id, entry in order:
            for repo in _snapshots(entry):
                for p in repo.paths():
                    if repo.sha256(p) == sha:
                        return self._serve_blob(h, repo, p, head=head)
        self._error(h, 404, "NotFound", "no such blob", head=head)

    def _serve_blob(self, h, repo: HubRepo, path: str, *, head: bool) -> None:
        size = repo.size(path)
        if repo.stall or path in repo.declared:
            # Headers of the whole file (or of the range asked for), then nothing until the
            # server closes.
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", "").strip())
            if match and repo.ranges:
                start, stop = int(match.group(1)), min(int(match.group(2)) + 1, size)
                h.send_response(206)
                h.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
                h.send_header("Content-Length", str(stop - start))
            else:
                h.send_response(200)
                h.send_header("Content-Length", str(size))
            h.end_headers()
            if not head:
                h.wfile.flush()
                self.closing.wait(120)
            return
        data = repo.files[path]
        start, stop = 0, len(data)
        rng = h.headers.get("Range", "")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        ranged = bool(match) and repo.ranges
        if ranged:
            start = min(int(match.group(1)), len(data))
            stop = min(int(match.group(2)) + 1, len(data)) if match.group(2) else len(data)
            if start >= len(data) or stop <= start:
                return self._send(h, 416, b"", head=head,
                                  headers={"Content-Range": f"bytes */{len(data)}"})
        body = data[start:stop]
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{repo.sha256(path)}"',
                   "Accept-Ranges": "bytes"}
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if not head:
            self._count(path, start, len(body))
        self._send(h, 206 if ranged else 200, body, head=head, headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with FakeHub(port=args.port) as hub:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
