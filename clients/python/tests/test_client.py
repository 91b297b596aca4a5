"""The Python client against a live cluster, such as the one tests/it/clients.rs starts
(``cargo test --test it clients::``): three nodes serving ``echo`` (each node's handler answers
{"echoed", "by": its service id, "key"}) and ``work`` ({"ms": N} answers after N ms;
{"fail": STATUS, "why": TEXT} fails so). The nodes are read from the environment:

    MESHAGE_NODES=http://127.0.0.1:8080,... python3 -m unittest discover -v -s clients/python/tests

and, for the tests of their own: MESHAGE_TOKEN_NODE and MESHAGE_TOKEN (a node that asks for that
token; MESHAGE_WORK_TOKEN is one it takes for ``work`` only), MESHAGE_TLS_NODE and
MESHAGE_TLS_CA (an https:// node and its CA) and MESHAGE_DEAD_NODE (a closed port). A test whose
variable is missing is skipped.
"""

import json
import os
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meshage_client import MeshClient, MeshError  # noqa: E402

ENV = os.environ
NODES = [u for u in ENV.get("MESHAGE_NODES", "").split(",") if u]


def needs(*names):
    missing = [n for n in names if not ENV.get(n)]
    return unittest.skipIf(missing, "{} not set".format(", ".join(missing)))


class Cluster(unittest.TestCase):
    def setUp(self):
        if not NODES:
            self.skipTest("MESHAGE_NODES is not set")
        self.clients = [MeshClient(url, timeout=10) for url in NODES]

    def error(self, call, *args, **kwargs):
        with self.assertRaises(MeshError) as caught:
            call(*args, **kwargs)
        return caught.exception

    def test_send_is_answered_by_the_owner_of_the_key_whichever_node_is_asked(self):
        for key in ["alice", "bob", "a key/with ü and %"]:
            owner = self.clients[0].locate("echo", key)
            self.assertEqual(owner["stream"], "echo")
            self.assertEqual(owner["partitionKey"], key)
            for client in self.clients:
                answer = client.send("echo", key, {"hello": "world", "n": [1, 2]})
                self.assertEqual(answer["echoed"], {"hello": "world", "n": [1, 2]})
                self.assertEqual(answer["key"], key)
                self.assertEqual(answer["by"], owner["serviceId"])
        # No message is {}, as in the original; any JSON value goes as it is, None as null.
        self.assertEqual(self.clients[0].send("echo", "k")["echoed"], {})
        answer = self.clients[0].send("echo", "k", [1, "two", None])
        self.assertEqual(answer["echoed"], [1, "two", None])
        self.assertIsNone(self.clients[0].send("echo", "k", None)["echoed"])

    def test_broadcast_reaches_every_service_and_services_lists_them(self):
        services = self.clients[0].services("echo")
        self.assertEqual(len(services), len(NODES))
        for s in services:
            self.assertEqual(s["stream"], "echo")
            self.assertEqual(s["endpoints"][0]["endpointType"], "http")
        self.assertGreater(len(self.clients[0].services()), len(services))
        self.assertEqual(self.clients[0].services("no-such-stream"), [])

        answers = self.clients[1].broadcast("echo", "everyone", {"ping": True})
        self.assertEqual(sorted(a["by"] for a in answers), sorted(s["id"] for s in services))
        for a in answers:
            self.assertEqual(a["echoed"], {"ping": True})
            self.assertEqual(a["key"], "everyone")

    def test_members_lists_every_node(self):
        members = self.clients[0].members()
        self.assertEqual(len([m for m in members if m["state"] == "live"]), len(NODES))
        self.assertEqual(len([m for m in members if m["self"]]), 1)

    def test_errors_are_mesh_errors_with_status_message_and_body(self):
        client = self.clients[0]
        e = self.error(client.send, "no-such-stream", "k", {})
        self.assertEqual(e.status, 404)
        self.assertEqual(e.kind, "not_found")
        self.assertEqual(e.message, "No matching services found for 'no-such-stream'")
        self.assertEqual(e.body, {"error": e.message})
        self.assertEqual(self.error(client.locate, "no-such-stream", "k").status, 404)
        self.assertEqual(self.error(client.broadcast, "no-such-stream", "k", {}).status, 404)

        # A handler's error keeps its status; a 4xx is bad input, a 5xx a failure.
        e = self.error(client.send, "work", "k", {"fail": 422, "why": "no such order"})
        self.assertEqual((e.status, e.kind, e.message), (422, "bad_input", "no such order"))
        e = self.error(client.send, "work", "k", {"fail": 503, "why": "busy"})
        self.assertEqual((e.status, e.kind), (503, "failed"))

        # Refused before sending: reserved streams, an empty stream, a bad URL.
        e = self.error(client.send, "broadcast", "k", {})
        self.assertEqual((e.status, e.kind), (0, "bad_input"))
        for not_json in [object(), float("nan"), b"bytes"]:
            self.assertEqual(self.error(client.send, "echo", "k", not_json).kind, "bad_input")
        self.assertEqual(self.error(client.locate, "", "k").kind, "bad_input")
        for bad in ["ftp://h:1", "http://", "http://h:1/api", "http://u:p@h:1", "h:port"]:
            self.assertEqual(self.error(MeshClient, bad).kind, "bad_input", bad)
        self.assertEqual(MeshClient("127.0.0.1:1/").url, "http://127.0.0.1:1")

    def test_a_call_longer_than_the_timeout_fails_as_unreachable_timed_out(self):
        # Long enough that a loaded machine answers the second call in time.
        quick = MeshClient(NODES[0], timeout=1)
        started = time.monotonic()
        e = self.error(quick.send, "work", "k", {"ms": 4000})
        took = time.monotonic() - started
        self.assertEqual((e.status, e.kind), (0, "unreachable"))
        self.assertTrue(e.timed_out, e.message)
        self.assertIn("no answer within 1 s", e.message)
        self.assertTrue(0.99 <= took < 3.5, "took {} s".format(took))
        # The same client carries on.
        self.assertEqual(quick.send("work", "k", {"ms": 1}), {"slept": 1})

    def test_answers_larger_than_max_response_bytes_are_refused(self):
        small = MeshClient(NODES[0], max_response_bytes=100)
        e = self.error(small.send, "echo", "k", {"big": "x" * 200})
        self.assertEqual((e.status, e.kind), (200, "failed"))
        self.assertIn("larger than max_response_bytes", e.message)

    def test_every_route_the_client_calls_is_described_with_the_fields_it_reads(self):
        with urllib.request.urlopen(NODES[0] + "/api/openapi.json", timeout=10) as response:
            description = json.load(response)
        routes = {
            "{} {}".format(method.upper(), path)
            for path, item in description["paths"].items()
            for method in item
        }
        for route in [
            "POST /api/{stream}/{partitionKey}",
            "POST /api/broadcast/{stream}/{partitionKey}",
            "GET /api/services",
            "GET /api/members",
            "GET /api/locate/{stream}/{partitionKey}",
        ]:
            self.assertIn(route, routes)
        schemas = description["components"]["schemas"]
        reads = {
            "Error": ["error"],
            "Service": ["id", "stream", "node", "endpoints"],
            "Locate": [
                "stream",
                "partitionKey",
                "serviceId",
                "node",
                "endpoint",
                "local",
                "services",
                "tableVersion",
            ],
            "BroadcastError": ["error", "serviceId", "status"],
            "Member": ["id", "endpoint", "state", "self", "services"],
        }
        for schema, fields in reads.items():
            for field in fields:
                self.assertIn(field, schemas[schema]["required"], "{}.{}".format(schema, field))

        def error_body(response):
            if "$ref" in response:
                response = description["components"]["responses"][response["$ref"].split("/")[-1]]
            return response["content"]["application/json"]["schema"]["$ref"]

        paths = description["paths"]
        for path, method in [
            ("/api/locate/{stream}/{partitionKey}", "get"),
            ("/api/broadcast/{stream}/{partitionKey}", "post"),
        ]:
            for status in ["401", "404"]:
                self.assertEqual(
                    error_body(paths[path][method]["responses"][status]),
                    "#/components/schemas/Error",
                )
        self.assertEqual(
            error_body(paths["/api/services"]["get"]["responses"]["401"]),
            "#/components/schemas/Error",
        )


class Alone(unittest.TestCase):
    """Nodes of their own: one that is down, one that asks for a token, one over HTTPS."""

    @needs("MESHAGE_DEAD_NODE")
    def test_a_node_that_cannot_be_reached_fails_as_unreachable(self):
        with self.assertRaises(MeshError) as caught:
            MeshClient(ENV["MESHAGE_DEAD_NODE"]).services()
        e = caught.exception
        self.assertEqual((e.status, e.kind, e.timed_out), (0, "unreachable", False))
        self.assertIn("refused", e.message)

    @needs("MESHAGE_TOKEN_NODE", "MESHAGE_TOKEN")
    def test_a_node_that_asks_for_a_token_answers_401_without_or_with_a_wrong_one(self):
        url, token = ENV["MESHAGE_TOKEN_NODE"], ENV["MESHAGE_TOKEN"]
        right = MeshClient(url, token=token)
        self.assertEqual(right.send("echo", "k", {"a": 1})["echoed"], {"a": 1})
        self.assertEqual(len(right.services("echo")), 1)
        for client in [MeshClient(url), MeshClient(url, token="wrong-token-0000")]:
            with self.assertRaises(MeshError) as caught:
                client.send("echo", "k", {})
            e = caught.exception
            self.assertEqual((e.status, e.kind), (401, "unauthorized"))
            self.assertIsInstance(e.body["error"], str)
            self.assertTrue(e.message)
        # A token for other streams only: 403, refused just the same.
        if ENV.get("MESHAGE_WORK_TOKEN"):
            limited = MeshClient(url, token=ENV["MESHAGE_WORK_TOKEN"])
            self.assertEqual(limited.send("work", "k", {"ms": 1}), {"slept": 1})
            with self.assertRaises(MeshError) as caught:
                limited.send("echo", "k", {})
            e = caught.exception
            self.assertEqual((e.status, e.kind), (403, "unauthorized"))
        # The token never shows when the client is printed.
        self.assertNotIn(token, repr(right))
        self.assertNotIn(token, str(right))
        with self.assertRaises(MeshError) as caught:
            MeshClient(url, token="bad\nsecret-token")
        self.assertEqual(caught.exception.kind, "bad_input")
        self.assertNotIn("secret-token", str(caught.exception))

    @needs("MESHAGE_TLS_NODE", "MESHAGE_TLS_CA")
    def test_an_https_node_verified_against_cafile(self):
        url = ENV["MESHAGE_TLS_NODE"]
        client = MeshClient(url, cafile=ENV["MESHAGE_TLS_CA"])
        self.assertTrue(client.url.startswith("https://"))
        self.assertEqual(client.send("echo", "k", {"tls": True})["echoed"], {"tls": True})
        # Without the CA, the system's bundle does not vouch for the node.
        with self.assertRaises(MeshError) as caught:
            MeshClient(url, timeout=5).services()
        self.assertEqual(caught.exception.kind, "unreachable")
        self.assertIn("CERTIFICATE_VERIFY_FAILED", caught.exception.message)
        with self.assertRaises(MeshError) as caught:
            MeshClient(url, cafile="/nonexistent/ca.pem")
        self.assertEqual(caught.exception.kind, "bad_input")


if __name__ == "__main__":
    unittest.main()
