"""Cache entries are built once, appear whole or not at all, and live under LORA_STUDY_CACHE."""

import hashlib
import os
from pathlib import Path

import pytest

from lora_study import cache


def test_an_entry_is_built_once(tmp_path):
    calls = []

    def build(folder: Path):
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"built")

    target = tmp_path / "models" / "tiny-abc"
    assert cache.build_once(target, build) == target
    assert cache.build_once(target, build) == target
    assert len(calls) == 1
    assert calls[0].parent == target.parent and calls[0] != target  # built beside it, then renamed
    assert (target / "weights.bin").read_bytes() == b"built"
    assert os.listdir(target.parent) == ["tiny-abc"]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def build(folder: Path):
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    target = tmp_path / "data" / "entry"
    with pytest.raises(RuntimeError, match="disk full"):
        cache.build_once(target, build)
    assert not target.exists()
    assert os.listdir(target.parent) == []


def test_a_worker_that_lost_the_race_keeps_the_winners_entry(tmp_path):
    target = tmp_path / "models" / "entry"

    def build(folder: Path):
        target.mkdir()  # another worker renames its entry into place meanwhile
        (target / "weights.bin").write_bytes(b"winner")
        (folder / "weights.bin").write_bytes(b"loser")

    assert cache.build_once(target, build) == target
    assert (target / "weights.bin").read_bytes() == b"winner"
    assert os.listdir(target.parent) == ["entry"]  # the loser's folder is gone


def test_file_sha256_reads_a_file_of_several_chunks(tmp_path):
    payload = os.urandom((5 << 20) // 2 + 7)  # 2.5 MiB and 7 bytes: the last chunk is partial
    path = tmp_path / "model.gguf"
    path.write_bytes(payload)
    assert cache.file_sha256(path) == hashlib.sha256(payload).hexdigest()


def test_the_cache_root_follows_lora_study_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path / "elsewhere"))
    assert cache.cache_root() == tmp_path / "elsewhere"
    monkeypatch.setenv("LORA_STUDY_CACHE", "~/shared/cache")
    assert cache.cache_root() == tmp_path / "shared" / "cache"
    monkeypatch.delenv("LORA_STUDY_CACHE")
    assert cache.cache_root() == tmp_path / ".cache" / "lora-study"
