"""Mixed precision on the workers: replicas compute in float16 or bfloat16 while their
variables, the centre variable and the wire stay float32.

A replica is loaded from the ``.keras`` bytes, and every layer keeps the dtype policy it was
saved with (``float32`` for a model built under the default policy): setting Keras' global
policy before loading would change nothing. :func:`apply_policy` therefore sets the policy of
every float32 layer of the loaded replica, and of the model itself, before it is compiled, so
that Keras wraps the optimizer in a ``LossScaleOptimizer`` for ``mixed_float16`` (float16
gradients underflow without loss scaling; bfloat16 has float32's range and needs none).
"""

from __future__ import annotations

from typing import Any

#: the policies a trainer accepts: variables stay float32, so the weights' layout is unchanged
POLICIES = ("mixed_float16", "mixed_bfloat16")


def check_policy(policy: Any) -> str | None:
    """The policy's name, or None for full precision (``None`` or ``"float32"``).

    Raises:
        ValueError: ``policy`` is not one of :data:`POLICIES` (a policy such as ``"float16"``
            would also store the variables in 16 bits, and the centre variable is float32).
    """
    name = getattr(policy, "name", policy)
    if name is None or name == "float32":
        return None
    if name not in POLICIES:
        raise ValueError(f"dtype_policy must be one of {', '.join(POLICIES)} (or None/'float32' "
                         f"for full precision), got {policy!r}: the centre variable and the "
                         f"weights exchanged with the parameter server stay float32")
    return str(name)


def apply_policy(model: Any, policy: str) -> None:
    """Make every float32 layer of ``model`` (and the model) compute under ``policy``;
    call it before ``compile``. Layers saved with another policy keep theirs."""
    for layer in _layers(model):
        if getattr(layer.dtype_policy, "name", None) == "float32":
            layer.dtype_policy = policy


def policy_of(model: Any) -> str:
    """The dtype policies the model's layers that hold weights compute with, comma-joined
    (usually one, e.g. ``"mixed_bfloat16"``)."""
    names = sorted({layer.dtype_policy.name for layer in _layers(model)[1:] if layer.weights})
    return ",".join(names) or model.dtype_policy.name


def _layers(model: Any) -> list:
    """The model first, then every layer in it, nested ones too."""
    return list(model._flatten_layers(include_self=True, recursive=True))
