"""``tensorflow.contrib.decent_q.python.ops.fix_neuron_ops``: the original's op wrapper."""

from decent_q import ops


def fix_neuron(x, mode, phase, bit_width=8, method=1, output_dir="", quantize_pos=0,
               name=None):
    """A ``FixNeuron`` op, with the argument order of the original's generated wrapper.

    Args:
      x: float32 tensor.
      mode: 0 weight, 1 activation, 2 depthwise weight.
      phase: 0 calibration, 1 evaluation (uses ``quantize_pos``), 2 training.
      bit_width, method, quantize_pos: as the op attributes.
      output_dir: accepted and ignored (the original's temp-file folder; decent_q keeps no
        temp files).
      name: the op name.
    """
    del output_dir
    return ops.fix_neuron(x, mode, phase, bit_width=bit_width, method=method,
                          quantize_pos=quantize_pos, name=name)


FixNeuron = fix_neuron  # pylint: disable=invalid-name
