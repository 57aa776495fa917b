"""Numbers given to the command-line tools: the finiteness check of every score and weight
they read (``check_finite``), and the grid syntax of their searched options
(``fairseq-awd-rescore``'s ``--*-weight-grid``, ``fairseq-awd-eval``'s cache and
dynamic-evaluation options): ``START:STOP:STEP`` (STOP included) or comma-separated values,
at most ``MAX_GRID_POINTS`` values per grid and ``MAX_GRID_COMBINATIONS`` combinations of the
grids searched together."""

import math
from typing import List, Mapping, Sequence

from fairseq_awd.errors import FairseqAWDError

MAX_GRID_POINTS = 10_000
MAX_GRID_COMBINATIONS = 100_000
GRID_BOUNDS = (f"at most {MAX_GRID_POINTS:,} values per grid and {MAX_GRID_COMBINATIONS:,} "
               "combinations of the grids searched together")


def check_finite(value: float, what: str, fix: str) -> float:
    """Return ``value``, or raise FairseqAWDError ``"{what} is {value}, not a finite number:
    {fix}"`` for NaN and infinities.

    A NaN weight or score makes every comparison false and an infinite one always wins or
    always loses, so either would silently decide a ranking or a tuning; this is the one
    check of the scores and weights the tools read."""
    if not math.isfinite(value):
        raise FairseqAWDError(f"{what} is {value}, not a finite number: {fix}")
    return value


def _too_many(option: str, spec: str, count: str) -> FairseqAWDError:
    return FairseqAWDError(f"{option}: '{spec}' has {count} values, more than the "
                           f"{MAX_GRID_POINTS:,} a grid may have: give a larger STEP or "
                           "fewer values")


def parse_grid(spec: str, option: str) -> List[float]:
    """``"START:STOP:STEP"`` (the values ``START + k * STEP`` up to STOP, STOP included) or
    ``"a,b,c"`` -> the values; anything else, NaN and infinities included, is refused with
    one FairseqAWDError naming ``option``. So is a grid of more than ``MAX_GRID_POINTS``
    values, counted before any list is built."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if not all(map(math.isfinite, (start, stop, step))) or step <= 0 or stop < start:
                raise ValueError
            steps = (stop - start) / step  # inf when it overflows
            if not math.isfinite(steps):
                raise _too_many(option, spec, "too many")
            # the (relative) tolerance keeps a STOP that rounding put a hair beyond reach
            count = math.floor(steps * (1 + 1e-12) + 1e-9) + 1
            if count > MAX_GRID_POINTS:
                raise _too_many(option, spec,
                                f"{count:,}" if count < 10**12 else f"about {float(count):.0e}")
            return [round(start + k * step, 10) for k in range(count)]
        if spec.count(",") >= MAX_GRID_POINTS:
            raise _too_many(option, spec if len(spec) <= 40 else spec[:37] + "...",
                            f"{spec.count(',') + 1:,}")
        values = [float(x) for x in spec.split(",")]
        if not all(map(math.isfinite, values)):
            raise ValueError
        return values
    except ValueError as err:
        if isinstance(err, FairseqAWDError):
            raise
        raise FairseqAWDError(f"{option}: expected finite numbers as START:STOP:STEP (STOP "
                              f"included; STEP > 0, STOP >= START) or comma-separated (a,b,c), "
                              f"got '{spec}'") from None


def check_grid_combinations(grids: Mapping[str, Sequence[float]]) -> None:
    """Refuse grids (option name -> values) whose product, the settings a search tries, has
    more than ``MAX_GRID_COMBINATIONS`` points, before the search allocates anything."""
    count = math.prod(len(values) for values in grids.values())
    if count > MAX_GRID_COMBINATIONS:
        sizes = " x ".join(f"{len(values):,} ({name})" for name, values in grids.items())
        raise FairseqAWDError(f"the grids make {sizes} = {count:,} combinations to try, more "
                              f"than the {MAX_GRID_COMBINATIONS:,} allowed: use fewer values "
                              "(a larger STEP) for some of them")
