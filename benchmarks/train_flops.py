"""How close our train step comes to the machine's own limit, and where the rest of its time goes.

    python benchmarks/train_flops.py --batch-size 8 --seq-len 256 --base-model smollm2-135m
    python benchmarks/train_flops.py --random-llama 1b --batch-size 8 --seq-len 2048   # a GPU: MFU

The FLOP convention, per trained token (T tokens per row, L layers, a frozen base):
- each linear layer of the base, the output head included, with an in x out weight: the
  forward 2 in out, and the gradient for its input 2 in out; no weight gradient. 4 in out in
  all: about 4N for the N weights of the base's matmuls.
- each LoRA pair of rank r on an in x out layer: the forward 2 r (in + out), the gradients for
  its input and for both factors 4 r (in + out).
- attention, causal (half of the T x T query-key pairs): QK^T and PV forward 2 T (heads x
  head_dim), their four backward matmuls twice that: 6 T (heads x head_dim) per layer. What
  flash attention computes again in its backward is not counted.
- norms, activations, the softmax, dropout and the optimizer: not counted.

Attainable: this machine's rate for the base's dense matmuls at one step's shapes: each layer's
forward and input-gradient GEMMs at batch x seq-len tokens (the head's too), each timed alone in
the autocast dtype into an output made once; their FLOPs over their summed time. Achieved: the convention's FLOPs of a
step over the median time of our own `training.train_step` (forward, backward, clipping,
AdamW). On a GPU, also MFU: achieved over the GPU's dense bf16 peak (`--peak-tflops`, or the
datasheet figure of a known GPU). On the CPU, a profile of the same steps says where the time
goes. Results are appended to benchmarks/RESULTS.md.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from results import record

from lora_study import lora, models, processes, training
from lora_study.cache import build_once, cache_root
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, TrainConfig

# dense bf16 peaks without sparsity, TFLOP/s, from NVIDIA's datasheets (SXM parts)
GPU_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
RANDOM_LLAMAS = {  # Llama-3.2-1B's shape with SmolLM2's tokenizer; the tiny one is for tests
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}
TIMED_STEPS, WARMUP_STEPS, PROFILED_STEPS = 6, 2, 2


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def base_gemms(config) -> list[tuple[str, int, int, int]]:
    """(name, in, out, count) of the base's linear layers: each layer's projections, the head."""
    heads, hidden, layers = config.num_attention_heads, config.hidden_size, config.num_hidden_layers
    kv = getattr(config, "num_key_value_heads", None) or heads
    return [
        ("q_proj", hidden, heads * head_dim(config), layers),
        ("k_proj, v_proj", hidden, kv * head_dim(config), 2 * layers),
        ("o_proj", heads * head_dim(config), hidden, layers),
        ("gate_proj, up_proj", hidden, config.intermediate_size, 2 * layers),
        ("down_proj", config.intermediate_size, hidden, layers),
        ("lm_head", hidden, config.vocab_size, 1),
    ]


def flops_per_token(model, config, seq_len: int, rank: int) -> dict[str, float]:
    """The convention's FLOPs per trained token, by term."""
    lora_pairs = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    attention_width = config.num_attention_heads * head_dim(config)
    return {
        "base matmuls (4N)": sum(4 * fan_in * fan_out * count for _, fan_in, fan_out, count in base_gemms(config)),
        "LoRA": sum(6 * rank * (m.in_features + m.out_features) for m in lora_pairs),
        "attention": 6 * seq_len * attention_width * config.num_hidden_layers,
    }


def gemm_rates(config, tokens: int, dtype: torch.dtype, device: torch.device) -> list[dict]:
    """Each base GEMM of one step, forward and input gradient, timed alone: its rate."""
    rates = []
    for name, fan_in, fan_out, count in base_gemms(config):
        x, grad = (torch.randn(tokens, size, dtype=dtype, device=device) for size in (fan_in, fan_out))
        weight = torch.randn(fan_out, fan_in, dtype=dtype, device=device)
        # into buffers made once: the rate of the matmul, not of the allocator's fresh pages
        y, dx = torch.empty_like(grad), torch.empty_like(x)
        forward = _seconds(lambda x=x, weight=weight, y=y: torch.mm(x, weight.T, out=y), device)
        backward = _seconds(lambda grad=grad, weight=weight, dx=dx: torch.mm(grad, weight, out=dx), device)
        flops = 2 * tokens * fan_in * fan_out
        rates.append(
            {
                "name": name,
                "shape": f"[{tokens}, {fan_in}] x [{fan_in}, {fan_out}]",
                "count": count,
                "flops": 2 * flops * count,
                "seconds": (forward + backward) * count,
                "forward": flops / forward,
                "backward": flops / backward,
            }  # fmt: skip
        )
    return rates


def _seconds(work, device: torch.device, repeats: int = 10) -> float:
    for _ in range(3):
        work()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    _synchronize(device)
    return (time.perf_counter() - started) / repeats


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(s, model, adapter: AdapterConfig, train: TrainConfig, profile: bool):
    """Median seconds of our train step over TIMED_STEPS, after WARMUP_STEPS; with `profile`,
    the torch profiler's table of PROFILED_STEPS more."""
    accelerator = processes.accelerator(s.device)
    update = training.Update.of(model, s, train, WARMUP_STEPS + TIMED_STEPS + PROFILED_STEPS, accelerator)
    stream = training.batches(s.prepared.rows("train"), train.batch_size, 0, s.tokenizer.pad_token_id)
    times, profiler = [], None
    with lora.inputs_uncast(model, adapter, s.dtype):
        for step in range(1, WARMUP_STEPS + TIMED_STEPS + 1):
            micro = [next(stream)]
            started = time.perf_counter()
            training.train_step(model, micro, s, step, update)
            _synchronize(s.device)
            times.append(time.perf_counter() - started)
        if profile:
            with torch.profiler.profile(record_shapes=True) as profiler:
                for step in range(PROFILED_STEPS):
                    training.train_step(model, [next(stream)], s, step, update)
    return statistics.median(times[WARMUP_STEPS:]), profiler


def time_by_part(profiler, vocab: int, rank: int, step_s: float) -> dict[str, float]:
    """Seconds per step by part, from the ops' own (self) times; what no op covers is Python."""
    parts: dict[str, float] = {}
    for event in profiler.key_averages(group_by_input_shape=True):
        part = part_of(event.key, event.input_shapes, vocab, rank)
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e6 / PROFILED_STEPS
    profiled = sum(parts.values())
    parts = {part: seconds * step_s / max(profiled, step_s) for part, seconds in parts.items()}
    parts["Python outside ops"] = max(0.0, step_s - sum(parts.values()))
    return dict(sorted(parts.items(), key=lambda item: -item[1]))


def part_of(name: str, shapes: list, vocab: int, rank: int) -> str:
    dims = {dim for shape in shapes if isinstance(shape, list) for dim in shape if isinstance(dim, int)}
    if vocab in dims or name == "ChunkedCrossEntropy":
        return "output head and loss"
    if "scaled_dot_product" in name:
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        return "LoRA matmuls" if rank in dims else "base matmuls"
    if name in ("aten::randint", "aten::random_", "aten::bernoulli_"):
        return "dropout masks"
    if name.startswith("autograd::") or name.endswith("Backward0"):
        return "autograd bookkeeping"
    return "other ops: norms, activations, residuals, casts, optimizer"


def random_llama(size: str) -> str:
    """A randomly initialised Llama of `size`, saved with SmolLM2's tokenizer in the cache (built
    once, as the tiny test model is): its folder."""
    return str(build_once(cache_root() / "models" / f"random-llama-{size}", lambda folder: _build_llama(size, folder)))


def _build_llama(size: str, out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = models.load_tokenizer(models.resolve(models.SMOLLM2))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=RANDOM_LLAMAS[size]["num_attention_heads"] // 4,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **RANDOM_LLAMAS[size],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in GPU_PEAK_TFLOPS.items() if gpu in name), None)


def report(args, flops: dict, rates: list[dict], step_s: float, parts: dict | None, device, peak) -> None:
    tokens = args.batch_size * args.seq_len
    per_token = sum(flops.values())
    attainable = sum(r["flops"] for r in rates) / sum(r["seconds"] for r in rates)
    achieved = per_token * tokens / step_s
    lines = [
        "FLOPs per trained token, by the convention in benchmarks/train_flops.py:",
        "",
        "| term | MFLOP per token | share |",
        "|---|---|---|",
        *(f"| {term} | {value / 1e6:.1f} | {100 * value / per_token:.1f}% |" for term, value in flops.items()),
        f"| all | {per_token / 1e6:.1f} | |",
        "",
        f"Attainable: the base's GEMMs at one step's shapes ({tokens} tokens), {_dtype_name(args)}, each timed alone:",
        "",
        "| layer | forward shape | per step | forward GFLOP/s | input gradient GFLOP/s |",
        "|---|---|---|---|---|",
        *(
            f"| {r['name']} | {r['shape']} | {r['count']} | {r['forward'] / 1e9:.0f} | {r['backward'] / 1e9:.0f} |"
            for r in rates
        ),
        f"| all, FLOP-weighted | | | {attainable / 1e9:.0f} | |",
        "",
        "| | tokens/s | GFLOP/s | of attainable |" + (" MFU |" if peak else ""),
        "|---|---|---|---|" + ("---|" if peak else ""),
        f"| our train step ({1000 * step_s:.1f} ms) | {tokens / step_s:.0f} | {achieved / 1e9:.0f} | "
        f"{100 * achieved / attainable:.1f}% |" + (f" {100 * achieved / (peak * 1e12):.1f}% |" if peak else ""),
    ]
    if peak:
        lines += ["", f"MFU against {peak} TFLOP/s, the dense bf16 peak of {torch.cuda.get_device_name(device)}."]
    if parts:
        lines += [
            "",
            "Where the step's time goes (torch profiler, each op's own time, scaled to the timed step):",
            "",
            "| part | ms per step | share |",
            "|---|---|---|",
            *(f"| {part} | {1000 * seconds:.0f} | {100 * seconds / step_s:.1f}% |" for part, seconds in parts.items()),
        ]
    command = (
        f"python benchmarks/train_flops.py --batch-size {args.batch_size} --seq-len {args.seq_len} "
        + (f"--random-llama {args.random_llama}" if args.random_llama else f"--base-model {args.base_model}")
        + f" --rank {args.rank} --target-modules {args.target_modules}"
    )
    record("train step against the machine's limit", command, f" (median of {TIMED_STEPS} steps).", lines)


def _dtype_name(args) -> str:
    return "fp32" if args.precision == "fp32" else "bf16"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--base-model", default=models.SMOLLM2)
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS), help="a random Llama built from a config")
    parser.add_argument("--rank", type=int, default=AdapterConfig().rank)
    parser.add_argument("--target-modules", default=AdapterConfig().target_modules)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, where it is not known here")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    from transformers import AutoConfig

    base = random_llama(args.random_llama) if args.random_llama else args.base_model
    where = models.device()
    config = AutoConfig.from_pretrained(models.resolve(base).path)
    # first, in a fresh process: after training steps the same GEMMs ran up to 20% slower here
    dtype = models.autocast_dtype(args.precision, where) or torch.float32
    rates = gemm_rates(config, args.batch_size * args.seq_len, dtype, where)
    adapter = AdapterConfig(rank=args.rank, alpha=2 * args.rank, target_modules=args.target_modules)
    train = TrainConfig(batch_size=args.batch_size, eval_every=0, precision=args.precision)
    s = training.setup(DataConfig(seq_len=args.seq_len), BaseModelConfig(base_model=base), adapter, train)
    model = lora.attach(s.model, adapter, 0)
    on_cpu = s.device.type == "cpu"
    step_s, profiler = step_seconds(s, model, adapter, train, profile=on_cpu)
    parts = time_by_part(profiler, config.vocab_size, args.rank, step_s) if on_cpu else None
    flops = flops_per_token(model, config, args.seq_len, args.rank)
    report(args, flops, rates, step_s, parts, s.device, peak_tflops(s.device, args.peak_tflops))


if __name__ == "__main__":
    main()
