"""write.py: write_models, the files both post-training quantization and QAT write."""

import os

import pytest

import helpers
from decent_q import ptq, write
from decent_q.errors import QuantizeError
from decent_q.graph import utils


def test_write_models_suffix(tmp_path):
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path / "ptq")), progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    out = write.write_models(eval_gd, helpers.config(output_dir=str(tmp_path / "out")),
                             suffix="_2000_20200611000000")
    assert sorted(os.listdir(tmp_path / "out")) == ["deploy_model_2000_20200611000000.pb",
                                                    "quantize_eval_model_2000_20200611000000.pb"]
    assert out["deploy_model"].endswith("deploy_model_2000_20200611000000.pb")


class _Unserializable:
    def SerializeToString(self, deterministic=False):  # pylint: disable=invalid-name
        raise KeyboardInterrupt


def _fails_to_build(*_):
    raise QuantizeError("the quantized constants cannot be evaluated")


def test_the_build_error_is_reported_when_the_eval_write_failed_too(tmp_path, monkeypatch):
    """A failing deploy build while the eval model's write failed as well: the caller gets the
    build's error (not the write's), and no file or new folder is left."""
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path / "ptq")), progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])

    def no_space(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(write.utils, "write_temp", no_space)
    monkeypatch.setattr(write.deploy, "deploy_graph_def", _fails_to_build)
    with pytest.raises(QuantizeError, match="cannot be evaluated"):
        write.write_models(eval_gd, helpers.config(output_dir=str(tmp_path / "out" / "x")))
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    monkeypatch.setattr(write.utils, "write_temp", no_space)  # the write alone fails
    with pytest.raises(OSError, match="No space"):
        write.write_models(eval_gd, helpers.config(output_dir=str(tmp_path / "out" / "x")))
    assert not (tmp_path / "out").exists()


def test_an_eval_model_that_cannot_serialize_creates_no_folder(tmp_path, monkeypatch):
    """The eval model is serialized before output_dir is made: its failure leaves nothing."""
    class TooLarge:
        def SerializeToString(self, deterministic=False):  # pylint: disable=invalid-name
            raise ValueError("Message tensorflow.GraphDef exceeds maximum protobuf size of 2GB")
    monkeypatch.setattr(write.transforms, "adjust_positions", lambda *_: TooLarge())
    with pytest.raises(ValueError, match="2GB"):
        write.write_models(helpers.small_cnn(), helpers.config(output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new_folder", "existing_folder"])
@pytest.mark.parametrize("deploy_graph_def, error", [
    (lambda *_: _Unserializable(), KeyboardInterrupt),
    (_fails_to_build, QuantizeError),
], ids=["interrupt_while_serializing", "error_while_building"])
def test_a_failing_deploy_model_leaves_no_file_and_no_new_folder(tmp_path, monkeypatch, existing,
                                                                 deploy_graph_def, error):
    """The eval model's bytes are already on their way to a temporary file while the deploy
    model is built and serialized: if that fails or is interrupted, the temporary file is
    removed, neither model is written, and folders this call made (output_dir and its missing
    parents) are removed again; a folder that was there stays."""
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path / "ptq")), progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    out = tmp_path / "out" / "nested" if not existing else tmp_path / "out"
    if existing:
        out.mkdir()
    monkeypatch.setattr(write.deploy, "deploy_graph_def", deploy_graph_def)
    with pytest.raises(error):
        write.write_models(eval_gd, helpers.config(output_dir=str(out)))
    if existing:
        assert os.listdir(out) == []
    else:
        assert not (tmp_path / "out").exists()
