"""inline_functions: Keras' grouped convolutions (a call into a jit_compile function) are inlined,
then folded and quantized like any other convolution (post-training and QAT)."""

import numpy as np
import tensorflow as tf

import decent_q
from decent_q.graph import utils
from decent_q.transforms import inline_functions

tf.compat.v1.disable_v2_behavior()

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (2, 6, 6, 4)).astype(np.float32)
W = (RNG.standard_normal((3, 3, 2, 6)) * 0.3).astype(np.float32)  # 2 groups of 2 channels


@tf.function(jit_compile=True)
def _grouped_conv(x, kernel):
    return tf.nn.conv2d(x, kernel, 1, "SAME")


def _model(variables=False):
    """input -> grouped conv (a PartitionedCall) -> batch norm -> relu 'out'."""
    x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 4], name="input")
    kernel = tf.compat.v1.Variable(W, name="kernel") if variables else tf.constant(W)
    y = _grouped_conv(x, kernel)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        y, tf.constant(np.linspace(0.5, 2, 6, dtype=np.float32)), tf.zeros([6]),
        mean=tf.constant(np.linspace(-0.2, 0.2, 6, dtype=np.float32)), variance=tf.ones([6]),
        is_training=False)
    return tf.nn.relu(y, name="out")


def _frozen():
    graph = tf.Graph()
    with graph.as_default():
        _model()
    return graph.as_graph_def()


def _run(graph_def, fetch="out:0"):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetch, {"input:0": X})


def test_inline_puts_the_grouped_conv_in_the_graph_and_keeps_values():
    graph_def = _frozen()
    assert any(n.op in inline_functions.CALL_OPS for n in graph_def.node)
    inlined = inline_functions.inline_functions(graph_def, keep=["input", "out"])
    assert not any(n.op in inline_functions.CALL_OPS for n in inlined.node)
    assert not inlined.library.function  # nothing calls them any more
    convs = [n for n in inlined.node if n.op == "Conv2D"]
    assert len(convs) == 1 and convs[0].name.endswith("/Conv2D")
    np.testing.assert_allclose(_run(inlined), _run(graph_def), rtol=1e-5, atol=1e-6)
    # Idempotent.
    assert inline_functions.inline_functions(inlined, ["input", "out"]) is inlined


def test_inline_keeps_a_kept_call_name():
    graph_def = _frozen()
    call = next(n.name for n in graph_def.node if n.op in inline_functions.CALL_OPS)
    inlined = inline_functions.inline_functions(graph_def, keep=["input", call])
    assert utils.NodeMap(inlined)[call].op == "Identity"
    np.testing.assert_allclose(_run(inlined, call + ":0"), _run(graph_def, call + ":0"),
                               rtol=1e-5, atol=1e-6)


def test_ptq_quantizes_and_folds_the_grouped_conv(tmp_path):
    graph_def = _frozen()
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                                     input_shapes=[[-1, 6, 6, 4]], calib_iter=1,
                                     output_dir=str(tmp_path))
    paths = decent_q.quantize_frozen(graph_def, lambda step: {"input": X}, config,
                                     progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    nm = utils.NodeMap(eval_gd)
    conv = next(n for n in eval_gd.node if n.op == "Conv2D")
    assert nm.input_node(conv, 1).op == "FixNeuron"
    assert not any(n.op.startswith("FusedBatchNorm") or n.op in inline_functions.CALL_OPS
                   for n in eval_gd.node)
    reference, quantized = _run(graph_def), _run(eval_gd, "out/aquant:0")
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()


def test_qat_training_graph_quantizes_the_grouped_conv(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        out = _model(variables=True)
        config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                                         input_shapes=[[-1, 6, 6, 4]], output_dir=str(tmp_path))
        decent_q.CreateQuantizeTrainingGraph(config=config)
        # The inlined conv, batch norm folded (BatchNorm_Fold/conv), reads quantized weights.
        relu = graph.get_operation_by_name("out")
        conv = relu.inputs[0].op.inputs[0].op
        assert conv.type == "Conv2D" and "_inlined/" in conv.name
        assert conv.inputs[1].op.name.endswith("/wquant")
        loss = tf.reduce_mean(tf.square(graph.get_tensor_by_name("out/aquant:0")))
        train = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            before = sess.run(graph.get_tensor_by_name("kernel:0"))
            sess.run(train, {"input:0": X})
            after = sess.run(graph.get_tensor_by_name("kernel:0"))
    assert out is not None and not np.allclose(before, after)  # gradients reach the kernel
