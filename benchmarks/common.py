"""Pieces the benchmark scripts share (run as scripts: this folder is on sys.path)."""

import json
import os
import subprocess
import sys
import time


def tflite_int8(model, calib):
    """TFLite full-integer (int8 in and out) post-training conversion of a Keras model, with
    `calib` images (one per representative batch). Returns the flatbuffer."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def representative():
        for image in calib:
            yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def quantize_timed(decent_q, tf, frozen, input_fn, config):
    """decent_q.quantize_frozen of `frozen` (progress off); returns (the written eval model's
    GraphDef, seconds the quantization took)."""
    start = time.time()
    paths = decent_q.quantize_frozen(frozen, input_fn, config, progress=False)
    seconds = time.time() - start
    eval_gd = tf.compat.v1.GraphDef()
    with open(paths["quantize_eval_model"], "rb") as f:
        eval_gd.ParseFromString(f.read())
    return eval_gd, seconds


def run_json(script, argv, env):
    """Runs `script argv` in a new Python process; returns the JSON of its last stdout line."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), *argv], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{argv} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])
