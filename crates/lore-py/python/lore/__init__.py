"""lore: personalized reward models with LoRe (low-rank reward modeling, Bose et al. 2025).

A shared basis V [F x K] and per-user weights w_u = softmax(W_u) give user u the reward
r_u(text) = c * e(text) . V w_u. ``lore.fit`` learns V and W on many users' preference pairs,
``Model.personalize`` fits new users' weights with V fixed, ``Model.rewards`` scores. Files are
the ``lore`` command's safetensors files. ``lore.compat`` is a drop-in for the reference
implementation's ``utils.py``; ``lore.trl`` gives TRL reward functions.
"""

from ._lore import *  # noqa: F401,F403
from ._lore import __version__  # noqa: F401
from . import trl  # noqa: F401,E402  (lore.trl.reward_function without a second import)
