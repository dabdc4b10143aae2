"""The example network (tf-slim): conv, separable (depthwise + pointwise) conv, batch norm,
ReLU / ReLU6, max pooling and a dense layer, on 28x28x1 digits.

Input node ``images``, output node ``logits/BiasAdd`` (the quantized range); the softmax and the
loss are outside it.
"""

import tensorflow as tf
import tf_slim as slim

INPUT_NODE = "images"
OUTPUT_NODE = "logits/BiasAdd"
INPUT_SHAPE = [-1, 28, 28, 1]


def model_fn(is_training):
    """Builds the float graph (network, loss, accuracy) in the default graph.

    Returns:
      dict with the tensors images, labels, logits, loss and accuracy.
    """
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1], name=INPUT_NODE)
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    bn = {"is_training": is_training, "decay": 0.9, "scale": True}
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], normalizer_fn=slim.batch_norm,
                        normalizer_params=bn):
        net = slim.conv2d(images, 16, 3, scope="conv1")
        net = slim.max_pool2d(net, 2, scope="pool1")
        net = slim.separable_conv2d(net, None, 3, depth_multiplier=1,
                                    activation_fn=tf.nn.relu6, scope="dw2")
        net = slim.conv2d(net, 32, 1, activation_fn=tf.nn.relu6, scope="pw2")
        net = slim.max_pool2d(net, 2, scope="pool2")
        net = slim.conv2d(net, 32, 3, scope="conv3")
        net = slim.max_pool2d(net, 2, scope="pool3")
        net = slim.flatten(net)
    logits = slim.fully_connected(net, 10, activation_fn=None, scope="logits")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32),
                              name="accuracy")
    return {"images": images, "labels": labels, "logits": logits, "loss": loss,
            "accuracy": accuracy}


def evaluate(sess, net, images, labels, batch_size=500):
    """Accuracy of the graph in `sess` on a data set."""
    correct = 0.0
    for i in range(0, len(labels), batch_size):
        acc = sess.run(net["accuracy"], {net["images"]: images[i:i + batch_size],
                                         net["labels"]: labels[i:i + batch_size]})
        correct += acc * len(labels[i:i + batch_size])
    return correct / len(labels)


def train(sess, train_op, net, images, labels, steps, batch_size=64, first_step=0,
          log_every=100):
    """Runs `steps` training steps with the batches data.batches gives for each step."""
    import data  # pylint: disable=import-outside-toplevel
    for step in range(first_step, first_step + steps):
        x, y = data.batches(images, labels, batch_size, step)
        _, loss = sess.run([train_op, net["loss"]], {net["images"]: x, net["labels"]: y})
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}: loss {loss:.4f}", flush=True)


def train_op(loss, learning_rate):
    """Adam on the loss, running UPDATE_OPS (batch-norm moving averages; in a QAT graph also
    the position histograms) with every step."""
    step = tf.compat.v1.train.get_or_create_global_step()
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
        return tf.compat.v1.train.AdamOptimizer(learning_rate).minimize(loss, step)
