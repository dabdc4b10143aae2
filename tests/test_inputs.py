"""inputs.py: loading input_fn from "module.function", calling it, and checking its batches."""

import os
import textwrap

import pytest

import helpers
from decent_q import inputs, ptq
from decent_q.errors import ConfigError, QuantizeError

_BAD_FNS = {
    "raises": ("def f(i):\n    x = 1\n    return {'input': undefined_name}\n",
               r"raised at .*bad_\w+\.py:3 in f \(return .*NameError"),
    "non_dict": ("def f(i):\n    return [1, 2]\n", "returned list; it must return a dict"),
    "wrong_key": ("import numpy as np\ndef f(i):\n    return {'inputz': np.zeros([1, 8, 8, 3], "
                  "np.float32)}\n", "key 'inputz', which is not in the graph; the "
                                    "placeholders are: input"),
    "dtype": ("import numpy as np\ndef f(i):\n    return {'input': np.array([['a'] * 3] * 8)}\n",
              "dtype <U1; the placeholder wants float32"),
    "shape": ("import numpy as np\ndef f(i):\n    return {'input': np.zeros([2, 8, 8, 1], "
              "np.float32)}\n", r"shape \[2, 8, 8, 1\]; the placeholder wants \['\?', 8, 8, 3\]"),
    "nan": ("import numpy as np\ndef f(i):\n    return {'input': np.full([1, 8, 8, 3], np.nan, "
            "np.float32)}\n", "holds NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FNS))
def test_bad_input_fn_gives_one_clear_error_and_no_files(case, tmp_path, monkeypatch):
    body, pattern = _BAD_FNS[case]
    module = f"bad_{case}"
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantizeError, match=pattern) as info:
        ptq.quantize_frozen(helpers.small_cnn(), f"{module}.f",
                            helpers.config(output_dir="out"), progress=False)
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "out")


def test_missing_module_and_function(tmp_path, monkeypatch):
    helpers.write_input_fn_module(tmp_path, "calib_mod_b")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantizeError, match="module 'no_such_mod' is not found in"):
        inputs.load_input_fn("no_such_mod.calib_input")
    with pytest.raises(QuantizeError, match="has no function 'calib'; its functions: "
                                            "calib_input, dump_input"):
        inputs.load_input_fn("calib_mod_b.calib")
    with pytest.raises(ConfigError, match="not 'module_name.function_name'"):
        inputs.load_input_fn("calib_input")
    with pytest.raises(ConfigError, match="input_fn is required"):
        inputs.load_input_fn("")


def test_module_importing_a_missing_package_names_it(tmp_path, monkeypatch):
    (tmp_path / "calib_mod_c.py").write_text("import not_installed_pkg\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantizeError, match="importing input_fn module 'calib_mod_c' failed "
                                            r"at .*calib_mod_c.py:1.*not_installed_pkg"):
        inputs.load_input_fn("calib_mod_c.f")


def test_user_frame_points_at_user_code(tmp_path, monkeypatch):
    (tmp_path / "frame_mod.py").write_text(textwrap.dedent("""
        def helper():
            raise ValueError("no images in /data")

        def f(i):
            return helper()
        """))
    monkeypatch.chdir(tmp_path)
    fn, name = inputs.load_input_fn("frame_mod.f")
    with pytest.raises(QuantizeError) as info:
        inputs.call_input_fn(fn, 3, name)
    assert "frame_mod.f(3) raised at" in str(info.value)
    assert "frame_mod.py:3 in helper" in str(info.value)
    assert str(info.value).endswith("ValueError: no images in /data")
