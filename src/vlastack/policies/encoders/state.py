"""The state encoder: a small MLP from proprioceptive state to the model width."""

from __future__ import annotations

from torch import Tensor, nn


class StateEncoder(nn.Module):
    """(B, T, D_s) -> (B, T, width) through ``num_layers`` linear layers with SiLU between them.

    Any number of leading dimensions is accepted; only the last must equal ``state_dim``.
    """

    def __init__(self, state_dim: int, width: int, hidden: int | None = None, num_layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if state_dim < 1:
            raise ValueError(f"StateEncoder: state_dim must be >= 1, got {state_dim} "
                             "(a dataset without observation.state needs no state encoder)")
        if width < 1 or num_layers < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"StateEncoder: need width >= 1, num_layers >= 1, 0 <= dropout < 1; "
                             f"got {width}, {num_layers}, {dropout}")
        hidden = hidden or width
        dims = [state_dim] + [hidden] * (num_layers - 1) + [width]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.SiLU())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.state_dim = int(state_dim)
        self.width = int(width)

    def forward(self, state: Tensor) -> Tensor:
        """state (B, T, D_s) float -> (B, T, width)."""
        if state.ndim < 1 or state.shape[-1] != self.state_dim:
            raise ValueError(f"StateEncoder: expected observation.state with last dimension {self.state_dim}, "
                             f"got shape {tuple(state.shape)}")
        if not state.is_floating_point():
            raise TypeError(f"StateEncoder: state must be floating point, got {state.dtype}")
        return self.net(state)  # (B, T, width)
