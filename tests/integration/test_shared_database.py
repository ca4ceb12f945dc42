"""Two front-ends on one PostgreSQL database (`--database-url`), as docs/scale-out.md lays out:
two real `toolstudio run` processes on the packaged model share keys and stored Responses.

A key revoked through one front-end is refused by the other at the very next request (no key
cache), and a response created on one is continued on the other with `previous_response_id`.
The cluster is a real PostgreSQL started by tests/postgres.py (never skipped in CI).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from runtime.app import create_app
from runtime.config import EngineConfig, ServerConfig
from runtime.engine.fake import FakeEngine
from runtime.keys import KeyStore
from runtime.storage import open_storage
from tests.postgres import PostgresCluster, postgres_bin, postgres_cluster  # noqa: F401 (a fixture)
from tests.servers import CliServer, ThreadedServer, toolstudio

pytestmark = pytest.mark.integration

SERVER_ARGS = ("--threads", "1", "--parallel", "2", "--temp", "0", "--kernel-pool", "0")


@dataclasses.dataclass
class FrontEnds:
    url: str
    a: CliServer
    b: CliServer
    admin: str  # an admin key, created with the CLI on the shared database


@pytest.fixture(scope="module")
def front_ends(postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnds]:  # noqa: F811
    url = postgres_cluster.new_database()
    # Two data dirs (sessions and kernels are per front-end); one database. The first is
    # told with the flag, the second with the environment variable.
    a = CliServer(tmp_path_factory.mktemp("front-a"), args=(*SERVER_ARGS, "--database-url", url))
    b = CliServer(tmp_path_factory.mktemp("front-b"), args=SERVER_ARGS, env={"TOOLSTUDIO_DATABASE_URL": url})
    try:
        a.start()
        b.start()
        # The first front-end made the first key; the second found it and made none.
        assert "Created an API key" in a.log() and "Created an API key" not in b.log()
        admin = toolstudio("keys", "create", "--admin", "--name", "ops", "--database-url", url, data_dir=a.data_dir)
        yield FrontEnds(url, a, b, admin.strip())
    finally:
        a.stop()
        b.stop()


def oai(server: CliServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def test_a_key_revoked_on_one_front_end_is_refused_by_the_other_at_once(front_ends: FrontEnds) -> None:
    a, b = front_ends.a, front_ends.b
    admin = {"Authorization": f"Bearer {front_ends.admin}"}
    created = httpx.post(f"{a.base_url}/v1/keys", json={"name": "alice"}, headers=admin, timeout=30)
    assert created.status_code == 201, created.text
    alice = created.json()
    # Made on A, known to B at once: listed, and accepted.
    listed = httpx.get(f"{b.base_url}/v1/keys", headers=admin, timeout=30).json()["data"]
    assert [k["name"] for k in listed if k["id"] == alice["id"]] == ["alice"]
    assert [m.id for m in oai(b, alice["key"]).models.list()]

    revoked = httpx.delete(f"{a.base_url}/v1/keys/{alice['id']}", headers=admin, timeout=30)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError) as caught:
        oai(b, alice["key"]).models.list()  # the very next request, on the other front-end
    assert caught.value.status_code == 401
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=b.base_url, api_key=alice["key"], max_retries=0).messages.create(
            model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.AuthenticationError):
        oai(a, alice["key"]).models.list()


def test_a_key_revoked_with_the_cli_is_refused_by_both(front_ends: FrontEnds) -> None:
    key = toolstudio("keys", "create", "--name", "bob", "--database-url", front_ends.url, data_dir=Path("/nonexistent"))
    key = key.strip()
    for server in (front_ends.a, front_ends.b):
        assert [m.id for m in oai(server, key).models.list()]
    toolstudio("keys", "revoke", "bob", "--database-url", front_ends.url, data_dir=Path("/nonexistent"))
    for server in (front_ends.a, front_ends.b):
        with pytest.raises(openai.AuthenticationError):
            oai(server, key).models.list()


def test_previous_response_id_continues_on_the_other_front_end(front_ends: FrontEnds) -> None:
    a, b = front_ends.a, front_ends.b
    key = toolstudio("keys", "create", "--name", "carol", "--database-url", front_ends.url, data_dir=a.data_dir).strip()
    first = oai(a, key).responses.create(
        model="m", input="My name is Ada and I live in Paris.", max_output_tokens=8, temperature=0
    )
    assert first.status == "completed" or first.status == "incomplete"

    # B reads what A stored: the response and its input items.
    assert oai(b, key).responses.retrieve(first.id).model_dump() == first.model_dump()
    items = oai(b, key).responses.input_items.list(first.id)
    assert [item.type for item in items.data] == ["message"]

    question = "What is my name?"
    followed = oai(b, key).responses.create(
        model="m", input=question, previous_response_id=first.id, max_output_tokens=8, temperature=0
    )
    assert followed.previous_response_id == first.id
    # B's prompt was A's whole turn (its input and its answer) plus the question: the same
    # prompt, token for token, as sending that conversation explicitly.
    spelled_out = oai(b, key).responses.create(
        model="m",
        input=[
            {"role": "user", "content": "My name is Ada and I live in Paris."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": question},
        ],
        max_output_tokens=8,
        temperature=0,
    )
    alone = oai(b, key).responses.create(model="m", input=question, max_output_tokens=8, temperature=0)
    assert followed.usage is not None and spelled_out.usage is not None and alone.usage is not None
    assert followed.usage.input_tokens == spelled_out.usage.input_tokens > alone.usage.input_tokens + 10

    # And back: A continues the response B made.
    again = oai(a, key).responses.create(
        model="m", input="Thanks.", previous_response_id=followed.id, max_output_tokens=4, temperature=0
    )
    assert again.usage is not None and again.usage.input_tokens > followed.usage.input_tokens

    # Another key sees none of it, on either front-end.
    other = toolstudio("keys", "create", "--name", "dave", "--database-url", front_ends.url, data_dir=a.data_dir)
    with pytest.raises(openai.NotFoundError):
        oai(b, other.strip()).responses.retrieve(first.id)

    # Deleted on B: gone on A.
    oai(b, key).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        oai(a, key).responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        oai(a, key).responses.create(model="m", input="hi", previous_response_id=first.id, max_output_tokens=4)


# -- the database going away -----------------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of its own, for a test that stops and restarts it."""
    bin_dir = postgres_bin()
    if bin_dir is None:  # postgres_cluster (used above) already failed or skipped the module
        pytest.skip("PostgreSQL is not installed")
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()


def test_a_database_outage_is_a_503_and_the_server_recovers(own_cluster: PostgresCluster, tmp_path: Path) -> None:
    url = own_cluster.new_database()
    config = ServerConfig(
        engine=EngineConfig(model_path=tmp_path / "unused.gguf"), model_id="fake", data_dir=tmp_path, database_url=url
    )
    storage = open_storage(url, tmp_path)
    _, key = KeyStore(storage.keys).create("k")
    engine = FakeEngine()
    app = create_app(config, engine_factory=lambda: engine, storage=storage)
    headers = {"Authorization": f"Bearer {key}"}
    with ThreadedServer(app) as server:
        models = f"{server.base_url}/v1/models"
        assert httpx.get(models, headers=headers, timeout=10).status_code == 200
        own_cluster.stop_server()
        down = httpx.get(models, headers=headers, timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["type"] == "server_error"
        assert str(own_cluster.port) not in down.text  # clients never learn where the database is
        message = httpx.post(
            f"{server.base_url}/v1/messages",
            headers={"x-api-key": key},
            json={"model": "fake", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert message.status_code == 503 and message.json()["type"] == "error"
        own_cluster.start_server()
        statuses: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not statuses or statuses[-1] != 200):
            statuses.append(httpx.get(models, headers=headers, timeout=30).status_code)
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
