"""Upper bounds on durations, counts and per-machine figures, each with its reason.

Every setting that bounds something (a timeout, an interval, a retry count) must itself be
bounded: ``poll_timeout_s = inf`` passed validation and let one hung miner stall the loop for
good. Non-finite numbers (``inf``, ``nan`` -- both valid TOML) are refused by every config
model (``allow_inf_nan=False``); the limits here refuse finite values that are as bad in
practice, with a message that says why the limit exists, so ``curtaild check`` tells the
operator what the value would have done rather than only that it is too large.

Usage: ``poll_timeout_s: Annotated[float, at_most(300, "why")] = Field(10.0, gt=0)``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

#: What a non-finite number is refused with (pydantic's own text says what, not why).
NOT_FINITE = ("not a finite number: inf and nan are valid TOML but no setting can be "
              "infinite (an infinite timeout or interval never ends)")


def at_most(limit: float, why: str, unit: str = "s") -> AfterValidator:
    """A validator refusing values above ``limit``: ``"<v> s is more than <limit> s: why"``.

    ``None`` passes (optional settings); so does anything non-numeric (the field's own type
    rejects it first).
    """

    sep = " " if unit else ""

    def check(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(NOT_FINITE)
            if value > limit:
                raise ValueError(f"{number(value)}{sep}{unit} is more than the "
                                 f"{number(limit)}{sep}{unit} allowed: {why}")
        return value

    return AfterValidator(check)


def number(value: float) -> str:
    """3600 -> "3,600", 0.5 -> "0.5", 1e300 -> "1e+300": readable in a one-line problem."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:g}"


def finite_message(err_type: str, msg: str) -> str:
    """pydantic's message for one error, with the reason for a non-finite number."""
    return NOT_FINITE if err_type == "finite_number" else msg


def key_error(model: BaseModel, key: str | tuple[str | int, ...],
              message: str) -> ValidationError:
    """An error located at one key of ``model`` (from a model validator), so that the config
    reports ``section.key: reason`` rather than ``section: reason``."""
    loc = key if isinstance(key, tuple) else (key,)
    return ValidationError.from_exception_data(type(model).__name__, [InitErrorDetails(
        type=PydanticCustomError("value_error", message),
        loc=loc, input=getattr(model, str(loc[0]), None))])
