"""Greets the `name` in a JSON event: `{"name":"evoke"}` answers
`{"greeting": "Hello, evoke!", "greeted": 1, "attempt": 1}`.

`greeted` counts the events this instance has handled: module globals live
as long as the instance, so warm calls see it grow. `{"fail": "why"}` raises
an exception: a function error, retried and finally dead-lettered, with its
traceback in the function's log. `{"fetch": "https://..."}` calls that
address with `evoke.http` (allowed only by the function's
`grants = { http = [...] }`), POSTing `"body"` when it is set, and answers
`{"status": 200, "body": "..."}`.
"""

import evoke
from evoke import WitWorld  # noqa: F401 -- the entry point componentize-py looks for

greeted = 0


@evoke.handler
def handle(event: evoke.Event):
    global greeted
    data = event.json()
    if "fetch" in data:
        if "body" in data:
            r = evoke.http.post(data["fetch"], data["body"], headers={"content-type": "text/plain"})
        else:
            r = evoke.http.get(data["fetch"])
        return evoke.json({"status": r.status, "body": r.text()})
    if "fail" in data:
        raise ValueError(f"asked to fail: {data['fail']}")
    name = data.get("name", "world")
    greeted += 1
    evoke.log.info(f"greeting {name} (attempt {event.attempt})")
    return evoke.json({"greeting": f"Hello, {name}!", "greeted": greeted, "attempt": event.attempt})
