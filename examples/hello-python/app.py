"""Greets the `name` in a JSON event: `{"name":"evoke"}` answers
`{"greeting": "Hello, evoke!", "greeted": 1, "attempt": 1}`.

`greeted` counts the events this instance has handled: module globals live
as long as the instance, so warm calls see it grow. `{"fail": "why"}` raises
an exception: a function error, retried and finally dead-lettered, with its
traceback in the function's log.
"""

import evoke
from evoke import WitWorld  # noqa: F401 -- the entry point componentize-py looks for

greeted = 0


@evoke.handler
def handle(event: evoke.Event):
    global greeted
    data = event.json()
    if "fail" in data:
        raise ValueError(f"asked to fail: {data['fail']}")
    name = data.get("name", "world")
    greeted += 1
    evoke.log.info(f"greeting {name} (attempt {event.attempt})")
    return evoke.json({"greeting": f"Hello, {name}!", "greeted": greeted, "attempt": event.attempt})
