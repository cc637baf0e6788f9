"""Peak memory and step time of LoRA on 4-bit NF4 base weights vs LoRA on 16-bit base weights.

One training step = forward + backward + AdamW step on a batch of random tokens (LM loss), on a
random-init Qwen3 of the chosen shape, loaded through ``a2tgpo_lab.models.load_model_and_tokenizer``
exactly as a training run loads it. Each variant runs in its own subprocess, so the memory of one
cannot hide in the other's peak.

    python benchmarks/bench_quant_lora.py                        # small model, CPU or GPU
    python benchmarks/bench_quant_lora.py --shape qwen3-1.7b --batch 4 --seq 512   # on a GPU

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (everything the step keeps on the GPU); on CPU
the process's peak resident set size (VmHWM) minus its RSS after imports; "loaded" is the RSS
increase once the model is loaded (GPU: memory allocated after loading). On a CPU
the 16-bit variant runs in float32 (the loader's policy: bf16 is GPU-only), and 4-bit is for memory
only: bitsandbytes dequantizes every weight to float32 on every matmul, so the step does the same
float32 arithmetic plus the dequantization. ``--threads 1`` gives steadier times on a shared CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

# name: (hidden, layers, heads, kv_heads, intermediate, vocab)
SHAPES = {
    "small": (512, 8, 8, 8, 1536, 32_000),
    "qwen3-0.6b": (1024, 28, 16, 8, 3072, 151_936),
    "qwen3-1.7b": (2048, 28, 16, 8, 6144, 151_936),
}
VARIANTS = ("16-bit+LoRA", "4-bit NF4+LoRA")


def rss_mib(field: str = "VmHWM") -> float:
    """Resident memory of this process from /proc (Linux): ``VmRSS`` now, ``VmHWM`` its peak so far.

    Elsewhere, the peak from getrusage (KiB on Linux, bytes on macOS) stands in for both."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
        return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10


def build_random_model(directory: Path, shape: str) -> None:
    """Save a random-init Qwen3 of ``shape`` in bf16 (the usual checkpoint dtype) with a chat tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from a2tgpo_lab.tiny import build_word_tokenizer

    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape]
    config = Qwen3Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=128 if hidden >= 1024
                         else hidden // heads, intermediate_size=intermediate, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    # the loader only needs a tokenizer with a chat template; inputs are random ids over the model's vocabulary
    build_word_tokenizer(["benchmark"]).save_pretrained(directory)


def run_variant(model_dir: str, variant: str, batch: int, seq: int, steps: int, lora_r: int,
                gradient_checkpointing: bool, threads: int) -> dict:
    """Load one variant, run 1 warm-up step and ``steps`` timed steps; return its measurements."""
    import bitsandbytes  # noqa: F401  (imported before the baseline so its memory is not counted as the model's)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from a2tgpo_lab.models import load_model_and_tokenizer, trainable_parameters_summary

    cuda = torch.cuda.is_available()
    if threads:
        torch.set_num_threads(threads)
    rss_after_imports = rss_mib("VmRSS")
    model, _ = load_model_and_tokenizer(model_name_or_path=model_dir, use_peft=True, lora_r=lora_r,
                                        lora_alpha=2 * lora_r, load_in_4bit=variant.startswith("4-bit"),
                                        bf16=cuda, gradient_checkpointing=gradient_checkpointing)
    device = next(model.parameters()).device
    weights_mib = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mib("VmRSS") - rss_after_imports
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator).to(device)
    model.train()

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator, optimizer state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - started)
    seconds = statistics.median(durations)  # the median shrugs off a step slowed by another process
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib("VmHWM") - rss_after_imports
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    return {"variant": variant, "cuda": cuda, "device": device_name, "threads": torch.get_num_threads(),
            "weights_mib": weights_mib, "peak_mib": peak_mib, "step_s": seconds,
            "dtype": str(model.get_base_model().dtype).replace("torch.", ""),
            "summary": trainable_parameters_summary(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per variant (0 = torch's default); 1 gives steadier times on a shared CPU")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set for the child processes
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # child: measure one variant, print one JSON line
        result = run_variant(args.model_dir, args.variant, args.batch, args.seq, args.steps, args.lora_r,
                             args.gradient_checkpointing, args.threads)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as model_dir:
        build_random_model(Path(model_dir), args.shape)
        results = []
        for variant in VARIANTS:
            child = [sys.executable, __file__, "--variant", variant, "--model_dir", model_dir,
                     "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
                     "--lora_r", str(args.lora_r), "--threads", str(args.threads)]
            child += ["--gradient_checkpointing"] if args.gradient_checkpointing else []
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))

    full, quant = results
    memory_kind = "GPU max_memory_allocated" if full["cuda"] else "CPU peak RSS above the RSS after imports"
    print(f"shape={args.shape} {SHAPES[args.shape]} batch={args.batch} seq={args.seq} lora_r={args.lora_r} "
          f"gradient_checkpointing={args.gradient_checkpointing} steps={args.steps} device={full['device']} "
          f"threads={full['threads']}")
    print(f"memory = {memory_kind}")
    for result in results:
        print(f"  {result['variant']}: {result['summary']}")
    print(f"\n{'':<18}{full['variant'] + ' (' + full['dtype'] + ')':>26}{quant['variant']:>20}{'4-bit / 16-bit':>16}")
    for key, label in (("weights_mib", "loaded (MiB)"), ("peak_mib", "peak (MiB)"), ("step_s", "median step (s)")):
        print(f"{label:<18}{full[key]:>26.2f}{quant[key]:>20.2f}{quant[key] / full[key]:>16.2f}")
    if not full["cuda"]:
        print("\nOn a CPU the 16-bit variant runs in float32, and 4-bit computes in float32 too (every matmul "
              "dequantizes its weights first): 4-bit is for memory; there is no 4-bit speed-up to expect on a CPU.")


if __name__ == "__main__":
    main()
