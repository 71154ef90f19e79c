"""The local cache: rebuilt base models and prepared data, keyed by what went into them.

Root: `LORA_STUDY_CACHE`, default `~/.cache/lora-study`. Entries are written to a temporary
folder and renamed into place, so a crash or a second worker never sees half an entry.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LORA_STUDY_CACHE", "~/.cache/lora-study")).expanduser()


def build_once(target: Path, build) -> Path:
    """Run `build(folder)` unless `target` exists, then move the folder to `target`."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():  # another worker may have won the race; its entry is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
