"""The seven special tokens of SPEC §1 (no torch here: data preparation imports only this)."""

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TEXT = "<|text|>"
CODE = "<|code|>"
EXECUTION = "<|execution|>"
END_OF_BLOCK = "<|endofblock|>"
END_OF_MESSAGE = "<|endofmessage|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    USER,
    ASSISTANT,
    TEXT,
    CODE,
    EXECUTION,
    END_OF_BLOCK,
    END_OF_MESSAGE,
)
ROLE_TOKENS = {"user": USER, "assistant": ASSISTANT}
BLOCK_TOKENS = {"text": TEXT, "code": CODE, "execution": EXECUTION}
