"""Outbound HTTP from a function, as its grants allow.

    from evoke import http

    r = http.get("https://api.example.com/users/1")
    user = r.json()
    http.post("https://hooks.example.com/x", json={"id": user["id"]})

The function's spec must grant the addresses it calls
(`grants = { http = ["https://api.example.com/*"] }`); anything else raises
`HttpError` with kind "denied" and the reason, which also goes to the
function's log. A request counts toward the invocation's timeout (kind
"timeout" when the time runs out), a response body is capped at 16 MiB
(kind "too-large"), and every request is logged with its status and
duration. A response with any status is a `Response`, not an error: check
`ok` or call `raise_for_status()`.

Requests are synchronous: each call returns when the whole response is in.
"""

import json as _json
from typing import Any, Dict, List, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import http as _wit

__all__ = ["HttpError", "Response", "delete", "get", "post", "put", "request"]

Headers = Union[Dict[str, str], List[Tuple[str, str]], None]

_KINDS = {
    _wit.Error_Denied: "denied",
    _wit.Error_Timeout: "timeout",
    _wit.Error_TooLarge: "too-large",
    _wit.Error_Invalid: "invalid",
    _wit.Error_Transport: "transport",
}


class HttpError(Exception):
    """A request that got no response: `kind` is one of "denied", "timeout",
    "too-large", "invalid", "transport", or "status" (raise_for_status)."""

    def __init__(self, kind: str, message: str, response: Optional["Response"] = None):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.message = message
        self.response = response


class Response:
    """A response: `status`, `headers` (names lower-case; a repeated header's
    values joined with ", "), `body` (bytes), `text()`, `json()`."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status = status
        self.header_list = headers
        self.headers: Dict[str, str] = {}
        for name, value in headers:
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def raise_for_status(self) -> "Response":
        if not self.ok:
            raise HttpError("status", f"the server answered {self.status}", self)
        return self

    def __repr__(self) -> str:
        return f"<Response {self.status}, {len(self.body)} bytes>"


def request(
    method: str,
    url: str,
    *,
    headers: Headers = None,
    body: Union[bytes, str, None] = None,
    json: Any = None,
) -> Response:
    """Sends one request; `json=` sends a value as JSON (and sets its
    content type), `body=` sends bytes or text as they are."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if json is not None:
        body = _json.dumps(json)
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("content-type", "application/json"))
    if isinstance(body, str):
        body = body.encode("utf-8")
    wanted = _wit.Request(method=method.upper(), url=url, headers=pairs, body=body or b"")
    try:
        r = _wit.send(wanted)
    except Err as e:
        kind = _KINDS.get(type(e.value), "transport")
        detail = getattr(e.value, "value", "")
        if kind == "too-large":
            detail = f"the response is larger than {detail} bytes"
        elif kind == "timeout":
            detail = "the invocation's time ran out"
        raise HttpError(kind, str(detail)) from None
    return Response(r.status, list(r.headers), bytes(r.body))


def get(url: str, *, headers: Headers = None) -> Response:
    return request("GET", url, headers=headers)


def post(url: str, body: Union[bytes, str, None] = None, *, json: Any = None, headers: Headers = None) -> Response:
    return request("POST", url, headers=headers, body=body, json=json)


def put(url: str, body: Union[bytes, str, None] = None, *, json: Any = None, headers: Headers = None) -> Response:
    return request("PUT", url, headers=headers, body=body, json=json)


def delete(url: str, *, headers: Headers = None) -> Response:
    return request("DELETE", url, headers=headers)
