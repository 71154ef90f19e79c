"""The loss: a packed row scores as its records alone, the block mask matters, batching does not."""

import math

import torch

from lora_study import lora, losses, models
from lora_study.config import AdapterConfig
from lora_study.data.packing import IGNORE_INDEX, collate, pack_records
from lora_study.losses import ChunkedCrossEntropy, chunkable_head, loss_sum, mean_loss, perplexity


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


def test_the_chunked_loss_equals_cross_entropy_of_full_logits_in_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    targets[[0, 7, 22]] = IGNORE_INDEX
    full = torch.nn.functional.cross_entropy(head(hidden), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    (expected,) = torch.autograd.grad(full, hidden)
    chunked = ChunkedCrossEntropy.apply(hidden, head.weight.detach(), head.bias.detach(), targets, 5)  # 5 chunks
    (got,) = torch.autograd.grad(chunked * 3.0, hidden)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(got, 3.0 * expected)


def lora_loss_and_gradients(tiny, batch):
    model = lora.attach(models.load_model(tiny), AdapterConfig(dropout=0.0), seed=0)
    for name, parameter in model.named_parameters():  # B starts at zero: A would get no gradient
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1, generator=torch.Generator().manual_seed(1))
    loss, _ = loss_sum(model, batch, torch.device("cpu"))
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad], chunkable_head(model)


def test_a_lora_model_gets_from_the_chunked_loss_the_gradients_of_the_full_logits(tiny, tokenizer, monkeypatch):
    batch = collate(pack_records(records(tokenizer) * 3, seq_len=24), tokenizer.pad_token_id)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 7 * 49152)  # chunks of 7 tokens
    chunked, chunked_grads, head = lora_loss_and_gradients(tiny, batch)
    assert head is not None
    with monkeypatch.context() as patched:
        patched.setattr(losses, "chunkable_head", lambda model: None)
        plain, plain_grads, _ = lora_loss_and_gradients(tiny, batch)
    torch.testing.assert_close(chunked, plain)
    # fp32 sums taken in chunks round apart from the whole: on AMD EPYC's kernels one element in 256
    # differed by 5.8e-6 (gradients here are ~1e-2), past an absolute tolerance of 1e-6
    for got, expected in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_head_in_training_or_logits_changed_after_the_head_take_the_full_logits(tiny):
    model = models.load_model(tiny)  # every weight requires a gradient, the head's too
    assert chunkable_head(model) is None
    with torch.no_grad():  # evaluation: the head takes no gradient here
        assert chunkable_head(model) is model.get_output_embeddings()
    model.config.final_logit_softcapping = 30.0
    with torch.no_grad():
        assert chunkable_head(model) is None


def test_a_cap_in_the_text_config_takes_the_full_logits_too(tiny):
    model = models.load_model(tiny)
    model.config.get_text_config = lambda: type("Text", (), {"final_logit_softcapping": 30.0})()
    with torch.no_grad():
        assert chunkable_head(model) is None


def test_skipping_the_head_puts_back_a_forward_of_its_own():
    head = torch.nn.Linear(4, 8)
    hooked = head.forward  # as accelerate's hooks set one on the instance
    head.forward = hooked
    with losses.head_skipped(head):
        assert head(torch.ones(2, 4)).shape == (2, 4)
    assert head.__dict__["forward"] is hooked and head(torch.ones(2, 4)).shape == (2, 8)
    plain = torch.nn.Linear(4, 8)
    with losses.head_skipped(plain):
        pass
    assert "forward" not in plain.__dict__
