"""QAT step 1 (guide 4.2.2.3): fine-tune the float model as a quantized training graph.

    python examples/train.py --float_dir /tmp/qat_example/float --train_dir /tmp/qat_example/train

Builds the float TRAINING graph, rewrites it with CreateQuantizeTrainingGraph before the
optimizer exists, restores the float weights and saves ``model.ckpt-<step>`` checkpoints. The
position histograms of the FixNeurons (``*/pos_hist`` variables) are in every checkpoint, so a
run resumed with --resume continues exactly where the saved one stopped.
"""

import argparse
import os
import sys

import tensorflow as tf

import data
import model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float_dir", default="/tmp/qat_example/float")
    parser.add_argument("--train_dir", default="/tmp/qat_example/train")
    parser.add_argument("--output_dir", default="/tmp/qat_example/quantize_results")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--fold_bn_freeze_step", type=int, default=-1)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest QAT checkpoint in --train_dir")
    args = parser.parse_args(argv)
    tf.compat.v1.disable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    from tensorflow.contrib import decent_q  # pylint: disable=import-outside-toplevel
    train_x, train_y, _, _ = data.load()

    # Create the float training graph
    net = model.model_fn(is_training=True)

    # Set the quantize configurations and create the quantize training graph
    q_config = decent_q.QuantizeConfig(input_nodes=[model.INPUT_NODE],
                                       output_nodes=[model.OUTPUT_NODE],
                                       input_shapes=[model.INPUT_SHAPE],
                                       output_dir=args.output_dir,
                                       fold_bn_freeze_step=args.fold_bn_freeze_step)
    decent_q.CreateQuantizeTrainingGraph(config=q_config)

    # The float checkpoint holds the float variables only: restore exactly those (not the
    # position histograms, nor the optimizer's slots created below, nor the float run's step).
    float_vars = [v for v in decent_q.qat.float_variables() if v.op.name != "global_step"]
    float_saver = tf.compat.v1.train.Saver(var_list=float_vars)

    # Create the optimizer
    train_op = model.train_op(net["loss"], args.learning_rate)
    saver = tf.compat.v1.train.Saver(max_to_keep=2)
    step = tf.compat.v1.train.get_global_step()
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        latest = tf.train.latest_checkpoint(args.train_dir)
        if args.resume and latest:
            saver.restore(sess, latest)
            print(f"resumed from {latest}")
        else:
            float_ckpt = tf.train.latest_checkpoint(args.float_dir)
            if float_ckpt is None:
                sys.exit(f"no float checkpoint in {args.float_dir}; run train_float.py first")
            float_saver.restore(sess, float_ckpt)
            print(f"restored float weights from {float_ckpt}")
        first = int(sess.run(step))
        model.train(sess, train_op, net, train_x, train_y, args.steps, first_step=first)
        os.makedirs(args.train_dir, exist_ok=True)
        path = saver.save(sess, os.path.join(args.train_dir, "model.ckpt"), first + args.steps)
    print(f"QAT checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
