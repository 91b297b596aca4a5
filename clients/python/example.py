"""Run with: MESHAGE_NODE=http://127.0.0.1:8080 python3 clients/python/example.py
against any node serving the `echo` stream (the README's two nodes, or `meshage demo`)."""
import json
import os

from meshage_client import MeshClient, MeshError

mesh = MeshClient(
    os.environ.get("MESHAGE_NODE", "http://127.0.0.1:8080"),
    token=os.environ.get("MESHAGE_TOKEN"),  # for nodes started with --api-tokens
    timeout=5,
)

owner = mesh.locate("echo", "alice")
print("alice belongs to", owner["serviceId"], "on", owner["endpoint"])
print("send:", json.dumps(mesh.send("echo", "alice", {"hello": "world"})))
print("broadcast:", len(mesh.broadcast("echo", "all", {"ping": True})), "answers")
print("services on echo:", " ".join(s["id"] for s in mesh.services("echo")))
try:
    mesh.send("nowhere", "alice", {})
except MeshError as e:
    print("error: {} {}: {}".format(e.status, e.kind, e.message))
