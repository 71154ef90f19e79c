"""The loss: a packed row scores as its records alone, the block mask matters, batching does not."""

import math

import torch

from lora_study import models
from lora_study.losses import loss_sum, mean_loss, perplexity
from lora_study.packing import IGNORE_INDEX, collate, pack_records


def per_token_losses(model, rows, pad_id):
    batch = collate(rows, pad_id)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"]
        ).logits
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch["targets"], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return [losses[b][batch["targets"][b] != IGNORE_INDEX] for b in range(len(rows))]


def records(tokenizer):
    texts = [
        ("Q: sort a list?", " Use sorted(items)."),
        ("Q: length?", " len(x) counts items."),
        ("Q: dict keys?", " d.keys() lists them."),
        ("Q: hello", " world"),
    ]
    out = []
    for prompt, answer in texts:
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        a = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        out.append((p + a, [IGNORE_INDEX] * len(p) + a))
    return out


def test_a_packed_row_gives_the_same_per_token_losses_as_its_records_alone(tiny, tokenizer):
    model = models.load_model(tiny).eval()
    recs = records(tokenizer)
    packed = pack_records(recs, seq_len=64)
    assert len(packed) == 1 and len(packed[0]["doc_lengths"]) == 4
    (together,) = per_token_losses(model, packed, tokenizer.pad_token_id)
    # the packed order is longest first: run each record alone in that order
    start, alone = 0, []
    for length in packed[0]["doc_lengths"]:
        ids, labels = packed[0]["input_ids"][start : start + length], packed[0]["labels"][start : start + length]
        alone.append(
            per_token_losses(
                model, [{"input_ids": ids, "labels": labels, "doc_lengths": [length]}], tokenizer.pad_token_id
            )[0]
        )
        start += length
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_without_the_block_mask_records_would_see_each_other(tiny, tokenizer):
    model = models.load_model(tiny).eval()
    packed = pack_records(records(tokenizer), seq_len=64)
    batch = collate(packed, tokenizer.pad_token_id)
    with torch.no_grad():
        masked, _ = loss_sum(model, batch, torch.device("cpu"))
        batch["attention_mask"] = None
        leaked, _ = loss_sum(model, batch, torch.device("cpu"))
    assert not torch.isclose(masked, leaked)


def test_mean_loss_does_not_depend_on_batching_or_padding(tiny, tokenizer):
    model = models.load_model(tiny).eval()
    rows = pack_records(records(tokenizer) * 3, seq_len=24)
    assert len({len(row["input_ids"]) for row in rows}) > 1  # batches need padding
    losses = [mean_loss(model, rows, batch_size, tokenizer.pad_token_id, None) for batch_size in (1, 2, 5)]
    assert max(losses) - min(losses) < 1e-5


def test_perplexity_is_the_exp_of_the_loss_and_does_not_overflow():
    assert perplexity(0.0) == 1.0 and perplexity(2.0) == math.exp(2.0)
    assert perplexity(1e6) == perplexity(700.0) < float("inf")
