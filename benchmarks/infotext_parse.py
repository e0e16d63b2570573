"""Parse time of A1111 ``parameters`` texts with long last lines: ours (linear) against A1111's
``re_param.findall`` (quadratic on a line without ':'), which took over 120 s on 200 KB.

    PYTHONPATH=src python benchmarks/infotext_parse.py [--reference]
"""

from __future__ import annotations

import argparse
import re
import time

from genmodels.pipelines.metadata import MAX_INFOTEXT, _pairs, parse_infotext

A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference", action="store_true", help="also time A1111's regex")
    args = parser.parse_args()
    for size in (10_000, 50_000, 200_000, 1_000_000):
        line = "w" * size + ", Steps: 2, Sampler: Euler, Seed: 1"  # a long run without ':'
        assert len(_pairs(line)) == 3
        t = _time(_pairs, line)
        row = f"{size:>9} chars  _pairs {t * 1e3:8.2f} ms"
        if args.reference and size <= 20_000:
            row += f"   A1111 regex {_time(A1111_RE_PARAM.findall, line) * 1e3:10.1f} ms"
        print(row)
    text = "prompt\n" + "w" * (MAX_INFOTEXT - 60) + ", Steps: 2, Sampler: Euler, Seed: 1"
    ms = _time(parse_infotext, text) * 1e3
    print(f"parse_infotext of a {len(text)}-character text: {ms:.2f} ms")


if __name__ == "__main__":
    main()
