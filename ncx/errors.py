"""ncx's error type for failures on the user's data: what went wrong, where, as fields.

The native ops report per-row status codes (ncx.ops.check_status), the methods report
documents that do not decode, the jobs pin those to a dataset's document ids: each raises
NcxError (a ValueError, so the command line prints it as one line) with the failure in
fields, so a caller re-labels or inspects it without parsing its message.
"""
from __future__ import annotations

__all__ = ["NcxError"]


class NcxError(ValueError):
    """reason: what went wrong ("the compressed data is truncated"); item and index: where
    ("stream", 3; "document", 12; None when the whole input is meant); code: the native
    status code behind it, if any; others: how many further items failed the same way.
    str() is "<item> <index>: <reason>" plus " (and <others> more)"."""

    def __init__(self, reason: str, item: str | None = None, index: int | None = None, *,
                 code: int | None = None, others: int = 0):
        self.reason, self.item, self.index, self.code, self.others = reason, item, index, code, others
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.item} {self.index}: " if self.item is not None and self.index is not None else ""
        more = f" (and {self.others} more)" if self.others else ""
        return f"{where}{self.reason}{more}"

    def __reduce__(self):
        # Rebuilt from the fields whatever a subclass's __init__ takes (jobs send errors between ranks).
        return _rebuild, (type(self), dict(self.__dict__))


def _rebuild(cls, fields: dict) -> NcxError:
    error = cls.__new__(cls)
    error.__dict__.update(fields)
    error.args = (error._message(),)
    return error
