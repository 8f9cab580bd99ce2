"""decaylab: exact L1, L2, elastic-net, group-lasso and L2-SP regularization for PyTorch.

>>> import torch, decaylab as dl
>>> model = torch.nn.Linear(4, 2)
>>> opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0),
...                     model, dl.L1(1e-4))

The library depends on torch only; the lab (``decaylab.lab``) is imported separately.
"""

from . import coupled, functional, groups
from .compact import Compaction, compact
from .coupled import CoupledGroupLasso, coupled_groups
from .selection import AdaptiveGroupLasso, adaptive_weights
from .sparsity import TargetSparsity, cubic_sparsity, keep_counts
from .groups import Channels, Columns, Grouping, Indexed, Rows
from .optim import Regularized, regularize
from .penalties import L1, L2, L2SP, MODES, ElasticNet, GroupLasso, Penalty
from .rules import Rule
from .selectors import biases, declared_no_decay, default_selection, embeddings, is_norm, norm_layers, preset, weights
from .metric import register_adam_metric, takes_adam_step
from .monitor import find_regularized, histograms, metrics
from .stats import layer_stats, live_groups, sparsity, summary, surviving_inputs, updates

__version__ = "0.1.0"

__all__ = [
    "regularize", "Regularized", "Rule",
    "Penalty", "L2", "L1", "ElasticNet", "GroupLasso", "L2SP", "MODES",
    "Grouping", "Rows", "Columns", "Channels", "Indexed",
    "norm_layers", "embeddings", "biases", "weights", "default_selection", "is_norm",
    "declared_no_decay", "preset",
    "metrics", "histograms", "find_regularized", "register_adam_metric", "takes_adam_step",
    "sparsity", "layer_stats", "live_groups", "surviving_inputs", "summary", "updates",
    "CoupledGroupLasso", "coupled_groups", "compact", "Compaction",
    "TargetSparsity", "cubic_sparsity", "keep_counts", "AdaptiveGroupLasso", "adaptive_weights",
    "functional", "groups", "coupled",
]
