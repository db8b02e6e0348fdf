"""Load checkpoints of the paper's official code (IDSIA/rtrl-elstm, torchbeast) into :func:`make_agent`.

    agent = make_agent((3, 64, 64), 15, hidden_size=256, embed_size=None)   # official ProcGen net
    load_official_checkpoint(agent, "saved_models/<xpid>/model.tar")

The official networks (``RTRLQuasiLSTMNet``, ``QuasiLSTMNet``, ``Net`` with or without LSTM in
``torchbeast_{procgen,dmlab,atari}/model.py``) name and lay out their parameters as follows; the
right-hand side is where each goes in our agent:

==========================================  ===========================  ================================
official name                               official shape               ours
==========================================  ===========================  ================================
``feat_convs.{i}.0``                        Conv2d(C_in, C_i, 3)         ``stem.conv.{4i}``
``resnet1.{i}.1`` / ``resnet1.{i}.3``       Conv2d(C_i, C_i, 3)          ``stem.conv.{4i+2}.conv0/conv1``
``resnet2.{i}.1`` / ``resnet2.{i}.3``       Conv2d(C_i, C_i, 3)          ``stem.conv.{4i+3}.conv0/conv1``
``fc``                                      Linear(F, E)                 ``stem.fc.0``
``core.wm_z``, ``core.wm_f``                [N, D] each                  ``cell.weight_ih`` = [wm_z; wm_f]
``core.wv_z``, ``core.wv_f``                [1, N] each                  ``cell.weight_hh`` = [wv_z; wv_f]
``core.bias_z``, ``core.bias_f``            [1, N] each                  ``cell.bias`` = [bias_z; bias_f]
``output_gate`` (RTRL net) or               Linear(D + N, N) over [x; c] ``cell.output_gate``
``core.out_gate_linear`` (TBPTT net)
``core.weight_ih_l0`` ... (``nn.LSTM``)     LSTM(D, N)                   ``core.lstm`` (``core="lstm"``)
``policy``, ``baseline``                    Linear(N or D, A), (., 1)    ``policy_head``, ``value_head``
==========================================  ===========================  ================================

D = E + 1 (the clipped previous reward is the last input). The official feed-forward ``Net`` has no
core: build the agent with ``core="feedforward", feedforward_layer=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "convert_official_state_dict",
    "convert_stem",
    "is_official_state_dict",
    "load_official_checkpoint",
]

_ELSTM_KEYS = ("core.wm_z", "core.wm_f", "core.wv_z", "core.wv_f", "core.bias_z", "core.bias_f")
_LSTM_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _model_state(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """The parameters of an official checkpoint (its ``"model_state_dict"``) or of its state dict."""
    inner = state.get("model_state_dict")
    return inner if isinstance(inner, Mapping) else state


def is_official_state_dict(state: Mapping) -> bool:
    """Whether ``state`` (a checkpoint or its ``"model_state_dict"``) has the official stem's names."""
    return isinstance(state, Mapping) and "feat_convs.0.0.weight" in _model_state(state)


def convert_stem(official: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official stem parameters (``feat_convs``, ``resnet1``, ``resnet2``, ``fc``) → an
    :class:`~rtrl_modules.modules.ImpalaStem` state dict (``conv.*``; ``fc.0.*`` if present)."""
    official = _model_state(official)
    out: dict[str, Tensor] = {}
    sections = 1 + max(int(k.split(".")[1]) for k in official if k.startswith("feat_convs."))
    for i in range(sections):
        for suffix in ("weight", "bias"):
            out[f"conv.{4 * i}.{suffix}"] = official[f"feat_convs.{i}.0.{suffix}"]
            for block, position in (("resnet1", 4 * i + 2), ("resnet2", 4 * i + 3)):
                out[f"conv.{position}.conv0.{suffix}"] = official[f"{block}.{i}.1.{suffix}"]
                out[f"conv.{position}.conv1.{suffix}"] = official[f"{block}.{i}.3.{suffix}"]
    if "fc.weight" in official:
        out["fc.0.weight"], out["fc.0.bias"] = official["fc.weight"], official["fc.bias"]
    return out


def convert_official_state_dict(official: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Split an official checkpoint into our components' state dicts.

    Returns ``{"stem": ..., "policy": ..., "value": ...}`` plus ``"cell"`` (an eLSTM net: the
    :class:`~rtrl_modules.cells.ELSTMCell` state dict) or ``"lstm"`` (an LSTM net: ``nn.LSTM``'s);
    neither for the feed-forward net.
    """
    official = _model_state(official)
    if not is_official_state_dict(official):
        raise KeyError(f"not an official checkpoint: no 'feat_convs.0.0.weight' among {list(official)[:6]}")
    parts: dict[str, dict[str, Tensor]] = {
        "stem": convert_stem(official),
        "policy": {k: official[f"policy.{k}"] for k in ("weight", "bias")},
        "value": {k: official[f"baseline.{k}"] for k in ("weight", "bias")},
    }
    if all(k in official for k in _ELSTM_KEYS):
        wm_z, wm_f, wv_z, wv_f, b_z, b_f = (official[k] for k in _ELSTM_KEYS)
        gate = "output_gate" if "output_gate.weight" in official else "core.out_gate_linear"
        parts["cell"] = {
            "weight_ih": torch.cat((wm_z, wm_f), dim=0),  # [2N, D]
            "weight_hh": torch.cat((wv_z, wv_f), dim=0),  # [2, N]
            "bias": torch.cat((b_z, b_f), dim=0),  # [2, N]
            "output_gate.weight": official[f"{gate}.weight"],
            "output_gate.bias": official[f"{gate}.bias"],
        }
    elif all(f"core.{k}" in official for k in _LSTM_PARAMS):
        parts["lstm"] = {k: official[f"core.{k}"] for k in _LSTM_PARAMS}
    return parts


def _core_target(agent, parts: Mapping[str, Mapping[str, Tensor]]) -> tuple[str, torch.nn.Module | None]:
    """(component name, module to load it into) for the agent's core; checks the kinds match."""
    cell = getattr(getattr(agent.core, "core", None), "cell", None)
    lstm = getattr(agent.core, "lstm", None)
    have = "cell" if cell is not None else "lstm" if lstm is not None else None
    want = "cell" if "cell" in parts else "lstm" if "lstm" in parts else None
    if have != want:
        names = {"cell": "an eLSTM", "lstm": "an LSTM", None: "no recurrent"}
        raise ValueError(
            f"the official checkpoint has {names[want]} core but the agent has {names[have]} core "
            f"({type(agent.core).__name__})"
        )
    return have or "", cell if have == "cell" else lstm


def load_official_checkpoint(agent, checkpoint: str | Path | Mapping[str, Tensor]):
    """Load an official checkpoint (path of its ``model.tar`` or its dict) into ``agent`` (from
    :func:`~rtrl_modules.modules.make_agent` with matching sizes); returns the agent.

    Shapes must match exactly: build the agent as the official run did (e.g. ProcGen:
    ``embed_size=None``; feed-forward ``Net``: ``core="feedforward", feedforward_layer=False``).
    """
    if isinstance(checkpoint, (str, Path)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    parts = convert_official_state_dict(checkpoint)
    name, core = _core_target(agent, parts)
    targets = [("stem", agent.stem), ("policy", agent.policy_head), ("value", agent.value_head)]
    if core is not None:
        targets.append((name, core))
    for part, module in targets:
        own = module.state_dict()
        for key, value in parts[part].items():
            if key not in own or own[key].shape != value.shape:
                got = None if key not in own else tuple(own[key].shape)
                raise ValueError(
                    f"official {part} parameter {key!r} has shape {tuple(value.shape)}, the agent's {got}: "
                    "build the agent with the official run's sizes"
                )
        module.load_state_dict(parts[part], strict=True)
    return agent
