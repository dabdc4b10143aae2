"""QAT step 1 on TensorFlow's distributed runtime: one parameter server, several workers.

    python examples/distributed_qat.py --float_dir /tmp/qat_example/float \\
        --train_dir /tmp/qat_example/train_dist [--workers 2] [--sync] [--steps 400]
    python examples/eval.py --float_dir /tmp/qat_example/float \\
        --train_dir /tmp/qat_example/train_dist      # deploy the chief's checkpoint, as usual

The way TF1-style training scripts scale out: between-graph replication. Every worker builds
the QAT training graph of examples/train.py (CreateQuantizeTrainingGraph before the optimizer)
under ``replica_device_setter``, so the variables -- weights, batch-norm statistics, the
optimizer's slots, the global step and every quantization point's position histogram
(``*/pos_hist``) -- live on the parameter server, and each worker's training steps count their
positions into the same histograms. ``MonitoredTrainingSession`` runs the steps; the chief
(worker 0) restores the float weights before the first step and saves the checkpoints, which
``CreateQuantizeDeployGraph`` deploys (examples/eval.py) as a single-process run's.

Without --job_name this script is the launcher: it picks free ports, starts the parameter
server and the workers as processes of this script on 127.0.0.1 (each writing
``<train_dir>/logs/<job>_<task>.log``), waits for the workers and stops the parameter server.
Asynchronous by default (each worker applies its own gradients; the global step counts every
worker's steps); --sync aggregates one gradient of every worker per step
(``SyncReplicasOptimizer``). A worker that dies can be started again with the same command
line: it waits for the parameter server's variables and rejoins.

TensorFlow's gRPC server listens on every interface of the machine (it has no option to
choose one); the tasks address each other as 127.0.0.1 only. Every process stops itself after
--timeout seconds, and a task the launcher started stops when the launcher ends.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

import tensorflow as tf

import data
import model

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH_SIZE = 64
# At the end, --sync's token queue runner on the chief waits for gradients that no worker will
# send; the session gives it this long (TensorFlow's default: 120 s), then cancels it (it prints
# the cancelled step).
STOP_GRACE_SECS = 3


def free_ports(count):
    """`count` distinct ports that are free on 127.0.0.1 now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(workers):
    """The cluster dict of one parameter server and `workers` workers on free 127.0.0.1 ports."""
    ports = free_ports(1 + workers)
    return {"ps": [f"127.0.0.1:{ports[0]}"],
            "worker": [f"127.0.0.1:{p}" for p in ports[1:]]}


def task_command(args, cluster, job_name, task_index):
    """The command line of one task of the cluster (this script with --job_name)."""
    return [sys.executable, os.path.abspath(__file__), "--float_dir", args.float_dir,
            "--train_dir", args.train_dir, "--output_dir", args.output_dir,
            "--steps", str(args.steps), "--learning_rate", str(args.learning_rate),
            "--save_every", str(args.save_every), "--log_every", str(args.log_every),
            "--timeout", str(args.timeout), "--cluster", json.dumps(cluster),
            "--job_name", job_name, "--task_index", str(task_index),
            "--parent_pid", str(os.getpid())] + (["--sync"] if args.sync else [])


def start_task(args, cluster, job_name, task_index):
    """Starts one task as a process writing <train_dir>/logs/<job>_<task>.log; returns it."""
    logs = os.path.join(args.train_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, f"{job_name}_{task_index}.log"), "a") as log:
        return subprocess.Popen(task_command(args, cluster, job_name, task_index), stdout=log,
                                stderr=subprocess.STDOUT, cwd=HERE,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def stop(procs):
    """Terminates the processes still running, then kills those that do not stop."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(args):
    """Runs the whole cluster as local processes; returns the exit status."""
    if not (tf.train.latest_checkpoint(args.float_dir) or
            tf.train.latest_checkpoint(args.train_dir)):
        print(f"no float checkpoint in {args.float_dir} (and none to resume in "
              f"{args.train_dir}); run train_float.py first", file=sys.stderr)
        return 1
    cluster = local_cluster(args.workers)
    print(f"cluster: {json.dumps(cluster)}", flush=True)
    ps = start_task(args, cluster, "ps", 0)
    workers = [start_task(args, cluster, "worker", i) for i in range(args.workers)]
    deadline = time.time() + args.timeout
    try:
        for i, proc in enumerate(workers):
            try:
                status = proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                print(f"worker {i} still running after --timeout {args.timeout} s: stopped",
                      file=sys.stderr)
                return 1
            if status:
                log = os.path.join(args.train_dir, "logs", f"worker_{i}.log")
                with open(log, errors="replace") as f:
                    last = ([line.strip() for line in f if line.strip()] or ["?"])[-1]
                print(f"worker {i} failed (exit status {status}): {last}\n(whole log: {log})",
                      file=sys.stderr)
                return 1
    finally:
        stop(workers + [ps])
    for i in range(args.workers):
        with open(os.path.join(args.train_dir, "logs", f"worker_{i}.log")) as log:
            done = [line.strip() for line in log if line.startswith("worker ")]
        print(done[-1] if done else f"worker {i}: no summary line")
    print(f"QAT checkpoint: {tf.train.latest_checkpoint(args.train_dir)}")
    return 0


def _watchdog(seconds, parent_pid, what):
    """Ends this process after `seconds`, or as soon as the process `parent_pid` (the launcher
    that started it; 0: none) has ended, so that no task outlives its run."""
    deadline = time.time() + seconds

    def watch():
        while True:
            if time.time() > deadline:
                print(f"{what}: --timeout {seconds} s reached, exiting", file=sys.stderr,
                      flush=True)
                os._exit(3)  # pylint: disable=protected-access
            if parent_pid and os.getppid() != parent_pid:
                print(f"{what}: its launcher (pid {parent_pid}) ended, exiting",
                      file=sys.stderr, flush=True)
                os._exit(4)  # pylint: disable=protected-access
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


class WorkerSessionCreator(tf.compat.v1.train.SessionCreator):
    """A non-chief worker's session, once the chief has initialized the variables: TensorFlow's
    own creator checks every 30 s, during which a short run can end; this one every second."""

    def __init__(self, scaffold, master, config, max_wait_secs):
        self._scaffold, self._master, self._config = scaffold, master, config
        self._max_wait_secs = max_wait_secs

    def create_session(self):
        self._scaffold.finalize()
        manager = tf.compat.v1.train.SessionManager(
            local_init_op=self._scaffold.local_init_op,
            local_init_feed_dict=self._scaffold.local_init_feed_dict,
            ready_op=self._scaffold.ready_op,
            ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
            graph=tf.compat.v1.get_default_graph(), recovery_wait_secs=1)
        return manager.wait_for_session(self._master, config=self._config,
                                        max_wait_secs=self._max_wait_secs)


def run_worker(args, cluster, server):
    """One worker: the QAT training graph under replica_device_setter, trained with
    MonitoredTrainingSession until the global step reaches --steps."""
    from tensorflow.contrib import decent_q  # pylint: disable=import-outside-toplevel
    index, num_workers = args.task_index, cluster.num_tasks("worker")
    is_chief = index == 0
    train_x, train_y, _, _ = data.load()
    setter = tf.compat.v1.train.replica_device_setter(
        worker_device=f"/job:worker/task:{index}", cluster=cluster)
    with tf.compat.v1.device(setter):
        net = model.model_fn(is_training=True)
        q_config = decent_q.QuantizeConfig(input_nodes=[model.INPUT_NODE],
                                           output_nodes=[model.OUTPUT_NODE],
                                           input_shapes=[model.INPUT_SHAPE],
                                           output_dir=args.output_dir)
        decent_q.CreateQuantizeTrainingGraph(config=q_config)
        float_vars = [v for v in decent_q.qat.float_variables() if v.op.name != "global_step"]
        float_saver = tf.compat.v1.train.Saver(var_list=float_vars)
        step = tf.compat.v1.train.get_or_create_global_step()
        optimizer = tf.compat.v1.train.AdamOptimizer(args.learning_rate)
        hooks = [tf.compat.v1.train.StopAtStepHook(last_step=args.steps)]
        if args.sync:
            optimizer = tf.compat.v1.train.SyncReplicasOptimizer(
                optimizer, replicas_to_aggregate=num_workers, total_num_replicas=num_workers)
            hooks.append(optimizer.make_session_run_hook(is_chief))
        # UPDATE_OPS: the batch-norm moving averages and the points' position counts, run with
        # every step. Grouped rather than made control inputs of minimize: that would make the
        # SyncReplicasOptimizer's initialization ops, built inside minimize, need a batch too.
        train_op = tf.group(optimizer.minimize(net["loss"], step),
                            *tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))

    float_ckpt = tf.train.latest_checkpoint(args.float_dir)
    if float_ckpt is None:
        sys.exit(f"no float checkpoint in {args.float_dir}; run train_float.py first")

    def restore_float(_, sess):  # the chief, once, when --train_dir holds no checkpoint yet
        float_saver.restore(sess, float_ckpt)
        print(f"worker {index}: restored float weights from {float_ckpt}", flush=True)

    # Each worker talks to the parameter server and to itself only.
    config = tf.compat.v1.ConfigProto(
        device_filters=["/job:ps", f"/job:worker/task:{index}"])
    scaffold = tf.compat.v1.train.Scaffold(init_fn=restore_float)
    if is_chief:  # initializes or restores the variables, saves checkpoints
        session = tf.compat.v1.train.MonitoredTrainingSession(
            master=server.target, is_chief=True, checkpoint_dir=args.train_dir,
            scaffold=scaffold, hooks=hooks, save_checkpoint_steps=args.save_every,
            save_summaries_steps=None, save_summaries_secs=None, log_step_count_steps=None,
            config=config, stop_grace_period_secs=STOP_GRACE_SECS)
    else:
        session = tf.compat.v1.train.MonitoredSession(
            WorkerSessionCreator(scaffold, server.target, config, args.timeout), hooks=hooks,
            stop_grace_period_secs=STOP_GRACE_SECS)
    local_steps, loss, global_step, window = 0, float("nan"), 0, []
    with session as sess:
        global_step = int(sess.run(step))
        print(f"worker {index}: joined at global step {global_step}", flush=True)
        start = time.time()
        while not sess.should_stop():
            # Each worker reads its own share of the batches of the single-process run.
            images, labels = data.batches(train_x, train_y, BATCH_SIZE,
                                          global_step * num_workers + index)
            _, loss, global_step = sess.run([train_op, net["loss"], step],
                                            {net["images"]: images, net["labels"]: labels})
            local_steps += 1
            window.append(loss)
            if args.log_every and local_steps % args.log_every == 0:
                print(f"worker {index}: local step {local_steps}, global step {global_step}, "
                      f"mean loss {sum(window) / len(window):.4f}", flush=True)
                window = []
        seconds = time.time() - start
    print(f"worker {index}: {local_steps} steps, last loss {loss:.4f}, global step "
          f"{global_step}, {seconds:.2f} s ({1000 * seconds / max(local_steps, 1):.1f} ms a step)",
          flush=True)


def parse_args(argv=None):
    """The options of the launcher and of each task (folders made absolute)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float_dir", default="/tmp/qat_example/float")
    parser.add_argument("--train_dir", default="/tmp/qat_example/train_dist")
    parser.add_argument("--output_dir", default="/tmp/qat_example/quantize_results")
    parser.add_argument("--steps", type=int, default=400, help="global steps (all workers')")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sync", action="store_true",
                        help="SyncReplicasOptimizer: one gradient of every worker per step")
    parser.add_argument("--save_every", type=int, default=100, help="chief: checkpoint steps")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds after which every process of the run stops itself")
    parser.add_argument("--cluster", default="", help="task: the cluster as JSON (launcher's)")
    parser.add_argument("--job_name", default="", choices=["", "ps", "worker"],
                        help="task: its job (without it: launch the whole cluster)")
    parser.add_argument("--task_index", type=int, default=0)
    parser.add_argument("--parent_pid", type=int, default=0,
                        help="task: exit when this process (the launcher) has ended")
    args = parser.parse_args(argv)
    args.float_dir, args.train_dir, args.output_dir = (
        os.path.abspath(p) for p in (args.float_dir, args.train_dir, args.output_dir))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.job_name and not args.cluster:
        parser.error("--job_name needs --cluster")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.job_name:
        return launch(args)
    _watchdog(args.timeout, args.parent_pid, f"{args.job_name} {args.task_index}")
    tf.compat.v1.disable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    cluster = tf.train.ClusterSpec(json.loads(args.cluster))
    server = tf.compat.v1.train.Server(cluster, job_name=args.job_name,
                                       task_index=args.task_index)
    if args.job_name == "ps":
        server.join()  # serves the variables until the launcher (or its watchdog) ends it
    else:
        run_worker(args, cluster, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
