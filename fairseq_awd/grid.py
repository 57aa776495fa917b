"""The grid syntax of the command-line tools' searched options (``fairseq-awd-rescore``'s
``--*-weight-grid``, ``fairseq-awd-eval``'s cache and dynamic-evaluation options):
``START:STOP:STEP`` (STOP included) or comma-separated values."""

import math
from typing import List

from fairseq_awd.errors import FairseqAWDError


def parse_grid(spec: str, option: str) -> List[float]:
    """``"START:STOP:STEP"`` (inclusive) or ``"a,b,c"`` -> the values; anything else, NaN and
    infinities included, is refused with one FairseqAWDError naming ``option``."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if not all(map(math.isfinite, (start, stop, step))) or step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + k * step, 10) for k in range(count)]
        values = [float(x) for x in spec.split(",")]
        if not all(map(math.isfinite, values)):
            raise ValueError
        return values
    except ValueError:
        raise FairseqAWDError(f"{option}: expected finite numbers as START:STOP:STEP (STOP "
                              f"included; STEP > 0, STOP >= START) or comma-separated (a,b,c), "
                              f"got '{spec}'") from None
