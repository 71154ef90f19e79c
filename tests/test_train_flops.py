"""The machine-limit benchmark (benchmarks/train_flops.py): its FLOP convention, and a whole run
on the tiny Llama that states the achieved share of the attainable rate and where time went."""

import re
import sys

import results
import train_flops

from lora_study import lora, models
from lora_study.config import AdapterConfig


def test_the_flop_convention_counts_4n_for_the_base_6r_for_lora_and_causal_attention(tiny):
    model = lora.attach(models.load_model(tiny), AdapterConfig(rank=8, target_modules="qv"), seed=0)
    flops = train_flops.flops_per_token(model, model.config, seq_len=32, rank=8)
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k and v, o, gate, up and down
    assert flops == {
        "base matmuls (4N)": 4 * (2 * layer + 64 * 49152),  # 2 layers and the head
        "LoRA": 6 * 8 * 2 * ((64 + 64) + (64 + 32)),  # rank 8, q_proj and v_proj in 2 layers
        "attention": 6 * 32 * (4 * 16) * 2,  # 4 heads of 16, 2 layers
    }


def test_a_run_states_the_share_of_the_attainable_rate_and_where_the_step_went(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(sys, "argv", ["train_flops.py", "--base-model", "tiny", "--batch-size", "2", "--seq-len", "32"])
    train_flops.main()
    text = (tmp_path / "RESULTS.md").read_text()
    step = re.search(r"\| our train step \(([\d.]+) ms\) \| (\d+) \| (\d+) \| ([\d.]+)% \|", text)
    assert step, text
    ms, tokens_per_s, share = float(step[1]), int(step[2]), float(step[4])
    assert abs(tokens_per_s * ms / 1000 - 64) < 0.5 and 0 < share < 100  # 2 rows of 32 tokens a step
    parts = {m[1]: float(m[2]) for m in re.finditer(r"^\| ([^|]+) \| (\d+) \| [\d.]+% \|$", text, re.M)}
    assert {"base matmuls", "output head and loss", "attention"} <= set(parts)
    assert abs(sum(parts.values()) - ms) <= len(parts)  # the parts add up to the step (whole ms each)
