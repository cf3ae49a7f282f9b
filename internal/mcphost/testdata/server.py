"""A small stdio MCP server using only the standard library (agentbox's test and example server).

Tools: echo and add behave; crash, hang, flood, malformed and memory misbehave on purpose, for the
gateway's fault tests. Runs on the nano tier (one request per run) and on the heavy tier.
"""
import json
import os
import sys
import time


def schema(**props):
    return {"type": "object", "properties": {k: {"type": v} for k, v in props.items()}}


TOOLS = [
    {"name": "echo", "description": "Return the message.", "inputSchema": schema(message="string")},
    {"name": "add", "description": "Add two numbers.", "inputSchema": schema(a="number", b="number")},
    {"name": "crash", "description": "Exit at once.", "inputSchema": schema()},
    {"name": "hang", "description": "Never answer.", "inputSchema": schema()},
    {"name": "flood", "description": "Write a line far over any cap.", "inputSchema": schema()},
    {"name": "malformed", "description": "Answer with broken JSON-RPC.", "inputSchema": schema()},
    {"name": "memory", "description": "Allocate until the memory limit.", "inputSchema": schema()},
    {"name": "probe", "description": "Report the sandbox: user, network interfaces, writable /srv.", "inputSchema": schema()},
]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def text(id, s):
    send({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": s}]}})


def call(id, name, args):
    if name == "echo":
        text(id, "echo: " + str(args.get("message", "")))
    elif name == "add":
        text(id, str(args.get("a", 0) + args.get("b", 0)))
    elif name == "crash":
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif name == "hang":
        time.sleep(3600)
    elif name == "flood":
        chunk = "x" * (1 << 20)
        for _ in range(64):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        sys.stdout.flush()
        text(id, "flooded")
    elif name == "malformed":
        sys.stdout.write("this is not JSON-RPC\n")
        sys.stdout.write('{"jsonrpc": "2.0", "id": \n')
        send({"jsonrpc": "2.0", "id": id, "result": "a result must be an object"})
    elif name == "memory":
        hog = []
        while True:
            hog.append(b"x" * (16 << 20))
    elif name == "probe":
        import socket
        try:
            open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.txt"), "w").close()
            writable = True
        except OSError:
            writable = False
        try:
            interfaces = sorted(n for _, n in socket.if_nameindex())
        except OSError:
            interfaces = []
        text(id, json.dumps({"uid": os.getuid(), "srv_writable": writable, "interfaces": interfaces}))
    else:
        send({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "unknown tool " + name}})


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        if not line.strip():
            continue
        msg = json.loads(line)
        id = msg.get("id")
        method = msg.get("method")
        if id is None or method is None:
            continue
        if method == "initialize":
            version = msg.get("params", {}).get("protocolVersion", "2025-06-18")
            send({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": version, "capabilities": {"tools": {}},
                                                          "serverInfo": {"name": "agentbox-test-server", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": id, "result": {"tools": TOOLS}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": id, "result": {}})
        elif method == "tools/call":
            params = msg.get("params", {})
            call(id, params.get("name"), params.get("arguments") or {})
        else:
            send({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found: " + method}})


main()
