from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import cli, free_port


def test_keys_create_prints_only_the_key(tmp_path: Path) -> None:
    done = cli("keys", "create", "--name", "ci", home=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip().startswith("sk-unsloth-")
    assert len(done.stdout.strip().splitlines()) == 1
    listing = cli("keys", "list", home=tmp_path).stdout
    assert "ci" in listing and done.stdout.strip() not in listing


def test_listing_or_revoking_in_a_mistyped_data_dir_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "no-such-home"
    for command in (("keys", "list"), ("keys", "revoke", "ci")):
        done = cli(*command, "--data-dir", str(typo), home=tmp_path)
        assert done.returncode == 1 and "no keys database" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not typo.exists()


def test_version_and_help_text(tmp_path: Path) -> None:
    done = cli("--version", home=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("toolstudio ")
    helped = cli("run", "--help", home=tmp_path).stdout
    assert "enable_tools" in " ".join(helped.split())


def test_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = cli("run", "-p", str(port), home=tmp_path)
    assert done.returncode == 1
    assert "already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreadable_or_bogus_model_is_a_clear_error(tmp_path: Path) -> None:
    missing = cli("run", "--model", str(tmp_path / "nope.gguf"), "-p", str(free_port()), home=tmp_path)
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a model")
    done = cli("run", "--model", str(bogus), "-p", str(free_port()), home=tmp_path)
    assert done.returncode == 1 and "not a GGUF" in done.stderr and "Traceback" not in done.stderr


def test_truncated_model_fails_to_load_with_a_clear_error(tmp_path: Path) -> None:
    from runtime.model_source import embedded_model

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(embedded_model().read_bytes()[:5_000_000])
    done = cli("run", "--model", str(truncated), "-p", str(free_port()), home=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "could not load" in done.stderr


def test_offline_hub_model_names_what_to_pass_instead(tmp_path: Path) -> None:
    env_home = tmp_path / "hf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "run",
            "--model",
            "someone/some-model-GGUF:Q4_K_M",
            "-p",
            str(free_port()),
        ],
        env={**os.environ, "TOOLSTUDIO_HOME": str(tmp_path), "HF_HOME": str(env_home), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "local .gguf path" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--parallel", "0", "at least 1"),
        ("--ctx-size", "-5", "at least 1"),
        ("--max-queue", "-1", "at least 0"),
        ("--cache-ram", "-1", "at least 0"),
        ("--prefill-chunk", "lots", "whole number"),
    ],
)
def test_out_of_range_numbers_are_refused_up_front(tmp_path: Path, flag: str, value: str, needle: str) -> None:
    done = cli("run", flag, value, "-p", str(free_port()), home=tmp_path)
    assert done.returncode == 2 and needle in done.stderr and flag in done.stderr
    assert "Traceback" not in done.stderr
