"""decent_q's PyTorch flow: vai_q_pytorch's API (``torch_quantizer``, ``QatProcessor``) on the
FixNeuron numerics of decent_q's TensorFlow op. ``pytorch_nndct`` is an import alias of this
package (``from pytorch_nndct.apis import torch_quantizer``). It does not import TensorFlow.
docs/pytorch.md describes the flow.
"""

from decent_q_torch import config
from decent_q_torch import nn
from decent_q_torch.apis import QatProcessor, torch_quantizer
from decent_q_torch.errors import QuantizeError
from decent_q_torch.version import __version__

__all__ = ["torch_quantizer", "QatProcessor", "QuantizeError", "config", "nn", "__version__"]
