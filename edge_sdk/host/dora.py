"""DoRA (PEFT ``use_dora=True``) in exported graphs: the weight norm that gets no gradient.

DoRA scales each adapted layer's output rows by ``magnitude / ||W + scale * B @ A||``, where the norm is
recomputed from the current LoRA matrices on every forward pass but, as the paper (section 4.3) and PEFT
(``weight_norm.detach()``) prescribe, treated as a constant in the backward pass. The TorchScript exporter
drops ``detach()`` and ONNX has no stop-gradient operator, so ONNX Runtime's gradient builder would
differentiate through the norm and train B and A differently from PyTorch.

What the builder does not differentiate: integer tensors (it builds gradients for float types only, and a
Cast to an integer type is a stop-gradient edge, gradient_graph_builder.cc). So the norm goes through
``Cast(Cast(norm * 2^40, int64), float) * 2^-40``. That is exact, not a rounding: a float32 ``x`` in
[2^-17, 2^23) times 2^40 is an integer below 2^63 (its last mantissa bit is worth at least 1), and scaling by
a power of two is exact. A weight row's norm is nowhere near either end (a row whose norm fell below 2^-17
would lose bits beyond its 2^-40 place; one above 8e6 would overflow, which the build's check of the graph
against PyTorch would report). ONNX Runtime keeps the pair of casts (it removes only casts that lose no
precision), both training backends run them as they are, and no new lowering is needed.

Two things that do not work with ONNX Runtime training 1.19.2: leaving the norm differentiable (the
gradient builder's ReduceL2 gradient is an invalid opset-14 graph: an Unsqueeze without its axes input), and
a BatchNormalization identity (its mean and variance are stop-gradient edges too, but the training graph
replaces it with BatchNormInternal in training mode, which normalises with the batch's own statistics).
"""

from __future__ import annotations

import functools

import torch

_SHIFT = 40
_INT64 = 7  # onnx.TensorProto values, without importing onnx here
_FLOAT_TYPES = {"Float": (torch.float32, 1), "Double": (torch.float64, 11)}


class _DetachedNorm(torch.autograd.Function):
    """An identity in PyTorch, gradient included, so eager results stay PEFT's own (PEFT detaches the norm
    itself); a gradient-stopping identity in the exported graph."""

    @staticmethod
    def forward(ctx, norm: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd's signature
        return norm.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad

    @staticmethod
    def symbolic(g, norm):
        # The build loads models in float32; double is the only other type whose range the shift suits.
        dtype, onnx_type = _FLOAT_TYPES.get(norm.type().scalarType(), _FLOAT_TYPES["Float"])
        up = g.op("Constant", value_t=torch.tensor(2.0**_SHIFT, dtype=dtype))
        down = g.op("Constant", value_t=torch.tensor(2.0**-_SHIFT, dtype=dtype))
        as_integer = g.op("Cast", g.op("Mul", norm, up), to_i=_INT64)
        return g.op("Mul", g.op("Cast", as_integer, to_i=onnx_type), down)


def _detached(get_weight_norm):
    @functools.wraps(get_weight_norm)
    def wrapper(*args, **kwargs) -> torch.Tensor:
        return _DetachedNorm.apply(get_weight_norm(*args, **kwargs))

    return wrapper


def _product_when_traced(get_lora_weight):
    """PEFT forms ``B @ A`` as ``B(A(eye(in_features))).T`` (for FSDP); traced, that is an EyeLike that ONNX
    Runtime's gradient builder folds into an in x in identity initializer, carried by the training graph and
    the shared weights (1.2 MB for MiniLM), and an extra in x in x r product per layer and step. Exported
    graphs multiply the two matrices instead; eager PyTorch keeps PEFT's code."""

    @functools.wraps(get_lora_weight)
    def wrapper(lora_A, lora_B, *args, **kwargs) -> torch.Tensor:  # noqa: N803 - PEFT's argument names
        if torch.jit.is_tracing():
            return lora_B.weight @ lora_A.weight
        return get_lora_weight(lora_A, lora_B, *args, **kwargs)

    return wrapper


def prepare_dora_layers(model: torch.nn.Module) -> int:
    """Make every DoRA linear layer of ``model`` export its weight norm as a gradient-free tensor (and its
    ``B @ A`` as one product); return how many layers there are.

    Eager PyTorch results are unchanged: the wrappers are identities there, and PEFT detaches the norm itself.
    """
    from peft.tuners.lora.dora import DoraLinearLayer

    count = 0
    for module in model.modules():
        # DoraEmbeddingLayer (a subclass) forms its product differently; the build adapts linear layers only.
        if type(module) is DoraLinearLayer and not getattr(module, "_edge_sdk_prepared", False):
            module.get_weight_norm = _detached(module.get_weight_norm)
            module.get_lora_weight = _product_when_traced(module.get_lora_weight)
            module._edge_sdk_prepared = True
            count += 1
    return count
