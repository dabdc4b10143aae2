"""Architecture coverage table: every model of benchmarks/model_zoo.py through PTQ and QAT.

    PYTHONPATH=. python benchmarks/coverage.py [--models ResNet50,vgg_16] [--no-qat]

Each model runs in its own process (clean graph, honest time); prints a Markdown table for
benchmarks/README.md ("Coverage"). See model_zoo.py for what is measured.
"""

import argparse
import dataclasses
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _one(name, qat, output_dir=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("decent_q").setLevel(logging.ERROR)
    import model_zoo  # pylint: disable=import-outside-toplevel
    result = model_zoo.measure(model_zoo.spec_by_name(name), output_dir=output_dir, qat=qat)
    print("RESULT " + json.dumps(dataclasses.asdict(result)))


def _row(r):
    reasons = ", ".join(f"{n} {k}" for k, n in sorted(r["float_reasons"].items())) or "-"
    sqnr = f"{r['sqnr_db']:.1f}" if math.isnan(r["sqnr_fast_ft_db"]) else \
        f"{r['sqnr_db']:.1f} (fast finetune {r['sqnr_fast_ft_db']:.1f})"
    return (f"| {r['name']} | {r['size']} | {r['nodes']} | {r['quantized']} / {r['compute']} | "
            f"{reasons} | {sqnr} | "
            f"{r['qat_loss']:.2f} -> {r['qat_loss_end']:.2f} ({r['qat_steps']}) | "
            f"{r['ptq_seconds']:.1f} | {r['seconds']:.1f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    parser.add_argument("--no-qat", action="store_true", help="skip the QAT training steps")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _one(args.one, not args.no_qat, args.output_dir)
        return 0
    sys.path.insert(0, HERE)
    import model_zoo  # pylint: disable=import-outside-toplevel
    names = [n for n in args.models.split(",") if n] or [s.name for s in model_zoo.MODELS]
    print("| model | input px | nodes | compute layers quantized / in range | left float "
          "(nodes, why) | SQNR dB | QAT loss, step 1 -> last (steps) | PTQ s | "
          "total s (PTQ + QAT) |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = []
    for name in names:
        try:
            result = model_zoo.measure_isolated(model_zoo.spec_by_name(name), qat=not args.no_qat)
        except RuntimeError as err:
            failed.append(name)
            print(f"| {name} | FAILED: {err} ||||||||", flush=True)
            continue
        print(_row(dataclasses.asdict(result)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
