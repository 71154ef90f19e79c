"""Reading a user's text file: UTF-8 with or without a BOM, anything else one line."""

import pytest

from lora_study.data.text_files import read_utf8
from lora_study.errors import UserInputError


def test_a_bom_is_dropped_and_utf8_read(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9")
    assert read_utf8(path) == "café"


def test_other_bytes_name_the_file_and_the_offset(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc\x80def")
    with pytest.raises(UserInputError) as caught:
        read_utf8(path)
    assert caught.value.problems == [f"{path}: not UTF-8 text (byte 0x80 at offset 3); save it as UTF-8"]
