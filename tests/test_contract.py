"""The API contract: schemathesis, every check, over every operation of /openapi.json, against a real server on
loopback (keys on, a data directory, the example corpus). Zero failures: what the document promises (bodies,
statuses, media types, constraints) is what the server does, and what it refuses is what the document forbids.

Bounded and reproducible: a fixed seed, a fixed number of examples per operation, no example database.
The limits that are settings are small here (``max_input_chars`` 80: no text the schema allows can exceed the
model's 256 tokens, so ``truncate: false`` never turns a valid request into a 413).
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.test_service_api import ServerThread, settings_for

DATA_KEY, ADMIN_KEY = "contract-data-key", "contract-admin-key"

# What the checks accept beyond their defaults, and why (schemathesis.toml; --config-file).
CONFIG = """
[auth.openapi.bearer]
bearer = "${QAEMBED_CONTRACT_KEY}"

# The limits that are settings (maxItems = --max_inputs, maxLength = --max_input_chars) refuse with 413, a
# rejection like 422. No 5xx, unlike the default: the service never answers bad input with one.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "422", "429"]

# Feedback must name stored documents (state, not shape): an unknown document_id is a 404, unknown shown_ids a 422.
[[operations]]
include-path = "/feedback"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


@pytest.fixture(scope="module")
def contract_server(exported_bundle, example_data, tmp_path_factory):
    srv = ServerThread(settings_for(exported_bundle, data_dir=tmp_path_factory.mktemp("data"), corpus=[example_data],
                                    api_key=DATA_KEY, admin_api_key=ADMIN_KEY, max_inputs=8, max_input_chars=80,
                                    max_top_k=10, max_body_bytes=1024 * 1024)).start()
    yield srv
    srv.stop()


def test_openapi_document_tells_the_truth(contract_server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
               f"{contract_server.url}/openapi.json", "--checks", "all", "--max-examples", "20", "--seed", "16",
               "--workers", "1", "--generation-database", "none", "--request-timeout", "60"]
    env = {**os.environ, "QAEMBED_CONTRACT_KEY": ADMIN_KEY}  # the admin key opens every route
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    summary = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0 and "No issues found" in result.stdout, summary
    # every operation was exercised
    operations = sum(len(ops) for ops in httpx.get(f"{contract_server.url}/openapi.json").json()["paths"].values())
    assert f"Tested: {operations}\n" in result.stdout and operations == 15, summary


def test_openapi_states_the_settings_and_real_bodies(contract_server):
    doc = httpx.get(f"{contract_server.url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and set(schemas["ErrorBody"]["properties"]) == {"error"}
    search = schemas["SearchRequest"]["properties"]
    assert search["top_k"]["maximum"] == 10 and search["top_k"]["type"] == "integer"
    queries = next(s for s in search["queries"]["anyOf"] if s.get("type") == "array")
    assert queries["minItems"] == 1 and queries["maxItems"] == 8 and queries["items"]["maxLength"] == 80
    dimensions = schemas["OpenAIEmbeddingRequest"]["properties"]["dimensions"]["anyOf"][0]
    assert dimensions["const"] == 384  # the loaded model's
    paths = doc["paths"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(paths["/feedback/export"]["get"]["responses"]["200"]["content"]) == ["application/x-ndjson"]
    search_responses = paths["/search"]["post"]["responses"]
    assert {"400", "401", "408", "413", "422", "429", "503"} <= set(search_responses)
    assert search_responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert search_responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResults")
    assert {"404", "409"} <= set(paths["/admin/reload"]["post"]["responses"])
    assert paths["/search"]["post"]["security"] == [{"bearer": []}] and "security" not in paths["/health"]["get"]
