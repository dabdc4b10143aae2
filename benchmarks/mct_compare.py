"""Sony Model Compression Toolkit (MCT) power-of-two PTQ and GPTQ on accuracy.py's models and data.

A peer with decent_q's constraint (power-of-two scales): MCT's Keras post-training quantization
(``mct.ptq.keras_post_training_quantization``) and gradient-based PTQ
(``mct.gptq.keras_gradient_post_training_quantization``), at 8, 6 and 4 bit and W4A8, on the
same float weights, calibration images and 1,000 held-out images as benchmarks/accuracy.py.
Writes ``mct_{kind}{--tag}.json`` into --work_dir::

    {"float": acc,
     "mct_ptq": {"8": acc, "6": acc, "4": acc, "W4A8": acc},   # variant dpu (see below)
     "mct_gptq": {...},
     "mct_ptq_mct_default": {...}, "mct_gptq_mct_default": {...},  # variant mct_default
     "versions": {...}, "settings": "...", "seconds": {"ptq 8": s, ...}, "errors": {...}}

MCT does not live in the project venv (it pins nothing, but it refuses TensorFlow >= 2.16, see
below); it runs from a venv of its own::

    python3.11 -m venv $MCT_VENV
    $MCT_VENV/bin/pip install "tensorflow==2.21.*" "tf_keras==2.21.*" \\
        model-compression-toolkit mlxtend
    # -> tensorflow 2.21.0, tf_keras 2.21.0, keras 3.15.1, model-compression-toolkit 2.6.1,
    #    mct-quantizers 1.7.0, edge-mdt-cl 1.1.1, mlxtend 0.23.4

    # MCT's supported TensorFlow (the reference run):
    python3.11 -m venv $MCT215_VENV
    $MCT215_VENV/bin/pip install "tensorflow==2.15.*" model-compression-toolkit==2.6.1 mlxtend

Float weights: accuracy.py's float worker (project venv)::

    for m in cnn resnet; do PYTHONPATH=. python benchmarks/accuracy.py --worker float \\
        --model $m --work_dir /tmp/mct_work --float_steps 600; done

Then (no PYTHONPATH needed; the script puts the repo root and examples/ on sys.path)::

    $MCT_VENV/bin/python benchmarks/mct_compare.py --work_dir /tmp/mct_work
    $MCT215_VENV/bin/python benchmarks/mct_compare.py --work_dir /tmp/mct_work --tag _tf215
    # the ablation rows (PTQ only): mct_{kind}_ablation.json
    $MCT_VENV/bin/python benchmarks/mct_compare.py --work_dir /tmp/mct_work \
        --variants signed_only,bias_only --gptq_epochs 0 --tag _ablation
    # decent_q against MCT, markdown (any python; reads the json files only)
    python benchmarks/mct_compare.py --work_dir /tmp/mct_work --table

--decent_q (project venv) computes decent_q's own numbers on the same weights into
``mct_decent_q.json``: method 1 with and without do_cle, bias_correction 0 and 2, and fast
finetune (DECENT_Q_VARIANTS)::

    PYTHONPATH=. .venv/bin/python benchmarks/mct_compare.py --decent_q \\
        --work_dir /tmp/mct_work

TensorFlow 2.21: model-compression-toolkit 2.6.1 (the newest) installs, but
``model_compression_toolkit/verify_packages.py`` sets ``FOUND_TF = False`` for TensorFlow >= 2.16,
so every Keras entry point is a stub that raises "Tensorflow must be installed with a version of
2.15 or lower". Past that gate its Keras code imports Keras 2 internals under the name ``keras``
(``from keras.src.layers.core import TFOpLambda``, ``keras.src.engine...``), which under
TF 2.21 is Keras 3 (no TFOpLambda, no keras.src.engine): ImportError. With ``--shim auto``
(default) on TensorFlow >= 2.16 this script therefore (1) sets TF_USE_LEGACY_KERAS=1 so that
tf.keras is tf_keras 2.21, (2) aliases the module name ``keras`` (and every ``keras.*``) to
``tf_keras`` with an import hook, and (3) shows MCT TensorFlow "2.15.0" while MCT is imported
(the version is restored right after), (4) makes MCT's is_keras_custom_layer (a test of the
class's root module name: "keras" or "tensorflow") accept tf_keras classes too. Nothing of
MCT is edited or copied. This is not a configuration MCT supports; the TF 2.15 venv (no shim)
is the supported reference; it gave identical PTQ accuracies (every config, both models).

MCT settings (--variants; "dpu" is as close to decent_q's DPU constraint as MCT allows):
  TPC      MCT's IMX500 v1.0 operator sets and fusing patterns (``get_op_quantization_configs``
           and ``generate_tpc`` of tpc_models/imx500_tpc/v1_0), with the configs edited to:
  kernels  POWER_OF_TWO, per-tensor (weights_per_channel_threshold=False), W bits.
  acts     POWER_OF_TWO, A bits, at every output MCT quantizes (the input, each conv/dense
           after fusing with its ReLU, each add+ReLU, GAP, the logits; not max pooling/flatten).
  dpu          activations Signedness.SIGNED (decent_q's FixNeuron is always signed) and
               biases quantized POWER_OF_TWO per-tensor at W bits, as decent_q does (MCT warns
               that quantizing an attribute other than the kernel is experimental).
  mct_default  MCT's own choices for those two: Signedness.AUTO (unsigned after ReLU: one
               more bit of magnitude than the DPU has) and float biases.
  signed_only, bias_only   one of the two (an ablation).
  core     mct.core.CoreConfig() defaults: MSE threshold search for weights and activations,
           weights bias correction on, shift-negative correction on, BN folding, no mixed
           precision (one config per operator set).
  calib    representative_data_gen yields the --calib_batches batches of 50 images of
           accuracy.calibration_images (the images decent_q calibrates on).
  GPTQ     mct.gptq.get_keras_gptq_config(n_epochs=--gptq_epochs) with its defaults (SoftQuantizer
           rounding, Adam lr 3e-2 for the rounding variables, bias training, Hessian
           sample-layer-attention loss, gradual activation quantization); an epoch is one pass
           over the calibration batches, so the default --gptq_epochs 20 = 200 steps of 50
           images (a modest budget). Most of GPTQ's time is its Hessian estimate (100
           iterations per layer over the 500 images): about 70 s per run for cnn and 600 s for
           resnet on 2 shared CPU cores, against about 50 s of optimization for resnet.
Evaluation: predict() of MCT's returned Keras model (fake-quant wrappers) on the 1,000
held-out images.
"""

import argparse
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import accuracy  # noqa: E402  pylint: disable=wrong-import-position
import common  # noqa: E402  pylint: disable=wrong-import-position
import data  # noqa: E402  pylint: disable=wrong-import-position

CONFIGS = (("8", 8, 8), ("6", 6, 6), ("4", 4, 4), ("W4A8", 4, 8))


# -- TF >= 2.16 shim ----------------------------------------------------------------------------

class _KerasAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``keras`` / ``keras.x.y`` as the importable ``tf_keras`` / ``tf_keras.x.y``."""

    def find_spec(self, fullname, path=None, target=None):  # pylint: disable=unused-argument
        if fullname == "keras" or fullname.startswith("keras."):
            real = "tf_keras" + fullname[len("keras"):]
            if importlib.util.find_spec(real) is None:
                return None
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("tf_keras" + spec.name[len("keras"):])

    def exec_module(self, module):
        pass


def import_mct(shim):
    """(tf, keras module to build models with, mct, shimmed?)."""
    tf_version = _installed_version("tensorflow")
    use_shim = shim == "on" or (shim == "auto" and _newer_than_215(tf_version))
    if use_shim:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not use_shim:
        import model_compression_toolkit as mct  # pylint: disable=import-outside-toplevel
        return tf, tf.keras, mct, False
    import tf_keras  # pylint: disable=import-outside-toplevel
    for name in [n for n in sys.modules if n == "keras" or n.startswith("keras.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _KerasAlias())
    real = tf.__version__
    tf.__version__ = "2.15.0"
    try:
        import model_compression_toolkit as mct  # pylint: disable=import-outside-toplevel
    finally:
        tf.__version__ = real
    # MCT tells framework layers from custom ones by the root module name of the class
    # ("keras" or "tensorflow"); tf_keras's classes are framework layers too.
    for module in list(sys.modules.values()):
        if (getattr(module, "__name__", "").startswith("model_compression_toolkit")
                and hasattr(module, "is_keras_custom_layer")):
            original = module.is_keras_custom_layer
            module.is_keras_custom_layer = (
                lambda cls, _original=original: _original(cls)
                and not cls.__module__.startswith("tf_keras."))
    return tf, tf_keras, mct, True


def _installed_version(name):
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _newer_than_215(text):
    major, minor = (int(p) for p in text.split(".")[:2])
    return (major, minor) >= (2, 16)


# -- MCT --------------------------------------------------------------------------------------

# variant: (signed activations, power-of-two W-bit biases)
VARIANTS = {"dpu": (True, True), "mct_default": (False, False),
            "signed_only": (True, False), "bias_only": (False, True)}


def power_of_two_tpc(w_bits, a_bits, signed, quant_bias):
    """MCT's IMX500 v1.0 op sets/fusings with per-tensor power-of-two W-bit kernels and A-bit
    power-of-two activations everywhere (one config per op: no mixed precision).

    signed and quant_bias (variant "dpu"): as close to decent_q's DPU constraint as MCT allows:
    activations always signed (decent_q's FixNeuron is signed, so a ReLU output keeps A-1 bits
    of magnitude) and biases quantized, power-of-two per-tensor at W bits. Neither (variant
    "mct_default"): MCT's own choices for those two: signedness AUTO (unsigned after ReLU: A bits
    of magnitude) and float biases."""
    # pylint: disable=import-outside-toplevel
    from mct_quantizers import QuantizationMethod
    from model_compression_toolkit.target_platform_capabilities.constants import (
        BIAS_ATTR, KERNEL_ATTR)
    from model_compression_toolkit.target_platform_capabilities.schema.mct_current_schema import \
        Signedness
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import \
        tpc as imx500
    linear, _, default = imx500.get_op_quantization_configs()
    acts = dict(activation_quantization_method=QuantizationMethod.POWER_OF_TWO,
                activation_n_bits=a_bits, supported_input_activation_n_bits=(a_bits,),
                signedness=Signedness.SIGNED if signed else Signedness.AUTO)
    pot = dict(weights_quantization_method=QuantizationMethod.POWER_OF_TWO,
               weights_n_bits=w_bits, weights_per_channel_threshold=False)
    attrs = {KERNEL_ATTR: pot}
    if quant_bias:
        attrs[BIAS_ATTR] = dict(pot, enable_weights_quantization=True)
    linear = linear.clone_and_edit(attr_to_edit=attrs, **acts)
    default = default.clone_and_edit(**acts)
    return imx500.generate_tpc(default_config=default, base_config=linear,
                               mixed_precision_cfg_list=[linear],
                               name=f"pot_w{w_bits}a{a_bits}_s{int(signed)}_b{int(quant_bias)}")


def check_quantizers(qmodel, w_bits, a_bits, signed, quant_bias):
    """Assert what the TPC asked for: every quantized weight tensor and activation has one
    power-of-two threshold (per-tensor) and the requested bit width, activations signed and
    biases quantized where asked. Returns the number of quantized weight tensors."""
    weights = acts = 0
    for layer in qmodel.layers:
        quantizers = dict(getattr(layer, "weights_quantizers", None) or {})
        holder = getattr(layer, "activation_holder_quantizer", None)
        if holder is not None:
            quantizers["activation"] = holder
        for attr, quantizer in quantizers.items():
            config = quantizer.get_config()
            threshold = np.asarray(config["threshold"], dtype=np.float64)
            assert threshold.size == 1, (layer.name, attr, threshold.shape)
            assert np.allclose(np.log2(threshold), np.round(np.log2(threshold))), threshold
            if attr == "activation":
                assert config["num_bits"] == a_bits, (layer.name, config)
                assert bool(config["signed"]) or not signed, (layer.name, config)
                acts += 1
            else:
                assert config["num_bits"] == w_bits, (layer.name, attr, config)
                weights += 1
        if quant_bias and "kernel" in quantizers and getattr(layer.layer, "use_bias", False):
            assert "bias" in quantizers, layer.name
    assert weights and acts, "no quantizer found"
    return weights


def run_mct(args):
    tf, keras_mod, mct, shimmed = import_mct(args.shim)
    _, _, test_x, test_y = data.load()
    calib = accuracy.calibration_images(args.calib_batches * accuracy.CALIB_BATCH)
    batch = accuracy.CALIB_BATCH

    def representative():
        for i in range(args.calib_batches):
            yield [calib[i * batch:(i + 1) * batch]]

    versions = {n: _installed_version(n) for n in (
        "tensorflow", "tf_keras", "keras", "model-compression-toolkit", "mct-quantizers",
        "edge-mdt-cl", "numpy")}
    versions["python"] = sys.version.split()[0]
    versions["shim"] = shimmed
    settings = ("MCT IMX500 v1.0 op sets + fusings, kernels POWER_OF_TWO per-tensor W bits, "
                "activations POWER_OF_TWO A bits; mct_ptq/mct_gptq: signed activations and "
                "POWER_OF_TWO per-tensor W-bit biases (decent_q's constraint); *_mct_default: "
                "signedness AUTO (unsigned after ReLU) and float biases; CoreConfig() defaults "
                "(MSE "
                "thresholds, weights bias correction, shift-negative correction); "
                f"{args.calib_batches} calibration batches of {batch}; GPTQ "
                f"get_keras_gptq_config(n_epochs={args.gptq_epochs}) defaults")
    if shimmed:
        settings += ("; TF >= 2.16 shim: TF_USE_LEGACY_KERAS=1, keras->tf_keras alias, "
                     "version gate bypassed at import, MCT's custom-layer test accepts tf_keras "
                     "classes")
    kinds = args.models.split(",")
    for kind in kinds:
        result = {"versions": versions, "settings": settings,
                  "seconds": {}, "errors": {}}
        weights = accuracy._load_weights(args.work_dir, kind)  # pylint: disable=protected-access
        model = accuracy.build(keras_mod, kind)
        model.set_weights(weights)
        float_acc = float((model.predict(test_x, verbose=0).argmax(1) == test_y).mean())
        result["float"] = float_acc
        print(f"{kind} float: {float_acc:.4f}", flush=True)
        for variant in args.variants.split(","):
            signed, quant_bias = VARIANTS[variant]
            suffix = "" if variant == "dpu" else "_" + variant
            for label, w_bits, a_bits in CONFIGS:
                if args.configs and label not in args.configs.split(","):
                    continue
                tpc = power_of_two_tpc(w_bits, a_bits, signed, quant_bias)
                for algo in ("ptq", "gptq"):
                    if algo == "gptq" and args.gptq_epochs <= 0:
                        continue
                    key = f"mct_{algo}{suffix}"
                    name = f"{algo}{suffix} {label}"
                    start = time.time()
                    try:
                        tf.random.set_seed(0)
                        np.random.seed(0)
                        if algo == "ptq":
                            qmodel, _ = mct.ptq.keras_post_training_quantization(
                                model, representative, target_platform_capabilities=tpc)
                        else:
                            qmodel, _ = mct.gptq.keras_gradient_post_training_quantization(
                                model, representative,
                                gptq_config=mct.gptq.get_keras_gptq_config(
                                    n_epochs=args.gptq_epochs),
                                target_platform_capabilities=tpc)
                        kernels = check_quantizers(qmodel, w_bits, a_bits, signed, quant_bias)
                        acc = float((qmodel.predict(test_x, verbose=0).argmax(1)
                                     == test_y).mean())
                    except Exception as exc:  # pylint: disable=broad-except
                        if args.strict:
                            raise
                        result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
                        print(f"{kind} {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
                        continue
                    seconds = time.time() - start
                    result.setdefault(key, {})[label] = acc
                    result["seconds"][name] = round(seconds, 1)
                    print(f"{kind} mct {name}: {acc:.4f} ({seconds:.1f} s, {kernels} "
                          "per-tensor power-of-two weight tensors)", flush=True)
        path = os.path.join(args.work_dir, f"mct_{kind}{args.tag}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        print(f"wrote {path}", flush=True)


# -- decent_q on the same weights (project venv) ---------------------------------------------

# decent_q's rows (method 1 each): key in mct_decent_q.json, QuantizeConfig options, label.
DECENT_Q_VARIANTS = (
    ("decent_q_m1", {}),
    ("decent_q_m1_cle", dict(do_cle=1)),
    ("decent_q_m1_bc2", dict(bias_correction=2)),
    ("decent_q_m1_cle_bc2", dict(do_cle=1, bias_correction=2)),
    ("decent_q_m1_ft", dict(include_fast_ft=1)),
    ("decent_q_m1_cle_ft", dict(do_cle=1, include_fast_ft=1)),
    ("decent_q_m1_ft_adaround", dict(include_fast_ft=1, fast_ft_mode=1)),
)


def run_decent_q(args):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    _, _, test_x, test_y = data.load()
    calib = accuracy.calibration_images(args.calib_batches * accuracy.CALIB_BATCH)
    batch = accuracy.CALIB_BATCH

    def input_fn(step):
        return {accuracy.INPUT_NODE: calib[step * batch:(step + 1) * batch]}

    results = {}
    for kind in args.models.split(","):
        weights = accuracy._load_weights(args.work_dir, kind)  # pylint: disable=protected-access
        frozen = accuracy.frozen_float(tf, tf_keras, kind, weights)
        # pylint: disable=protected-access
        rows = results[kind] = {"float_frozen": accuracy._graph_accuracy(
            tf, frozen, test_x, test_y)}
        for label, w_bits, a_bits in CONFIGS:
            for key, options in DECENT_Q_VARIANTS:
                out = os.path.join(args.work_dir, f"dq_{kind}_{label}_{key}")
                config = decent_q.QuantizeConfig(
                    input_nodes=[accuracy.INPUT_NODE], output_nodes=[accuracy.OUTPUT_NODE],
                    input_shapes=[[-1, 28, 28, 1]], weight_bit=w_bits, activation_bit=a_bits,
                    calib_iter=args.calib_batches, method=1, output_dir=out, **options)
                eval_gd, seconds = common.quantize_timed(decent_q, tf, frozen, input_fn, config)
                acc = accuracy._graph_accuracy(tf, eval_gd, test_x, test_y)
                rows.setdefault(key, {})[label] = acc
                rows.setdefault("seconds", {})[f"{key} {label}"] = round(seconds, 1)
                print(f"{kind} {key} {label}: {acc:.4f} ({seconds:.1f} s)", flush=True)
    path = os.path.join(args.work_dir, f"mct_decent_q{args.tag}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(f"wrote {path}", flush=True)


def table(args):
    """Markdown: decent_q (mct_decent_q.json) against MCT (mct_{kind}{tag}.json), in %."""
    labels = [c[0] for c in CONFIGS]
    with open(os.path.join(args.work_dir, "mct_decent_q.json"), encoding="utf-8") as f:
        ours = json.load(f)
    rows = [("decent_q_m1", "decent_q PTQ method 1"),
            ("decent_q_m1_cle", "decent_q PTQ method 1 + CLE"),
            ("decent_q_m1_bc2", "decent_q PTQ method 1 + bias_correction 2"),
            ("decent_q_m1_cle_bc2", "decent_q PTQ method 1 + CLE + bias_correction 2"),
            ("decent_q_m1_ft", "decent_q PTQ method 1 + fast finetune"),
            ("decent_q_m1_cle_ft", "decent_q PTQ method 1 + CLE + fast finetune"),
            ("decent_q_m1_ft_adaround", "decent_q PTQ method 1 + fast finetune (AdaRound)"),
            ("mct_ptq", "MCT PTQ, DPU constraint (signed acts, pow2 biases)"),
            ("mct_gptq", "MCT GPTQ, DPU constraint"),
            ("mct_ptq_mct_default", "MCT PTQ, MCT default (unsigned after ReLU, float biases)"),
            ("mct_gptq_mct_default", "MCT GPTQ, MCT default"),
            ("mct_ptq_signed_only", "MCT PTQ, signed acts, float biases"),
            ("mct_ptq_bias_only", "MCT PTQ, unsigned after ReLU, pow2 biases")]
    lines = []
    for kind in args.models.split(","):
        values = dict(ours.get(kind, {}))
        for tag in ("", "_ablation"):
            path = os.path.join(args.work_dir, f"mct_{kind}{args.tag if not tag else tag}.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    theirs = json.load(f)
                values.update({k: v for k, v in theirs.items() if k.startswith("mct_") and v})
                values.setdefault("float", theirs.get("float"))
        lines += [f"**{kind}** (float {100 * values['float']:.1f} %; accuracy in %, 1,000 "
                  "held-out images)", "",
                  "| method | " + " | ".join(("W8A8", "W6A6", "W4A4", "W4A8")) + " |",
                  "| --- |" + " ---: |" * len(labels)]
        for key, name in rows:
            if key in values:
                cells = [f"{100 * values[key][l]:.1f}" if l in values[key] else "-"
                         for l in labels]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True, help="holds float_{kind}.npz")
    parser.add_argument("--models", default="cnn,resnet")
    parser.add_argument("--configs", default="", help="subset of 8,6,4,W4A8 (default: all)")
    parser.add_argument("--calib_batches", type=int, default=10)
    parser.add_argument("--gptq_epochs", type=int, default=20,
                        help="GPTQ passes over the calibration batches; 0 skips GPTQ")
    parser.add_argument("--shim", choices=("auto", "on", "off"), default="auto",
                        help="TF >= 2.16 workaround (see the module docstring)")
    parser.add_argument("--variants", default="dpu,mct_default",
                        help="dpu: signed activations + power-of-two biases (decent_q's "
                             "constraint); mct_default: MCT's AUTO signedness + float biases; "
                             "signed_only, bias_only: one of the two")
    parser.add_argument("--tag", default="", help="suffix of the output json name")
    parser.add_argument("--strict", action="store_true", help="raise on the first MCT error")
    parser.add_argument("--decent_q", action="store_true",
                        help="run decent_q (project venv) instead of MCT")
    parser.add_argument("--table", action="store_true",
                        help="print the markdown table of the json files in --work_dir")
    args = parser.parse_args(argv)
    if args.table:
        table(args)
    elif args.decent_q:
        run_decent_q(args)
    else:
        run_mct(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
