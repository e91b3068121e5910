"""Benchmark FASB in one run, including the released code's loop (stage e), and write results/bench.json.

python analysis/benchmark.py [--n-prompts 16] [--out results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from released_loop import released_generate

from fasb_tl.bench import BenchConfig, Stage, _time_each, run_bench
from fasb_tl.models import encode


def released_stage(model, steerer, prompts, config: BenchConfig) -> Stage:
    """(e) the released loop with a forced trigger at back_steps, like stage (c)."""

    def run(prompt) -> int:
        ids = encode(model, prompt)
        return len(
            released_generate(
                model, steerer, ids, config.alpha, 2.0, config.back_steps, config.max_new_tokens
            )
        )

    return _time_each("e_released_loop", prompts, run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    run_bench(
        BenchConfig(model=args.model, n_prompts=args.n_prompts), args.out, {"e_released_loop": released_stage}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
