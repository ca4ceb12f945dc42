"""`--mmproj`: the model really sees images, through every dialect.

The projector is tests/tiny_mmproj.py: random weights, so the model sees a deterministic
function of the pixels, not their meaning. What can be checked is exactly what matters for
the wiring: each image becomes 16 prompt positions, different pixels change the greedy
answer, the same pixels give the same answer in every dialect and through a URL, and a
repeated image is served from the slot's KV cache.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import openai
import pytest
from PIL import Image

from runtime.model_source import embedded_model
from tests.servers import CliServer, cli, free_port, one_line_error, toolstudio
from tests.tiny_mmproj import N_IMAGE_TOKENS, write_tiny_mmproj
from tests.unit.test_images import ImageHost

pytestmark = pytest.mark.integration

MAX_TOKENS = 16
QUESTION = "What is in this picture?"


def png(kind: str) -> bytes:
    if kind == "noise":
        image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    else:
        image = Image.new("RGB", (40, 30), kind)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliServer, str]]:
    home = tmp_path_factory.mktemp("vision-home")
    mmproj = write_tiny_mmproj(home / "tiny-mmproj.gguf")
    # --allow-private-image-urls: the URL test serves its image from 127.0.0.1.
    args = ("--threads", "2", "--parallel", "2", "--temp", "0", "--mmproj", str(mmproj), "--allow-private-image-urls")
    server = CliServer(home, args=args).start()
    key = toolstudio("keys", "create", data_dir=home).strip()
    yield server, key
    server.stop()


@pytest.fixture
def oai(vision: tuple[CliServer, str]) -> openai.OpenAI:
    server, key = vision
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def claude(vision: tuple[CliServer, str]) -> anthropic.Anthropic:
    server, key = vision
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def anthropic_question(image: bytes) -> list[Any]:
    """QUESTION about `image` as Anthropic messages (a base64 source)."""
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(image).decode()}
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image", "source": source}]}]


def chat(oai: openai.OpenAI, *images: str, stream: bool = False) -> tuple[str, Any, dict[str, str]]:
    """(answer, usage, response headers) for the question about `images` (URLs or data URIs)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    raw = oai.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        max_tokens=MAX_TOKENS,
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", completion.usage, dict(raw.headers)


def test_different_pixels_change_the_answer_and_the_same_pixels_repeat_it(oai: openai.OpenAI) -> None:
    red, headers = chat(oai, data_uri(png("red")))[::2]
    noise = chat(oai, data_uri(png("noise")))[0]
    blue = chat(oai, data_uri(png("blue")))[0]
    assert len({red, noise, blue}) == 3, (red, noise, blue)
    assert chat(oai, data_uri(png("red")))[0] == red
    assert "x-toolstudio-warning" not in headers  # the image was seen, not dropped


def test_each_image_takes_its_projector_positions(oai: openai.OpenAI) -> None:
    one = chat(oai, data_uri(png("red")))[1]
    two = chat(oai, data_uri(png("red")), data_uri(png("noise")))[1]
    assert two.prompt_tokens - one.prompt_tokens == N_IMAGE_TOKENS


def test_a_repeated_image_is_served_from_the_kv_cache(oai: openai.OpenAI) -> None:
    image = data_uri(png("green"))
    chat(oai, image)
    again = chat(oai, image)[1]
    # Everything but the last prompt token (always decoded for its logits) came from the cache.
    assert again.prompt_tokens_details.cached_tokens == again.prompt_tokens - 1
    other = chat(oai, data_uri(png("yellow")))[1]
    assert other.prompt_tokens_details.cached_tokens <= other.prompt_tokens - N_IMAGE_TOKENS - 1


def test_streaming_with_an_image_equals_the_whole_answer(oai: openai.OpenAI) -> None:
    image = data_uri(png("noise"))
    whole = chat(oai, image)[0]
    stream = oai.chat.completions.create(
        model="default",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": image}}]}
        ],
        max_tokens=MAX_TOKENS,
        stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole


def test_every_dialect_and_a_url_show_the_model_the_same_image(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    image = png("purple")
    expected = chat(oai, data_uri(image))[0]

    message = claude.messages.create(
        model="default",
        max_tokens=MAX_TOKENS,
        messages=anthropic_question(image),
    )
    assert "".join(b.text for b in message.content if b.type == "text") == expected

    response = oai.responses.create(
        model="default",
        max_output_tokens=MAX_TOKENS,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": QUESTION},
                    {"type": "input_image", "image_url": data_uri(image), "detail": "auto"},
                ],
            }
        ],
    )
    assert response.output_text == expected

    host = ImageHost()
    try:
        host.files["/purple.png"] = ("image/png", image)
        assert chat(oai, host.url("/purple.png"))[0] == expected
    finally:
        host.server.shutdown()


def test_count_tokens_includes_the_image(claude: anthropic.Anthropic, oai: openai.OpenAI) -> None:
    image = png("orange")
    usage = chat(oai, data_uri(image))[1]
    counted = claude.messages.count_tokens(
        model="default",
        messages=anthropic_question(image),
    )
    assert counted.input_tokens == usage.prompt_tokens


def test_the_reserved_marker_in_user_text_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="image marker"):
        oai.chat.completions.create(
            model="default",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "say <__media__>"},
                        {"type": "image_url", "image_url": {"url": data_uri(png("red"))}},
                    ],
                }
            ],
            max_tokens=4,
        )


# -- a projector that does not fit -------------------------------------------------------------------


def test_missing_mmproj_is_one_line(tmp_path: Path) -> None:
    done = cli("run", "--mmproj", str(tmp_path / "nope.gguf"), "-p", str(free_port()), home=tmp_path)
    assert "mmproj file not found" in one_line_error(done)


def test_projector_for_another_model_is_one_line(tmp_path: Path) -> None:
    mmproj = write_tiny_mmproj(tmp_path / "wide.gguf", n_embd=64)  # SmolLM2-135M embeds in 576
    done = cli("run", "--mmproj", str(mmproj), "-p", str(free_port()), home=tmp_path, timeout=120)
    line = one_line_error(done, logs=True)
    assert "could not load the projector" in line and str(mmproj) in line


# -- a Hub model whose repository publishes a projector ------------------------------------------


def fake_hub_cache(root: Path) -> dict[str, str]:
    """A Hugging Face cache holding `someone/tiny-vlm-GGUF` (the packaged model plus a tiny
    projector), laid out as huggingface_hub writes it; the environment that uses it offline."""
    repo = root / "hub" / "models--someone--tiny-vlm-GGUF"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "blobs").mkdir()
    os.symlink(embedded_model(), repo / "blobs" / "model")
    write_tiny_mmproj(repo / "blobs" / "projector")
    os.symlink("../../blobs/model", snapshot / "tiny-vlm-Q4_1.gguf")
    os.symlink("../../blobs/projector", snapshot / "mmproj-tiny-vlm-F16.gguf")
    return {"HF_HOME": str(root), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("flags", [(), ("--no-mmproj",)], ids=["auto", "no-mmproj"])
def test_a_hub_models_own_projector_is_found(tmp_path: Path, flags: tuple[str, ...]) -> None:
    env = fake_hub_cache(tmp_path / "hf")
    args = ("--threads", "2", "--parallel", "1", "--model", "someone/tiny-vlm-GGUF", *flags)
    server = CliServer(tmp_path, args=args, env=env).start()
    try:
        key = toolstudio("keys", "create", data_dir=tmp_path).strip()
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)
        headers = chat(client, data_uri(png("red")))[2]
    finally:
        server.stop()
    assert ("x-toolstudio-warning" in headers) == bool(flags)
    assert ("mmproj-tiny-vlm-F16.gguf" in server.log()) != bool(flags)
