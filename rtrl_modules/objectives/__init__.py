"""Losses with online (RTRL) gradients, as TorchRL ``LossModule``s."""

from .r2ac import R2ACLoss

__all__ = ["R2ACLoss"]
