"""How a record or a user's prompt becomes the text the model sees, with the loss marked.

One home for the prompt templates, so that training data and a served model's prompts are
written the same way:
- `text`: the text as it is;
- `instruction`: the Alpaca template (https://github.com/tatsu-lab/stanford_alpaca#data-release);
- `chat`: the tokenizer's own chat template.
"""

from lora_study.errors import UserInputError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def instruction_prompt(instruction: str, extra=None) -> str:
    """The Alpaca prompt of an instruction (and its optional input), up to the response."""
    if present(extra) and str(extra).strip():
        return ALPACA_PROMPT.format(instruction=instruction, input=extra)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def chat_prompt(messages: list[dict], tokenizer) -> str:
    """A conversation rendered up to where the assistant's next turn starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render(record: dict, fmt: str, text_column: str, tokenizer) -> list[tuple[str, bool]]:
    """A record as text segments, each marked with whether the loss covers it."""
    if fmt == "text":
        return [(str(record[text_column]), True)]
    if fmt == "instruction":
        return [(instruction_prompt(record["instruction"], record.get("input")), False), (str(record["output"]), True)]
    return _render_chat(record["messages"], tokenizer)


def user_prompt(prompt: str, fmt: str, tokenizer) -> str:
    """A user's prompt wrapped the way the adapter's training data was rendered."""
    if fmt == "instruction":
        return instruction_prompt(prompt)
    if fmt == "chat":
        return chat_prompt([{"role": "user", "content": prompt}], tokenizer)
    return prompt


def _render_chat(messages, tokenizer) -> list[tuple[str, bool]]:
    """Chat segments: each assistant turn is trained on, everything before it is context.

    Rendering growing prefixes with the tokenizer's own chat template finds where each
    assistant turn starts and ends in the text the model will see.
    """
    if tokenizer.chat_template is None:
        raise UserInputError(
            "--format chat: the base model's tokenizer has no chat template; use a chat model or --format instruction"
        )
    messages = [dict(message) for message in messages]
    segments, rendered = [], ""
    for turn, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = chat_prompt(messages[:turn], tokenizer)
        full = tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise UserInputError(
                "--format chat: the tokenizer's chat template does not render a conversation as "
                "a prefix of its continuation, so the answer tokens cannot be found"
            )
        segments += [(prompt[len(rendered) :], False), (full[len(prompt) :], True)]
        rendered = full
    return segments


def present(value) -> bool:
    """A field that holds a value: not missing, not NaN (pandas fills missing cells with NaN)."""
    return value is not None and not (isinstance(value, float) and value != value)  # NaN
