"""A small stand-in for the HuggingFace hub, on 127.0.0.1, for tests (the real hub is unreachable).

It answers the requests huggingface_hub's download client makes, as found by reading its source
(huggingface_hub 2.4: `snapshot_download`, `hf_hub_download`, `HfApi.model_info`, `list_repo_tree`):

    GET  /api/models/{owner}/{name}/revision/{rev}    repo info: {"id", "sha", "siblings"}
    GET  /api/models/{owner}/{name}/tree/{rev}        file listing: [{"type", "path", "size", "oid"}]
    HEAD /{owner}/{name}/resolve/{rev}/{file}         ETag, X-Repo-Commit, Content-Length
    GET  /{owner}/{name}/resolve/{rev}/{file}         the bytes (a `Range: bytes=N-` header is honoured)

Errors carry the `X-Error-Code` header the client turns into RepositoryNotFoundError,
RevisionNotFoundError or EntryNotFoundError. Every request is logged in `server.requests` as
(method, path, query, Range header) so tests can see exactly what was asked for.

Faults, for tests of interrupted downloads: `server.cut[filename] = n` makes the next n GETs of
that file promise the rest of the file but send only the bytes before its middle, then hang up
(a resumed request that starts past the middle gets no byte at all).

Faults, for tests of hubs that hang (until the server stops):
- `server.silent = True`: every request is read, and never answered;
- `server.trickle = seconds`: every answer, status line and headers included, is sent one byte
  per `seconds`;
- `server.trickle_files[filename] = seconds`: a GET of that file gets its headers at once, then
  its body one byte per `seconds`.
"""

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HubRepo:
    """A model repository: branches and tags (refs) pointing to commits, each a {path: bytes}."""

    def __init__(self):
        self.commits = {}  # sha -> {path: bytes}
        self.refs = {}  # "main", "v1", ... -> sha

    def commit(self, files: dict, ref="main") -> str:
        blob = json.dumps(sorted((p, hashlib.sha1(b).hexdigest()) for p, b in files.items())).encode()
        sha = hashlib.sha1(blob + ref.encode()).hexdigest()  # 40 hex digits, like a git commit
        self.commits[sha] = dict(files)
        if ref is not None:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str):
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


def files_of_folder(folder, extra=None) -> dict:
    """{name: bytes} of every file in a checkpoint folder, plus `extra` files (decoys)."""
    files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    files.update(extra or {})
    return files


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = {}  # "owner/name" -> HubRepo
        self.requests = []  # (method, path, query, range)
        self.cut = {}  # filename -> how many more GETs of it to cut half way
        self.silent = False  # accept, read the request, never answer
        self.trickle = None  # seconds per byte of every answer
        self.trickle_files = {}  # filename -> seconds per byte of its body
        self.stopping = threading.Event()  # ends the answers that hang
        self.lock = threading.Lock()
        self.thread = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str) -> HubRepo:
        return self.repos.setdefault(repo_id, HubRepo())

    def log(self):
        with self.lock:
            return list(self.requests)

    def clear_log(self):
        with self.lock:
            self.requests.clear()

    def file_requests(self, method="GET"):
        """File names whose bytes (or, with method="HEAD", metadata) were asked for."""
        return [entry[1].rsplit("/", 1)[1] for entry in self.log() if entry[0] == method and "/resolve/" in entry[1]]

    def start(self):
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args):  # quiet: the server keeps its own log
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    # -- routing ---------------------------------------------------------------------------

    def _answer(self, head):
        url = urlsplit(self.path)
        path = unquote(url.path)
        with self.server.lock:
            self.server.requests.append((self.command, path, url.query, self.headers.get("Range")))
        if self.server.silent:
            self.server.stopping.wait()
            self.close_connection = True
            return
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
            return self._api(repo_id, kind, revision)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            return self._resolve(repo_id, revision, filename, head)
        return self._error(404, "EntryNotFound", "no such endpoint")

    def _lookup(self, repo_id, revision):
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None, None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None, None
        return repo, sha

    def _api(self, repo_id, kind, revision):
        repo, sha = self._lookup(repo_id, revision)
        if repo is None:
            return
        files = repo.commits[sha]
        if kind == "revision":
            body = {"id": repo_id, "sha": sha, "siblings": [{"rfilename": name} for name in sorted(files)]}
        else:
            body = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(files.items())
            ]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id, revision, filename, head):
        repo, sha = self._lookup(repo_id, revision)
        if repo is None:
            return
        files = repo.commits[sha]
        if filename not in files:
            return self._error(404, "EntryNotFound", f"{filename} not found", {"X-Repo-Commit": sha})
        data = files[filename]
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if head:
            return self._send(200, b"", {**headers, "Content-Length": str(len(data))})
        status, start = 200, 0
        asked = self.headers.get("Range", "")
        if asked.startswith("bytes=") and asked[6:].endswith("-"):
            start = int(asked[6:-1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        with self.server.lock:
            cut = self.server.cut.get(filename, 0) > 0
            if cut:
                self.server.cut[filename] -= 1
        delay = self.server.trickle_files.get(filename)
        if delay is not None:  # the headers at once, then the body a byte at a time
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            return self._trickle(body, delay)
        if cut:  # promise the rest of the file, send what lies before its middle, hang up
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[start: max(start, len(data) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, body, headers)

    # -- replies ---------------------------------------------------------------------------

    def _send(self, status, body, headers):
        socket_writer = self.wfile
        if self.server.trickle is not None:  # the whole answer, status line included, a byte at a time
            self.wfile = io.BytesIO()
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self.wfile is not socket_writer:
            answer, self.wfile = self.wfile.getvalue(), socket_writer
            self._trickle(answer, self.server.trickle)

    def _trickle(self, data, delay):
        """Send `data` one byte per `delay` seconds, until done, the client leaves or the server stops."""
        try:
            for i in range(len(data)):
                if self.server.stopping.wait(delay):
                    break
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
        except OSError:  # the client gave up
            pass
        self.close_connection = True

    def _error(self, status, code, message, headers=None):
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json", **(headers or {})})
