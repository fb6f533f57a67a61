"""evoke's Python SDK: write a function as one `handle(event)`.

A thin layer over the bindings componentize-py generates from evoke's WIT
world (`wit/function.wit`)::

    import evoke
    from evoke import WitWorld  # noqa: F401 -- the entry point componentize-py looks for

    @evoke.handler
    def handle(event: evoke.Event):
        name = event.json().get("name", "world")
        evoke.log.info(f"greeting {name}")
        return f"Hello, {name}!"

`handle` returns a `str` (text/plain), `bytes` (application/octet-stream),
a `dict` or `list` (JSON), `None` (an empty body) or an `Output` made with
`evoke.text`, `evoke.json` or `evoke.output` (to set the status and headers
a webhook or sync caller gets). An exception is a function error: its
message is the error, its traceback goes to the function's log, and evoke
retries it (async) and finally dead-letters it, as any function error.

State: keep it in module globals. componentize-py makes a new `WitWorld`
object for every call, so attributes set on `self` are gone by the next
event; module globals live as long as the instance (warm calls share them,
a new instance starts over).

Outbound HTTP: `evoke.http.get(url)`, `evoke.http.post(url, json=...)`, as
the function's grants allow (see `evoke/http.py`).
"""

import json as _json
import traceback as _traceback
from typing import Any, Callable, Dict, Optional, Union

from componentize_py_types import Err
from wit_world.imports import host as _host
from wit_world.imports import objects  # noqa: F401 -- re-exported: evoke.objects.get(...)
from wit_world.imports import types as _types

from . import http  # noqa: F401 -- evoke.http.get(...), as the function's grants allow

__all__ = [
    "Event",
    "Output",
    "WitWorld",
    "handler",
    "http",
    "init",
    "json",
    "log",
    "objects",
    "output",
    "text",
]


class Event:
    """One event, modelled on CloudEvents 1.0."""

    def __init__(self, raw: "_types.Event"):
        self.id: str = raw.id
        self.source: str = raw.source
        self.type: str = raw.type
        self.specversion: str = raw.specversion
        self.subject: Optional[str] = raw.subject
        self.time: Optional[str] = raw.time
        self.datacontenttype: Optional[str] = raw.datacontenttype
        #: The payload, as bytes.
        self.data: bytes = raw.data
        #: Extension attributes by (lower-case) name, e.g. `evoketrigger`.
        self.extensions: Dict[str, str] = dict(raw.extensions)
        self._json: Any = _UNSET

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, ..."""
        try:
            return int(self.extensions.get("evokeattempt", "1"))
        except ValueError:
            return 1

    def text(self) -> str:
        """The data as UTF-8 text."""
        return self.data.decode("utf-8")

    def json(self) -> Any:
        """The data parsed as JSON (parsed once, on the first call).

        An empty payload is `{}`, so `event.json().get(...)` works on events
        without data.
        """
        if self._json is _UNSET:
            self._json = _json.loads(self.data) if self.data.strip() else {}
        return self._json

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, source={self.source!r}, type={self.type!r}, {len(self.data)} bytes)"


_UNSET = object()

Output = _types.Output


def output(
    body: Union[bytes, str],
    content_type: Optional[str] = None,
    status: Optional[int] = None,
    headers: Optional[Dict[str, str]] = None,
) -> "_types.Output":
    """An output with everything set: `status` and `headers` reach HTTP callers."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return _types.Output(body, content_type, status, list((headers or {}).items()))


def text(body: str, status: Optional[int] = None, headers: Optional[Dict[str, str]] = None) -> "_types.Output":
    """A text/plain output."""
    return output(body, "text/plain; charset=utf-8", status, headers)


def json(value: Any, status: Optional[int] = None, headers: Optional[Dict[str, str]] = None) -> "_types.Output":
    """An application/json output."""
    return output(_json.dumps(value), "application/json", status, headers)


def _to_output(value: Any) -> "_types.Output":
    if isinstance(value, _types.Output):
        return value
    if value is None:
        return output(b"")
    if isinstance(value, str):
        return text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return output(bytes(value), "application/octet-stream")
    return json(value)


class _Log:
    """Lines in the function's log (`evoke logs FUNCTION`), tagged with the invocation."""

    def trace(self, message: str) -> None:
        _host.log(_host.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        _host.log(_host.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        _host.log(_host.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        _host.log(_host.Level.WARN, str(message))

    def error(self, message: str) -> None:
        _host.log(_host.Level.ERROR, str(message))


log = _Log()

_handler: Optional[Callable[[Event], Any]] = None
_init: Optional[Callable[[], None]] = None


def handler(fn: Callable[[Event], Any]) -> Callable[[Event], Any]:
    """Registers the function's event handler."""
    global _handler
    _handler = fn
    return fn


def init(fn: Callable[[], None]) -> Callable[[], None]:
    """Registers an initializer: run once per instance, before its first event."""
    global _init
    _init = fn
    return fn


def _failure(what: str, e: BaseException) -> Err:
    if isinstance(e, Err):
        return e
    lines = "".join(_traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
    log.error(f"{what} raised {type(e).__name__}:\n{lines}")
    return Err(f"{type(e).__name__}: {e}")


class WitWorld:
    """The component's exports; componentize-py calls these."""

    def init(self) -> None:
        if _init is None:
            return
        try:
            _init()
        except BaseException as e:  # noqa: BLE001 -- every failure is the function's error
            raise _failure("init", e) from None

    def handle(self, event: "_types.Event") -> "_types.Output":
        if _handler is None:
            raise Err("no handler: decorate your handle function with @evoke.handler")
        try:
            return _to_output(_handler(Event(event)))
        except BaseException as e:  # noqa: BLE001
            raise _failure("handle", e) from None

