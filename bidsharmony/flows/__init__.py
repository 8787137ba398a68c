"""Image normalizing-flow building blocks shared by the image harmonizers.

Every layer is a :class:`torch.nn.Module` that follows one protocol::

    y, logdet = layer(x, context=None)    # logdet: log|det dy/dx|, one value per sample
    x = layer.inverse(y, context=None)

so layers can be chained (:class:`~.layers.SequentialFlow`) and put into the multiscale
container (:class:`~.multiscale.MultiscaleFlow`). ``context`` is an optional tensor of extra
channels that conditioners may read (conditional flows); unconditional layers ignore it.

Modules
-------
layers
    :class:`SqueezeLayer`, :class:`UnsqueezeLayer`, :class:`SequentialFlow`, ``squeeze2d``.
coupling
    :class:`AffineCoupling` with checkerboard and channel masks (RealNVP, Dinh et al. 2017).
unet
    :class:`ShallowUNet` with concat-ELU, the coupling conditioner of Harmonizing Flows.
multiscale
    :class:`MultiscaleFlow`: steps per scale, squeeze, factor out half, standard-normal base.
dequantization
    :func:`uniform_dequantize` (the default) and the matching bits-per-dimension offset.
glow
    Glow/NSF steps (actnorm, 1x1 convolution, RQ-spline coupling) of BlindHarmony.
"""

from .coupling import AffineCoupling, checkerboard_mask
from .layers import SequentialFlow, SqueezeLayer, UnsqueezeLayer, squeeze2d, unsqueeze2d
from .multiscale import MultiscaleFlow, realnvp_step_factory
from .unet import ConcatELU, ShallowUNet

__all__ = [
    "AffineCoupling", "checkerboard_mask", "ConcatELU", "MultiscaleFlow", "realnvp_step_factory",
    "SequentialFlow", "ShallowUNet", "SqueezeLayer", "UnsqueezeLayer", "squeeze2d", "unsqueeze2d",
]
