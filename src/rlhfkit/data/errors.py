"""The one exception type for bad input data.

Every loader and validator raises `DataError`, so a caller (the CLI, a trainer)
can catch one type and print one line that points at the offending record.
"""

from __future__ import annotations

UNITS = ("line", "record")


class DataError(ValueError):
    """Bad input data.

    str() is ONE line: '<file>:<line>: field '<field>': <message>' (parts that are
    None are left out). With unit='record' (JSON arrays, Parquet, `datasets`
    folders, hub datasets) the position reads '<file>: record N: ...'.
    """

    def __init__(
        self,
        message: str,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        *,
        unit: str = "line",
    ):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.unit = unit
        super().__init__(message, file, line, field)

    @classmethod
    def at(cls, where, message: str, field: str | None = None) -> "DataError":
        """An error at a `Location` (anything with file/index/unit), or nowhere if None."""
        if where is None:
            return cls(message, field=field)
        return cls(message, where.file, where.index, field, unit=where.unit)

    def __str__(self) -> str:
        parts = []
        if self.line is None:
            if self.file is not None:
                parts.append(self.file)
        elif self.unit == "record":
            parts.append(f"{self.file}: record {self.line}" if self.file is not None else f"record {self.line}")
        else:
            parts.append(f"{self.file}:{self.line}" if self.file is not None else f"line {self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        # One line, always: messages may quote user data (JSON parser messages,
        # file names) and a multi-line error breaks log grepping and CLI output.
        return ": ".join(parts).replace("\r", "\\r").replace("\n", "\\n")

    def __reduce__(self):
        # Keep `unit` across pickling (multiprocessing data workers re-raise errors).
        return (_rebuild, (self.message, self.file, self.line, self.field, self.unit))


def _rebuild(message, file, line, field, unit):
    return DataError(message, file, line, field, unit=unit)
