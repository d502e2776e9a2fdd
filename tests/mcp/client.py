"""A real MCP client (the official Python SDK) driven by the integration tests.

Reads a job (JSON) on stdin: how to reach the server, the protocol mode, and
steps. Prints one JSON line per step as it completes (flushed), so a test can
act between steps (e.g. change the pool after a subscription is live):

    {"server": {"stdio": {"command": "...", "args": [...], "env": {...}}}
               | {"http": {"url": "...", "token": "..." | null}},
     "mode": "legacy" | "auto",
     "steps": [{"op": "info"}, {"op": "tools"}, {"op": "call", "tool": "...", "args": {...}},
               {"op": "resources"}, {"op": "read", "uri": "..."},
               {"op": "subscribe", "uri": "..."}, {"op": "updated", "uri": "...", "timeout": 60},
               {"op": "listen", "uri": "...", "timeout": 60}]}

A connection that fails prints {"connect_error": "..."} and exits 0.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client, StdioServerParameters


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def run(job):
    heard = {"updates": [], "wake": anyio.Event()}

    async def on_message(message):
        if isinstance(message, Exception):
            return
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            heard["updates"].append(root.params.uri)
            heard["wake"].set()

    srv = job["server"]
    if "stdio" in srv:
        s = srv["stdio"]
        server = StdioServerParameters(command=s["command"], args=s.get("args", []), env=s.get("env"))
    else:
        h = srv["http"]
        headers = {"Authorization": f"Bearer {h['token']}"} if h.get("token") else {}
        server = srv_transport(h["url"], headers)
    try:
        async with Client(server, mode=job.get("mode", "legacy"), message_handler=on_message,
                          read_timeout_seconds=120) as client:
            out({"op": "connected", "ok": True})
            await steps(client, job["steps"], heard)
    except BaseException as e:  # noqa: BLE001 - the test reads the reason
        out({"connect_error": describe(e)})


async def steps(client, todo, heard):
    for step in todo:
        op = step["op"]
        try:
            if op == "info":
                out({"op": op, "ok": True, "protocolVersion": client.protocol_version,
                     "serverInfo": dump(client.server_info) if client.server_info else None,
                     "capabilities": dump(client.server_capabilities),
                     "instructions": client.instructions})
            elif op == "tools":
                r = await client.list_tools()
                out({"op": op, "ok": True, "tools": [dump(t) for t in r.tools]})
            elif op == "call":
                r = await client.call_tool(step["tool"], step.get("args", {}))
                out({"op": op, "tool": step["tool"], "ok": True, "isError": bool(r.is_error),
                     "text": "\n".join(c.text for c in r.content if getattr(c, "type", "") == "text"),
                     "structured": r.structured_content})
            elif op == "resources":
                r = await client.list_resources()
                t = await client.list_resource_templates()
                out({"op": op, "ok": True, "resources": [dump(x) for x in r.resources],
                     "templates": [dump(x) for x in t.resource_templates]})
            elif op == "read":
                r = await client.read_resource(step["uri"])
                out({"op": op, "ok": True, "contents": [dump(c) for c in r.contents]})
            elif op == "subscribe":
                await client.subscribe_resource(step["uri"])
                out({"op": op, "ok": True})
            elif op == "updated":
                with anyio.fail_after(step.get("timeout", 60)):
                    while step["uri"] not in heard["updates"]:
                        wake = heard["wake"]
                        await wake.wait()
                        if heard["wake"] is wake:
                            heard["wake"] = anyio.Event()
                out({"op": op, "ok": True, "uri": step["uri"]})
            elif op == "listen":
                async with client.listen(resource_subscriptions=[step["uri"]]) as sub:
                    out({"op": "listening", "ok": True,
                         "honored": dump(sub.honored) if sub.honored is not None else None})
                    with anyio.fail_after(step.get("timeout", 60)):
                        async for event in sub:
                            out({"op": op, "ok": True, "event": type(event).__name__,
                                 "uri": getattr(event, "uri", None)})
                            break
            else:
                out({"op": op, "ok": False, "error": f"unknown op {op}"})
        except Exception as e:  # noqa: BLE001 - the test reads the reason
            out({"op": op, "ok": False, "error": describe(e)})


def srv_transport(url, headers):
    from mcp.client.streamable_http import streamable_http_client

    return streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120)))


def describe(e):
    parts = []
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        parts.append(f"{type(x).__name__}: {x}")
        stack.extend(getattr(x, "exceptions", []) or [])
        if x.__cause__ is not None:
            stack.append(x.__cause__)
        if x.__context__ is not None:
            stack.append(x.__context__)
    return " | ".join(parts)


if __name__ == "__main__":
    anyio.run(run, json.loads(sys.stdin.read()))
