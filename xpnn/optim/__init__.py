"""Optimizers (SGD with momentum/Nesterov, Adam, AdamW, RMSprop), gradient clipping and learning-rate schedules.

``optimizer.step(params)`` updates each ``Parameter.value`` in place on its own device from its
``grad``, with the PyTorch formulations, so results can be compared with ``torch.optim``. The
update is written once against the array API (the namespace comes from the parameter), keeps
hyperparameters as Python floats so float32 parameters stay float32, and never touches the host.
Per-parameter state (momentum buffers, Adam moments) is created as zeros on the parameter's device
and keyed by the parameter's name, which must therefore be unique. The update runs on flat buffers
of all the parameters at once (see :meth:`Optimizer.step`): a dozen operations per step, not a
dozen per parameter, which is what a GPU's kernel-launch cost asks for.

A learning rate is a float or a :class:`Schedule` evaluated at every update: the training loop
calls ``optimizer.set_epoch(epoch, steps_per_epoch)`` at the start of every epoch and each
``step`` moves ``optimizer.lr`` to the next update's value (Python arithmetic, nothing on the
device). ``optimizer.lr_factor`` scales either (``ReduceLROnPlateau`` lowers it). Every optimizer
takes Keras' ``clipnorm``, ``clipvalue`` or ``global_clipnorm``, applied in one place,
``Optimizer._clipped``, to the gradients the update uses. :class:`LossScaleOptimizer` wraps any of
them with dynamic loss scaling for float16 training (``fit`` does under ``mixed_float16``).

Modules: :mod:`.optimizers` (the flat-buffer :class:`Optimizer` base and its subclasses),
:mod:`.schedules` (learning rate per update, with warmup) and :mod:`.arguments` (the hyperparameter checks and
the name-or-record factory both use).
"""
from .optimizers import OPTIMIZERS, SGD, Adam, AdamW, LossScaleOptimizer, Optimizer, RMSprop, get_optimizer
from .schedules import Constant, CosineDecay, ExponentialDecay, Schedule, StepDecay, get_schedule

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LossScaleOptimizer", "get_optimizer", "OPTIMIZERS",
    "Schedule", "Constant", "StepDecay", "CosineDecay", "ExponentialDecay", "get_schedule",
]
