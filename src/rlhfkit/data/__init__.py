"""Data: record formats and validation, loading, (later) tokenisation.

Errors name the file and line (or record) of the bad input: see `DataError`.
"""

from .errors import DataError
from .formats import (
    PreferenceExample,
    PromptExample,
    SFTExample,
    load_preference,
    load_prompts,
    load_sft,
    parse_preference,
    parse_prompt,
    parse_sft,
)
from .load import Location, read_records
from .report import LoadReport

# --- rlhfkit.data.tokenize exports go here -----------------------------------

__all__ = [
    "DataError",
    "Location",
    "read_records",
    "LoadReport",
    "PreferenceExample",
    "SFTExample",
    "PromptExample",
    "load_preference",
    "load_sft",
    "load_prompts",
    "parse_preference",
    "parse_sft",
    "parse_prompt",
]
