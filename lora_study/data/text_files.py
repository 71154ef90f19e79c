"""Reading a user's text file: UTF-8, with or without a byte-order mark (as Windows tools write
it); bytes that are not UTF-8 become one line naming the file and the offset."""

from pathlib import Path

from lora_study.errors import UserInputError


def read_utf8(path: Path) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save it as UTF-8"
        ) from None
