"""A small client of the HTTP API, for the `fota` CLI's server commands (they work from another machine).

    api = ApiClient.locate(data_dir, url=None, token=None)   # --server/FOTA_SERVER, else the local server's serve.json
    api.get("/api/devices", group="field")
    api.post("/api/campaigns/r42/pause")

The token comes from --token, else FOTA_TOKEN, else (the local shortcut) the operator token in the
local server's api_tokens.json. Standard library only: a CLI on an operator's laptop needs no extras.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from host_tools.errors import EXIT_ERROR, EXIT_NOT_FOUND, FotaError, UnavailableError

STATUS_HINTS = {
    401: "give --token (or FOTA_TOKEN); tokens are in the server's api_tokens.json",
    403: "this needs an operator token, not a read token",
    404: "fota devices / fota campaign list show what exists",
    409: "it exists already or is in another state: fota campaign list",
    422: "the server refused the request as given (see the reason)",
}


class ApiError(FotaError):
    """The API refused a request (its status and message) or could not be reached."""


class ApiClient:
    def __init__(self, url: str, token: str, *, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def locate(cls, data_dir: Path, *, url: str | None = None, token: str | None = None) -> ApiClient | None:
        """The API to use: --server/FOTA_SERVER, else the running local server's; None if there is none."""
        url = url or os.environ.get("FOTA_SERVER")
        info = data_dir / "serve.json"
        if url is None and info.exists():
            url = json.loads(info.read_text()).get("api")
        if url is None:
            return None
        token = token or os.environ.get("FOTA_TOKEN")
        tokens = data_dir / "api_tokens.json"
        if token is None and tokens.exists():
            token = next((t["token"] for t in json.loads(tokens.read_text())["tokens"] if t["role"] == "operator"), None)
        if token is None:
            raise ApiError(f"no API token for {url}", hint="give --token or set FOTA_TOKEN (api_tokens.json on the server)")
        return cls(url, token)

    def request(self, method: str, path: str, *, body: dict | None = None, data: bytes | None = None, **params) -> object:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(f"{self.url}{path}{'?' + query if query else ''}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail")
            except ValueError:
                detail = exc.reason
            if isinstance(detail, dict):
                detail = "; ".join([detail.get("message", "")] + detail.get("problems", []))
            elif isinstance(detail, list):
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            code = EXIT_NOT_FOUND if exc.code == 404 else EXIT_ERROR
            raise ApiError(f"{method} {path}: {exc.code} {detail}", hint=STATUS_HINTS.get(exc.code, f"the fota API at {self.url} refused it"),
                           exit_code=code) from exc
        except OSError as exc:
            raise UnavailableError(f"cannot reach the fota API at {self.url}: {getattr(exc, 'reason', exc)}",
                                   hint="is fota serve running? (--server URL)") from exc

    def get(self, path: str, **params) -> object:
        return self.request("GET", path, **params)

    def post(self, path: str, body: dict | None = None, *, data: bytes | None = None) -> object:
        return self.request("POST", path, body=body, data=data)

    def put(self, path: str, body: dict) -> object:
        return self.request("PUT", path, body=body)
